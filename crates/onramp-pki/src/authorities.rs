//! Every issuing CA Onramp knows, for a rollover with overlapping trust.
//!
//! The CA directory keeps its layout for the *active* issuing CA (the one
//! that signs new certificates): `issuing.pem`, `issuing.key`, `root.pem`,
//! `root.key`, `issuing.crl`, `ocsp.*`. Older issuing CAs live beside it:
//!
//! - `previous/<id>/`: still trusted. Devices holding their certificates
//!   connect and renew; `/cacerts` and `onramp ca export` list them.
//! - `retired/<id>/`: no longer trusted for connections or renewals. The key
//!   is kept only to sign the CA's CRL, which stays served until its
//!   certificates have expired.
//!
//! A rollover first copies the active CA into `previous/<id>/`, then writes
//! the next CA into `next/` (renamed into place whole), then moves its files
//! to the top. Loading finishes a rollover that stopped half-way, so a crash
//! never leaves a key beside a certificate it does not belong to.

use crate::ca::{CaKeyAlgorithm, CertificateAuthority, at, random_serial};
use crate::encoding::{parse_cert, pem_to_der_chain};
use crate::files::{write_private_file, write_public_file};
use crate::{PkiError, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PREVIOUS_DIR: &str = "previous";
pub const RETIRED_DIR: &str = "retired";
const NEXT_DIR: &str = "next";
const NO_ROOT_KEY: &str = "no-root-key";
const DAY: i64 = 86_400;

/// The part an issuing CA plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    /// Signs new certificates; trusted.
    Active,
    /// Replaced by a rollover; still trusted until retired.
    Previous,
    /// No longer trusted; its CRL is still signed and served.
    Retired,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CaRole::Active => "active",
            CaRole::Previous => "previous",
            CaRole::Retired => "retired",
        }
    }
}

/// How the next issuing CA comes about.
pub enum Rollover<'a> {
    /// A new issuing CA signed by the current root (its key must be here).
    NewIssuing { alg: CaKeyAlgorithm },
    /// A new root and a new issuing CA under it; both roots are served.
    /// The organisation in the new names is the current root's.
    NewRoot { alg: CaKeyAlgorithm },
    /// An external issuing CA: its certificate (optionally followed by its
    /// parents up to a root) and its private key.
    Import { cert_pem: &'a str, key_pem: &'a str },
}

/// The issuing CAs of one CA directory.
#[derive(Debug, Clone)]
pub struct Authorities {
    active: Arc<CertificateAuthority>,
    previous: Vec<Arc<CertificateAuthority>>,
    retired: Vec<Arc<CertificateAuthority>>,
}

impl Authorities {
    /// Only `active`: what a CA directory without rollover holds.
    pub fn single(active: CertificateAuthority) -> Authorities {
        Authorities {
            active: Arc::new(active),
            previous: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Loads every issuing CA of `dir`, finishing an interrupted rollover first.
    pub fn load(dir: &Path) -> Result<Authorities> {
        finish_rollover(dir)?;
        let active = Arc::new(CertificateAuthority::load(dir)?);
        let load_all = |sub: &str| -> Result<Vec<Arc<CertificateAuthority>>> {
            let mut out = Vec::new();
            for d in subdirs(&dir.join(sub))? {
                out.push(Arc::new(CertificateAuthority::load(&d)?));
            }
            Ok(out)
        };
        let previous = load_all(PREVIOUS_DIR)?;
        let retired = load_all(RETIRED_DIR)?;
        Ok(Authorities {
            active,
            previous,
            retired,
        })
    }

    /// A cheap summary of what is on disk: it changes when a rollover or a
    /// retirement happens, so a running server knows to reload.
    pub fn marker(dir: &Path) -> String {
        let mut m = String::new();
        if let Ok(meta) = std::fs::metadata(dir.join("issuing.pem")) {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            m.push_str(&format!("{}:{modified}", meta.len()));
        }
        for sub in [PREVIOUS_DIR, RETIRED_DIR, NEXT_DIR] {
            m.push_str(&format!("|{sub}:"));
            for d in subdirs(&dir.join(sub)).unwrap_or_default() {
                if let Some(n) = d.file_name() {
                    m.push_str(&n.to_string_lossy());
                    m.push(',');
                }
            }
        }
        m
    }

    pub fn active(&self) -> &Arc<CertificateAuthority> {
        &self.active
    }

    /// The CAs whose certificates connect and renew: active first.
    pub fn trusted(&self) -> impl Iterator<Item = &Arc<CertificateAuthority>> {
        std::iter::once(&self.active).chain(self.previous.iter())
    }

    /// Every CA with its role: active, previous, retired.
    pub fn all(&self) -> impl Iterator<Item = (CaRole, &Arc<CertificateAuthority>)> {
        std::iter::once((CaRole::Active, &self.active))
            .chain(self.previous.iter().map(|c| (CaRole::Previous, c)))
            .chain(self.retired.iter().map(|c| (CaRole::Retired, c)))
    }

    /// The CA with this id, whatever its role.
    pub fn by_id(&self, id: &str) -> Option<(CaRole, &Arc<CertificateAuthority>)> {
        self.all().find(|(_, c)| c.issuing_ca_id() == id)
    }

    /// The trusted CA that signed `cert_der`, if any.
    pub fn trusted_issuer_of(&self, cert_der: &[u8]) -> Option<&Arc<CertificateAuthority>> {
        self.trusted().find(|c| c.issued(cert_der))
    }

    /// The CA (of any role) that signed `cert_der`, with its role.
    pub fn issuer_of(&self, cert_der: &[u8]) -> Option<(CaRole, &Arc<CertificateAuthority>)> {
        self.all().find(|(_, c)| c.issued(cert_der))
    }

    /// The issuing certificates (DER) client certificates may chain to.
    pub fn trust_anchors(&self) -> Vec<Vec<u8>> {
        self.trusted().map(|c| c.issuing_der().to_vec()).collect()
    }

    /// Every trusted CA's chain, issuing CA then root, without repeats:
    /// the active chain first. What `/cacerts` serves.
    pub fn trusted_chains_der(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for ca in self.trusted() {
            for der in ca.chain_der() {
                if !out.contains(der) {
                    out.push(der.clone());
                }
            }
        }
        out
    }

    /// Every distinct root of the trusted CAs: the active root first.
    pub fn trusted_roots_der(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for ca in self.trusted() {
            let root = ca.root_der().to_vec();
            if !out.contains(&root) {
                out.push(root);
            }
        }
        out
    }
}

/// The directories directly under `dir` (none when it does not exist), sorted.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PkiError::Io {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Copies a file, keeping a private file private.
fn copy_file(from: &Path, to: &Path, private: bool) -> Result<()> {
    let bytes = std::fs::read(from).map_err(io_err(from))?;
    if private {
        crate::files::check_key_file(from)?;
        write_private_file(to, &bytes)
    } else {
        write_public_file(to, &bytes)
    }
}

/// Files of an issuing CA in its directory: (name, private).
const CA_FILES: [(&str, bool); 7] = [
    ("issuing.pem", false),
    ("issuing.key", true),
    ("root.pem", false),
    ("root.key", true),
    ("issuing.crl", false),
    ("ocsp.pem", false),
    ("ocsp.key", true),
];

/// Makes the next issuing CA the active one; the active one becomes
/// `previous/<id>/`. Returns the new CA's id. `dir` must hold a CA.
pub fn roll_over(dir: &Path, how: Rollover<'_>, now: i64) -> Result<String> {
    finish_rollover(dir)?;
    let current = CertificateAuthority::load(dir)?;
    let old_id = current.issuing_ca_id();
    let generation = Authorities::load(dir)?.all().count() + 1;
    let staging = dir.join(format!("{NEXT_DIR}.{}.tmp", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    match how {
        Rollover::NewIssuing { alg } => {
            let root_key_path = dir.join("root.key");
            if !root_key_path.exists() {
                return Err(PkiError::Invalid(
                    "the root key is not in the CA directory (an imported CA): import the next issuing CA with `onramp ca rollover --cert FILE --key FILE`, or roll the root with `--new-root`".into(),
                ));
            }
            let root_key = KeyPair::from_pem(&crate::files::read_key_file(&root_key_path)?)?;
            let root_der = current.root_der().to_vec();
            let root_issuer = Issuer::from_ca_cert_der(&CertificateDer::from(root_der), root_key)?;
            let org = organization_of(current.root_der());
            let (cert_pem, key_pem) =
                issuing_params(alg, &org, generation, now).and_then(|(params, key)| {
                    let cert = params.signed_by(&key, &root_issuer)?;
                    Ok((cert.pem(), key.serialize_pem()))
                })?;
            write_private_file(&staging.join("issuing.key"), key_pem.as_bytes())?;
            write_public_file(&staging.join("issuing.pem"), cert_pem.as_bytes())?;
            copy_file(&dir.join("root.pem"), &staging.join("root.pem"), false)?;
        }
        Rollover::NewRoot { alg } => {
            let organization = organization_of(current.root_der());
            let organization = organization.as_str();
            let root_key = alg.generate()?;
            let mut root = CertificateParams::default();
            root.distinguished_name = rcgen::DistinguishedName::new();
            root.distinguished_name
                .push(DnType::OrganizationName, organization);
            root.distinguished_name.push(
                DnType::CommonName,
                format!("{organization} Root CA G{generation}"),
            );
            root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
            root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            root.not_before = at(now - DAY)?;
            root.not_after = at(now + 20 * 365 * DAY)?;
            root.serial_number = Some(random_serial()?);
            let root_cert = root.self_signed(&root_key)?;
            let root_issuer = Issuer::new(root, root_key);
            let (params, key) = issuing_params(alg, organization, generation, now)?;
            let cert = params.signed_by(&key, &root_issuer)?;
            write_private_file(
                &staging.join("root.key"),
                root_issuer.key().serialize_pem().as_bytes(),
            )?;
            write_public_file(&staging.join("root.pem"), root_cert.pem().as_bytes())?;
            write_private_file(&staging.join("issuing.key"), key.serialize_pem().as_bytes())?;
            write_public_file(&staging.join("issuing.pem"), cert.pem().as_bytes())?;
        }
        Rollover::Import { cert_pem, key_pem } => {
            let chain = pem_to_der_chain(cert_pem)?;
            // Checks the pair the way a first import does.
            CertificateAuthority::import(&staging, cert_pem, key_pem)?;
            // An issuing CA that comes without its root chains to the current one.
            if chain.len() == 1 {
                copy_file(&dir.join("root.pem"), &staging.join("root.pem"), false)?;
            }
            write_public_file(&staging.join(NO_ROOT_KEY), b"")?;
        }
    }
    // The new pair must load before anything changes.
    let next = CertificateAuthority::load(&staging)?;
    let new_id = next.issuing_ca_id();
    if new_id == old_id || Authorities::load(dir)?.by_id(&new_id).is_some() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(PkiError::Invalid(format!(
            "issuing CA {new_id} is already known here"
        )));
    }
    // Keep the current CA whole under previous/ before touching the top.
    let keep = dir.join(PREVIOUS_DIR).join(&old_id);
    for (name, private) in CA_FILES {
        let from = dir.join(name);
        if from.exists() {
            copy_file(&from, &keep.join(name), private)?;
        }
    }
    let next_dir = dir.join(NEXT_DIR);
    std::fs::rename(&staging, &next_dir).map_err(io_err(&next_dir))?;
    finish_rollover(dir)?;
    Ok(new_id)
}

/// The parameters and key of a new issuing CA.
fn issuing_params(
    alg: CaKeyAlgorithm,
    organization: &str,
    generation: usize,
    now: i64,
) -> Result<(CertificateParams, KeyPair)> {
    let key = alg.generate()?;
    let mut issuing = CertificateParams::default();
    issuing.distinguished_name = rcgen::DistinguishedName::new();
    issuing
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    issuing.distinguished_name.push(
        DnType::CommonName,
        format!("{organization} Issuing CA G{generation}"),
    );
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
    Ok((issuing, key))
}

/// The organisation named in a certificate's subject, or "Onramp".
fn organization_of(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok().map(str::to_string))
        })
        .unwrap_or_else(|| "Onramp".into())
}

/// Moves a prepared `next/` into place. Each step can be repeated, so a
/// rollover interrupted at any point completes on the next load.
fn finish_rollover(dir: &Path) -> Result<()> {
    let next = dir.join(NEXT_DIR);
    if !next.is_dir() {
        return Ok(());
    }
    if next.join(NO_ROOT_KEY).exists() {
        // The old root key is kept under previous/; the imported CA brings none.
        let root_key = dir.join("root.key");
        if root_key.exists() {
            std::fs::remove_file(&root_key).map_err(io_err(&root_key))?;
        }
    }
    // The old CA's CRL and OCSP signer belong to it (kept under previous/).
    // The new certificate moves last, so while it waits in next/ the files
    // at the top are still the old CA's.
    if next.join("issuing.pem").exists() {
        for name in ["issuing.crl", "ocsp.pem", "ocsp.key"] {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    // Key first, then certificate: load() checks neither pairing, but a
    // reader sees the new certificate only once its key is in place.
    for name in ["root.key", "root.pem", "issuing.key", "issuing.pem"] {
        let from = next.join(name);
        if from.exists() {
            let to = dir.join(name);
            std::fs::rename(&from, &to).map_err(io_err(&to))?;
        }
    }
    std::fs::remove_dir_all(&next).map_err(io_err(&next))?;
    Ok(())
}

/// Moves `previous/<id>/` to `retired/<id>/`: the CA is no longer trusted.
/// The active CA cannot be retired.
pub fn retire(dir: &Path, id: &str) -> Result<()> {
    if !id.chars().all(|c| c.is_ascii_hexdigit()) || id.is_empty() {
        return Err(PkiError::Invalid(format!("`{id}` is not an issuing CA id")));
    }
    let all = Authorities::load(dir)?;
    match all.by_id(id) {
        None => Err(PkiError::Invalid(format!("no issuing CA {id}"))),
        Some((CaRole::Active, _)) => Err(PkiError::Invalid(format!(
            "issuing CA {id} is the active one; roll over first"
        ))),
        Some((CaRole::Retired, _)) => Ok(()),
        Some((CaRole::Previous, ca)) => {
            let from = ca.dir().to_path_buf();
            let to = dir.join(RETIRED_DIR).join(id);
            std::fs::create_dir_all(dir.join(RETIRED_DIR)).map_err(io_err(dir))?;
            std::fs::rename(&from, &to).map_err(io_err(&to))
        }
    }
}

/// When `ca`'s certificate expires (Unix seconds), from its issuing certificate.
pub fn not_after(ca: &CertificateAuthority) -> i64 {
    parse_cert(ca.issuing_der())
        .map(|i| i.not_after)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn device_cert(ca: &CertificateAuthority) -> Vec<u8> {
        let (cert, _key) = ca.issue_with_generated_key("thing-1", 30, NOW).unwrap();
        cert.der
    }

    #[test]
    fn a_rollover_keeps_the_old_ca_trusted_until_it_is_retired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let first =
            CertificateAuthority::create(&dir, CaKeyAlgorithm::EcdsaP256, "Acme", NOW).unwrap();
        let old_id = first.issuing_ca_id();
        let old_cert = device_cert(&first);
        let new_id = roll_over(
            &dir,
            Rollover::NewIssuing {
                alg: CaKeyAlgorithm::EcdsaP256,
            },
            NOW,
        )
        .unwrap();
        assert_ne!(new_id, old_id);
        let all = Authorities::load(&dir).unwrap();
        assert_eq!(all.active().issuing_ca_id(), new_id);
        assert_eq!(all.trusted().count(), 2);
        assert_eq!(all.trust_anchors().len(), 2);
        // Same root: one root, three certificates in the chains.
        assert_eq!(all.trusted_roots_der().len(), 1);
        assert_eq!(all.trusted_chains_der().len(), 3);
        let (role, ca) = all.issuer_of(&old_cert).unwrap();
        assert_eq!(
            (role, ca.issuing_ca_id()),
            (CaRole::Previous, old_id.clone())
        );
        let new_cert = device_cert(all.active());
        assert_eq!(
            all.trusted_issuer_of(&new_cert).unwrap().issuing_ca_id(),
            new_id
        );
        assert!(all.active().issuing_info().subject_dn.contains("G2"));
        // The old key stays private.
        crate::files::check_key_file(&dir.join(PREVIOUS_DIR).join(&old_id).join("issuing.key"))
            .unwrap();

        assert!(
            retire(&dir, &new_id).is_err(),
            "the active CA cannot retire"
        );
        retire(&dir, &old_id).unwrap();
        let all = Authorities::load(&dir).unwrap();
        assert_eq!(all.trusted().count(), 1);
        assert!(all.trusted_issuer_of(&old_cert).is_none());
        assert_eq!(all.issuer_of(&old_cert).unwrap().0, CaRole::Retired);
        assert!(retire(&dir, "zz").is_err());
    }

    #[test]
    fn a_root_roll_serves_both_roots_and_an_import_needs_no_root_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        CertificateAuthority::create(&dir, CaKeyAlgorithm::EcdsaP256, "Acme", NOW).unwrap();
        roll_over(
            &dir,
            Rollover::NewRoot {
                alg: CaKeyAlgorithm::EcdsaP256,
            },
            NOW,
        )
        .unwrap();
        let all = Authorities::load(&dir).unwrap();
        assert_eq!(all.trusted_roots_der().len(), 2);
        assert!(crate::ca::signed_by(
            all.active().issuing_der(),
            all.active().root_der()
        ));

        // An external issuing CA made elsewhere becomes the next one.
        let other = tmp.path().join("elsewhere");
        let ext =
            CertificateAuthority::create(&other, CaKeyAlgorithm::EcdsaP256, "Ext", NOW).unwrap();
        let cert_pem = format!(
            "{}{}",
            crate::certificate_pem(ext.issuing_der()),
            ext.root_pem()
        );
        let key_pem = std::fs::read_to_string(other.join("issuing.key")).unwrap();
        let id = roll_over(
            &dir,
            Rollover::Import {
                cert_pem: &cert_pem,
                key_pem: &key_pem,
            },
            NOW,
        )
        .unwrap();
        assert_eq!(id, ext.issuing_ca_id());
        assert!(!dir.join("root.key").exists());
        let all = Authorities::load(&dir).unwrap();
        assert_eq!(all.trusted().count(), 3);
        assert_eq!(all.trusted_roots_der().len(), 3);
        // Without the root key only an import or a new root can follow.
        assert!(
            roll_over(
                &dir,
                Rollover::NewIssuing {
                    alg: CaKeyAlgorithm::EcdsaP256
                },
                NOW
            )
            .is_err()
        );
        // The same CA cannot come twice.
        assert!(
            roll_over(
                &dir,
                Rollover::Import {
                    cert_pem: &cert_pem,
                    key_pem: &key_pem
                },
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn an_interrupted_rollover_completes_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        CertificateAuthority::create(&dir, CaKeyAlgorithm::EcdsaP256, "Acme", NOW).unwrap();
        let new_id = roll_over(
            &dir,
            Rollover::NewIssuing {
                alg: CaKeyAlgorithm::EcdsaP256,
            },
            NOW,
        )
        .unwrap();
        // Simulate a stop after the key moved but before the certificate did:
        // put a prepared next/ back with only the certificate in it.
        let next = dir.join(NEXT_DIR);
        std::fs::create_dir_all(&next).unwrap();
        std::fs::copy(dir.join("issuing.pem"), next.join("issuing.pem")).unwrap();
        let all = Authorities::load(&dir).unwrap();
        assert!(!next.exists());
        assert_eq!(all.active().issuing_ca_id(), new_id);
    }
}
