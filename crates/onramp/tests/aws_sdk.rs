//! Device shadows against the AWS IoT Device SDK for Python: the device uses
//! the SDK's MQTT 5 and MQTT 3.1.1 builders and its shadow client with only
//! the endpoint, port and CA changed; `tests/aws_sdk/shadow_check.py` runs the
//! checks and sets desired state through the REST API. This test starts the
//! server, enrols the device and judges the script's exit status.
//!
//! The SDK must be installed: `scripts/services.sh` puts it in `.venv/`.

mod support;

use std::process::Command;
use support::*;

const CHECK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/aws_sdk/shadow_check.py"
);

/// `ok ...` lines of a complete run: connect and six checks, per protocol.
const CHECKS: usize = 14;

const INSTALL_HINT: &str = PYTHON_FIX;

/// Fails (never skips) when Python or the SDK is missing.
fn require_sdk() {
    let probe = "import awsiot, awscrt, awsiot.iotshadow, awsiot.mqtt5_client_builder, \
                 awsiot.mqtt_connection_builder\n\
                 assert hasattr(awsiot.iotshadow, 'IotShadowClientV2'), 'awsiotsdk without IotShadowClientV2'";
    match Command::new(python()).args(["-c", probe]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{} cannot import the AWS IoT Device SDK; {INSTALL_HINT}\n{}",
            python().display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "{} could not be started ({e}); {INSTALL_HINT}",
            python().display()
        ),
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
    let out = Command::new(python())
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
        .unwrap_or_else(|e| panic!("python {CHECK_SCRIPT}: {e}"));
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

const FLEET_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/aws_sdk/fleet_check.py"
);

/// A fleet template as an AWS IoT user would write it: the thing is named
/// from the SerialNumber parameter and may use `device/<thing>/...` only.
const FLEET_TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {
      "ThingName": {"Fn::Join": ["", ["sdk-", {"Ref": "SerialNumber"}]]},
      "AttributePayload": {"serial": {"Ref": "SerialNumber"}}}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"]},
      {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": ["arn:aws:iot:*:*:topic/device/${iot:Connection.Thing.ThingName}/*"]},
      {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": ["arn:aws:iot:*:*:topicfilter/device/${iot:Connection.Thing.ThingName}/*"]}]}}}
  },
  "DeviceConfiguration": {"interval": "60"}
}"#;

#[test]
fn aws_iot_device_sdk_fleet_provisioning_works_against_onramp() {
    require_sdk();
    let s = Server::start(Backend::Sqlite);
    let body = s.path("fleet.json");
    std::fs::write(&body, FLEET_TEMPLATE).unwrap();
    let out = s.cli(&[
        "template",
        "create",
        "sdk",
        "--body",
        body.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claim_dir = s.path("claim");
    let out = s.cli(&[
        "claim",
        "create",
        "--template",
        "sdk",
        "--out",
        claim_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr_key = s.path("dev.key");
    let csr = s.path("dev.csr");
    let o = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        csr_key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        "/CN=device",
    ]);
    assert!(o.status.success());
    let out_dir = s.path("issued");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new(python())
        .arg(FLEET_SCRIPT)
        .args(["--port", &s.mqtt_port.to_string()])
        .arg("--ca")
        .arg(&s.root_pem)
        .arg("--claim-cert")
        .arg(claim_dir.join("claim.pem"))
        .arg("--claim-key")
        .arg(claim_dir.join("claim.key"))
        .args(["--template", "sdk", "--serial-prefix", "fc"])
        .arg("--csr")
        .arg(&csr)
        .arg("--csr-key")
        .arg(&csr_key)
        .arg("--out-dir")
        .arg(&out_dir)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("python {FLEET_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "fleet_check.py: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log ---\n{}",
        out.status,
        tail(&s.server_log(), 60)
    );
    assert!(out.status.success(), "{report}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        10,
        "{report}"
    );
    // Every registration the SDK saw is in the registry: the thing and its active certificate.
    let things: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("thing "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2], f[3])
        })
        .collect();
    assert_eq!(things.len(), 4, "{report}");
    for (thing, cert_id) in things {
        let certs = s.certs_of(thing);
        assert_eq!(certs.len(), 1, "{thing}");
        assert_eq!(certs[0]["status"], "active");
        assert_eq!(certs[0]["fingerprint"], cert_id);
    }
    print!("{stdout}");
}
