//! Persistent MQTT sessions survive `kill -9`: the real `onramp serve` is
//! killed with SIGKILL (no shutdown path runs) and started again on the same
//! store, and raw MQTT 5 clients (`tests/paho/broker_check.py`) check that
//! what Onramp acknowledged for a persistent session is still there: QoS 1
//! and QoS 2 messages queued for an absent subscriber are each delivered
//! once, a QoS 2 message received up to PUBREC only gets its PUBREL again,
//! and a publisher resending an unreleased QoS 2 PUBLISH after the restart
//! does not have it routed twice. A session that expired while the server
//! was down is not resumed, and its will goes out. Per-policy AWS strict
//! mode is checked here too, with a thing under a strict policy beside one
//! that is not. On SQLite, and on PostgreSQL with `ONRAMP_TEST_STORE=postgres`.
//!
//! The Python clients must be installed: `scripts/services.sh` puts them in `.venv/`.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const CHECK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/paho/broker_check.py"
);

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/things/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"],
     "Resource": "arn:aws:iot:*:*:topic/things/*"}
  ]
}"#;

/// The same grants, with AWS strict mode asked for.
const STRICT_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "OnrampAwsStrict": true,
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/things/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/things/*"}
  ]
}"#;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn cli_ok(s: &Server, args: &[&str]) {
    let out = s.cli(args);
    assert!(
        out.status.success(),
        "onramp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start() -> Server {
    Server::start_with(
        backend(),
        &[
            ("ONRAMP_MQTT__RATE_PER_IDENTITY__PER_SECOND", "1000"),
            ("ONRAMP_MQTT__RATE_PER_IDENTITY__BURST", "1000"),
        ],
        None,
    )
}

/// Enrols `a` and `b` and attaches a policy to each.
fn identities(s: &Server, a_policy: &str, b_policy: &str) -> (Identity, Identity) {
    let a = s.device("p1");
    let b = s.device("p2");
    for (name, doc) in [("persist-a", a_policy), ("persist-b", b_policy)] {
        let path = s.path(&format!("{name}.json"));
        std::fs::write(&path, doc).unwrap();
        cli_ok(
            s,
            &[
                "policy",
                "create",
                name,
                "--document",
                path.to_str().unwrap(),
            ],
        );
    }
    cli_ok(s, &["policy", "attach", "persist-a", "--device", "p1"]);
    cli_ok(s, &["policy", "attach", "persist-b", "--device", "p2"]);
    (a, b)
}

fn check(s: &Server, a: &Identity, b: &Identity, check: &str) {
    let py = python_with(&["paho.mqtt.client", "paho.mqtt.subscribeoptions"]);
    let mut cmd = Command::new(py);
    cmd.arg(CHECK_SCRIPT)
        .args(["--check", check])
        .args(["--host", "localhost", "--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem);
    for (role, id) in [("a", a), ("b", b)] {
        cmd.arg(format!("--{role}-cert"))
            .arg(&id.cert)
            .arg(format!("--{role}-key"))
            .arg(&id.key)
            .arg(format!("--{role}-id"))
            .arg(&id.name);
    }
    let out = cmd
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("python {CHECK_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {check}")),
        "broker_check.py --check {check}: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log (last lines) ---\n{}",
        out.status,
        tail(&s.server_log(), 80)
    );
}

#[test]
fn qos1_and_qos2_are_exactly_once_across_a_kill_9_restart_of_persistent_sessions() {
    let mut s = start();
    let (a, b) = identities(&s, POLICY, POLICY);
    check(&s, &a, &b, "restart_before");
    // Killed as soon as the last acknowledgement is out: what was
    // acknowledged must already be durable.
    s.kill();
    s.start_again();
    check(&s, &a, &b, "restart_after");
}

#[test]
fn a_session_that_expired_while_the_server_was_down_is_not_resumed_and_its_will_goes_out() {
    let mut s = start();
    let (a, b) = identities(&s, POLICY, POLICY);
    check(&s, &a, &b, "expired_before");
    // The server sees the connection drop (its will waits for the session's
    // end, 2 s on) before it is killed; it stays down past the expiry.
    std::thread::sleep(Duration::from_millis(800));
    s.kill();
    std::thread::sleep(Duration::from_secs(3));
    s.start_again();
    check(&s, &a, &b, "expired_after");
}

#[test]
fn a_strict_policy_refuses_qos2_to_its_things_only() {
    let s = start();
    let (a, b) = identities(&s, STRICT_POLICY, POLICY);
    check(&s, &a, &b, "strict_policy");
}
