//! The feed's signing key: Ed25519, its own (not the audit key: a verifier pinned to the feed
//! key trusts nothing the audit key signed, and the reverse). Created once, sealed in the
//! store like every record; every node of a cluster reads the same one.

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::{
    crypto::{hex, random, secret::SecretBytes},
    store::{self, Kind, Record, Store, StoreError},
};

#[derive(Serialize, Deserialize)]
struct SigningKey {
    #[serde(with = "crate::crypto::serde_hex::secret")]
    pkcs8: SecretBytes,
}

impl Record for SigningKey {
    const KIND: Kind = Kind("feed_key");
}
const KEY_ID: &str = "ed25519";

pub(super) struct Signer {
    pair: Ed25519KeyPair,
    public_hex: String,
}

/// The signed text of a checkpoint.
pub fn message(scope: &str, seq: u64, hash: &str, time_ms: i64) -> String {
    format!("tessera-feed-checkpoint-v1\n{scope}\n{seq}\n{hash}\n{time_ms}\n")
}

impl Signer {
    pub(super) async fn load_or_create(store: &dyn Store) -> Result<Self, StoreError> {
        let key = store::record::get_or_create(store, KEY_ID, || {
            let pkcs8 = random::ed25519_pkcs8().map_err(|_| StoreError::Crypto)?;
            Ok(SigningKey { pkcs8 })
        })
        .await?;
        let pair =
            Ed25519KeyPair::from_pkcs8(key.pkcs8.expose()).map_err(|_| StoreError::Crypto)?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Ok(Self { pair, public_hex })
    }

    pub(super) fn public_hex(&self) -> &str {
        &self.public_hex
    }

    pub(super) fn sign(&self, msg: &str) -> String {
        hex::encode(self.pair.sign(msg.as_bytes()).as_ref())
    }
}
