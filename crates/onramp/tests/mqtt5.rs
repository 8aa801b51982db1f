//! The broker's MQTT 5 features and QoS 2, against the running server:
//! `tests/paho/broker_check.py` drives paho-mqtt 2.x (and, where the wire
//! itself is checked, a raw MQTT 5 client) for one feature per test; these
//! tests start the server, enrol two identities allowed to publish,
//! subscribe, receive and retain on `things/...`, and judge the result.
//!
//! The Python clients must be installed: `scripts/services.sh` puts them in `.venv/`.

mod support;

use std::process::Command;
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

/// The keep-alive ceiling these tests configure, checked as Server Keep Alive.
const MAX_KEEP_ALIVE: &str = "60";

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

/// Starts a server (with `extra` settings), enrols the two identities and
/// runs one check; returns the server for a look at its metrics.
fn run(check: &str, extra: &[(&str, &str)]) -> Server {
    let py = python_with(&["paho.mqtt.client", "paho.mqtt.subscribeoptions"]);
    let mut env = vec![
        // Checks reconnect one identity several times a second.
        ("ONRAMP_MQTT__RATE_PER_IDENTITY__PER_SECOND", "1000"),
        ("ONRAMP_MQTT__RATE_PER_IDENTITY__BURST", "1000"),
        ("ONRAMP_MQTT__MAX_KEEP_ALIVE_SECS", MAX_KEEP_ALIVE),
    ];
    env.extend_from_slice(extra);
    let s = Server::start_with(backend(), &env, None);
    let a = s.device("c1");
    let b = s.device("c2");
    let policy = s.path("broker-test.json");
    std::fs::write(&policy, POLICY).unwrap();
    cli_ok(
        &s,
        &[
            "policy",
            "create",
            "broker-test",
            "--document",
            policy.to_str().unwrap(),
        ],
    );
    for thing in ["c1", "c2"] {
        cli_ok(&s, &["policy", "attach", "broker-test", "--device", thing]);
    }
    let mut cmd = Command::new(py);
    cmd.arg(CHECK_SCRIPT)
        .args(["--check", check])
        .args(["--host", "localhost", "--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .args(["--max-keep-alive", MAX_KEEP_ALIVE]);
    for (role, id) in [("a", &a), ("b", &b)] {
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
    s
}

/// The value of one metric series.
fn metric(s: &Server, series: &str) -> f64 {
    let text = s.metrics();
    metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn message_properties_reach_mqtt5_subscribers_and_not_mqtt311_ones() {
    run("properties", &[]);
}

#[test]
fn a_will_carries_its_properties() {
    run("will_properties", &[]);
}

#[test]
fn no_local_subscriptions_skip_the_publishers_own_messages() {
    run("no_local", &[]);
}

#[test]
fn retain_as_published_keeps_the_retain_flag() {
    run("retain_as_published", &[]);
}

#[test]
fn retain_handling_decides_when_retained_messages_are_sent() {
    run("retain_handling", &[]);
}

#[test]
fn expired_messages_are_never_delivered_and_the_rest_count_down() {
    let s = run("message_expiry", &[]);
    // The two queued messages that expired.
    let n = metric(
        &s,
        "onramp_mqtt_messages_undeliverable_total{reason=\"expired\"}",
    );
    assert!(n >= 2.0, "{n}");
}

#[test]
fn the_will_waits_for_its_delay_or_the_session_end() {
    run("will_delay", &[]);
}

#[test]
fn an_expired_session_is_not_resumed_on_reconnect() {
    run("session_expiry", &[]);
}

#[test]
fn qos2_is_delivered_at_the_highest_granted_qos() {
    run("qos2", &[]);
}

#[test]
fn qos2_is_exactly_once_across_reconnects_of_a_persistent_session() {
    run("qos2_reconnect", &[]);
}

#[test]
fn a_message_larger_than_the_clients_maximum_packet_size_is_not_sent() {
    let s = run("max_packet_size", &[]);
    let n = metric(
        &s,
        "onramp_mqtt_messages_undeliverable_total{reason=\"too_large\"}",
    );
    assert_eq!(n, 1.0);
}

#[test]
fn receive_maximum_holds_in_both_directions() {
    run("receive_maximum", &[]);
}

#[test]
fn topic_aliases_work_in_both_directions() {
    run("topic_aliases", &[]);
}

#[test]
fn every_matching_subscription_identifier_is_delivered() {
    run("subscription_ids", &[]);
}

#[test]
fn connack_answers_keep_alive_response_information_and_enhanced_authentication() {
    run("connect_properties", &[]);
}

#[test]
fn aws_strict_refuses_qos2_as_aws_iot_does() {
    run("aws_strict", &[("ONRAMP_MQTT__AWS_STRICT", "true")]);
}
