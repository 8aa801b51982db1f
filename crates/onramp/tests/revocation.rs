//! Revocation and suspension cut live MQTT connections however late the
//! change commits, on every node; a claim certificate cannot take a device's
//! client id. Each test performs the attack or the fault and watches a real
//! MQTT connection.

mod support;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// How soon after its commit a revocation must have cut the connection.
const CUT_WITHIN: Duration = Duration::from_millis(1500);

/// A minimal MQTT 3.1.1 client over mutual TLS, enough to see exactly when
/// the server answers and when it closes.
struct Probe {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

/// What CONNACK said.
#[derive(Debug, PartialEq, Eq)]
enum Connack {
    Accepted { session_present: bool },
    Refused(u8),
}

fn tls_config(root: &std::path::Path, id: &Identity) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&id.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&id.key).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

impl Probe {
    fn connect(
        port: u16,
        root: &std::path::Path,
        id: &Identity,
        client_id: &str,
        clean: bool,
    ) -> (Connack, Option<Probe>) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ClientConnection::new(
            tls_config(root, id),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut p = Probe {
            tls: rustls::StreamOwned::new(conn, tcp),
        };
        let mut body = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            if clean { 0x02 } else { 0x00 },
            0,
            60,
        ];
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        let mut packet = vec![0x10];
        remaining_length(body.len(), &mut packet);
        packet.extend_from_slice(&body);
        p.tls.write_all(&packet).unwrap();
        let mut ack = [0u8; 4];
        p.tls.read_exact(&mut ack).expect("a CONNACK");
        assert_eq!(&ack[..2], &[0x20, 0x02], "not a CONNACK: {ack:?}");
        match ack[3] {
            0 => (
                Connack::Accepted {
                    session_present: ack[2] & 1 == 1,
                },
                Some(p),
            ),
            rc => (Connack::Refused(rc), None),
        }
    }

    /// PINGREQ; true when PINGRESP came back.
    fn ping(&mut self) -> bool {
        if self.tls.write_all(&[0xC0, 0x00]).is_err() {
            return false;
        }
        let mut resp = [0u8; 2];
        matches!(self.tls.read_exact(&mut resp), Ok(()) if resp == [0xD0, 0x00])
    }

    /// Waits for the server to close the connection; when it did.
    fn closed_within(&mut self, limit: Duration) -> Option<Instant> {
        let start = Instant::now();
        let _ = self
            .tls
            .sock
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 64];
        while start.elapsed() < limit {
            match self.tls.read(&mut buf) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(Instant::now()),
            }
        }
        None
    }
}

fn probe(s: &Server, id: &Identity, client_id: &str) -> Probe {
    match Probe::connect(s.mqtt_port, &s.root_pem, id, client_id, true) {
        (Connack::Accepted { .. }, Some(p)) => p,
        (other, _) => panic!("{client_id} was not accepted: {other:?}"),
    }
}

fn serial_of(s: &Server, thing: &str) -> String {
    s.certs_of(thing)[0]["serial"].as_str().unwrap().to_string()
}

/// Holds SQLite's write lock on the server's database from another process
/// for `secs`; returns once the lock is held.
fn hold_sqlite_write_lock(s: &Server, secs: f64) -> Child {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('COMMIT')\n",
        ])
        .arg(s.data.join("onramp.db"))
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the lock holder");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked", "the lock holder did not start");
    child
}

/// Holds a row lock on one certificate in PostgreSQL for `secs`, from psql.
fn hold_postgres_row_lock(url: &str, serial: &str, secs: u32) -> Child {
    let child = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!(
            "BEGIN; SELECT serial FROM certificates WHERE serial = '{serial}' FOR UPDATE; \
             SELECT pg_sleep({secs}); COMMIT;"
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("psql runs the lock holder");
    // psql needs a moment to take the lock; the revocation below checks that
    // it really waited.
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Revokes through the API on a thread; the instant the answer arrived.
fn revoke_in_background(
    s: &Server,
    key: String,
    serial: &str,
) -> std::thread::JoinHandle<(u16, Instant)> {
    let url = s.url(&format!("/api/v1/certificates/{serial}/revoke"));
    let root = s.root_pem.clone();
    std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&root)
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "-X",
                "POST",
                "-d",
                "{}",
            ])
            .arg(url)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (code, Instant::now())
    })
}

#[test]
fn a_revocation_committed_late_on_sqlite_still_cuts_the_live_connection() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let serial = serial_of(&s, "D1");
    let key = s.api_key("operator");
    let mut conn = probe(&s, &d1, "D1");
    assert!(conn.ping());

    let started = Instant::now();
    let mut lock = hold_sqlite_write_lock(&s, 5.0);
    let revoke = revoke_in_background(&s, key, &serial);
    // While the commit waits for the lock the session is still served.
    std::thread::sleep(Duration::from_secs(3));
    assert!(conn.ping(), "cut before the revocation committed");
    let (code, committed) = revoke.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        committed.duration_since(started) >= Duration::from_secs(4),
        "the revocation did not wait for the lock"
    );
    let _ = lock.wait();
    let cut = conn
        .closed_within(Duration::from_secs(10))
        .expect("the revoked connection was never cut");
    let after = cut.saturating_duration_since(committed);
    assert!(after <= CUT_WITHIN, "cut {after:?} after the commit");
    // And the certificate cannot come back.
    let (again, _) = Probe::connect(s.mqtt_port, &s.root_pem, &d1, "D1", true);
    assert_eq!(again, Connack::Refused(5));
}

#[test]
fn a_suspension_committed_late_on_sqlite_still_cuts_the_live_connection() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let d2 = s.device("D2");
    let mut conn = probe(&s, &d1, "D1");
    let mut other = probe(&s, &d2, "D2");
    let mut lock = hold_sqlite_write_lock(&s, 4.0);
    let cli = std::thread::spawn({
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir")
            .arg(&s.data)
            .args(["device", "suspend", "D1"]);
        move || cmd.output().unwrap()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(conn.ping(), "cut before the suspension committed");
    let out = cli.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = lock.wait();
    assert!(
        conn.closed_within(CUT_WITHIN).is_some(),
        "the suspended device kept its connection"
    );
    assert!(other.ping(), "another device was cut too");
}

#[test]
fn a_revocation_committed_late_on_one_postgres_node_cuts_the_connection_on_another() {
    let a = Server::start(Backend::Postgres);
    let b = a.another_node();
    let d1 = a.device("D1");
    let serial = serial_of(&a, "D1");
    let key = a.api_key("operator");
    let mut conn = probe(&b, &d1, "D1");
    assert!(conn.ping());

    let started = Instant::now();
    let mut lock = hold_postgres_row_lock(a.database_url.as_deref().unwrap(), &serial, 5);
    let revoke = revoke_in_background(&a, key, &serial);
    std::thread::sleep(Duration::from_secs(3));
    assert!(conn.ping(), "cut before the revocation committed");
    let (code, committed) = revoke.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        committed.duration_since(started) >= Duration::from_secs(4),
        "the revocation did not wait for the row lock"
    );
    let cut = conn
        .closed_within(Duration::from_secs(10))
        .expect("node B never cut the revoked connection");
    let after = cut.saturating_duration_since(committed);
    assert!(after <= CUT_WITHIN, "cut {after:?} after the commit");
    let _ = lock.wait();
}

#[test]
fn a_node_restarted_while_a_revocation_is_in_flight_still_cuts_when_it_commits() {
    let a = Server::start(Backend::Postgres);
    let mut b = a.another_node();
    let d1 = a.device("D1");
    let serial = serial_of(&a, "D1");
    let key = a.api_key("operator");

    let mut lock = hold_postgres_row_lock(a.database_url.as_deref().unwrap(), &serial, 8);
    let revoke = revoke_in_background(&a, key, &serial);
    // Node B restarts while the revoking transaction is open, and the device
    // (still active, as nothing has committed) connects to the new process.
    b.restart();
    let mut conn = probe(&b, &d1, "D1");
    assert!(conn.ping());
    assert!(conn.ping(), "cut before the revocation committed");
    let (code, committed) = revoke.join().unwrap();
    assert_eq!(code, 200);
    let cut = conn
        .closed_within(Duration::from_secs(10))
        .expect("the restarted node never cut the revoked connection");
    let after = cut.saturating_duration_since(committed);
    assert!(after <= CUT_WITHIN, "cut {after:?} after the commit");
    let _ = lock.wait();
}

// ---- claim certificates and client ids ----

const CLAIM_TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
  }
}"#;

fn claim_identity(s: &Server) -> Identity {
    let body = s.path("template.json");
    std::fs::write(&body, CLAIM_TEMPLATE).unwrap();
    let out = s.cli(&[
        "template",
        "create",
        "factory",
        "--body",
        body.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = s.path("claim");
    s.cli_json(&[
        "claim",
        "create",
        "--template",
        "factory",
        "--out",
        dir.to_str().unwrap(),
    ]);
    Identity {
        name: "claim".into(),
        cert: dir.join("claim.pem"),
        key: dir.join("claim.key"),
    }
}

#[test]
fn a_claim_certificate_cannot_take_over_a_devices_client_id() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let claim = claim_identity(&s);
    let (first, conn) = Probe::connect(s.mqtt_port, &s.root_pem, &d1, "D1", false);
    assert_eq!(
        first,
        Connack::Accepted {
            session_present: false
        }
    );
    let mut conn = conn.unwrap();

    for attempt in 0..10 {
        let (answer, _) = Probe::connect(s.mqtt_port, &s.root_pem, &claim, "D1", true);
        assert_eq!(
            answer,
            Connack::Refused(2),
            "attempt {attempt}: identifier rejected"
        );
    }
    assert!(conn.ping(), "the device was thrown off");

    // Offline, its persistent session is not wiped by the claim either.
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    let (answer, _) = Probe::connect(s.mqtt_port, &s.root_pem, &claim, "D1", true);
    assert_eq!(answer, Connack::Refused(2));
    std::thread::sleep(Duration::from_millis(1100));
    let (back, _) = Probe::connect(s.mqtt_port, &s.root_pem, &d1, "D1", false);
    assert_eq!(
        back,
        Connack::Accepted {
            session_present: true
        }
    );

    // Control: the claim connects with a client id of its own.
    let (own, _) = Probe::connect(s.mqtt_port, &s.root_pem, &claim, "factory-line-7", true);
    assert_eq!(
        own,
        Connack::Accepted {
            session_present: false
        }
    );
}

#[test]
fn one_claim_connection_cannot_displace_another_using_the_same_claim() {
    let s = Server::start(Backend::Sqlite);
    let claim = claim_identity(&s);
    let mut first = match Probe::connect(s.mqtt_port, &s.root_pem, &claim, "board-17", true) {
        (Connack::Accepted { .. }, Some(p)) => p,
        other => panic!("{:?}", other.0),
    };
    let (second, _) = Probe::connect(s.mqtt_port, &s.root_pem, &claim, "board-17", true);
    assert_eq!(second, Connack::Refused(2));
    assert!(first.ping(), "the first board was thrown off");
}

#[test]
fn claim_connections_are_limited_per_source_address() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[],
        Some("[mqtt]\nclaim_rate_per_source = { per_second = 1, burst = 3 }\n"),
    );
    let claim = claim_identity(&s);
    let d1 = s.device("D1");
    let answers: Vec<Connack> = (0..5)
        .map(|i| {
            Probe::connect(
                s.mqtt_port,
                &s.root_pem,
                &claim,
                &format!("board-{i}"),
                true,
            )
            .0
        })
        .collect();
    assert_eq!(
        answers
            .iter()
            .filter(|a| matches!(a, Connack::Accepted { .. }))
            .count(),
        3,
        "{answers:?}"
    );
    assert_eq!(
        answers[4],
        Connack::Refused(3),
        "server unavailable: rate exceeded"
    );
    // Devices from the same address are not held back by the claim limit.
    let (device, _) = Probe::connect(s.mqtt_port, &s.root_pem, &d1, "D1", true);
    assert_eq!(
        device,
        Connack::Accepted {
            session_present: false
        }
    );
}

#[test]
fn with_client_id_matching_off_one_device_cannot_take_another_devices_client_id() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[],
        Some("[mqtt]\nrequire_client_id_match = false\n"),
    );
    let d1 = s.device("D1");
    let d2 = s.device("D2");
    let policy = s.path("any-client.json");
    std::fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#,
    )
    .unwrap();
    assert!(
        s.cli(&[
            "policy",
            "create",
            "any",
            "--document",
            policy.to_str().unwrap()
        ])
        .status
        .success()
    );
    for d in ["D1", "D2"] {
        assert!(
            s.cli(&["policy", "attach", "any", "--device", d])
                .status
                .success()
        );
    }
    let mut conn = probe(&s, &d1, "shared-id");
    let (answer, _) = Probe::connect(s.mqtt_port, &s.root_pem, &d2, "shared-id", true);
    assert_eq!(answer, Connack::Refused(2));
    assert!(conn.ping());
    // The owner itself still takes over its own client id, as MQTT requires.
    std::thread::sleep(Duration::from_millis(1100));
    let (again, _) = Probe::connect(s.mqtt_port, &s.root_pem, &d1, "shared-id", true);
    assert_eq!(
        again,
        Connack::Accepted {
            session_present: false
        }
    );
    assert!(conn.closed_within(Duration::from_secs(3)).is_some());
}

// ---- CRL and OCSP for relying parties, with openssl as the client ----

/// Runs `openssl` in `dir`; success and stdout + stderr.
fn openssl_in(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
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

/// The URI after `label` in `openssl x509 -text` of `pem`.
fn uri_in_cert(dir: &std::path::Path, pem: &str, label: &str) -> String {
    let (ok, text) = openssl_in(dir, &["x509", "-in", pem, "-noout", "-text"]);
    assert!(ok, "{text}");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` in {pem}: {text}"))
        .trim()
        .to_string()
}

/// `curl` of a plain-HTTP URL into `out`; the HTTP status and the headers.
fn fetch(url: &str, out: &std::path::Path, extra: &[&str]) -> (u16, String) {
    let headers = out.with_extension("headers");
    let o = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(out)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        status,
        std::fs::read_to_string(&headers).unwrap_or_default(),
    )
}

/// Whether `openssl verify -crl_check` with the CRL at `crl_url` accepts `leaf`.
fn verify_with_crl(dir: &std::path::Path, crl_url: &str, leaf: &str) -> (bool, String) {
    let (status, headers) = fetch(crl_url, &dir.join("crl.der"), &[]);
    assert_eq!(status, 200, "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/pkix-crl"),
        "{headers}"
    );
    let (ok, text) = openssl_in(
        dir,
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
    assert!(
        ok && text.contains("verify OK"),
        "the CRL does not verify: {text}"
    );
    let (ok, text) = openssl_in(
        dir,
        &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
    );
    assert!(ok, "{text}");
    openssl_in(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "-CRLfile",
            "crl.pem",
            leaf,
        ],
    )
}

/// `openssl ocsp` against `url` about `leaf` issued by `issuer`.
fn ocsp_ask(
    dir: &std::path::Path,
    url: &str,
    issuer: &str,
    leaf: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "ocsp",
        "-issuer",
        issuer,
        "-cert",
        leaf,
        "-url",
        url,
        "-CAfile",
        "root.pem",
        "-resp_text",
    ];
    args.extend_from_slice(extra);
    openssl_in(dir, &args)
}

fn crl_and_ocsp_follow_a_revocation(backend: Backend) {
    let s = Server::start_with(backend, &[("ONRAMP_PKI__LISTEN", "127.0.0.1:0")], None);
    let work = s.path("relying-party");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.as_path();
    let dev = s.device("RP-1");
    let serial = serial_of(&s, "RP-1");
    std::fs::copy(&dev.cert, w.join("dev.pem")).unwrap();
    std::fs::copy(&s.root_pem, w.join("root.pem")).unwrap();
    let out = s.cli(&[
        "ca",
        "export",
        "--chain",
        "--out",
        w.join("chain.pem").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chain = std::fs::read_to_string(w.join("chain.pem")).unwrap();
    let issuing = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(w.join("issuing.pem"), &issuing).unwrap();

    // The certificate says where relying parties look: the plain-HTTP
    // revocation listener, on the first server host name.
    let plain = std::fs::read_to_string(s.data.join("revocation.addr")).unwrap();
    let port = plain.trim().rsplit(':').next().unwrap().to_string();
    let crl_url = uri_in_cert(w, "dev.pem", "URI:");
    let ocsp_url = uri_in_cert(w, "dev.pem", "OCSP - URI:");
    assert!(
        crl_url.starts_with(&format!("http://localhost:{port}/crl/")) && crl_url.ends_with(".crl"),
        "{crl_url}"
    );
    assert_eq!(ocsp_url, format!("http://localhost:{port}/ocsp"));
    // The plain-HTTP listener serves nothing but the CRL, OCSP and SCEP.
    for path in [
        "/api/v1/ca/chain",
        "/metrics",
        "/healthz",
        "/.well-known/est/cacerts",
    ] {
        let (status, _) = fetch(
            &format!("http://{}{path}", plain.trim()),
            &w.join("other.out"),
            &[],
        );
        assert_eq!(status, 404, "{path}");
    }
    // The server's own certificate carries the same URLs.
    std::fs::copy(s.data.join("tls/server.pem"), w.join("server.pem")).unwrap();
    assert_eq!(uri_in_cert(w, "server.pem", "OCSP - URI:"), ocsp_url);

    let (ok, text) = verify_with_crl(w, &crl_url, "dev.pem");
    assert!(ok && text.contains("dev.pem: OK"), "{text}");
    // The stable name serves the same CRL, over HTTPS too.
    let https = s.curl(&[&s.url("/crl/current.crl")]);
    assert_eq!(https.status, 200);
    assert_eq!(https.body, std::fs::read(w.join("crl.der")).unwrap());
    assert_eq!(s.curl(&[&s.url("/crl/other.crl")]).status, 404);

    let (ok, text) = ocsp_ask(w, &ocsp_url, "issuing.pem", "dev.pem", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("dev.pem: good"), "{text}");
    assert!(
        text.contains("OCSP Nonce"),
        "the nonce was not echoed: {text}"
    );
    assert!(!text.contains("WARNING"), "{text}");
    assert!(text.contains("Next Update:"), "{text}");

    // Revoke, then watch the CRL: it must list the certificate within seconds.
    let out = s.cli(&["cert", "revoke", &serial, "--reason", "keyCompromise"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    let (revoked_text, seen_after) = loop {
        let (ok, text) = verify_with_crl(w, &crl_url, "dev.pem");
        if !ok {
            break (text, revoked_at.elapsed());
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the CRL still passes the revoked certificate: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        revoked_text.contains("certificate revoked"),
        "{revoked_text}"
    );
    eprintln!("the CRL listed the revocation {seen_after:?} after the CLI returned");

    let (ok, text) = ocsp_ask(w, &ocsp_url, "issuing.pem", "dev.pem", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("dev.pem: revoked"), "{text}");
    assert!(text.contains("Reason: keyCompromise"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");

    // Unknown: a serial this CA never issued, and a certificate of another CA.
    let (ok, text) = openssl_in(
        w,
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            "0x1234567890",
            "-url",
            &ocsp_url,
            "-CAfile",
            "root.pem",
            "-resp_text",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("Response verify OK") && text.contains("0x1234567890: unknown"),
        "{text}"
    );
    let (ok, text) = openssl_in(
        w,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=Other CA",
            "-days",
            "2",
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = openssl_in(
        w,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "foreign.key",
            "-out",
            "foreign.pem",
            "-subj",
            "/CN=foreign",
            "-days",
            "2",
            "-CA",
            "other.pem",
            "-CAkey",
            "other.key",
        ],
    );
    assert!(ok, "{text}");
    let (_, text) = ocsp_ask(w, &ocsp_url, "other.pem", "foreign.pem", &["-noverify"]);
    assert!(text.contains("foreign.pem: unknown"), "{text}");

    // GET (RFC 6960 appendix A.1), URL-safe and standard base64, over HTTPS.
    let (ok, text) = openssl_in(
        w,
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "dev.pem",
            "-reqout",
            "req.der",
        ],
    );
    assert!(ok, "{text}");
    let req = std::fs::read(w.join("req.der")).unwrap();
    let b64 = Command::new("base64")
        .args(["-w0"])
        .arg(w.join("req.der"))
        .output()
        .unwrap();
    let std_b64 = String::from_utf8(b64.stdout).unwrap();
    let url_safe = std_b64.replace('+', "-").replace('/', "_").replace('=', "");
    let percent = std_b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    for path in [url_safe, percent] {
        let r = s.curl(&[&s.url(&format!("/ocsp/{path}"))]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/ocsp-response")
        );
        std::fs::write(w.join("resp.der"), &r.body).unwrap();
        let (ok, text) = openssl_in(
            w,
            &[
                "ocsp",
                "-reqin",
                "req.der",
                "-respin",
                "resp.der",
                "-verify_other",
                "issuing.pem",
                "-CAfile",
                "root.pem",
                "-resp_text",
            ],
        );
        assert!(ok, "{text}");
        assert!(
            text.contains("Response verify OK") && text.contains("Cert Status: revoked"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
    }
    // POST over HTTPS with curl.
    let r = s.curl(&[
        "-H",
        "Content-Type: application/ocsp-request",
        "--data-binary",
        &format!("@{}", w.join("req.der").display()),
        &s.url("/ocsp"),
    ]);
    assert_eq!(r.status, 200);
    std::fs::write(w.join("resp.der"), &r.body).unwrap();
    let (ok, text) = openssl_in(
        w,
        &[
            "ocsp",
            "-reqin",
            "req.der",
            "-respin",
            "resp.der",
            "-verify_other",
            "issuing.pem",
            "-CAfile",
            "root.pem",
            "-resp_text",
        ],
    );
    assert!(ok && text.contains("Cert Status: revoked"), "{text}");
    assert!(
        text.contains("Response verify OK") && !text.contains("WARNING"),
        "{text}"
    );
    assert!(!req.is_empty());

    // Malformed requests get malformedRequest, by POST and by GET.
    for (method, body_or_path) in [("POST", "not an OCSP request"), ("GET", "%%%not-base64")] {
        let out = w.join("bad.der");
        let (status, headers) = if method == "POST" {
            fetch(
                &ocsp_url,
                &out,
                &[
                    "-H",
                    "Content-Type: application/ocsp-request",
                    "--data-binary",
                    body_or_path,
                ],
            )
        } else {
            fetch(&format!("{ocsp_url}/{body_or_path}"), &out, &[])
        };
        assert_eq!(status, 200, "{headers}");
        let (_, text) = openssl_in(
            w,
            &["ocsp", "-respin", "bad.der", "-resp_text", "-noverify"],
        );
        assert!(
            text.to_ascii_lowercase().contains("malformedrequest (1)"),
            "{method}: {text}"
        );
    }
    let (status, _) = fetch(
        &ocsp_url,
        &w.join("wrong-type.der"),
        &["-H", "Content-Type: text/plain", "--data-binary", "x"],
    );
    assert_eq!(status, 415);

    // The live cut stays: the revoked device cannot connect over MQTT.
    let (connack, _) = Probe::connect(s.mqtt_port, &s.root_pem, &dev, "RP-1", true);
    assert!(matches!(connack, Connack::Refused(_)), "{connack:?}");

    let metrics = s.metrics();
    let value = |series: &str| metric_value(&metrics, series).unwrap_or(0.0);
    assert!(
        value(r#"onramp_ocsp_responses_total{status="good"}"#) >= 1.0,
        "{metrics}"
    );
    assert!(
        value(r#"onramp_ocsp_responses_total{status="revoked"}"#) >= 4.0,
        "{metrics}"
    );
    assert!(
        value(r#"onramp_ocsp_responses_total{status="unknown"}"#) >= 2.0,
        "{metrics}"
    );
    assert!(
        value(r#"onramp_ocsp_responses_total{status="malformed"}"#) >= 2.0,
        "{metrics}"
    );
    assert!(
        value(r#"onramp_crl_generations_total{reason="change",outcome="ok"}"#) >= 1.0,
        "{metrics}"
    );
    assert_eq!(value("onramp_crl_entries"), 1.0, "{metrics}");
}

#[test]
fn crl_and_ocsp_follow_a_revocation_on_sqlite() {
    crl_and_ocsp_follow_a_revocation(Backend::Sqlite);
}

#[test]
fn crl_and_ocsp_follow_a_revocation_on_postgres() {
    crl_and_ocsp_follow_a_revocation(Backend::Postgres);
}

#[test]
fn a_revocation_committed_late_on_sqlite_still_reaches_the_crl() {
    let s = Server::start(Backend::Sqlite);
    let work = s.path("late-crl");
    std::fs::create_dir_all(&work).unwrap();
    let _d = s.device("LATE-1");
    let serial = serial_of(&s, "LATE-1");
    let key = s.api_key("operator");
    let listed = |s: &Server| {
        let r = s.curl(&[&s.url("/crl/current.crl")]);
        assert_eq!(r.status, 200);
        std::fs::write(work.join("crl.der"), &r.body).unwrap();
        let (ok, text) = openssl_in(
            &work,
            &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
        );
        assert!(ok, "{text}");
        text.to_ascii_lowercase()
            .contains(&format!("serial number: {serial}"))
    };
    assert!(!listed(&s));
    let mut lock = hold_sqlite_write_lock(&s, 3.0);
    let revoke = revoke_in_background(&s, key, &serial);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!listed(&s), "listed before the revocation committed");
    let (code, committed) = revoke.join().unwrap();
    assert_eq!(code, 200);
    let _ = lock.wait();
    loop {
        if listed(&s) {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "the CRL never listed the late revocation"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
