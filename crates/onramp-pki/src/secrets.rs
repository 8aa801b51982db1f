//! Random secrets and the keyed hash that stores them.
//!
//! Enrolment tokens and API keys are 256-bit random values, so a fast keyed
//! hash (HMAC-SHA256 under a server-side key) is as strong as a slow password
//! hash against guessing, and costs microseconds instead of a capped rate.

use crate::files::{read_key_file, write_private_file};
use crate::{PkiError, Result};
use aws_lc_rs::{hmac, rand::SecureRandom, rand::SystemRandom};
use base64::Engine;
use std::path::Path;

/// A random secret: `prefix` then 32 random bytes in URL-safe base64 (43 chars).
pub fn random_secret(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("system random source failed".into()))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("system random source failed".into()))?;
    Ok(bytes)
}

/// HMAC-SHA256 under a key that lives in the data directory (mode 0600).
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(..)")
    }
}

impl SecretHasher {
    pub fn from_key(key: &[u8]) -> SecretHasher {
        SecretHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Loads the hashing key, creating it on first use.
    pub fn load_or_create(path: &Path) -> Result<SecretHasher> {
        if path.exists() {
            let hexkey = read_key_file(path)?;
            let key = hex::decode(hexkey.trim())
                .map_err(|_| PkiError::Invalid(format!("{} is not hex", path.display())))?;
            return Ok(SecretHasher::from_key(&key));
        }
        let key: [u8; 32] = random_bytes()?;
        write_private_file(path, hex::encode(key).as_bytes())?;
        Ok(SecretHasher::from_key(&key))
    }

    /// The stored form of a secret: lowercase hex of its HMAC.
    pub fn hash(&self, secret: &str) -> String {
        hex::encode(hmac::sign(&self.key, secret.as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_hashes_depend_on_the_key() {
        let a = random_secret("ont_").unwrap();
        let b = random_secret("ont_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ont_") && a.len() == 4 + 43);
        let h1 = SecretHasher::from_key(b"k1");
        let h2 = SecretHasher::from_key(b"k2");
        assert_eq!(h1.hash(&a), h1.hash(&a));
        assert_ne!(h1.hash(&a), h2.hash(&a));
        assert_ne!(h1.hash(&a), h1.hash(&b));
    }

    #[test]
    fn the_hashing_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hmac.key");
        let h1 = SecretHasher::load_or_create(&p).unwrap();
        let h2 = SecretHasher::load_or_create(&p).unwrap();
        assert_eq!(h1.hash("x"), h2.hash("x"));
    }
}
