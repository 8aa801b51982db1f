//! The Eclipse Paho MQTT interoperability suite (`client_test.py` for MQTT
//! 3.1.1, `client_test5.py` for MQTT 5) against Onramp over mutual TLS.
//!
//! The suite is not part of this repository: it is read from its pinned
//! checkout at `../shared/third_party/paho.mqtt.testing` beside the project
//! (or `ONRAMP_PAHO_SUITE`). `tests/interop/paho_run.py` runs each test in a
//! process of its own with a time limit, its sockets wrapped in TLS with a
//! device certificate by `tests/interop/paho_tls_shim.py`.
//!
//! The identity is deliberately permissive, as a general-purpose broker's
//! test user would be: client ids are not tied to the thing name, every topic
//! is allowed, and subscribing to `test/nosubscribe` is denied (the suite's
//! subscribe-failure test expects that refusal).
//!
//! What is asserted, test by test: every test named in
//! `tests/interop/paho-expected.json` passes. A test that starts passing is
//! reported so that it can be added there; the file only grows.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use support::*;

const PERMISSIVE_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "iot:Subscribe",
     "Resource": "arn:aws:iot:*:*:topicfilter/test/nosubscribe"}
  ]
}"#;

/// Each test waits on the broker; the slowest passing ones take about 20 s
/// on a loaded machine.
const PER_TEST_TIMEOUT_SECS: &str = "40";

fn suite_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ONRAMP_PAHO_SUITE") {
        return PathBuf::from(dir).join("interoperability");
    }
    let candidates = [
        repo_root().join("../shared/third_party/paho.mqtt.testing"),
        PathBuf::from("/work/shared/third_party/paho.mqtt.testing"),
    ];
    for c in &candidates {
        if c.join("interoperability/client_test5.py").is_file() {
            return c.join("interoperability");
        }
    }
    panic!(
        "the Paho interoperability suite is not at ../shared/third_party/paho.mqtt.testing \
         beside the project; set ONRAMP_PAHO_SUITE to its checkout"
    );
}

fn expected() -> BTreeMap<String, Vec<String>> {
    let path = repo_root().join("tests/interop/paho-expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one shard of one suite against a fresh server and checks it.
fn run_shard(suite: &str, shard: &str) {
    let suite_dir = suite_dir();
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            ("ONRAMP_MQTT__REQUIRE_CLIENT_ID_MATCH", "false"),
            ("ONRAMP_MQTT__RATE_PER_SOURCE__PER_SECOND", "100000"),
            ("ONRAMP_MQTT__RATE_PER_SOURCE__BURST", "100000"),
            ("ONRAMP_MQTT__RATE_PER_IDENTITY__PER_SECOND", "100000"),
            ("ONRAMP_MQTT__RATE_PER_IDENTITY__BURST", "100000"),
            // The suite's Server Keep Alive test expects a server that
            // allows at most 60 s (it asks for 120).
            ("ONRAMP_MQTT__MAX_KEEP_ALIVE_SECS", "60"),
        ],
        None,
    );
    let id = s.device("paho-interop");
    let policy = s.path("paho-policy.json");
    std::fs::write(&policy, PERMISSIVE_POLICY).unwrap();
    for args in [
        vec![
            "policy",
            "create",
            "paho",
            "--document",
            policy.to_str().unwrap(),
        ],
        vec!["policy", "attach", "paho", "--device", "paho-interop"],
    ] {
        let out = s.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let json = s.path(&format!("paho-{suite}.json"));
    let logs = s.path("paho-logs");
    let out = Command::new(python())
        .arg(repo_root().join("tests/interop/paho_run.py"))
        .args(["--suite", suite, "--shard", shard])
        .arg("--suite-dir")
        .arg(&suite_dir)
        .args(["--host", "127.0.0.1", "--port", &s.mqtt_port.to_string()])
        .arg("--cert")
        .arg(&id.cert)
        .arg("--key")
        .arg(&id.key)
        .arg("--ca")
        .arg(&s.root_pem)
        .args(["--timeout", PER_TEST_TIMEOUT_SECS])
        .arg("--json")
        .arg(&json)
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .unwrap_or_else(|e| panic!("python paho_run.py: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho_run.py failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");

    let results: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let outcomes = results[suite].as_object().expect("results for the suite");
    assert!(!outcomes.is_empty(), "no test ran:\n{stdout}");
    let must_pass = expected().remove(suite).unwrap_or_default();
    let unknown: Vec<&String> = must_pass
        .iter()
        .filter(|name| !outcomes.contains_key(*name))
        .collect();
    assert!(
        unknown.is_empty(),
        "paho-expected.json names tests the {suite} suite does not have: {unknown:?}"
    );
    let mut regressions = Vec::new();
    for (name, outcome) in outcomes {
        let outcome = outcome.as_str().unwrap_or("?");
        if outcome == "not-run" {
            continue;
        }
        let listed = must_pass.contains(name);
        if listed && outcome != "pass" {
            let log = std::fs::read_to_string(logs.join(format!("{suite}.{name}.log")))
                .unwrap_or_default();
            regressions.push(format!("{name}: {outcome}\n{log}"));
        } else if !listed && outcome == "pass" {
            println!("{suite} {name} now passes: add it to tests/interop/paho-expected.json");
        }
    }
    assert!(
        regressions.is_empty(),
        "Paho {suite} tests that must pass did not:\n{}\n--- server log (tail) ---\n{}",
        regressions.join("\n"),
        s.server_log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Both suites in shards, each against a server of its own, all at once:
/// most of a test's time is spent waiting on the broker or on the suite's
/// own pauses, not on the cores, and the test harness would otherwise run
/// only as many tests at a time as there are cores.
#[test]
fn paho_interoperability_suites() {
    let shards: Vec<(&str, String)> = (1..=2)
        .map(|k| ("v311", format!("{k}/2")))
        .chain((1..=7).map(|k| ("v5", format!("{k}/7"))))
        .collect();
    let running: Vec<_> = shards
        .into_iter()
        .map(|(suite, shard)| {
            let name = format!("{suite} shard {shard}");
            (name, std::thread::spawn(move || run_shard(suite, &shard)))
        })
        .collect();
    let failed: Vec<String> = running
        .into_iter()
        .filter_map(|(name, handle)| handle.join().err().map(|_| name))
        .collect();
    assert!(
        failed.is_empty(),
        "Paho shards failed (see above): {failed:?}"
    );
}
