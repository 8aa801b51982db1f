//! The CA issues certificates that verify against its chain, and only for CSRs that pass.

use onramp_domain::KeyKind;
use onramp_pki::*;
use std::process::Command;

const NOW: i64 = 1_790_000_000;

fn csr_der(cn: &str) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).unwrap();
    (csr.der().to_vec(), key)
}

fn new_ca(alg: CaKeyAlgorithm) -> (tempfile::TempDir, CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(&dir.path().join("ca"), alg, "Onramp Test", NOW).unwrap();
    (dir, ca)
}

#[test]
fn issued_device_certs_verify_against_the_chain() {
    for alg in [
        CaKeyAlgorithm::EcdsaP256,
        CaKeyAlgorithm::EcdsaP384,
        CaKeyAlgorithm::Rsa3072,
    ] {
        let (_dir, ca) = new_ca(alg);
        let (der, _) = csr_der("SN-1");
        let csr = parse_csr(&der).unwrap();
        assert_eq!(csr.subject_cn.as_deref(), Some("SN-1"));
        assert_eq!(csr.key, KeyKind::EcP256);
        let cert = ca
            .issue_device_cert(&csr, "pump-1", "SN-1", 365, NOW)
            .unwrap();
        assert!(ca.issued(&cert.der), "{alg:?}");
        assert!(signed_by(ca.issuing_der(), ca.root_der()), "{alg:?}");
        let info = parse_cert(&cert.der).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("pump-1"));
        assert_eq!(info.subject_serial.as_deref(), Some("SN-1"));
        assert_eq!(info.serial, cert.serial);
        assert_eq!(cert.serial.len(), 32, "128-bit serial");
        assert_eq!(info.not_after - info.not_before, 365 * 86_400 + 60);
    }
}

#[test]
fn openssl_verifies_an_issued_cert_with_client_auth_purpose() {
    let (dir, ca) = new_ca(CaKeyAlgorithm::EcdsaP256);
    let (der, _) = csr_der("SN-2");
    let cert = ca
        .issue_device_cert(&parse_csr(&der).unwrap(), "SN-2", "SN-2", 30, NOW)
        .unwrap();
    let root = dir.path().join("root.pem");
    let untrusted = dir.path().join("issuing.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    std::fs::write(&untrusted, ca.chain_pem()).unwrap();
    std::fs::write(&leaf, &cert.pem).unwrap();
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

#[test]
fn a_csr_with_a_tampered_signature_is_refused() {
    let (mut der, _) = csr_der("SN-3");
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert!(matches!(
        parse_csr(&der),
        Err(CsrError::BadSignature | CsrError::Malformed)
    ));
}

#[test]
fn a_csr_with_a_tampered_subject_is_refused() {
    let (der, _) = csr_der("SN-4");
    // Change one byte of the CN value inside the signed part.
    let pos = der.windows(4).position(|w| w == b"SN-4").unwrap();
    let mut tampered = der.clone();
    tampered[pos + 3] = b'5';
    assert_eq!(parse_csr(&tampered).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn garbage_and_trailing_bytes_are_refused() {
    assert_eq!(parse_csr(b"hello").unwrap_err(), CsrError::Malformed);
    let (mut der, _) = csr_der("SN-6");
    der.push(0);
    assert_eq!(parse_csr(&der).unwrap_err(), CsrError::TrailingBytes);
}

#[test]
fn a_1024_bit_rsa_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("weak.der");
    let st = Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=SN-7",
        ])
        .arg("-keyout")
        .arg(dir.path().join("weak.key"))
        .args(["-outform", "DER", "-out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let der = std::fs::read(&out).unwrap();
    assert_eq!(
        parse_csr(&der).unwrap_err(),
        CsrError::Key(onramp_domain::KeyRefusal::RsaTooShort(1024))
    );
}

#[test]
fn the_ca_loads_back_and_refuses_a_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, ca) = new_ca(CaKeyAlgorithm::EcdsaP256);
    let cadir = dir.path().join("ca");
    let again = CertificateAuthority::load(&cadir).unwrap();
    assert_eq!(again.issuing_der(), ca.issuing_der());
    assert!(again.self_check().is_ok());
    assert!(CertificateAuthority::create(&cadir, CaKeyAlgorithm::EcdsaP256, "x", NOW).is_err());
    std::fs::set_permissions(
        cadir.join("issuing.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(matches!(
        CertificateAuthority::load(&cadir),
        Err(PkiError::InsecureKeyFile { .. })
    ));
}

#[test]
fn an_existing_ca_can_be_imported() {
    let (src, ca) = new_ca(CaKeyAlgorithm::EcdsaP256);
    let key = std::fs::read_to_string(src.path().join("ca/issuing.key")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let imported =
        CertificateAuthority::import(&dest.path().join("ca"), &ca.chain_pem(), &key).unwrap();
    assert_eq!(imported.issuing_der(), ca.issuing_der());
    assert_eq!(imported.root_der(), ca.root_der());
    let (der, _) = csr_der("SN-8");
    let cert = imported
        .issue_device_cert(&parse_csr(&der).unwrap(), "SN-8", "SN-8", 1, NOW)
        .unwrap();
    assert!(ca.issued(&cert.der));
    // A key that does not match the certificate is refused.
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let dest2 = tempfile::tempdir().unwrap();
    assert!(
        CertificateAuthority::import(&dest2.path().join("ca"), &ca.chain_pem(), &other).is_err()
    );
}

#[test]
fn pkcs7_certs_only_is_read_by_openssl() {
    let (dir, ca) = new_ca(CaKeyAlgorithm::EcdsaP256);
    let chain: Vec<&[u8]> = ca.chain_der().iter().map(Vec::as_slice).collect();
    let p7 = certs_only_pkcs7(&chain).unwrap();
    let path = dir.path().join("p7.der");
    std::fs::write(&path, p7).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Onramp Test Root CA"), "{text}");
    assert!(text.contains("Onramp Test Issuing CA"), "{text}");
}

#[test]
fn server_identity_is_reused_until_hosts_change() {
    let (dir, ca) = new_ca(CaKeyAlgorithm::EcdsaP256);
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let a = ca.ensure_server_identity(dir.path(), &hosts, NOW).unwrap();
    let pem1 = std::fs::read_to_string(&a.chain_pem_path).unwrap();
    ca.ensure_server_identity(dir.path(), &hosts, NOW).unwrap();
    assert_eq!(pem1, std::fs::read_to_string(&a.chain_pem_path).unwrap());
    ca.ensure_server_identity(dir.path(), &["example.test".to_string()], NOW)
        .unwrap();
    assert_ne!(pem1, std::fs::read_to_string(&a.chain_pem_path).unwrap());
    check_key_file(&a.key_path).unwrap();
}
