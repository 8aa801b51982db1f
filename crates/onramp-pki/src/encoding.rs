//! Wire encodings: base64 for EST bodies, PKCS#7 certs-only, CSR attributes,
//! certificate fingerprints and the fields Onramp reads back from a certificate.

use crate::{PkiError, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use der::{Decode, Encode};
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;
use x509_parser::prelude::*;

/// Base64 with lines of at most 76 characters and CRLF endings (RFC 2045), as
/// EST clients expect: some decoders refuse one long line.
pub fn base64_mime(bytes: &[u8]) -> String {
    let flat = STANDARD.encode(bytes);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 * 2 + 2);
    for chunk in flat.as_bytes().chunks(76) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// Decodes base64 that may be wrapped in lines (any ASCII whitespace is skipped).
pub fn decode_base64_lenient(body: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    STANDARD.decode(compact).ok()
}

/// A degenerate PKCS#7 SignedData holding only certificates (RFC 7030 §4.1.3, §4.2.3).
pub fn certs_only_pkcs7(certs_der: &[&[u8]]) -> Result<Vec<u8>> {
    let mut path = Vec::with_capacity(certs_der.len());
    for der in certs_der {
        path.push(
            x509_cert::Certificate::from_der(der)
                .map_err(|e| PkiError::Invalid(format!("certificate for PKCS#7: {e}")))?,
        );
    }
    let ci = cms::content_info::ContentInfo::try_from(path)
        .map_err(|e| PkiError::Invalid(format!("PKCS#7 assembly: {e}")))?;
    ci.to_der()
        .map_err(|e| PkiError::Invalid(format!("PKCS#7 encoding: {e}")))
}

/// The CSR attributes Onramp asks for (RFC 7030 §4.5): an ECDSA P-256 key,
/// signed with ECDSA-SHA256, and the device serial number in the subject.
pub fn csr_attributes() -> Result<Vec<u8>> {
    use der::asn1::{Any, ObjectIdentifier as Oid, SetOfVec};
    let err = |e: der::Error| PkiError::Invalid(format!("CSR attributes: {e}"));
    let ecdsa_sha256 = Oid::new_unwrap("1.2.840.10045.4.3.2");
    let ec_public_key = Oid::new_unwrap("1.2.840.10045.2.1");
    let prime256v1 = Oid::new_unwrap("1.2.840.10045.3.1.7");
    let serial_number = Oid::new_unwrap("2.5.4.5");

    let mut curves = SetOfVec::new();
    curves
        .insert(Any::encode_from(&prime256v1).map_err(err)?)
        .map_err(err)?;
    let key_attr = x509_cert::attr::Attribute {
        oid: ec_public_key,
        values: curves,
    };
    let items: Vec<Any> = vec![
        Any::encode_from(&ecdsa_sha256).map_err(err)?,
        Any::encode_from(&key_attr).map_err(err)?,
        Any::encode_from(&serial_number).map_err(err)?,
    ];
    items.to_der().map_err(err)
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// What Onramp reads back from a certificate it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, no separators, no leading zero bytes.
    pub serial: String,
    pub fingerprint: String,
    pub subject_cn: Option<String>,
    pub subject_serial: Option<String>,
    pub subject_dn: String,
    pub issuer_dn: String,
    pub not_before: i64,
    pub not_after: i64,
}

pub fn parse_cert(der: &[u8]) -> Result<CertInfo> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    // Trailing bytes would change the fingerprint but not the certificate.
    if !rest.is_empty() {
        return Err(PkiError::Invalid("certificate: trailing bytes".into()));
    }
    let first = |name: &X509Name<'_>, oid| {
        name.iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
    };
    Ok(CertInfo {
        serial: serial_hex(cert.raw_serial()),
        fingerprint: fingerprint_sha256(der),
        subject_cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string),
        subject_serial: first(cert.subject(), &OID_X509_SERIALNUMBER),
        subject_dn: cert.subject().to_string(),
        issuer_dn: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    hex::encode(trimmed)
}

/// All certificates in a PEM bundle, as DER.
pub fn pem_to_der_chain(pem: &str) -> Result<Vec<Vec<u8>>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs: std::result::Result<Vec<_>, _> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Invalid(format!("PEM: {e:?}")))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid("no certificate in PEM".into()));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_base64_wraps_at_76_and_decodes_back() {
        let data: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let text = base64_mime(&data);
        assert!(text.lines().all(|l| l.len() <= 76));
        assert_eq!(decode_base64_lenient(text.as_bytes()).unwrap(), data);
    }

    #[test]
    fn malformed_base64_is_none() {
        assert_eq!(decode_base64_lenient(b"!!!not base64"), None);
        assert_eq!(decode_base64_lenient(b"   "), None);
    }

    #[test]
    fn csr_attributes_are_a_der_sequence() {
        let der = csr_attributes().unwrap();
        assert_eq!(der[0], 0x30);
    }
}
