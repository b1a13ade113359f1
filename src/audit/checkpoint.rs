//! Signed checkpoints: the chain head (seq and hash) with a time, signed with Tessera's audit
//! key (Ed25519). An outside party keeps checkpoints and can later prove, offline, that the
//! log was not truncated or rewritten: `tessera audit verify --checkpoint FILE`.
//!
//! The signed message is the UTF-8 text
//! `tessera-audit-checkpoint-v1\n<seq>\n<hash hex>\n<time RFC 3339>\n`.

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::{Audit, LOG};
use crate::{
    clock::Timestamp,
    crypto::{hex, random, secret::SecretBytes},
    store::{self, Batch, Expect, Kind, Record, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit signing key is unusable")]
    Key,
    #[error("the checkpoint's signature does not verify")]
    BadSignature,
    #[error("the checkpoint was signed by another key than this log's")]
    WrongKey,
}

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time: Timestamp,
    pub algorithm: String,
    pub public_key: String,
    pub signature: String,
}

impl Record for Checkpoint {
    const KIND: Kind = Kind("audit_checkpoint");
}
const LATEST: &str = "latest";

fn message(seq: u64, hash: &str, time: Timestamp) -> String {
    format!("tessera-audit-checkpoint-v1\n{seq}\n{hash}\n{time}\n")
}

impl Checkpoint {
    /// Checks the signature with the public key the checkpoint carries. Whether that key is
    /// this log's is a separate question ([`Audit::check_checkpoint`]).
    pub fn verify_signature(&self) -> Result<(), CheckpointError> {
        let pk = hex::decode(&self.public_key).ok_or(CheckpointError::BadSignature)?;
        let sig = hex::decode(&self.signature).ok_or(CheckpointError::BadSignature)?;
        if self.algorithm != "ed25519" {
            return Err(CheckpointError::BadSignature);
        }
        signature::UnparsedPublicKey::new(&signature::ED25519, pk)
            .verify(message(self.seq, &self.hash, self.time).as_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// The sealed audit signing key.
#[derive(Serialize, Deserialize)]
struct SigningKey {
    #[serde(with = "crate::crypto::serde_hex::secret")]
    pkcs8: SecretBytes,
}

impl Record for SigningKey {
    const KIND: Kind = Kind("audit_key");
}
const KEY_ID: &str = "ed25519";

pub(super) struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    pub(super) async fn load_or_create(store: &dyn Store) -> Result<Self, CheckpointError> {
        let key = store::record::get_or_create(store, KEY_ID, || {
            let pkcs8 = random::ed25519_pkcs8().map_err(|_| StoreError::Crypto)?;
            Ok(SigningKey { pkcs8 })
        })
        .await?;
        let pair =
            Ed25519KeyPair::from_pkcs8(key.pkcs8.expose()).map_err(|_| CheckpointError::Key)?;
        Ok(Self { pair })
    }

    pub(super) fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }
}

/// The public key (hex) of the audit key stored in `store`, without creating one.
pub async fn stored_public_key(store: &dyn Store) -> Result<Option<String>, CheckpointError> {
    let Some((_, k)) = store::record::get::<SigningKey>(store, KEY_ID).await? else {
        return Ok(None);
    };
    let pair = Ed25519KeyPair::from_pkcs8(k.pkcs8.expose()).map_err(|_| CheckpointError::Key)?;
    Ok(Some(hex::encode(pair.public_key().as_ref())))
}

impl Audit {
    /// Signs the current chain head and stores it as the latest checkpoint.
    pub async fn checkpoint(&self, now: Timestamp) -> Result<Checkpoint, CheckpointError> {
        let head = self.store.log_head(LOG).await?;
        let hash = hex::encode(&head.hash);
        let time = Timestamp::from_unix(now.unix());
        let sig = self
            .signer
            .pair
            .sign(message(head.seq, &hash, time).as_bytes());
        let cp = Checkpoint {
            seq: head.seq,
            hash,
            time,
            algorithm: "ed25519".into(),
            public_key: self.signer.public_key_hex(),
            signature: hex::encode(sig.as_ref()),
        };
        let mut b = Batch::new();
        b.put_record(LATEST, &cp, Expect::Any)?;
        self.store.commit(b).await?;
        Ok(cp)
    }

    /// The latest stored checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(store::record::get::<Checkpoint>(&*self.store, LATEST)
            .await?
            .map(|(_, c)| c))
    }

    /// Whether a checkpoint is genuine for this log: signed, by this log's key.
    pub fn check_checkpoint(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        cp.verify_signature()?;
        if cp.public_key != self.signer.public_key_hex() {
            return Err(CheckpointError::WrongKey);
        }
        Ok(())
    }
}
