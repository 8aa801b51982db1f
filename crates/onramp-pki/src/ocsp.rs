//! OCSP (RFC 6960): request parsing and signed response building. The
//! responder signs with a delegated OCSP signing certificate that the
//! issuing CA issues (see `CertificateAuthority::ensure_ocsp_responder`).
//!
//! Nothing here reads the registry: the caller decides each certificate's
//! status from the parsed request and hands it back for signing.

use crate::{PkiError, Result};
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use base64::Engine;
use der::asn1::{BitString, GeneralizedTime, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

const ID_PKIX_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// The most certificates one request may ask about.
pub const MAX_QUERIES: usize = 16;
/// The largest request accepted, in bytes (DER).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// The largest nonce extension value echoed (RFC 8954 allows 32 octets of nonce).
const MAX_NONCE_VALUE: usize = 34;

/// Why a request could not be answered with statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("malformed OCSP request: {0}")]
    Malformed(String),
}

fn malformed(why: impl Into<String>) -> OcspError {
    OcspError::Malformed(why.into())
}

/// A hash algorithm a CertID may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdHash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl CertIdHash {
    fn from_oid(oid: &ObjectIdentifier) -> Option<CertIdHash> {
        match *oid {
            o if o == SHA1 => Some(CertIdHash::Sha1),
            o if o == SHA256 => Some(CertIdHash::Sha256),
            o if o == SHA384 => Some(CertIdHash::Sha384),
            o if o == SHA512 => Some(CertIdHash::Sha512),
            _ => None,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            CertIdHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            CertIdHash::Sha256 => &digest::SHA256,
            CertIdHash::Sha384 => &digest::SHA384,
            CertIdHash::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }
}

/// One certificate a request asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertQuery {
    /// The CertID exactly as asked; the answer repeats it.
    pub cert_id: CertId,
    /// Its hash algorithm, when Onramp knows it.
    pub hash: Option<CertIdHash>,
    /// Lowercase hex of the serial, without leading zero bytes.
    pub serial: String,
}

/// A parsed OCSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOcspRequest {
    pub queries: Vec<CertQuery>,
    /// The nonce extension as sent, echoed in the response.
    pub nonce: Option<Extension>,
}

/// Parses a DER `OCSPRequest`. Anything that is not one, asks about no
/// certificate or too many, or carries an oversized nonce is malformed.
/// A request signature, if any, is not required and not checked.
pub fn parse_ocsp_request(der: &[u8]) -> std::result::Result<ParsedOcspRequest, OcspError> {
    if der.is_empty() {
        return Err(malformed("empty request"));
    }
    if der.len() > MAX_REQUEST_BYTES {
        return Err(malformed("request too large"));
    }
    let req = OcspRequest::from_der(der).map_err(|e| malformed(e.to_string()))?;
    let list = &req.tbs_request.request_list;
    if list.is_empty() {
        return Err(malformed("the request names no certificate"));
    }
    if list.len() > MAX_QUERIES {
        return Err(malformed(format!(
            "the request names {} certificates; at most {MAX_QUERIES} are answered",
            list.len()
        )));
    }
    let queries = list
        .iter()
        .map(|r| CertQuery {
            hash: CertIdHash::from_oid(&r.req_cert.hash_algorithm.oid),
            serial: crate::encoding::serial_hex(r.req_cert.serial_number.as_bytes()),
            cert_id: r.req_cert.clone(),
        })
        .collect();
    let nonce = req
        .tbs_request
        .request_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
        .cloned();
    if let Some(n) = &nonce {
        let len = n.extn_value.as_bytes().len();
        if len == 0 || len > MAX_NONCE_VALUE {
            return Err(malformed(format!(
                "nonce of {len} bytes (1 to 32 octets are accepted)"
            )));
        }
    }
    Ok(ParsedOcspRequest { queries, nonce })
}

/// Decodes the request of an OCSP GET (`/ocsp/{request}`): base64 of the
/// DER, in the standard or the URL-safe alphabet, padded or not, possibly
/// still percent-encoded.
pub fn decode_get_request(path: &str) -> std::result::Result<Vec<u8>, OcspError> {
    if path.len() > MAX_REQUEST_BYTES * 2 {
        return Err(malformed("request too large"));
    }
    let mut text = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| malformed("bad percent-encoding"))?;
                text.push(char::from(hex));
                i += 3;
            }
            b => {
                text.push(char::from(b));
                i += 1;
            }
        }
    }
    let compact: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && *c != '=')
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(compact.as_bytes())
        .map_err(|e| malformed(format!("not base64: {e}")))
}

/// The issuing CA as CertIDs name it: hashes of its subject name and of its
/// public key.
#[derive(Debug, Clone)]
pub struct IssuerId {
    name_der: Vec<u8>,
    key_bits: Vec<u8>,
}

impl IssuerId {
    /// From the issuing CA certificate (DER).
    pub fn from_cert(issuer_der: &[u8]) -> Result<IssuerId> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(issuer_der)
            .map_err(|e| PkiError::Invalid(format!("issuer certificate: {e}")))?;
        Ok(IssuerId {
            name_der: cert.subject().as_raw().to_vec(),
            key_bits: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether a query's CertID names this issuer.
    pub fn names(&self, q: &CertQuery) -> bool {
        let Some(hash) = q.hash else {
            return false;
        };
        q.cert_id.issuer_name_hash.as_bytes() == hash.digest(&self.name_der).as_slice()
            && q.cert_id.issuer_key_hash.as_bytes() == hash.digest(&self.key_bits).as_slice()
    }
}

/// A certificate's status, as decided by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked at this unix time, for this RFC 5280 reason code.
    Revoked { at: i64, reason: u8 },
    /// Not known to this responder (another issuer, an unknown serial).
    Unknown,
}

/// The status line of each answer, for counting.
impl OcspStatus {
    pub fn label(self) -> &'static str {
        match self {
            OcspStatus::Good => "good",
            OcspStatus::Revoked { .. } => "revoked",
            OcspStatus::Unknown => "unknown",
        }
    }
}

fn crl_reason(code: u8) -> CrlReason {
    match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => CrlReason::Unspecified,
    }
}

fn gtime(unix: i64) -> Result<OcspGeneralizedTime> {
    let secs = u64::try_from(unix).map_err(|_| PkiError::Invalid("time before 1970".into()))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| PkiError::Invalid(format!("time: {e}")))
}

fn encode_err(e: der::Error) -> PkiError {
    PkiError::Invalid(format!("OCSP encoding: {e}"))
}

/// `OCSPResponse` with status `malformedRequest` (DER).
pub fn malformed_request_response() -> Vec<u8> {
    OcspResponse::malformed_request()
        .to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x01])
}

/// `OCSPResponse` with status `internalError` (DER).
pub fn internal_error_response() -> Vec<u8> {
    OcspResponse::internal_error()
        .to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x02])
}

/// The delegated OCSP signer: its certificate and ECDSA P-256 key.
pub struct OcspResponder {
    key: EcdsaKeyPair,
    cert: x509_cert::Certificate,
    cert_der: Vec<u8>,
    key_hash: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for OcspResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspResponder")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl OcspResponder {
    /// From the signer certificate (DER) and its PKCS#8 key (DER).
    pub fn new(cert_der: &[u8], key_pkcs8: &[u8]) -> Result<OcspResponder> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8)
            .map_err(|_| PkiError::Invalid("the OCSP signing key is not ECDSA P-256".into()))?;
        let info = crate::encoding::parse_cert(cert_der)?;
        let cert = x509_cert::Certificate::from_der(cert_der)
            .map_err(|e| PkiError::Invalid(format!("OCSP signing certificate: {e}")))?;
        let key_bits = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        {
            use aws_lc_rs::signature::KeyPair;
            if key.public_key().as_ref() != key_bits.as_slice() {
                return Err(PkiError::Invalid(
                    "the OCSP signing key does not belong to its certificate".into(),
                ));
            }
        }
        Ok(OcspResponder {
            key,
            key_hash: CertIdHash::Sha1.digest(&key_bits),
            cert,
            cert_der: cert_der.to_vec(),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// The signer certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When the signer certificate starts being valid (unix time).
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// When the signer certificate expires (unix time).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A signed `successful` response with one answer per query, in order.
    /// `statuses` must have one entry per query.
    pub fn respond(
        &self,
        request: &ParsedOcspRequest,
        statuses: &[OcspStatus],
        now: i64,
        next_update: i64,
    ) -> Result<Vec<u8>> {
        if statuses.len() != request.queries.len() {
            return Err(PkiError::Invalid(
                "one status is needed per certificate asked about".into(),
            ));
        }
        let this_update = gtime(now)?;
        let next = gtime(next_update)?;
        let mut responses = Vec::with_capacity(statuses.len());
        for (q, s) in request.queries.iter().zip(statuses) {
            let cert_status = match *s {
                OcspStatus::Good => CertStatus::good(),
                OcspStatus::Unknown => CertStatus::unknown(),
                OcspStatus::Revoked { at, reason } => CertStatus::Revoked(RevokedInfo {
                    revocation_time: gtime(at)?,
                    revocation_reason: Some(crl_reason(reason)),
                }),
            };
            responses.push(SingleResponse {
                cert_id: q.cert_id.clone(),
                cert_status,
                this_update,
                next_update: Some(next),
                single_extensions: None,
            });
        }
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(self.key_hash.clone()).map_err(encode_err)?,
            ),
            produced_at: this_update,
            responses,
            response_extensions: request.nonce.clone().map(|n| vec![n]),
        };
        let tbs_der = tbs.to_der().map_err(encode_err)?;
        let signature = self
            .key
            .sign(&SystemRandom::new(), &tbs_der)
            .map_err(|_| PkiError::Crypto("signing the OCSP response failed".into()))?;
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
            signature: BitString::from_bytes(signature.as_ref()).map_err(encode_err)?,
            certs: Some(vec![self.cert.clone()]),
        };
        OcspResponse::successful(basic)
            .map_err(encode_err)?
            .to_der()
            .map_err(encode_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_requests_are_malformed() {
        assert!(parse_ocsp_request(&[]).is_err());
        assert!(parse_ocsp_request(b"not der").is_err());
        assert!(parse_ocsp_request(&[0x30, 0x00]).is_err());
        // A TBSRequest with an empty request list.
        assert!(parse_ocsp_request(&[0x30, 0x04, 0x30, 0x02, 0x30, 0x00]).is_err());
    }

    #[test]
    fn get_paths_decode_in_either_alphabet_padded_or_not() {
        let der = [0x30u8, 0x03, 0xfb, 0xff, 0x3e];
        let std = base64::engine::general_purpose::STANDARD.encode(der);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der);
        assert!(std.contains('+') || std.contains('/'));
        assert_eq!(decode_get_request(&std).unwrap(), der);
        assert_eq!(decode_get_request(&url).unwrap(), der);
        let percent = std.replace('+', "%2B").replace('/', "%2F");
        assert_eq!(decode_get_request(&percent).unwrap(), der);
        assert!(decode_get_request("%zz").is_err());
        assert!(decode_get_request("*&^").is_err());
    }

    #[test]
    fn error_responses_carry_their_status() {
        let m = OcspResponse::from_der(&malformed_request_response()).unwrap();
        assert_eq!(
            m.response_status,
            x509_ocsp::OcspResponseStatus::MalformedRequest
        );
        assert!(m.response_bytes.is_none());
        let i = OcspResponse::from_der(&internal_error_response()).unwrap();
        assert_eq!(
            i.response_status,
            x509_ocsp::OcspResponseStatus::InternalError
        );
    }
}
