//! Device shadows over the AWS MQTT topics (mosquitto clients) and the REST API.

mod support;

use serde_json::{Value, json};
use support::*;

fn rest(s: &Server, key: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = s.api(method, path, key, body);
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

fn payload(line: &str) -> Value {
    serde_json::from_str(line.split_once(' ').unwrap().1).unwrap()
}

#[test]
fn desired_state_from_rest_reaches_the_device_as_a_delta_and_reporting_clears_it() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    let delta = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "$aws/things/D1/shadow/update/delta",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    settle();
    let (status, accepted) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow",
        Some(r#"{"state":{"desired":{"color":"red","mode":{"fan":"on"}}},"clientToken":"op-1"}"#),
    );
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["version"], 1);
    assert_eq!(accepted["clientToken"], "op-1");
    let (ok, lines, err) = delta.wait();
    assert!(ok, "{err}");
    let d = payload(&lines[0]);
    assert_eq!(d["state"], json!({"color": "red", "mode": {"fan": "on"}}));
    assert_eq!(d["version"], 1);

    // The device reports what it applied (over MQTT); the delta is gone.
    let report =
        r#"{"state":{"reported":{"color":"red","mode":{"fan":"on"}}},"clientToken":"dev-1"}"#;
    assert!(
        s.mosquitto_pub(
            &d1,
            &[
                "-t",
                "$aws/things/D1/shadow/update",
                "-m",
                report,
                "-q",
                "1"
            ]
        )
        .0
    );
    let (status, doc) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None);
    assert_eq!(status, 200);
    assert_eq!(doc["version"], 2);
    assert!(doc["state"].get("delta").is_none(), "{doc}");
    assert_eq!(doc["state"]["reported"]["color"], "red");
    assert!(
        doc["metadata"]["reported"]["color"]["timestamp"]
            .as_i64()
            .is_some()
    );
}

#[test]
fn the_rest_get_shows_the_delta_and_missing_shadows_get_aws_errors() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    s.device("D1");
    let (status, _) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow",
        Some(r#"{"state":{"desired":{"rate":5}}}"#),
    );
    assert_eq!(status, 200);
    let (status, doc) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None);
    assert_eq!(status, 200);
    assert_eq!(doc["state"]["delta"], json!({"rate": 5}));
    // A named shadow that does not exist: 404 with AWS's error shape.
    let (status, err) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow?name=nope", None);
    assert_eq!(status, 404);
    assert_eq!(err["code"], 404);
    assert!(err["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn named_shadows_work_over_mqtt_and_are_listed() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    let d1 = s.device("D1");
    let accepted = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "$aws/things/D1/shadow/name/cfg/update/accepted",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    settle();
    let (status, _) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow?name=cfg",
        Some(r#"{"state":{"reported":{"interval":30}},"clientToken":"c1"}"#),
    );
    assert_eq!(status, 200);
    let (ok, lines, err) = accepted.wait();
    assert!(ok, "{err}");
    let a = payload(&lines[0]);
    assert_eq!(a["state"]["reported"]["interval"], 30);
    assert_eq!(a["clientToken"], "c1");
    let (_, names) = rest(&s, &key, "GET", "/api/v1/things/D1/shadows", None);
    assert_eq!(names["results"], json!(["cfg"]));
    assert_eq!(names["classic"], false);
}

#[test]
fn a_device_cannot_touch_another_devices_shadow() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    s.device("D1");
    let d2 = s.device("D2");
    let (status, _) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow",
        Some(r#"{"state":{"desired":{"lock":"closed"}}}"#),
    );
    assert_eq!(status, 200);
    let _ = s.mosquitto_pub(
        &d2,
        &[
            "-t",
            "$aws/things/D1/shadow/update",
            "-m",
            r#"{"state":{"desired":{"lock":"open"}}}"#,
            "-q",
            "1",
        ],
    );
    let (_, out, err) = s
        .mosquitto_sub(&d2, "D2", &["-t", "$aws/things/D1/shadow/get/+", "-W", "2"])
        .wait();
    assert!(out.is_empty());
    assert!(err.contains("denied"), "{err}");
    let (_, doc) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None);
    assert_eq!(doc["state"]["desired"]["lock"], "closed");
    assert_eq!(doc["version"], 1);
}

#[test]
fn bad_shadow_documents_are_refused_and_change_nothing() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    s.device("D1");
    let (status, _) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow",
        Some(r#"{"state":{"desired":{"a":1}}}"#),
    );
    assert_eq!(status, 200);
    let big = format!(
        r#"{{"state":{{"desired":{{"blob":"{}"}}}}}}"#,
        "x".repeat(9000)
    );
    let deep = r#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}"#;
    for (body, code) in [
        ("{not json", 400),
        (r#"{"desired":{"a":2}}"#, 400),
        (deep, 400),
        (big.as_str(), 413),
        (r#"{"state":{"desired":{"arr":[1,null]}}}"#, 400),
        (r#"{"state":{"desired":{"a":3}},"version":7}"#, 409),
    ] {
        let (status, err) = rest(&s, &key, "POST", "/api/v1/things/D1/shadow", Some(body));
        assert_eq!(status, code, "{body}: {err}");
        assert_eq!(err["code"], code);
    }
    let (_, doc) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["state"]["desired"], json!({"a": 1}));
    // A thing that is not registered has no shadow.
    let (status, _) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/nobody/shadow",
        Some(r#"{"state":{"desired":{"a":1}}}"#),
    );
    assert_eq!(status, 404);
}

#[test]
fn version_numbering_continues_after_delete_and_recreate() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    s.device("D1");
    for v in 1..=3 {
        let (_, a) = rest(
            &s,
            &key,
            "POST",
            "/api/v1/things/D1/shadow",
            Some(&format!(r#"{{"state":{{"reported":{{"n":{v}}}}}}}"#)),
        );
        assert_eq!(a["version"], v);
    }
    let (status, del) = rest(&s, &key, "DELETE", "/api/v1/things/D1/shadow", None);
    assert_eq!(status, 200);
    assert_eq!(del["version"], 3);
    assert_eq!(
        rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None).0,
        404
    );
    let (_, a) = rest(
        &s,
        &key,
        "POST",
        "/api/v1/things/D1/shadow",
        Some(r#"{"state":{"reported":{"n":1}}}"#),
    );
    assert_eq!(a["version"], 4);
    let (_, history) = rest(
        &s,
        &key,
        "GET",
        "/api/v1/things/D1/shadow/history?limit=10",
        None,
    );
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
}

#[test]
fn concurrent_updates_from_many_writers_lose_nothing() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    s.device("D1");
    std::thread::scope(|scope| {
        for w in 0..8 {
            let s = &s;
            let key = &key;
            scope.spawn(move || {
                for i in 0..5 {
                    let body = format!(r#"{{"state":{{"reported":{{"w{w}":{i}}}}}}}"#);
                    let (status, _) = rest(s, key, "POST", "/api/v1/things/D1/shadow", Some(&body));
                    assert_eq!(status, 200);
                }
            });
        }
    });
    let (_, doc) = rest(&s, &key, "GET", "/api/v1/things/D1/shadow", None);
    assert_eq!(
        doc["version"], 40,
        "every accepted update got its own version"
    );
    for w in 0..8 {
        assert_eq!(doc["state"]["reported"][format!("w{w}")], 4, "{doc}");
    }
}

#[test]
fn the_cli_updates_a_shadow_and_the_running_server_sends_the_delta() {
    let s = Server::start(backend());
    let d1 = s.device("D1");
    let delta = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "$aws/things/D1/shadow/update/delta",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    settle();
    let doc = s.path("desired.json");
    std::fs::write(&doc, r#"{"state":{"desired":{"interval":60}}}"#).unwrap();
    let out = s.cli(&[
        "shadow",
        "update",
        "D1",
        "--document",
        doc.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(accepted["version"], 1);
    let (ok, lines, err) = delta.wait();
    assert!(ok, "the server published no delta for a CLI update: {err}");
    assert_eq!(payload(&lines[0])["state"], json!({"interval": 60}));
    let out = s.cli(&["shadow", "get", "D1", "--name", "missing"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: No shadow exists with name: 'missing'\n"
    );
    let out = s.cli(&["shadow", "delete", "D1"]);
    assert!(out.status.success());
}

#[test]
fn a_fleet_query_finds_devices_by_reported_firmware_version() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    for (thing, fw) in [
        ("A", "2.4.9"),
        ("B", "2.10.0"),
        ("C", "2.5.0"),
        ("D", "1.9"),
    ] {
        s.device(thing);
        let body = format!(r#"{{"state":{{"reported":{{"firmware":"{fw}"}}}}}}"#);
        assert_eq!(
            rest(
                &s,
                &key,
                "POST",
                &format!("/api/v1/things/{thing}/shadow"),
                Some(&body)
            )
            .0,
            200
        );
    }
    let (status, found) = rest(
        &s,
        &key,
        "GET",
        "/api/v1/shadows/query?path=firmware&op=lt&value=2.5.0",
        None,
    );
    assert_eq!(status, 200, "{found}");
    let things: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["thing_name"].as_str().unwrap())
        .collect();
    assert_eq!(things, ["A", "D"]);
    let (status, _) = rest(
        &s,
        &key,
        "GET",
        "/api/v1/shadows/query?path=firmware&op=older&value=1",
        None,
    );
    assert_eq!(status, 400);
}
