//! EST enrolment with the real `openssl` and `curl` against the real server.

mod support;

use support::*;

fn enrol_happy_path(backend: Backend) {
    let s = Server::start(backend);
    let token = s.token("SN-0001");
    let d = device_csr(s.dir.path(), "dev", "/CN=SN-0001");
    let r = s.enrol(&d, "SN-0001", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    assert_eq!(
        r.header("content-transfer-encoding").as_deref(),
        Some("base64")
    );
    let cert = pkcs7_to_pem(s.dir.path(), "dev-cert", &r.body);
    assert!(x509_field(&cert, "-subject").contains("CN = SN-0001"));

    // The chain from /cacerts verifies the device certificate for client auth.
    let ca = s.curl(&[&s.url("/.well-known/est/cacerts")]);
    assert_eq!(ca.status, 200);
    assert_eq!(
        ca.header("content-type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    let chain = pkcs7_to_pem(s.dir.path(), "cacerts", &ca.body);
    let out = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        s.root_pem.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));

    // The device is active in the registry, with one active certificate.
    assert_eq!(s.devices_json("SN-0001")["status"], "active");
    let certs = s.certs_of("SN-0001");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["status"], "active");
    let serial = x509_field(&cert, "-serial")
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    assert_eq!(certs[0]["serial"].as_str().unwrap(), serial);

    // ... and the enrolment is in the audit log with who, what and from where.
    let audit = s.cli_json(&["audit", "--action", "est.simpleenroll"])["items"].clone();
    let e = &audit.as_array().unwrap()[0];
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["target"], "device:SN-0001");
    assert_eq!(e["source"], "127.0.0.1");
    assert!(e["actor"].as_str().unwrap().starts_with("token:tok_"));
}

#[test]
fn a_device_enrols_with_openssl_and_curl_on_sqlite() {
    enrol_happy_path(Backend::Sqlite);
}

#[test]
fn a_device_enrols_with_openssl_and_curl_on_postgres() {
    enrol_happy_path(Backend::Postgres);
}

fn enrolled(s: &Server, serial: &str) -> (Device, std::path::PathBuf) {
    let token = s.token(serial);
    let d = device_csr(s.dir.path(), serial, &format!("/CN={serial}"));
    let r = s.enrol(&d, serial, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let cert = pkcs7_to_pem(s.dir.path(), &format!("{serial}-cert"), &r.body);
    (d, cert)
}

fn re_enrolment(backend: Backend) {
    let s = Server::start(backend);
    let (d, cert) = enrolled(&s, "SN-2");
    let renew = csr_for_key(s.dir.path(), "renew", &d.key, "/CN=SN-2");
    let r = s.reenrol(&cert, &d.key, &renew.csr_b64);
    assert_eq!(r.status, 200, "{}", r.text());
    let new_cert = pkcs7_to_pem(s.dir.path(), "renewed", &r.body);
    let certs = s.certs_of("SN-2");
    assert_eq!(certs.len(), 2);
    let old_serial = x509_field(&cert, "-serial")
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let old = certs
        .iter()
        .find(|c| c["serial"] == old_serial.as_str())
        .unwrap();
    let new = certs
        .iter()
        .find(|c| c["serial"] != old_serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "superseded");
    assert_eq!(new["status"], "active");
    assert_eq!(old["superseded_by"], new["serial"]);

    // The superseded certificate can no longer renew.
    let again = s.reenrol(&cert, &d.key, &renew.csr_b64);
    assert_eq!(again.status, 403, "{}", again.text());
    assert!(again.text().contains("superseded"));
    assert_eq!(s.certs_of("SN-2").len(), 2);
    // The new one can.
    let r = s.reenrol(&new_cert, &d.key, &renew.csr_b64);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn re_enrolment_supersedes_the_presented_cert_on_sqlite() {
    re_enrolment(Backend::Sqlite);
}

#[test]
fn re_enrolment_supersedes_the_presented_cert_on_postgres() {
    re_enrolment(Backend::Postgres);
}

fn token_state(s: &Server, serial: &str) -> (bool, bool) {
    let tokens = s.cli_json(&["token", "list"])["items"].clone();
    let t = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["serial_number"] == serial)
        .unwrap()
        .clone();
    (t["used_at"].is_null(), t["revoked_at"].is_null())
}

/// Nothing in the registry moved: the device is still pending, the token
/// unused, and no certificate exists.
fn assert_untouched(s: &Server, serial: &str) {
    assert_eq!(s.devices_json(serial)["status"], "pending");
    assert_eq!(token_state(s, serial), (true, true));
    assert!(s.certs_of(serial).is_empty());
}

fn replayed_token(backend: Backend) {
    let s = Server::start(backend);
    let token = s.token("SN-3");
    let d = device_csr(s.dir.path(), "a", "/CN=SN-3");
    assert_eq!(s.enrol(&d, "SN-3", &token).status, 200);
    let d2 = device_csr(s.dir.path(), "b", "/CN=SN-3");
    let r = s.enrol(&d2, "SN-3", &token);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("already been used"), "{}", r.text());
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"onramp-est\"")
    );
    assert_eq!(s.certs_of("SN-3").len(), 1, "no second certificate");
    let denied = s.cli_json(&["audit", "--action", "est.simpleenroll"])["items"].clone();
    assert_eq!(denied.as_array().unwrap()[0]["outcome"], "denied");
}

#[test]
fn a_replayed_token_is_refused_on_sqlite() {
    replayed_token(Backend::Sqlite);
}

#[test]
fn a_replayed_token_is_refused_on_postgres() {
    replayed_token(Backend::Postgres);
}

#[test]
fn a_csr_naming_another_serial_is_refused() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-4");
    let d = device_csr(s.dir.path(), "x", "/CN=SN-OTHER");
    let r = s.enrol(&d, "SN-4", &token);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("SN-OTHER"));
    let d = device_csr(s.dir.path(), "y", "/CN=SN-4/serialNumber=SN-OTHER");
    assert_eq!(s.enrol(&d, "SN-4", &token).status, 403);
    assert_untouched(&s, "SN-4");
}

#[test]
fn a_tampered_csr_is_refused() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-5");
    let d = device_csr(s.dir.path(), "t", "/CN=SN-5");
    let mut der = std::fs::read(&d.csr_der).unwrap();
    // Change the subject inside the signed part: the signature no longer matches.
    let pos = der.windows(4).position(|w| w == b"SN-5").unwrap();
    der[pos + 3] = b'6';
    let tampered = s.dir.path().join("tampered.der");
    std::fs::write(&tampered, der).unwrap();
    let t = with_csr_der(s.dir.path(), "tampered", d.key.clone(), tampered);
    let r = s.enrol(&t, "SN-5", &token);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());
    assert_untouched(&s, "SN-5");
}

#[test]
fn a_serial_not_on_the_allowlist_is_refused_when_the_allowlist_is_on() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_ENROLMENT__REQUIRE_ALLOWLIST", "true")],
        None,
    );
    let token = s.token("SN-7");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-7");
    let r = s.enrol(&d, "SN-7", &token);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("allow-list"));
    assert_untouched(&s, "SN-7");
    let out = s.cli(&["allowlist", "add", "SN-7"]);
    assert!(out.status.success());
    assert_eq!(s.enrol(&d, "SN-7", &token).status, 200);
}

#[test]
fn a_suspended_device_cannot_re_enrol() {
    let s = Server::start(Backend::Sqlite);
    let (d, cert) = enrolled(&s, "SN-8");
    assert!(s.cli(&["device", "suspend", "SN-8"]).status.success());
    let renew = csr_for_key(s.dir.path(), "renew", &d.key, "/CN=SN-8");
    let r = s.reenrol(&cert, &d.key, &renew.csr_b64);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("suspended"));
    let certs = s.certs_of("SN-8");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["status"], "active");
    assert_eq!(s.devices_json("SN-8")["status"], "suspended");
}

#[test]
fn a_revoked_certificate_cannot_re_enrol() {
    let s = Server::start(Backend::Sqlite);
    let (d, cert) = enrolled(&s, "SN-9");
    let serial = s.certs_of("SN-9")[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        &format!("/api/v1/certificates/{serial}/revoke"),
        &key,
        Some(r#"{"reason":"keyCompromise"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let renew = csr_for_key(s.dir.path(), "renew", &d.key, "/CN=SN-9");
    let r = s.reenrol(&cert, &d.key, &renew.csr_b64);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("revoked"));
    assert_eq!(s.certs_of("SN-9").len(), 1);
}

#[test]
fn re_enrolment_without_a_client_certificate_is_unauthorized() {
    let s = Server::start(Backend::Sqlite);
    let d = device_csr(s.dir.path(), "n", "/CN=SN-10");
    let url = s.url("/.well-known/est/simplereenroll");
    let data = format!("@{}", d.csr_b64.display());
    let r = s.curl(&[
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 401);
}

#[test]
fn malformed_base64_is_refused() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-11");
    let user = "SN-11:".to_string() + &token;
    let url = s.url("/.well-known/est/simpleenroll");
    let r = s.curl(&[
        "-u",
        &user,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        "!!!this is not base64***",
        &url,
    ]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("base64"));
    // Valid base64 that is not a CSR.
    let r = s.curl(&[
        "-u",
        &user,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        "aGVsbG8gd29ybGQ=",
        &url,
    ]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_untouched(&s, "SN-11");
}

#[test]
fn an_oversize_body_is_refused() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-12");
    let user = "SN-12:".to_string() + &token;
    let big = s.path("big.b64");
    std::fs::write(&big, "A".repeat(200 * 1024)).unwrap();
    let data = format!("@{}", big.display());
    let r = s.curl(&[
        "-u",
        &user,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &s.url("/.well-known/est/simpleenroll"),
    ]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_untouched(&s, "SN-12");
}

#[test]
fn enrolment_without_credentials_gets_a_basic_challenge() {
    let s = Server::start(Backend::Sqlite);
    s.token("SN-13");
    let d = device_csr(s.dir.path(), "c", "/CN=SN-13");
    let data = format!("@{}", d.csr_b64.display());
    let r = s.curl(&[
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &s.url("/.well-known/est/simpleenroll"),
    ]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"onramp-est\"")
    );
    let r = s.enrol(&d, "SN-13", "ont_not-a-real-token");
    assert_eq!(r.status, 401);
    assert_untouched(&s, "SN-13");
}

#[test]
fn a_credential_in_a_retry_loop_is_throttled_with_retry_after() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-14");
    let d = device_csr(s.dir.path(), "r", "/CN=SN-14");
    // Wrong user name: each try is refused; after the burst the server asks it to wait.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(s.enrol(&d, "SN-WRONG", &token).status);
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    let r = s.enrol(&d, "SN-14", &token);
    assert_eq!(r.status, 503, "{}", r.text());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait));
    assert_untouched(&s, "SN-14");
    // Another device is not affected.
    let other = s.token("SN-15");
    let d2 = device_csr(s.dir.path(), "o", "/CN=SN-15");
    assert_eq!(s.enrol(&d2, "SN-15", &other).status, 200);
}

#[test]
fn a_source_address_in_a_loop_is_throttled() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            ("ONRAMP_ENROLMENT__RATE_PER_SOURCE__PER_SECOND", "1"),
            ("ONRAMP_ENROLMENT__RATE_PER_SOURCE__BURST", "3"),
        ],
        None,
    );
    let d = device_csr(s.dir.path(), "c", "/CN=SN-16");
    let statuses: Vec<u16> = (0..6)
        .map(|i| s.enrol(&d, "SN-16", &format!("ont_bogus{i}")).status)
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[test]
fn csrattrs_and_cacerts_use_the_rfc_encodings() {
    let s = Server::start(Backend::Sqlite);
    let r = s.curl(&[&s.url("/.well-known/est/csrattrs")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/csrattrs")
    );
    let der = s.path("attrs.der");
    let b64 = s.path("attrs.b64");
    std::fs::write(&b64, &r.body).unwrap();
    openssl(&[
        "base64",
        "-d",
        "-in",
        b64.to_str().unwrap(),
        "-out",
        der.to_str().unwrap(),
    ]);
    let parsed = openssl(&["asn1parse", "-inform", "DER", "-in", der.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&parsed.stdout);
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    // Every body line is at most 76 characters (RFC 2045).
    let ca = s.curl(&[&s.url("/.well-known/est/cacerts")]);
    assert!(ca.text().lines().all(|l| l.len() <= 76));
}

#[test]
fn a_bootstrap_certificate_from_a_configured_ca_enrols() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=Factory Bootstrap CA",
        "-days",
        "30",
        "-keyout",
        &p("boot-ca.key"),
        "-out",
        &p("boot-ca.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=SN-B1",
        "-keyout",
        &p("boot.key"),
        "-out",
        &p("boot.csr"),
    ]);
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("boot.csr"),
        "-CA",
        &p("boot-ca.pem"),
        "-CAkey",
        &p("boot-ca.key"),
        "-CAcreateserial",
        "-days",
        "10",
        "-out",
        &p("boot.pem"),
        "-extfile",
        ext.to_str().unwrap(),
    ]);
    let config = format!(
        "[enrolment]\nbootstrap_cas = [{{ cert = \"{}\", tenant = \"default\" }}]\n",
        p("boot-ca.pem")
    );
    let s = Server::start_with(Backend::Sqlite, &[], Some(&config));
    let d = device_csr(s.dir.path(), "b", "/CN=SN-B1");
    let data = format!("@{}", d.csr_b64.display());
    let url = s.url("/.well-known/est/simpleenroll");
    let r = s.curl(&[
        "--cert",
        &p("boot.pem"),
        "--key",
        &p("boot.key"),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.devices_json("SN-B1")["status"], "active");
    // The bootstrap identity only speaks for its own serial.
    let other = device_csr(s.dir.path(), "o", "/CN=SN-B2");
    let data = format!("@{}", other.csr_b64.display());
    let r = s.curl(&[
        "--cert",
        &p("boot.pem"),
        "--key",
        &p("boot.key"),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn a_certificate_from_an_unknown_ca_cannot_even_connect() {
    let s = Server::start(Backend::Sqlite);
    let dir = s.dir.path();
    let p = |n: &str| dir.join(n).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=SN-X",
        "-days",
        "2",
        "-keyout",
        &p("rogue.key"),
        "-out",
        &p("rogue.pem"),
    ]);
    let d = device_csr(dir, "r", "/CN=SN-X");
    let data = format!("@{}", d.csr_b64.display());
    let r = s.curl(&[
        "--cert",
        &p("rogue.pem"),
        "--key",
        &p("rogue.key"),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
        &s.url("/.well-known/est/simplereenroll"),
    ]);
    assert_eq!(r.status, 0, "the TLS handshake itself fails: {}", r.stderr);
}

#[test]
fn tokens_never_reach_the_log() {
    let s = Server::start(Backend::Sqlite);
    let token = s.token("SN-17");
    let d = device_csr(s.dir.path(), "l", "/CN=SN-17");
    assert_eq!(s.enrol(&d, "SN-17", &token).status, 200);
    // Another key: the same request again would be answered as a retry.
    let other = device_csr(s.dir.path(), "l2", "/CN=SN-17");
    assert_eq!(s.enrol(&other, "SN-17", &token).status, 401);
    let log = s.server_log();
    assert!(log.contains("enrolment refused"), "debug log is on: {log}");
    assert!(!log.contains(&token));
    assert!(!log.contains(&token["ont_".len()..]));
    let key = std::fs::read_to_string(s.data.join("ca/issuing.key")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!log.contains(&key_body));
}
