//! Provisioning management over the REST API: templates, claim
//! certificates and registered manufacturer CAs, with curl and openssl
//! against the real server.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use support::*;

/// A fleet template: the thing is named after the device's serial number.
fn fleet_template(prefix: &str) -> Value {
    json!({
        "Parameters": {
            "SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Fn::Join": ["", [prefix, {"Ref": "SerialNumber"}]]}
                }
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "Active"
                }
            }
        }
    })
}

/// A JITP template: the thing is named after the certificate's CN.
fn jitp_template() -> Value {
    json!({
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "Active"
                }
            }
        }
    })
}

fn message(r: &Curl) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn audit_actions(s: &Server, key: &str, action: &str) -> Vec<Value> {
    let r = s.api("GET", &format!("/api/v1/audit?action={action}"), key, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn post(s: &Server, path: &str, key: &str, body: &Value) -> Curl {
    s.api("POST", path, key, Some(&body.to_string()))
}

fn patch(s: &Server, path: &str, key: &str, body: &Value) -> Curl {
    s.api("PATCH", path, key, Some(&body.to_string()))
}

#[test]
fn templates_are_created_versioned_and_configured_by_admins() {
    let s = Server::start(backend());
    let admin = s.api_key("admin");

    // The body as a JSON object.
    let r = post(
        &s,
        "/api/v1/templates",
        &admin,
        &json!({"name": "pumps", "body": fleet_template("pump-"), "description": "factory line 1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json();
    assert_eq!(t["name"], "pumps");
    assert_eq!(t["kind"], "fleet", "fleet is the default kind");
    assert_eq!(t["enabled"], true);
    assert_eq!(t["default_version"], 1);
    assert_eq!(t["description"], "factory line 1");
    assert!(t["serial_allow"].is_null());

    // The body as a string, with every setting.
    let r = post(
        &s,
        "/api/v1/templates",
        &admin,
        &json!({
            "name": "bulbs",
            "kind": "jitp",
            "body": jitp_template().to_string(),
            "enabled": false,
            "serial_allow": ["B-1", "B-2"],
            "serial_deny": ["B-3"],
            "hook_url": "https://hooks.example.com/check"
        }),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json();
    assert_eq!(t["kind"], "jitp");
    assert_eq!(t["enabled"], false);
    assert_eq!(t["serial_allow"], json!(["B-1", "B-2"]));
    assert_eq!(t["serial_deny"], json!(["B-3"]));
    assert_eq!(t["hook_url"], "https://hooks.example.com/check");

    let list = s.api("GET", "/api/v1/templates", &admin, None);
    assert_eq!(list.status, 200);
    let list = list.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bulbs", "pumps"]);

    let shown = s.api("GET", "/api/v1/templates/pumps", &admin, None);
    assert_eq!(shown.status, 200, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["template"]["name"], "pumps");
    let body: Value = serde_json::from_str(shown["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, fleet_template("pump-"));
    assert_eq!(shown["versions"].as_array().unwrap().len(), 1);

    // Version 2 is stored without becoming the default...
    let r = post(
        &s,
        "/api/v1/templates/pumps/versions",
        &admin,
        &json!({"body": fleet_template("pump2-")}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["latest_version"], 2);
    assert_eq!(r.json()["default_version"], 1);
    let shown = s.api("GET", "/api/v1/templates/pumps", &admin, None).json();
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    assert!(shown["body"].as_str().unwrap().contains("\"pump-\""));
    // ...until it is made the default.
    let r = s.api(
        "PUT",
        "/api/v1/templates/pumps/default-version",
        &admin,
        Some(r#"{"version": 2}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["default_version"], 2);
    let shown = s.api("GET", "/api/v1/templates/pumps", &admin, None).json();
    assert_eq!(shown["template"]["default_version"], 2);
    assert!(shown["body"].as_str().unwrap().contains("\"pump2-\""));
    // A version that does not exist.
    let r = s.api(
        "PUT",
        "/api/v1/templates/pumps/default-version",
        &admin,
        Some(r#"{"version": 7}"#),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // A new version made the default at once.
    let r = post(
        &s,
        "/api/v1/templates/pumps/versions",
        &admin,
        &json!({"body": fleet_template("pump3-").to_string(), "set_default": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["default_version"], 3);

    // Unknown templates.
    let r = s.api("GET", "/api/v1/templates/nope", &admin, None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert!(message(&r).contains("nope"), "{}", r.text());
    let r = post(
        &s,
        "/api/v1/templates/nope/versions",
        &admin,
        &json!({"body": fleet_template("x-")}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = patch(
        &s,
        "/api/v1/templates/nope",
        &admin,
        &json!({"enabled": false}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // Refusals with a reason.
    for (body, status, needle) in [
        (
            json!({"name": "bad", "body": {"Resources": {"x": {"Type": "AWS::IoT::Bogus"}}}}),
            400,
            "AWS::IoT::Bogus",
        ),
        (json!({"name": "bad", "body": "{not json"}), 400, "template"),
        (json!({"name": "bad", "body": 42}), 400, "JSON object"),
        (
            json!({"name": "a/b", "body": fleet_template("x-")}),
            400,
            "template name",
        ),
        (
            json!({"name": "bad", "kind": "other", "body": fleet_template("x-")}),
            400,
            "unknown variant",
        ),
        (
            json!({"name": "bad", "body": fleet_template("x-"), "hook_url": "ftp://x"}),
            400,
            "hook URL",
        ),
        (
            json!({"name": "bad", "body": fleet_template("x-"), "serial_allow": ["a/b"]}),
            400,
            "a/b",
        ),
        (
            json!({"name": "bad", "body": fleet_template("x-"), "colour": "red"}),
            400,
            "unknown field",
        ),
        (
            json!({"name": "pumps", "body": fleet_template("x-")}),
            409,
            "already exists",
        ),
    ] {
        let r = post(&s, "/api/v1/templates", &admin, &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(message(&r).contains(needle), "{body}: {}", r.text());
    }
    let r = post(
        &s,
        "/api/v1/templates/pumps/versions",
        &admin,
        &json!({"body": {"Resources": {"x": {"Type": "AWS::IoT::Bogus"}}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("AWS::IoT::Bogus"), "{}", r.text());

    // Templates are for admins; others may read them.
    let operator = s.api_key("operator");
    let r = post(
        &s,
        "/api/v1/templates",
        &operator,
        &json!({"name": "mine", "body": fleet_template("x-")}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &operator,
        &json!({"enabled": false}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let viewer = s.api_key("viewer");
    assert_eq!(s.api("GET", "/api/v1/templates", &viewer, None).status, 200);
    assert_eq!(
        s.api("GET", "/api/v1/templates/pumps", &viewer, None)
            .status,
        200
    );
    assert_eq!(
        s.api("GET", "/api/v1/templates", "onr_wrong", None).status,
        401
    );

    // PATCH: absent leaves a setting alone, null clears it.
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &admin,
        &json!({"serial_allow": ["A"], "hook_url": "http://hook.local/pre"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["serial_allow"], json!(["A"]));
    assert_eq!(r.json()["hook_url"], "http://hook.local/pre");
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &admin,
        &json!({"description": "line 2"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["serial_allow"],
        json!(["A"]),
        "absent is unchanged"
    );
    assert_eq!(r.json()["hook_url"], "http://hook.local/pre");
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &admin,
        &json!({"serial_allow": null}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["serial_allow"].is_null(), "{}", r.text());
    assert_eq!(r.json()["hook_url"], "http://hook.local/pre");
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &admin,
        &json!({"hook_url": null}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["hook_url"].is_null(), "{}", r.text());
    let t = s.api("GET", "/api/v1/templates/pumps", &admin, None).json()["template"].clone();
    assert!(t["serial_allow"].is_null());
    assert!(t["hook_url"].is_null());
    assert_eq!(t["description"], "line 2");
    let r = patch(
        &s,
        "/api/v1/templates/pumps",
        &admin,
        &json!({"serial_allow": "A"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // The service audits every change.
    let created = audit_actions(&s, &admin, "template.create");
    let targets: Vec<&str> = created
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(targets.contains(&"template:pumps") && targets.contains(&"template:bulbs"));
    assert_eq!(audit_actions(&s, &admin, "template.version").len(), 2);
    assert_eq!(
        audit_actions(&s, &admin, "template.set_default_version").len(),
        1
    );
    assert_eq!(audit_actions(&s, &admin, "template.update").len(), 4);
}

#[test]
fn claim_certificates_are_issued_once_listed_revoked_and_rotated() {
    let s = Server::start(backend());
    let admin = s.api_key("admin");
    let operator = s.api_key("operator");
    let viewer = s.api_key("viewer");
    for (name, kind, body) in [
        ("pumps", "fleet", fleet_template("pump-")),
        ("bulbs", "jitp", jitp_template()),
    ] {
        let r = post(
            &s,
            "/api/v1/templates",
            &admin,
            &json!({"name": name, "kind": kind, "body": body}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // An operator may make a claim certificate.
    let r = post(
        &s,
        "/api/v1/claims",
        &operator,
        &json!({"template": "pumps"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let created = r.json();
    let serial = created["claim"]["serial"].as_str().unwrap().to_string();
    assert_eq!(created["claim"]["template"], "pumps");
    assert_eq!(created["claim"]["status"], "active");
    let days = (created["claim"]["not_after"].as_i64().unwrap()
        - created["claim"]["not_before"].as_i64().unwrap())
        / 86_400;
    assert!((364..=366).contains(&days), "365 days by default: {days}");
    let cert = s.path("claim.pem");
    let key = s.path("claim.key");
    std::fs::write(&cert, created["certificate_pem"].as_str().unwrap()).unwrap();
    let key_pem = created["private_key_pem"].as_str().unwrap().to_string();
    std::fs::write(&key, &key_pem).unwrap();
    assert!(x509_field(&cert, "-subject").contains("onramp-claim-pumps"));
    openssl(&["pkey", "-in", key.to_str().unwrap(), "-noout"]);
    // The key belongs to the certificate.
    let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]).stdout;
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]).stdout;
    assert_eq!(cert_pub, key_pub);
    // The certificate chains to the server's CA.
    let chain = s.path("claim-chain.pem");
    std::fs::write(&chain, created["ca_chain_pem"].as_str().unwrap()).unwrap();
    assert!(
        created["ca_chain_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    openssl(&[
        "verify",
        "-CAfile",
        s.root_pem.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);

    // Listed without its key.
    let list = s.api("GET", "/api/v1/claims", &viewer, None);
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(!list.text().contains("PRIVATE KEY"));
    let claims = list.json();
    let listed = claims
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial.as_str())
        .unwrap_or_else(|| panic!("{claims}"));
    assert_eq!(listed["status"], "active");
    assert!(listed["replaced_by"].is_null());

    // Refusals.
    for (body, status, needle) in [
        (json!({"template": "nope"}), 404, "nope"),
        (json!({"template": "bulbs"}), 400, "JITP"),
        (
            json!({"template": "pumps", "validity_days": 0}),
            400,
            "validity",
        ),
        (
            json!({"template": "pumps", "validity_days": 4000}),
            400,
            "validity",
        ),
    ] {
        let r = post(&s, "/api/v1/claims", &operator, &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(message(&r).contains(needle), "{body}: {}", r.text());
    }
    let r = post(&s, "/api/v1/claims", &viewer, &json!({"template": "pumps"}));
    assert_eq!(r.status, 403, "{}", r.text());

    // Rotation: a new serial; the old one is revoked and points to it.
    let r = post(
        &s,
        &format!("/api/v1/claims/{serial}/rotate"),
        &operator,
        &json!({"validity_days": 30}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let rotated = r.json();
    let new_serial = rotated["claim"]["serial"].as_str().unwrap().to_string();
    assert_ne!(new_serial, serial);
    assert_eq!(rotated["claim"]["template"], "pumps");
    assert!(
        rotated["private_key_pem"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_ne!(rotated["private_key_pem"].as_str().unwrap(), key_pem);
    let claims = s.api("GET", "/api/v1/claims", &operator, None).json();
    let find = |serial: &str| {
        claims
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serial"] == serial)
            .unwrap_or_else(|| panic!("{serial} not in {claims}"))
            .clone()
    };
    let old = find(&serial);
    assert_eq!(old["status"], "revoked");
    assert_eq!(old["replaced_by"], new_serial.as_str());
    assert_eq!(find(&new_serial)["status"], "active");
    // A revoked claim cannot be rotated again.
    let r = post(
        &s,
        &format!("/api/v1/claims/{serial}/rotate"),
        &operator,
        &json!({}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // Rotation with an empty body takes the defaults.
    let r = s.api(
        "POST",
        &format!("/api/v1/claims/{new_serial}/rotate"),
        &operator,
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let third = r.json()["claim"]["serial"].as_str().unwrap().to_string();

    // Revocation.
    let r = s.api(
        "POST",
        &format!("/api/v1/claims/{third}/revoke"),
        &operator,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let claims = s.api("GET", "/api/v1/claims", &operator, None).json();
    let revoked = claims
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == third.as_str())
        .unwrap();
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_i64());
    assert!(revoked["replaced_by"].is_null());
    let r = s.api(
        "POST",
        &format!("/api/v1/claims/{third}/revoke"),
        &operator,
        None,
    );
    assert_eq!(r.status, 404, "already revoked: {}", r.text());
    let r = s.api("POST", "/api/v1/claims/00ff/revoke", &viewer, None);
    assert_eq!(r.status, 403, "{}", r.text());

    // Audited, and the key appears in no log line.
    assert_eq!(audit_actions(&s, &admin, "claim.create").len(), 3);
    assert_eq!(audit_actions(&s, &admin, "claim.rotate").len(), 2);
    let revokes = audit_actions(&s, &admin, "claim.revoke");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["target"], format!("claim:{third}"));
    let key_body = key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .unwrap();
    assert!(
        !s.server_log().contains(key_body),
        "the private key was logged"
    );
    assert!(!s.server_log().contains("PRIVATE KEY"));
}

/// A self-signed manufacturer CA made by openssl; returns (cert, key).
fn manufacturer_ca(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "365",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A verification certificate with `cn`, signed by the CA.
fn verification_cert(dir: &Path, name: &str, cn: &str, ca: &Path, ca_key: &Path) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let out = dir.join(format!("{name}.pem"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        "7",
        "-days",
        "1",
        "-out",
        out.to_str().unwrap(),
    ]);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn manufacturer_cas_are_registered_with_proof_of_possession_and_retired() {
    let s = Server::start(backend());
    let admin = s.api_key("admin");
    let dir = s.dir.path();
    let r = post(
        &s,
        "/api/v1/templates",
        &admin,
        &json!({"name": "bulbs", "kind": "jitp", "body": jitp_template()}),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let (maker, maker_key) = manufacturer_ca(dir, "Maker");
    let maker_pem = std::fs::read_to_string(&maker).unwrap();
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": maker_pem, "template": "bulbs"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let ca = r.json();
    let id = ca["id"].as_str().unwrap().to_string();
    assert_eq!(ca["status"], "active");
    assert_eq!(
        ca["auto_registration"], true,
        "auto-registration by default"
    );
    assert_eq!(ca["template"], "bulbs");
    assert!(ca["subject"].as_str().unwrap().contains("Maker"), "{ca}");
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": maker_pem, "template": "bulbs"}),
    );
    assert_eq!(r.status, 409, "registered twice: {}", r.text());

    let viewer = s.api_key("viewer");
    let list = s.api("GET", "/api/v1/cas", &viewer, None);
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());

    // Only admins register and change CAs.
    let operator = s.api_key("operator");
    assert_eq!(
        s.api("GET", "/api/v1/cas/registration-code", &operator, None)
            .status,
        403
    );
    let r = post(
        &s,
        "/api/v1/cas",
        &operator,
        &json!({"certificate_pem": maker_pem, "template": "bulbs"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = patch(
        &s,
        &format!("/api/v1/cas/{id}"),
        &operator,
        &json!({"status": "inactive"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // Inactive, then revoked; a revoked CA stays revoked.
    let ca_path = format!("/api/v1/cas/{id}");
    let r = patch(&s, &ca_path, &admin, &json!({"status": "inactive"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "inactive");
    let r = patch(&s, &ca_path, &admin, &json!({"auto_registration": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["auto_registration"], false);
    assert_eq!(r.json()["status"], "inactive", "absent status unchanged");
    let r = patch(&s, &ca_path, &admin, &json!({"status": "retired"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = patch(&s, &ca_path, &admin, &json!({"status": "revoked"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    let r = patch(&s, &ca_path, &admin, &json!({"status": "active"}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "conflict");
    let listed = s.api("GET", "/api/v1/cas", &admin, None).json();
    assert_eq!(listed[0]["status"], "revoked");
    let r = patch(
        &s,
        "/api/v1/cas/0000",
        &admin,
        &json!({"status": "inactive"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // Not a CA.
    let leaf = dir.join("leaf.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=leaf",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        dir.join("leaf.key").to_str().unwrap(),
        "-out",
        leaf.to_str().unwrap(),
    ]);
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": std::fs::read_to_string(&leaf).unwrap(), "template": "bulbs"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("not a CA certificate"), "{}", r.text());
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": "garbage", "template": "bulbs"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // Proof of possession: the verification certificate's CN must be the code.
    let code = s.api("GET", "/api/v1/cas/registration-code", &admin, None);
    assert_eq!(code.status, 200, "{}", code.text());
    let code = code.json()["registration_code"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(code.len() >= 16, "{code}");
    let (other, other_key) = manufacturer_ca(dir, "Other");
    let other_pem = std::fs::read_to_string(&other).unwrap();
    let wrong = verification_cert(dir, "wrong", "not-the-code", &other, &other_key);
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": other_pem, "template": "bulbs",
                "verification_certificate_pem": wrong}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("registration code"), "{}", r.text());
    // The right CN, signed by another CA's key.
    let foreign = verification_cert(dir, "foreign", &code, &maker, &maker_key);
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": other_pem, "template": "bulbs",
                "verification_certificate_pem": foreign}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("not signed by"), "{}", r.text());
    let right = verification_cert(dir, "right", &code, &other, &other_key);
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": other_pem, "template": "bulbs",
                "verification_certificate_pem": right}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "active");

    // Template rules.
    let (third, _) = manufacturer_ca(dir, "Third");
    let third_pem = std::fs::read_to_string(&third).unwrap();
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": third_pem, "template": "nope"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": third_pem}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(message(&r).contains("needs a template"), "{}", r.text());
    let r = post(
        &s,
        "/api/v1/cas",
        &admin,
        &json!({"certificate_pem": third_pem, "auto_registration": false}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["template"].is_null());
    assert_eq!(
        s.api("GET", "/api/v1/cas", &admin, None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    assert_eq!(audit_actions(&s, &admin, "ca.register").len(), 3);
    assert_eq!(audit_actions(&s, &admin, "ca.update").len(), 3);
}

#[test]
fn the_openapi_document_lists_the_provisioning_routes() {
    let s = Server::start(backend());
    let doc = s.curl(&[&s.url("/api/v1/openapi.json")]).json();
    for (path, method) in [
        ("/api/v1/templates", "get"),
        ("/api/v1/templates", "post"),
        ("/api/v1/templates/{name}", "get"),
        ("/api/v1/templates/{name}", "patch"),
        ("/api/v1/templates/{name}/versions", "post"),
        ("/api/v1/templates/{name}/default-version", "put"),
        ("/api/v1/claims", "get"),
        ("/api/v1/claims", "post"),
        ("/api/v1/claims/{serial}/revoke", "post"),
        ("/api/v1/claims/{serial}/rotate", "post"),
        ("/api/v1/cas/registration-code", "get"),
        ("/api/v1/cas", "get"),
        ("/api/v1/cas", "post"),
        ("/api/v1/cas/{id}", "patch"),
    ] {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} missing"
        );
    }
    for schema in [
        "TemplateCreate",
        "TemplatePatch",
        "TemplateView",
        "ClaimCreated",
        "CaRegister",
        "CaPatch",
        "ProvisioningTemplateRecord",
        "RegisteredCa",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} missing"
        );
    }
}
