//! EST enrolment after a lost response: the same request (same token, same
//! key) gets the same certificate again; anything else is refused as before.
//! Driven with openssl and curl, on SQLite and PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;

fn serial_of(s: &Server, name: &str, body: &[u8]) -> String {
    let pem = pkcs7_to_pem(s.dir.path(), name, body);
    x509_field(&pem, "-serial")
}

fn replays_audited(s: &Server) -> usize {
    s.cli_json(&[
        "audit",
        "--action",
        "est.simpleenroll.replay",
        "--limit",
        "1000",
    ])["items"]
        .as_array()
        .unwrap()
        .len()
}

fn same_request_gets_the_same_certificate(backend: Backend) {
    let s = Server::start(backend);
    let token = s.token("SN-R1");
    let d = device_csr(s.dir.path(), "r1", "/CN=SN-R1");
    let first = s.enrol(&d, "SN-R1", &token);
    assert_eq!(first.status, 200, "{}", first.text());
    // The response was lost; the device sends the identical request again.
    let again = s.enrol(&d, "SN-R1", &token);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        serial_of(&s, "first", &first.body),
        serial_of(&s, "again", &again.body)
    );
    assert_eq!(again.body, first.body, "the very same certificate");
    assert_eq!(s.certs_of("SN-R1").len(), 1, "nothing new was issued");
    assert_eq!(replays_audited(&s), 1);
    // The same token with another key is a reuse, refused as ever.
    let other = device_csr(s.dir.path(), "r1-other", "/CN=SN-R1");
    let reuse = s.enrol(&other, "SN-R1", &token);
    assert_eq!(reuse.status, 401, "{}", reuse.text());
    assert!(
        reuse.text().contains("already been used"),
        "{}",
        reuse.text()
    );
    assert!(reuse.header("www-authenticate").is_some());
    assert_eq!(s.certs_of("SN-R1").len(), 1);
    assert_eq!(replays_audited(&s), 1, "a refusal is no replay");
    // Another device's token does not open this device's certificate.
    let token2 = s.token("SN-R2");
    let wrong_user = s.enrol(&d, "SN-R1", &token2);
    assert_eq!(wrong_user.status, 401, "{}", wrong_user.text());
}

#[test]
fn the_same_request_gets_the_same_certificate_on_sqlite() {
    same_request_gets_the_same_certificate(Backend::Sqlite);
}

#[test]
fn the_same_request_gets_the_same_certificate_on_postgres() {
    same_request_gets_the_same_certificate(Backend::Postgres);
}

/// Once the certificate was revoked, or the device suspended, a retry is
/// refused even with the right key.
#[test]
fn a_retry_after_revocation_or_suspension_is_refused() {
    let s = Server::start(Backend::Sqlite);
    for (serial, change) in [
        ("SN-V1", vec!["cert", "revoke"]),
        ("SN-V2", vec!["device", "suspend", "SN-V2"]),
    ] {
        let token = s.token(serial);
        let d = device_csr(s.dir.path(), serial, &format!("/CN={serial}"));
        let first = s.enrol(&d, serial, &token);
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(s.enrol(&d, serial, &token).status, 200, "the control");
        let mut args = change.clone();
        let cert_serial;
        if change[0] == "cert" {
            cert_serial = s.certs_of(serial)[0]["serial"]
                .as_str()
                .unwrap()
                .to_string();
            args.push(&cert_serial);
        }
        let out = s.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = s.enrol(&d, serial, &token);
        assert_eq!(after.status, 401, "{serial}: {}", after.text());
        assert!(
            after.text().contains("already been used"),
            "{}",
            after.text()
        );
    }
}

/// After the retry window, the same request is refused.
#[test]
fn a_retry_after_the_window_is_refused() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_ENROLMENT__RETRY_WINDOW_SECS", "1")],
        None,
    );
    let token = s.token("SN-W1");
    let d = device_csr(s.dir.path(), "w1", "/CN=SN-W1");
    assert_eq!(s.enrol(&d, "SN-W1", &token).status, 200);
    // Past the one-second window (whole seconds: more than one must pass).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let late = s.enrol(&d, "SN-W1", &token);
    assert_eq!(late.status, 401, "{}", late.text());
    assert!(late.text().contains("window"), "{}", late.text());
}

/// One EST simpleenroll with curl, outside `Server` so that the test keeps
/// the server to kill it: (status, body); status 0 when the connection broke.
fn enrol_raw(
    url: &str,
    root_pem: &std::path::Path,
    d: &Device,
    serial: &str,
    token: &str,
) -> (u16, Vec<u8>) {
    let body = d.csr_b64.with_extension("response");
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(root_pem)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}", "-u", &format!("{serial}:{token}")])
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{}", d.csr_b64.display()))
        .arg(url)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, std::fs::read(&body).unwrap_or_default())
}

/// A certificate serial as openssl prints it or as the registry lists it.
fn normal_serial(s: &str) -> String {
    s.trim()
        .trim_start_matches("serial=")
        .replace(':', "")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_string()
}

/// Many enrolments in flight when the server is killed (SIGKILL): after the
/// restart every device's retry of its identical request gets 200 and the one
/// certificate the registry holds for it, the same one it got before if the
/// first response arrived. No token is left spent without a certificate its
/// device can obtain.
fn enrolments_cut_by_a_kill_are_completed_by_their_retry(backend: Backend) {
    const N: usize = 24;
    let mut s = Server::start(backend);
    let devices: Vec<(String, String, Device)> = (0..N)
        .map(|i| {
            let serial = format!("SN-K{i}");
            let token = s.token(&serial);
            let d = device_csr(s.dir.path(), &serial, &format!("/CN={serial}"));
            (serial, token, d)
        })
        .collect();
    let url = s.url("/.well-known/est/simpleenroll");
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = devices
        .iter()
        .map(|(serial, token, d)| {
            let (url, root, done) = (url.clone(), s.root_pem.clone(), done.clone());
            let (serial, token) = (serial.clone(), token.clone());
            let d = Device {
                key: d.key.clone(),
                csr_der: d.csr_der.clone(),
                csr_b64: d.csr_b64.clone(),
            };
            std::thread::spawn(move || {
                let r = enrol_raw(&url, &root, &d, &serial, &token);
                done.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    // Kill as soon as the first answers arrive, with the rest in flight.
    while done.load(Ordering::SeqCst) < 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    s.kill();
    let firsts: Vec<(u16, Vec<u8>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = firsts.iter().filter(|r| r.0 == 200).count();
    let cut = firsts.iter().filter(|r| r.0 == 0).count();
    eprintln!("{backend:?}: {answered} answered before the kill, {cut} cut off");
    assert!(
        cut > 0,
        "the kill cut no request off, so nothing was tested"
    );
    assert_eq!(
        answered + cut,
        N,
        "{:?}",
        firsts.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    s.start_again();
    for (i, (serial, token, d)) in devices.iter().enumerate() {
        let retry = s.enrol(d, serial, token);
        assert_eq!(retry.status, 200, "{serial}: {}", retry.text());
        let got = normal_serial(&serial_of(&s, &format!("{serial}-retry"), &retry.body));
        if firsts[i].0 == 200 {
            assert_eq!(
                normal_serial(&serial_of(&s, &format!("{serial}-first"), &firsts[i].1)),
                got,
                "{serial}: the retry gets the certificate the first answer carried"
            );
        }
        let certs = s.certs_of(serial);
        assert_eq!(certs.len(), 1, "{serial}: {certs:?}");
        assert_eq!(certs[0]["status"], "active");
        assert_eq!(
            normal_serial(certs[0]["serial"].as_str().unwrap()),
            got,
            "{serial}"
        );
        assert_eq!(s.devices_json(serial)["status"], "active");
    }
    // Every request answered before the kill was replayed; any replay beyond
    // those is a request whose enrolment committed but whose answer was lost.
    let replays = replays_audited(&s);
    eprintln!("{backend:?}: {replays} retries were replays");
    assert!(replays >= answered, "{replays} < {answered}");
}

#[test]
fn enrolments_cut_by_a_kill_are_completed_by_their_retry_on_sqlite() {
    enrolments_cut_by_a_kill_are_completed_by_their_retry(Backend::Sqlite);
}

#[test]
fn enrolments_cut_by_a_kill_are_completed_by_their_retry_on_postgres() {
    enrolments_cut_by_a_kill_are_completed_by_their_retry(Backend::Postgres);
}
