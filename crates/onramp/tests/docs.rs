//! The examples in `docs/provisioning.md`, run as written: the fleet
//! template and the operator's set-up commands, then a device provisions
//! through them (paho-mqtt, one connection).

mod support;

use serde_json::{Value, json};
use std::process::Command;
use support::*;

const DOC: &str = include_str!("../../../docs/provisioning.md");
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/provisioning/claim_client.py"
);

/// The fenced block after `<!-- example: NAME -->`.
fn example(name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/provisioning.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    body.split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string()
}

#[test]
fn the_provisioning_guide_examples_work() {
    let s = Server::start(Backend::Sqlite);
    let work = s.path("docs");
    std::fs::create_dir_all(&work).unwrap();
    let template = example("fleet-template");
    serde_json::from_str::<Value>(&template).expect("the example template is JSON");
    std::fs::write(work.join("pumps.json"), &template).unwrap();
    std::fs::write(work.join("pumps-v2.json"), &template).unwrap();
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &example("fleet-setup")])
        .current_dir(&work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_DATA_DIR", &s.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = s.cli_json(&["template", "show", "pumps"]);
    assert_eq!(shown["template"]["default_version"], 2);
    let run = |serial: &str| -> Vec<Value> {
        let steps = json!([
            {"op": "create"},
            {"op": "register", "template": "pumps", "parameters": {"SerialNumber": serial}}
        ]);
        let out = Command::new(python_with(PAHO))
            .arg(CLIENT)
            .args(["--port", &s.mqtt_port.to_string()])
            .arg("--cafile")
            .arg(work.join("claim/ca.pem"))
            .arg("--cert")
            .arg(work.join("claim/claim.pem"))
            .arg("--key")
            .arg(work.join("claim/claim.key"))
            .args(["--client-id", "line-7", "--steps", &steps.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let lines = run("P-0001");
    assert_eq!(lines[0]["connect"], "ok", "{lines:?}");
    assert_eq!(
        lines[2]["topic"], "$aws/provisioning-templates/pumps/provision/json/accepted",
        "{lines:?}"
    );
    let reply = &lines[2]["payload"];
    assert_eq!(reply["thingName"], "pump-P-0001");
    assert_eq!(
        reply["deviceConfiguration"],
        json!({"broker": "eu-1", "interval": "60"})
    );
    let device = s.cli_json(&["device", "show", "pump-P-0001"]);
    let device = if device.get("device").is_some() {
        device["device"].clone()
    } else {
        device
    };
    assert_eq!(device["thing_groups"], json!(["pumps", "berlin"]));
    // The deny-list of the set-up block.
    let lines = run("P-0666");
    assert_eq!(
        lines[2]["payload"]["errorCode"], "AccessDenied",
        "{lines:?}"
    );
}
