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
    match X509CertificationRequest::from_der(der) {
        Ok(_) => parse_csr_as(der, der),
        // certmonger (a SCEP client) writes the challenge password as a
        // PrintableString whatever it holds, and enrolment tokens hold `_`,
        // which PrintableString does not allow. Such a request is read as
        // if the string were UTF8String; its signature is still checked
        // over the bytes as they were signed.
        Err(_) => match lenient_challenge_password(der) {
            Some(patched) => parse_csr_as(&patched, der),
            None => Err(CsrError::Malformed),
        },
    }
}

const CHALLENGE_PASSWORD_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07,
];

/// `der` with its challengePassword's PrintableString tag made UTF8String
/// (same length), when it has one whose content is ASCII but not printable.
fn lenient_challenge_password(der: &[u8]) -> Option<Vec<u8>> {
    let at = der
        .windows(CHALLENGE_PASSWORD_OID.len())
        .position(|w| w == CHALLENGE_PASSWORD_OID)?;
    // OID, then SET (short form length), then the PrintableString.
    let set = at + CHALLENGE_PASSWORD_OID.len();
    let tag = set + 2;
    let (set_tag, string_tag, len) = (*der.get(set)?, *der.get(tag)?, *der.get(tag + 1)?);
    if set_tag != 0x31 || string_tag != 0x13 || len >= 0x80 {
        return None;
    }
    let value = der.get(tag + 2..tag + 2 + usize::from(len))?;
    if !value.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return None;
    }
    let mut patched = der.to_vec();
    *patched.get_mut(tag)? = 0x0c;
    Some(patched)
}

/// Parses `der`, checking the signature over the same bytes of `signed`
/// (the request as signed; `der` differs from it at most in a tag byte).
fn parse_csr_as(der: &[u8], signed: &[u8]) -> Result<VerifiedCsr, CsrError> {
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
    let raw = info.raw;
    let start = (raw.as_ptr() as usize)
        .checked_sub(der.as_ptr() as usize)
        .ok_or(CsrError::Malformed)?;
    let signed_info = signed
        .get(start..start + raw.len())
        .ok_or(CsrError::Malformed)?;
    x509_parser::verify::verify_signature(
        &info.subject_pki,
        &csr.signature_algorithm,
        &csr.signature_value,
        signed_info,
    )
    .map_err(|_| CsrError::BadSignature)?;
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
