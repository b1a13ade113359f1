//! The master key and the keyring it wraps: versioned data keys (which seal records) and the
//! pepper (which keys the API-key hashes).
//!
//! Envelope encryption: the master key never touches a record; it only wraps the keyring.
//! Each wrapped value is `nonce || AES-256-GCM(master, key, aad = label)`, where the label
//! names the value (`tessera/keyring/data-key/<v>`, `tessera/keyring/pepper`), so wrapped
//! values cannot be swapped for one another.

use std::collections::BTreeMap;

use super::{
    CryptoError,
    aead::{AeadKey, NONCE_BYTES},
    hash::Pepper,
    random,
    secret::{Key256, SecretBytes},
};

/// The master key. Present only while the server is unsealed.
pub struct MasterKey {
    raw: Key256,
    aead: AeadKey,
}

impl MasterKey {
    pub fn new(raw: Key256) -> Result<Self, CryptoError> {
        let aead = AeadKey::new(&raw)?;
        Ok(Self { raw, aead })
    }

    pub fn generate() -> Result<Self, CryptoError> {
        Self::new(Key256::generate()?)
    }

    /// A second handle on the same key (the first stays usable), for reopening the store
    /// after a storage fault.
    pub fn duplicate(&self) -> Result<Self, CryptoError> {
        Self::new(self.raw.clone())
    }

    /// The raw key, for writing the key file.
    pub fn expose(&self) -> &[u8; 32] {
        self.raw.expose()
    }

    fn wrap(&self, label: &str, key: &Key256) -> Result<Vec<u8>, CryptoError> {
        let nonce = random::bytes::<NONCE_BYTES>()?;
        let mut out = nonce.to_vec();
        out.extend(self.aead.seal(nonce, label.as_bytes(), key.expose()));
        Ok(out)
    }

    fn unwrap(&self, label: &str, wrapped: &[u8]) -> Result<Key256, CryptoError> {
        if wrapped.len() < NONCE_BYTES {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = wrapped.split_at(NONCE_BYTES);
        let mut n = [0u8; NONCE_BYTES];
        n.copy_from_slice(nonce);
        let plain: SecretBytes = self.aead.open(n, label.as_bytes(), ct)?;
        Key256::from_slice(plain.expose()).ok_or(CryptoError::Malformed)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// The keyring as it is persisted: every value wrapped by the master key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrappedKeyring {
    pub current: u32,
    pub data_keys: BTreeMap<u32, Vec<u8>>,
    pub pepper: Vec<u8>,
}

/// The unwrapped keyring.
pub struct Keyring {
    current: u32,
    data_keys: BTreeMap<u32, AeadKey>,
    pepper: Pepper,
}

fn data_key_label(version: u32) -> String {
    format!("tessera/keyring/data-key/{version}")
}

const PEPPER_LABEL: &str = "tessera/keyring/pepper";

impl Keyring {
    /// A new keyring with data-key version 1 and a fresh pepper, and its wrapped form.
    pub fn generate(master: &MasterKey) -> Result<(Self, WrappedKeyring), CryptoError> {
        let data_key = Key256::generate()?;
        let pepper = Key256::generate()?;
        let wrapped = WrappedKeyring {
            current: 1,
            data_keys: BTreeMap::from([(1, master.wrap(&data_key_label(1), &data_key)?)]),
            pepper: master.wrap(PEPPER_LABEL, &pepper)?,
        };
        let ring = Self {
            current: 1,
            data_keys: BTreeMap::from([(1, AeadKey::new(&data_key)?)]),
            pepper: Pepper::new(&pepper),
        };
        Ok((ring, wrapped))
    }

    /// Unwraps a persisted keyring. Fails with `Tampered` if `master` is not the key that
    /// wrapped it.
    pub fn unwrap(master: &MasterKey, wrapped: &WrappedKeyring) -> Result<Self, CryptoError> {
        let mut data_keys = BTreeMap::new();
        for (&v, w) in &wrapped.data_keys {
            let k = master.unwrap(&data_key_label(v), w)?;
            data_keys.insert(v, AeadKey::new(&k)?);
        }
        if !data_keys.contains_key(&wrapped.current) {
            return Err(CryptoError::Malformed);
        }
        let pepper = master.unwrap(PEPPER_LABEL, &wrapped.pepper)?;
        Ok(Self {
            current: wrapped.current,
            data_keys,
            pepper: Pepper::new(&pepper),
        })
    }

    pub fn current_version(&self) -> u32 {
        self.current
    }

    pub fn versions(&self) -> Vec<u32> {
        self.data_keys.keys().copied().collect()
    }

    /// Seals with the current data key; returns the version used.
    pub fn seal(&self, nonce: [u8; NONCE_BYTES], aad: &[u8], plaintext: &[u8]) -> (u32, Vec<u8>) {
        // `current` is always present: both constructors check it.
        let ct = self
            .data_keys
            .get(&self.current)
            .map(|k| k.seal(nonce, aad, plaintext))
            .unwrap_or_default();
        (self.current, ct)
    }

    pub fn open(
        &self,
        version: u32,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        self.data_keys
            .get(&version)
            .ok_or(CryptoError::Malformed)?
            .open(nonce, aad, ciphertext)
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }
}

impl WrappedKeyring {
    /// The keyring with one more data-key version, which becomes current. The pepper is
    /// unchanged (a new one would invalidate every stored hash).
    pub fn with_new_version(&self, master: &MasterKey) -> Result<Self, CryptoError> {
        let next = self.data_keys.keys().max().copied().unwrap_or(0) + 1;
        let key = Key256::generate()?;
        let mut w = self.clone();
        w.data_keys
            .insert(next, master.wrap(&data_key_label(next), &key)?);
        w.current = next;
        Ok(w)
    }

    /// The keyring without the data-key versions other than the current one.
    pub fn retire_old(&self) -> Self {
        let mut w = self.clone();
        let current = w.current;
        w.data_keys.retain(|v, _| *v == current);
        w
    }

    /// The same keys wrapped by another master key (master-key rotation).
    pub fn rewrapped(&self, old: &MasterKey, new: &MasterKey) -> Result<Self, CryptoError> {
        let mut w = self.clone();
        for (v, wrapped) in w.data_keys.iter_mut() {
            let key = old.unwrap(&data_key_label(*v), wrapped)?;
            *wrapped = new.wrap(&data_key_label(*v), &key)?;
        }
        let pepper = old.unwrap(PEPPER_LABEL, &self.pepper)?;
        w.pepper = new.wrap(PEPPER_LABEL, &pepper)?;
        Ok(w)
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("versions", &self.data_keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_master() {
        let m = MasterKey::generate().unwrap();
        let (ring, wrapped) = Keyring::generate(&m).unwrap();
        let n = [0u8; NONCE_BYTES];
        let (v, ct) = ring.seal(n, b"aad", b"record");
        let again = Keyring::unwrap(&m, &wrapped).unwrap();
        assert_eq!(again.open(v, n, b"aad", &ct).unwrap().expose(), b"record");
        let h = ring.pepper().verification_hash(b"k");
        assert!(again.pepper().verify(b"k", &h));

        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            Keyring::unwrap(&other, &wrapped),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn rotation_keeps_old_versions_readable_and_the_pepper() {
        let m = MasterKey::generate().unwrap();
        let (ring, wrapped) = Keyring::generate(&m).unwrap();
        let n = [0u8; NONCE_BYTES];
        let (v1, ct) = ring.seal(n, b"a", b"old");
        let h = ring.pepper().verification_hash(b"k");
        let next = wrapped.with_new_version(&m).unwrap();
        let ring2 = Keyring::unwrap(&m, &next).unwrap();
        assert_eq!(ring2.current_version(), 2);
        assert_eq!(ring2.open(v1, n, b"a", &ct).unwrap().expose(), b"old");
        assert!(ring2.pepper().verify(b"k", &h));
        let retired = Keyring::unwrap(&m, &next.retire_old()).unwrap();
        assert!(retired.open(v1, n, b"a", &ct).is_err());
        // A new master key wraps the same keys.
        let m2 = MasterKey::generate().unwrap();
        let moved = next.rewrapped(&m, &m2).unwrap();
        assert!(Keyring::unwrap(&m, &moved).is_err());
        let ring3 = Keyring::unwrap(&m2, &moved).unwrap();
        assert_eq!(ring3.open(v1, n, b"a", &ct).unwrap().expose(), b"old");
        assert!(ring3.pepper().verify(b"k", &h));
    }

    #[test]
    fn a_truncated_wrapped_key_is_refused_not_a_panic() {
        let m = MasterKey::generate().unwrap();
        let key = Key256::generate().unwrap();
        let wrapped = m.wrap("dk/1", &key).unwrap();
        assert_eq!(m.unwrap("dk/1", &wrapped).unwrap().expose(), key.expose());
        assert!(matches!(
            m.unwrap("dk/1", &wrapped[..5]),
            Err(CryptoError::Malformed)
        ));
        for cut in [0, NONCE_BYTES, wrapped.len() - 1] {
            assert!(m.unwrap("dk/1", &wrapped[..cut]).is_err(), "{cut} bytes");
        }
        assert!(m.unwrap("dk/2", &wrapped).is_err());
    }

    #[test]
    fn wrapped_values_cannot_be_swapped() {
        let m = MasterKey::generate().unwrap();
        let (_, mut wrapped) = Keyring::generate(&m).unwrap();
        let dk = wrapped.data_keys[&1].clone();
        wrapped.data_keys.insert(1, wrapped.pepper.clone());
        wrapped.pepper = dk;
        assert!(Keyring::unwrap(&m, &wrapped).is_err());
    }
}
