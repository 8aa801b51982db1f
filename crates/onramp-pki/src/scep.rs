//! SCEP (RFC 8894) message reading: the PKIMessage a client sends to
//! `PKIOperation` is a CMS SignedData, signed by the requester, whose signed
//! attributes carry the SCEP fields (messageType, transactionID,
//! senderNonce) and whose content is the EnvelopedData holding the request.
//!
//! Parsing goes through the RustCrypto `cms` types; nothing is hand-decoded.
//! Every size is bounded and every failure is an error, never a panic.

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::{ObjectIdentifier, OctetString, PrintableStringRef};
use der::{Decode, Encode, Tagged};

/// The largest PKIMessage read (a CSR of a 4096-bit key, encrypted, signed
/// and with its signer certificate is well under it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What `GetCACaps` answers: POST for PKIOperation, SHA-256, AES, renewal,
/// and the RFC 8894 baseline.
pub const CA_CAPS: &str = "POSTPKIOperation\nSHA-256\nAES\nRenewal\nSCEPStandard\n";

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// The SCEP attributes (RFC 8894 §3.2.1).
pub const ID_MESSAGE_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.2");
pub const ID_SENDER_NONCE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.5");
pub const ID_TRANSACTION_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.7");

/// Why a PKIMessage was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScepError {
    #[error("the message is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("not a CMS SignedData: {0}")]
    NotSignedData(String),
    #[error("the SignedData has {0} signers, not one")]
    Signers(usize),
    #[error("the signer has no signed attributes")]
    NoSignedAttributes,
    #[error("the {0} attribute is missing or malformed")]
    Attribute(&'static str),
    #[error("unknown SCEP messageType {0}")]
    MessageType(String),
    #[error("the signer's certificate is not in the message")]
    NoSignerCertificate,
    #[error("the encapsulated content is missing or not data")]
    Content,
    #[error("unsupported digest or key algorithm {0}")]
    Algorithm(String),
    #[error("the messageDigest does not match the content")]
    Digest,
    #[error("the signature does not verify")]
    Signature,
    #[error("the enveloped request cannot be opened: {0}")]
    Envelope(String),
    #[error("the reply cannot be built: {0}")]
    Build(String),
}

/// The SCEP message types a client sends (RFC 8894 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 19: a first enrolment; the CSR carries the challenge password.
    PkcsReq,
    /// 17: a renewal, signed with the current certificate.
    RenewalReq,
    /// 20: CertPoll (GetCertInitial in older drafts): asks again about a
    /// pending request.
    CertPoll,
    /// 21: GetCert.
    GetCert,
    /// 22: GetCRL.
    GetCrl,
}

impl MessageType {
    fn parse(s: &str) -> Result<MessageType, ScepError> {
        Ok(match s {
            "19" => MessageType::PkcsReq,
            "17" => MessageType::RenewalReq,
            "20" => MessageType::CertPoll,
            "21" => MessageType::GetCert,
            "22" => MessageType::GetCrl,
            other => return Err(ScepError::MessageType(other.chars().take(8).collect())),
        })
    }
}

/// A PKIMessage as read, before its signature is checked.
#[derive(Debug, Clone)]
pub struct PkiMessage {
    pub message_type: MessageType,
    /// Printable, at most 128 characters.
    pub transaction_id: String,
    /// 16 bytes per RFC 8894; 1 to 64 accepted.
    pub sender_nonce: Vec<u8>,
    /// The requester's certificate (self-signed for PKCSReq, its current one for RenewalReq).
    pub signer_cert_der: Vec<u8>,
    /// The encapsulated content: the DER EnvelopedData with the request.
    pub content: Vec<u8>,
    digest_alg: ObjectIdentifier,
    message_digest: Vec<u8>,
    signed_attrs_der: Vec<u8>,
    signature: Vec<u8>,
}

fn attribute<'a>(
    attrs: &'a x509_cert::attr::Attributes,
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<&'a der::Any, ScepError> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let attr = found.next().ok_or(ScepError::Attribute(name))?;
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(ScepError::Attribute(name));
    }
    attr.values.iter().next().ok_or(ScepError::Attribute(name))
}

fn printable(v: &der::Any, name: &'static str, max: usize) -> Result<String, ScepError> {
    let s = v
        .decode_as::<PrintableStringRef<'_>>()
        .map_err(|_| ScepError::Attribute(name))?;
    let s = s.as_str();
    if s.is_empty() || s.len() > max {
        return Err(ScepError::Attribute(name));
    }
    Ok(s.to_string())
}

fn octets(v: &der::Any, name: &'static str, max: usize) -> Result<Vec<u8>, ScepError> {
    let o = v
        .decode_as::<OctetString>()
        .map_err(|_| ScepError::Attribute(name))?;
    let b = o.as_bytes();
    if b.is_empty() || b.len() > max {
        return Err(ScepError::Attribute(name));
    }
    Ok(b.to_vec())
}

/// The parts of a certificate SCEP needs from a requester's: issuer, serial
/// number and key. Clients sign their requests with a self-signed
/// certificate made for the purpose, and some (certmonger) give it a
/// serial number longer than RFC 5280's 20 octets, which the x509-cert
/// types refuse; it is read here as it is, since it only names the signer.
#[derive(der::Sequence)]
struct LooseCertificate {
    tbs: LooseTbsCertificate,
    signature_algorithm: der::Any,
    signature: der::Any,
}

#[derive(der::Sequence)]
struct LooseTbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    version: Option<der::Any>,
    serial_number: der::asn1::Int,
    signature: der::Any,
    issuer: der::Any,
    validity: der::Any,
    subject: der::Any,
    subject_public_key_info: x509_cert::spki::SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    issuer_unique_id: Option<der::asn1::BitString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    subject_unique_id: Option<der::asn1::BitString>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<der::Any>,
}

#[derive(der::Sequence)]
struct LooseIssuerAndSerial {
    issuer: der::Any,
    serial_number: der::asn1::Int,
}

#[derive(der::Sequence)]
struct LooseSignerInfo {
    version: der::Any,
    sid: der::Any,
    digest_alg: x509_cert::spki::AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    signed_attrs: Option<x509_cert::attr::Attributes>,
    signature_algorithm: x509_cert::spki::AlgorithmIdentifierOwned,
    signature: OctetString,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    unsigned_attrs: Option<x509_cert::attr::Attributes>,
}

#[derive(der::Sequence)]
struct LooseKeyTransRecipientInfo {
    version: u8,
    rid: LooseIssuerAndSerial,
    key_enc_alg: x509_cert::spki::AlgorithmIdentifierOwned,
    enc_key: OctetString,
}

#[derive(der::Sequence)]
struct LooseEnvelopedData {
    version: u8,
    recip_infos: der::Any,
    encrypted_content: cms::enveloped_data::EncryptedContentInfo,
}

/// A SignedData read field by field, its certificates left as DER, for the
/// same reason as [`LooseCertificate`].
struct LooseSignedData {
    encap_content_info: cms::signed_data::EncapsulatedContentInfo,
    certificates: Vec<der::Any>,
    signers: Vec<LooseSignerInfo>,
}

impl LooseSignedData {
    fn read(content: &der::Any) -> der::Result<LooseSignedData> {
        use der::{Reader, SliceReader, Tag, TagNumber};
        if content.tag() != Tag::Sequence {
            return Err(der::ErrorKind::TagUnexpected {
                expected: Some(Tag::Sequence),
                actual: content.tag(),
            }
            .into());
        }
        let mut r = SliceReader::new(content.value())?;
        let _version: der::Any = r.decode()?;
        let _digest_algorithms: der::Any = r.decode()?;
        let encap_content_info = r.decode()?;
        let mut certificates = Vec::new();
        let mut signer_infos = None;
        while !r.is_finished() {
            let item: der::Any = r.decode()?;
            match item.tag() {
                Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber::N0,
                } if certificates.is_empty() => {
                    let mut c = SliceReader::new(item.value())?;
                    while !c.is_finished() {
                        certificates.push(c.decode()?);
                    }
                }
                Tag::ContextSpecific {
                    number: TagNumber::N1,
                    ..
                } => {}
                Tag::Set if signer_infos.is_none() => signer_infos = Some(item),
                other => {
                    return Err(der::ErrorKind::TagUnexpected {
                        expected: None,
                        actual: other,
                    }
                    .into());
                }
            }
        }
        let set = signer_infos.ok_or(der::ErrorKind::TagUnexpected {
            expected: Some(Tag::Set),
            actual: Tag::Null,
        })?;
        let mut signers = Vec::new();
        let mut r = SliceReader::new(set.value())?;
        while !r.is_finished() {
            signers.push(r.decode()?);
        }
        Ok(LooseSignedData {
            encap_content_info,
            certificates,
            signers,
        })
    }
}

/// Reads a PKIMessage (DER). The signature is checked separately, by
/// [`PkiMessage::verify`].
pub fn parse_pki_message(der: &[u8]) -> Result<PkiMessage, ScepError> {
    if der.len() > MAX_MESSAGE_BYTES {
        return Err(ScepError::TooLarge);
    }
    let bad = |e: der::Error| ScepError::NotSignedData(e.to_string());
    let ci = ContentInfo::from_der(der).map_err(bad)?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(ScepError::NotSignedData(format!(
            "content type {}",
            ci.content_type
        )));
    }
    let sd = LooseSignedData::read(&ci.content).map_err(bad)?;
    let [signer] = sd.signers.as_slice() else {
        return Err(ScepError::Signers(sd.signers.len()));
    };
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or(ScepError::NoSignedAttributes)?;
    let message_type = MessageType::parse(&printable(
        attribute(attrs, ID_MESSAGE_TYPE, "messageType")?,
        "messageType",
        2,
    )?)?;
    let transaction_id = printable(
        attribute(attrs, ID_TRANSACTION_ID, "transactionID")?,
        "transactionID",
        128,
    )?;
    let sender_nonce = octets(
        attribute(attrs, ID_SENDER_NONCE, "senderNonce")?,
        "senderNonce",
        64,
    )?;
    let message_digest = octets(
        attribute(attrs, ID_MESSAGE_DIGEST, "messageDigest")?,
        "messageDigest",
        64,
    )?;
    if sd.encap_content_info.econtent_type != ID_DATA {
        return Err(ScepError::Content);
    }
    let content = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or(ScepError::Content)?
        .decode_as::<OctetString>()
        .map_err(|_| ScepError::Content)?
        .as_bytes()
        .to_vec();
    // The signer's certificate: the one its identifier names.
    if signer.sid.tag() != der::Tag::Sequence {
        return Err(ScepError::NoSignerCertificate);
    }
    let isn: LooseIssuerAndSerial = signer
        .sid
        .decode_as()
        .map_err(|_| ScepError::NoSignerCertificate)?;
    let cert = sd
        .certificates
        .iter()
        .find(|c| {
            c.to_der()
                .ok()
                .and_then(|d| LooseCertificate::from_der(&d).ok())
                .is_some_and(|c| {
                    c.tbs.issuer == isn.issuer && c.tbs.serial_number == isn.serial_number
                })
        })
        .ok_or(ScepError::NoSignerCertificate)?;
    Ok(PkiMessage {
        message_type,
        transaction_id,
        sender_nonce,
        signer_cert_der: cert.to_der().map_err(bad)?,
        content,
        digest_alg: signer.digest_alg.oid,
        message_digest,
        signed_attrs_der: attrs.to_der().map_err(bad)?,
        signature: signer.signature.as_bytes().to_vec(),
    })
}

const ID_CHALLENGE_PASSWORD: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The enrolment credential a SCEP CSR carries: the serial number (the
/// subject's serialNumber, else its common name) as user name and the
/// challenge password as the one-time enrolment token, as EST's HTTP Basic.
pub fn csr_credential(csr_der: &[u8]) -> Option<(String, String)> {
    use x509_cert::request::CertReq;
    let req = CertReq::from_der(csr_der).ok()?;
    let value = req
        .info
        .attributes
        .iter()
        .find(|a| a.oid == ID_CHALLENGE_PASSWORD)?
        .values
        .iter()
        .next()?;
    let challenge = match der::Tagged::tag(value) {
        der::Tag::PrintableString | der::Tag::Utf8String | der::Tag::Ia5String => {
            std::str::from_utf8(value.value()).ok()?.to_string()
        }
        _ => return None,
    };
    let csr = crate::parse_csr(csr_der).ok()?;
    let user = csr.subject_serial.or(csr.subject_cn)?;
    Some((user, challenge))
}

impl PkiMessage {
    /// Whether the requester's key is RSA: the issued certificate travels
    /// encrypted to it, so only then can a CertRep carry one.
    pub fn signer_key_is_rsa(&self) -> bool {
        LooseCertificate::from_der(&self.signer_cert_der)
            .is_ok_and(|c| c.tbs.subject_public_key_info.algorithm.oid == ID_RSA)
    }

    /// Checks that the content matches the messageDigest attribute and that
    /// the signer's certificate key signed the attributes (RSA PKCS#1 v1.5
    /// or ECDSA P-256/P-384, with SHA-256, or SHA-1 for older clients).
    pub fn verify(&self) -> Result<(), ScepError> {
        use aws_lc_rs::{digest, signature};
        let (digest_alg, sha256) = match self.digest_alg {
            d if d == ID_SHA256 => (&digest::SHA256, true),
            d if d == ID_SHA1 => (&digest::SHA1_FOR_LEGACY_USE_ONLY, false),
            other => return Err(ScepError::Algorithm(other.to_string())),
        };
        if digest::digest(digest_alg, &self.content).as_ref() != self.message_digest.as_slice() {
            return Err(ScepError::Digest);
        }
        let cert = LooseCertificate::from_der(&self.signer_cert_der)
            .map_err(|e| ScepError::NotSignedData(e.to_string()))?;
        let spki = &cert.tbs.subject_public_key_info;
        let key = spki.subject_public_key.raw_bytes();
        let alg: &dyn signature::VerificationAlgorithm = match (spki.algorithm.oid, sha256) {
            (o, true) if o == ID_RSA => &signature::RSA_PKCS1_2048_8192_SHA256,
            (o, false) if o == ID_RSA => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            (o, true) if o == ID_EC => match key.len() {
                65 => &signature::ECDSA_P256_SHA256_ASN1,
                97 => &signature::ECDSA_P384_SHA256_ASN1,
                _ => return Err(ScepError::Algorithm("EC curve".into())),
            },
            (o, _) => return Err(ScepError::Algorithm(o.to_string())),
        };
        signature::UnparsedPublicKey::new(alg, key)
            .verify(&self.signed_attrs_der, &self.signature)
            .map_err(|_| ScepError::Signature)
    }
}

const RA_CERT: &str = "scep-ra.pem";
const RA_KEY: &str = "scep-ra.key";
const DAY: i64 = 86_400;

/// The SCEP registration authority: an RSA key and certificate the active
/// issuing CA issues, because SCEP clients encrypt their requests to an RSA
/// key (key transport) and the CA's own key may be ECDSA. `GetCACert`
/// serves its certificate beside the CA's; CertRep messages are signed by it.
pub struct ScepRa {
    pub cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for ScepRa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScepRa").finish_non_exhaustive()
    }
}

impl crate::CertificateAuthority {
    /// Loads the SCEP RA from the CA directory (`scep-ra.pem`, `scep-ra.key`,
    /// 0600), issuing a new RSA-2048 pair when missing, not issued by this
    /// CA, or within 30 days of expiry. Returns it and whether it was issued.
    pub fn ensure_scep_ra(&self, now: i64) -> crate::Result<(ScepRa, bool)> {
        use crate::files::{read_file, read_key_file, write_private_file, write_public_file};
        use rcgen::{
            CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let cert_path = self.dir().join(RA_CERT);
        let key_path = self.dir().join(RA_KEY);
        if cert_path.exists() && key_path.exists() {
            let key_pem = read_key_file(&key_path)?;
            let current = crate::pem_to_der_chain(&read_file(&cert_path)?)
                .ok()
                .and_then(|c| c.into_iter().next())
                .filter(|der| self.issued(der))
                .filter(|der| {
                    crate::parse_cert(der)
                        .is_ok_and(|i| i.not_before <= now && i.not_after - now > 30 * DAY)
                });
            if let (Some(cert_der), Ok(key)) = (current, KeyPair::from_pem(&key_pem)) {
                return Ok((
                    ScepRa {
                        cert_der,
                        key_pkcs8: key.serialize_der(),
                    },
                    false,
                ));
            }
        }
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cn = self
            .issuing_info()
            .subject_cn
            .clone()
            .unwrap_or_else(|| "Onramp".into());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cn} SCEP RA"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
        params.not_before = crate::ca::at(now - 60)?;
        params.not_after = crate::ca::at(now + 365 * DAY)?;
        params.serial_number = Some(crate::ca::random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, self.signer())?;
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public_file(&cert_path, cert.pem().as_bytes())?;
        Ok((
            ScepRa {
                cert_der: cert.der().to_vec(),
                key_pkcs8: key.serialize_der(),
            },
            true,
        ))
    }
}

const ID_AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");
const ID_AES192_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.22");
const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

impl ScepRa {
    /// Opens the EnvelopedData of a PKIMessage: the content-encryption key
    /// is transported to the RA's RSA key (PKCS#1 v1.5), the content is
    /// AES-CBC. Returns the plaintext (the CSR, for PKCSReq and RenewalReq).
    pub fn open_envelope(&self, enveloped_der: &[u8]) -> Result<Vec<u8>, ScepError> {
        use aws_lc_rs::cipher::{
            AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey,
            UnboundCipherKey,
        };
        use aws_lc_rs::iv::FixedLength;
        use aws_lc_rs::rsa::{Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};
        use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
        let bad = |what: &str| ScepError::Envelope(what.to_string());
        let ci = ContentInfo::from_der(enveloped_der).map_err(|e| bad(&e.to_string()))?;
        let ed: EnvelopedData = ci.content.decode_as().map_err(|e| bad(&e.to_string()))?;
        let ra =
            x509_cert::Certificate::from_der(&self.cert_der).map_err(|e| bad(&e.to_string()))?;
        // The recipient that names the RA certificate.
        let enc_key = ed
            .recip_infos
            .0
            .iter()
            .find_map(|ri| match ri {
                RecipientInfo::Ktri(k) => match &k.rid {
                    RecipientIdentifier::IssuerAndSerialNumber(isn)
                        if isn.issuer == ra.tbs_certificate.issuer
                            && isn.serial_number == ra.tbs_certificate.serial_number =>
                    {
                        Some(k.enc_key.as_bytes())
                    }
                    _ => None,
                },
                _ => None,
            })
            .ok_or_else(|| bad("no recipient is the RA certificate"))?;
        let rsa = PrivateDecryptingKey::from_pkcs8(&self.key_pkcs8)
            .ok()
            .and_then(|k| Pkcs1PrivateDecryptingKey::new(k).ok())
            .ok_or_else(|| bad("the RA key"))?;
        let mut cek = vec![0u8; rsa.min_output_size()];
        let cek = rsa
            .decrypt(enc_key, &mut cek)
            .map_err(|_| bad("the content key does not decrypt"))?
            .to_vec();
        let eci = &ed.encrypted_content;
        let alg = match eci.content_enc_alg.oid {
            o if o == ID_AES128_CBC => &AES_128,
            o if o == ID_AES192_CBC => &AES_192,
            o if o == ID_AES256_CBC => &AES_256,
            other => return Err(ScepError::Algorithm(other.to_string())),
        };
        let iv: [u8; 16] = eci
            .content_enc_alg
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<OctetString>().ok())
            .and_then(|o| o.as_bytes().try_into().ok())
            .ok_or_else(|| bad("the AES-CBC IV"))?;
        let mut data = eci
            .encrypted_content
            .as_ref()
            .ok_or_else(|| bad("no encrypted content"))?
            .as_bytes()
            .to_vec();
        let key = UnboundCipherKey::new(alg, &cek)
            .ok()
            .and_then(|k| PaddedBlockDecryptingKey::cbc_pkcs7(k).ok())
            .ok_or_else(|| bad("the content key"))?;
        let plain = key
            .decrypt(&mut data, DecryptionContext::Iv128(FixedLength::from(iv)))
            .map_err(|_| bad("the content does not decrypt"))?;
        Ok(plain.to_vec())
    }
}

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ID_PKI_STATUS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.3");
const ID_FAIL_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.4");
const ID_RECIPIENT_NONCE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.6");

/// Why a request failed, as CertRep's failInfo says it (RFC 8894 §3.2.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    BadAlg,
    BadMessageCheck,
    BadRequest,
    BadTime,
    BadCertId,
}

impl FailInfo {
    fn code(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "0",
            FailInfo::BadMessageCheck => "1",
            FailInfo::BadRequest => "2",
            FailInfo::BadTime => "3",
            FailInfo::BadCertId => "4",
        }
    }
}

/// What a CertRep answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRepStatus {
    /// The issued certificate (DER), sent encrypted to the requester.
    Success(Vec<u8>),
    Failure(FailInfo),
    Pending,
}

fn any(tag: der::Tag, value: &[u8]) -> Result<der::Any, ScepError> {
    der::Any::new(tag, value).map_err(|e| ScepError::Build(e.to_string()))
}

fn one_attr(
    oid: ObjectIdentifier,
    value: der::Any,
) -> Result<x509_cert::attr::Attribute, ScepError> {
    let mut values = der::asn1::SetOfVec::new();
    values
        .insert(value)
        .map_err(|e| ScepError::Build(e.to_string()))?;
    Ok(x509_cert::attr::Attribute { oid, values })
}

impl ScepRa {
    /// The CertRep for `request`, signed by the RA: on success the issued
    /// certificate in a certs-only PKCS#7, encrypted (AES-256-CBC, RSA key
    /// transport) to the requester's certificate, which must hold an RSA key.
    pub fn cert_rep(
        &self,
        request: &PkiMessage,
        status: &CertRepStatus,
    ) -> Result<Vec<u8>, ScepError> {
        use aws_lc_rs::{digest, rand, signature};
        use cms::cert::IssuerAndSerialNumber;
        use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignerInfo, SignerInfos};
        use der::Tag;
        use der::asn1::SetOfVec;
        use x509_cert::spki::AlgorithmIdentifierOwned;
        let build = |e: der::Error| ScepError::Build(e.to_string());
        let content = match status {
            CertRepStatus::Success(cert_der) => {
                let p7 = crate::certs_only_pkcs7(&[cert_der.as_slice()])
                    .map_err(|e| ScepError::Build(e.to_string()))?;
                Some(envelope_to(&request.signer_cert_der, &p7)?)
            }
            _ => None,
        };
        let digest_of = digest::digest(&digest::SHA256, content.as_deref().unwrap_or_default());
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce).map_err(|_| ScepError::Build("random nonce".into()))?;
        let (pki_status, fail) = match status {
            CertRepStatus::Success(_) => ("0", None),
            CertRepStatus::Failure(f) => ("2", Some(*f)),
            CertRepStatus::Pending => ("3", None),
        };
        let mut attrs = SetOfVec::new();
        let mut list = vec![
            one_attr(
                ID_CONTENT_TYPE,
                der::Any::encode_from(&ID_DATA).map_err(build)?,
            )?,
            one_attr(
                ID_MESSAGE_DIGEST,
                any(Tag::OctetString, digest_of.as_ref())?,
            )?,
            one_attr(ID_MESSAGE_TYPE, any(Tag::PrintableString, b"3")?)?,
            one_attr(
                ID_PKI_STATUS,
                any(Tag::PrintableString, pki_status.as_bytes())?,
            )?,
            one_attr(
                ID_TRANSACTION_ID,
                any(Tag::PrintableString, request.transaction_id.as_bytes())?,
            )?,
            one_attr(
                ID_RECIPIENT_NONCE,
                any(Tag::OctetString, &request.sender_nonce)?,
            )?,
            one_attr(ID_SENDER_NONCE, any(Tag::OctetString, &nonce)?)?,
        ];
        if let Some(f) = fail {
            list.push(one_attr(
                ID_FAIL_INFO,
                any(Tag::PrintableString, f.code().as_bytes())?,
            )?);
        }
        for a in list {
            attrs.insert(a).map_err(build)?;
        }
        let key = signature::RsaKeyPair::from_pkcs8(&self.key_pkcs8)
            .map_err(|_| ScepError::Build("the RA key".into()))?;
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &rand::SystemRandom::new(),
            &attrs.to_der().map_err(build)?,
            &mut sig,
        )
        .map_err(|_| ScepError::Build("signing".into()))?;
        let ra = x509_cert::Certificate::from_der(&self.cert_der).map_err(build)?;
        let sha256 = AlgorithmIdentifierOwned {
            oid: ID_SHA256,
            parameters: None,
        };
        let signer = SignerInfo {
            version: cms::content_info::CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: ra.tbs_certificate.issuer.clone(),
                serial_number: ra.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs: Some(attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA256_WITH_RSA,
                parameters: Some(der::Any::null()),
            },
            signature: OctetString::new(sig).map_err(build)?,
            unsigned_attrs: None,
        };
        let mut digests = SetOfVec::new();
        digests.insert(sha256).map_err(build)?;
        let mut certs = SetOfVec::new();
        certs
            .insert(CertificateChoices::Certificate(ra))
            .map_err(build)?;
        let mut signers = SetOfVec::new();
        signers.insert(signer).map_err(build)?;
        let sd = SignedData {
            version: cms::content_info::CmsVersion::V1,
            digest_algorithms: digests,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_DATA,
                // FAILURE and PENDING carry empty content rather than none:
                // OpenSSL-based clients (certmonger) cannot verify a
                // SignedData without content, and would not see the status.
                econtent: Some(any(
                    Tag::OctetString,
                    content.as_deref().unwrap_or_default(),
                )?),
            },
            certificates: Some(CertificateSet(certs)),
            crls: None,
            signer_infos: SignerInfos(signers),
        };
        ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: der::Any::encode_from(&sd).map_err(build)?,
        }
        .to_der()
        .map_err(build)
    }
}

/// `content` in an EnvelopedData for the RSA key of `recipient_der`:
/// AES-256-CBC with a fresh key and IV, the key transported with PKCS#1 v1.5.
fn envelope_to(recipient_der: &[u8], content: &[u8]) -> Result<Vec<u8>, ScepError> {
    use aws_lc_rs::cipher::{AES_256, PaddedBlockEncryptingKey, UnboundCipherKey};
    use aws_lc_rs::rand;
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    use cms::enveloped_data::EncryptedContentInfo;
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let build = |e: der::Error| ScepError::Build(e.to_string());
    let cert = LooseCertificate::from_der(recipient_der).map_err(build)?;
    let spki = &cert.tbs.subject_public_key_info;
    if spki.algorithm.oid != ID_RSA {
        return Err(ScepError::Algorithm(
            "the requester's key is not RSA: SCEP sends the certificate encrypted to it".into(),
        ));
    }
    let rsa = PublicEncryptingKey::from_der(&spki.to_der().map_err(build)?)
        .ok()
        .and_then(|k| Pkcs1PublicEncryptingKey::new(k).ok())
        .ok_or_else(|| ScepError::Algorithm("the requester's RSA key".into()))?;
    let mut cek = [0u8; 32];
    rand::fill(&mut cek).map_err(|_| ScepError::Build("random key".into()))?;
    let mut enc_key = vec![0u8; rsa.ciphertext_size()];
    let enc_key = rsa
        .encrypt(&cek, &mut enc_key)
        .map_err(|_| ScepError::Build("key transport".into()))?
        .to_vec();
    let key = UnboundCipherKey::new(&AES_256, &cek)
        .ok()
        .and_then(|k| PaddedBlockEncryptingKey::cbc_pkcs7(k).ok())
        .ok_or_else(|| ScepError::Build("AES key".into()))?;
    let mut data = content.to_vec();
    let context = key
        .encrypt(&mut data)
        .map_err(|_| ScepError::Build("encryption".into()))?;
    let iv: &[u8] = match &context {
        aws_lc_rs::cipher::DecryptionContext::Iv128(iv) => iv.as_ref(),
        _ => return Err(ScepError::Build("no IV".into())),
    };
    // Written out here rather than with the cms crate's types: the
    // requester's certificate may carry a serial number longer than the 20
    // octets those accept, and the recipient must name it exactly.
    let ktri = LooseKeyTransRecipientInfo {
        version: 0,
        rid: LooseIssuerAndSerial {
            issuer: cert.tbs.issuer.clone(),
            serial_number: cert.tbs.serial_number.clone(),
        },
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: ID_RSA,
            parameters: Some(der::Any::null()),
        },
        enc_key: OctetString::new(enc_key).map_err(build)?,
    };
    let ed = LooseEnvelopedData {
        version: 0,
        recip_infos: der::Any::new(der::Tag::Set, ktri.to_der().map_err(build)?).map_err(build)?,
        encrypted_content: EncryptedContentInfo {
            content_type: ID_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: ID_AES256_CBC,
                parameters: Some(der::Any::new(der::Tag::OctetString, iv).map_err(build)?),
            },
            encrypted_content: Some(OctetString::new(data).map_err(build)?),
        },
    };
    ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: der::Any::encode_from(&ed).map_err(build)?,
    }
    .to_der()
    .map_err(build)
}

/// Builds a PKIMessage as a SCEP client does (for tests and benchmarks that
/// drive the server): `content` (the EnvelopedData) signed with `key_pem`,
/// whose certificate is `cert_der`, with SHA-256.
pub fn client_pki_message(
    key_pem: &str,
    cert_der: &[u8],
    message_type: &str,
    transaction_id: &str,
    sender_nonce: &[u8],
    content: &[u8],
) -> Result<Vec<u8>, ScepError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| ScepError::Build(e.to_string()))?;
    build_pki_message(
        &key,
        cert_der,
        message_type,
        transaction_id,
        sender_nonce,
        content,
        false,
    )
}

fn build_pki_message(
    key: &rcgen::KeyPair,
    cert_der: &[u8],
    message_type: &str,
    transaction_id: &str,
    sender_nonce: &[u8],
    content: &[u8],
    tamper: bool,
) -> Result<Vec<u8>, ScepError> {
    use cms::cert::IssuerAndSerialNumber;
    use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignerInfo, SignerInfos};
    use der::Tag;
    use der::asn1::SetOfVec;
    use rcgen::SigningKey;
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let build = |e: der::Error| ScepError::Build(e.to_string());
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(build)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    let mut attrs = SetOfVec::new();
    for a in [
        one_attr(
            ID_MESSAGE_TYPE,
            any(Tag::PrintableString, message_type.as_bytes())?,
        )?,
        one_attr(
            ID_TRANSACTION_ID,
            any(Tag::PrintableString, transaction_id.as_bytes())?,
        )?,
        one_attr(ID_SENDER_NONCE, any(Tag::OctetString, sender_nonce)?)?,
        one_attr(ID_MESSAGE_DIGEST, any(Tag::OctetString, digest.as_ref())?)?,
    ] {
        attrs.insert(a).map_err(build)?;
    }
    let mut signature = key
        .sign(&attrs.to_der().map_err(build)?)
        .map_err(|e| ScepError::Build(e.to_string()))?;
    if tamper && let Some(last) = signature.last_mut() {
        *last ^= 1;
    }
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    };
    let signer = SignerInfo {
        version: cms::content_info::CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: cert.signature_algorithm.oid,
            parameters: None,
        },
        signature: OctetString::new(signature).map_err(build)?,
        unsigned_attrs: None,
    };
    let mut digests = SetOfVec::new();
    digests.insert(sha256).map_err(build)?;
    let mut certs = SetOfVec::new();
    certs
        .insert(CertificateChoices::Certificate(cert))
        .map_err(build)?;
    let mut signers = SetOfVec::new();
    signers.insert(signer).map_err(build)?;
    let sd = SignedData {
        version: cms::content_info::CmsVersion::V1,
        digest_algorithms: digests,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: Some(any(Tag::OctetString, content)?),
        },
        certificates: Some(CertificateSet(certs)),
        crls: None,
        signer_infos: SignerInfos(signers),
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: der::Any::encode_from(&sd).map_err(build)?,
    }
    .to_der()
    .map_err(build)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A PKCSReq exactly as the certmonger daemon built it: signed with a
    /// self-signed RSA certificate (v1) whose serial number is 32 octets.
    const CERTMONGER_PKCSREQ: &str = include_str!("testdata/certmonger-pkcsreq.pem");

    #[test]
    fn a_certmonger_pkcsreq_with_a_long_serial_is_read_verified_and_answered() {
        use base64::Engine;
        let b64: String = CERTMONGER_PKCSREQ
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let m = parse_pki_message(&der).unwrap();
        assert_eq!(m.message_type, MessageType::PkcsReq);
        assert!(m.signer_key_is_rsa());
        m.verify().unwrap();
        let signer = LooseCertificate::from_der(&m.signer_cert_der).unwrap();
        // 32 octets, and the zero that keeps it positive.
        assert_eq!(signer.tbs.serial_number.as_bytes().len(), 33);
        // The CertRep's envelope names that certificate as its recipient.
        let env = envelope_to(&m.signer_cert_der, b"issued").unwrap();
        let ci = ContentInfo::from_der(&env).unwrap();
        let ed: LooseEnvelopedData = ci.content.decode_as().unwrap();
        let ktri = LooseKeyTransRecipientInfo::from_der(ed.recip_infos.value()).unwrap();
        assert!(ktri.rid.serial_number == signer.tbs.serial_number);
        assert!(ktri.rid.issuer == signer.tbs.issuer);
        // Altered content no longer verifies.
        let mut altered = m.clone();
        altered.content[40] ^= 1;
        assert_eq!(altered.verify(), Err(ScepError::Digest));
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// certmonger puts the challenge password in a PrintableString even
    /// when it holds `_` (as enrolment tokens do), which PrintableString
    /// does not allow: it is read as the bytes it is.
    #[test]
    fn a_certmonger_csr_gives_its_challenge_password_as_the_token() {
        let der = pem_body(include_str!("testdata/certmonger-csr.pem"));
        let csr = crate::parse_csr(&der).unwrap();
        assert_eq!(csr.subject_cn.as_deref(), Some("SN-CM-1"));
        // The signature is checked over the request as it was signed.
        let mut forged = der.clone();
        let at = forged.len() - 8;
        forged[at] ^= 1;
        assert!(crate::parse_csr(&forged).is_err());
        let (user, token) = csr_credential(&der).unwrap();
        assert_eq!(user, "SN-CM-1");
        assert!(token.starts_with("ont_") && token.contains('_'), "{token}");
    }

    /// A PKIMessage as a SCEP client makes it (ECDSA signer, SHA-256).
    pub(crate) fn sample_message(message_type: &str, content: &[u8], tamper: bool) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["requester".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        signed_by(&key, cert.der(), message_type, content, tamper)
    }

    /// A PKIMessage signed by `key`, whose certificate is `cert_der`.
    pub(crate) fn signed_by(
        key: &KeyPair,
        cert_der: &[u8],
        message_type: &str,
        content: &[u8],
        tamper: bool,
    ) -> Vec<u8> {
        super::build_pki_message(
            key,
            cert_der,
            message_type,
            "abc123",
            &[7u8; 16],
            content,
            tamper,
        )
        .unwrap()
    }

    #[test]
    fn a_signed_pkcsreq_is_read_and_verified() {
        let der = sample_message("19", b"enveloped request", false);
        let m = parse_pki_message(&der).unwrap();
        assert_eq!(m.message_type, MessageType::PkcsReq);
        assert_eq!(m.transaction_id, "abc123");
        assert_eq!(m.sender_nonce, vec![7u8; 16]);
        assert_eq!(m.content, b"enveloped request");
        m.verify().unwrap();
        let renewal = parse_pki_message(&sample_message("17", b"x", false)).unwrap();
        assert_eq!(renewal.message_type, MessageType::RenewalReq);
        let poll = parse_pki_message(&sample_message("20", b"x", false)).unwrap();
        assert_eq!(poll.message_type, MessageType::CertPoll);
    }

    #[test]
    fn a_forged_or_altered_message_is_refused() {
        let m = parse_pki_message(&sample_message("19", b"request", true)).unwrap();
        assert_eq!(m.verify(), Err(ScepError::Signature));
        let mut m = parse_pki_message(&sample_message("19", b"request", false)).unwrap();
        m.content = b"another request".to_vec();
        assert_eq!(m.verify(), Err(ScepError::Digest));
        assert!(matches!(
            parse_pki_message(&sample_message("3", b"x", false)),
            Err(ScepError::MessageType(_))
        ));
        assert!(matches!(
            parse_pki_message(b"\x30\x03\x02\x01\x00"),
            Err(ScepError::NotSignedData(_))
        ));
        assert_eq!(
            parse_pki_message(&vec![0u8; MAX_MESSAGE_BYTES + 1]).unwrap_err(),
            ScepError::TooLarge
        );
    }

    #[test]
    fn the_ra_opens_a_request_openssl_encrypted_to_it() {
        use std::process::Command;
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::CertificateAuthority::create(
            &tmp.path().join("ca"),
            crate::CaKeyAlgorithm::EcdsaP256,
            "Acme",
            1_790_000_000,
        )
        .unwrap();
        let (ra, issued) = ca.ensure_scep_ra(1_790_000_000).unwrap();
        assert!(issued);
        assert!(ca.issued(&ra.cert_der));
        crate::check_key_file(&tmp.path().join("ca").join(RA_KEY)).unwrap();
        let (again, issued) = ca.ensure_scep_ra(1_790_000_100).unwrap();
        assert!(!issued);
        assert_eq!(again.cert_der, ra.cert_der);
        // openssl makes the envelope a SCEP client sends: RSA key transport, AES-CBC.
        let dir = tmp.path();
        std::fs::write(dir.join("ra.pem"), crate::certificate_pem(&ra.cert_der)).unwrap();
        std::fs::write(dir.join("csr.der"), b"a certificate request").unwrap();
        for cipher in ["-aes128", "-aes256"] {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(["cms", "-encrypt", "-binary", cipher, "-outform", "DER"])
                .args(["-in", "csr.der", "-out", "env.der", "ra.pem"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let env = std::fs::read(dir.join("env.der")).unwrap();
            assert_eq!(ra.open_envelope(&env).unwrap(), b"a certificate request");
            let mut broken = env.clone();
            let n = broken.len();
            broken[n - 3] ^= 1;
            assert!(ra.open_envelope(&broken).is_err());
        }
        // An envelope for someone else is refused.
        let other = tmp.path().join("other");
        let other_ca = crate::CertificateAuthority::create(
            &other,
            crate::CaKeyAlgorithm::EcdsaP256,
            "Other",
            1_790_000_000,
        )
        .unwrap();
        let (other_ra, _) = other_ca.ensure_scep_ra(1_790_000_000).unwrap();
        let env = std::fs::read(dir.join("env.der")).unwrap();
        assert!(matches!(
            other_ra.open_envelope(&env),
            Err(ScepError::Envelope(_))
        ));
        assert!(ra.open_envelope(b"junk").is_err());
    }

    #[test]
    fn a_cert_rep_is_signed_by_the_ra_and_opened_by_the_requester_with_openssl() {
        use std::process::Command;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = crate::CertificateAuthority::create(
            &dir.join("ca"),
            crate::CaKeyAlgorithm::EcdsaP256,
            "Acme",
            1_790_000_000,
        )
        .unwrap();
        let (ra, _) = ca.ensure_scep_ra(1_790_000_000).unwrap();
        let key =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let cert = CertificateParams::new(vec!["requester".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("requester.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("requester.key"), key.serialize_pem()).unwrap();
        let request =
            parse_pki_message(&signed_by(&key, cert.der(), "19", b"enveloped", false)).unwrap();
        request.verify().unwrap();
        let (issued, _) = ca
            .issue_with_generated_key("thing-7", 30, 1_790_000_000)
            .unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let rep = ra
            .cert_rep(&request, &CertRepStatus::Success(issued.der.clone()))
            .unwrap();
        std::fs::write(dir.join("rep.der"), &rep).unwrap();
        // The RA's signature verifies, the envelope opens with the requester's key.
        openssl(&[
            "cms",
            "-verify",
            "-noverify",
            "-inform",
            "DER",
            "-in",
            "rep.der",
            "-out",
            "env.der",
        ]);
        openssl(&[
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "env.der",
            "-recip",
            "requester.pem",
            "-inkey",
            "requester.key",
            "-out",
            "p7.der",
        ]);
        let certs = openssl(&["pkcs7", "-inform", "DER", "-in", "p7.der", "-print_certs"]);
        assert!(
            certs.contains("CN=thing-7") || certs.contains("CN = thing-7"),
            "{certs}"
        );
        let printed = openssl(&[
            "cms", "-cmsout", "-print", "-inform", "DER", "-in", "rep.der",
        ]);
        assert!(printed.contains("abc123"), "the transactionID is echoed");

        // FAILURE and PENDING carry empty content, which openssl verifies.
        for status in [
            CertRepStatus::Failure(FailInfo::BadRequest),
            CertRepStatus::Pending,
        ] {
            let rep = ra.cert_rep(&request, &status).unwrap();
            std::fs::write(dir.join("fail.der"), &rep).unwrap();
            openssl(&[
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-in",
                "fail.der",
                "-binary",
                "-out",
                dir.join("fail.out").to_str().unwrap(),
            ]);
            assert_eq!(std::fs::read(dir.join("fail.out")).unwrap(), b"");
        }
        // A certificate cannot be encrypted to an ECDSA requester.
        let ec = parse_pki_message(&sample_message("19", b"x", false)).unwrap();
        assert!(matches!(
            ra.cert_rep(&ec, &CertRepStatus::Success(issued.der)),
            Err(ScepError::Algorithm(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_pki_message(&bytes);
        }

        #[test]
        fn a_truncated_or_flipped_message_never_panics(cut in 0usize..400, flip in 0usize..400) {
            let mut der = sample_message("19", b"request", false);
            if flip < der.len() {
                der[flip] ^= 0x55;
            }
            der.truncate(cut.max(1).min(der.len()));
            if let Ok(m) = parse_pki_message(&der) {
                let _ = m.verify();
            }
        }
    }
}
