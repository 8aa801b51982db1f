//! Fleet provisioning by claim and JITP against the real server, driven by
//! clients nobody here wrote: paho-mqtt (through
//! `tests/provisioning/claim_client.py`, one connection per script),
//! mosquitto_pub/sub, openssl and curl. Every refusal also shows that
//! nothing was created.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/provisioning/claim_client.py"
);

const TEMPLATE: &str = r#"{
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "Site": {"Type": "String", "Default": "fab-1"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Mappings": {"Sites": {"fab-1": {"Url": "https://fab-1.example"}, "fab-2": {"Url": "https://fab-2.example"}}},
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]},
        "AttributePayload": {"serial": {"Ref": "SerialNumber"}, "site": {"Ref": "Site"}},
        "ThingTypeName": "sensor",
        "ThingGroups": ["fleet", {"Ref": "Site"}]
      },
      "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "MERGE", "ThingTypeName": "REPLACE"}
    },
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"]},
      {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": ["arn:aws:iot:*:*:topic/device/${iot:Connection.Thing.ThingName}/*"]},
      {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": ["arn:aws:iot:*:*:topicfilter/device/${iot:Connection.Thing.ThingName}/*"]}
    ]}}}
  },
  "DeviceConfiguration": {"interval": "60", "url": {"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Url"]}}
}"#;

const JITP_TEMPLATE: &str = r#"{
  "Parameters": {
    "AWS::IoT::Certificate::CommonName": {"Type": "String"},
    "AWS::IoT::Certificate::SerialNumber": {"Type": "String"},
    "AWS::IoT::Certificate::Organization": {"Type": "String", "Default": "none"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {
      "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
      "AttributePayload": {"maker": {"Ref": "AWS::IoT::Certificate::Organization"}, "serial": {"Ref": "AWS::IoT::Certificate::SerialNumber"}},
      "ThingTypeName": "meter"}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":[\"iot:Connect\"],\"Resource\":[\"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}\"]},{\"Effect\":\"Allow\",\"Action\":[\"iot:Publish\"],\"Resource\":[\"arn:aws:iot:*:*:topic/meters/${iot:Connection.Thing.ThingName}\"]}]}"}}
  }
}"#;

struct Claim {
    serial: String,
    identity: Identity,
}

fn setup_template(s: &Server, name: &str, body: &str, extra: &[&str]) {
    let path = s.path(&format!("{name}.json"));
    std::fs::write(&path, body).unwrap();
    let mut args = vec!["template", "create", name, "--body", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = s.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn claim(s: &Server, template: &str, dir: &str) -> Claim {
    let out_dir = s.path(dir);
    let v = s.cli_json(&[
        "claim",
        "create",
        "--template",
        template,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    Claim {
        serial: v["serial"].as_str().unwrap().to_string(),
        identity: Identity {
            name: format!("claim-{dir}"),
            cert: out_dir.join("claim.pem"),
            key: out_dir.join("claim.key"),
        },
    }
}

/// Runs the scripted client; returns its JSON lines after the connect line.
fn run_client(
    s: &Server,
    id: &Identity,
    client_id: &str,
    protocol: &str,
    steps: Value,
) -> Vec<Value> {
    let out = Command::new(python_with(PAHO))
        .arg(CLIENT)
        .args(["--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&id.cert)
        .arg("--key")
        .arg(&id.key)
        .args(["--client-id", client_id, "--protocol", protocol])
        .args(["--steps", &steps.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{CLIENT}: {e}; {PYTHON_FIX}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty(),
        "claim_client printed nothing: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.server_log()
    );
    lines
}

fn steps_ok(s: &Server, id: &Identity, steps: Value) -> Vec<Value> {
    steps_ok_as(s, id, "factory-1", steps)
}

fn steps_ok_as(s: &Server, id: &Identity, client_id: &str, steps: Value) -> Vec<Value> {
    let lines = run_client(s, id, client_id, "5", steps);
    assert_eq!(lines[0]["connect"], "ok", "{lines:?}");
    lines[1..].to_vec()
}

fn accepted(v: &Value) -> &Value {
    assert!(
        v["topic"].as_str().unwrap_or("").ends_with("/accepted"),
        "expected an accepted reply: {v}"
    );
    &v["payload"]
}

fn rejected(v: &Value) -> &Value {
    assert!(
        v["topic"].as_str().unwrap_or("").ends_with("/rejected"),
        "expected a rejected reply: {v}"
    );
    &v["payload"]
}

fn device_count(s: &Server) -> usize {
    s.cli_json(&["device", "list", "--limit", "1000"])["items"]
        .as_array()
        .unwrap()
        .len()
}

fn cert_count(s: &Server) -> usize {
    s.cli_json(&["cert", "list", "--limit", "1000"])["items"]
        .as_array()
        .unwrap()
        .len()
}

fn audit(s: &Server, action: &str) -> Vec<Value> {
    s.cli_json(&["audit", "--action", action, "--limit", "500"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Writes the certificate and key of an accepted CreateKeysAndCertificate.
fn save_identity(s: &Server, name: &str, reply: &Value) -> Identity {
    let cert = s.path(&format!("{name}.pem"));
    let key = s.path(&format!("{name}.key"));
    std::fs::write(&cert, reply["certificatePem"].as_str().unwrap()).unwrap();
    std::fs::write(&key, reply["privateKey"].as_str().unwrap()).unwrap();
    Identity {
        name: name.to_string(),
        cert,
        key,
    }
}

fn fleet_flow(backend: Backend) {
    let s = Server::start(backend);
    setup_template(&s, "fab", TEMPLATE, &[]);
    let c = claim(&s, "fab", "batch-1");
    let params = json!({"SerialNumber": "S1"});
    let r = steps_ok(
        &s,
        &c.identity,
        json!([
            {"op": "create"},
            {"op": "register", "template": "fab", "parameters": params},
            // The reply was lost: the same request again gets the same answer.
            {"op": "register", "template": "fab", "parameters": params},
            // The same token with other parameters is a reuse.
            {"op": "register", "template": "fab", "parameters": {"SerialNumber": "S2"}}
        ]),
    );
    let created = accepted(&r[0]).clone();
    for field in [
        "certificateId",
        "certificatePem",
        "privateKey",
        "certificateOwnershipToken",
    ] {
        assert!(
            created[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {created}"
        );
    }
    let registered = accepted(&r[1]);
    assert_eq!(registered["thingName"], "sensor-S1");
    assert_eq!(registered["deviceConfiguration"]["interval"], "60");
    assert_eq!(
        registered["deviceConfiguration"]["url"],
        "https://fab-1.example"
    );
    assert_eq!(accepted(&r[2]), registered, "a retry gets the same reply");
    assert_eq!(
        rejected(&r[3])["errorCode"],
        "InvalidCertificateOwnershipToken"
    );
    // The registry: one thing, one active certificate, the policy attached.
    assert_eq!(device_count(&s), 1);
    let device = s.devices_json("sensor-S1");
    let device = if device.get("device").is_some() {
        device["device"].clone()
    } else {
        device
    };
    assert_eq!(device["status"], "active");
    assert_eq!(device["device_class"], "sensor");
    assert_eq!(device["attributes"]["site"], "fab-1");
    assert_eq!(device["thing_groups"], json!(["fleet", "fab-1"]));
    let certs = s.certs_of("sensor-S1");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["status"], "active");
    assert_eq!(certs[0]["fingerprint"], created["certificateId"]);
    let policies = s.cli_json(&["policy", "list"])["items"].clone();
    assert!(
        policies
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str().unwrap().starts_with("fab-")),
        "{policies}"
    );
    assert_eq!(audit(&s, "provisioning.register_thing").len(), 1);

    // The device reconnects with its own identity and uses its own topic.
    let me = save_identity(&s, "sensor-S1", &created);
    // Issued before RegisterThing named the thing, so the subject cannot carry it.
    assert!(
        x509_field(&me.cert, "-subject").contains("CN = Onramp provisioned device"),
        "{}",
        x509_field(&me.cert, "-subject")
    );
    // Subscribe and publish on its own topics over one connection (paho); its
    // policy is least privilege: another thing's topic is refused with PUBACK
    // 135 (Not authorized) and the connection stays usable.
    let r = steps_ok_as(
        &s,
        &me,
        "sensor-S1",
        json!([
            {"op": "subscribe", "filter": "device/sensor-S1/+"},
            {"op": "publish", "topic": "device/sensor-S1/telemetry"},
            {"op": "publish", "topic": "device/sensor-S2/telemetry"},
            {"op": "publish", "topic": "device/sensor-S1/telemetry"}
        ]),
    );
    assert_eq!(r[0]["values"], json!([1]), "granted QoS 1: {r:?}");
    assert_eq!(r[1]["puback"], 0, "{r:?}");
    assert_eq!(r[2]["puback"], 135, "another thing's topic: {r:?}");
    assert_eq!(r[3]["puback"], 0, "{r:?}");
    assert_eq!(r[3]["disconnected"], false, "{r:?}");
    let mosq = Identity {
        name: "sensor-S1".into(),
        ..me.clone()
    };
    let (ok, err) = s.mosquitto_pub(
        &mosq,
        &["-t", "device/sensor-S1/telemetry", "-m", "21.5", "-q", "1"],
    );
    assert!(ok, "{err}");
}

#[test]
fn claim_create_keys_register_thing_and_reconnect_sqlite() {
    fleet_flow(Backend::Sqlite);
}

#[test]
fn claim_create_keys_register_thing_and_reconnect_postgres() {
    fleet_flow(Backend::Postgres);
}

#[test]
fn create_certificate_from_csr_then_register_over_mqtt_3() {
    let s = Server::start(backend());
    setup_template(&s, "fab", TEMPLATE, &[]);
    let c = claim(&s, "fab", "batch-1");
    let key = s.path("dev.key");
    let csr = s.path("dev.csr");
    let out = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        "/CN=whatever",
    ]);
    assert!(out.status.success());
    let lines = run_client(
        &s,
        &c.identity,
        "factory-3",
        "3",
        json!([
            {"op": "csr", "csr_file": csr.to_str().unwrap()},
            {"op": "register", "template": "fab", "parameters": {"SerialNumber": "C1", "Site": "fab-2"}}
        ]),
    );
    let created = accepted(&lines[1]);
    assert!(
        created.get("privateKey").is_none(),
        "the key never leaves the device"
    );
    let reg = accepted(&lines[2]);
    assert_eq!(reg["thingName"], "sensor-C1");
    assert_eq!(reg["deviceConfiguration"]["url"], "https://fab-2.example");
    let cert = s.path("c1.pem");
    std::fs::write(&cert, created["certificatePem"].as_str().unwrap()).unwrap();
    let id = Identity {
        name: "sensor-C1".into(),
        cert,
        key,
    };
    let (ok, err) = s.mosquitto_pub(&id, &["-t", "device/sensor-C1/x", "-m", "1", "-q", "1"]);
    assert!(ok, "{err}");
    // A malformed CSR is refused with AWS's error shape.
    let bad = s.path("bad.csr");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let r = steps_ok(
        &s,
        &c.identity,
        json!([{"op": "csr", "csr_file": bad.to_str().unwrap()}]),
    );
    let e = rejected(&r[0]);
    assert_eq!(e["statusCode"], 400);
    assert!(e["errorMessage"].as_str().unwrap().len() > 5);
    assert_eq!(device_count(&s), 1);
}

/// A small HTTP server standing in for a pre-provisioning hook: answers
/// each request with `answer` after `delay`; records request bodies.
fn hook_server(
    answer: &'static str,
    delay: Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // Read headers and a Content-Length body.
                loop {
                    let n = stream.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            record
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&buf[end + 4..]).to_string());
                            break;
                        }
                    }
                }
                std::thread::sleep(delay);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    (url, seen)
}

/// Creates a key and certificate, then RegisterThing with `params`; returns the reply.
fn create_and_register(s: &Server, c: &Claim, template: &str, params: Value) -> Value {
    let r = steps_ok(
        s,
        &c.identity,
        json!([{"op": "create"}, {"op": "register", "template": template, "parameters": params}]),
    );
    accepted(&r[0]);
    r[1].clone()
}

#[test]
fn who_may_provision_allow_list_deny_list_and_hook() {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_PROVISIONING__HOOK_TIMEOUT_SECS", "1")],
        None,
    );
    setup_template(
        &s,
        "listed",
        TEMPLATE,
        &["--allow-serial", "A1,A2", "--deny-serial", "A2"],
    );
    let c = claim(&s, "listed", "batch-l");
    let e = create_and_register(&s, &c, "listed", json!({"SerialNumber": "B9"}));
    assert_eq!(rejected(&e)["statusCode"], 403, "{e}");
    assert!(
        rejected(&e)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("allow-list")
    );
    let e = create_and_register(&s, &c, "listed", json!({"SerialNumber": "A2"}));
    assert!(
        rejected(&e)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("deny-list")
    );
    let e = create_and_register(&s, &c, "listed", json!({}));
    assert_eq!(rejected(&e)["statusCode"], 403);
    assert_eq!(device_count(&s), 0);
    assert_eq!(cert_count(&s), 0);
    let ok = create_and_register(&s, &c, "listed", json!({"SerialNumber": "A1"}));
    assert_eq!(accepted(&ok)["thingName"], "sensor-A1");

    // A hook that says no.
    let (no_url, no_seen) = hook_server(r#"{"allowProvisioning": false}"#, Duration::ZERO);
    setup_template(&s, "hook-no", TEMPLATE, &["--hook-url", &no_url]);
    let c = claim(&s, "hook-no", "batch-n");
    let e = create_and_register(&s, &c, "hook-no", json!({"SerialNumber": "H1"}));
    assert_eq!(rejected(&e)["statusCode"], 403);
    let sent: Value = serde_json::from_str(&no_seen.lock().unwrap()[0]).unwrap();
    for field in [
        "claimCertificateId",
        "certificateId",
        "certificatePem",
        "templateArn",
        "clientId",
    ] {
        assert!(
            sent[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {sent}"
        );
    }
    assert_eq!(sent["parameters"]["SerialNumber"], "H1");
    assert_eq!(sent["clientId"], "factory-1");

    // A hook that is too slow: refused (fails closed).
    let (slow_url, _) = hook_server(r#"{"allowProvisioning": true}"#, Duration::from_secs(3));
    setup_template(&s, "hook-slow", TEMPLATE, &["--hook-url", &slow_url]);
    let c = claim(&s, "hook-slow", "batch-s");
    let e = create_and_register(&s, &c, "hook-slow", json!({"SerialNumber": "H2"}));
    assert!(
        rejected(&e)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{e}"
    );

    // A hook that cannot be reached: refused.
    setup_template(
        &s,
        "hook-down",
        TEMPLATE,
        &["--hook-url", "http://127.0.0.1:9/none"],
    );
    let c = claim(&s, "hook-down", "batch-d");
    let e = create_and_register(&s, &c, "hook-down", json!({"SerialNumber": "H3"}));
    assert_eq!(rejected(&e)["statusCode"], 403);
    assert_eq!(device_count(&s), 1, "only A1 exists");

    // A hook that says yes and overrides a parameter.
    let (yes_url, _) = hook_server(
        r#"{"allowProvisioning": true, "parameterOverrides": {"Site": "fab-2"}}"#,
        Duration::ZERO,
    );
    setup_template(&s, "hook-yes", TEMPLATE, &["--hook-url", &yes_url]);
    let c = claim(&s, "hook-yes", "batch-y");
    let ok = create_and_register(
        &s,
        &c,
        "hook-yes",
        json!({"SerialNumber": "H4", "Site": "fab-1"}),
    );
    assert_eq!(
        accepted(&ok)["deviceConfiguration"]["url"],
        "https://fab-2.example"
    );
    let denied = audit(&s, "provisioning.register_thing")
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .count();
    assert!(denied >= 5, "refusals are audited: {denied}");
}

#[test]
fn ownership_tokens_expire_are_single_use_and_bound_to_their_claim() {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_PROVISIONING__OWNERSHIP_TOKEN_TTL_SECS", "2")],
        None,
    );
    setup_template(&s, "fab", TEMPLATE, &[]);
    let a = claim(&s, "fab", "batch-a");
    let b = claim(&s, "fab", "batch-b");
    // Token of another claim certificate.
    let r = steps_ok(&s, &a.identity, json!([{"op": "create"}]));
    let token = accepted(&r[0])["certificateOwnershipToken"]
        .as_str()
        .unwrap()
        .to_string();
    let r = steps_ok(
        &s,
        &b.identity,
        json!([{"op": "register", "template": "fab", "token": token, "parameters": {"SerialNumber": "X1"}}]),
    );
    assert!(
        rejected(&r[0])["errorMessage"]
            .as_str()
            .unwrap()
            .contains("another claim")
    );
    // A token nobody issued, and an empty one.
    let r = steps_ok(
        &s,
        &a.identity,
        json!([
            {"op": "register", "template": "fab", "token": "forged", "parameters": {"SerialNumber": "X1"}},
            {"op": "register", "template": "fab", "token": "", "parameters": {"SerialNumber": "X1"}}
        ]),
    );
    assert_eq!(
        rejected(&r[0])["errorCode"],
        "InvalidCertificateOwnershipToken"
    );
    assert_eq!(rejected(&r[1])["statusCode"], 400);
    // An expired token.
    let r = steps_ok(
        &s,
        &a.identity,
        json!([
            {"op": "create"},
            {"op": "sleep", "seconds": 3},
            {"op": "register", "template": "fab", "parameters": {"SerialNumber": "X2"}}
        ]),
    );
    // Expired, or already purged as expired: refused either way.
    assert_eq!(
        rejected(&r[2])["errorCode"],
        "InvalidCertificateOwnershipToken",
        "{:?}",
        r[2]
    );
    assert_eq!(device_count(&s), 0);
    assert_eq!(cert_count(&s), 0);
    // The unused pending certificates are revoked and purged.
    let deadline = Instant::now() + Duration::from_secs(15);
    while audit(&s, "certificate.pending_expired").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "pending certificates were not purged"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Revoking a claim certificate cuts its live connections; then it cannot connect at all.
    let live = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            run_client(
                &s,
                &a.identity,
                "factory-9",
                "5",
                json!([{"op": "sleep", "seconds": 4}, {"op": "create"}]),
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let out = s.cli(&["claim", "revoke", &a.serial]);
        assert!(out.status.success());
        client.join().unwrap()
    });
    assert_eq!(live[0]["connect"], "ok", "{live:?}");
    assert_eq!(live[2]["disconnected"], true, "{live:?}");
    let lines = run_client(&s, &a.identity, "factory-1", "5", json!([]));
    assert_ne!(lines[0]["connect"], "ok", "{lines:?}");
}

#[test]
fn a_claim_certificate_may_only_provision() {
    let s = Server::start(backend());
    setup_template(&s, "fab", TEMPLATE, &[]);
    setup_template(&s, "other", TEMPLATE, &[]);
    let c = claim(&s, "fab", "batch-1");
    let r = steps_ok(
        &s,
        &c.identity,
        json!([
            // The control: what the claim policy allows is granted.
            {"op": "subscribe", "filter": "$aws/certificates/create/json/accepted"},
            {"op": "subscribe", "filter": "#"},
            {"op": "subscribe", "filter": "$aws/things/+/shadow/#"},
            {"op": "publish", "topic": "device/sensor-S1/telemetry"},
            {"op": "publish", "topic": "$aws/things/sensor-S1/shadow/update"},
            // Another template's topic: refused by the claim policy.
            {"op": "publish", "topic": "$aws/provisioning-templates/other/provision/json"},
            // An unknown template: refused the same way.
            {"op": "publish", "topic": "$aws/provisioning-templates/nope/provision/json"},
            // Still connected and answered after the refusals.
            {"op": "subscribe", "filter": "$aws/certificates/create/json/rejected"}
        ]),
    );
    assert_eq!(r[0]["values"], json!([1]), "{:?}", r[0]);
    for sub in &r[1..3] {
        // SUBACK 135: Not authorized.
        assert_eq!(sub["values"], json!([135]), "{sub}");
    }
    for p in &r[3..7] {
        // PUBACK 135: Not authorized.
        assert_eq!(p["puback"], 135, "{p}");
    }
    assert_eq!(r[7]["values"], json!([1]), "{:?}", r[7]);
    assert_eq!(r[7]["disconnected"], false, "{:?}", r[7]);
    // Over MQTT 3.1.1 a refused publish closes the connection (after an
    // allowed subscription shows the connection worked).
    let lines = run_client(
        &s,
        &c.identity,
        "factory-2",
        "3",
        json!([
            {"op": "subscribe", "filter": "$aws/certificates/create/json/accepted"},
            {"op": "publish", "topic": "device/x/y"}
        ]),
    );
    assert_eq!(lines[1]["values"], json!([1]), "{lines:?}");
    assert_eq!(lines[1]["disconnected"], false, "{lines:?}");
    assert_eq!(lines[2]["puback"], Value::Null, "{lines:?}");
    assert_eq!(lines[2]["disconnected"], true, "{lines:?}");
    // A disabled template refuses; a missing parameter is named.
    let out = s.cli(&["template", "update", "other", "--disable"]);
    assert!(out.status.success());
    let e = create_and_register(&s, &c, "fab", json!({"Site": "fab-1"}));
    assert!(
        rejected(&e)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("SerialNumber"),
        "{e}"
    );
    assert_eq!(device_count(&s), 0);
    assert_eq!(cert_count(&s), 0);
    // A device certificate does not provision: its create call rotates its
    // own certificate (docs/lifecycle.md), and no thing is created.
    let dev = s.device("D1");
    let lines = run_client(&s, &dev, "D1", "5", json!([{"op": "create"}]));
    assert_eq!(
        lines[1]["topic"].as_str().unwrap_or(""),
        "$aws/certificates/create/json/accepted",
        "{lines:?}"
    );
    assert_eq!(device_count(&s), 1);
    let rotations = s.cli_json(&["cert", "rotations", "D1"]);
    assert_eq!(rotations[0]["status"], "pending", "{rotations}");
}

#[test]
fn provisioning_is_rate_limited_per_claim_and_audited() {
    let s = Server::start_with(
        backend(),
        &[
            ("ONRAMP_PROVISIONING__RATE_PER_CLAIM__PER_SECOND", "0"),
            ("ONRAMP_PROVISIONING__RATE_PER_CLAIM__BURST", "2"),
        ],
        None,
    );
    setup_template(&s, "fab", TEMPLATE, &[]);
    let c = claim(&s, "fab", "batch-1");
    let r = steps_ok(
        &s,
        &c.identity,
        json!([{"op": "create"}, {"op": "create"}, {"op": "create"}]),
    );
    accepted(&r[0]);
    accepted(&r[1]);
    let e = rejected(&r[2]);
    assert_eq!(e["statusCode"], 429);
    assert_eq!(e["errorCode"], "Throttling");
    let throttled = audit(&s, "provisioning.create_keys_and_certificate");
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0]["outcome"], "denied");
    let metrics = s.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "onramp_provisioning_throttled_total{limit=\"claim\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

fn make_maker_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("maker-ca.key");
    let cert = dir.join("maker-ca.pem");
    let out = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "30",
        "-subj",
        "/O=Maker Inc/CN=Maker Device CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn maker_device(dir: &Path, ca: &(PathBuf, PathBuf), cn: &str, serial: &str) -> Identity {
    let key = dir.join(format!("{cn}.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let cert = dir.join(format!("{cn}.pem"));
    let out = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        &format!("/O=Maker Inc/CN={cn}/serialNumber={serial}"),
    ]);
    assert!(out.status.success());
    let ext = dir.join("client.ext");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let out = openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.0.to_str().unwrap(),
        "-CAkey",
        ca.1.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "10",
        "-out",
        cert.to_str().unwrap(),
        "-extfile",
        ext.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Identity {
        name: cn.to_string(),
        cert,
        key,
    }
}

fn wait_trusted(s: &Server, id: &Identity, topic: &str, want: bool) -> bool {
    // The TLS layer reloads registered CAs within a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, _) = s.mosquitto_pub(id, &["-t", topic, "-m", "1", "-q", "1"]);
        if ok == want || Instant::now() > deadline {
            return ok;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn jitp_provisions_a_manufacturer_device_on_first_connection() {
    let s = Server::start(backend());
    let ca = make_maker_ca(s.dir.path());
    setup_template(&s, "maker", JITP_TEMPLATE, &["--kind", "jitp"]);
    let meter = maker_device(s.dir.path(), &ca, "meter-0001", "M-0001");
    // Before the CA is registered the device is refused at TLS.
    let (ok, _) = s.mosquitto_pub(&meter, &["-t", "meters/meter-0001", "-m", "1", "-q", "1"]);
    assert!(!ok);
    assert_eq!(device_count(&s), 0);
    // A CA without proof of possession of the right code is refused.
    let v = s.cli(&[
        "ca",
        "register",
        "--cert",
        ca.0.to_str().unwrap(),
        "--template",
        "maker",
        "--verification-cert",
        meter.cert.to_str().unwrap(),
    ]);
    assert!(!v.status.success());
    let registered = s.cli_json(&[
        "ca",
        "register",
        "--cert",
        ca.0.to_str().unwrap(),
        "--template",
        "maker",
    ]);
    let ca_id = registered["id"].as_str().unwrap().to_string();
    let watcher = s.service("WATCH");
    let events = s.mosquitto_sub(
        &watcher,
        "WATCH",
        &[
            "-t",
            "$aws/events/certificates/registered/+",
            "-C",
            "1",
            "-W",
            "15",
        ],
    );
    settle();
    assert!(
        wait_trusted(&s, &meter, "meters/meter-0001", true),
        "{}",
        s.server_log()
    );
    let device = s.devices_json("meter-0001");
    let device = if device.get("device").is_some() {
        device["device"].clone()
    } else {
        device
    };
    assert_eq!(device["serial_number"], "M-0001");
    assert_eq!(device["attributes"]["maker"], "Maker Inc");
    assert_eq!(device["device_class"], "meter");
    let certs = s.certs_of("meter-0001");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["issuer_ca"], ca_id.as_str());
    let (ok, lines, err) = events.wait();
    assert!(ok, "{err}");
    let event: Value = serde_json::from_str(lines[0].split_once(' ').unwrap().1).unwrap();
    assert_eq!(event["caCertificateId"], ca_id.as_str());
    assert_eq!(event["certificateId"], certs[0]["fingerprint"]);
    // Its policy comes from the template: its own topic is allowed, others
    // are refused with PUBACK 135 (Not authorized).
    let r = steps_ok_as(
        &s,
        &meter,
        "meter-0001",
        json!([
            {"op": "publish", "topic": "meters/meter-0001"},
            {"op": "publish", "topic": "meters/other"}
        ]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
    assert_eq!(r[1]["puback"], 135, "{r:?}");
    // A second connection does not provision again.
    let (ok, err) = s.mosquitto_pub(&meter, &["-t", "meters/meter-0001", "-m", "2", "-q", "1"]);
    assert!(ok, "{err}");
    assert_eq!(audit(&s, "provisioning.jitp").len(), 1);
    assert_eq!(device_count(&s), 2, "the meter and the watcher");
    // With auto-registration off, an unknown device of the CA is refused and nothing is created.
    let out = s.cli(&["ca", "auto-registration", &ca_id, "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = maker_device(s.dir.path(), &ca, "meter-0002", "M-0002");
    let (ok, _) = s.mosquitto_pub(&other, &["-t", "meters/meter-0002", "-m", "1", "-q", "1"]);
    assert!(!ok);
    assert_eq!(device_count(&s), 2);
    // A deactivated CA: its devices are refused from then on, and a live
    // connection is cut.
    let live = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            run_client(
                &s,
                &meter,
                "meter-0001",
                "5",
                json!([{"op": "sleep", "seconds": 4}, {"op": "publish", "topic": "meters/meter-0001"}]),
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let out = s.cli(&["ca", "deactivate", &ca_id]);
        assert!(out.status.success());
        client.join().unwrap()
    });
    assert_eq!(live[0]["connect"], "ok", "{live:?}");
    assert_eq!(live[2]["disconnected"], true, "{live:?}");
    assert!(
        !wait_trusted(&s, &meter, "meters/meter-0001", false),
        "a deactivated CA's device was accepted"
    );
    let out = s.cli(&["ca", "revoke", &ca_id]);
    assert!(out.status.success());
    let out = s.cli(&["ca", "activate", &ca_id]);
    assert!(!out.status.success(), "a revoked CA stays revoked");
}

#[test]
fn a_crash_between_create_and_register_leaves_no_active_certificate_and_the_device_can_retry() {
    let mut s = Server::start(backend());
    setup_template(&s, "fab", TEMPLATE, &[]);
    let c = claim(&s, "fab", "batch-1");
    let r = steps_ok(&s, &c.identity, json!([{"op": "create"}]));
    let created = accepted(&r[0]).clone();
    // SIGKILL: no shutdown path runs.
    s.kill();
    s.start_again();
    assert_eq!(
        cert_count(&s),
        0,
        "no certificate is active without its thing"
    );
    assert_eq!(device_count(&s), 0);
    // The new certificate cannot connect before RegisterThing.
    let early = save_identity(&s, "sensor-K1", &created);
    let (ok, _) = s.mosquitto_pub(&early, &["-t", "device/sensor-K1/x", "-m", "1", "-q", "1"]);
    assert!(!ok, "a pending certificate must not connect");
    // The device retries with the token it holds.
    let token = created["certificateOwnershipToken"].as_str().unwrap();
    let r = steps_ok(
        &s,
        &c.identity,
        json!([{"op": "register", "template": "fab", "token": token, "parameters": {"SerialNumber": "K1"}}]),
    );
    assert_eq!(accepted(&r[0])["thingName"], "sensor-K1");
    let (ok, err) = s.mosquitto_pub(&early, &["-t", "device/sensor-K1/x", "-m", "1", "-q", "1"]);
    assert!(ok, "{err}");
    assert_eq!(cert_count(&s), 1);
}

#[test]
fn claim_certificates_are_listed_rotated_and_reported_before_they_expire() {
    let s = Server::start(backend());
    setup_template(&s, "fab", TEMPLATE, &[]);
    let out_dir = s.path("short");
    let short = s.cli_json(&[
        "claim",
        "create",
        "--template",
        "fab",
        "--validity-days",
        "10",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(out_dir.join("claim.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let long = claim(&s, "fab", "long");
    let report = s.cli(&["--json", "claim", "check-expiry"]);
    assert!(report.status.success());
    let expiring: Value = serde_json::from_slice(&report.stdout).unwrap();
    let serials: Vec<&str> = expiring["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, vec![short["serial"].as_str().unwrap()]);
    assert!(String::from_utf8_lossy(&report.stderr).contains("claim_certificate_expiring"));
    let events = audit(&s, "claim_certificate_expiring");
    assert_eq!(events.len(), 1);
    // A check run by hand is credited to the operator who ran it.
    assert!(
        events[0]["actor"].as_str().unwrap().starts_with("cli:"),
        "{:?}",
        events[0]
    );
    assert_eq!(events[0]["source"], "local", "{:?}", events[0]);
    // Rotation: a new claim for the same template; the old one is refused.
    let rotated = s.cli_json(&[
        "claim",
        "rotate",
        &long.serial,
        "--out",
        s.path("rotated").to_str().unwrap(),
    ]);
    assert_eq!(rotated["template"], "fab");
    let lines = run_client(&s, &long.identity, "f", "5", json!([]));
    assert_ne!(lines[0]["connect"], "ok");
    let new_id = Identity {
        name: "rotated".into(),
        cert: s.path("rotated").join("claim.pem"),
        key: s.path("rotated").join("claim.key"),
    };
    let r = steps_ok(&s, &new_id, json!([{"op": "create"}]));
    accepted(&r[0]);
    let list = s.cli_json(&["claim", "list"])["items"].clone();
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == long.serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");
    assert_eq!(old["replaced_by"], rotated["serial"]);
}

#[test]
fn jitp_can_drop_the_first_connection_like_aws() {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_PROVISIONING__JITP_DROP_FIRST_CONNECTION", "true")],
        None,
    );
    let ca = make_maker_ca(s.dir.path());
    setup_template(&s, "maker", JITP_TEMPLATE, &["--kind", "jitp"]);
    s.cli_json(&[
        "ca",
        "register",
        "--cert",
        ca.0.to_str().unwrap(),
        "--template",
        "maker",
    ]);
    let meter = maker_device(s.dir.path(), &ca, "meter-0009", "M-0009");
    // The first connection registers the device and is refused; the retry is accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        let (ok, err) = s.mosquitto_pub(&meter, &["-t", "meters/meter-0009", "-m", "1", "-q", "1"]);
        if device_count(&s) == 1 || Instant::now() > deadline {
            break (ok, err);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!first.0, "the registering connection is dropped");
    assert_eq!(device_count(&s), 1);
    let (ok, err) = s.mosquitto_pub(&meter, &["-t", "meters/meter-0009", "-m", "2", "-q", "1"]);
    assert!(ok, "{err}");
    assert_eq!(audit(&s, "provisioning.jitp").len(), 1);
}
