//! Checking the chain: every entry readable and authentic, sequence numbers contiguous from
//! 1, each entry's `prev_hash` the previous entry's hash, each hash recomputed from the body,
//! the head matching the last entry, and (given a saved checkpoint) the entry at the
//! checkpoint's seq carrying the checkpoint's hash, which catches truncation and rewriting.

use serde::Serialize;

use super::{Audit, Checkpoint, LOG};
use crate::{
    crypto::hex,
    store::{Store, StoreError, log},
};

/// The result of a chain check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub valid: bool,
    /// Entries checked and found good.
    pub checked: u64,
    /// The first sequence number where the log is wrong.
    pub first_bad_seq: Option<u64>,
    /// What was wrong there.
    pub problem: Option<String>,
    /// The head the store records.
    pub head_seq: u64,
}

impl Report {
    fn bad(checked: u64, seq: u64, problem: &str, head_seq: u64) -> Self {
        Self {
            valid: false,
            checked,
            first_bad_seq: Some(seq),
            problem: Some(problem.to_owned()),
            head_seq,
        }
    }
}

/// Checks the audit chain in `store`, optionally against a checkpoint.
pub async fn check(
    store: &dyn Store,
    checkpoint: Option<&Checkpoint>,
) -> Result<Report, StoreError> {
    let cp_hash = checkpoint.and_then(|c| hex::decode(&c.hash));
    let mut prev = [0u8; log::HASH_LEN];
    let mut expected = 1u64;
    // For reports of a break found on the way.
    let seen = store.log_head(LOG).await?.seq;
    // The head is read after the entries (an entry and the head move in one transaction, so
    // a head read later is never behind the entries read before it); entries appended
    // meanwhile are read too, a few rounds at most while writes go on.
    let mut rounds = 0;
    let head = loop {
        let page = store.read_log(LOG, expected - 1, 1000).await?;
        if page.is_empty() {
            let head = store.log_head(LOG).await?;
            if head.seq > expected - 1 && rounds < 16 {
                rounds += 1;
                continue;
            }
            break head;
        }
        for r in page {
            let checked = expected - 1;
            if r.position != expected {
                return Ok(Report::bad(checked, expected, "entry missing", seen));
            }
            let Ok(e) = r.entry else {
                return Ok(Report::bad(
                    checked,
                    expected,
                    "entry unreadable or moved",
                    seen,
                ));
            };
            if e.seq != expected
                || e.prev_hash != prev
                || e.hash != log::chain_hash(&prev, e.seq, &e.body)
            {
                return Ok(Report::bad(checked, expected, "hash chain broken", seen));
            }
            if let (Some(cp), Some(h)) = (checkpoint, &cp_hash)
                && cp.seq == e.seq
                && h.as_slice() != e.hash
            {
                return Ok(Report::bad(
                    checked,
                    expected,
                    "differs from the checkpoint",
                    seen,
                ));
            }
            prev = e.hash;
            expected += 1;
        }
    };
    let last = expected - 1;
    if head.seq != last || head.hash != prev {
        let at = head.seq.min(last) + 1;
        return Ok(Report::bad(
            last,
            at,
            "head does not match the entries",
            head.seq,
        ));
    }
    if let Some(cp) = checkpoint
        && cp.seq > last
    {
        return Ok(Report::bad(
            last,
            last + 1,
            "truncated before the checkpoint",
            head.seq,
        ));
    }
    Ok(Report {
        valid: true,
        checked: last,
        first_bad_seq: None,
        problem: None,
        head_seq: head.seq,
    })
}

impl Audit {
    pub async fn verify(&self, checkpoint: Option<&Checkpoint>) -> Result<Report, StoreError> {
        check(&*self.store, checkpoint).await
    }
}
