//! Detached signatures of OTA artifacts, in the forms OpenSSL checks on a
//! device:
//! - Ed25519 (RFC 8032, pure): the 64-byte raw signature of the file's bytes;
//!   `openssl pkeyutl -verify -pubin -inkey vendor.pub -rawin -in FILE -sigfile FILE.sig`.
//! - ECDSA P-256 with SHA-256: the DER-encoded signature;
//!   `openssl dgst -sha256 -verify vendor.pub -signature FILE.sig FILE`.
//!
//! Keys are PKCS#8 PEM (private) and SubjectPublicKeyInfo PEM (public).
//! Signing happens on the build machine; the server only verifies.

use crate::{PkiError, Result};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, UnparsedPublicKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// The signature schemes of artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    Ed25519,
    EcdsaP256,
}

impl SignatureAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::Ed25519 => "ed25519",
            SignatureAlgorithm::EcdsaP256 => "ecdsa-p256",
        }
    }

    pub fn parse(s: &str) -> Option<SignatureAlgorithm> {
        match s {
            "ed25519" => Some(SignatureAlgorithm::Ed25519),
            "ecdsa-p256" | "p256" => Some(SignatureAlgorithm::EcdsaP256),
            _ => None,
        }
    }
}

// DER of the algorithm identifiers' OIDs.
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// SHA-256 computed over chunks, for files streamed to disk.
pub struct Sha256Context(digest::Context);

impl Default for Sha256Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256Context {
    pub fn new() -> Self {
        Sha256Context(digest::Context::new(&digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

/// A signer's public key, parsed and checked.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub algorithm: SignatureAlgorithm,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

impl PublicKey {
    /// Reads a `-----BEGIN PUBLIC KEY-----` PEM: Ed25519 or EC P-256.
    pub fn from_pem(pem: &str) -> Result<PublicKey> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            PkiError::Invalid("not a PEM public key (-----BEGIN PUBLIC KEY-----)".into())
        })?;
        let der = spki.as_ref().to_vec();
        // The algorithm identifier sits at the start of the structure.
        let head = &der[..der.len().min(32)];
        let algorithm = if contains(head, OID_ED25519) {
            SignatureAlgorithm::Ed25519
        } else if contains(head, OID_EC_PUBLIC_KEY) && contains(head, OID_PRIME256V1) {
            SignatureAlgorithm::EcdsaP256
        } else {
            return Err(PkiError::Invalid(
                "unsupported public key: use Ed25519 or ECDSA P-256".into(),
            ));
        };
        let alg: &'static dyn signature::VerificationAlgorithm = match algorithm {
            SignatureAlgorithm::Ed25519 => &signature::ED25519,
            SignatureAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        };
        signature::ParsedPublicKey::new(alg, &der)
            .map_err(|_| PkiError::Invalid("the public key does not parse".into()))?;
        Ok(PublicKey {
            algorithm,
            spki_der: der,
        })
    }

    /// Whether `signature` signs `message` (the whole artifact).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let alg: &'static dyn signature::VerificationAlgorithm = match self.algorithm {
            SignatureAlgorithm::Ed25519 => &signature::ED25519,
            SignatureAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        };
        UnparsedPublicKey::new(alg, &self.spki_der)
            .verify(message, signature)
            .is_ok()
    }

    /// ECDSA only: whether `signature` signs the message whose SHA-256 is
    /// `sha256` (lets a large file be checked without holding it).
    pub fn verify_sha256(&self, sha256: &[u8], signature: &[u8]) -> bool {
        if self.algorithm != SignatureAlgorithm::EcdsaP256 {
            return false;
        }
        let Ok(d) = digest::Digest::import_less_safe(sha256, &digest::SHA256) else {
            return false;
        };
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.spki_der)
            .verify_digest(&d, signature)
            .is_ok()
    }
}

/// Whether `signature` signs the file at `path`, whose SHA-256 is
/// `sha256`. ECDSA checks the digest; Ed25519 signs the whole message, so
/// the file is mapped into memory (read from the page cache, never copied
/// onto the heap).
pub fn verify_file(
    key: &PublicKey,
    path: &std::path::Path,
    sha256: &[u8],
    signature: &[u8],
) -> Result<bool> {
    match key.algorithm {
        SignatureAlgorithm::EcdsaP256 => Ok(key.verify_sha256(sha256, signature)),
        SignatureAlgorithm::Ed25519 => {
            let file = std::fs::File::open(path).map_err(|e| PkiError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            let map = Mapped::new(&file).map_err(|e| PkiError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            Ok(key.verify(map.bytes(), signature))
        }
    }
}

/// A read-only private mapping of a whole file.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large to map"))?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of an open file; the
        // pointer is checked against MAP_FAILED and unmapped on drop. The
        // file is Onramp's own temporary file, not changed while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `new` made.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

/// A signing key (build machine only).
pub enum SigningKey {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), as
    /// `openssl genpkey -algorithm ed25519` or
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` write it.
    pub fn from_pem(pem: &str) -> Result<SigningKey> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            PkiError::Invalid("not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)".into())
        })?;
        let der = der.secret_pkcs8_der();
        if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(SigningKey::Ed25519(k));
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der) {
            return Ok(SigningKey::EcdsaP256(k));
        }
        Err(PkiError::Invalid(
            "unsupported private key: use Ed25519 or ECDSA P-256 (PKCS#8)".into(),
        ))
    }

    /// A new key and its PKCS#8 PEM.
    pub fn generate(algorithm: SignatureAlgorithm) -> Result<(SigningKey, String)> {
        let crypto = |e: aws_lc_rs::error::Unspecified| PkiError::Crypto(e.to_string());
        let der = match algorithm {
            SignatureAlgorithm::Ed25519 => Ed25519KeyPair::generate()
                .map_err(crypto)?
                .to_pkcs8v1()
                .map_err(crypto)?
                .as_ref()
                .to_vec(),
            SignatureAlgorithm::EcdsaP256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                    .map_err(crypto)?
                    .as_ref()
                    .to_vec()
            }
        };
        let pem = pem_block("PRIVATE KEY", &der);
        Ok((SigningKey::from_pem(&pem)?, pem))
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            SigningKey::Ed25519(_) => SignatureAlgorithm::Ed25519,
            SigningKey::EcdsaP256(_) => SignatureAlgorithm::EcdsaP256,
        }
    }

    /// The public key as `-----BEGIN PUBLIC KEY-----` PEM.
    pub fn public_key_pem(&self) -> Result<String> {
        let crypto = |e: aws_lc_rs::error::Unspecified| PkiError::Crypto(e.to_string());
        let der = match self {
            SigningKey::Ed25519(k) => k.public_key().as_der().map_err(crypto)?.as_ref().to_vec(),
            SigningKey::EcdsaP256(k) => k.public_key().as_der().map_err(crypto)?.as_ref().to_vec(),
        };
        Ok(pem_block("PUBLIC KEY", &der))
    }

    /// The detached signature of `message`: raw 64 bytes (Ed25519) or DER
    /// (ECDSA P-256 over SHA-256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        match self {
            SigningKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            SigningKey::EcdsaP256(k) => Ok(k
                .sign(&SystemRandom::new(), message)
                .map_err(|e| PkiError::Crypto(e.to_string()))?
                .as_ref()
                .to_vec()),
        }
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_sign_and_verify_and_refuse_tampering() {
        for alg in [SignatureAlgorithm::Ed25519, SignatureAlgorithm::EcdsaP256] {
            let (key, pem) = SigningKey::generate(alg).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let again = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(again.algorithm(), alg);
            let public = PublicKey::from_pem(&key.public_key_pem().unwrap()).unwrap();
            assert_eq!(public.algorithm, alg);
            let sig = key.sign(b"firmware").unwrap();
            assert!(public.verify(b"firmware", &sig), "{alg:?}");
            assert!(!public.verify(b"firmwarf", &sig), "{alg:?}");
            let digest = digest::digest(&digest::SHA256, b"firmware");
            assert_eq!(
                public.verify_sha256(digest.as_ref(), &sig),
                alg == SignatureAlgorithm::EcdsaP256
            );
            let (other, _) = SigningKey::generate(alg).unwrap();
            let other = PublicKey::from_pem(&other.public_key_pem().unwrap()).unwrap();
            assert!(!other.verify(b"firmware", &sig));
        }
    }

    #[test]
    fn files_verify_by_mapping_or_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.bin");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &body).unwrap();
        let sha = digest::digest(&digest::SHA256, &body);
        for alg in [SignatureAlgorithm::Ed25519, SignatureAlgorithm::EcdsaP256] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let public = PublicKey::from_pem(&key.public_key_pem().unwrap()).unwrap();
            let sig = key.sign(&body).unwrap();
            assert!(verify_file(&public, &path, sha.as_ref(), &sig).unwrap());
            let other = key.sign(b"other").unwrap();
            assert!(!verify_file(&public, &path, sha.as_ref(), &other).unwrap());
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let (key, _) = SigningKey::generate(SignatureAlgorithm::Ed25519).unwrap();
        let public = PublicKey::from_pem(&key.public_key_pem().unwrap()).unwrap();
        let sig = key.sign(b"").unwrap();
        let sha = digest::digest(&digest::SHA256, b"");
        assert!(verify_file(&public, &empty, sha.as_ref(), &sig).unwrap());
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(SigningKey::from_pem("hello").is_err());
    }
}
