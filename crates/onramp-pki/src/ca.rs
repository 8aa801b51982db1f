//! The built-in certificate authority: a root and an issuing CA on disk.

use crate::csr::VerifiedCsr;
use crate::encoding::{CertInfo, fingerprint_sha256, parse_cert, pem_to_der_chain, serial_hex};
use crate::files::{read_file, read_key_file, write_private_file, write_public_file};
use crate::secrets::random_bytes;
use crate::{PkiError, Result};
use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use x509_parser::prelude::*;

/// Key algorithm for the CA keys Onramp generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaKeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa3072,
}

impl std::str::FromStr for CaKeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "ecdsa-p256" | "p-256" => Ok(CaKeyAlgorithm::EcdsaP256),
            "p384" | "ecdsa-p384" | "p-384" => Ok(CaKeyAlgorithm::EcdsaP384),
            "rsa3072" | "rsa-3072" => Ok(CaKeyAlgorithm::Rsa3072),
            other => Err(format!(
                "unknown key algorithm `{other}` (ecdsa-p256, ecdsa-p384, rsa-3072)"
            )),
        }
    }
}

impl CaKeyAlgorithm {
    pub(crate) fn generate(self) -> Result<KeyPair> {
        Ok(match self {
            CaKeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            CaKeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            CaKeyAlgorithm::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)?
            }
        })
    }
}

/// A certificate the CA just signed, before the registry records it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    pub pem: String,
    /// Lowercase hex of the 128-bit random serial.
    pub serial: String,
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// The HTTPS/MQTT server's own certificate and key, issued by the CA.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// Server certificate followed by the issuing CA.
    pub chain_pem_path: PathBuf,
    pub key_path: PathBuf,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Issuing CA first, root last.
    chain_der: Vec<Vec<u8>>,
    issuing_info: CertInfo,
    dir: PathBuf,
    /// Where relying parties find revocation status; put in every
    /// certificate issued once set.
    revocation_urls: std::sync::RwLock<Option<RevocationUrls>>,
}

/// The CRL distribution point and OCSP responder URLs issued certificates carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationUrls {
    pub crl: String,
    pub ocsp: String,
}

impl RevocationUrls {
    /// The URLs under a public base URL such as `http://pki.example.com`:
    /// `<base>/crl/<issuing CA id>.crl` and `<base>/ocsp`. The base must be
    /// an ASCII `http://` or `https://` URL.
    pub fn under(base: &str, issuing_ca_id: &str) -> Result<RevocationUrls> {
        let base = base.trim().trim_end_matches('/');
        let scheme_ok = base.starts_with("http://") || base.starts_with("https://");
        if !scheme_ok
            || !base.is_ascii()
            || base
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            || base.len() > 1024
        {
            return Err(PkiError::Invalid(format!(
                "`{base}` is not an http:// or https:// URL"
            )));
        }
        Ok(RevocationUrls {
            crl: format!("{base}/crl/{issuing_ca_id}.crl"),
            ocsp: format!("{base}/ocsp"),
        })
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuing", &self.issuing_info.subject_dn)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root.key";
const ISSUING_CERT: &str = "issuing.pem";
const ISSUING_KEY: &str = "issuing.key";
const ISSUING_CRL: &str = "issuing.crl";
const OCSP_CERT: &str = "ocsp.pem";
const OCSP_KEY: &str = "ocsp.key";

/// The Authority Information Access extension naming an OCSP responder.
fn aia_ocsp_extension(url: &str) -> Result<rcgen::CustomExtension> {
    use der::Encode;
    use der::asn1::{Ia5String, ObjectIdentifier};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
    const ID_AD_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
    let location =
        Ia5String::new(url).map_err(|e| PkiError::Invalid(format!("OCSP URL `{url}`: {e}")))?;
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: ID_AD_OCSP,
        access_location: GeneralName::UniformResourceIdentifier(location),
    }]);
    let der = aia
        .to_der()
        .map_err(|e| PkiError::Invalid(format!("AIA encoding: {e}")))?;
    Ok(rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        der,
    ))
}

pub(crate) fn at(unix: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| PkiError::Invalid(e.to_string()))
}

pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut bytes: [u8; 16] = random_bytes()?;
    // Keep the full 16 bytes significant so every serial prints the same width.
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

const DAY: i64 = 86_400;

impl CertificateAuthority {
    /// Whether a CA exists in `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join(ISSUING_CERT).exists() && dir.join(ISSUING_KEY).exists()
    }

    /// Creates a root and an issuing CA in `dir`. Refuses to overwrite one.
    pub fn create(
        dir: &Path,
        alg: CaKeyAlgorithm,
        organization: &str,
        now: i64,
    ) -> Result<CertificateAuthority> {
        if Self::exists(dir) {
            return Err(PkiError::Invalid(format!(
                "a CA already exists in {}",
                dir.display()
            )));
        }
        let root_key = alg.generate()?;
        let mut root = CertificateParams::default();
        root.distinguished_name = rcgen::DistinguishedName::new();
        root.distinguished_name
            .push(DnType::OrganizationName, organization);
        root.distinguished_name
            .push(DnType::CommonName, format!("{organization} Root CA"));
        root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.not_before = at(now - DAY)?;
        root.not_after = at(now + 20 * 365 * DAY)?;
        root.serial_number = Some(random_serial()?);
        let root_cert = root.self_signed(&root_key)?;

        let issuing_key = alg.generate()?;
        let mut issuing = CertificateParams::default();
        issuing.distinguished_name = rcgen::DistinguishedName::new();
        issuing
            .distinguished_name
            .push(DnType::OrganizationName, organization);
        issuing
            .distinguished_name
            .push(DnType::CommonName, format!("{organization} Issuing CA"));
        issuing.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuing.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        issuing.not_before = at(now - DAY)?;
        issuing.not_after = at(now + 10 * 365 * DAY)?;
        issuing.serial_number = Some(random_serial()?);
        issuing.use_authority_key_identifier_extension = true;
        let root_issuer = Issuer::new(root, root_key);
        let issuing_cert = issuing.signed_by(&issuing_key, &root_issuer)?;

        write_private_file(
            &dir.join(ROOT_KEY),
            root_issuer.key().serialize_pem().as_bytes(),
        )?;
        write_public_file(&dir.join(ROOT_CERT), root_cert.pem().as_bytes())?;
        write_private_file(
            &dir.join(ISSUING_KEY),
            issuing_key.serialize_pem().as_bytes(),
        )?;
        write_public_file(&dir.join(ISSUING_CERT), issuing_cert.pem().as_bytes())?;
        Self::load(dir)
    }

    /// Imports an existing CA: its certificate (optionally followed by its
    /// parents up to a root) and its private key, into `dir`.
    pub fn import(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority> {
        if Self::exists(dir) {
            return Err(PkiError::Invalid(format!(
                "a CA already exists in {}",
                dir.display()
            )));
        }
        let chain = pem_to_der_chain(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, cert) = X509Certificate::from_der(&chain[0])
            .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(PkiError::Invalid(
                "the imported certificate is not a CA (basicConstraints CA:FALSE or absent)".into(),
            ));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::Invalid(
                "the private key does not belong to the imported certificate".into(),
            ));
        }
        let to_pem = |der: &[u8]| pem_encode("CERTIFICATE", der);
        let root_der = chain.last().cloned().unwrap_or_default();
        write_private_file(&dir.join(ISSUING_KEY), key.serialize_pem().as_bytes())?;
        write_public_file(
            &dir.join(ISSUING_CERT),
            cert_pem_all(&chain[..chain.len().saturating_sub(1).max(1)]).as_bytes(),
        )?;
        write_public_file(&dir.join(ROOT_CERT), to_pem(&root_der).as_bytes())?;
        Self::load(dir)
    }

    /// Loads the CA from `dir`, refusing key files readable by others.
    pub fn load(dir: &Path) -> Result<CertificateAuthority> {
        let key_pem = read_key_file(&dir.join(ISSUING_KEY))?;
        if dir.join(ROOT_KEY).exists() {
            read_key_file(&dir.join(ROOT_KEY))?;
        }
        let key = KeyPair::from_pem(&key_pem)?;
        let mut chain_der = pem_to_der_chain(&read_file(&dir.join(ISSUING_CERT))?)?;
        let root = pem_to_der_chain(&read_file(&dir.join(ROOT_CERT))?)?;
        for r in root {
            if !chain_der.contains(&r) {
                chain_der.push(r);
            }
        }
        let issuing_info = parse_cert(&chain_der[0])?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(chain_der[0].clone()), key)?;
        Ok(CertificateAuthority {
            issuer,
            chain_der,
            issuing_info,
            dir: dir.to_path_buf(),
            revocation_urls: std::sync::RwLock::new(None),
        })
    }

    /// A short, stable name of the issuing CA: the first 16 hex digits of
    /// its certificate's SHA-256 fingerprint. Names its CRL.
    pub fn issuing_ca_id(&self) -> String {
        self.issuing_info.fingerprint.chars().take(16).collect()
    }

    /// Sets the CRL and OCSP URLs that certificates issued from now on carry.
    pub fn set_revocation_urls(&self, urls: RevocationUrls) {
        if let Ok(mut u) = self.revocation_urls.write() {
            *u = Some(urls);
        }
    }

    /// The CRL and OCSP URLs issued certificates carry, once set.
    pub fn revocation_urls(&self) -> Option<RevocationUrls> {
        self.revocation_urls.read().ok().and_then(|u| u.clone())
    }

    /// Adds the CRL distribution point and the AIA OCSP URL, when set.
    fn add_revocation_pointers(&self, params: &mut CertificateParams) -> Result<()> {
        let Some(urls) = self.revocation_urls() else {
            return Ok(());
        };
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![urls.crl.clone()],
        }];
        params
            .custom_extensions
            .push(aia_ocsp_extension(&urls.ocsp)?);
        Ok(())
    }

    /// Signs a CRL over `req.revoked` with the issuing CA key (DER).
    pub fn sign_crl(&self, req: &crate::crl::CrlRequest<'_>) -> Result<Vec<u8>> {
        let ski = X509Certificate::from_der(self.issuing_der())
            .ok()
            .and_then(|(_, c)| {
                c.extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                        _ => None,
                    })
            });
        let params = crate::crl::crl_params(req, ski)?;
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// Keeps the newest CRL in the CA directory (`issuing.crl`), replaced
    /// atomically, so that a restart serves it and numbers the next above it.
    pub fn save_crl(&self, der: &[u8]) -> Result<()> {
        let path = self.dir.join(ISSUING_CRL);
        // One temporary name per process: nodes may share the directory.
        let tmp = self
            .dir
            .join(format!("{ISSUING_CRL}.{}.tmp", std::process::id()));
        write_public_file(&tmp, der)?;
        std::fs::rename(&tmp, &path).map_err(|source| PkiError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The CRL kept by [`Self::save_crl`], if any and if it is one this CA signed.
    pub fn saved_crl(&self) -> Option<Vec<u8>> {
        let der = std::fs::read(self.dir.join(ISSUING_CRL)).ok()?;
        let (_, crl) = CertificateRevocationList::from_der(&der).ok()?;
        let (_, issuing) = X509Certificate::from_der(self.issuing_der()).ok()?;
        crl.verify_signature(issuing.public_key()).ok()?;
        Some(der)
    }

    /// Loads the delegated OCSP signing certificate and key from the CA
    /// directory (`ocsp.pem`, `ocsp.key`, 0600), issuing a new pair when
    /// they are missing, were not issued by the current issuing CA, or have
    /// less than a third of `validity_days` left. Returns the responder and
    /// whether it was (re)issued.
    pub fn ensure_ocsp_responder(
        &self,
        validity_days: u32,
        now: i64,
    ) -> Result<(crate::ocsp::OcspResponder, bool)> {
        let cert_path = self.dir.join(OCSP_CERT);
        let key_path = self.dir.join(OCSP_KEY);
        let validity = i64::from(validity_days.max(1)) * DAY;
        if cert_path.exists() && key_path.exists() {
            let key_pem = read_key_file(&key_path)?;
            let current = pem_to_der_chain(&read_file(&cert_path)?)
                .ok()
                .and_then(|chain| chain.into_iter().next())
                .filter(|der| self.issued(der))
                .and_then(|der| {
                    let key = KeyPair::from_pem(&key_pem).ok()?;
                    crate::ocsp::OcspResponder::new(&der, &key.serialize_der()).ok()
                })
                // A certificate from the future (the clock went back) is replaced too.
                .filter(|r| r.not_before() <= now && r.not_after() - now > validity / 3);
            if let Some(responder) = current {
                return Ok((responder, false));
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let issuing_cn = self
            .issuing_info
            .subject_cn
            .clone()
            .unwrap_or_else(|| "Onramp".into());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{issuing_cn} OCSP Responder"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        // id-pkix-ocsp-nocheck: relying parties need not ask for this
        // certificate's own status (it is short-lived instead).
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                vec![0x05, 0x00],
            ));
        params.not_before = at(now - 60)?;
        params.not_after = at(now + validity)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let responder = crate::ocsp::OcspResponder::new(cert.der(), &key.serialize_der())?;
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public_file(&cert_path, cert.pem().as_bytes())?;
        Ok((responder, true))
    }

    /// The issuing CA's signer, for certificates issued elsewhere in this crate.
    pub(crate) fn signer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The issuing CA certificate (DER).
    pub fn issuing_der(&self) -> &[u8] {
        &self.chain_der[0]
    }

    /// The chain from the issuing CA up to the root (DER).
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// The root certificate (DER): the trust anchor devices and clients install.
    pub fn root_der(&self) -> &[u8] {
        self.chain_der.last().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn chain_pem(&self) -> String {
        cert_pem_all(&self.chain_der)
    }

    pub fn root_pem(&self) -> String {
        pem_encode("CERTIFICATE", self.root_der())
    }

    pub fn issuing_info(&self) -> &CertInfo {
        &self.issuing_info
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Proves the signing key is loaded and usable (for readiness checks).
    pub fn self_check(&self) -> Result<()> {
        use rcgen::SigningKey;
        self.issuer
            .key()
            .sign(b"onramp readiness")
            .map(|_| ())
            .map_err(PkiError::from)
    }

    /// Issues a device certificate: CN = thing name, serialNumber = the
    /// device serial, digitalSignature, clientAuth, random 128-bit serial.
    /// Everything but the public key is decided here, never copied from the CSR.
    pub fn issue_device_cert(
        &self,
        csr: &VerifiedCsr,
        thing_name: &str,
        serial_number: &str,
        validity_days: u32,
        now: i64,
    ) -> Result<IssuedCert> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        self.issue_client_cert(
            &public_key,
            thing_name,
            Some(serial_number),
            validity_days,
            now,
        )
    }

    /// Issues a client certificate for a CSR with only `common_name` in the
    /// subject (fleet provisioning's create-from-CSR). As with
    /// [`Self::issue_device_cert`], only the public key comes from the CSR.
    pub fn issue_for_csr(
        &self,
        csr: &VerifiedCsr,
        common_name: &str,
        validity_days: u32,
        now: i64,
    ) -> Result<IssuedCert> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        self.issue_client_cert(&public_key, common_name, None, validity_days, now)
    }

    /// Issues a client certificate with CN = `common_name` for a fresh ECDSA
    /// P-256 key generated here, for devices that cannot make their own
    /// (`$aws/certificates/create`) and for claim certificates.
    /// Returns the certificate and the key as PKCS#8 PEM; the key is not kept.
    pub fn issue_with_generated_key(
        &self,
        common_name: &str,
        validity_days: u32,
        now: i64,
    ) -> Result<(IssuedCert, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = self.issue_client_cert(&key, common_name, None, validity_days, now)?;
        Ok((cert, key.serialize_pem()))
    }

    /// The common part of client certificate issuance: digitalSignature,
    /// clientAuth, random 128-bit serial, a minute of back-dating.
    fn issue_client_cert(
        &self,
        public_key: &impl PublicKeyData,
        common_name: &str,
        subject_serial: Option<&str>,
        validity_days: u32,
        now: i64,
    ) -> Result<IssuedCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(serial_number) = subject_serial {
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial_number);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // A minute of back-dating absorbs small device clock skew.
        params.not_before = at(now - 60)?;
        params.not_after = at(now + i64::from(validity_days) * DAY)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        self.add_revocation_pointers(&mut params)?;
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().to_vec();
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| serial_hex(&s.to_bytes()))
            .unwrap_or_default();
        Ok(IssuedCert {
            fingerprint: fingerprint_sha256(&der),
            pem: cert.pem(),
            der,
            serial,
            not_before: now - 60,
            not_after: now + i64::from(validity_days) * DAY,
        })
    }

    /// Ensures the server's TLS identity exists in `dir`, valid for `hosts`
    /// for at least 30 more days; reissues it otherwise.
    pub fn ensure_server_identity(
        &self,
        dir: &Path,
        hosts: &[String],
        now: i64,
    ) -> Result<ServerIdentity> {
        let chain_pem_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        let hosts_path = dir.join("server.hosts");
        // The revocation URLs are part of what must match: a changed public
        // URL reissues the certificate.
        let mut wanted_hosts = hosts.join("\n");
        if let Some(urls) = self.revocation_urls() {
            wanted_hosts.push_str(&format!("\n# crl {}\n# ocsp {}", urls.crl, urls.ocsp));
        }
        let current = chain_pem_path.exists()
            && key_path.exists()
            && read_file(&hosts_path).ok().as_deref() == Some(wanted_hosts.as_str())
            && read_file(&chain_pem_path)
                .ok()
                .and_then(|pem| pem_to_der_chain(&pem).ok())
                .and_then(|chain| parse_cert(&chain[0]).ok())
                .is_some_and(|info| {
                    info.not_after > now + 30 * DAY
                        && info.issuer_dn == self.issuing_info.subject_dn
                });
        if current {
            read_key_file(&key_path)?;
            return Ok(ServerIdentity {
                chain_pem_path,
                key_path,
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().map(String::as_str).unwrap_or("localhost"),
        );
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(PkiError::from),
            })
            .collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = at(now - 60)?;
        params.not_after = at(now + 397 * DAY)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        self.add_revocation_pointers(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        chain.push_str(&pem_encode("CERTIFICATE", self.issuing_der()));
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public_file(&chain_pem_path, chain.as_bytes())?;
        write_public_file(&hosts_path, wanted_hosts.as_bytes())?;
        Ok(ServerIdentity {
            chain_pem_path,
            key_path,
        })
    }

    /// Whether `cert_der` carries a valid signature by this CA's issuing key.
    pub fn issued(&self, cert_der: &[u8]) -> bool {
        signed_by(cert_der, self.issuing_der())
    }
}

/// Whether `cert_der` is signed by the key of `issuer_der` (and names it as issuer).
pub fn signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((rest, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A DER certificate as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn cert_pem_all(chain: &[Vec<u8>]) -> String {
    chain.iter().map(|d| pem_encode("CERTIFICATE", d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::parse_csr;
    use std::process::Command;

    const NOW: i64 = 1_790_000_000;

    fn new_ca() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &dir.path().join("ca"),
            CaKeyAlgorithm::EcdsaP256,
            "Onramp Test",
            NOW,
        )
        .unwrap();
        (dir, ca)
    }

    /// `openssl verify` of `leaf_pem` as a TLS client certificate, at `NOW`.
    fn openssl_verifies(dir: &Path, ca: &CertificateAuthority, leaf_pem: &str) {
        let root = dir.join("root.pem");
        let untrusted = dir.join("chain.pem");
        let leaf = dir.join("leaf.pem");
        std::fs::write(&root, ca.root_pem()).unwrap();
        std::fs::write(&untrusted, ca.chain_pem()).unwrap();
        std::fs::write(&leaf, leaf_pem).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-attime"])
            .arg((NOW + 10).to_string())
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&untrusted)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Subject DN, whether keyUsage is digitalSignature only, and the SPKI.
    fn leaf_facts(der: &[u8]) -> (String, bool, Vec<u8>) {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let ku = cert.key_usage().unwrap().unwrap().value;
        let ds_only = ku.digital_signature() && !ku.key_cert_sign();
        (
            cert.subject().to_string(),
            ds_only,
            cert.public_key().raw.to_vec(),
        )
    }

    #[test]
    fn a_generated_key_certificate_matches_its_key_and_verifies() {
        let (dir, ca) = new_ca();
        let (cert, key_pem) = ca.issue_with_generated_key("claim-1", 30, NOW).unwrap();
        assert!(ca.issued(&cert.der));
        openssl_verifies(dir.path(), &ca, &cert.pem);

        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let (subject, ds_only, spki) = leaf_facts(&cert.der);
        assert_eq!(spki, key.subject_public_key_info());
        assert_eq!(subject, "CN=claim-1");
        assert!(ds_only);

        let info = parse_cert(&cert.der).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("claim-1"));
        assert_eq!(info.subject_serial, None);
        assert_eq!(info.serial, cert.serial);
        assert_eq!(cert.serial.len(), 32, "128-bit serial");
        assert_eq!(info.fingerprint, cert.fingerprint);
        assert_eq!(info.not_before, NOW - 60);
        assert_eq!(info.not_after, NOW + 30 * DAY);
        assert_eq!(
            (cert.not_before, cert.not_after),
            (info.not_before, info.not_after)
        );

        // Every call makes a new key.
        let (_, other_key) = ca.issue_with_generated_key("claim-1", 30, NOW).unwrap();
        assert_ne!(other_key, key_pem);
    }

    #[test]
    fn a_csr_certificate_carries_only_the_common_name() {
        let (dir, ca) = new_ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut req = CertificateParams::default();
        req.distinguished_name = rcgen::DistinguishedName::new();
        req.distinguished_name.push(DnType::CommonName, "from-csr");
        req.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-9");
        let csr = parse_csr(req.serialize_request(&key).unwrap().der()).unwrap();

        let cert = ca.issue_for_csr(&csr, "thing-9", 365, NOW).unwrap();
        assert!(ca.issued(&cert.der));
        openssl_verifies(dir.path(), &ca, &cert.pem);
        let (subject, ds_only, spki) = leaf_facts(&cert.der);
        assert_eq!(subject, "CN=thing-9", "nothing copied from the CSR subject");
        assert!(ds_only);
        assert_eq!(spki, key.subject_public_key_info());
        let info = parse_cert(&cert.der).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("thing-9"));
        assert_eq!(info.subject_serial, None);
        assert_eq!(info.not_after - info.not_before, 365 * DAY + 60);

        // The device certificate path still adds the serialNumber attribute.
        let device = ca
            .issue_device_cert(&csr, "thing-9", "SN-9", 365, NOW)
            .unwrap();
        let info = parse_cert(&device.der).unwrap();
        assert_eq!(info.subject_serial.as_deref(), Some("SN-9"));
    }

    fn real_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn openssl_in(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    #[test]
    fn issued_certificates_point_at_the_crl_and_the_responder() {
        let (dir, ca) = new_ca();
        let urls =
            RevocationUrls::under("http://pki.example.com:8080/", &ca.issuing_ca_id()).unwrap();
        assert_eq!(
            urls.crl,
            format!("http://pki.example.com:8080/crl/{}.crl", ca.issuing_ca_id())
        );
        assert_eq!(urls.ocsp, "http://pki.example.com:8080/ocsp");
        assert!(RevocationUrls::under("ftp://x", "id").is_err());
        assert!(RevocationUrls::under("http://caf\u{e9}", "id").is_err());

        let (before, _) = ca.issue_with_generated_key("no-urls", 30, NOW).unwrap();
        ca.set_revocation_urls(urls.clone());
        let (cert, _) = ca.issue_with_generated_key("with-urls", 30, NOW).unwrap();
        let leaf = dir.path().join("leaf.pem");
        std::fs::write(&leaf, &cert.pem).unwrap();
        let (ok, text) = openssl_in(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
        assert!(ok, "{text}");
        assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
        assert!(text.contains(&format!("URI:{}", urls.crl)), "{text}");
        assert!(
            text.contains(&format!("OCSP - URI:{}", urls.ocsp)),
            "{text}"
        );
        openssl_verifies(dir.path(), &ca, &cert.pem);
        std::fs::write(&leaf, &before.pem).unwrap();
        let (_, text) = openssl_in(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
        assert!(!text.contains("CRL Distribution Points"), "{text}");
    }

    #[test]
    fn a_crl_verifies_and_revokes_what_it_lists() {
        use crate::crl::{CrlRequest, RevokedSerial, crl_info};
        let (dir, ca) = new_ca();
        let now = real_now();
        let (good, _) = ca.issue_with_generated_key("good", 30, now).unwrap();
        let (bad, _) = ca.issue_with_generated_key("bad", 30, now).unwrap();
        let revoked = [RevokedSerial {
            serial: bad.serial.clone(),
            revoked_at: now - 5,
            reason: "keyCompromise".into(),
        }];
        let der = ca
            .sign_crl(&CrlRequest {
                revoked: &revoked,
                this_update: now,
                next_update: now + 3600,
                crl_number: 42,
            })
            .unwrap();
        let info = crl_info(&der).unwrap();
        assert_eq!(info.crl_number, Some(42));
        assert_eq!(info.this_update, now);
        assert_eq!(info.next_update, Some(now + 3600));
        assert_eq!(info.serials, vec![bad.serial.clone()]);

        let d = dir.path();
        std::fs::write(d.join("crl.der"), &der).unwrap();
        std::fs::write(d.join("chain.pem"), ca.chain_pem()).unwrap();
        std::fs::write(d.join("root.pem"), ca.root_pem()).unwrap();
        std::fs::write(d.join("good.pem"), &good.pem).unwrap();
        std::fs::write(d.join("bad.pem"), &bad.pem).unwrap();
        let (ok, text) = openssl_in(
            d,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                "crl.der",
                "-CAfile",
                "chain.pem",
                "-noout",
            ],
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        let (ok, text) = openssl_in(
            d,
            &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
        );
        assert!(ok, "{text}");
        let verify = |leaf: &str| {
            openssl_in(
                d,
                &[
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    "root.pem",
                    "-untrusted",
                    "chain.pem",
                    "-CRLfile",
                    "crl.pem",
                    leaf,
                ],
            )
        };
        let (ok, text) = verify("good.pem");
        assert!(ok && text.contains("good.pem: OK"), "{text}");
        let (ok, text) = verify("bad.pem");
        assert!(!ok && text.contains("certificate revoked"), "{text}");
    }

    #[test]
    fn the_ocsp_responder_answers_good_revoked_and_unknown_for_openssl() {
        use crate::ocsp::{IssuerId, OcspStatus, parse_ocsp_request};
        let (dir, ca) = new_ca();
        let (_other_dir, other) = new_ca();
        let now = real_now();
        let (responder, fresh) = ca.ensure_ocsp_responder(7, now).unwrap();
        assert!(fresh);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ca.dir().join("ocsp.key"))
                .unwrap()
                .permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
        let (again, fresh) = ca.ensure_ocsp_responder(7, now).unwrap();
        assert!(!fresh, "a current signer is kept");
        assert_eq!(again.cert_der(), responder.cert_der());
        let (renewed, fresh) = ca.ensure_ocsp_responder(7, now + 6 * DAY).unwrap();
        assert!(fresh, "a signer with little time left is renewed");
        assert_ne!(renewed.cert_der(), responder.cert_der());
        let (responder, fresh) = ca.ensure_ocsp_responder(7, now).unwrap();
        assert!(fresh, "a signer not yet valid is replaced");
        assert_ne!(renewed.cert_der(), responder.cert_der());
        let d = dir.path();
        std::fs::write(d.join("signer.pem"), certificate_pem(responder.cert_der())).unwrap();
        let (_, text) = openssl_in(d, &["x509", "-in", "signer.pem", "-noout", "-text"]);
        assert!(
            text.contains("OCSP Signing") && text.contains("OCSP No Check"),
            "{text}"
        );

        let (cert, _) = ca.issue_with_generated_key("dev", 30, now).unwrap();
        let (foreign, _) = other.issue_with_generated_key("dev", 30, now).unwrap();
        std::fs::write(d.join("issuing.pem"), certificate_pem(ca.issuing_der())).unwrap();
        std::fs::write(
            d.join("other-issuing.pem"),
            certificate_pem(other.issuing_der()),
        )
        .unwrap();
        std::fs::write(d.join("root.pem"), ca.root_pem()).unwrap();
        std::fs::write(d.join("dev.pem"), &cert.pem).unwrap();
        std::fs::write(d.join("foreign.pem"), &foreign.pem).unwrap();
        let issuer = IssuerId::from_cert(ca.issuing_der()).unwrap();

        let ask = |issuer_pem: &str, leaf: &str, status: Option<OcspStatus>| {
            let (ok, text) = openssl_in(
                d,
                &[
                    "ocsp", "-issuer", issuer_pem, "-cert", leaf, "-reqout", "req.der",
                ],
            );
            assert!(ok, "{text}");
            let req = parse_ocsp_request(&std::fs::read(d.join("req.der")).unwrap()).unwrap();
            assert!(req.nonce.is_some(), "openssl sends a nonce");
            let statuses: Vec<OcspStatus> = req
                .queries
                .iter()
                .map(|q| {
                    if !issuer.names(q) {
                        OcspStatus::Unknown
                    } else {
                        assert_eq!(q.serial, cert.serial);
                        status.unwrap_or(OcspStatus::Unknown)
                    }
                })
                .collect();
            let resp = responder.respond(&req, &statuses, now, now + 3600).unwrap();
            std::fs::write(d.join("resp.der"), resp).unwrap();
            // The request as sent: openssl checks the echoed nonce against it.
            let verify = if issuer_pem == "issuing.pem" {
                "-verify_other"
            } else {
                "-noverify"
            };
            let mut args = vec![
                "ocsp",
                "-reqin",
                "req.der",
                "-respin",
                "resp.der",
                "-CAfile",
                "root.pem",
                "-resp_text",
                verify,
            ];
            if verify == "-verify_other" {
                args.push("issuing.pem");
            }
            openssl_in(d, &args)
        };
        let (ok, text) = ask("issuing.pem", "dev.pem", Some(OcspStatus::Good));
        assert!(ok, "{text}");
        assert!(text.contains("Response verify OK"), "{text}");
        assert!(text.contains("Cert Status: good"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(text.contains("OCSP Nonce"), "{text}");
        assert!(text.contains("Next Update:"), "{text}");

        let revoked = OcspStatus::Revoked {
            at: now - 10,
            reason: 1,
        };
        let (ok, text) = ask("issuing.pem", "dev.pem", Some(revoked));
        assert!(ok, "{text}");
        assert!(text.contains("Response verify OK"), "{text}");
        assert!(text.contains("Cert Status: revoked"), "{text}");
        assert!(text.contains("Revocation Reason: keyCompromise"), "{text}");

        let (ok, text) = ask("other-issuing.pem", "foreign.pem", None);
        assert!(ok, "{text}");
        assert!(text.contains("Cert Status: unknown"), "{text}");
    }

    #[test]
    fn an_imported_ca_signs_crls_and_its_certificates_point_at_them() {
        use crate::crl::{CrlRequest, RevokedSerial};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ok, text) = openssl_in(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ext.key",
                "-out",
                "ext.pem",
                "-subj",
                "/CN=External CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        assert!(ok, "{text}");
        let ca = CertificateAuthority::import(
            &d.join("ca"),
            &std::fs::read_to_string(d.join("ext.pem")).unwrap(),
            &std::fs::read_to_string(d.join("ext.key")).unwrap(),
        )
        .unwrap();
        let now = real_now();
        ca.set_revocation_urls(
            RevocationUrls::under("http://pki.test", &ca.issuing_ca_id()).unwrap(),
        );
        let (cert, _) = ca.issue_with_generated_key("dev", 30, now).unwrap();
        std::fs::write(d.join("dev.pem"), &cert.pem).unwrap();
        let revoked = [RevokedSerial {
            serial: cert.serial.clone(),
            revoked_at: now,
            reason: "superseded".into(),
        }];
        let der = ca
            .sign_crl(&CrlRequest {
                revoked: &revoked,
                this_update: now,
                next_update: now + 600,
                crl_number: 7,
            })
            .unwrap();
        ca.save_crl(&der).unwrap();
        assert_eq!(ca.saved_crl(), Some(der.clone()));
        std::fs::write(d.join("crl.der"), &der).unwrap();
        let (ok, text) = openssl_in(
            d,
            &[
                "crl", "-inform", "DER", "-in", "crl.der", "-CAfile", "ext.pem", "-noout",
            ],
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        let (ok, text) = openssl_in(
            d,
            &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
        );
        assert!(ok, "{text}");
        let (ok, text) = openssl_in(
            d,
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "ext.pem",
                "-CRLfile",
                "crl.pem",
                "dev.pem",
            ],
        );
        assert!(!ok && text.contains("certificate revoked"), "{text}");
        let (_, text) = openssl_in(d, &["x509", "-in", "dev.pem", "-noout", "-text"]);
        assert!(text.contains("URI:http://pki.test/crl/"), "{text}");
        // A CRL signed by another key is not taken back.
        let (_other_dir, other) = new_ca();
        std::fs::write(
            ca.dir().join("issuing.crl"),
            other
                .sign_crl(&CrlRequest {
                    revoked: &[],
                    this_update: now,
                    next_update: now + 600,
                    crl_number: 8,
                })
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ca.saved_crl(), None);
    }
}
