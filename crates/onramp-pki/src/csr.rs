//! PKCS#10 certificate signing requests: parse, verify the signature, classify the key.

use onramp_domain::{KeyKind, KeyRefusal, check_key};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519, OID_X509_COMMON_NAME, OID_X509_SERIALNUMBER,
};
use x509_parser::prelude::*;

/// A CSR whose self-signature verified and whose key Onramp accepts.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo, copied into the issued certificate.
    pub spki_der: Vec<u8>,
    pub key: KeyKind,
    pub subject_cn: Option<String>,
    pub subject_serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the body is not a DER PKCS#10 certification request")]
    Malformed,
    #[error("the certification request carries trailing bytes")]
    TrailingBytes,
    #[error("the certification request's signature does not verify")]
    BadSignature,
    #[error("the certification request is signed with SHA-1, which is not accepted")]
    WeakSignature,
    #[error(transparent)]
    Key(#[from] KeyRefusal),
    #[error("the certification request subject has an unreadable {0} attribute")]
    BadSubject(&'static str),
}

/// Signatures Onramp refuses on a CSR: SHA-1 with RSA or ECDSA.
const SHA1_SIGNATURES: [&str; 2] = ["1.2.840.113549.1.1.5", "1.2.840.10045.4.1"];

pub fn parse_csr(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingBytes);
    }
    let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&sig_oid.as_str()) {
        return Err(CsrError::WeakSignature);
    }
    let info = &csr.certification_request_info;
    // The key is judged first so that a weak key gets its own clear refusal
    // (the verifier would otherwise report only a bad signature).
    let key = classify_key(&info.subject_pki);
    check_key(&key)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let subject_cn = single_attr(&info.subject, &OID_X509_COMMON_NAME, "commonName")?;
    let subject_serial = single_attr(&info.subject, &OID_X509_SERIALNUMBER, "serialNumber")?;
    Ok(VerifiedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        key,
        subject_cn,
        subject_serial,
    })
}

fn single_attr(
    name: &X509Name<'_>,
    oid: &x509_parser::der_parser::Oid<'static>,
    what: &'static str,
) -> Result<Option<String>, CsrError> {
    let mut values = name.iter_by_oid(oid);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    // Two CNs (or two serials) make "the" subject ambiguous: refuse.
    if values.next().is_some() {
        return Err(CsrError::BadSubject(what));
    }
    let s = first.as_str().map_err(|_| CsrError::BadSubject(what))?;
    Ok(Some(s.to_string()))
}

pub(crate) fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> KeyKind {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => KeyKind::EcP256,
            Some(c) if c == OID_NIST_EC_P384 => KeyKind::EcP384,
            Some(c) => KeyKind::EcOther(c.to_id_string()),
            None => KeyKind::EcOther("(no curve)".into()),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => KeyKind::Rsa {
                bits: rsa.key_size(),
            },
            _ => KeyKind::Unknown("malformed RSA key".into()),
        }
    } else if *alg == OID_SIG_ED25519 {
        KeyKind::Ed25519
    } else {
        KeyKind::Unknown(alg.to_id_string())
    }
}
