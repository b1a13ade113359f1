//! Checking the feed: every checkpoint signed by the pinned key for this scope and never older
//! than the last one; every event the next in sequence and chained to the one before; the
//! head a checkpoint names matching the chain the events built. Nothing is taken from a
//! response that fails any check.

use ring::{digest, signature};
use serde::Deserialize;

const DOMAIN: &[u8] = b"tessera-feed-v1";

/// Why a feed response was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the checkpoint's signature does not verify with the pinned feed key")]
    BadSignature,
    #[error("the checkpoint is for another scope")]
    WrongScope,
    #[error("the checkpoint is older than one already verified (a replay)")]
    OldCheckpoint,
    #[error("the feed went back: sequence {got} after {held}")]
    Rollback { held: u64, got: u64 },
    #[error("a gap in the sequence: expected {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("event {seq} does not follow the chain")]
    BadHash { seq: u64 },
    #[error("event {seq} cannot be read")]
    BadEvent { seq: u64 },
    #[error("the cursor is older than the feed's retention")]
    Reset,
}

/// A checkpoint as the feed sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct Checkpoint {
    pub scope: String,
    pub seq: u64,
    pub hash: String,
    pub time_ms: i64,
    pub algorithm: String,
    pub signature: String,
}

/// One event as the feed sends it: the body is the exact text the chain hashes.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub hash: String,
    pub body: String,
}

/// `GET /v1/feed/changes`.
#[derive(Clone, Debug, Deserialize)]
pub struct Changes {
    pub reset: bool,
    pub events: Vec<Event>,
    pub checkpoint: Checkpoint,
}

/// `GET /v1/feed/snapshot`.
#[derive(Clone, Debug, Deserialize)]
pub struct Snapshot {
    pub checkpoint: Checkpoint,
    /// A tenant scope: its revoked, unexpired certificates as of (at least) the checkpoint.
    #[serde(default)]
    pub revoked_certificates: Option<Vec<RevokedCert>>,
}

/// A revoked certificate in a snapshot.
#[derive(Clone, Debug, Deserialize)]
pub struct RevokedCert {
    pub issuer: String,
    pub serial: String,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    serial: Option<String>,
}

/// What a verified event tells the verifier to forget or refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Anything cached about this key is out of date.
    Key(String),
    /// This certificate (serial, lowercase hex) is revoked.
    CertRevoked(String),
    /// A type this version does not know (ignored: it describes nothing cached).
    Other,
}

/// `SHA-256("tessera-feed-v1" ‖ scope ‖ 0 ‖ prev ‖ seq BE ‖ body)`.
pub fn chain_hash(scope: &str, prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(scope.as_bytes());
    ctx.update(&[0]);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn message(cp: &Checkpoint) -> String {
    format!(
        "tessera-feed-checkpoint-v1\n{}\n{}\n{}\n{}\n",
        cp.scope, cp.seq, cp.hash, cp.time_ms
    )
}

/// The verified position in one scope's feed.
#[derive(Debug)]
pub struct Follower {
    scope: String,
    key: Vec<u8>,
    started: bool,
    /// The last event applied, and the chain hash after it.
    pub seq: u64,
    hash: [u8; 32],
    /// The newest checkpoint time accepted (a checkpoint older than this is a replay).
    newest_ms: i64,
    /// The time of the last checkpoint that named exactly this head: the verifier knows
    /// everything up to then.
    pub known_at_ms: Option<i64>,
}

impl Follower {
    /// A follower of `scope` trusting checkpoints signed by `public_key` (32 bytes).
    pub fn new(scope: &str, public_key: Vec<u8>) -> Self {
        Self {
            scope: scope.to_owned(),
            key: public_key,
            started: false,
            seq: 0,
            hash: [0; 32],
            newest_ms: i64::MIN,
            known_at_ms: None,
        }
    }

    fn check(&self, cp: &Checkpoint) -> Result<(), FeedError> {
        let sig = unhex(&cp.signature).ok_or(FeedError::BadSignature)?;
        if cp.algorithm != "ed25519" {
            return Err(FeedError::BadSignature);
        }
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.key)
            .verify(message(cp).as_bytes(), &sig)
            .map_err(|_| FeedError::BadSignature)?;
        if cp.scope != self.scope {
            return Err(FeedError::WrongScope);
        }
        if cp.time_ms < self.newest_ms {
            return Err(FeedError::OldCheckpoint);
        }
        Ok(())
    }

    /// Starts (or restarts after a reset) from a snapshot's checkpoint. A head behind the
    /// one already held is a rollback: refused.
    pub fn start(&mut self, cp: &Checkpoint) -> Result<(), FeedError> {
        self.check(cp)?;
        if self.started && cp.seq < self.seq {
            return Err(FeedError::Rollback {
                held: self.seq,
                got: cp.seq,
            });
        }
        let hash: [u8; 32] = unhex(&cp.hash)
            .and_then(|h| h.try_into().ok())
            .ok_or(FeedError::BadSignature)?;
        self.started = true;
        self.seq = cp.seq;
        self.hash = hash;
        self.newest_ms = cp.time_ms;
        self.known_at_ms = Some(cp.time_ms);
        Ok(())
    }

    /// Whether [`Follower::start`] has succeeded.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Applies a page of changes, all or nothing; returns what they change.
    pub fn apply(&mut self, changes: &Changes) -> Result<Vec<Change>, FeedError> {
        if changes.reset {
            return Err(FeedError::Reset);
        }
        let cp = &changes.checkpoint;
        self.check(cp)?;
        let (mut seq, mut hash) = (self.seq, self.hash);
        let mut out = Vec::with_capacity(changes.events.len());
        for e in &changes.events {
            if e.seq != seq + 1 {
                return Err(FeedError::Gap {
                    expected: seq + 1,
                    got: e.seq,
                });
            }
            let next = chain_hash(&self.scope, &hash, e.seq, e.body.as_bytes());
            if hex(&next) != e.hash {
                return Err(FeedError::BadHash { seq: e.seq });
            }
            let body: Body =
                serde_json::from_str(&e.body).map_err(|_| FeedError::BadEvent { seq: e.seq })?;
            out.push(match (body.kind.as_str(), body.key_id, body.serial) {
                // A new key: no answer about it can be cached from before it existed (it was
                // NOT_FOUND then, and those are not cached).
                ("key.created", _, _) => Change::Other,
                (k, Some(id), _) if k.starts_with("key.") => Change::Key(id),
                ("cert.revoked", _, Some(serial)) => Change::CertRevoked(serial.to_lowercase()),
                _ => Change::Other,
            });
            (seq, hash) = (e.seq, next);
        }
        if cp.seq < seq {
            return Err(FeedError::Rollback {
                held: seq,
                got: cp.seq,
            });
        }
        if cp.seq == seq && cp.hash != hex(&hash) {
            return Err(FeedError::BadHash { seq });
        }
        self.seq = seq;
        self.hash = hash;
        self.newest_ms = cp.time_ms;
        if cp.seq == seq {
            self.known_at_ms = Some(cp.time_ms);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const SCOPE: &str = "tenant:acme";

    /// A feed signer made by the test (as the server's would be), and a builder of its pages.
    struct Feed {
        pair: Ed25519KeyPair,
        seq: u64,
        hash: [u8; 32],
    }

    impl Feed {
        fn new() -> Self {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
            Self {
                pair: Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
                seq: 0,
                hash: [0; 32],
            }
        }

        fn public(&self) -> Vec<u8> {
            self.pair.public_key().as_ref().to_vec()
        }

        fn checkpoint(&self, scope: &str, time_ms: i64) -> Checkpoint {
            let mut cp = Checkpoint {
                scope: scope.into(),
                seq: self.seq,
                hash: hex(&self.hash),
                time_ms,
                algorithm: "ed25519".into(),
                signature: String::new(),
            };
            cp.signature = hex(self.pair.sign(message(&cp).as_bytes()).as_ref());
            cp
        }

        fn event(&mut self, key: &str) -> Event {
            self.seq += 1;
            let body = format!(r#"{{"type":"key.revoked","key_id":"{key}"}}"#);
            self.hash = chain_hash(SCOPE, &self.hash, self.seq, body.as_bytes());
            Event {
                seq: self.seq,
                hash: hex(&self.hash),
                body,
            }
        }

        fn page(&mut self, keys: &[&str], time_ms: i64) -> Changes {
            let events = keys.iter().map(|k| self.event(k)).collect();
            Changes {
                reset: false,
                events,
                checkpoint: self.checkpoint(SCOPE, time_ms),
            }
        }
    }

    fn started(feed: &Feed) -> Follower {
        let mut f = Follower::new(SCOPE, feed.public());
        f.start(&feed.checkpoint(SCOPE, 1_000)).unwrap();
        f
    }

    #[test]
    fn a_genuine_feed_is_followed_and_names_what_changed() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let out = f.apply(&feed.page(&["k1", "k2"], 2_000)).unwrap();
        assert_eq!(
            out,
            vec![Change::Key("k1".into()), Change::Key("k2".into())]
        );
        assert_eq!((f.seq, f.known_at_ms), (2, Some(2_000)));
        // An idle heartbeat moves the known time on.
        f.apply(&feed.page(&[], 3_000)).unwrap();
        assert_eq!(f.known_at_ms, Some(3_000));
        // Other event types: a new key changes nothing cached; a certificate revocation.
        let mut page = Changes {
            reset: false,
            events: Vec::new(),
            checkpoint: feed.checkpoint(SCOPE, 4_000),
        };
        for body in [
            r#"{"type":"key.created","key_id":"k3"}"#,
            r#"{"type":"cert.revoked","serial":"0A1B","issuer":"ca1"}"#,
            r#"{"type":"something.new"}"#,
        ] {
            feed.seq += 1;
            feed.hash = chain_hash(SCOPE, &feed.hash, feed.seq, body.as_bytes());
            page.events.push(Event {
                seq: feed.seq,
                hash: hex(&feed.hash),
                body: body.into(),
            });
        }
        page.checkpoint = feed.checkpoint(SCOPE, 4_000);
        assert_eq!(
            f.apply(&page).unwrap(),
            vec![
                Change::Other,
                Change::CertRevoked("0a1b".into()),
                Change::Other
            ]
        );
    }

    #[test]
    fn a_forged_signature_or_another_key_is_rejected() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let mut page = feed.page(&["k1"], 2_000);
        page.checkpoint.time_ms += 1;
        assert_eq!(f.apply(&page), Err(FeedError::BadSignature));
        let mut other = Feed::new();
        other.seq = feed.seq;
        other.hash = feed.hash;
        let page = Changes {
            reset: false,
            events: Vec::new(),
            checkpoint: other.checkpoint(SCOPE, 5_000),
        };
        assert_eq!(f.apply(&page), Err(FeedError::BadSignature));
        // Nothing was taken from the rejected pages.
        assert_eq!((f.seq, f.known_at_ms), (0, Some(1_000)));
    }

    #[test]
    fn another_scopes_checkpoint_is_rejected() {
        let feed = Feed::new();
        let mut f = started(&feed);
        let page = Changes {
            reset: false,
            events: Vec::new(),
            checkpoint: feed.checkpoint("tenant:other", 5_000),
        };
        assert_eq!(f.apply(&page), Err(FeedError::WrongScope));
    }

    #[test]
    fn a_replayed_old_checkpoint_is_rejected() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let old = feed.page(&[], 2_000);
        f.apply(&feed.page(&[], 3_000)).unwrap();
        assert_eq!(f.apply(&old), Err(FeedError::OldCheckpoint));
        assert_eq!(f.known_at_ms, Some(3_000));
    }

    #[test]
    fn a_gap_a_repeat_or_a_broken_chain_is_rejected() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let first = feed.page(&["k1"], 2_000);
        f.apply(&first).unwrap();
        // A gap: event 2 withheld.
        feed.event("k2");
        let page = feed.page(&["k3"], 3_000);
        assert_eq!(
            f.apply(&page),
            Err(FeedError::Gap {
                expected: 2,
                got: 3
            })
        );
        // A repeat of event 1.
        let mut again = first.clone();
        again.checkpoint = feed.checkpoint(SCOPE, 3_500);
        assert!(matches!(f.apply(&again), Err(FeedError::Gap { .. })));
        // An altered body under a genuine checkpoint.
        let mut feed2 = Feed::new();
        let mut g = started(&feed2);
        let mut page = feed2.page(&["k1"], 2_000);
        page.events[0].body = page.events[0].body.replace("k1", "k9");
        assert_eq!(g.apply(&page), Err(FeedError::BadHash { seq: 1 }));
        assert_eq!(g.seq, 0);
    }

    #[test]
    fn a_checkpoint_that_disagrees_with_the_chain_is_a_fork() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let mut page = feed.page(&["k1"], 2_000);
        // The events are genuine but the server signs another head at the same seq.
        feed.hash = [7; 32];
        page.checkpoint = feed.checkpoint(SCOPE, 2_000);
        assert_eq!(f.apply(&page), Err(FeedError::BadHash { seq: 1 }));
    }

    #[test]
    fn a_snapshot_behind_the_held_head_is_a_rollback() {
        let mut feed = Feed::new();
        let mut f = started(&feed);
        let behind = feed.checkpoint(SCOPE, 1_500);
        f.apply(&feed.page(&["k1", "k2"], 2_000)).unwrap();
        let mut stale = behind;
        stale.time_ms = 2_500;
        stale.signature = hex(feed.pair.sign(message(&stale).as_bytes()).as_ref());
        assert_eq!(
            f.start(&stale),
            Err(FeedError::Rollback { held: 2, got: 0 })
        );
        assert_eq!(
            f.apply(&Changes {
                reset: true,
                events: Vec::new(),
                checkpoint: feed.checkpoint(SCOPE, 3_000),
            }),
            Err(FeedError::Reset)
        );
    }
}
