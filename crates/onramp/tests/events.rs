//! Outbound events to real HTTP receivers (retries, dead letters, replay,
//! signatures, tenants, a restart), and audit checks through the CLI and
//! the REST API against the real server and real MQTT clients.

mod support;

use onramp_domain::event::verify;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A tiny HTTP/1.1 receiver on a real socket: it answers 500 to the first
/// `fail_first` requests (or to all while `failing` is set), 200 after.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start(fail_first: usize, always_fail: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail_first = Arc::new(AtomicUsize::new(fail_first));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(always_fail));
        let (g, f, a) = (got.clone(), fail_first.clone(), failing.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let fail = a.load(Ordering::SeqCst)
                    || f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                let status = if fail { 500 } else { 200 };
                g.lock().unwrap().push(Received {
                    headers,
                    body,
                    answered: status,
                });
                let reason = if fail { "Internal Server Error" } else { "OK" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, got, failing }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what was received.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "waited {timeout:?} for {what}; received {} requests: {:?}",
                got.len(),
                got.iter().map(|r| r.answered).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every request carries a valid signature under the subscription's secret,
/// within the replay window; and a copy with another body is refused.
fn assert_signed(r: &Received, secret: &str) {
    let sig = r.header("onramp-signature").expect("signature header");
    verify(secret.as_bytes(), sig, &r.body, now(), 300)
        .unwrap_or_else(|e| panic!("signature {sig} does not verify: {e}"));
    assert!(verify(secret.as_bytes(), sig, b"{\"forged\":true}", now(), 300).is_err());
    assert!(verify(b"whsec_wrong", sig, &r.body, now(), 300).is_err());
    assert_eq!(
        r.header("onramp-event-id"),
        r.json()["id"].as_str(),
        "the id header names the body's event"
    );
}

const FAST_RETRIES: [(&str, &str); 3] = [
    ("ONRAMP_EVENTS__RETRY_INITIAL_SECS", "1"),
    ("ONRAMP_EVENTS__RETRY_MAX_SECS", "2"),
    ("ONRAMP_EVENTS__MAX_ATTEMPTS", "3"),
];

fn subscribe(s: &Server, key: &str, url: &str, types: &str) -> (String, String) {
    let r = s.api(
        "POST",
        "/api/v1/event-subscriptions",
        key,
        Some(&serde_json::json!({"url": url, "eventTypes": types}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    (
        j["id"].as_str().unwrap().to_string(),
        j["secret"].as_str().unwrap().to_string(),
    )
}

fn serial_of(s: &Server, thing: &str) -> String {
    s.certs_of(thing)[0]["serial"].as_str().unwrap().to_string()
}

#[test]
fn webhooks_retry_dead_letter_replay_and_stay_in_their_tenant() {
    let s = Server::start_with(backend(), &FAST_RETRIES, None);
    let admin = s.api_key("admin");
    let flaky = Receiver::start(2, false);
    let down = Receiver::start(0, true);
    let other_tenant = Receiver::start(0, false);

    let (flaky_id, flaky_secret) = subscribe(&s, &admin, &flaky.url, "certificate.revoked");
    let (down_id, down_secret) = subscribe(&s, &admin, &down.url, "*");
    // The secret is shown once: listings never carry it.
    let listed = s.api("GET", "/api/v1/event-subscriptions", &admin, None);
    assert_eq!(listed.status, 200);
    assert!(!listed.text().contains(&flaky_secret));
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    // A viewer may not subscribe; a bad type is refused.
    let viewer = s.api_key("viewer");
    let r = s.api(
        "POST",
        "/api/v1/event-subscriptions",
        &viewer,
        Some(&serde_json::json!({"url": flaky.url}).to_string()),
    );
    assert_eq!(r.status, 403);
    let r = s.api(
        "POST",
        "/api/v1/event-subscriptions",
        &admin,
        Some(r#"{"url":"http://127.0.0.1:1/x","eventTypes":"certificate.bogus"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // Another tenant subscribes to everything.
    let out = s.cli(&["tenant", "create", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acme = s.cli_json(&[
        "--tenant",
        "acme",
        "webhook",
        "create",
        "--url",
        &other_tenant.url,
    ]);
    assert!(acme["secret"].as_str().unwrap().starts_with("whsec_"));

    // Revoking a certificate is an event.
    let id = s.device("SN-EV-1");
    let serial = serial_of(&s, &id.name);
    let out = s.cli(&["cert", "revoke", &serial, "--reason", "keyCompromise"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The flaky receiver: two failures, then delivered; the same event each time.
    let got = flaky.wait_for(
        "a delivery after two failures",
        Duration::from_secs(30),
        |g| g.iter().any(|r| r.answered == 200),
    );
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    let event = got[2].json();
    assert_eq!(event["type"], "certificate.revoked");
    assert_eq!(event["subject"], format!("certificate:{serial}"));
    assert_eq!(event["data"]["reason"], "keyCompromise");
    assert_eq!(event["tenant"], "default");
    for r in &got {
        assert_signed(r, &flaky_secret);
        assert_eq!(r.json()["id"], event["id"]);
    }
    // Nothing more arrives once delivered.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(flaky.received().len(), 3);

    // The receiver that is down: three attempts, then a dead letter.
    down.wait_for("three attempts", Duration::from_secs(30), |g| g.len() >= 3);
    let start = Instant::now();
    let dead = loop {
        let dead = s.cli_json(&["event", "dead-letters"]);
        if !dead.as_array().unwrap().is_empty() {
            break dead;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no dead letter");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(dead[0]["subscriptionId"], down_id.as_str());
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["lastError"], "HTTP 500");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(down.received().len(), 3, "a dead letter is not retried");

    // The receiver recovers; the operator replays the dead letter over REST.
    down.failing.store(false, Ordering::SeqCst);
    let event_id = dead[0]["eventId"].as_str().unwrap();
    let operator = s.api_key("operator");
    let r = s.api(
        "POST",
        &format!("/api/v1/event-deliveries/{event_id}/{down_id}/replay"),
        &operator,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let got = down.wait_for("the replay", Duration::from_secs(20), |g| {
        g.iter().any(|r| r.answered == 200)
    });
    assert_signed(got.last().unwrap(), &down_secret);
    assert_eq!(got.last().unwrap().json()["id"], event_id);
    let dead = s.api("GET", "/api/v1/event-deliveries?status=dead", &admin, None);
    assert_eq!(dead.json().as_array().unwrap().len(), 0);
    // Replaying what is not dead is refused.
    let r = s.api(
        "POST",
        &format!("/api/v1/event-deliveries/{event_id}/{down_id}/replay"),
        &operator,
        None,
    );
    assert_eq!(r.status, 404);

    // The other tenant saw none of this.
    assert!(other_tenant.received().is_empty());
    let acme_events = s.cli_json(&["--tenant", "acme", "event", "list"]);
    assert_eq!(acme_events["items"].as_array().unwrap().len(), 0);
    let default_events = s.cli_json(&["event", "list"]);
    assert_eq!(default_events["items"].as_array().unwrap().len(), 1);

    // Deleting a subscription through the CLI.
    let out = s.cli(&["webhook", "delete", &flaky_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.cli_json(&["webhook", "list"]).as_array().unwrap().len(),
        1
    );
}

#[test]
fn an_event_stored_before_a_restart_is_delivered_after_it() {
    let mut s = Server::start_with(backend(), &FAST_RETRIES, None);
    let admin = s.api_key("admin");
    let receiver = Receiver::start(0, true);
    let (_, secret) = subscribe(&s, &admin, &receiver.url, "certificate.revoked");
    let id = s.device("SN-EV-2");
    let serial = serial_of(&s, &id.name);
    // The server is down when the revocation commits (the CLI writes the
    // registry directly): the event waits in the store.
    s.stop();
    let out = s.cli(&["cert", "revoke", &serial]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    receiver.failing.store(false, Ordering::SeqCst);
    s.start_again();
    let got = receiver.wait_for(
        "the delivery after the restart",
        Duration::from_secs(30),
        |g| g.iter().any(|r| r.answered == 200),
    );
    assert_eq!(got.len(), 1);
    assert_signed(&got[0], &secret);
    assert_eq!(got[0].json()["subject"], format!("certificate:{serial}"));
}

fn findings(s: &Server, check: &str) -> Vec<Value> {
    s.cli_json(&["audit-checks", "run", "--check", check])
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .cloned()
        .collect()
}

#[test]
fn audit_checks_find_permissive_policies_and_can_suppress_them() {
    let s = Server::start(backend());
    // No policy: no finding.
    assert!(findings(&s, "overly-permissive-policy").is_empty());
    let scoped = s.path("scoped.json");
    std::fs::write(
        &scoped,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/d/${iot:Connection.Thing.ThingName}/*"}]}"#,
    )
    .unwrap();
    let out = s.cli(&[
        "policy",
        "create",
        "scoped",
        "--document",
        scoped.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(findings(&s, "overly-permissive-policy").is_empty());

    let receiver = Receiver::start(0, false);
    let admin = s.api_key("admin");
    let (_, secret) = subscribe(&s, &admin, &receiver.url, "audit.finding");
    let open = s.path("open.json");
    std::fs::write(
        &open,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
    )
    .unwrap();
    let out = s.cli(&[
        "policy",
        "create",
        "everything",
        "--document",
        open.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On demand through the REST API.
    let r = s.api(
        "POST",
        "/api/v1/audit-checks/run",
        &admin,
        Some(r#"{"checks":["overly-permissive-policy"]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let found: Vec<Value> = r.json().as_array().unwrap().to_vec();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["resource"], "policy:everything");
    assert_eq!(found[0]["severity"], "critical");
    // ... and sent as an event.
    let got = receiver.wait_for("the finding event", Duration::from_secs(20), |g| {
        !g.is_empty()
    });
    assert_signed(&got[0], &secret);
    assert_eq!(got[0].json()["type"], "audit.finding");
    assert_eq!(got[0].json()["data"]["resource"], "policy:everything");

    // Suppressed with a reason: listed as such, no new event on later runs.
    let id = found[0]["id"].as_str().unwrap();
    let sup = s.cli_json(&[
        "audit-checks",
        "suppress",
        id,
        "--reason",
        "lab bench policy",
    ]);
    assert_eq!(sup["suppressedReason"], "lab bench policy");
    let again = findings(&s, "overly-permissive-policy");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["suppressed"], true);
    // A suppression needs a reason.
    let r = s.api(
        "POST",
        &format!("/api/v1/audit-findings/{id}/suppression"),
        &admin,
        Some(r#"{"reason":" "}"#),
    );
    assert_eq!(r.status, 400);
    // A viewer may not run the checks.
    let viewer = s.api_key("viewer");
    assert_eq!(
        s.api("POST", "/api/v1/audit-checks/run", &viewer, Some("{}"))
            .status,
        403
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.received().len(), 1);
}

#[test]
fn audit_checks_find_a_revoked_certificate_still_trying_to_connect() {
    let s = Server::start(backend());
    let id = s.device("SN-AC-1");
    let serial = serial_of(&s, &id.name);
    // Connected while active: no finding.
    let (ok, err) = s.mosquitto_pub(&id, &["-t", "d/SN-AC-1/x", "-m", "hi"]);
    assert!(ok, "{err}");
    assert!(findings(&s, "revoked-certificate-still-active").is_empty());
    let out = s.cli(&["cert", "revoke", &serial]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    // The device keeps trying with its revoked certificate.
    for _ in 0..2 {
        let (ok, _) = s.mosquitto_pub(&id, &["-t", "d/SN-AC-1/x", "-m", "hi"]);
        assert!(!ok, "a revoked certificate connected");
    }
    // The server writes the attempts it saw every few seconds.
    let start = Instant::now();
    let found = loop {
        let found = findings(&s, "revoked-certificate-still-active");
        if !found.is_empty() || start.elapsed() > Duration::from_secs(20) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["resource"], format!("certificate:{serial}"));
    assert!(
        found[0]["detail"].as_str().unwrap().contains("revoked"),
        "{found:?}"
    );
}

/// Connections made with a policy that lets any client id connect, and the
/// gateway not requiring the client id to be the thing name.
fn open_connect_server() -> Server {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_MQTT__REQUIRE_CLIENT_ID_MATCH", "false")],
        None,
    );
    let doc = s.path("any-client.json");
    std::fs::write(
        &doc,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/*"},{"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/d/${iot:Connection.Thing.ThingName}/*"}]}"#,
    )
    .unwrap();
    let out = s.cli(&[
        "policy",
        "create",
        "any-client",
        "--document",
        doc.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

fn attach(s: &Server, thing: &str) {
    let out = s.cli(&["policy", "attach", "any-client", "--device", thing]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls the check until it finds something (the server writes the
/// attempts it saw every few seconds).
fn wait_findings(s: &Server, check: &str) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let found = findings(s, check);
        if !found.is_empty() || start.elapsed() > Duration::from_secs(20) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn audit_checks_find_a_certificate_used_by_two_clients_at_once() {
    let s = open_connect_server();
    let id = s.device("SN-SH-1");
    attach(&s, &id.name);
    let serial = serial_of(&s, &id.name);
    // One client: no finding.
    let first = s.mosquitto_sub(&id, "SN-SH-1", &["-t", "d/SN-SH-1/x"]);
    settle();
    std::thread::sleep(Duration::from_secs(6));
    assert!(findings(&s, "device-certificate-shared").is_empty());
    // The same certificate under a second client id while the first is on.
    let second = s.mosquitto_sub(&id, "copied-key", &["-t", "d/SN-SH-1/x"]);
    settle();
    let found = wait_findings(&s, "device-certificate-shared");
    drop((first, second));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["resource"], format!("certificate:{serial}"));
    assert!(found[0]["detail"].as_str().unwrap().contains("copied-key"));
}

#[test]
fn audit_checks_find_two_things_flapping_one_client_id() {
    let s = open_connect_server();
    let a = s.device("SN-CF-1");
    let b = s.device("SN-CF-2");
    attach(&s, &a.name);
    attach(&s, &b.name);
    // Each on its own id: no finding.
    let own_a = s.mosquitto_sub(&a, "SN-CF-1", &["-t", "d/SN-CF-1/x"]);
    let own_b = s.mosquitto_sub(&b, "SN-CF-2", &["-t", "d/SN-CF-2/x"]);
    settle();
    std::thread::sleep(Duration::from_secs(6));
    assert!(findings(&s, "conflicting-client-ids").is_empty());
    drop((own_a, own_b));
    // Both want "pump": the second is refused while the first holds it.
    let holder = s.mosquitto_sub(&a, "pump", &["-t", "d/SN-CF-1/x"]);
    settle();
    let _ = s
        .mosquitto_sub(&b, "pump", &["-t", "d/SN-CF-2/x", "-W", "2"])
        .wait();
    let found = wait_findings(&s, "conflicting-client-ids");
    drop(holder);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["resource"], "client:pump");
    let detail = found[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("SN-CF-1") && detail.contains("SN-CF-2"),
        "{detail}"
    );
}

const OPEN_TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
  }
}"#;

/// The four checks that read the registry rather than connection attempts,
/// each with its condition made real on a running server: certificates and
/// the CA inside the (widened) warning windows, a device enrolled and never
/// connected (resolved once it connects), and a claim certificate whose
/// template has no allow-list and whose validity is over the limit.
#[test]
fn audit_checks_find_expiring_certificates_silent_devices_and_open_claims() {
    let s = Server::start_with(
        backend(),
        &[
            // Every certificate and CA issued here falls inside these windows.
            ("ONRAMP_EVENTS__DEVICE_CERT_EXPIRY_DAYS", "36500"),
            ("ONRAMP_EVENTS__CA_EXPIRY_DAYS", "36500"),
            ("ONRAMP_EVENTS__NEVER_SEEN_DAYS", "0"),
            ("ONRAMP_EVENTS__CLAIM_MAX_VALIDITY_DAYS", "1"),
        ],
        None,
    );
    let device = s.device("SN-AU-1");
    let serial = serial_of(&s, "SN-AU-1");

    let expiring = findings(&s, "device-certificate-expiring");
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    assert_eq!(expiring[0]["resource"], format!("certificate:{serial}"));
    assert!(
        expiring[0]["detail"]
            .as_str()
            .unwrap()
            .contains("SN-AU-1 expires in"),
        "{expiring:?}"
    );

    let ca = findings(&s, "ca-certificate-expiring");
    assert!(!ca.is_empty(), "{ca:?}");
    assert!(
        ca.iter()
            .all(|f| f["resource"].as_str().unwrap().starts_with("ca:")),
        "{ca:?}"
    );

    let silent = findings(&s, "device-never-seen");
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["resource"], "device:SN-AU-1");
    // It connects: the next run no longer sees it, and the finding resolves.
    let (ok, err) = s.mosquitto_pub(&device, &["-t", "things/SN-AU-1/hello", "-m", "x"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !findings(&s, "device-never-seen").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the device connected but is still never seen"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = s.cli_json(&["audit-checks", "findings", "--status", "resolved"]);
    let resolved: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "device-never-seen" && f["resource"] == "device:SN-AU-1")
        .collect();
    assert_eq!(resolved.len(), 1, "{all}");
    assert_eq!(resolved[0]["status"], "resolved", "{all}");

    // A claim certificate of a template without an allow-list, valid for
    // longer than the limit.
    let body = s.path("open-template.json");
    std::fs::write(&body, OPEN_TEMPLATE).unwrap();
    let out = s.cli(&[
        "template",
        "create",
        "open-fab",
        "--body",
        body.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(findings(&s, "claim-certificate-permissive").is_empty());
    let claim_dir = s.path("claim");
    s.cli_json(&[
        "claim",
        "create",
        "--template",
        "open-fab",
        "--out",
        claim_dir.to_str().unwrap(),
    ]);
    let open = findings(&s, "claim-certificate-permissive");
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(
        open[0]["resource"].as_str().unwrap().starts_with("claim:"),
        "{open:?}"
    );
    let detail = open[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("template open-fab has no serial allow-list")
            && detail.contains("more than 1)"),
        "{detail}"
    );
}
