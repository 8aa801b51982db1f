//! The MQTT gateway against real clients: mosquitto_pub / mosquitto_sub, and
//! paho-mqtt (through `tests/provisioning/claim_client.py`) where a test needs
//! the exact reason code of a PUBACK, SUBACK or DISCONNECT.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/provisioning/claim_client.py"
);

/// Runs `steps` over one paho-mqtt connection as `id` (client id = its name)
/// with MQTT `protocol` "5" or "3"; returns one JSON line per step.
fn paho(s: &Server, id: &Identity, protocol: &str, steps: Value) -> Vec<Value> {
    let out = std::process::Command::new(python_with(PAHO))
        .arg(CLIENT)
        .args(["--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&id.cert)
        .arg("--key")
        .arg(&id.key)
        .args(["--client-id", &id.name, "--protocol", protocol])
        .args(["--steps", &steps.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("the paho-mqtt client did not start: {e}; {PYTHON_FIX}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        lines.first().map(|l| &l["connect"]),
        Some(&json!("ok")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines.len(),
        steps.as_array().map_or(0, Vec::len) + 1,
        "{stdout}"
    );
    lines[1..].to_vec()
}

/// An identity whose policy allows everything, to watch every topic a test
/// expects nothing on (a `#` subscription misses `$` topics, so it names them).
fn spy(s: &Server) -> Identity {
    let id = s.device("spy");
    let policy = s.path("all.json");
    std::fs::write(
        &policy,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#,
    )
    .unwrap();
    for args in [
        &[
            "policy",
            "create",
            "all",
            "--document",
            policy.to_str().unwrap(),
        ][..],
        &["policy", "attach", "all", "--device", "spy"][..],
    ] {
        let out = s.cli(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    id
}

/// The server closed the connection with this MQTT 5 DISCONNECT reason code.
fn assert_disconnected_with(line: &Value, code: u64) {
    assert_eq!(line["disconnected"], true, "{line}");
    assert_eq!(line["disconnect"]["from_server"], true, "{line}");
    assert_eq!(line["disconnect"]["code"], code, "{line}");
}

#[test]
fn devices_publish_to_their_own_topics_and_services_receive_qos0_and_qos1() {
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let mut s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
    let ca = onramp_pki::CertificateAuthority::load(&s.data.join("ca")).unwrap();
    let d = device_csr(s.dir.path(), "old", "/CN=OLD-1");
    let csr = onramp_pki::parse_csr(&std::fs::read(&d.csr_der).unwrap()).unwrap();
    // Valid for one day, of which all but a few seconds have passed.
    let left = 6;
    let issued_at = onramp_service::now() - 86_400 + left;
    let cert = ca
        .issue_device_cert(&csr, "OLD-1", "OLD-1", 1, issued_at)
        .unwrap();
    let expires = cert.not_after;
    // Registered as the device's active certificate, as an enrolment would.
    let url = s.store_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = onramp_store::open(&url).await.unwrap();
        let now = onramp_service::now();
        store
            .commit_enrolment(&onramp_store::EnrolmentCommit {
                tenant: "default".into(),
                thing_name: "OLD-1".into(),
                serial_number: "OLD-1".into(),
                profile: Default::default(),
                token_id: None,
                // No token is consumed, so no retry will look for the key.
                public_key_sha256: String::new(),
                supersede: onramp_store::Supersede::AllActive,
                certificate: onramp_store::NewCertificate {
                    serial: cert.serial.clone(),
                    fingerprint: cert.fingerprint.clone(),
                    pem: cert.pem.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                },
                audit: onramp_domain::AuditEntry {
                    id: 0,
                    tenant: "default".into(),
                    actor: "test".into(),
                    action: "est.simpleenroll".into(),
                    target: "device:OLD-1".into(),
                    source: "local".into(),
                    outcome: onramp_domain::Outcome::Success,
                    detail: String::new(),
                    at: now,
                },
                now,
            })
            .await
            .unwrap();
    });
    assert_eq!(s.certs_of("OLD-1")[0]["status"], "active");
    let pem = s.path("old.pem");
    std::fs::write(&pem, &cert.pem).unwrap();
    let id = Identity {
        name: "OLD-1".into(),
        cert: pem,
        key: d.key,
    };
    // The control: while it is valid, the registered certificate connects.
    let (ok, err) = s.mosquitto_pub(&id, &["-t", "things/OLD-1/x", "-m", "x"]);
    assert!(ok, "a registered, unexpired certificate connects: {err}");
    // Then it expires, and nothing else changes.
    while onramp_service::now() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, err) = s.mosquitto_pub(&id, &["-t", "things/OLD-1/x", "-m", "x"]);
    assert!(!ok, "an expired certificate connected");
    let handshake_failed = |l: &str| l.contains("MQTT TLS handshake failed");
    let log = s.server_log_once(handshake_failed, Duration::from_secs(10));
    let refusal = log
        .lines()
        .find(|l| handshake_failed(l))
        .unwrap_or_default();
    assert!(
        refusal.to_lowercase().contains("expired"),
        "refused at the TLS handshake for its expiry: {err}\n{refusal}"
    );
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
    let d1 = s.device("D1");
    assert!(s.cli(&["device", "suspend", "D1"]).status.success());
    let err = assert_refused(&s, &d1, "D1");
    assert!(err.contains("not authorised"), "{err}");
    assert!(s.cli(&["device", "reactivate", "D1"]).status.success());
    // The suspension reaches the live cut through the identity feed, which a
    // loaded machine may read after the reactivation: a connection made in
    // that moment is cut once (fail-closed). The device must be back within
    // a few attempts, at the per-identity connect rate of 1/s.
    let back = (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "back"]).0
    });
    assert!(back, "a reactivated device could not connect");
}

#[test]
fn a_device_reconnecting_in_a_tight_loop_is_throttled() {
    let s = Server::start(backend());
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
    let s = Server::start(backend());
    let d1 = s.device("D1");
    let err = assert_refused(&s, &d1, "D2");
    assert!(err.contains("identifier rejected"), "{err}");
}

#[test]
fn publishing_outside_the_policy_closes_the_connection_and_nothing_leaks() {
    let s = Server::start(backend());
    let spy = spy(&s);
    let d1 = s.device("D1");
    s.device("D2");
    // Another device's topic, its shadow, a server-only event topic, a foreign tree.
    let forbidden = [
        "things/D2/telemetry",
        "$aws/things/D2/shadow/update",
        "$aws/events/presence/connected/D2",
        "other/topic",
    ];
    // Before each forged message, and once after the last, D1 sends a control
    // message on its own topic: all of them must arrive, none of the forged.
    let sub = s.mosquitto_sub(
        &spy,
        "spy",
        &[
            "-t",
            "things/#",
            "-t",
            "$aws/things/#",
            "-t",
            "$aws/events/presence/connected/D2",
            "-t",
            "other/#",
            "-C",
            &(forbidden.len() + 1).to_string(),
            "-W",
            "20",
        ],
    );
    settle();
    for (i, topic) in forbidden.iter().enumerate() {
        // MQTT 3.1.1 has no negative PUBACK: the refusal is the closed connection.
        let r = paho(
            &s,
            &d1,
            "3",
            json!([
                {"op": "publish", "topic": "things/D1/control", "payload": format!("control-{i}")},
                {"op": "publish", "topic": topic, "payload": "forged"}
            ]),
        );
        assert_eq!(r[0]["puback"], 0, "{topic}: {r:?}");
        assert_eq!(r[0]["disconnected"], false, "{topic}: {r:?}");
        assert_eq!(r[1]["puback"], Value::Null, "{topic}: {r:?}");
        assert_eq!(
            r[1]["disconnected"], true,
            "{topic}: the connection stayed open: {r:?}"
        );
        // Waits out the per-thing connect rate (1/s after a burst of 5).
        std::thread::sleep(Duration::from_millis(1100));
    }
    let last = s.mosquitto_pub(
        &d1,
        &["-t", "things/D1/control", "-m", "control-end", "-q", "1"],
    );
    assert!(last.0, "{}", last.1);
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err} {lines:?}");
    let mut want: Vec<String> = (0..forbidden.len())
        .map(|i| format!("things/D1/control control-{i}"))
        .collect();
    want.push("things/D1/control control-end".into());
    assert_eq!(lines, want, "leaked or lost");
    let log = s.server_log();
    for topic in forbidden {
        assert!(
            log.lines()
                .any(|l| l.contains("publish denied by policy") && l.contains(topic)),
            "no denial logged for {topic}"
        );
    }
}

#[test]
fn mqtt5_gets_a_not_authorized_puback_for_a_foreign_topic() {
    let s = Server::start(backend());
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    let sub = s.mosquitto_sub(&svc, "svc-1", &["-t", "things/#", "-C", "2", "-W", "10"]);
    settle();
    let r = paho(
        &s,
        &d1,
        "5",
        json!([
            {"op": "publish", "topic": "things/D1/telemetry", "payload": "control-1"},
            {"op": "publish", "topic": "things/D2/telemetry", "payload": "forged"},
            // QoS 0 has no acknowledgement: a refused one is dropped, the connection stays.
            {"op": "publish", "topic": "things/D2/telemetry", "payload": "forged", "qos": 0},
            {"op": "publish", "topic": "things/D1/telemetry", "payload": "control-2"}
        ]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
    assert_eq!(r[1]["puback"], 135, "PUBACK Not authorized: {r:?}");
    assert_eq!(r[1]["refused"], true, "{r:?}");
    assert_eq!(r[2]["disconnected"], false, "{r:?}");
    assert_eq!(r[3]["puback"], 0, "the connection stays usable: {r:?}");
    assert_eq!(r[3]["disconnected"], false, "{r:?}");
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err} {lines:?}");
    assert_eq!(
        lines,
        [
            "things/D1/telemetry control-1",
            "things/D1/telemetry control-2"
        ],
        "leaked or lost"
    );
}

#[test]
fn a_topic_over_256_bytes_gets_disconnect_144() {
    let s = Server::start(backend());
    let d1 = s.device("D1");
    let topic = |len: usize| {
        let prefix = "things/D1/";
        format!("{prefix}{}", "t".repeat(len - prefix.len()))
    };
    let r = paho(
        &s,
        &d1,
        "5",
        json!([
            {"op": "publish", "topic": topic(256)},
            {"op": "publish", "topic": topic(257)}
        ]),
    );
    assert_eq!(r[0]["puback"], 0, "256 bytes is within AWS's limit: {r:?}");
    assert_eq!(r[1]["puback"], Value::Null, "{r:?}");
    assert_disconnected_with(&r[1], 144);
    // MQTT 3.1.1 has no DISCONNECT from the server: the connection is closed.
    std::thread::sleep(Duration::from_millis(1100));
    let r = paho(
        &s,
        &d1,
        "3",
        json!([
            {"op": "publish", "topic": topic(256)},
            {"op": "publish", "topic": topic(257)}
        ]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
    assert_eq!(r[1]["puback"], Value::Null, "{r:?}");
    assert_eq!(r[1]["disconnected"], true, "{r:?}");
}

#[test]
fn subscribing_outside_the_policy_is_refused_filter_by_filter() {
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    // A device of acme's that publishes (the service's own client id is busy
    // with its subscription).
    let token = s.cli_json(&[
        "--tenant", "acme", "token", "create", "--serial", "acme-dev",
    ])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let acme_dev = s.device_with_token("acme-dev", &token);
    let d1 = s.device("D1");
    // Each side counts exactly the messages of its own tenant; one from the
    // other tenant would take a place in its list.
    let ours = s.mosquitto_sub(&svc, "svc-1", &["-t", "things/#", "-C", "2", "-W", "10"]);
    let theirs = s.mosquitto_sub(
        &acme,
        "acme-svc",
        &["-t", "things/#", "-C", "1", "-W", "10"],
    );
    settle();
    let publish = |id: &Identity, topic: &str, payload: &str| {
        let (ok, err) = s.mosquitto_pub(id, &["-t", topic, "-m", payload, "-q", "1"]);
        assert!(ok, "{topic}: {err}");
    };
    publish(&d1, "things/D1/telemetry", "private");
    publish(&acme_dev, "things/acme-dev/telemetry", "acme-only");
    publish(&d1, "things/D1/telemetry", "private-2");
    let (ok, lines, err) = ours.wait();
    assert!(ok, "{err} {lines:?}");
    assert_eq!(
        lines,
        [
            "things/D1/telemetry private",
            "things/D1/telemetry private-2"
        ],
        "crossed tenants or lost"
    );
    let (ok, lines, err) = theirs.wait();
    assert!(ok, "{err} {lines:?}");
    assert_eq!(
        lines,
        ["things/acme-dev/telemetry acme-only"],
        "crossed tenants or lost"
    );
}

/// TLS session resumption skips the client certificate: the ticket stands in
/// for it. A resumed session must still be refused once its certificate is
/// revoked. The client is OpenSSL (Python's ssl), resuming by ticket.
#[test]
fn a_resumed_tls_session_is_refused_once_its_certificate_is_revoked() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::start(backend());
    let d1 = s.device("D1");
    let mut child = std::process::Command::new(python())
        .arg(repo_root().join("tests/interop/tls_resume.py"))
        .args(["localhost", &s.mqtt_port.to_string()])
        .arg(&s.root_pem)
        .arg(&d1.cert)
        .arg(&d1.key)
        .arg("D1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = |what: &str| {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "tls_resume.py ended before {what}");
        l.trim().to_string()
    };
    assert_eq!(line("the full handshake"), "full resumed=False connack 0");
    // The control: while the certificate is good, the ticket resumes and
    // the resumed session is admitted.
    assert_eq!(line("the control"), "control resumed=True connack 0");
    assert_eq!(line("ready"), "ready");
    let serial = s.certs_of("D1")[0]["serial"].as_str().unwrap().to_string();
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        &format!("/api/v1/certificates/{serial}/revoke"),
        &key,
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    let last = line("the attempt after revocation");
    assert!(child.wait().unwrap().success());
    // Resumed (the ticket is still good for TLS) yet refused by MQTT.
    assert!(
        last.starts_with("after-revocation resumed=True ") && !last.ends_with("connack 0"),
        "{last}"
    );
}

#[test]
fn revoking_a_certificate_drops_its_live_connection() {
    let s = Server::start(backend());
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
    let s = Server::start(backend());
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
    let s = Server::start(backend());
    let d1 = s.device("D1");
    // A TLS client that speaks no MQTT: random bytes after the handshake. The
    // server must close the connection: `timeout` ends openssl with 124 if not.
    let started = Instant::now();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "head -c 4096 /dev/urandom | timeout 10 openssl s_client -quiet -verify_return_error -connect localhost:{} -CAfile {} -cert {} -key {}",
            s.mqtt_port,
            s.root_pem.display(),
            d1.cert.display(),
            d1.key.display()
        ))
        .output()
        .unwrap();
    let code = out.status.code();
    assert_ne!(
        code,
        Some(124),
        "the server kept the connection open: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(9));
    // The bytes reached the MQTT layer (the TLS handshake completed) and were
    // refused there.
    let log = s.server_log();
    assert!(
        !log.contains("MQTT TLS handshake failed"),
        "the handshake failed, so no garbage reached MQTT:\n{log}"
    );
    assert!(
        metric_value(
            &s.metrics(),
            "onramp_mqtt_connects_total{outcome=\"not_mqtt\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{log}"
    );
    // The server is still there for well-behaved clients.
    assert!(
        s.mosquitto_pub(&d1, &["-t", "things/D1/x", "-m", "still-up"])
            .0
    );
}

#[test]
fn an_oversize_payload_closes_the_connection_and_is_not_delivered() {
    let s = Server::start(backend());
    let svc = s.service("svc-1");
    let d1 = s.device("D1");
    // Topic and payload length of each message: the 200 KiB one would show up
    // between the two controls.
    let sub = s.mosquitto_sub(
        &svc,
        "svc-1",
        &["-t", "things/#", "-C", "2", "-W", "15", "-F", "%t %l"],
    );
    settle();
    let r = paho(
        &s,
        &d1,
        "5",
        json!([
            {"op": "publish", "topic": "things/D1/blob", "size": 100 * 1024},
            {"op": "publish", "topic": "things/D1/blob", "size": 200 * 1024}
        ]),
    );
    assert_eq!(
        r[0]["puback"], 0,
        "a payload within the limit goes through: {r:?}"
    );
    assert_eq!(r[1]["puback"], Value::Null, "{r:?}");
    // DISCONNECT 149: Packet too large.
    assert_disconnected_with(&r[1], 149);
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, err) = s.mosquitto_pub(&d1, &["-t", "things/D1/blob", "-m", "y", "-q", "1"]);
    assert!(ok, "{err}");
    let (done, lines, err) = sub.wait();
    assert!(done, "{err} {lines:?}");
    assert_eq!(lines, ["things/D1/blob 102400", "things/D1/blob 1"]);
}

#[test]
fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let s = Server::start_with(
        backend(),
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
    let s = Server::start(backend());
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
    let m = s.metrics();
    // Every series exists from the start at zero: these must have counted.
    for series in [
        "onramp_mqtt_connects_total{outcome=\"accepted\"}",
        "onramp_mqtt_messages_in_total{qos=\"1\"}",
        "onramp_mqtt_messages_out_total{qos=\"1\"}",
        "onramp_mqtt_policy_denials_total{action=\"subscribe\"}",
    ] {
        assert!(
            metric_value(&m, series).is_some_and(|n| n >= 1.0),
            "{series} not counted in\n{m}"
        );
    }
    assert!(metric_value(&m, "onramp_mqtt_connections").is_some(), "{m}");
}

#[test]
fn a_client_connecting_to_an_ip_address_causes_no_tls_warning() {
    let s = Server::start(backend());
    let d1 = s.device("D1");
    // mosquitto puts the address it connects to in SNI, even an IP address
    // (RFC 6066 forbids it); the server must take that quietly.
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&d1.cert)
        .arg("--key")
        .arg(&d1.key)
        .args(["-i", "D1", "-t", "things/D1/x", "-m", "by-ip", "-q", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = s.server_log();
    // The control: the connection is in the log, so the log is being read.
    assert!(
        log.lines()
            .any(|l| l.contains("MQTT client connected") && l.contains("D1")),
        "{log}"
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("SNI"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_full_session_queue_drops_the_oldest_and_counts_each_drop() {
    // Two queued messages at most for a session whose client is away.
    let s = Server::start_with(backend(), &[("ONRAMP_MQTT__MAX_QUEUED", "2")], None);
    let d1 = s.device("D1");
    let svc = s.service("svc-q");
    // A persistent session subscribed at QoS 1, then gone (-E: exit once
    // the subscription is acknowledged).
    let first = s.mosquitto_sub(&svc, "svc-q", &["-c", "-q", "1", "-t", "things/D1/q", "-E"]);
    let (ok, _, err) = first.wait();
    assert!(ok, "{err}");
    let series = "onramp_mqtt_messages_dropped_total{reason=\"queue_full\"}";
    assert_eq!(metric_value(&s.metrics(), series), Some(0.0));
    assert!(s.mosquitto_pub_lines(&d1, "things/D1/q", "m1\nm2\nm3\nm4\nm5\n"));
    // Five for a queue of two: the three oldest are dropped, and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(&s.metrics(), series) != Some(3.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric_value(&s.metrics(), series),
        Some(3.0),
        "{}",
        s.metrics()
    );
    // The session resumes with the two newest.
    let back = s.mosquitto_sub(
        &svc,
        "svc-q",
        &["-c", "-q", "1", "-t", "things/D1/q", "-C", "2", "-W", "10"],
    );
    let (ok, lines, err) = back.wait();
    assert!(ok, "{err}");
    assert_eq!(lines, vec!["things/D1/q m4", "things/D1/q m5"], "{err}");
}

/// Holds the registry's write lock on the shadows for `hold`, from another
/// process (SQLite: a `BEGIN IMMEDIATE` on the database file; PostgreSQL: an
/// EXCLUSIVE lock on the table); returns once the lock is held.
fn hold_shadow_writes(s: &Server, hold: Duration) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let url = s.store_url();
    let script = match url.strip_prefix("sqlite://") {
        Some(path) => format!(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect({path:?}, isolation_level=None, timeout=10)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep({secs})\n\
             c.execute('COMMIT')\n",
            secs = hold.as_secs_f64()
        ),
        None => format!(
            "import subprocess, sys\n\
             p = subprocess.Popen(['psql', {url:?}, '-v', 'ON_ERROR_STOP=1', '-q', '-f', '-'],\n\
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n\
             p.stdin.write('BEGIN;\\nLOCK TABLE shadows IN EXCLUSIVE MODE;\\n\\\\echo locked\\n')\n\
             p.stdin.flush()\n\
             assert p.stdout.readline().strip() == 'locked'\n\
             print('locked', flush=True)\n\
             p.stdin.write('SELECT pg_sleep({secs});\\nCOMMIT;\\n')\n\
             p.stdin.close()\n\
             p.wait()\n",
            secs = hold.as_secs_f64()
        ),
    };
    let mut child = std::process::Command::new(python())
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked", "the lock holder did not start");
    child
}

#[test]
fn telemetry_flows_while_a_shadow_update_of_the_same_connection_waits_on_storage() {
    let s = Server::start(backend());
    let d1 = s.device("D1");
    let watcher = s.service("WATCH");
    let telemetry = s.mosquitto_sub(
        &watcher,
        "WATCH",
        &[
            "-t",
            "things/D1/telemetry",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "20",
        ],
    );
    settle();
    let hold = Duration::from_secs(6);
    let mut holder = hold_shadow_writes(&s, hold);
    let locked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let update = r#"{"state":{"reported":{"fan":"on"}},"clientToken":"held"}"#;
    // One connection: the shadow update (its PUBACK follows the durable
    // write, so it waits for the lock), then telemetry, which must not.
    let r = paho(
        &s,
        &d1,
        "3",
        json!([
            {"op": "publish", "topic": "$aws/things/D1/shadow/update", "payload": update, "wait": false},
            {"op": "publish", "topic": "things/D1/telemetry", "payload": "t1"},
            {"op": "publish", "topic": "things/D1/telemetry", "payload": "t2"},
            {"op": "await", "step": 0},
        ]),
    );
    holder.wait().unwrap();
    let released_at = locked_at + hold.as_secs_f64();
    for t in &r[1..3] {
        assert_eq!(t["puback"], json!(0), "{r:?}");
        let at = t["at"].as_f64().unwrap();
        assert!(
            at < released_at - 1.5,
            "telemetry acknowledged at {at}, the lock held from {locked_at} to {released_at}: {r:?}"
        );
    }
    let lines = telemetry.wait_for_lines(2, Duration::from_secs(1));
    assert_eq!(
        lines,
        ["things/D1/telemetry t1", "things/D1/telemetry t2"],
        "telemetry reached its subscriber in order while the update waited"
    );
    // The update went through once the lock was let go.
    assert_eq!(r[3]["puback"], json!(0), "{r:?}");
    assert!(
        r[3]["at"].as_f64().unwrap() >= released_at - 0.5,
        "the update was acknowledged before its write could be made: {r:?}"
    );
    let key = s.api_key("operator");
    let doc = s.api("GET", "/api/v1/things/D1/shadow", &key, None).json();
    assert_eq!(doc["state"]["reported"]["fan"], "on", "{doc}");
}
