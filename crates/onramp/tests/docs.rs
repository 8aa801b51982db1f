//! The examples in `docs/provisioning.md`, run as written: the fleet
//! template and the operator's set-up commands, then a device provisions
//! through them (paho-mqtt, one connection). And those of `docs/jobs.md`:
//! the operator's curl commands and the device program with the AWS IoT
//! Device SDK's jobs client. And those of `docs/revocation.md`: a relying
//! party's openssl checks before and after `onramp cert revoke`.

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
    // A job for a thing group reaches the things the template put in it.
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &key,
        Some(r#"{"jobId":"berlin-1","document":{"op":"x"},"thingGroups":["berlin"]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["executionCounts"], json!({"QUEUED": 1}));
    let r = s.api("GET", "/api/v1/jobs/berlin-1/executions", &key, None);
    assert_eq!(r.json()["items"][0]["thingName"], "pump-P-0001");
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &key,
        Some(r#"{"jobId":"paris-1","document":{"op":"x"},"thingGroups":["paris"]}"#),
    );
    assert_eq!(r.status, 400, "a group with no members: {}", r.text());
}

const JOBS_DOC: &str = include_str!("../../../docs/jobs.md");

/// The fenced block after `<!-- example: NAME -->` in `docs/jobs.md`.
fn jobs_example(name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = JOBS_DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/jobs.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    body.split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string()
}

/// Runs a shell example of `docs/jobs.md` against `s` (its URL in place of
/// the documented one); returns its standard output.
fn run_jobs_shell(s: &Server, work: &std::path::Path, key: &str, name: &str) -> String {
    let script = jobs_example(name).replace("https://localhost:8443", &s.url(""));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work)
        .env("KEY", key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "example {name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Splits the concatenated JSON documents the curl commands printed.
fn json_documents(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.expect("JSON output"))
        .collect()
}

#[test]
fn the_jobs_guide_examples_work() {
    let s = Server::start(Backend::Sqlite);
    let key = s.api_key("operator");
    let device = s.device("SN-0001");
    let work = s.path("jobs-docs");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(&s.root_pem, work.join("root.pem")).unwrap();
    std::fs::copy(&device.cert, work.join("device.pem")).unwrap();
    std::fs::copy(&device.key, work.join("device.key")).unwrap();

    let created = json_documents(&run_jobs_shell(&s, &work, &key, "jobs-create"));
    assert_eq!(created[0]["jobId"], "firmware-2-5-0", "{created:?}");
    assert_eq!(created[0]["executionCounts"], json!({"QUEUED": 1}));

    // The device example, with the test server's port.
    let program = jobs_example("jobs-device").replace(
        "\"localhost\", 8883,",
        &format!("\"localhost\", {},", s.mqtt_port),
    );
    assert!(program.contains(&s.mqtt_port.to_string()));
    let out = Command::new(python_with(&["awsiot.iotjobs", "awscrt.mqtt5"]))
        .args(["-c", &program])
        .current_dir(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let document: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("running firmware-2-5-0 "))
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap_or_else(|| panic!("the device ran no job: {stdout}"));
    assert_eq!(
        document,
        json!({"operation": "upgrade", "version": "2.5.0",
               "url": "https://downloads.example.com/pump-2.5.0.bin"})
    );
    assert!(
        stdout.contains("finished firmware-2-5-0 SUCCEEDED"),
        "{stdout}"
    );

    let status = json_documents(&run_jobs_shell(&s, &work, &key, "jobs-status"));
    assert_eq!(status.len(), 3, "{status:?}");
    assert_eq!(status[0]["status"], "COMPLETED", "{status:?}");
    assert_eq!(status[0]["executionCounts"], json!({"SUCCEEDED": 1}));
    assert_eq!(status[1]["items"][0]["status"], "SUCCEEDED", "{status:?}");
    assert_eq!(
        status[1]["items"][0]["statusDetails"],
        json!({"step": "installed"})
    );
    assert_eq!(status[2], json!([]), "{status:?}");

    // Cancel a job the device has started.
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &key,
        Some(r#"{"jobId":"firmware-2-6-0-beta","document":{"version":"2.6.0-beta"},"targets":["SN-0001"]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let canceled = json_documents(&run_jobs_shell(&s, &work, &key, "jobs-cancel"));
    assert_eq!(canceled[0]["status"], "CANCELED", "{canceled:?}");
    assert_eq!(canceled[0]["executionCounts"], json!({"CANCELED": 1}));

    // Delete the canceled job: nothing printed, and it is gone.
    let deleted = run_jobs_shell(&s, &work, &key, "jobs-delete");
    assert_eq!(deleted, "", "204 has no body");
    let r = s.api("GET", "/api/v1/jobs/firmware-2-6-0-beta", &key, None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.api(
        "GET",
        "/api/v1/jobs/firmware-2-6-0-beta/executions",
        &key,
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

const ROLLOUTS_DOC: &str = include_str!("../../../docs/rollouts.md");

/// Runs a shell example of `docs/rollouts.md` against `s`; returns its
/// standard output parsed as JSON.
fn run_rollouts_shell(s: &Server, key: &str, name: &str) -> Value {
    let marker = format!("<!-- example: {name} -->");
    let rest = ROLLOUTS_DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/rollouts.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    let script = body.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("KEY", key)
        .env("URL", s.url(""))
        .env("CACERT", &s.root_pem)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "example {name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("example {name}: {e}: {stdout}"))
}

/// A registered (pending) device with the given hardware revision and firmware.
fn registered(s: &Server, key: &str, thing: &str, hw: &str, fw: &str) {
    let body = json!({"serial_number": thing, "hardware_revision": hw, "firmware_version": fw});
    let r = s.api("POST", "/api/v1/tokens", key, Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn the_rollouts_guide_examples_work() {
    let s = Server::start(Backend::Sqlite);
    let key = s.api_key("operator");
    for pump in ["pump-1", "pump-2", "pump-3"] {
        registered(&s, &key, pump, "rev-a", "1.0.0");
    }
    let job = run_rollouts_shell(&s, &key, "paced-job");
    assert_eq!(job["jobId"], "fw-2-0-0", "{job}");
    assert_eq!(job["status"], "IN_PROGRESS", "{job}");
    // The exponential base rate (10 a minute) covers all three at once.
    assert_eq!(job["executionCounts"], json!({"QUEUED": 3}), "{job}");
    assert_eq!(
        job["config"]["jobExecutionsRolloutConfig"]["maximumPerMinute"], 100,
        "{job}"
    );
    let described = run_rollouts_shell(&s, &key, "describe-job");
    assert_eq!(described["executionCounts"], json!({"QUEUED": 3}));
    assert_eq!(described["failuresByGroup"], json!([]));
    assert_eq!(described["rolloutPaused"], false);

    // Pause and resume.
    let paused = run_rollouts_shell(&s, &key, "pause-job");
    assert_eq!(paused["rolloutPaused"], true, "{paused}");
    assert_eq!(paused["status"], "IN_PROGRESS", "{paused}");
    let r = s.api("GET", "/api/v1/jobs/fw-2-0-0", &key, None);
    assert_eq!(r.json()["rolloutPaused"], true);
    let r = s.api("POST", "/api/v1/jobs/fw-2-0-0/pause", &key, None);
    assert_eq!(r.status, 409, "{}", r.text());
    let resumed = run_rollouts_shell(&s, &key, "resume-job");
    assert_eq!(resumed["rolloutPaused"], false, "{resumed}");

    // A job scheduled to start in an hour: nothing is queued yet.
    let scheduled = run_rollouts_shell(&s, &key, "scheduled-job");
    assert_eq!(scheduled["status"], "SCHEDULED", "{scheduled}");
    assert_eq!(scheduled["executionCounts"], json!({}), "{scheduled}");
    assert_eq!(
        scheduled["config"]["schedulingConfig"]["endBehavior"], "STOP_ROLLOUT",
        "{scheduled}"
    );

    // A continuous job on a fleet query: one thing matches at creation...
    registered(&s, &key, "old-b", "rev-b", "1.2.0");
    registered(&s, &key, "new-b", "rev-b", "2.1.0");
    let job = run_rollouts_shell(&s, &key, "continuous-job");
    assert_eq!(job["targetSelection"], "CONTINUOUS", "{job}");
    assert_eq!(job["executionCounts"], json!({"QUEUED": 1}), "{job}");
    // ...and one registered later is added by the scheduler within its period.
    registered(&s, &key, "later-b", "rev-b", "1.9.0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = s.api("GET", "/api/v1/jobs/fix-rev-b/executions", &key, None);
        let things: Vec<String> = r.json()["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["thingName"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if things == ["later-b", "old-b"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the later thing was not added within 30 s: {things:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

const REVOCATION_DOC: &str = include_str!("../../../docs/revocation.md");

/// Runs a shell example of `docs/revocation.md` in `work`, with `onramp`
/// on the PATH and the server's data directory; success and all output.
fn run_revocation_shell(s: &Server, work: &std::path::Path, name: &str) -> (bool, String) {
    let marker = format!("<!-- example: {name} -->");
    let rest = REVOCATION_DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/revocation.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    let script = body.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let out = Command::new("bash")
        .args(["-uo", "pipefail", "-c", script])
        .current_dir(work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_DATA_DIR", &s.data)
        .env("ONRAMP_PKI__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_revocation_guide_examples_work() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_PKI__LISTEN", "127.0.0.1:0")],
        None,
    );
    let device = s.device("SN-REV-1");
    let work = s.path("revocation-docs");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(&s.root_pem, work.join("root.pem")).unwrap();
    std::fs::copy(&device.cert, work.join("device.pem")).unwrap();
    let out = s.cli(&[
        "ca",
        "export",
        "--chain",
        "--out",
        work.join("chain.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let chain = std::fs::read_to_string(work.join("chain.pem")).unwrap();
    let issuing = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    std::fs::write(work.join("issuing.pem"), issuing).unwrap();

    let (ok, text) = run_revocation_shell(&s, &work, "revocation-check");
    assert!(ok, "{text}");
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains("device.pem: OK"), "{text}");
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("device.pem: good"), "{text}");

    let (ok, text) = run_revocation_shell(&s, &work, "revocation-revoke");
    assert!(ok, "{text}");
    assert_eq!(s.certs_of("SN-REV-1")[0]["status"], "revoked");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, text) = run_revocation_shell(&s, &work, "revocation-check");
        if text.contains("certificate revoked") {
            assert!(text.contains("device.pem: verification failed"), "{text}");
            assert!(text.contains("device.pem: revoked"), "{text}");
            assert!(text.contains("Reason: keyCompromise"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRL did not list the revocation within 5 s: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

// ---- docs/events.md ----

const EVENTS_DOC: &str = include_str!("../../../docs/events.md");

#[test]
fn the_events_guide_receiver_verifies_signatures() {
    let marker = "<!-- example: events-receiver -->";
    let block = EVENTS_DOC
        .split(marker)
        .nth(1)
        .and_then(|r| r.split("```").nth(1))
        .expect("docs/events.md has the events-receiver example");
    let program = block.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let s = Server::start_with(
        Backend::Sqlite,
        &[("ONRAMP_EVENTS__RETRY_INITIAL_SECS", "1")],
        None,
    );
    let work = s.path("hook");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("receiver.py"), program).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let created = s.cli_json(&[
        "webhook",
        "create",
        "--url",
        &url,
        "--events",
        "certificate.revoked",
    ]);
    let secret = created["secret"].as_str().unwrap().to_string();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _receiver = Kill(
        Command::new(python())
            .arg("receiver.py")
            .current_dir(&work)
            .env("WEBHOOK_SECRET", &secret)
            .env("PORT", port.to_string())
            .spawn()
            .unwrap(),
    );
    let id = s.device("DOC-EV-1");
    let serial = s.certs_of(&id.name)[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let out = s.cli(&["cert", "revoke", &serial]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The receiver accepted (verified) the event; it may have been retried
    // while the receiver was still starting, but is written once.
    let start = std::time::Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(work.join("events.jsonl")).unwrap_or_default();
        if !text.is_empty() || start.elapsed() > std::time::Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{lines}");
    assert_eq!(events[0]["type"], "certificate.revoked");
    assert_eq!(events[0]["subject"], format!("certificate:{serial}"));
    // A forged body, a wrong key and a replayed (old) signature are refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = br#"{"id":"forged","type":"certificate.revoked"}"#;
    let post = |sig: &str| -> String {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Onramp-Signature: {sig}"))
            .args(["--data-binary", std::str::from_utf8(body).unwrap(), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let good = onramp_domain::event::sign(secret.as_bytes(), now, body);
    assert_eq!(post(&good), "204");
    let wrong_key = onramp_domain::event::sign(b"whsec_other", now, body);
    assert_eq!(post(&wrong_key), "401");
    let old = onramp_domain::event::sign(secret.as_bytes(), now - 3600, body);
    assert_eq!(post(&old), "401");
    let tampered = good.replace(&format!("t={now}"), &format!("t={}", now + 1));
    assert_eq!(post(&tampered), "401");
}
