//! Idempotency across nodes (a shared database): a retry with the same `Idempotency-Key`
//! replays on whichever node it reaches.
//!
//! The answer can hold a secret (the key a create made), so what the database keeps is
//! encrypted twice: by the data key like every record, and first under a key derived from
//! the pepper *and the Idempotency-Key itself* — a node can open a stored answer only while
//! a client presents that header again, and the record's id is a blind index of (caller,
//! route, key), so neither the header nor the caller is stored. Answers expire after the
//! window and are deleted by every node's purge. A request in progress holds an in-flight
//! record for at most [`IN_FLIGHT`]; one whose node dies keeps retries at 409 until then.

use std::time::Duration;

use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Reply, WINDOW};
use crate::{
    app::Core,
    clock::Timestamp,
    crypto::{aead::AeadKey, hex, secret::Key256},
    http::error::ApiError,
    store::{self, Batch, Expect, IndexName, Kind, Record, Rev, StoreError},
};

/// How long an in-flight marker holds a key, at most.
pub const IN_FLIGHT: Duration = Duration::from_secs(60);
/// Index: `<expiry, unix millis, 20 digits>/<id>` -> id, for the purge.
const IDX_EXPIRY: IndexName = IndexName("idempotency_expiry");

#[derive(Serialize, Deserialize)]
struct Stored {
    /// Unix milliseconds after which the record means nothing.
    expires_at: i64,
    /// The answer, once the first request finished.
    done: Option<Done>,
}

#[derive(Serialize, Deserialize)]
struct Done {
    /// SHA-256 of the first request's body, hex.
    digest: String,
    status: u16,
    /// The answer, sealed under the key derived from the Idempotency-Key: nonce, then
    /// ciphertext, hex.
    sealed: String,
}

impl Record for Stored {
    const KIND: Kind = Kind("idempotency");
}

/// One (caller, route, key) slot in the shared store.
pub(super) struct Slot {
    id: String,
    key: AeadKey,
}

fn expiry_key(at: i64, id: &str) -> Vec<u8> {
    format!("{at:020}/{id}").into_bytes()
}

impl Slot {
    pub(super) fn new(core: &Core, caller: &str, route: &str, key: &str) -> Result<Self, ApiError> {
        let mut slot = Vec::with_capacity(caller.len() + route.len() + key.len() + 2);
        for part in [caller, route, key] {
            slot.extend_from_slice(&(part.len() as u32).to_be_bytes());
            slot.extend_from_slice(part.as_bytes());
        }
        let pepper = core.pepper();
        let id = hex::encode(&pepper.blind_index("idempotency-slot", &slot));
        let raw = Key256::from_slice(&pepper.blind_index("idempotency-reply", &slot))
            .ok_or(ApiError::Internal)?;
        Ok(Self {
            id,
            key: AeadKey::new(&raw).map_err(|_| ApiError::Internal)?,
        })
    }

    /// Takes the slot for a new request, or says what an earlier one left.
    pub(super) async fn claim(
        &self,
        core: &Core,
        digest: &[u8; 32],
        now: Timestamp,
    ) -> Result<super::Claim, ApiError> {
        let store = core.store();
        for _ in 0..3 {
            let expires = now.unix_millis() + IN_FLIGHT.as_millis() as i64;
            let mut b = Batch::new();
            b.put_record(
                &self.id,
                &Stored {
                    expires_at: expires,
                    done: None,
                },
                Expect::Absent,
            )?;
            b.index_put(IDX_EXPIRY, &expiry_key(expires, &self.id), &self.id, false);
            match store.commit(b).await {
                Ok(()) => return Ok(super::Claim::Claimed),
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
            let Some((rev, rec)) = store::record::get::<Stored>(&**store, &self.id).await? else {
                continue;
            };
            if rec.expires_at <= now.unix_millis() {
                self.remove(core, rev, rec.expires_at).await?;
                continue;
            }
            return match rec.done {
                None => Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is in progress".into(),
                )),
                Some(d) if d.digest != hex::encode(digest) => Err(ApiError::Conflict(
                    "this Idempotency-Key was used with a different request".into(),
                )),
                Some(d) => Ok(super::Claim::Replay(self.open(&d)?)),
            };
        }
        Err(ApiError::Conflict(
            "a concurrent change conflicted; retry".into(),
        ))
    }

    fn open(&self, d: &Done) -> Result<Reply, ApiError> {
        let bytes = hex::decode(&d.sealed).ok_or(ApiError::Internal)?;
        if bytes.len() < crate::crypto::aead::NONCE_BYTES {
            return Err(ApiError::Internal);
        }
        let (nonce, ct) = bytes.split_at(crate::crypto::aead::NONCE_BYTES);
        let nonce: [u8; crate::crypto::aead::NONCE_BYTES] =
            nonce.try_into().map_err(|_| ApiError::Internal)?;
        let body = self
            .key
            .open(nonce, self.id.as_bytes(), ct)
            .map_err(|_| ApiError::Internal)?;
        Ok(Reply {
            status: StatusCode::from_u16(d.status).map_err(|_| ApiError::Internal)?,
            body,
        })
    }

    /// Keeps the first request's answer for the window (durably, before it is returned).
    pub(super) async fn finish(
        &self,
        core: &Core,
        digest: &[u8; 32],
        reply: &Reply,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let nonce = crate::crypto::random::bytes().map_err(|_| ApiError::Internal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(
            &self
                .key
                .seal(nonce, self.id.as_bytes(), reply.body.expose()),
        );
        let expires = now.unix_millis() + WINDOW.as_millis() as i64;
        let Some((rev, old)) = store::record::get::<Stored>(&**core.store(), &self.id).await?
        else {
            return Ok(());
        };
        let mut b = Batch::new();
        b.put_record(
            &self.id,
            &Stored {
                expires_at: expires,
                done: Some(Done {
                    digest: hex::encode(digest),
                    status: reply.status.as_u16(),
                    sealed: hex::encode(&sealed),
                }),
            },
            Expect::Rev(rev),
        )?;
        b.index_delete(IDX_EXPIRY, &expiry_key(old.expires_at, &self.id));
        b.index_put(IDX_EXPIRY, &expiry_key(expires, &self.id), &self.id, false);
        core.store().commit(b).await?;
        Ok(())
    }

    /// Lets the slot go (the first request failed: a retry runs again).
    pub(super) async fn release(&self, core: &Core) -> Result<(), ApiError> {
        if let Some((rev, rec)) = store::record::get::<Stored>(&**core.store(), &self.id).await?
            && rec.done.is_none()
        {
            self.remove(core, rev, rec.expires_at).await?;
        }
        Ok(())
    }

    async fn remove(&self, core: &Core, rev: Rev, expires_at: i64) -> Result<(), StoreError> {
        let mut b = Batch::new();
        b.delete(Stored::KIND, &self.id, Expect::Rev(rev));
        b.index_delete(IDX_EXPIRY, &expiry_key(expires_at, &self.id));
        match core.store().commit(b).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Deletes the stored answers and markers whose time is up (every node, every few seconds).
pub async fn purge(core: &Core, now: Timestamp) -> Result<(), StoreError> {
    let stop = expiry_key(now.unix_millis(), "");
    loop {
        let due = store::due(&**core.store(), IDX_EXPIRY, &stop, 256).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new();
        for e in &due {
            b.delete(Stored::KIND, &e.id, Expect::Any);
            b.index_delete(IDX_EXPIRY, &e.key);
        }
        core.store().commit(b).await?;
        if due.len() < 256 {
            return Ok(());
        }
    }
}
