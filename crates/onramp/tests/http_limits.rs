//! The HTTPS edge under abuse: slow and idle connections, connection caps,
//! early refusals over HTTP/2 and HTTP/1.1, and failed credentials.

mod support;

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, Server, device_csr, metric_value};

// ---- a raw TLS client, to hold connections open the way an attacker would ----

fn root_store(s: &Server) -> rustls::RootCertStore {
    use base64::Engine;
    let pem = std::fs::read_to_string(&s.root_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for block in pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let b64: String = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        roots.add(der.into()).unwrap();
    }
    roots
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(s: &Server, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(root_store(s))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// Connects and completes the TLS handshake, or says why not.
fn tls_connect(s: &Server, cfg: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(&s.addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Whether the server has closed the connection: a read that returns end of
/// stream or fails; `false` when it is still open (the read times out).
fn closed_by_server(tls: &mut Tls) -> bool {
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Reads one HTTP/1.1 response (head and Content-Length body).
fn read_response(tls: &mut Tls) -> (u16, String) {
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_string());
            }
        }
        let n = tls.read(&mut buf).expect("reading a response");
        assert!(n > 0, "the connection closed before a full response");
        data.extend_from_slice(&buf[..n]);
    }
}

fn healthz(s: &Server) -> u16 {
    s.curl(&[&s.url("/healthz")]).status
}

// ---- slow and idle connections ----

#[test]
fn connections_trickling_a_request_head_are_closed_at_the_header_timeout() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_HTTP__HEADER_READ_TIMEOUT_SECS", "3")],
        None,
    );
    let cfg = client_config(&s, b"http/1.1");
    // Each connection's time is measured from its own handshake: on a busy
    // machine the 50 handshakes take a while.
    let mut conns: Vec<(Tls, Instant)> = (0..50)
        .map(|_| {
            let c = tls_connect(&s, &cfg).unwrap();
            (c, Instant::now())
        })
        .collect();
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    // One byte per connection every 250 ms: never a complete head.
    let mut closed_after: Vec<Option<Duration>> = vec![None; conns.len()];
    let mut checked_early = false;
    while closed_after.iter().any(Option::is_none) {
        for (i, (c, ready)) in conns.iter_mut().enumerate() {
            if closed_after[i].is_some() {
                continue;
            }
            assert!(
                ready.elapsed() < Duration::from_secs(3 + 10),
                "connection {i} still open after the header timeout and a margin"
            );
            let _ = c.write_all(&head[sent % head.len()..sent % head.len() + 1]);
            let _ = c.flush();
            if closed_by_server(c) {
                closed_after[i] = Some(ready.elapsed());
            }
        }
        sent += 1;
        if !checked_early {
            checked_early = true;
            // Control: a fresh trickling connection is open 1.5 s on (they are
            // closed by the timeout, not refused), and others are served.
            let (mut probe, ready) = (tls_connect(&s, &cfg).unwrap(), Instant::now());
            while ready.elapsed() < Duration::from_millis(1500) {
                probe.write_all(b"G").unwrap();
                std::thread::sleep(Duration::from_millis(250));
            }
            assert!(!closed_by_server(&mut probe), "closed before the timeout");
            assert_eq!(healthz(&s), 200);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(checked_early);
    let earliest = closed_after.iter().flatten().min().unwrap();
    assert!(
        *earliest >= Duration::from_secs(2),
        "closed {earliest:?} after the handshake, before the 3 s timeout"
    );
    assert_eq!(healthz(&s), 200, "the server still serves");
    let metrics = s.metrics();
    assert!(
        metric_value(&metrics, "onramp_http_timeouts_total{kind=\"header\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            ("ONRAMP_HTTP__IDLE_TIMEOUT_SECS", "3"),
            ("ONRAMP_HTTP__HEADER_READ_TIMEOUT_SECS", "60"),
        ],
        None,
    );
    let cfg = client_config(&s, b"http/1.1");
    let mut c = tls_connect(&s, &cfg).unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut c), (200, "ok\n".into()));
    }
    let idle_from = Instant::now();
    // Control: kept alive for a while after the response.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!closed_by_server(&mut c), "closed before the idle timeout");
    while !closed_by_server(&mut c) {
        assert!(
            idle_from.elapsed() < Duration::from_secs(3 + 10),
            "an idle connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(idle_from.elapsed() >= Duration::from_millis(2500));
}

#[test]
fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_HTTP__HEADER_READ_TIMEOUT_SECS", "3")],
        None,
    );
    let cfg = client_config(&s, b"h2");
    let mut c = tls_connect(&s, &cfg).unwrap();
    assert_eq!(c.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The preface and an empty SETTINGS frame, then nothing.
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    c.flush().unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!closed_by_server(&mut c), "closed before the timeout");
    while !closed_by_server(&mut c) {
        assert!(
            started.elapsed() < Duration::from_secs(3 + 10),
            "an HTTP/2 connection without requests stayed open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_request_body_that_does_not_arrive_in_time_gets_408() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_HTTP__BODY_READ_TIMEOUT_SECS", "2")],
        None,
    );
    let cfg = client_config(&s, b"http/1.1");
    let mut c = tls_connect(&s, &cfg).unwrap();
    c.write_all(
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/pkcs10\r\nContent-Length: 1000\r\n\r\nMIIB",
    )
    .unwrap();
    c.flush().unwrap();
    let sent = Instant::now();
    let (status, body) = read_response(&mut c);
    assert_eq!(status, 408, "{body}");
    assert_eq!(body, "the request body did not arrive in time\n");
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    // The rest of the body never came, so the connection cannot be reused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !closed_by_server(&mut c) {
        assert!(Instant::now() < deadline, "connection left open");
    }
}

// ---- connection caps ----

#[test]
fn connections_over_the_per_source_cap_are_refused_before_tls() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_HTTP__MAX_CONNECTIONS_PER_SOURCE", "3")],
        None,
    );
    let cfg = client_config(&s, b"http/1.1");
    let mut held: Vec<Tls> = (0..3).map(|_| tls_connect(&s, &cfg).unwrap()).collect();
    let refused = tls_connect(&s, &cfg);
    assert!(refused.is_err(), "the 4th connection completed TLS");
    // The first three work.
    for c in &mut held {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(c), (200, "ok\n".into()));
    }
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    // The freed place is reusable: a request on the HTTPS listener succeeds.
    loop {
        let r = s.curl(&[&s.url("/healthz")]);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not reusable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = s.metrics();
    let refused_count = metric_value(
        &metrics,
        "onramp_http_connections_refused_total{reason=\"max_connections_per_source\"}",
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused_count >= 1.0);
}

// ---- refusals reach curl intact over HTTP/2 and HTTP/1.1 ----

struct CurlRun {
    exit_ok: bool,
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

fn curl_raw(s: &Server, proto: &str, args: &[&str]) -> CurlRun {
    let out = Command::new("curl")
        .args(["-s", "-S", proto, "--cacert"])
        .arg(&s.root_pem)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", ""));
    let (code, version) = meta.split_once(' ').unwrap_or(("0", ""));
    CurlRun {
        exit_ok: out.status.success(),
        status: code.parse().unwrap_or(0),
        version: version.to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn assert_refusals_intact(s: &Server, tries: usize, args: &[&str], status: u16, body: &str) {
    for (proto, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        for i in 0..tries {
            let r = curl_raw(s, proto, args);
            assert!(
                r.exit_ok && r.status == status && r.body == body && r.version == version,
                "{proto} try {i}: exit ok {} status {} version {} body {:?} stderr {}",
                r.exit_ok,
                r.status,
                r.version,
                r.body,
                r.stderr
            );
        }
    }
}

#[test]
fn early_refusals_reach_curl_intact_over_http2_and_http1() {
    let s = Server::start(Backend::Sqlite);
    let est = s.url("/.well-known/est/simpleenroll");
    let big = s.path("big.bin");
    std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let huge = s.path("huge.bin");
    std::fs::write(&huge, vec![b'A'; 10 * 1024 * 1024]).unwrap();
    let small = s.path("small.bin");
    std::fs::write(&small, vec![b'A'; 4096]).unwrap();
    let at = |p: &std::path::Path| format!("@{}", p.display());
    let (big, huge, small) = (at(&big), at(&huge), at(&small));

    let pkcs10 = "Content-Type: application/pkcs10";
    // EST, no credential, a body over the limit: 413 before the body is read.
    assert_refusals_intact(
        &s,
        20,
        &["-H", pkcs10, "--data-binary", &big, &est],
        413,
        "the request body exceeds 65536 bytes\n",
    );
    // 10 MB: still a clean 413, not a reset.
    assert_refusals_intact(
        &s,
        5,
        &["-H", pkcs10, "--data-binary", &huge, &est],
        413,
        "the request body exceeds 65536 bytes\n",
    );
    // Wrong Content-Type (curl's default form type): refused on the headers alone.
    assert_refusals_intact(
        &s,
        20,
        &["-X", "POST", "--data-binary", &big, &est],
        400,
        "Content-Type must be application/pkcs10, not `application/x-www-form-urlencoded`\n",
    );
    // The API without a key, with a body it never reads.
    let tokens = s.url("/api/v1/tokens");
    let json_401 = r#"{"error":{"code":"unauthorized","message":"an API key is required: Authorization: Bearer <key>"}}"#;
    assert_refusals_intact(
        &s,
        20,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &big,
            &tokens,
        ],
        401,
        json_401,
    );
    // The API with a key and a JSON body over its 1 MiB limit: 413, not 400.
    let key = s.api_key("admin");
    let auth = format!("Authorization: Bearer {key}");
    assert_refusals_intact(
        &s,
        20,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &big,
            &tokens,
        ],
        413,
        r#"{"error":{"code":"payload_too_large","message":"the request body exceeds 1048576 bytes"}}"#,
    );
    // Control: a small body under every limit passes the size check and is
    // judged on its content.
    let r = curl_raw(
        &s,
        "--http2",
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &small,
            &est,
        ],
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

// ---- failed credentials ----

/// The aggregated audit rows of `target` and the sum of their counts.
fn audit_counts(s: &Server, action: &str, target: &str) -> (Vec<Value>, u64) {
    let rows = s.cli_json(&[
        "audit", "--action", action, "--target", target, "--limit", "1000",
    ]);
    let rows = rows["items"].as_array().unwrap().clone();
    let sum = rows
        .iter()
        .map(|r| {
            let d = r["detail"].as_str().unwrap();
            d.strip_prefix("count=")
                .and_then(|rest| rest.split(';').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not an aggregated row: {d}"))
        })
        .sum();
    (rows, sum)
}

fn wait_for_audit_sum(s: &Server, action: &str, target: &str, want: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, sum) = audit_counts(s, action, target);
        if sum == want {
            return rows;
        }
        assert!(
            sum < want && Instant::now() < deadline,
            "audit counts {sum}, want {want}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn failed_tokens_lock_out_the_serial(backend: Backend) {
    let s = Server::start_with(
        backend,
        &[
            ("ONRAMP_ENROLMENT__FAILURES_PER_SERIAL__MAX_FAILURES", "5"),
            ("ONRAMP_ENROLMENT__FAILURES_PER_SERIAL__BACKOFF_SECS", "8"),
            ("ONRAMP_HTTP__REFUSAL_AUDIT_WINDOW_SECS", "4"),
        ],
        None,
    );
    let token = s.token("SN-L");
    let other = s.token("SN-M");
    let d = device_csr(s.dir.path(), "l", "/CN=SN-L");
    // Each curl is a new connection from a new source port.
    for i in 0..5 {
        let r = s.enrol(&d, "SN-L", &format!("wrong-{i}"));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
    }
    let mut locked = 0;
    for _ in 0..4 {
        let r = s.enrol(&d, "SN-L", "wrong-again");
        assert_eq!(r.status, 429, "{}", r.text());
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=8).contains(&wait), "{wait}");
        assert!(
            r.text().contains("too many failed attempts"),
            "{}",
            r.text()
        );
        locked += 1;
    }
    // Even the right token waits: the back-off is per serial.
    let r = s.enrol(&d, "SN-L", &token);
    assert_eq!(r.status, 429, "{}", r.text());
    locked += 1;
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // Control: another serial is not affected.
    let m = device_csr(s.dir.path(), "m", "/CN=SN-M");
    assert_eq!(s.enrol(&m, "SN-M", "wrong").status, 401);
    assert_eq!(s.enrol(&m, "SN-M", &other).status, 200);
    // After the back-off, the right token enrols.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(500));
    let r = s.enrol(&d, "SN-L", &token);
    assert_eq!(r.status, 200, "{}", r.text());

    // 5 wrong tokens and `locked` refusals during the back-off, in a few rows.
    let rows = wait_for_audit_sum(&s, "est.simpleenroll", "serial:SN-L", 5 + locked);
    assert!(rows.len() <= 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["outcome"] == "denied"));
    assert!(rows.iter().any(|r| {
        r["detail"]
            .as_str()
            .unwrap()
            .contains("too many failed attempts")
    }));
}

#[test]
fn failed_tokens_lock_out_the_serial_on_sqlite() {
    failed_tokens_lock_out_the_serial(Backend::Sqlite);
}

#[test]
fn failed_tokens_lock_out_the_serial_on_postgres() {
    failed_tokens_lock_out_the_serial(Backend::Postgres);
}

#[test]
fn wrong_api_keys_are_limited_per_address_and_audited_aggregated() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            (
                "ONRAMP_HTTP__API_KEY_FAILURES_PER_SOURCE__MAX_FAILURES",
                "3",
            ),
            (
                "ONRAMP_HTTP__API_KEY_FAILURES_PER_SOURCE__BACKOFF_SECS",
                "60",
            ),
            ("ONRAMP_HTTP__REFUSAL_AUDIT_WINDOW_SECS", "3"),
        ],
        None,
    );
    let key = s.api_key("viewer");
    // Control: the right key works.
    assert_eq!(s.api("GET", "/api/v1/devices", &key, None).status, 200);
    for i in 0..3 {
        let r = s.api("GET", "/api/v1/devices", &format!("wrong-{i}"), None);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    for _ in 0..7 {
        let r = s.api("GET", "/api/v1/devices", "wrong-again", None);
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "rate_limited");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // The address is locked out, whatever key it presents.
    assert_eq!(s.api("GET", "/api/v1/devices", &key, None).status, 429);
    let rows = wait_for_audit_sum(&s, "api.authenticate", "apikey", 3 + 8);
    assert!(rows.len() <= 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["source"] == "127.0.0.1"));
    // No key reaches the audit log or the server log.
    let all = serde_json::to_string(&rows).unwrap();
    assert!(!all.contains("wrong-") && !all.contains(&key));
    let log = s.server_log();
    assert!(log.contains("API authentication refused"));
    assert!(!log.contains("wrong-0") && !log.contains(&key));
}

#[test]
fn malformed_est_requests_are_audited_aggregated() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_HTTP__REFUSAL_AUDIT_WINDOW_SECS", "3")],
        None,
    );
    let token = s.token("SN-G");
    let est = s.url("/.well-known/est/simpleenroll");
    let user = format!("SN-G:{token}");
    let garbage = s.path("garbage.b64");
    std::fs::write(&garbage, "%%% not base64 %%%").unwrap();
    let big = s.path("big.b64");
    std::fs::write(&big, vec![b'A'; 100 * 1024]).unwrap();
    let (garbage, big) = (
        format!("@{}", garbage.display()),
        format!("@{}", big.display()),
    );
    let ct = "Content-Type: application/pkcs10";
    for _ in 0..10 {
        let r = s.curl(&["-u", &user, "-H", ct, "--data-binary", &garbage, &est]);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("not base64"));
        let r = s.curl(&[
            "-u",
            &user,
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &garbage,
            &est,
        ]);
        assert_eq!(r.status, 400, "{}", r.text());
    }
    for _ in 0..5 {
        let r = s.curl(&["-u", &user, "-H", ct, "--data-binary", &big, &est]);
        assert_eq!(r.status, 413, "{}", r.text());
    }
    let rows = wait_for_audit_sum(&s, "est.simpleenroll", "serial:SN-G", 25);
    assert!(rows.len() <= 4, "{rows:?}");
    let details: Vec<&str> = rows.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    assert!(
        details.iter().any(|d| d.contains("exceeds 65536 bytes")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("not base64") || d.contains("Content-Type"))
    );
    // Control: none of this touched the token, which still enrols.
    let d = device_csr(s.dir.path(), "g", "/CN=SN-G");
    assert_eq!(s.enrol(&d, "SN-G", &token).status, 200);
}
