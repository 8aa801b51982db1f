//! The management API, health, readiness and metrics, with curl against the real server.

mod support;

use support::*;

#[test]
fn the_api_requires_a_valid_key_and_enforces_roles() {
    let s = Server::start(backend());
    let r = s.curl(&[&s.url("/api/v1/devices")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"onramp-api\"")
    );
    assert_eq!(
        s.api("GET", "/api/v1/devices", "onr_wrong", None).status,
        401
    );

    let viewer = s.api_key("viewer");
    assert_eq!(s.api("GET", "/api/v1/devices", &viewer, None).status, 200);
    let r = s.api(
        "POST",
        "/api/v1/tokens",
        &viewer,
        Some(r#"{"serial_number":"SN-1"}"#),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    assert_eq!(s.api("GET", "/api/v1/audit", &viewer, None).status, 403);

    let operator = s.api_key("operator");
    let r = s.api(
        "POST",
        "/api/v1/tokens",
        &operator,
        Some(r#"{"serial_number":"SN-1"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["secret"].as_str().unwrap().starts_with("ont_"));
    assert_eq!(s.api("GET", "/api/v1/apikeys", &operator, None).status, 403);

    let admin = s.api_key("admin");
    let keys = s.api("GET", "/api/v1/apikeys", &admin, None).json();
    let viewer_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.api(
            "DELETE",
            &format!("/api/v1/apikeys/{viewer_id}"),
            &admin,
            None
        )
        .status,
        200
    );
    assert_eq!(
        s.api("GET", "/api/v1/devices", &viewer, None).status,
        401,
        "a revoked key stops working"
    );
}

#[test]
fn a_token_is_shown_once_and_listed_without_its_secret() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    let created = s
        .api("POST", "/api/v1/tokens", &key, Some(r#"{"serial_number":"SN-2","thing_name":"pump-2","firmware_version":"1.2.3","ttl_secs":3600}"#))
        .json();
    let secret = created["secret"].as_str().unwrap().to_string();
    let listed = s.api("GET", "/api/v1/tokens", &key, None);
    assert!(!listed.text().contains(&secret));
    assert_eq!(listed.json()["items"][0]["thing_name"], "pump-2");
    let device = s.api("GET", "/api/v1/devices/pump-2", &key, None).json();
    assert_eq!(device["status"], "pending");
    assert_eq!(device["firmware_version"], "1.2.3");
    // A revoked token cannot enrol.
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        s.api("DELETE", &format!("/api/v1/tokens/{id}"), &key, None)
            .status,
        200
    );
    let d = device_csr(s.dir.path(), "d", "/CN=SN-2");
    let r = s.enrol(&d, "SN-2", &secret);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("revoked"));
}

#[test]
fn bad_json_and_bad_values_are_refused_with_a_reason() {
    let s = Server::start(backend());
    let key = s.api_key("admin");
    for (body, needle) in [
        ("{not json", "invalid JSON"),
        (r#"{"serial_number":"a/b"}"#, "serial number"),
        (
            r#"{"serial_number":"SN-3","thing_name":"x+y"}"#,
            "thing name",
        ),
        (
            r#"{"serial_number":"SN-3","unexpected":1}"#,
            "unknown field",
        ),
        (r#"{"serial_number":"SN-3","ttl_secs":1}"#, "lifetime"),
    ] {
        let r = s.api("POST", "/api/v1/tokens", &key, Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {}",
            r.text()
        );
    }
    assert!(
        s.api("GET", "/api/v1/devices", &key, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let r = s.api(
        "POST",
        "/api/v1/certificates/abc/revoke",
        &key,
        Some(r#"{"reason":"because"}"#),
    );
    assert_eq!(r.status, 400);
    let r = s.api("GET", "/api/v1/devices?status=sleeping", &key, None);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query string")
    );
}

#[test]
fn devices_are_filtered_by_firmware_version_order_and_paginated() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    for (serial, fw, class) in [
        ("A", "2.9.0", "sensor"),
        ("B", "2.10.0", "sensor"),
        ("C", "2.4.1", "gateway"),
        ("D", "10.0", "sensor"),
    ] {
        let body = format!(
            r#"{{"serial_number":"{serial}","firmware_version":"{fw}","device_class":"{class}","hardware_revision":"r2"}}"#
        );
        assert_eq!(
            s.api("POST", "/api/v1/tokens", &key, Some(&body)).status,
            201
        );
    }
    let names = |path: &str| -> Vec<String> {
        s.api("GET", path, &key, None).json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["thing_name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("/api/v1/devices?firmware_lt=2.10.0"), ["A", "C"]);
    assert_eq!(names("/api/v1/devices?firmware_gte=2.10.0"), ["B", "D"]);
    assert_eq!(
        names("/api/v1/devices?firmware_lt=2.10.0&device_class=sensor"),
        ["A"]
    );
    assert_eq!(
        names("/api/v1/devices?status=pending&hardware_revision=r2").len(),
        4
    );
    let page = s.api("GET", "/api/v1/devices?limit=2", &key, None).json();
    assert_eq!(page["next"], "B");
    assert_eq!(names("/api/v1/devices?limit=2&after=B"), ["C", "D"]);
}

#[test]
fn device_lifecycle_through_the_api() {
    let s = Server::start(backend());
    let token = s.token("SN-4");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-4");
    assert_eq!(s.enrol(&d, "SN-4", &token).status, 200);
    let key = s.api_key("operator");
    let r = s.api(
        "PATCH",
        "/api/v1/devices/SN-4",
        &key,
        Some(r#"{"attributes":{"site":"berlin","floor":2}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["attributes"]["site"], "berlin");
    let r = s.api(
        "PATCH",
        "/api/v1/devices/SN-4",
        &key,
        Some(r#"{"attributes":{"floor":null}}"#),
    );
    assert_eq!(
        r.json()["attributes"],
        serde_json::json!({"site": "berlin"})
    );

    assert_eq!(
        s.api("POST", "/api/v1/devices/SN-4/suspend", &key, None)
            .json()["status"],
        "suspended"
    );
    let r = s.api("POST", "/api/v1/devices/SN-4/suspend", &key, None);
    assert_eq!(r.status, 409, "suspending twice is not a legal transition");
    assert_eq!(
        s.api("POST", "/api/v1/devices/SN-4/reactivate", &key, None)
            .json()["status"],
        "active"
    );
    assert_eq!(
        s.api("POST", "/api/v1/devices/SN-4/decommission", &key, None)
            .json()["status"],
        "decommissioned"
    );
    let certs = s
        .api("GET", "/api/v1/certificates?thing_name=SN-4", &key, None)
        .json();
    assert!(
        certs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "revoked")
    );
    assert_eq!(
        s.api("POST", "/api/v1/devices/SN-4/reactivate", &key, None)
            .status,
        409
    );
    assert_eq!(s.api("GET", "/api/v1/devices/nope", &key, None).status, 404);

    let audit = s
        .api("GET", "/api/v1/audit?target=device:SN-4", &key, None)
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "device.decommission",
        "device.reactivate",
        "device.suspend",
        "device.patch_attributes",
        "est.simpleenroll",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"] == "127.0.0.1" || e["source"] == "local")
    );
}

#[test]
fn the_allowlist_takes_json_and_csv() {
    let s = Server::start(backend());
    let key = s.api_key("operator");
    let r = s.api(
        "POST",
        "/api/v1/allowlist",
        &key,
        Some(r#"{"serial_numbers":["A1","A2"]}"#),
    );
    assert_eq!(r.json()["added"], 2);
    let csv = s.path("serials.csv");
    std::fs::write(&csv, "serial_number,batch\nA2,7\nA3,7\nA4,8\n").unwrap();
    let auth = format!("Authorization: Bearer {key}");
    let data = format!("@{}", csv.display());
    let url = s.url("/api/v1/allowlist/import");
    let r = s.curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["added"], 2);
    std::fs::write(&csv, "A5\nbad/serial\n").unwrap();
    let r = s.curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: text/csv",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("line 2"));
    let all = s.api("GET", "/api/v1/allowlist", &key, None).json();
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        4,
        "a bad import adds nothing"
    );
    assert_eq!(
        s.api("DELETE", "/api/v1/allowlist/A1", &key, None).status,
        204
    );
    assert_eq!(
        s.api("DELETE", "/api/v1/allowlist/A1", &key, None).status,
        404
    );
    // The CLI imports the same format.
    std::fs::write(&csv, "B1\nB2\n").unwrap();
    let out = s.cli(&["allowlist", "import", csv.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        s.api("GET", "/api/v1/allowlist", &key, None).json()["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn tenants_are_isolated() {
    let s = Server::start(backend());
    let token = s.token("SN-5");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-5");
    assert_eq!(s.enrol(&d, "SN-5", &token).status, 200);
    assert!(s.cli(&["tenant", "create", "acme"]).status.success());
    let acme = s.cli_json(&[
        "--tenant",
        "acme",
        "apikey",
        "create",
        "--name",
        "acme-admin",
        "--role",
        "admin",
    ])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.api("GET", "/api/v1/devices/SN-5", &acme, None).status,
        404
    );
    assert!(
        s.api("GET", "/api/v1/devices", &acme, None).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.api("POST", "/api/v1/devices/SN-5/suspend", &acme, None)
            .status,
        404
    );
    let serial = s.certs_of("SN-5")[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.api(
            "GET",
            &format!("/api/v1/certificates/{serial}"),
            &acme,
            None
        )
        .status,
        404
    );
    assert_eq!(
        s.api(
            "POST",
            &format!("/api/v1/certificates/{serial}/revoke"),
            &acme,
            Some("{}")
        )
        .status,
        404
    );
    assert_eq!(s.certs_of("SN-5")[0]["status"], "active");
    assert_eq!(s.devices_json("SN-5")["status"], "active");
    // acme's token enrols into acme, not into the default tenant.
    let acme_token =
        s.cli_json(&["--tenant", "acme", "token", "create", "--serial", "SN-5"])["secret"]
            .as_str()
            .unwrap()
            .to_string();
    let d2 = device_csr(s.dir.path(), "d2", "/CN=SN-5");
    assert_eq!(s.enrol(&d2, "SN-5", &acme_token).status, 200);
    assert_eq!(
        s.api("GET", "/api/v1/devices/SN-5", &acme, None).json()["status"],
        "active"
    );
    assert_eq!(
        s.certs_of("SN-5").len(),
        1,
        "the default tenant's device is untouched"
    );
}

#[test]
fn health_readiness_metrics_openapi_and_ca_chain() {
    let s = Server::start(backend());
    assert_eq!(s.curl(&[&s.url("/healthz")]).status, 200);
    let ready = s.curl(&[&s.url("/readyz")]);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    let token = s.token("SN-6");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-6");
    assert_eq!(s.enrol(&d, "SN-6", &token).status, 200);
    // Another key, so that this is a refused reuse and not an answered retry.
    let other = device_csr(s.dir.path(), "d-other", "/CN=SN-6");
    assert_eq!(s.enrol(&other, "SN-6", &token).status, 401);
    let m = s.metrics();
    for needle in [
        "onramp_enrolments_total{operation=\"simpleenroll\",outcome=\"success\"} 1",
        "onramp_enrolments_total{operation=\"simpleenroll\",outcome=\"denied\"} 1",
        "onramp_enrolment_duration_seconds_bucket",
        "onramp_devices{status=\"active\"} 1",
        "onramp_certificates_expiring{within=\"30d\"} 0",
    ] {
        assert!(m.contains(needle), "{needle} missing from\n{m}");
    }

    let doc = s.curl(&[&s.url("/api/v1/openapi.json")]).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/devices",
        "/api/v1/tokens",
        "/api/v1/allowlist/import",
        "/api/v1/certificates/{serial}/revoke",
        "/api/v1/audit",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    let chain = s.curl(&[&s.url("/api/v1/ca/chain")]);
    assert_eq!(chain.text().matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn certificates_about_to_expire_show_in_metrics() {
    let s = Server::start_with(
        backend(),
        &[("ONRAMP_ENROLMENT__DEVICE_CERT_VALIDITY_DAYS", "10")],
        None,
    );
    let token = s.token("SN-7");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-7");
    assert_eq!(s.enrol(&d, "SN-7", &token).status, 200);
    let m = s.metrics();
    assert!(
        m.contains("onramp_certificates_expiring{within=\"7d\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("onramp_certificates_expiring{within=\"14d\"} 1"),
        "{m}"
    );
}

#[test]
fn the_server_refuses_to_start_with_a_world_readable_ca_key() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start(backend());
    s.stop();
    let key = s.data.join("ca/issuing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(bin())
        .args(["--data-dir", s.data.to_str().unwrap(), "serve"])
        .env("ONRAMP_HTTP__LISTEN", "127.0.0.1:0")
        .env("ONRAMP_OPS__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.restart();
    assert_eq!(s.curl(&[&s.url("/healthz")]).status, 200);
}

#[test]
fn the_registry_and_ca_survive_a_restart() {
    let mut s = Server::start(backend());
    let token = s.token("SN-8");
    let d = device_csr(s.dir.path(), "d", "/CN=SN-8");
    assert_eq!(s.enrol(&d, "SN-8", &token).status, 200);
    let root_before = std::fs::read_to_string(&s.root_pem).unwrap();
    s.restart();
    assert_eq!(s.devices_json("SN-8")["status"], "active");
    let out = s.cli(&["ca", "export"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), root_before);
    assert_eq!(
        s.curl(&[&s.url("/healthz")]).status,
        200,
        "the same root still verifies the server"
    );
}

#[test]
fn the_cli_prints_tables_and_json() {
    let s = Server::start(backend());
    s.token("SN-9");
    let out = s.cli(&["device", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("THING"), "{text}");
    assert!(text.contains("SN-9") && text.contains("pending"));
    let json = s.cli_json(&["device", "list"]);
    assert_eq!(json["items"][0]["serial_number"], "SN-9");
    assert_eq!(json["next"], serde_json::Value::Null);
    let out = s.cli(&["ca", "show"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Onramp Issuing CA"));
    let out = s.cli(&["device", "suspend", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn the_suites_backend_comes_from_onramp_test_store_and_a_typo_is_refused() {
    use std::ffi::OsStr;
    assert_eq!(Backend::parse(None), Ok(Backend::Sqlite));
    assert_eq!(Backend::parse(Some(OsStr::new(""))), Ok(Backend::Sqlite));
    assert_eq!(
        Backend::parse(Some(OsStr::new("sqlite"))),
        Ok(Backend::Sqlite)
    );
    assert_eq!(
        Backend::parse(Some(OsStr::new("postgres"))),
        Ok(Backend::Postgres)
    );
    for typo in ["postgresql", "Postgres", "pg", "sqlite3"] {
        let why = Backend::parse(Some(OsStr::new(typo))).expect_err(typo);
        assert!(why.contains("ONRAMP_TEST_STORE"), "{why}");
        assert!(why.contains(typo), "{why}");
    }
    // The server this binary starts is on the backend the variable names
    // (Server::spawn checks the server's own log line for it).
    let s = Server::start(backend());
    assert_eq!(s.database_url.is_some(), backend() == Backend::Postgres);
    assert!(s.store_url().starts_with(match backend() {
        Backend::Sqlite => "sqlite://",
        Backend::Postgres => "postgres://",
    }));
}
