//! Certificate rotation that keeps the thing's identity, against the real
//! server: a device connected with its own certificate asks for a new one on
//! the fleet-provisioning topics (paho-mqtt through
//! `tests/provisioning/claim_client.py`), reconnects with it, and the old
//! one is revoked after the grace period (openssl ocsp shows it). Also the
//! refusals, pending expiry, renewal after expiry (MQTT and EST) and bulk
//! rotation as a job (CLI and REST).

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/provisioning/claim_client.py"
);

/// Runs the scripted client as `id` with client id `client_id`; returns its
/// JSON lines, the connect line first.
fn run(s: &Server, id: &Identity, client_id: &str, steps: Value) -> Vec<Value> {
    let out = Command::new(python_with(PAHO))
        .arg(CLIENT)
        .args(["--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&id.cert)
        .arg("--key")
        .arg(&id.key)
        .args(["--client-id", client_id, "--protocol", "5"])
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
        "the client printed nothing: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.server_log()
    );
    lines
}

fn connected(lines: &[Value]) -> bool {
    lines[0]["connect"] == "ok"
}

/// Runs steps that must connect; returns the step lines.
fn steps(s: &Server, id: &Identity, steps: Value) -> Vec<Value> {
    let lines = run(s, id, &id.name, steps);
    assert!(connected(&lines), "{lines:?}\n{}", s.server_log());
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

/// A CSR (PEM) for a fresh key; returns (csr path, key path).
fn new_csr(s: &Server, name: &str) -> (PathBuf, PathBuf) {
    let d = device_csr(s.dir.path(), name, &format!("/CN={name}"));
    let pem = s.path(&format!("{name}.csr.pem"));
    openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        d.csr_der.to_str().unwrap(),
        "-out",
        pem.to_str().unwrap(),
    ]);
    (pem, d.key)
}

/// The identity a rotation reply gives: its certificate with `key`.
fn rotated(s: &Server, thing: &str, file: &str, reply: &Value, key: &Path) -> Identity {
    let cert = s.path(&format!("{file}.pem"));
    std::fs::write(&cert, reply["certificatePem"].as_str().unwrap()).unwrap();
    Identity {
        name: thing.to_string(),
        cert,
        key: key.to_path_buf(),
    }
}

fn rotations(s: &Server, thing: &str) -> Vec<Value> {
    s.cli_json(&["cert", "rotations", thing])
        .as_array()
        .unwrap()
        .clone()
}

fn audit(s: &Server, action: &str) -> Vec<Value> {
    s.cli_json(&["audit", "--action", action, "--limit", "500"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn cert_status(s: &Server, serial: &str) -> String {
    s.cli_json(&["cert", "show", serial])["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn serial_of_pem(pem: &Path) -> String {
    // The registry's form: lowercase hex without leading zero bytes.
    let mut hex = x509_field(pem, "-serial")
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    hex
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

/// `openssl ocsp` about `leaf` at the server's responder: good or revoked.
fn ocsp_status(s: &Server, leaf: &Path) -> String {
    let work = s.path("ocsp");
    std::fs::create_dir_all(&work).unwrap();
    let chain = work.join("chain.pem");
    if !chain.exists() {
        let out = s.cli(&["ca", "export", "--chain", "--out", chain.to_str().unwrap()]);
        assert!(out.status.success());
        let text = std::fs::read_to_string(&chain).unwrap();
        let issuing = text
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .to_string();
        std::fs::write(work.join("issuing.pem"), issuing).unwrap();
    }
    let out = Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(work.join("issuing.pem"))
        .arg("-cert")
        .arg(leaf)
        .args(["-url", &s.url("/ocsp"), "-CAfile"])
        .arg(&s.root_pem)
        .arg("-verify_other")
        .arg(&chain)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains(": "))
        .unwrap_or_default()
        .to_string();
    line.rsplit(": ").next().unwrap_or("").trim().to_string()
}

fn rotation_keeps_the_thing(backend: Backend) {
    let s = Server::start_with(
        backend,
        &[
            ("ONRAMP_PKI__ROTATION_GRACE_SECS", "12"),
            ("ONRAMP_PKI__ROTATION_PENDING_TTL_SECS", "3600"),
        ],
        None,
    );
    let dev = s.device("ROT-1");
    let old_serial = serial_of_pem(&dev.cert);
    let (csr, key) = new_csr(&s, "rot-1-new");
    let r = steps(&s, &dev, json!([{"op": "csr", "csr_file": csr}]));
    let reply = accepted(&r[0]).clone();
    for field in [
        "certificateId",
        "certificatePem",
        "certificateOwnershipToken",
    ] {
        assert!(
            reply[field].as_str().is_some_and(|v| !v.is_empty()),
            "{reply}"
        );
    }
    let new = rotated(&s, "ROT-1", "rot-1-new", &reply, &key);
    // The same thing, a new certificate naming it; pending until used.
    assert!(x509_field(&new.cert, "-subject").contains("CN = ROT-1"));
    let pending = rotations(&s, "ROT-1");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(pending[0]["old_serial"], old_serial);
    assert_eq!(cert_status(&s, &old_serial), "active");
    assert_eq!(s.devices_json("ROT-1")["status"], "active");
    assert_eq!(audit(&s, "certificate.rotation_requested").len(), 1);

    // The first connection with the new certificate is the acknowledgement.
    let r = steps(
        &s,
        &new,
        json!([{"op": "publish", "topic": "things/ROT-1/telemetry"}]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
    // During the grace period the old certificate still works, as for a
    // device that lost the new key: it connects, publishes, may ask for
    // another certificate, and stays connected until the grace period
    // ends, when its revocation cuts the connection.
    let (again_csr, _) = new_csr(&s, "rot-1-again");
    let held = std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            run(
                &s,
                &dev,
                "ROT-1",
                json!([
                    {"op": "publish", "topic": "things/ROT-1/telemetry"},
                    {"op": "csr", "csr_file": again_csr},
                    {"op": "sleep", "seconds": 35},
                    {"op": "publish", "topic": "things/ROT-1/telemetry"}
                ]),
            )
        });
        within_grace_checks(&s, &dev, &old_serial, &new);
        held.join().expect("the held connection's client")
    });
    assert!(connected(&held), "{held:?}\n{}", s.server_log());
    assert_eq!(held[1]["puback"], 0, "in grace: {held:?}");
    let again = accepted(&held[2]);
    assert!(again["certificatePem"].as_str().is_some(), "{again}");
    assert_eq!(
        held[4]["disconnected"], true,
        "not cut at the end of grace: {held:?}"
    );
    assert_ne!(held[4]["puback"], 0, "{held:?}");
    assert_eq!(cert_status(&s, &old_serial), "revoked");
    assert_eq!(ocsp_status(&s, &dev.cert), "revoked");
    assert_eq!(ocsp_status(&s, &new.cert), "good");
    let lines = run(&s, &dev, "ROT-1", json!([]));
    assert!(!connected(&lines), "{lines:?}");
    assert_eq!(audit(&s, "certificate.rotation_grace_ended").len(), 1);
    // The new certificate keeps working.
    let r = steps(
        &s,
        &new,
        json!([{"op": "publish", "topic": "things/ROT-1/telemetry"}]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
}

/// What holds while the old certificate is in its grace period: the new one
/// active, the old one superseded (still good to relying parties), one
/// thing, the activation audited; then the old one's revocation arrives.
fn within_grace_checks(s: &Server, dev: &Identity, old_serial: &str, new: &Identity) {
    let certs = s.certs_of("ROT-1");
    assert_eq!(certs.len(), 2, "{certs:?}");
    let new_serial = serial_of_pem(&new.cert);
    assert_eq!(cert_status(s, &new_serial), "active");
    assert_eq!(cert_status(s, old_serial), "superseded");
    // Found by serial: the held connection may have asked for another one
    // within the same second.
    let activated = rotations(s, "ROT-1")
        .into_iter()
        .find(|r| r["serial"] == new_serial.as_str())
        .expect("the activated rotation is listed");
    assert_eq!(activated["status"], "active", "{activated}");
    assert_eq!(audit(s, "certificate.rotation_activated").len(), 1);
    // No new thing was created.
    assert_eq!(
        s.cli_json(&["device", "list"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Within the grace period relying parties still see the old one good.
    assert_eq!(ocsp_status(s, &dev.cert), "good");
    // After the grace period: revoked, through the identity-change sequence.
    wait_until("the old certificate's revocation", 40, || {
        cert_status(s, old_serial) == "revoked"
    });
}

#[test]
fn rotation_keeps_the_thing_and_revokes_the_old_certificate_after_grace_sqlite() {
    rotation_keeps_the_thing(Backend::Sqlite);
}

#[test]
fn rotation_keeps_the_thing_and_revokes_the_old_certificate_after_grace_postgres() {
    rotation_keeps_the_thing(Backend::Postgres);
}

#[test]
fn create_keys_rotates_and_a_second_request_replaces_the_first() {
    let s = Server::start(backend());
    let dev = s.device("ROT-2");
    let r = steps(
        &s,
        &dev,
        json!([
            {"op": "create"},
            {"op": "create", "payload": "{\"thingName\": \"ROT-2\"}"}
        ]),
    );
    let first = accepted(&r[0]).clone();
    let second = accepted(&r[1]).clone();
    assert!(
        first["privateKey"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );
    let save = |name: &str, v: &Value| {
        let key = s.path(&format!("{name}.key"));
        std::fs::write(&key, v["privateKey"].as_str().unwrap()).unwrap();
        rotated(&s, "ROT-2", name, v, &key)
    };
    let one = save("rot-2-a", &first);
    let two = save("rot-2-b", &second);
    let list = rotations(&s, "ROT-2");
    assert_eq!(list.len(), 2, "{list:?}");
    let state = |id: &Identity| {
        let serial = serial_of_pem(&id.cert);
        list.iter()
            .find(|r| r["serial"] == serial.as_str())
            .map(|r| r["status"].clone())
    };
    assert_eq!(state(&one), Some(json!("replaced")), "{list:?}");
    assert_eq!(state(&two), Some(json!("pending")), "{list:?}");
    // The replaced certificate is revoked and cannot connect.
    assert_eq!(cert_status(&s, &serial_of_pem(&one.cert)), "revoked");
    assert!(!connected(&run(&s, &one, "ROT-2", json!([]))));
    assert_eq!(ocsp_status(&s, &one.cert), "revoked");
    // The second one works and takes over.
    assert!(connected(&run(&s, &two, "ROT-2", json!([]))));
    assert_eq!(cert_status(&s, &serial_of_pem(&two.cert)), "active");
    assert_eq!(cert_status(&s, &serial_of_pem(&dev.cert)), "superseded");
    // The same rotations over REST, for a viewer; none for another thing.
    let viewer = s.api_key("viewer");
    let r = s.api("GET", "/api/v1/devices/ROT-2/rotations", &viewer, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let mut states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["serial"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    // Both were asked for in the same second: compared as a set.
    states.sort();
    let one_serial = serial_of_pem(&one.cert);
    let two_serial = serial_of_pem(&two.cert);
    let mut want = vec![
        (one_serial.as_str(), "replaced"),
        (two_serial.as_str(), "active"),
    ];
    want.sort();
    assert_eq!(states, want, "{listed}");
    let r = s.api("GET", "/api/v1/devices/ROT-9/rotations", &viewer, None);
    assert!(
        r.status == 404 || r.json().as_array().is_some_and(|a| a.is_empty()),
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        s.api("GET", "/api/v1/devices/ROT-2/rotations", "wrong-key", None)
            .status,
        401
    );
}

#[test]
fn refused_rotations() {
    let s = Server::start(backend());
    // A claim certificate naming a thing it does not own.
    let body = s.path("t.json");
    std::fs::write(&body, TEMPLATE).unwrap();
    let out = s.cli(&[
        "template",
        "create",
        "fab",
        "--body",
        body.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claim_dir = s.path("claim");
    s.cli_json(&[
        "claim",
        "create",
        "--template",
        "fab",
        "--out",
        claim_dir.to_str().unwrap(),
    ]);
    let claim = Identity {
        name: "factory-1".into(),
        cert: claim_dir.join("claim.pem"),
        key: claim_dir.join("claim.key"),
    };
    let victim = s.device("ROT-3");
    let r = steps(
        &s,
        &claim,
        json!([{"op": "create", "payload": "{\"thingName\": \"ROT-3\"}"}]),
    );
    let why = rejected(&r[0]);
    assert_eq!(why["errorCode"], "AccessDenied", "{why}");
    assert!(rotations(&s, "ROT-3").is_empty());
    assert_eq!(s.certs_of("ROT-3").len(), 1);
    // A device naming another thing.
    let other = s.device("ROT-4");
    let r = steps(
        &s,
        &other,
        json!([{"op": "create", "payload": "{\"thingName\": \"ROT-3\"}"}]),
    );
    assert_eq!(rejected(&r[0])["errorCode"], "AccessDenied");
    assert!(rotations(&s, "ROT-3").is_empty());
    assert!(rotations(&s, "ROT-4").is_empty());
    let denied: Vec<Value> = audit(&s, "certificate.rotation_requested")
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");

    // A suspended device is refused at CONNECT, and cannot rotate.
    let out = s.cli(&["device", "suspend", "ROT-3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = run(&s, &victim, "ROT-3", json!([{"op": "create"}]));
    assert!(!connected(&lines), "{lines:?}");
    assert!(rotations(&s, "ROT-3").is_empty());
    // A revoked certificate likewise.
    let serial = serial_of_pem(&other.cert);
    let out = s.cli(&["cert", "revoke", &serial]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = run(&s, &other, "ROT-4", json!([{"op": "create"}]));
    assert!(!connected(&lines), "{lines:?}");
    assert!(rotations(&s, "ROT-4").is_empty());
    // Revoked while connected: the live cut ends the connection before a
    // rotation can be asked for.
    let dev = s.device("ROT-5");
    let serial = serial_of_pem(&dev.cert);
    let child = Command::new(python_with(PAHO))
        .arg(CLIENT)
        .args(["--port", &s.mqtt_port.to_string()])
        .arg("--cafile")
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&dev.cert)
        .arg("--key")
        .arg(&dev.key)
        .args(["--client-id", "ROT-5", "--protocol", "5"])
        .args([
            "--steps",
            &json!([{"op": "sleep", "seconds": 3}, {"op": "create"}]).to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = s.cli(&["cert", "revoke", &serial]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("/accepted"), "{text}");
    assert!(rotations(&s, "ROT-5").is_empty());

    // A certificate obtained by rotation never activates once an operator
    // has revoked the certificate that asked for it: a stolen key cannot
    // hand itself a fresh identity that outlives the revocation.
    let dev = s.device("ROT-6");
    let (csr, key) = new_csr(&s, "rot-6-new");
    let r = steps(&s, &dev, json!([{"op": "csr", "csr_file": csr}]));
    let pending = rotated(&s, "ROT-6", "rot-6-new", accepted(&r[0]), &key);
    let out = s.cli(&["cert", "revoke", &serial_of_pem(&dev.cert)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = run(&s, &pending, "ROT-6", json!([]));
    assert!(!connected(&lines), "{lines:?}");
    assert_eq!(rotations(&s, "ROT-6")[0]["status"], "pending");
    assert_eq!(s.certs_of("ROT-6").len(), 1);
}

const TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
  }
}"#;

#[test]
fn a_pending_rotation_never_used_expires_and_is_revoked() {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_PKI__ROTATION_PENDING_TTL_SECS", "2")],
        None,
    );
    let dev = s.device("ROT-6");
    let (csr, key) = new_csr(&s, "rot-6-new");
    let r = steps(&s, &dev, json!([{"op": "csr", "csr_file": csr}]));
    let new = rotated(&s, "ROT-6", "rot-6-new", accepted(&r[0]), &key);
    wait_until("the pending rotation's expiry", 30, || {
        rotations(&s, "ROT-6")[0]["status"] == "expired"
    });
    assert!(!connected(&run(&s, &new, "ROT-6", json!([]))));
    assert_eq!(cert_status(&s, &serial_of_pem(&new.cert)), "revoked");
    assert_eq!(ocsp_status(&s, &new.cert), "revoked");
    // The old certificate is untouched and still connects.
    assert_eq!(cert_status(&s, &serial_of_pem(&dev.cert)), "active");
    assert!(connected(&run(&s, &dev, "ROT-6", json!([]))));
    assert_eq!(audit(&s, "certificate.rotation_expired").len(), 1);
}

/// Re-enrols over EST with `id` as client certificate and a new CSR.
fn reenrol(s: &Server, id: &Identity, name: &str) -> Curl {
    let d = device_csr(s.dir.path(), name, &format!("/CN={}", id.name));
    s.reenrol(&id.cert, &id.key, &d.csr_b64)
}

#[test]
fn renewal_after_expiry_within_the_window_only() {
    // Certificates valid for 0 days expire as soon as they are issued.
    let mut s = Server::start_with(
        backend(),
        &[("ONRAMP_ENROLMENT__DEVICE_CERT_VALIDITY_DAYS", "0")],
        None,
    );
    let a = s.device("EXP-A");
    let b = s.device("EXP-B");
    let c = s.device("EXP-C");
    let d = s.device("EXP-D");
    std::thread::sleep(Duration::from_secs(2));
    // Off by default: an expired certificate fails the TLS handshake.
    assert!(!connected(&run(&s, &a, "EXP-A", json!([]))));
    assert_ne!(reenrol(&s, &b, "exp-b-0").status, 200);
    let serial_d = serial_of_pem(&d.cert);
    assert!(s.cli(&["cert", "revoke", &serial_d]).status.success());

    // On, with a window of a day.
    s.env
        .retain(|(k, _)| k != "ONRAMP_ENROLMENT__DEVICE_CERT_VALIDITY_DAYS");
    s.env
        .push(("ONRAMP_PKI__RENEW_EXPIRED_WITHIN_DAYS".into(), "1".into()));
    s.restart();
    // MQTT: the expired certificate may only renew.
    let (csr, key) = new_csr(&s, "exp-a-new");
    let r = steps(
        &s,
        &a,
        json!([
            {"op": "publish", "topic": "things/EXP-A/telemetry"},
            {"op": "publish", "topic": "$aws/things/EXP-A/jobs/get"},
            {"op": "csr", "csr_file": csr}
        ]),
    );
    assert_eq!(r[0]["puback"], 135, "{r:?}");
    assert_eq!(r[1]["puback"], 135, "{r:?}");
    let new = rotated(&s, "EXP-A", "exp-a-new", accepted(&r[2]), &key);
    assert_eq!(rotations(&s, "EXP-A")[0]["kind"], "renewal_after_expiry");
    assert_eq!(audit(&s, "certificate.renewal_after_expiry").len(), 1);
    let r = steps(
        &s,
        &new,
        json!([{"op": "publish", "topic": "things/EXP-A/telemetry"}]),
    );
    assert_eq!(r[0]["puback"], 0, "{r:?}");
    assert_eq!(cert_status(&s, &serial_of_pem(&new.cert)), "active");
    // EST simplereenroll with the expired certificate.
    let r = reenrol(&s, &b, "exp-b-1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(audit(&s, "est.simplereenroll.after_expiry").len(), 1);
    // Every other path still refuses an expired certificate: the artifact
    // downloads (device identity over HTTPS) among them.
    let r = s.curl(&[
        "--cert",
        c.cert.to_str().unwrap(),
        "--key",
        c.key.to_str().unwrap(),
        &s.url(&format!("/artifacts/{}", "0".repeat(64))),
    ]);
    assert!(
        r.status == 401 || r.status == 403,
        "{} {}",
        r.status,
        r.text()
    );
    // A revoked certificate never renews, expired or not.
    assert!(!connected(&run(&s, &d, "EXP-D", json!([]))));
    assert_eq!(reenrol(&s, &d, "exp-d-1").status, 403);
    assert!(rotations(&s, "EXP-D").is_empty());

    // Past the window: refused at the handshake, over MQTT and EST.
    s.env
        .retain(|(k, _)| k != "ONRAMP_PKI__RENEW_EXPIRED_WITHIN_DAYS");
    s.env
        .push(("ONRAMP_PKI__RENEW_EXPIRED_WITHIN_SECS".into(), "1".into()));
    s.restart();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!connected(&run(&s, &c, "EXP-C", json!([{"op": "create"}]))));
    assert_ne!(reenrol(&s, &c, "exp-c-1").status, 200);
    assert!(rotations(&s, "EXP-C").is_empty());
}

#[test]
fn bulk_rotation_creates_a_job_for_exactly_the_selected_things() {
    let s = Server::start(backend());
    // Two pumps and a valve.
    for (serial, class) in [("BULK-1", "pump"), ("BULK-2", "valve"), ("BULK-3", "pump")] {
        let token =
            s.cli_json(&["token", "create", "--serial", serial, "--class", class])["secret"]
                .as_str()
                .unwrap()
                .to_string();
        s.device_with_token(serial, &token);
    }
    let job = s.cli_json(&[
        "cert",
        "rotate",
        "--device-class",
        "pump",
        "--job-id",
        "rotate-pumps",
    ]);
    assert_eq!(job["jobId"], "rotate-pumps");
    let executions = s.cli_json(&["job", "executions", "rotate-pumps"]);
    let mut things: Vec<String> = executions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["thingName"].as_str().unwrap().to_string())
        .collect();
    things.sort();
    assert_eq!(things, ["BULK-1", "BULK-3"]);
    assert_eq!(job["document"]["operation"], "onramp.rotate-certificate");
    // One thing over REST, paced.
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        "/api/v1/certificates/rotate",
        &key,
        Some(r#"{"thingName": "BULK-2", "jobId": "rotate-2", "maximumPerMinute": 10}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["targets"]["things"], json!(["BULK-2"]));
    // Expiring within 400 days: all three (365-day certificates).
    let job = s.cli_json(&[
        "cert",
        "rotate",
        "--expiring-within-days",
        "400",
        "--job-id",
        "rot-exp",
    ]);
    assert_eq!(
        job["targets"]["things"],
        json!(["BULK-1", "BULK-2", "BULK-3"])
    );
    // Within 30 days: none.
    let out = s.cli(&["cert", "rotate", "--expiring-within-days", "30"]);
    assert!(!out.status.success());
    // Two selectors at once are refused.
    let r = s.api(
        "POST",
        "/api/v1/certificates/rotate",
        &key,
        Some(r#"{"thingName": "BULK-2", "deviceClass": "pump"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A viewer may not.
    let viewer = s.api_key("viewer");
    let r = s.api(
        "POST",
        "/api/v1/certificates/rotate",
        &viewer,
        Some(r#"{"thingName": "BULK-2"}"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

const DOC: &str = include_str!("../../../docs/lifecycle.md");

/// The fenced block after `<!-- example: NAME -->` in docs/lifecycle.md.
fn example(name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/lifecycle.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    body.split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string()
}

fn bash(s: &Server, dir: &Path, script: &str, env: &[(&str, &str)]) {
    let bin_dir = Path::new(bin()).parent().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_DATA_DIR", &s.data)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.server_log()
    );
}

#[test]
fn the_lifecycle_guide_examples_work() {
    // The configuration example is the server's configuration.
    let s = Server::start_with(backend(), &[], Some(&example("lifecycle-config")));
    let work = s.path("guide");
    std::fs::create_dir_all(&work).unwrap();
    // The device's side, as written.
    let dev = s.device("SN-0001");
    std::fs::copy(&dev.cert, work.join("device.pem")).unwrap();
    std::fs::copy(&dev.key, work.join("device.key")).unwrap();
    std::fs::copy(&s.root_pem, work.join("root.pem")).unwrap();
    let port = s.mqtt_port.to_string();
    bash(
        &s,
        &work,
        &example("lifecycle-device"),
        &[("THING", "SN-0001"), ("HOST", "localhost"), ("PORT", &port)],
    );
    let new_serial = serial_of_pem(&work.join("next.pem"));
    assert_eq!(cert_status(&s, &new_serial), "active");
    assert_eq!(cert_status(&s, &serial_of_pem(&dev.cert)), "superseded");
    // The operator's commands.
    let token =
        s.cli_json(&["token", "create", "--serial", "SN-0002", "--class", "pump"])["secret"]
            .as_str()
            .unwrap()
            .to_string();
    s.device_with_token("SN-0002", &token);
    bash(&s, &work, &example("lifecycle-operator"), &[]);
    let executions = s.cli_json(&["job", "executions", "rotate-pumps"]);
    let things: Vec<&str> = executions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["thingName"].as_str().unwrap())
        .collect();
    assert_eq!(things, ["SN-0002"]);
    let job = s.cli_json(&["job", "show", "rotate-expiring"]);
    assert_eq!(job["document"]["operation"], "onramp.rotate-certificate");
}
