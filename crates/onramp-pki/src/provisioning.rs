//! Certificate handling for AWS-style provisioning: manufacturer CA
//! registration with proof of possession, and the built-in parameters
//! just-in-time provisioning templates read from a device certificate.

use crate::ca::{pem_encode, signed_by};
use crate::encoding::{fingerprint_sha256, parse_cert, pem_to_der_chain};
use crate::{PkiError, Result};
use std::collections::BTreeMap;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_COUNTRY_NAME, OID_X509_DN_QUALIFIER, OID_X509_ORGANIZATION_NAME,
    OID_X509_ORGANIZATIONAL_UNIT, OID_X509_SERIALNUMBER, OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::*;

const PARAM_PREFIX: &str = "AWS::IoT::Certificate::";

/// The JITP built-in parameters of a certificate: `AWS::IoT::Certificate::Id`
/// (its SHA-256 fingerprint) and those of `CommonName`, `Country`,
/// `Organization`, `OrganizationalUnit`, `DistinguishedNameQualifier`,
/// `StateName` and `SerialNumber` (the subject attribute, not the
/// certificate serial) that its subject carries.
pub fn subject_parameters(cert_der: &[u8]) -> Result<BTreeMap<String, String>> {
    let cert = parse_single(cert_der, "certificate")?;
    let attributes = [
        ("CommonName", OID_X509_COMMON_NAME),
        ("Country", OID_X509_COUNTRY_NAME),
        ("Organization", OID_X509_ORGANIZATION_NAME),
        ("OrganizationalUnit", OID_X509_ORGANIZATIONAL_UNIT),
        ("DistinguishedNameQualifier", OID_X509_DN_QUALIFIER),
        ("StateName", OID_X509_STATE_OR_PROVINCE_NAME),
        ("SerialNumber", OID_X509_SERIALNUMBER),
    ];
    let mut params = BTreeMap::new();
    for (name, oid) in attributes {
        // A repeated attribute (two OUs) yields its first value, in subject order.
        if let Some(attr) = cert.subject().iter_by_oid(&oid).next() {
            params.insert(format!("{PARAM_PREFIX}{name}"), attribute_text(attr, name)?);
        }
    }
    params.insert(format!("{PARAM_PREFIX}Id"), fingerprint_sha256(cert_der));
    Ok(params)
}

/// The text of a subject attribute. BMPString is decoded too: some
/// manufacturer tooling still writes it.
fn attribute_text(attr: &AttributeTypeAndValue<'_>, name: &str) -> Result<String> {
    if let Ok(s) = attr.as_str() {
        return Ok(s.to_string());
    }
    let raw = attr.attr_value();
    let unreadable = || PkiError::Invalid(format!("certificate subject: unreadable {name}"));
    if raw.tag() != Tag::BmpString || raw.data.len() % 2 != 0 {
        return Err(unreadable());
    }
    let units = raw
        .data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<std::result::Result<String, _>>()
        .map_err(|_| unreadable())
}

/// Names the certificate an `Invalid` error is about.
fn context(what: &str) -> impl FnOnce(PkiError) -> PkiError + '_ {
    move |e| match e {
        PkiError::Invalid(m) => PkiError::Invalid(format!("{what}: {m}")),
        other => other,
    }
}

/// Parses one DER certificate, refusing trailing bytes.
fn parse_single<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Invalid(format!("{what}: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Invalid(format!("{what}: trailing bytes")));
    }
    Ok(cert)
}

/// A CA certificate offered for registration, checked to be a CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificateInfo {
    pub der: Vec<u8>,
    /// Re-encoded from `der`, so stray text around the PEM block is dropped.
    pub pem: String,
    /// Lowercase hex SHA-256 of `der`.
    pub id: String,
    pub subject_dn: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a CA certificate for registration: exactly one certificate,
/// basicConstraints CA=true and, when keyUsage is present, keyCertSign.
pub fn parse_ca_certificate(pem: &str) -> Result<CaCertificateInfo> {
    let der = single_pem_cert(pem, "CA certificate")?;
    let cert = parse_single(&der, "CA certificate")?;
    let info = parse_cert(&der)?;
    match cert.basic_constraints() {
        Err(e) => {
            return Err(PkiError::Invalid(format!(
                "CA certificate: unreadable basicConstraints: {e}"
            )));
        }
        Ok(None) => {
            return Err(PkiError::Invalid(
                "not a CA certificate (no basicConstraints extension)".into(),
            ));
        }
        Ok(Some(bc)) if !bc.value.ca => {
            return Err(PkiError::Invalid(
                "not a CA certificate (basicConstraints CA is false)".into(),
            ));
        }
        Ok(Some(_)) => {}
    }
    match cert.key_usage() {
        Err(e) => {
            return Err(PkiError::Invalid(format!(
                "CA certificate: unreadable keyUsage: {e}"
            )));
        }
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(PkiError::Invalid(
                "the CA certificate's keyUsage does not include keyCertSign, so it cannot sign certificates"
                    .into(),
            ));
        }
        Ok(_) => {}
    }
    Ok(CaCertificateInfo {
        pem: pem_encode("CERTIFICATE", &der),
        id: info.fingerprint,
        subject_dn: info.subject_dn,
        not_before: info.not_before,
        not_after: info.not_after,
        der,
    })
}

/// Proof of possession of a CA's key: `verification_pem` must be signed by
/// the CA (`ca_der`) and carry `expected_common_name` (the registration code
/// Onramp handed out) as its common name.
pub fn verification_certificate_ok(
    verification_pem: &str,
    ca_der: &[u8],
    expected_common_name: &str,
) -> std::result::Result<(), PkiError> {
    let der = single_pem_cert(verification_pem, "verification certificate")?;
    parse_single(&der, "verification certificate")?;
    let info = parse_cert(&der)?;
    if !signed_by(&der, ca_der) {
        return Err(PkiError::Invalid(
            "the verification certificate is not signed by the CA certificate's key".into(),
        ));
    }
    match info.subject_cn {
        None => Err(PkiError::Invalid(format!(
            "the verification certificate has no common name; it must be the registration code `{expected_common_name}`"
        ))),
        Some(cn) if cn != expected_common_name => Err(PkiError::Invalid(format!(
            "the verification certificate's common name `{cn}` is not the registration code `{expected_common_name}`"
        ))),
        Some(_) => Ok(()),
    }
}

fn single_pem_cert(pem: &str, what: &str) -> Result<Vec<u8>> {
    let mut certs = pem_to_der_chain(pem).map_err(context(what))?;
    if certs.len() != 1 {
        return Err(PkiError::Invalid(format!(
            "{what}: expected exactly one certificate in the PEM, found {}",
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, DnValue, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn ca_params(cn: &str, is_ca: IsCa, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = is_ca;
        params.key_usages = key_usages;
        params
    }

    fn maker_ca() -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let params = ca_params(
            "Maker CA",
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        );
        let key = key();
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    }

    fn leaf_with_cn(cn: &str, issuer: &Issuer<'_, KeyPair>) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.signed_by(&key(), issuer).unwrap().pem()
    }

    fn invalid_message<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(PkiError::Invalid(m)) => m,
            other => panic!("expected PkiError::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn subject_parameters_cover_every_attribute() {
        let mut params = CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        let dn = &mut params.distinguished_name;
        *dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CommonName, "pump-7");
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Acme");
        dn.push(DnType::OrganizationalUnitName, "Pumps");
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 46]), "q-1");
        dn.push(DnType::StateOrProvinceName, "Bavaria");
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-0042");
        let cert = params.self_signed(&key()).unwrap();
        let der = cert.der().to_vec();

        let got = subject_parameters(&der).unwrap();
        let p = |k: &str| got.get(&format!("AWS::IoT::Certificate::{k}")).cloned();
        assert_eq!(p("CommonName").as_deref(), Some("pump-7"));
        assert_eq!(p("Country").as_deref(), Some("DE"));
        assert_eq!(p("Organization").as_deref(), Some("Acme"));
        assert_eq!(p("OrganizationalUnit").as_deref(), Some("Pumps"));
        assert_eq!(p("DistinguishedNameQualifier").as_deref(), Some("q-1"));
        assert_eq!(p("StateName").as_deref(), Some("Bavaria"));
        // The subject attribute, not the certificate serial (0abc).
        assert_eq!(p("SerialNumber").as_deref(), Some("SN-0042"));
        assert_eq!(p("Id"), Some(fingerprint_sha256(&der)));
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn absent_subject_attributes_are_left_out() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        let der = params.self_signed(&key()).unwrap().der().to_vec();
        let got = subject_parameters(&der).unwrap();
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "AWS::IoT::Certificate::Id",
                "AWS::IoT::Certificate::Organization"
            ]
        );
        let hex = &got["AWS::IoT::Certificate::Id"];
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
    }

    #[test]
    fn a_bmpstring_attribute_is_decoded() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            DnValue::BmpString(rcgen::string::BmpString::try_from("Pümpen").unwrap()),
        );
        let der = params.self_signed(&key()).unwrap().der().to_vec();
        let got = subject_parameters(&der).unwrap();
        assert_eq!(got["AWS::IoT::Certificate::OrganizationalUnit"], "Pümpen");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            subject_parameters(b"nope"),
            Err(PkiError::Invalid(_))
        ));
    }

    #[test]
    fn a_ca_certificate_is_parsed() {
        let (cert, _) = maker_ca();
        let info = parse_ca_certificate(&cert.pem()).unwrap();
        assert_eq!(info.der, cert.der().to_vec());
        assert_eq!(info.id, fingerprint_sha256(cert.der()));
        assert_eq!(info.subject_dn, "CN=Maker CA");
        assert!(info.not_before < info.not_after);
        // The stored PEM round-trips to the same certificate.
        assert_eq!(parse_ca_certificate(&info.pem).unwrap(), info);
    }

    #[test]
    fn non_ca_certificates_are_refused_with_a_reason() {
        let self_signed = |is_ca, usages| {
            ca_params("X", is_ca, usages)
                .self_signed(&key())
                .unwrap()
                .pem()
        };
        let m = invalid_message(parse_ca_certificate(&self_signed(
            IsCa::ExplicitNoCa,
            vec![],
        )));
        assert_eq!(m, "not a CA certificate (basicConstraints CA is false)");
        let m = invalid_message(parse_ca_certificate(&self_signed(IsCa::NoCa, vec![])));
        assert_eq!(m, "not a CA certificate (no basicConstraints extension)");
        let m = invalid_message(parse_ca_certificate(&self_signed(
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![KeyUsagePurpose::DigitalSignature],
        )));
        assert!(m.contains("keyCertSign"), "{m}");
        // A CA without keyUsage may sign anything.
        parse_ca_certificate(&self_signed(
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![],
        ))
        .unwrap();
    }

    #[test]
    fn a_ca_pem_must_hold_exactly_one_certificate() {
        let (a, _) = maker_ca();
        let (b, _) = maker_ca();
        let m = invalid_message(parse_ca_certificate(&format!("{}{}", a.pem(), b.pem())));
        assert!(m.contains("exactly one certificate"), "{m}");
        assert!(m.contains("found 2"), "{m}");
        let m = invalid_message(parse_ca_certificate("hello"));
        assert!(m.contains("no certificate"), "{m}");
    }

    #[test]
    fn proof_of_possession_checks_signer_and_common_name() {
        let (ca, issuer) = maker_ca();
        let (other_ca, other_issuer) = maker_ca();
        let code = "7f3a9c0e5b21";

        let good = leaf_with_cn(code, &issuer);
        verification_certificate_ok(&good, ca.der(), code).unwrap();

        // Same subject name, different key: the signature decides.
        let m = invalid_message(verification_certificate_ok(&good, other_ca.der(), code));
        assert!(m.contains("not signed by the CA"), "{m}");
        let forged = leaf_with_cn(code, &other_issuer);
        let m = invalid_message(verification_certificate_ok(&forged, ca.der(), code));
        assert!(m.contains("not signed by the CA"), "{m}");

        let wrong_cn = leaf_with_cn("something-else", &issuer);
        let m = invalid_message(verification_certificate_ok(&wrong_cn, ca.der(), code));
        assert!(
            m.contains("`something-else` is not the registration code"),
            "{m}"
        );

        let mut no_cn = CertificateParams::default();
        no_cn.distinguished_name = rcgen::DistinguishedName::new();
        no_cn
            .distinguished_name
            .push(DnType::OrganizationName, "Maker");
        let no_cn = no_cn.signed_by(&key(), &issuer).unwrap().pem();
        let m = invalid_message(verification_certificate_ok(&no_cn, ca.der(), code));
        assert!(m.contains("has no common name"), "{m}");

        let m = invalid_message(verification_certificate_ok("", ca.der(), code));
        assert!(m.starts_with("verification certificate:"), "{m}");
    }
}
