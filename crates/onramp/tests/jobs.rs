//! Jobs: the device side over MQTT with the AWS IoT Device SDK for Python
//! (`tests/aws_sdk/jobs_check.py`, both jobs clients over MQTT 5 and 3.1.1)
//! and with a raw paho client (`tests/paho/mqtt_session.py`), and the
//! operator side over the REST API, on SQLite and PostgreSQL.
//!
//! The Python clients must be installed: `scripts/services.sh` puts them in
//! `.venv/`.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use support::*;

const SDK_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/aws_sdk/jobs_check.py"
);
const SESSION_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/paho/mqtt_session.py"
);

/// `ok ...` lines of a complete SDK run: connect and thirteen checks, for
/// each of the four client/protocol runs.
const SDK_CHECKS: usize = 4 * 14;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn rest(s: &Server, key: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = s.api(method, path, key, body);
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()))
    };
    (r.status, v)
}

fn create_job(s: &Server, key: &str, body: &Value) -> (u16, Value) {
    rest(s, key, "POST", "/api/v1/jobs", Some(&body.to_string()))
}

// ---- the AWS IoT Device SDK ----

fn sdk_flow(backend: Backend) {
    let py = python_with(&[
        "awsiot.iotjobs",
        "awscrt.mqtt5",
        "awscrt.mqtt_request_response",
    ]);
    let s = Server::start(backend);
    let device = s.device("D1");
    let key = s.api_key("operator");
    let out = Command::new(&py)
        .arg(SDK_SCRIPT)
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
        .unwrap_or_else(|e| panic!("python {SDK_SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "jobs_check.py: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log (last lines) ---\n{}",
            out.status,
            tail(&s.server_log(), 60)
        )
    };
    assert!(out.status.success(), "{}", report());
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, SDK_CHECKS, "{}", report());
    // Every run's job is COMPLETED with one SUCCEEDED execution, as the
    // operator sees it in the listing too.
    let (status, list) = rest(&s, &key, "GET", "/api/v1/jobs", None);
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{list}");
    for job in items {
        assert_eq!(job["status"], "COMPLETED", "{job}");
        let id = job["jobId"].as_str().unwrap();
        let (status, executions) = rest(
            &s,
            &key,
            "GET",
            &format!("/api/v1/jobs/{id}/executions"),
            None,
        );
        assert_eq!(status, 200, "{executions}");
        let e = &executions["items"][0];
        assert_eq!(e["thingName"], "D1", "{executions}");
        assert_eq!(e["status"], "SUCCEEDED", "{executions}");
        assert_eq!(e["statusDetails"], json!({"step": "done"}), "{executions}");
    }
    print!("{stdout}");
}

#[test]
fn aws_iot_device_sdk_jobs_clients_work_against_onramp() {
    sdk_flow(Backend::Sqlite);
}

#[test]
fn aws_iot_device_sdk_jobs_clients_work_against_onramp_on_postgres() {
    sdk_flow(Backend::Postgres);
}

// ---- a raw MQTT session of a device ----

/// `tests/paho/mqtt_session.py`: one connection of a device, driven by JSON
/// commands, reporting what happens as JSON events.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Session {
    fn open(s: &Server, id: &Identity, protocol: &str) -> Session {
        let py = python_with(PAHO);
        let mut child = Command::new(py)
            .arg(SESSION_SCRIPT)
            .args(["--port", &s.mqtt_port.to_string()])
            .arg("--cafile")
            .arg(&s.root_pem)
            .arg("--cert")
            .arg(&id.cert)
            .arg("--key")
            .arg(&id.key)
            .args(["--client-id", &id.name, "--protocol", protocol])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python {SESSION_SCRIPT}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut session = Session {
            child,
            stdin,
            events: rx,
            seen: Vec::new(),
        };
        session
            .wait(Duration::from_secs(15), |e| e["event"] == "connected")
            .unwrap_or_else(|| panic!("no connection: {:?}", session.seen));
        session
    }

    fn send(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// Subscribes and waits for the SUBACK.
    fn subscribe(&mut self, filter: &str) {
        self.send(json!({"sub": filter}));
        let ack = self
            .wait(Duration::from_secs(10), |e| {
                e["event"] == "suback" && e["filter"] == filter
            })
            .unwrap_or_else(|| panic!("no SUBACK for {filter}: {:?}", self.seen));
        let granted = ack["granted"][0].as_i64().unwrap();
        assert!(granted <= 2, "subscription to {filter} refused: {ack}");
    }

    fn publish(&mut self, topic: &str, payload: &str) {
        self.send(json!({"pub": topic, "payload": payload}));
    }

    /// The next event matching `pred` within `timeout`, if any.
    fn wait(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return Some(e);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// The payload of the next message on `topic` matching `pred`.
    fn message(&mut self, topic: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let found = self.wait(timeout, |e| {
            e["event"] == "message"
                && e["topic"] == topic
                && serde_json::from_str::<Value>(e["payload"].as_str().unwrap_or(""))
                    .is_ok_and(|p| pred(&p))
        });
        match found {
            Some(e) => serde_json::from_str(e["payload"].as_str().unwrap()).unwrap(),
            None => panic!("no matching message on {topic}; saw {:#?}", self.seen),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_unknown_jobs_topic_is_rejected_with_invalid_topic() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let mut dev = Session::open(&s, &d1, "5");
    for (topic, token) in [
        ("$aws/things/D1/jobs/nope", "t-1"),
        ("$aws/things/D1/jobs/job-1/get/extra", "t-2"),
    ] {
        let rejected = format!("{topic}/rejected");
        dev.subscribe(&rejected);
        dev.publish(topic, &json!({"clientToken": token}).to_string());
        let body = dev.message(&rejected, WAIT, |_| true);
        assert_eq!(body["code"], "InvalidTopic", "{body}");
        assert_eq!(body["clientToken"], token, "{body}");
        assert!(body["timestamp"].is_i64(), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn a_device_cannot_publish_its_own_job_notifications() {
    let s = Server::start(Backend::Sqlite);
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    let fake =
        json!({"timestamp": 1, "execution": {"jobId": "fake", "status": "QUEUED"}}).to_string();
    // MQTT 5: the PUBACK says Not authorized and nobody receives the message.
    let mut dev = Session::open(&s, &d1, "5");
    for topic in [
        "$aws/things/D1/jobs/notify",
        "$aws/things/D1/jobs/notify-next",
    ] {
        dev.subscribe(topic);
        dev.publish(topic, &fake);
        let ack = dev
            .wait(WAIT, |e| e["event"] == "puback" && e["topic"] == topic)
            .unwrap_or_else(|| panic!("no PUBACK for {topic}: {:?}", dev.seen));
        assert_eq!(ack["reason"], 135, "{ack}");
    }
    // The real notifications still arrive, and they are the only ones.
    let (status, body) = create_job(
        &s,
        &key,
        &json!({"jobId": "real", "document": {"op": "x"}, "targets": ["D1"]}),
    );
    assert_eq!(status, 201, "{body}");
    let next = dev.message("$aws/things/D1/jobs/notify-next", WAIT, |_| true);
    assert_eq!(next["execution"]["jobId"], "real", "{next}");
    assert!(
        !dev.seen.iter().any(|e| e["event"] == "message"
            && e["payload"].as_str().is_some_and(|p| p.contains("fake"))),
        "a device's own notification was delivered: {:?}",
        dev.seen
    );
    drop(dev);
    // MQTT 3.1.1 has no negative PUBACK: the connection is closed.
    std::thread::sleep(Duration::from_millis(1100));
    let mut dev = Session::open(&s, &d1, "311");
    dev.publish("$aws/things/D1/jobs/notify", &fake);
    dev.wait(WAIT, |e| e["event"] == "disconnected")
        .unwrap_or_else(|| panic!("MQTT 3.1.1 publish to notify did not close: {:?}", dev.seen));
}

/// A job with a one-minute in-progress timer and one retry on TIMED_OUT:
/// started by the device, it times out after about a minute and the retry
/// is queued as execution 2, announced on notify-next. Beside it, a job
/// the device started with a one-minute step timer times out too.
fn timeout_and_retry(backend: Backend) {
    let s = Server::start(backend);
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    let (status, body) = create_job(
        &s,
        &key,
        &json!({
            "jobId": "slow",
            "document": {"op": "wait"},
            "targets": ["D1"],
            "timeoutConfig": {"inProgressTimeoutInMinutes": 1},
            "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]}
        }),
    );
    assert_eq!(status, 201, "{body}");
    // A second job without timeouts, which the device starts with a step timer.
    let (status, body) = create_job(
        &s,
        &key,
        &json!({"jobId": "step", "document": {"op": "step"}, "targets": ["D1"]}),
    );
    assert_eq!(status, 201, "{body}");
    let mut dev = Session::open(&s, &d1, "5");
    dev.subscribe("$aws/things/D1/jobs/notify-next");
    dev.subscribe("$aws/things/D1/jobs/start-next/accepted");
    dev.subscribe("$aws/things/D1/jobs/step/update/accepted");
    let started_at = Instant::now();
    dev.publish(
        "$aws/things/D1/jobs/start-next",
        r#"{"clientToken":"go","statusDetails":{"step":"1"}}"#,
    );
    let started = dev.message("$aws/things/D1/jobs/start-next/accepted", WAIT, |_| true);
    assert_eq!(started["clientToken"], "go");
    assert_eq!(started["execution"]["status"], "IN_PROGRESS", "{started}");
    assert_eq!(started["execution"]["executionNumber"], 1, "{started}");
    assert_eq!(started["execution"]["jobId"], "slow", "{started}");
    dev.publish(
        "$aws/things/D1/jobs/step/update",
        r#"{"status":"IN_PROGRESS","stepTimeoutInMinutes":1,"clientToken":"step"}"#,
    );
    dev.message("$aws/things/D1/jobs/step/update/accepted", WAIT, |p| {
        p["clientToken"] == "step"
    });
    let retry = dev.message(
        "$aws/things/D1/jobs/notify-next",
        Duration::from_secs(100),
        |p| p["execution"]["executionNumber"] == 2,
    );
    let waited = started_at.elapsed();
    assert!(
        waited >= Duration::from_secs(55),
        "timed out after only {waited:?}"
    );
    assert_eq!(retry["execution"]["jobId"], "slow", "{retry}");
    assert_eq!(retry["execution"]["status"], "QUEUED", "{retry}");
    assert_eq!(retry["execution"]["jobDocument"], json!({"op": "wait"}));
    let (status, job) = rest(&s, &key, "GET", "/api/v1/jobs/slow", None);
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        job["executionCounts"],
        json!({"TIMED_OUT": 1, "QUEUED": 1}),
        "{job}"
    );
    assert_eq!(job["status"], "IN_PROGRESS", "{job}");
    // The step timer ran out as well; that job has no retries and is done.
    // The scheduler settles the job a moment after its last execution, so
    // the test waits for it (up to 15 s, three of the scheduler's periods).
    let deadline = Instant::now() + Duration::from_secs(15);
    let job = loop {
        let (_, job) = rest(&s, &key, "GET", "/api/v1/jobs/step", None);
        if job["status"] == "COMPLETED" || Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["executionCounts"], json!({"TIMED_OUT": 1}), "{job}");
    assert_eq!(job["status"], "COMPLETED", "{job}");
    // The first execution is TIMED_OUT for good: updating it is refused.
    dev.subscribe("$aws/things/D1/jobs/slow/update/rejected");
    dev.subscribe("$aws/things/D1/jobs/slow/update/accepted");
    dev.publish(
        "$aws/things/D1/jobs/slow/update",
        r#"{"status":"SUCCEEDED","executionNumber":1,"clientToken":"late"}"#,
    );
    let late = dev.message("$aws/things/D1/jobs/slow/update/rejected", WAIT, |_| true);
    assert_eq!(late["code"], "InvalidStateTransition", "{late}");
    assert_eq!(late["clientToken"], "late", "{late}");
    assert_eq!(late["executionState"]["status"], "TIMED_OUT", "{late}");
    // The retry runs to completion and the job completes.
    dev.publish(
        "$aws/things/D1/jobs/slow/update",
        r#"{"status":"SUCCEEDED","clientToken":"done"}"#,
    );
    let done = dev.message("$aws/things/D1/jobs/slow/update/accepted", WAIT, |_| true);
    assert_eq!(done["clientToken"], "done", "{done}");
    let (_, job) = rest(&s, &key, "GET", "/api/v1/jobs/slow", None);
    assert_eq!(
        job["executionCounts"],
        json!({"TIMED_OUT": 1, "SUCCEEDED": 1}),
        "{job}"
    );
    assert_eq!(job["status"], "COMPLETED", "{job}");
}

#[test]
fn an_in_progress_timeout_times_out_and_queues_the_retry() {
    timeout_and_retry(Backend::Sqlite);
}

#[test]
fn an_in_progress_timeout_times_out_and_queues_the_retry_on_postgres() {
    timeout_and_retry(Backend::Postgres);
}

fn execution_of(s: &Server, key: &str, job: &str, thing: &str) -> Value {
    let (status, list) = rest(
        s,
        key,
        "GET",
        &format!("/api/v1/jobs/{job}/executions"),
        None,
    );
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["thingName"] == thing)
        .cloned()
        .unwrap_or_else(|| panic!("no execution of {job} on {thing}: {list}"))
}

fn cancel(backend: Backend) {
    let s = Server::start(backend);
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    s.device("D2");
    let mut dev = Session::open(&s, &d1, "5");
    dev.subscribe("$aws/things/D1/jobs/notify-next");
    dev.subscribe("$aws/things/D1/jobs/start-next/accepted");
    dev.subscribe("$aws/things/D1/jobs/+/update/accepted");
    dev.subscribe("$aws/things/D1/jobs/+/update/rejected");

    // Without force: QUEUED executions are canceled, IN_PROGRESS ones run on.
    for job in ["soft", "hard"] {
        let (status, body) = create_job(
            &s,
            &key,
            &json!({"jobId": job, "document": {"op": job}, "targets": ["D1", "D2"]}),
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["executionCounts"], json!({"QUEUED": 2}), "{body}");
        dev.publish(
            "$aws/things/D1/jobs/start-next",
            &json!({"clientToken": job}).to_string(),
        );
        let started = dev.message("$aws/things/D1/jobs/start-next/accepted", WAIT, |p| {
            p["clientToken"] == job
        });
        assert_eq!(started["execution"]["jobId"], job, "{started}");
        assert_eq!(started["execution"]["status"], "IN_PROGRESS");
        if job == "soft" {
            let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/soft/cancel", None);
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "CANCELED", "{body}");
            assert_eq!(
                body["executionCounts"],
                json!({"CANCELED": 1, "IN_PROGRESS": 1}),
                "{body}"
            );
            assert_eq!(execution_of(&s, &key, "soft", "D2")["status"], "CANCELED");
            // The device finishes what it started.
            dev.publish(
                "$aws/things/D1/jobs/soft/update",
                r#"{"status":"SUCCEEDED","clientToken":"soft-done"}"#,
            );
            let done = dev.message("$aws/things/D1/jobs/soft/update/accepted", WAIT, |p| {
                p["clientToken"] == "soft-done"
            });
            assert!(done["timestamp"].is_i64(), "{done}");
            let (_, body) = rest(&s, &key, "GET", "/api/v1/jobs/soft", None);
            assert_eq!(
                body["executionCounts"],
                json!({"CANCELED": 1, "SUCCEEDED": 1}),
                "{body}"
            );
            assert_eq!(body["status"], "CANCELED", "{body}");
        }
    }
    // With force: the IN_PROGRESS execution is canceled as well, the device
    // hears that nothing is next, and its update is refused.
    let (status, body) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/jobs/hard/cancel?force=true",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["executionCounts"], json!({"CANCELED": 2}), "{body}");
    let next = dev.message("$aws/things/D1/jobs/notify-next", WAIT, |p| {
        p.get("execution").is_none()
    });
    assert!(next["timestamp"].is_i64(), "{next}");
    dev.publish(
        "$aws/things/D1/jobs/hard/update",
        r#"{"status":"SUCCEEDED","clientToken":"too-late"}"#,
    );
    let refused = dev.message("$aws/things/D1/jobs/hard/update/rejected", WAIT, |p| {
        p["clientToken"] == "too-late"
    });
    assert_eq!(refused["code"], "InvalidStateTransition", "{refused}");
    assert_eq!(refused["executionState"]["status"], "CANCELED", "{refused}");
    // A canceled job cannot be canceled again; an unknown one is 404.
    let (status, body) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/jobs/hard/cancel?force=true",
        None,
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/nope/cancel", None);
    assert_eq!(status, 404, "{body}");
    // Nothing is pending for either thing.
    for thing in ["D1", "D2"] {
        let (status, body) = rest(
            &s,
            &key,
            "GET",
            &format!("/api/v1/things/{thing}/jobs"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!([]), "{thing}: {body}");
    }
}

#[test]
fn cancel_with_and_without_force() {
    cancel(Backend::Sqlite);
}

#[test]
fn cancel_with_and_without_force_on_postgres() {
    cancel(Backend::Postgres);
}

#[test]
fn the_rest_api_refuses_bad_jobs() {
    let s = Server::start(Backend::Sqlite);
    let key = s.api_key("operator");
    s.device("D1");
    let ok = json!({"jobId": "j1", "document": {"op": "x"}, "targets": ["D1"]});
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        b[field] = value;
        b
    };
    let big = "x".repeat(33 * 1024);
    for (body, want, what) in [
        (
            with("jobId", json!("bad id!")),
            400,
            "a job id with a space and '!'",
        ),
        (
            with("jobId", json!("x".repeat(65))),
            400,
            "a 65-character job id",
        ),
        (with("jobId", json!("")), 400, "an empty job id"),
        (
            with("document", json!([1, 2])),
            400,
            "a document that is an array",
        ),
        (
            with("document", json!("text")),
            400,
            "a document that is a string",
        ),
        (
            with("document", json!({"blob": big})),
            400,
            "a document over 32 KB",
        ),
        (with("targets", json!(["ghost"])), 404, "an unknown thing"),
        (with("targets", json!([])), 400, "no targets"),
        (
            with("timeoutConfig", json!({"inProgressTimeoutInMinutes": 0})),
            400,
            "a zero in-progress timeout",
        ),
        (
            with("jobExecutionsRolloutConfig", json!({"maximumPerMinute": 0})),
            400,
            "a rollout rate of zero",
        ),
        (
            with(
                "abortConfig",
                json!({"criteriaList": [{"action": "CANCEL", "failureType": "FAILED", "minNumberOfExecutedThings": 1, "thresholdPercentage": 150}]}),
            ),
            400,
            "an abort threshold over 100%",
        ),
        (
            with("targetSelection", json!("SOMETIMES")),
            400,
            "an unknown target selection",
        ),
        (
            with("query", json!({"firmwareLt": "bogus"})),
            400,
            "a fleet query whose firmware bound is not a version",
        ),
        (
            with("schedulingConfig", json!({"startTime": "2030-01-01T00:00"})),
            400,
            "a scheduling configuration (not supported)",
        ),
        (
            with("timeoutconfig", json!({"inProgressTimeoutInMinutes": 5})),
            400,
            "a misspelt timeoutConfig",
        ),
    ] {
        let (status, answer) = create_job(&s, &key, &body);
        assert_eq!(status, want, "{what}: {answer}");
    }
    // None of those created anything.
    let (_, list) = rest(&s, &key, "GET", "/api/v1/jobs", None);
    assert_eq!(list["items"], json!([]), "{list}");
    let (status, body) = create_job(&s, &key, &with("targetSelection", json!("SNAPSHOT")));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jobId"], "j1");
    assert_eq!(body["targetSelection"], "SNAPSHOT");
    assert_eq!(
        body["targets"],
        json!({"things": ["D1"], "thingGroups": []}),
        "{body}"
    );
    assert_eq!(body["status"], "IN_PROGRESS");
    assert_eq!(body["document"], json!({"op": "x"}));
    assert_eq!(body["executionCounts"], json!({"QUEUED": 1}));
    let (status, body) = rest(&s, &key, "GET", "/api/v1/things/D1/jobs", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["jobId"], "j1", "{body}");
    assert_eq!(body[0]["status"], "QUEUED", "{body}");
    let (status, body) = rest(&s, &key, "GET", "/api/v1/things/ghost/jobs", None);
    assert_eq!(status, 404, "the jobs of an unknown thing: {body}");
    let (status, body) = create_job(&s, &key, &ok);
    assert_eq!(status, 409, "a duplicate job id: {body}");
    let (status, body) = rest(&s, &key, "GET", "/api/v1/jobs/missing", None);
    assert_eq!(status, 404, "{body}");
    // A reader may look but not create.
    let reader = s.api_key("viewer");
    let (status, body) = create_job(&s, &reader, &with("jobId", json!("j2")));
    assert_eq!(status, 403, "{body}");
    let (status, _) = rest(&s, &reader, "GET", "/api/v1/jobs/j1", None);
    assert_eq!(status, 200);
}

/// Several jobs for one thing: start-next takes them in creation order,
/// notify-next moves on when one finishes, a FAILED execution is retried
/// as configured, describe honours its options and malformed requests are
/// InvalidRequest; all of it survives a restart of the server.
#[test]
fn jobs_run_in_order_retry_on_failure_and_survive_a_restart() {
    in_order_retry_restart(Backend::Sqlite);
}

#[test]
fn jobs_run_in_order_retry_on_failure_and_survive_a_restart_on_postgres() {
    in_order_retry_restart(Backend::Postgres);
}

fn in_order_retry_restart(backend: Backend) {
    let mut s = Server::start(backend);
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    for (job, extra) in [
        ("first", json!({})),
        (
            "second",
            json!({"jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}}),
        ),
    ] {
        let mut body = json!({"jobId": job, "document": {"name": job}, "targets": ["D1"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, answer) = create_job(&s, &key, &body);
        assert_eq!(status, 201, "{answer}");
    }
    // The executions outlive the server process.
    s.restart();
    let base = "$aws/things/D1/jobs";
    let mut dev = Session::open(&s, &d1, "5");
    for t in [
        "notify",
        "notify-next",
        "get/accepted",
        "start-next/accepted",
        "+/get/accepted",
        "+/get/rejected",
        "+/update/accepted",
        "+/update/rejected",
    ] {
        dev.subscribe(&format!("{base}/{t}"));
    }
    dev.publish(&format!("{base}/get"), r#"{"clientToken":"g1"}"#);
    let pending = dev.message(&format!("{base}/get/accepted"), WAIT, |p| {
        p["clientToken"] == "g1"
    });
    let queued: Vec<&Value> = pending["queuedJobs"].as_array().unwrap().iter().collect();
    assert_eq!(
        queued
            .iter()
            .map(|j| j["jobId"].clone())
            .collect::<Vec<_>>(),
        vec![json!("first"), json!("second")],
        "{pending}"
    );

    // start-next takes the first job; notify lists it IN_PROGRESS.
    dev.publish(
        &format!("{base}/start-next"),
        r#"{"clientToken":"s1","stepTimeoutInMinutes":30}"#,
    );
    let started = dev.message(&format!("{base}/start-next/accepted"), WAIT, |p| {
        p["clientToken"] == "s1"
    });
    assert_eq!(started["execution"]["jobId"], "first", "{started}");
    let notify = dev.message(&format!("{base}/notify"), WAIT, |p| {
        p["jobs"]["IN_PROGRESS"].is_array()
    });
    assert_eq!(
        notify["jobs"]["IN_PROGRESS"][0]["jobId"], "first",
        "{notify}"
    );
    assert_eq!(notify["jobs"]["QUEUED"][0]["jobId"], "second", "{notify}");

    // start-next again returns the execution in progress as it is: its
    // statusDetails and version are not touched.
    dev.publish(
        &format!("{base}/start-next"),
        r#"{"clientToken":"s2","statusDetails":{"step":"again"}}"#,
    );
    let again = dev.message(&format!("{base}/start-next/accepted"), WAIT, |p| {
        p["clientToken"] == "s2"
    });
    assert_eq!(again["execution"]["jobId"], "first", "{again}");
    assert_eq!(again["execution"]["status"], "IN_PROGRESS", "{again}");
    assert_eq!(
        again["execution"]["versionNumber"], started["execution"]["versionNumber"],
        "{again}"
    );
    assert_eq!(
        again["execution"]["statusDetails"], started["execution"]["statusDetails"],
        "{again}"
    );
    // A client token over 64 bytes is refused.
    let long = "t".repeat(65);
    dev.publish(
        &format!("{base}/first/update"),
        &json!({"clientToken": long, "status": "IN_PROGRESS"}).to_string(),
    );
    let refused = dev.message(&format!("{base}/first/update/rejected"), WAIT, |_| true);
    assert_eq!(refused["code"], "InvalidRequest", "{refused}");

    // A job queued behind one in progress is listed by notify, but the
    // next execution is unchanged: no notify-next.
    let (status, answer) = create_job(
        &s,
        &key,
        &json!({"jobId": "third", "document": {"name": "third"}, "targets": ["D1"]}),
    );
    assert_eq!(status, 201, "{answer}");
    let notify = dev.message(&format!("{base}/notify"), WAIT, |p| {
        p["jobs"]["QUEUED"].as_array().is_some_and(|q| q.len() == 2)
    });
    assert_eq!(notify["jobs"]["QUEUED"][1]["jobId"], "third", "{notify}");
    assert!(
        dev.wait(Duration::from_millis(1500), |e| e["topic"]
            == format!("{base}/notify-next"))
            .is_none(),
        "notify-next although the next execution did not change: {:?}",
        dev.seen
    );

    // describe without the document; with an execution number it lacks.
    dev.publish(
        &format!("{base}/first/get"),
        r#"{"clientToken":"d1","includeJobDocument":false}"#,
    );
    let described = dev.message(&format!("{base}/first/get/accepted"), WAIT, |p| {
        p["clientToken"] == "d1"
    });
    assert_eq!(
        described["execution"]["status"], "IN_PROGRESS",
        "{described}"
    );
    assert!(
        described["execution"].get("jobDocument").is_none(),
        "{described}"
    );
    dev.publish(
        &format!("{base}/first/get"),
        r#"{"clientToken":"d2","executionNumber":7}"#,
    );
    let missing = dev.message(&format!("{base}/first/get/rejected"), WAIT, |p| {
        p["clientToken"] == "d2"
    });
    assert_eq!(missing["code"], "ResourceNotFound", "{missing}");

    // Malformed updates: no status, a status detail that is not a string.
    for (token, body) in [
        ("u1", json!({"clientToken": "u1"})),
        (
            "u2",
            json!({"clientToken": "u2", "status": "IN_PROGRESS", "statusDetails": {"n": 5}}),
        ),
        ("u3", json!({"clientToken": "u3", "status": "DONE"})),
    ] {
        dev.publish(&format!("{base}/first/update"), &body.to_string());
        let refused = dev.message(&format!("{base}/first/update/rejected"), WAIT, |p| {
            p["clientToken"] == token
        });
        assert_eq!(refused["code"], "InvalidRequest", "{body}: {refused}");
    }

    // The first job succeeds: notify-next announces the second.
    dev.publish(
        &format!("{base}/first/update"),
        r#"{"clientToken":"u4","status":"SUCCEEDED"}"#,
    );
    dev.message(&format!("{base}/first/update/accepted"), WAIT, |p| {
        p["clientToken"] == "u4"
    });
    let next = dev.message(&format!("{base}/notify-next"), WAIT, |p| {
        p["execution"]["jobId"] == "second"
    });
    assert_eq!(next["execution"]["status"], "QUEUED", "{next}");
    assert_eq!(next["execution"]["jobDocument"], json!({"name": "second"}));

    // The second fails once and is retried as execution 2, queued now and
    // so behind the third job: notify-next moves on to the third.
    dev.publish(
        &format!("{base}/second/update"),
        r#"{"clientToken":"u5","status":"FAILED","statusDetails":{"why":"disk full"}}"#,
    );
    dev.message(&format!("{base}/second/update/accepted"), WAIT, |p| {
        p["clientToken"] == "u5"
    });
    let next = dev.message(&format!("{base}/notify-next"), WAIT, |p| {
        p["execution"]["jobId"] == "third"
    });
    assert_eq!(next["execution"]["status"], "QUEUED", "{next}");
    dev.publish(&format!("{base}/get"), r#"{"clientToken":"g2"}"#);
    let pending = dev.message(&format!("{base}/get/accepted"), WAIT, |p| {
        p["clientToken"] == "g2"
    });
    let queued: Vec<(Value, Value)> = pending["queuedJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["jobId"].clone(), j["executionNumber"].clone()))
        .collect();
    assert_eq!(
        queued,
        vec![(json!("third"), json!(1)), (json!("second"), json!(2))],
        "{pending}"
    );
    // The retry fails too: the retries are spent, nothing more is queued.
    dev.publish(
        &format!("{base}/second/update"),
        r#"{"clientToken":"u6","status":"FAILED","executionNumber":2}"#,
    );
    let failed = dev.message(&format!("{base}/second/update/accepted"), WAIT, |p| {
        p["clientToken"] == "u6"
    });
    assert!(failed["timestamp"].is_i64(), "{failed}");
    dev.publish(
        &format!("{base}/third/update"),
        r#"{"clientToken":"u7","status":"SUCCEEDED"}"#,
    );
    dev.message(&format!("{base}/third/update/accepted"), WAIT, |p| {
        p["clientToken"] == "u7"
    });
    dev.message(&format!("{base}/notify-next"), WAIT, |p| {
        p.get("execution").is_none()
    });
    let (_, job) = rest(&s, &key, "GET", "/api/v1/jobs/second", None);
    assert_eq!(job["executionCounts"], json!({"FAILED": 2}), "{job}");
    // Paging through the executions one at a time finds both of D1's.
    let mut numbers = Vec::new();
    let mut path = "/api/v1/jobs/second/executions?limit=1".to_string();
    for _ in 0..5 {
        let (status, page) = rest(&s, &key, "GET", &path, None);
        assert_eq!(status, 200, "{page}");
        for e in page["items"].as_array().unwrap() {
            numbers.push(e["executionNumber"].clone());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/jobs/second/executions?limit=1&after={next}"),
            None => break,
        }
    }
    assert_eq!(numbers, vec![json!(1), json!(2)]);
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let (_, job) = rest(&s, &key, "GET", "/api/v1/jobs/first", None);
    assert_eq!(job["executionCounts"], json!({"SUCCEEDED": 1}), "{job}");
}

/// A thing that floods the jobs API is answered RequestThrottled (with its
/// client token) beyond the burst, and served again once it slows down.
#[test]
fn a_flood_of_jobs_requests_is_throttled() {
    let s = Server::start(Backend::Sqlite);
    let d1 = s.device("D1");
    let mut dev = Session::open(&s, &d1, "5");
    dev.subscribe("$aws/things/D1/jobs/get/accepted");
    dev.subscribe("$aws/things/D1/jobs/get/rejected");
    let n = 150;
    for i in 0..n {
        dev.publish(
            "$aws/things/D1/jobs/get",
            &json!({"clientToken": format!("c{i}")}).to_string(),
        );
    }
    let mut accepted = 0;
    let mut throttled = 0;
    while accepted + throttled < n {
        let Some(e) = dev.wait(WAIT, |e| e["event"] == "message") else {
            panic!(
                "{accepted} accepted and {throttled} throttled of {n}; saw {:?}",
                dev.seen.last()
            );
        };
        let body: Value = serde_json::from_str(e["payload"].as_str().unwrap()).unwrap();
        assert!(
            body["clientToken"]
                .as_str()
                .is_some_and(|t| t.starts_with('c')),
            "{body}"
        );
        if e["topic"] == "$aws/things/D1/jobs/get/accepted" {
            accepted += 1;
        } else {
            assert_eq!(body["code"], "RequestThrottled", "{body}");
            throttled += 1;
        }
    }
    assert!(accepted >= 40, "only {accepted} of {n} accepted");
    assert!(throttled > 0, "{n} requests at once, none throttled");
    std::thread::sleep(Duration::from_secs(2));
    dev.publish("$aws/things/D1/jobs/get", r#"{"clientToken":"later"}"#);
    dev.message("$aws/things/D1/jobs/get/accepted", WAIT, |p| {
        p["clientToken"] == "later"
    });
}

// ---- pause, resume and delete over REST ----

fn pause_resume_delete(backend: Backend) {
    let s = Server::start(backend);
    let key = s.api_key("operator");
    let viewer = s.api_key("viewer");
    for thing in ["D1", "D2", "D3"] {
        let _ = s.token(thing);
    }
    // One a minute: the first is released at creation, two wait.
    let (status, body) = create_job(
        &s,
        &key,
        &json!({"jobId": "paced", "document": {"op": "x"}, "targets": ["D1", "D2", "D3"],
                "jobExecutionsRolloutConfig": {"maximumPerMinute": 1}}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["executionCounts"], json!({"QUEUED": 1}), "{body}");
    assert_eq!(body["rolloutPaused"], false, "{body}");
    // A viewer may read, not pause.
    let (status, body) = rest(&s, &viewer, "POST", "/api/v1/jobs/paced/pause", None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/paced/pause", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rolloutPaused"], true, "{body}");
    assert_eq!(body["status"], "IN_PROGRESS", "{body}");
    let (status, body) = rest(&s, &key, "GET", "/api/v1/jobs", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["rolloutPaused"], true, "{body}");
    let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/paced/pause", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    let (status, _) = rest(&s, &key, "POST", "/api/v1/jobs/nope/pause", None);
    assert_eq!(status, 404);
    let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/paced/resume", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rolloutPaused"], false, "{body}");
    // Delete: refused while in progress, then with force.
    let (status, body) = rest(&s, &key, "DELETE", "/api/v1/jobs/paced", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IN_PROGRESS"),
        "{body}"
    );
    let (status, body) = rest(&s, &viewer, "DELETE", "/api/v1/jobs/paced?force=true", None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = rest(&s, &key, "DELETE", "/api/v1/jobs/paced?force=true", None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null, "no body");
    let (status, _) = rest(&s, &key, "GET", "/api/v1/jobs/paced", None);
    assert_eq!(status, 404);
    let (status, _) = rest(&s, &key, "GET", "/api/v1/things/D1/jobs", None);
    assert_eq!(status, 200);
    let (_, pending) = rest(&s, &key, "GET", "/api/v1/things/D1/jobs", None);
    assert_eq!(pending, json!([]), "the deleted job's execution is gone");
    // Pausing a terminal job is refused; the id is free again.
    let (status, body) = create_job(
        &s,
        &key,
        &json!({"jobId": "paced", "document": {"op": "y"}, "targets": ["D2"]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["document"], json!({"op": "y"}), "{body}");
    let (status, _) = rest(&s, &key, "POST", "/api/v1/jobs/paced/cancel", None);
    assert_eq!(status, 200);
    let (status, body) = rest(&s, &key, "POST", "/api/v1/jobs/paced/pause", None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CANCELED"),
        "{body}"
    );
    let (status, _) = rest(&s, &key, "DELETE", "/api/v1/jobs/paced", None);
    assert_eq!(status, 204);
    // Audited, and in the OpenAPI document.
    let audit = s.cli_json(&["audit", "--action", "job.delete"]);
    let audit = audit.get("items").unwrap_or(&audit);
    assert_eq!(audit.as_array().map(Vec::len), Some(2), "{audit}");
    let doc = s.curl(&[&s.url("/api/v1/openapi.json")]).json();
    for (path, method) in [
        ("/api/v1/jobs/{job_id}/pause", "post"),
        ("/api/v1/jobs/{job_id}/resume", "post"),
        ("/api/v1/jobs/{job_id}", "delete"),
    ] {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} missing"
        );
    }
}

#[test]
fn jobs_are_paused_resumed_and_deleted_over_rest() {
    pause_resume_delete(Backend::Sqlite);
}

#[test]
fn jobs_are_paused_resumed_and_deleted_over_rest_on_postgres() {
    pause_resume_delete(Backend::Postgres);
}
