//! Onramp's certificate authority and the cryptographic helpers around it.
//!
//! Owns: the root and issuing CA (created on first start or imported), key
//! files and their permissions, CSR parsing and checks, device and server
//! certificate issuance, PKCS#7 certs-only encoding for EST, and the keyed
//! hash used to store enrolment tokens and API keys; revocation for relying
//! parties: the CRL the issuing CA signs and the OCSP request parser and
//! response builder with the delegated OCSP signer.
//! Knows nothing of the registry, HTTP or MQTT.

pub mod authorities;
mod ca;
pub mod crl;
mod csr;
mod encoding;
mod files;
pub mod ocsp;
mod provisioning;
pub mod scep;
mod secrets;
pub mod signing;
pub mod tls;

pub use authorities::{Authorities, CaRole, Rollover};
pub use ca::{CaKeyAlgorithm, CertificateAuthority, IssuedCert, RevocationUrls, ServerIdentity};
pub use ca::{certificate_pem, signed_by};
pub use csr::{CsrError, VerifiedCsr, parse_csr};
pub use encoding::{
    CertInfo, base64_mime, certs_only_pkcs7, csr_attributes, decode_base64_lenient,
    fingerprint_sha256, parse_cert, pem_to_der_chain,
};
pub use files::{check_key_file, check_private_dir, write_private_file};
pub use provisioning::{
    CaCertificateInfo, parse_ca_certificate, subject_parameters, verification_certificate_ok,
};
pub use secrets::{SecretHasher, random_secret};
pub use signing::Sha256Context;
pub use tls::{
    ClientCerts, ClientRoots, ExpiredRenewal, server_config, server_config_renewing,
    server_config_with_roots,
};

/// Everything that can go wrong in the PKI layer.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and start again"
    )]
    InsecureKeyFile { path: String, mode: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:o}), so another user could replace the keys or the registry in it; run `chmod go-w {path}` and start again"
    )]
    InsecureDirectory { path: String, mode: u32 },
    #[error(
        "{path} belongs to user id {owner}, not to the user running onramp (id {me}); run onramp as its owner, or `chown {me} {path}` and start again"
    )]
    ForeignOwner { path: String, owner: u32, me: u32 },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate or key material: {0}")]
    Invalid(String),
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

pub type Result<T> = std::result::Result<T, PkiError>;
