//! The MQTT gateway against real clients: mosquitto_pub / mosquitto_sub.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[test]
fn devices_publish_to_their_own_topics_and_services_receive_qos0_and_qos1() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/+/telemetry", "-q", "1", "-C", "2", "-W", "10"],
    );
    settle();
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/telemetry", "-m", "t0", "-q", "0"])
            .0
    );
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/telemetry", "-m", "t1", "-q", "1"])
            .0
    );
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/telemetry t0", "things/D1/telemetry t1"]);
    // The registry saw the device (presence is written in batches, within moments).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.devices_json("D1")["last_seen_at"].as_i64().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "last_seen_at was never set"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_device_subscribes_to_its_own_topics_with_mqtt5() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-V",
            "mqttv5",
            "-t",
            "things/D1/commands/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    settle();
    assert!(
        s.mosquitto_pub(
            &svc,
            &[
                "-V",
                "mqttv5",
                "-t",
                "things/D1/commands/reboot",
                "-m",
                "now",
                "-q",
                "1"
            ]
        )
        .0
    );
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/commands/reboot now"]);
}

#[test]
fn retained_messages_reach_late_subscribers_and_survive_a_restart() {
    let mut s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    assert!(
        s.mosquitto_pub(
            &d1,
            &["-t", "things/D1/config", "-m", "v42", "-q", "1", "-r"]
        )
        .0
    );
    let (ok, lines, err) = s
        .mosquitto_sub(
            &svc,
            "svc-1",
            &[
                "-t",
                "things/D1/config",
                "--retained-only",
                "-C",
                "1",
                "-W",
                "5",
            ],
        )
        .wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/config v42"]);
    s.restart();
    let (ok, lines, err) = s
        .mosquitto_sub(
            &svc,
            "svc-1",
            &[
                "-t",
                "things/D1/config",
                "--retained-only",
                "-C",
                "1",
                "-W",
                "5",
            ],
        )
        .wait();
    assert!(ok, "after restart: {err}");
    assert_eq!(lines, ["things/D1/config v42"]);
    // An empty retained message clears it.
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/config", "-n", "-r", "-q", "1"])
            .0
    );
    let (_, lines, _) = s
        .mosquitto_sub(
            &svc,
            "svc-1",
            &[
                "-t",
                "things/D1/config",
                "--retained-only",
                "-C",
                "1",
                "-W",
                "2",
            ],
        )
        .wait();
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn a_persistent_session_receives_what_it_missed_after_reconnecting() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    // Subscribe with a persistent session (-c), then go away.
    let (ok, _, err) = s
        .mosquitto_sub(&svc, "svc-1", &["-c", "-q", "1", "-t", "things/D1/#", "-E"])
        .wait();
    assert!(ok, "{err}");
    assert!(
        s.mosquitto_pub(
            &d1,
            &["-t", "things/D1/alarm", "-m", "while-away", "-q", "1"]
        )
        .0
    );
    let (ok, lines, err) = s
        .mosquitto_sub(
            &svc,
            "svc-1",
            &["-c", "-q", "1", "-t", "things/D1/#", "-C", "1", "-W", "5"],
        )
        .wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/alarm while-away"]);
}

#[test]
fn a_will_is_published_when_a_device_drops_off() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let watcher = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/D1/status", "-C", "1", "-W", "10"],
    );
    let mut device = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "things/D1/commands",
            "--will-topic",
            "things/D1/status",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ],
    );
    settle();
    settle();
    // The device vanishes without DISCONNECT.
    let _ = device.child.kill();
    let (ok, lines, err) = watcher.wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/status offline"]);
}

#[test]
fn a_shared_subscription_spreads_messages_over_its_members() {
    let s = Server::start(Backend::Sqlite);
    let a = s.service("svc-a");
    let b = s.device("svc-b");
    assert!(
        s.cli(&["policy", "attach", "backend", "--device", "svc-b"])
            .status
            .success()
    );
    let d1 = s.device("D1");
    let sa = s.mosquitto_sub(
        &a,
        "svc-a",
        &[
            "-t",
            "$share/workers/things/+/telemetry",
            "-q",
            "1",
            "-W",
            "4",
        ],
    );
    let sb = s.mosquitto_sub(
        &b,
        "svc-b",
        &[
            "-t",
            "$share/workers/things/+/telemetry",
            "-q",
            "1",
            "-W",
            "4",
        ],
    );
    settle();
    // One connection, ten messages (a device may connect about once a second).
    let lines: String = (0..10).map(|i| format!("m{i}\n")).collect();
    assert!(s.mosquitto_pub_lines(&d1, "things/D1/telemetry", &lines));
    let la = sa.wait_for_lines(5, Duration::from_secs(3));
    let lb = sb.wait_for_lines(5, Duration::from_secs(3));
    assert_eq!(la.len() + lb.len(), 10, "{la:?} {lb:?}");
    assert_eq!(la.len(), 5, "round-robin over two members: {la:?}");
}

#[test]
fn presence_events_follow_a_device_with_the_aws_fields() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &[
            "-t",
            "$aws/events/presence/+/D1",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "10",
        ],
    );
    settle();
    assert!(s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "hi"]).0);
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err}");
    let parse = |l: &str| -> (String, serde_json::Value) {
        let (topic, json) = l.split_once(' ').unwrap();
        (topic.to_string(), serde_json::from_str(json).unwrap())
    };
    let (t0, connected) = parse(&lines[0]);
    let (t1, disconnected) = parse(&lines[1]);
    assert_eq!(t0, "$aws/events/presence/connected/D1");
    assert_eq!(t1, "$aws/events/presence/disconnected/D1");
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["clientId"], "D1");
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    assert!(
        connected["timestamp"].as_i64().unwrap() > 1_700_000_000_000,
        "milliseconds"
    );
    assert_eq!(
        disconnected["disconnectReason"],
        "CLIENT_INITIATED_DISCONNECT"
    );
    assert_eq!(disconnected["clientInitiatedDisconnect"], true);
    assert_eq!(connected["versionNumber"], disconnected["versionNumber"]);
    assert_eq!(connected["principalIdentifier"].as_str().unwrap().len(), 64);
}

// ---- refusals ----

#[test]
fn a_certificate_from_another_ca_cannot_connect() {
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
        "/CN=D9",
        "-days",
        "2",
        "-keyout",
        &p("rogue.key"),
        "-out",
        &p("rogue.pem"),
    ]);
    let rogue = Identity {
        name: "D9".into(),
        cert: dir.join("rogue.pem"),
        key: dir.join("rogue.key"),
    };
    let (ok, err) = s.mosquitto_pub(&rogue, &["-t", "things/D9/x", "-m", "x"]);
    assert!(!ok);
    assert!(err.contains("rror"), "{err}");
}

#[test]
fn an_expired_certificate_cannot_connect() {
    let s = Server::start(Backend::Sqlite);
    let ca = onramp_pki::CertificateAuthority::load(&s.data.join("ca")).unwrap();
    let d = device_csr(s.dir.path(), "old", "/CN=OLD-1");
    let csr = onramp_pki::parse_csr(&std::fs::read(&d.csr_der).unwrap()).unwrap();
    let two_years_ago = onramp_service::now() - 2 * 365 * 86_400;
    let cert = ca
        .issue_device_cert(&csr, "OLD-1", "OLD-1", 30, two_years_ago)
        .unwrap();
    let pem = s.path("old.pem");
    std::fs::write(&pem, cert.pem).unwrap();
    let id = Identity {
        name: "OLD-1".into(),
        cert: pem,
        key: d.key,
    };
    let (ok, _) = s.mosquitto_pub(&id, &["-t", "things/OLD-1/x", "-m", "x"]);
    assert!(!ok, "an expired certificate fails the TLS handshake");
}

fn assert_refused(s: &Server, id: &Identity, client_id: &str) -> String {
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &s.mqtt_port.to_string(),
            "--cafile",
            s.root_pem.to_str().unwrap(),
        ])
        .args([
            "--cert",
            id.cert.to_str().unwrap(),
            "--key",
            id.key.to_str().unwrap(),
            "-i",
            client_id,
        ])
        .args(["-t", &format!("things/{}/x", id.name), "-m", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_revoked_certificate_is_refused_at_connect() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let serial = s.certs_of("D1")[0]["serial"].as_str().unwrap().to_string();
    assert!(
        s.cli(&["cert", "revoke", &serial, "--reason", "keyCompromise"])
            .status
            .success()
    );
    let err = assert_refused(&s, &d1, "D1");
    assert!(err.contains("not authorised"), "{err}");
}

#[test]
fn a_suspended_device_is_refused_at_connect() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    assert!(s.cli(&["device", "suspend", "D1"]).status.success());
    let err = assert_refused(&s, &d1, "D1");
    assert!(err.contains("not authorised"), "{err}");
    assert!(s.cli(&["device", "reactivate", "D1"]).status.success());
    assert!(s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "back"]).0);
}

#[test]
fn a_device_reconnecting_in_a_tight_loop_is_throttled() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let results: Vec<(bool, String)> = (0..8)
        .map(|_| s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "x"]))
        .collect();
    assert!(results[..5].iter().all(|(ok, _)| *ok));
    let refused: Vec<&String> = results[5..]
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, e)| e)
        .collect();
    assert!(!refused.is_empty(), "no throttling");
    assert!(
        refused.iter().all(|e| e.contains("unavailable")),
        "{refused:?}"
    );
    // Another device is not affected.
    let d2 = s.device("D2");
    assert!(s.mosquitto_pub(&d2, &["-t", "things/D2/x", "-m", "x"]).0);
}

#[test]
fn a_client_id_other_than_the_thing_name_is_refused() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let err = assert_refused(&s, &d1, "D2");
    assert!(err.contains("identifier rejected"), "{err}");
}

#[test]
fn publishing_outside_the_policy_closes_the_connection_and_nothing_leaks() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    s.device("D2");
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/#", "-t", "$aws/things/#", "-W", "3"],
    );
    settle();
    // Another device's topic, a wildcard-looking one, and a server-only event topic.
    for topic in [
        "things/D2/telemetry",
        "$aws/things/D2/shadow/update",
        "$aws/events/presence/connected/D2",
        "other/topic",
    ] {
        let _ = s.mosquitto_pub(&d1, &["-t", topic, "-m", "forged", "-q", "1"]);
    }
    let (_, lines, _) = sub.wait();
    assert!(
        lines.iter().all(|l| !l.contains("forged")),
        "leaked: {lines:?}"
    );
}

#[test]
fn mqtt5_gets_a_not_authorized_puback_for_a_foreign_topic() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(&svc, "svc-1", &["-t", "things/#", "-W", "3"]);
    settle();
    let (ok, err) = s.mosquitto_pub(
        &d1,
        &[
            "-V",
            "mqttv5",
            "-t",
            "things/D2/telemetry",
            "-m",
            "forged",
            "-q",
            "1",
        ],
    );
    assert!(!ok || err.contains("authori"), "{err}");
    let (_, lines, _) = sub.wait();
    assert!(lines.is_empty(), "leaked: {lines:?}");
}

#[test]
fn subscribing_outside_the_policy_is_refused_filter_by_filter() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    s.device("D2");
    // One SUBSCRIBE with six filters, each of which reaches beyond the device.
    let mut args = Vec::new();
    for filter in [
        "things/D2/#",
        "things/+/telemetry",
        "#",
        "+/D2/#",
        "$aws/things/+/shadow/#",
        "$share/g/things/D1/#",
    ] {
        args.extend(["-t", filter]);
    }
    args.extend(["-W", "2"]);
    let (_, lines, err) = s.mosquitto_sub(&d1, "D1", &args).wait();
    assert!(
        err.contains("All subscription requests were denied"),
        "{err}"
    );
    assert!(lines.is_empty());
    // Its own topics are fine (the subscription is acknowledged; -E exits then).
    let (ok, _, err) = s
        .mosquitto_sub(
            &d1,
            "D1",
            &[
                "-t",
                "things/D1/#",
                "-t",
                "$aws/things/D1/shadow/get/+",
                "-E",
            ],
        )
        .wait();
    assert!(ok, "{err}");
}

#[test]
fn tenants_do_not_see_each_others_topics() {
    let s = Server::start(Backend::Sqlite);
    assert!(s.cli(&["tenant", "create", "acme"]).status.success());
    let svc = s.service("svc-1");
    // An acme service with the same broad policy, in its own tenant.
    let token = s.cli_json(&[
        "--tenant", "acme", "token", "create", "--serial", "acme-svc",
    ])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let acme = s.device_with_token("acme-svc", &token);
    let policy = s.path("backend-policy.json");
    assert!(
        s.cli(&[
            "--tenant",
            "acme",
            "policy",
            "create",
            "backend",
            "--document",
            policy.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert!(
        s.cli(&[
            "--tenant", "acme", "policy", "attach", "backend", "--device", "acme-svc"
        ])
        .status
        .success()
    );
    let d1 = s.device("D1");
    let ours = s.mosquitto_sub(&svc, "svc-1", &["-t", "things/#", "-C", "1", "-W", "5"]);
    let theirs = s.mosquitto_sub(&acme, "acme-svc", &["-t", "things/#", "-W", "3"]);
    settle();
    assert!(
        s.mosquitto_pub(
            &d1,
            &["-t", "things/D1/telemetry", "-m", "private", "-q", "1"]
        )
        .0
    );
    let (ok, lines, err) = ours.wait();
    assert!(ok, "{err}");
    assert_eq!(lines, ["things/D1/telemetry private"]);
    let (_, leaked, _) = theirs.wait();
    assert!(leaked.is_empty(), "crossed tenants: {leaked:?}");
}

#[test]
fn revoking_a_certificate_drops_its_live_connection() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let mut sub = s.mosquitto_sub(&d1, "D1", &["-t", "things/D1/#", "-W", "30"]);
    settle();
    assert!(sub.child.try_wait().unwrap().is_none(), "connected");
    let serial = s.certs_of("D1")[0]["serial"].as_str().unwrap().to_string();
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        &format!("/api/v1/certificates/{serial}/revoke"),
        &key,
        Some("{}"),
    );
    assert_eq!(r.status, 200);
    let revoked_at = Instant::now();
    // mosquitto_sub reconnects after a drop; each reconnect is refused. The
    // first drop is what is measured: the server log shows it.
    let deadline = revoked_at + Duration::from_secs(5);
    while Instant::now() < deadline
        && !s
            .server_log()
            .contains("closed connections of a revoked or inactive identity")
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    let elapsed = revoked_at.elapsed();
    assert!(
        s.server_log()
            .contains("closed connections of a revoked or inactive identity"),
        "the live connection was not cut"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "cut after {elapsed:?}"
    );
    let _ = sub.child.kill();
}

#[test]
fn suspending_a_device_drops_its_live_connection() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let _sub = s.mosquitto_sub(&d1, "D1", &["-t", "things/D1/#", "-W", "30"]);
    settle();
    assert!(s.cli(&["device", "suspend", "D1"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !s
            .server_log()
            .contains("closed connections of a revoked or inactive identity")
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        s.server_log()
            .contains("closed connections of a revoked or inactive identity")
    );
}

#[test]
fn garbage_on_the_mqtt_port_is_dropped_without_harm() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    // A TLS client that speaks no MQTT, then random bytes.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "head -c 4096 /dev/urandom | timeout 5 openssl s_client -quiet -connect localhost:{} -CAfile {} -cert {} -key {} 2>/dev/null; true",
            s.mqtt_port,
            s.root_pem.display(),
            d1.cert.display(),
            d1.key.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    // The server is still there for well-behaved clients.
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "still-up"])
            .0
    );
}

#[test]
fn an_oversize_payload_closes_the_connection_and_is_not_delivered() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(&svc, "svc-1", &["-t", "things/#", "-W", "3"]);
    settle();
    let big = s.path("big.bin");
    std::fs::write(&big, vec![b'x'; 200 * 1024]).unwrap();
    let _ = s.mosquitto_pub(
        &d1,
        &[
            "-V",
            "mqttv5",
            "-t",
            "things/D1/blob",
            "-f",
            big.to_str().unwrap(),
            "-q",
            "1",
        ],
    );
    let (_, lines, _) = sub.wait();
    assert!(lines.is_empty(), "an oversize message was delivered");
    // A payload within the limit goes through.
    let ok = s.path("ok.bin");
    std::fs::write(&ok, vec![b'y'; 100 * 1024]).unwrap();
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/#", "-C", "1", "-W", "5", "-N"],
    );
    settle();
    assert!(
        s.mosquitto_pub(
            &d1,
            &[
                "-t",
                "things/D1/blob",
                "-f",
                ok.to_str().unwrap(),
                "-q",
                "1"
            ]
        )
        .0
    );
    let (done, lines, err) = sub.wait();
    assert!(done, "{err}");
    assert_eq!(lines.len(), 1);
}

#[test]
fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_MQTT__HANDSHAKE_TIMEOUT_SECS", "1")],
        None,
    );
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", s.mqtt_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    use std::io::Read;
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes the silent connection");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn gateway_metrics_count_connections_messages_and_denials() {
    let s = Server::start(Backend::Sqlite);
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/#", "-q", "1", "-C", "1", "-W", "5"],
    );
    settle();
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/t", "-m", "x", "-q", "1"])
            .0
    );
    assert!(sub.wait().0);
    let _ = s
        .mosquitto_sub(&d1, "D1", &["-t", "things/D2/#", "-W", "1"])
        .wait();
    let m = s.curl(&[&s.url("/metrics")]).text();
    for needle in [
        "onramp_mqtt_connects_total{outcome=\"accepted\"}",
        "onramp_mqtt_messages_in_total{qos=\"1\"}",
        "onramp_mqtt_messages_out_total{qos=\"1\"}",
        "onramp_mqtt_policy_denials_total{action=\"subscribe\"}",
        "onramp_mqtt_connections",
    ] {
        assert!(m.contains(needle), "{needle} missing from\n{m}");
    }
}
