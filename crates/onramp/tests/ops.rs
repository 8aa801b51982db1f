//! The operations listener (plain HTTP: health, readiness, metrics) and what
//! the device-facing HTTPS listener no longer shows.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn the_ops_listener_serves_health_readiness_and_metrics_on_loopback() {
    let s = Server::start(Backend::Sqlite);
    let ops = s.ops_addr.clone().expect("the ops listener is announced");
    assert!(ops.starts_with("127.0.0.1:"), "{ops}");
    assert_eq!(
        std::fs::read_to_string(s.data.join("ops.addr")).unwrap(),
        ops
    );

    let health = s.curl(&[&s.ops_url("/healthz")]);
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let ready = s.curl(&[&s.ops_url("/readyz")]);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    // Real activity shows in the ops listener's metrics.
    let token = s.token("SN-OPS");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-OPS");
    assert_eq!(s.enrol(&d, "SN-OPS", &token).status, 200);
    let m = s.curl(&[&s.ops_url("/metrics")]);
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{}",
        m.headers
    );
    assert_eq!(
        metric_value(
            &m.text(),
            "onramp_enrolments_total{operation=\"simpleenroll\",outcome=\"success\"}"
        ),
        Some(1.0),
        "{}",
        m.text()
    );

    // Nothing else is on it: no EST, no API, no OpenAPI document.
    for path in [
        "/api/v1/openapi.json",
        "/api/v1/ca/chain",
        "/.well-known/est/cacerts",
    ] {
        assert_eq!(s.curl(&[&s.ops_url(path)]).status, 404, "{path}");
    }
    // It is plain HTTP: a TLS client gets no answer.
    let tls = s.curl(&[&format!("https://{ops}/healthz")]);
    assert_eq!(tls.status, 0, "{}", tls.stderr);
}

#[test]
fn metrics_are_not_on_the_device_listener_by_default() {
    let s = Server::start(Backend::Sqlite);
    let on_https = s.curl(&[&s.url("/metrics")]);
    assert_eq!(on_https.status, 404, "{}", on_https.text());
    assert!(!on_https.text().contains("onramp_"), "{}", on_https.text());
    // Health and readiness stay there, for load balancers.
    assert_eq!(s.curl(&[&s.url("/healthz")]).status, 200);
    assert_eq!(s.curl(&[&s.url("/readyz")]).json()["status"], "ready");
    // The control: the same server does serve metrics, on the ops listener.
    assert!(s.metrics().contains("onramp_enrolments_total"));
}

#[test]
fn metrics_can_be_kept_on_the_device_listener() {
    let s = Server::start_with(Backend::Sqlite, &[("ONRAMP_HTTP__METRICS", "true")], None);
    let on_https = s.curl(&[&s.url("/metrics")]);
    assert_eq!(on_https.status, 200);
    assert!(
        on_https.text().contains("onramp_http_connections "),
        "{}",
        on_https.text()
    );
    assert_eq!(s.curl(&[&s.ops_url("/metrics")]).status, 200);
}

#[test]
fn the_ops_listener_can_be_turned_off() {
    for off in ["off", ""] {
        let s = Server::start_with(Backend::Sqlite, &[("ONRAMP_OPS__LISTEN", off)], None);
        assert_eq!(s.ops_addr, None, "ops.listen = {off:?}");
        assert!(!s.data.join("ops.addr").exists(), "ops.listen = {off:?}");
        assert!(
            s.server_log()
                .contains("the operations listener is off (ops.listen)"),
            "{}",
            s.server_log()
        );
        // The server itself runs.
        assert_eq!(s.curl(&[&s.url("/readyz")]).status, 200);
    }
}

#[test]
fn a_taken_ops_port_stops_the_server_with_the_setting_to_change() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("serve")
        .env_remove("ONRAMP_DATABASE_URL")
        .env_remove("ONRAMP_CONFIG")
        .env("ONRAMP_HTTP__LISTEN", "127.0.0.1:0")
        .env("ONRAMP_MQTT__LISTEN", "127.0.0.1:0")
        .env("ONRAMP_OPS__LISTEN", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with its ops port taken");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on {addr} for the operations listener: another process, or another \
             Onramp, holds the port; change `ops.listen` (ONRAMP_OPS__LISTEN), or set it to \"off\""
        )) && stderr.contains("Address already in use"),
        "{stderr}"
    );
    // docs/configuration.md shows the message as it is.
    let shown = stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_default()
        .replace(&addr, "127.0.0.1:9464");
    assert!(
        include_str!("../../../docs/configuration.md").contains(&shown),
        "docs/configuration.md does not show {shown:?}"
    );
    // Devices were never served.
    assert!(!stdout.contains("listening"), "{stdout}");
    drop(taken);
}

#[test]
fn config_check_shows_the_listener_defaults() {
    let out = Command::new(bin())
        .args(["config", "check"])
        .env_remove("ONRAMP_DATABASE_URL")
        .env_remove("ONRAMP_CONFIG")
        .env_remove("ONRAMP_OPS__LISTEN")
        .env_remove("ONRAMP_HTTP__METRICS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["ops"]["listen"], "127.0.0.1:9464");
    assert_eq!(cfg["http"]["metrics"], false);
    assert_eq!(cfg["http"]["listen"], "0.0.0.0:8443");
    assert_eq!(cfg["mqtt"]["listen"], "0.0.0.0:8883");
}

#[test]
fn config_check_refuses_a_listen_address_that_is_not_host_port() {
    let out = Command::new(bin())
        .args(["config", "check"])
        .env_clear()
        .env("ONRAMP_OPS__LISTEN", "9464")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ops.listen = \"9464\" is not a host:port address"),
        "{err}"
    );
    // "off" is not an address but turns the listener off.
    let out = Command::new(bin())
        .args(["config", "check"])
        .env_clear()
        .env("ONRAMP_OPS__LISTEN", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
