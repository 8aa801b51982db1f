//! The MQTT gateway against the Python paho-mqtt client, over MQTT 3.1.1 and
//! MQTT 5: `tests/paho/gateway_check.py` runs the checks; these tests start
//! the server, enrol the identities it needs and judge its exit status.
//!
//! paho-mqtt must be installed: `scripts/services.sh` puts it in `.venv/`.

mod support;

use std::process::Command;
use support::*;

const CHECK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/paho/gateway_check.py"
);

/// How many `ok ...` lines a complete run prints.
const CHECKS: usize = 10;

const INSTALL_HINT: &str = PYTHON_FIX;

/// Fails (never skips) when Python or paho-mqtt 2 is missing.
fn require_paho() {
    let probe = "import paho.mqtt, paho.mqtt.client, paho.mqtt.enums\n\
                 assert paho.mqtt.__version__.startswith('2.'), paho.mqtt.__version__";
    match Command::new(python()).args(["-c", probe]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{} cannot import paho-mqtt 2.x; {INSTALL_HINT}\n{}",
            python().display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "{} could not be started ({e}); {INSTALL_HINT}",
            python().display()
        ),
    }
}

struct Identities {
    device: Identity,
    other: String,
    service: Identity,
    service2: Identity,
}

/// A device, another thing it may not reach, and two back-end services (the
/// gateway requires client id == thing name, so two connections need two).
fn enrol(s: &Server) -> Identities {
    let device = s.device("D1");
    let other = s.device("D2").name;
    let service = s.service("svc-1");
    let service2 = s.device("svc-2");
    let out = s.cli(&["policy", "attach", "backend", "--device", "svc-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Identities {
        device,
        other,
        service,
        service2,
    }
}

fn identity_args(role: &str, id: &Identity) -> Vec<String> {
    vec![
        format!("--{role}-cert"),
        id.cert.display().to_string(),
        format!("--{role}-key"),
        id.key.display().to_string(),
        format!("--{role}-id"),
        id.name.clone(),
    ]
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run_checks(protocol: &str) {
    require_paho();
    let s = Server::start(Backend::Sqlite);
    let ids = enrol(&s);
    let out = Command::new(python())
        .arg(CHECK_SCRIPT)
        .args(["--host", "localhost", "--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .args(["--protocol", protocol])
        .args(identity_args("device", &ids.device))
        .args(identity_args("service", &ids.service))
        .args(identity_args("service2", &ids.service2))
        .args(["--other-id", &ids.other])
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("python {CHECK_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "gateway_check.py --protocol {protocol}: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log (last lines) ---\n{}",
            out.status,
            tail(&s.server_log(), 60)
        )
    };
    assert!(out.status.success(), "{}", report());
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, CHECKS, "{}", report());
    print!("{stdout}");
}

#[test]
fn paho_mqtt311_interoperates_with_the_gateway() {
    run_checks("311");
}

#[test]
fn paho_mqtt5_interoperates_with_the_gateway() {
    run_checks("5");
}
