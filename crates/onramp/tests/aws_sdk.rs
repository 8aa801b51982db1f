//! Device shadows against the AWS IoT Device SDK for Python: the device uses
//! the SDK's MQTT 5 and MQTT 3.1.1 builders and its shadow client with only
//! the endpoint, port and CA changed; `tests/aws_sdk/shadow_check.py` runs the
//! checks and sets desired state through the REST API. This test starts the
//! server, enrols the device and judges the script's exit status.
//!
//! The SDK must be installed: `pip install -r tests/requirements.txt`.

mod support;

use std::process::Command;
use support::*;

const CHECK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/aws_sdk/shadow_check.py"
);

/// `ok ...` lines of a complete run: connect and six checks, per protocol.
const CHECKS: usize = 14;

const INSTALL_HINT: &str = "run `pip install -r tests/requirements.txt` (awsiotsdk)";

/// Fails (never skips) when python3 or the SDK is missing.
fn require_sdk() {
    let probe = "import awsiot, awscrt, awsiot.iotshadow, awsiot.mqtt5_client_builder, \
                 awsiot.mqtt_connection_builder\n\
                 assert hasattr(awsiot.iotshadow, 'IotShadowClientV2'), 'awsiotsdk without IotShadowClientV2'";
    match Command::new("python3").args(["-c", probe]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import the AWS IoT Device SDK; {INSTALL_HINT}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 could not be started ({e}); install Python 3 and {INSTALL_HINT}"),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn aws_iot_device_sdk_shadow_client_works_against_onramp() {
    require_sdk();
    let s = Server::start(Backend::Sqlite);
    let device = s.device("D1");
    let key = s.api_key("operator");
    let out = Command::new("python3")
        .arg(CHECK_SCRIPT)
        .args(["--port", &s.mqtt_port.to_string()])
        .args(["--https-url", &s.url("")])
        .args(["--api-key", &key])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&device.cert)
        .arg("--key")
        .arg(&device.key)
        .args(["--thing", &device.name])
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("python3 {CHECK_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "shadow_check.py: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log (last lines) ---\n{}",
            out.status,
            tail(&s.server_log(), 60)
        )
    };
    assert!(out.status.success(), "{}", report());
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, CHECKS, "{}", report());
    print!("{stdout}");
}
