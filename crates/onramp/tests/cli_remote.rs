//! The admin CLI in remote mode: every command the API offers, run once on
//! the data directory and once through the REST API of the same running
//! server, prints the same; login, refusals and errors.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

/// Keys whose values differ between two otherwise equal runs: ids, secrets,
/// times, and the actor (`cli:<user>` locally, `apikey:<id>` remotely).
const VOLATILE: &[&str] = &[
    "id",
    "secret",
    "serial",
    "fingerprint",
    "pem",
    "certificate_pem",
    "private_key_pem",
    "created_at",
    "updated_at",
    "expires_at",
    "issued_at",
    "revoked_at",
    "used_at",
    "last_seen_at",
    "not_before",
    "not_after",
    "created_by",
    "timestamp",
    "metadata",
    "replaced_by",
    "certificate_id",
    // Jobs and executions, in camelCase like AWS's.
    "createdAt",
    "updatedAt",
    "createdBy",
    "queuedAt",
    "lastUpdatedAt",
    "startedAt",
    "completedAt",
];

struct Cli<'a> {
    s: &'a Server,
    key: String,
    /// ONRAMP_CREDENTIALS for remote runs.
    creds: PathBuf,
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str], mode: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{mode} onramp {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Drops volatile keys and puts the local run's names where the remote run has its own.
fn normalise(v: &mut Value, swaps: &[(&str, &str)]) {
    match v {
        Value::Object(m) => {
            for k in VOLATILE {
                m.remove(*k);
            }
            for (_, x) in m.iter_mut() {
                normalise(x, swaps);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, swaps)),
        Value::String(s) => {
            for (from, to) in swaps {
                *s = s.replace(from, to);
            }
        }
        _ => {}
    }
}

impl Cli<'_> {
    fn bare(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("RUST_LOG")
            .env_remove("ONRAMP_DATA_DIR")
            .env_remove("ONRAMP_SERVER")
            .env_remove("ONRAMP_API_KEY")
            .env_remove("ONRAMP_CA_FILE")
            .env("ONRAMP_CREDENTIALS", &self.creds);
        c
    }

    fn remote_with(&self, key: &str, ca: &Path, args: &[&str]) -> Output {
        self.bare()
            .arg("--server")
            .arg(self.s.url(""))
            .args(["--api-key", key])
            .arg("--ca-file")
            .arg(ca)
            .args(args)
            .output()
            .unwrap()
    }

    fn remote(&self, args: &[&str]) -> Output {
        self.remote_with(&self.key, &self.s.root_pem, args)
    }

    fn local(&self, args: &[&str]) -> Output {
        self.s.cli(args)
    }

    /// A read: both modes, table and --json, print exactly the same.
    fn same(&self, args: &[&str]) -> String {
        let mut table = String::new();
        for json in [false, true] {
            let mut all = if json { vec!["--json"] } else { vec![] };
            all.extend_from_slice(args);
            let l = ok(&all, "local", self.local(&all));
            let r = ok(&all, "remote", self.remote(&all));
            assert_eq!(l, r, "onramp {all:?} differs between local and remote");
            assert!(!l.is_empty(), "onramp {all:?} printed nothing");
            if !json {
                table = l;
            }
        }
        table
    }

    /// A shadow read: the same document in both modes, but for the reply's
    /// own `timestamp`, which is the time of the answer.
    fn same_shadow(&self, args: &[&str]) -> Value {
        let mut docs = Vec::new();
        for json in [false, true] {
            let mut all = if json { vec!["--json"] } else { vec![] };
            all.extend_from_slice(args);
            for (mode, o) in [("local", self.local(&all)), ("remote", self.remote(&all))] {
                let mut v: Value = serde_json::from_str(&ok(&all, mode, o)).unwrap();
                assert!(v["timestamp"].as_i64().is_some(), "{v}");
                v.as_object_mut().unwrap().remove("timestamp");
                docs.push(v);
            }
        }
        assert!(docs.iter().all(|d| *d == docs[0]), "{args:?}: {docs:#?}");
        docs.remove(0)
    }

    /// A read's --json output, after checking both modes agree.
    fn same_json(&self, args: &[&str]) -> Value {
        self.same(args);
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(&all, "local", self.local(&all))).unwrap()
    }

    /// A change: the local run on one object, the remote run on its twin;
    /// the --json outputs agree once the twin's names are swapped back.
    fn pair_json(&self, local: &[&str], remote: &[&str], swaps: &[(&str, &str)]) -> Value {
        let run = |args: &[&str], mode: &str| -> Value {
            let mut all = vec!["--json"];
            all.extend_from_slice(args);
            let o = if mode == "local" {
                self.local(&all)
            } else {
                self.remote(&all)
            };
            serde_json::from_str(&ok(&all, mode, o)).unwrap()
        };
        let l = run(local, "local");
        let r = run(remote, "remote");
        let (mut ln, mut rn) = (l.clone(), r);
        normalise(&mut ln, &[]);
        normalise(&mut rn, swaps);
        assert_eq!(ln, rn, "{local:?} / {remote:?}");
        l
    }

    /// A change printed as text: the same once the twin's names are swapped back.
    fn pair_text(&self, local: &[&str], remote: &[&str], swaps: &[(&str, &str)]) -> String {
        let l = ok(local, "local", self.local(local));
        let mut r = ok(remote, "remote", self.remote(remote));
        for (from, to) in swaps {
            r = r.replace(from, to);
        }
        assert_eq!(l, r, "{local:?} / {remote:?}");
        l
    }

    /// An error: the same message in both modes, and the same JSON shape.
    fn same_error(&self, args: &[&str], code: &str) -> String {
        let l = self.local(args);
        let r = self.remote(args);
        assert!(
            !l.status.success() && !r.status.success(),
            "{args:?} succeeded"
        );
        assert_eq!(stderr(&l), stderr(&r), "{args:?}");
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        for (mode, o) in [("local", self.local(&all)), ("remote", self.remote(&all))] {
            assert_eq!(o.status.code(), Some(1), "{mode} {args:?}");
            assert!(o.stdout.is_empty(), "{mode} {args:?}: {}", stdout(&o));
            let v: Value = serde_json::from_str(stderr(&o).trim())
                .unwrap_or_else(|e| panic!("{mode} {args:?}: {e}: {}", stderr(&o)));
            assert_eq!(v["error"]["code"], code, "{mode} {args:?}: {v}");
            assert_eq!(
                format!("error: {}\n", v["error"]["message"].as_str().unwrap()),
                stderr(&l),
                "{mode} {args:?}"
            );
        }
        stderr(&l)
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn enrol(s: &Server, thing: &str) {
    let token = s.token(thing);
    let dev = device_csr(&s.path(""), thing, &format!("/CN={thing}"));
    let r = s.enrol(&dev, thing, &token);
    assert_eq!(r.status, 200, "{}", r.text());
}

const TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {"thing": {"Type": "AWS::IoT::Thing",
    "Properties": {"ThingName": {"Ref": "SerialNumber"}}}}
}"#;

const POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}"#;

#[test]
fn every_api_command_prints_the_same_locally_and_remotely() {
    let s = Server::start(Backend::Sqlite);
    let c = Cli {
        key: s.api_key("admin"),
        creds: s.path("credentials.toml"),
        s: &s,
    };
    for thing in ["D-L", "D-R", "D-X"] {
        enrol(&s, thing);
    }
    std::fs::write(s.path("template.json"), TEMPLATE).unwrap();
    std::fs::write(s.path("policy.json"), POLICY).unwrap();
    std::fs::write(
        s.path("shadow.json"),
        r#"{"state": {"desired": {"led": "on"}}}"#,
    )
    .unwrap();
    let p = |name: &str| s.path(name).display().to_string();

    // The CA.
    let shown = c.same(&["ca", "show"]);
    assert!(shown.contains("Onramp Issuing CA"), "{shown}");
    let root = c.same(&["ca", "export"]);
    assert_eq!(root, std::fs::read_to_string(&s.root_pem).unwrap());
    assert_eq!(
        c.same(&["ca", "export", "--chain"])
            .matches("BEGIN")
            .count(),
        2
    );
    let issuing = c.same(&["ca", "list"]);
    assert!(issuing.contains("active"), "{issuing}");
    c.same_error(&["ca", "retire", "0123456789abcdef"], "not_found");

    // Tokens.
    let l = c.pair_json(
        &["token", "create", "--serial", "T-L", "--ttl", "3600"],
        &["token", "create", "--serial", "T-R", "--ttl", "3600"],
        &[("T-R", "T-L")],
    );
    assert!(l["secret"].as_str().unwrap().starts_with("ont_"));
    let tokens = c.same(&["token", "list"]);
    assert!(
        tokens.contains("T-L") && tokens.contains("usable"),
        "{tokens}"
    );
    let ids: Vec<String> = ["T-L", "T-R"]
        .iter()
        .map(|serial| {
            s.cli_json(&["token", "list"])["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["serial_number"] == *serial)
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let revoked = c.pair_json(
        &["token", "revoke", &ids[0]],
        &["token", "revoke", &ids[1]],
        &[("T-R", "T-L")],
    );
    assert!(revoked["revoked_at"].is_i64());
    c.same(&["token", "list", "--limit", "2"]);

    // Devices, with filters and paging.
    let listed = c.same(&["device", "list"]);
    assert!(
        listed.starts_with("THING") && listed.contains("D-X"),
        "{listed}"
    );
    let page = c.same_json(&["device", "list", "--limit", "1"]);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_string();
    c.same(&["device", "list", "--after", &next, "--limit", "1"]);
    c.same(&[
        "device",
        "list",
        "--status",
        "active",
        "--firmware-gte",
        "0",
    ]);
    c.same(&["device", "show", "D-X"]);

    // Certificates.
    c.same(&["cert", "list"]);
    c.same(&["cert", "list", "--thing-name", "D-L", "--status", "active"]);
    let serial_of = |thing: &str| s.certs_of(thing)[0]["serial"].as_str().unwrap().to_string();
    let (cl, cr) = (serial_of("D-L"), serial_of("D-R"));
    c.same(&["cert", "show", &cl]);
    c.pair_json(
        &["cert", "revoke", &cl, "--reason", "superseded"],
        &["cert", "revoke", &cr, "--reason", "superseded"],
        &[("D-R", "D-L")],
    );

    // Lifecycle.
    for action in ["suspend", "reactivate", "decommission"] {
        let d = c.pair_json(
            &["device", action, "D-L"],
            &["device", action, "D-R"],
            &[("D-R", "D-L")],
        );
        assert_eq!(d["thing_name"], "D-L");
    }
    c.same(&["device", "list", "--status", "decommissioned"]);

    // Allow-list.
    let added = c.pair_text(
        &["allowlist", "add", "A-L1", "A-L2"],
        &["allowlist", "add", "A-R1", "A-R2"],
        &[],
    );
    assert_eq!(added, "added 2 serial numbers\n");
    std::fs::write(s.path("l.csv"), "serial_number\nC-L1\n").unwrap();
    std::fs::write(s.path("r.csv"), "serial_number\nC-R1\n").unwrap();
    let imported = c.pair_text(
        &["--json", "allowlist", "import", &p("l.csv")],
        &["--json", "allowlist", "import", &p("r.csv")],
        &[],
    );
    assert!(imported.contains("\"added\": 1"), "{imported}");
    c.pair_text(
        &["allowlist", "remove", "A-L2"],
        &["allowlist", "remove", "A-R2"],
        &[("A-R2", "A-L2")],
    );
    let list = c.same(&["allowlist", "list"]);
    assert!(list.contains("A-R1") && !list.contains("A-L2"), "{list}");

    // API keys.
    c.pair_json(
        &["apikey", "create", "--name", "K-L", "--role", "viewer"],
        &["apikey", "create", "--name", "K-R", "--role", "viewer"],
        &[("K-R", "K-L")],
    );
    let keys = s.cli_json(&["apikey", "list"])["items"].clone();
    let key_id = |name: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    c.pair_json(
        &["apikey", "revoke", &key_id("K-L")],
        &["apikey", "revoke", &key_id("K-R")],
        &[("K-R", "K-L")],
    );
    c.same(&["apikey", "list"]);

    // Policies.
    let doc = p("policy.json");
    c.pair_text(
        &["policy", "create", "P-L", "--document", &doc],
        &["policy", "create", "P-R", "--document", &doc],
        &[("P-R", "P-L")],
    );
    for (l, r) in [
        (vec!["--device", "D-X"], vec!["--device", "D-X"]),
        (vec!["--class", "L"], vec!["--class", "R"]),
    ] {
        let mut la = vec!["policy", "attach", "P-L"];
        la.extend(&l);
        let mut ra = vec!["policy", "attach", "P-R"];
        ra.extend(&r);
        c.pair_text(&la, &ra, &[("P-R", "P-L"), ("class R", "class L")]);
    }
    c.same(&["policy", "list"]);
    let shown = c.same(&["policy", "show", "P-L"]);
    assert!(shown.contains("attached to device D-X"), "{shown}");
    c.pair_text(
        &["policy", "detach", "P-L", "--class", "L"],
        &["policy", "detach", "P-R", "--class", "R"],
        &[("P-R", "P-L"), ("class R", "class L")],
    );

    // Shadows.
    let sh = p("shadow.json");
    c.pair_json(
        &["shadow", "update", "D-L", "--document", &sh],
        &["shadow", "update", "D-R", "--document", &sh],
        &[("D-R", "D-L")],
    );
    c.pair_json(
        &[
            "shadow",
            "update",
            "D-L",
            "--name",
            "cfg",
            "--document",
            &sh,
        ],
        &[
            "shadow",
            "update",
            "D-R",
            "--name",
            "cfg",
            "--document",
            &sh,
        ],
        &[("D-R", "D-L")],
    );
    let got = c.same_shadow(&["shadow", "get", "D-L"]);
    assert_eq!(got["state"]["desired"]["led"], "on", "{got}");
    c.same_shadow(&["shadow", "get", "D-R", "--name", "cfg"]);
    c.pair_json(
        &["shadow", "delete", "D-L", "--name", "cfg"],
        &["shadow", "delete", "D-R", "--name", "cfg"],
        &[("D-R", "D-L")],
    );

    // Templates.
    let body = p("template.json");
    c.pair_text(
        &[
            "template",
            "create",
            "tmpl-l",
            "--body",
            &body,
            "--deny-serial",
            "X-1",
        ],
        &[
            "template",
            "create",
            "tmpl-r",
            "--body",
            &body,
            "--deny-serial",
            "X-1",
        ],
        &[("tmpl-r", "tmpl-l")],
    );
    c.pair_text(
        &["template", "version", "tmpl-l", "--body", &body],
        &["template", "version", "tmpl-r", "--body", &body],
        &[("tmpl-r", "tmpl-l")],
    );
    c.pair_text(
        &["template", "set-default-version", "tmpl-l", "2"],
        &["template", "set-default-version", "tmpl-r", "2"],
        &[("tmpl-r", "tmpl-l")],
    );
    c.pair_json(
        &[
            "template",
            "update",
            "tmpl-l",
            "--hook-url",
            "http://127.0.0.1:9/h",
            "--disable",
        ],
        &[
            "template",
            "update",
            "tmpl-r",
            "--hook-url",
            "http://127.0.0.1:9/h",
            "--disable",
        ],
        &[("tmpl-r", "tmpl-l")],
    );
    let upd = c.pair_text(
        &[
            "template",
            "update",
            "tmpl-l",
            "--clear-hook",
            "--enable",
            "--allow-serial",
            "S-1,S-2",
        ],
        &[
            "template",
            "update",
            "tmpl-r",
            "--clear-hook",
            "--enable",
            "--allow-serial",
            "S-1,S-2",
        ],
        &[("tmpl-r", "tmpl-l")],
    );
    assert!(upd.contains("enabled"), "{upd}");
    c.same(&["template", "list"]);
    let shown = c.same(&["template", "show", "tmpl-r"]);
    assert!(shown.contains("allow-list: S-1, S-2"), "{shown}");
    c.same_json(&["template", "show", "tmpl-l"]);

    // Claim certificates: files written the same way in both modes.
    let (dl, dr) = (p("claim-l"), p("claim-r"));
    let created = c.pair_json(
        &["claim", "create", "--template", "tmpl-l", "--out", &dl],
        &["claim", "create", "--template", "tmpl-r", "--out", &dr],
        &[("tmpl-r", "tmpl-l")],
    );
    let claim_l = created["serial"].as_str().unwrap().to_string();
    for dir in [&dl, &dr] {
        let key = Path::new(dir).join("claim.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        assert!(
            std::fs::read_to_string(Path::new(dir).join("claim.pem"))
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
    }
    c.same(&["claim", "list"]);
    c.same(&["claim", "check-expiry"]);
    let claims = s.cli_json(&["claim", "list"])["items"].clone();
    let claim_r = claims
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["template"] == "tmpl-r")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (rl, rr) = (p("rot-l"), p("rot-r"));
    c.pair_json(
        &["claim", "rotate", &claim_l, "--out", &rl],
        &["claim", "rotate", &claim_r, "--out", &rr],
        &[("tmpl-r", "tmpl-l")],
    );
    let claims = s.cli_json(&["claim", "list"])["items"].clone();
    let active = |t: &str| {
        claims
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["template"] == t && x["status"] == "active")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (al, ar) = (active("tmpl-l"), active("tmpl-r"));
    c.pair_text(
        &["claim", "revoke", &al],
        &["claim", "revoke", &ar],
        &[(ar.as_str(), al.as_str())],
    );

    // Registered CAs: a manufacturer CA for each mode.
    c.same(&["ca", "registration-code"]);
    for name in ["MCA-L", "MCA-R"] {
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
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p(&format!("{name}.key")),
            "-out",
            &p(&format!("{name}.pem")),
        ]);
    }
    let swap = [("MCA-R", "MCA-L")];
    let (pl, pr) = (p("MCA-L.pem"), p("MCA-R.pem"));
    let reg = |pem: &str| {
        [
            "ca",
            "register",
            "--cert",
            pem,
            "--auto-registration",
            "off",
        ]
        .map(String::from)
    };
    let (rl, rr) = (reg(&pl), reg(&pr));
    let registered = c.pair_json(&strs(&rl), &strs(&rr), &swap);
    assert_eq!(registered["status"], "active");
    let mut ids: Vec<(String, String)> = s.cli_json(&["ca", "registered"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ca| {
            (
                ca["subject"].to_string(),
                ca["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    assert!(
        ids[0].0.contains("MCA-L") && ids[1].0.contains("MCA-R"),
        "{ids:?}"
    );
    for verb in [
        &["deactivate"][..],
        &["activate"],
        &["auto-registration", "off"],
        &["revoke"],
    ] {
        let with = |id: &str| -> Vec<String> {
            let mut v = vec!["ca".to_string(), verb[0].to_string(), id.to_string()];
            v.extend(verb[1..].iter().map(|a| a.to_string()));
            v
        };
        let (al, ar) = (with(&ids[0].1), with(&ids[1].1));
        let ca = c.pair_json(&strs(&al), &strs(&ar), &swap);
        assert!(ca["subject"].as_str().unwrap().contains("MCA-L"), "{ca}");
    }
    let listed = c.same(&["ca", "registered"]);
    assert!(listed.contains("revoked"), "{listed}");
    c.same_error(&["ca", "deactivate", "nope"], "not_found");

    // Jobs: created on twin things, then read, listed and canceled.
    std::fs::write(s.path("job.json"), r#"{"operation": "reboot"}"#).unwrap();
    std::fs::write(
        s.path("job-config.json"),
        r#"{"timeoutConfig": {"inProgressTimeoutInMinutes": 30}}"#,
    )
    .unwrap();
    let (doc, cfg) = (p("job.json"), p("job-config.json"));
    let job = c.pair_json(
        &[
            "job",
            "create",
            "J-L",
            "--document",
            &doc,
            "--target",
            "D-L",
            "--job-config",
            &cfg,
        ],
        &[
            "job",
            "create",
            "J-R",
            "--document",
            &doc,
            "--target",
            "D-R",
            "--job-config",
            &cfg,
        ],
        &[("J-R", "J-L"), ("D-R", "D-L")],
    );
    assert_eq!(job["executionCounts"], json!({"QUEUED": 1}), "{job}");
    assert_eq!(
        job["config"]["timeoutConfig"]["inProgressTimeoutInMinutes"], 30,
        "{job}"
    );
    let shown = c.same(&["job", "show", "J-L"]);
    assert!(shown.contains("QUEUED=1"), "{shown}");
    let listed = c.same_json(&["job", "list"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let executions = c.same_json(&["job", "executions", "J-L"]);
    assert_eq!(executions["items"][0]["thingName"], "D-L", "{executions}");
    let pending = c.same(&["job", "thing", "D-L"]);
    assert!(
        pending.contains("J-L") && pending.contains("QUEUED"),
        "{pending}"
    );
    let canceled = c.pair_json(
        &["job", "cancel", "J-L"],
        &["job", "cancel", "J-R"],
        &[("J-R", "J-L"), ("D-R", "D-L")],
    );
    assert_eq!(canceled["status"], "CANCELED", "{canceled}");
    assert_eq!(
        canceled["executionCounts"],
        json!({"CANCELED": 1}),
        "{canceled}"
    );
    c.same_error(&["job", "cancel", "J-L"], "conflict");
    c.same_error(&["job", "show", "nope"], "not_found");

    // Pause, resume and delete, in both modes.
    let twins = [("J2-R", "J2-L"), ("D-R", "D-L")];
    for (id, thing) in [("J2-L", "D-L"), ("J2-R", "D-R")] {
        let args = ["job", "create", id, "--document", &doc, "--target", thing];
        ok(&args, "local", c.local(&args));
    }
    c.same_error(&["job", "pause", "J-L"], "conflict");
    let paused = c.pair_json(&["job", "pause", "J2-L"], &["job", "pause", "J2-R"], &twins);
    assert_eq!(paused["rolloutPaused"], true, "{paused}");
    let shown = c.same(&["job", "show", "J2-L"]);
    assert!(shown.contains("IN_PROGRESS (paused)"), "{shown}");
    let listed = c.same(&["job", "list"]);
    assert!(listed.contains("IN_PROGRESS (paused)"), "{listed}");
    c.same_error(&["job", "pause", "J2-L"], "conflict");
    let resumed = c.pair_text(
        &["job", "resume", "J2-L"],
        &["job", "resume", "J2-R"],
        &twins,
    );
    assert!(
        resumed.contains("J2-L") && !resumed.contains("paused"),
        "{resumed}"
    );
    c.same_error(&["job", "resume", "J2-L"], "conflict");
    c.same_error(&["job", "delete", "J2-L"], "conflict");
    let deleted = c.pair_text(
        &["job", "delete", "J2-L", "--force"],
        &["job", "delete", "J2-R", "--force"],
        &twins,
    );
    assert_eq!(deleted, "deleted job J2-L\n");
    let deleted = c.pair_json(
        &["job", "delete", "J-L"],
        &["job", "delete", "J-R"],
        &[("J-R", "J-L")],
    );
    assert_eq!(deleted, json!({"jobId": "J-L", "deleted": true}));
    c.same_error(&["job", "delete", "J-L"], "not_found");
    c.same_error(&["job", "pause", "J-L"], "not_found");

    // A scheduled job, its schedule given in --job-config and shown by `job show`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        s.path("scheduled.json"),
        json!({"schedulingConfig": {"startTime": now + 3600, "endTime": now + 7200,
            "endBehavior": "FORCE_CANCEL"}})
        .to_string(),
    )
    .unwrap();
    let sched = p("scheduled.json");
    let job = c.pair_json(
        &[
            "job",
            "create",
            "J3-L",
            "--document",
            &doc,
            "--target",
            "D-L",
            "--job-config",
            &sched,
        ],
        &[
            "job",
            "create",
            "J3-R",
            "--document",
            &doc,
            "--target",
            "D-R",
            "--job-config",
            &sched,
        ],
        &[("J3-R", "J3-L"), ("D-R", "D-L")],
    );
    assert_eq!(job["status"], "SCHEDULED", "{job}");
    assert_eq!(job["executionCounts"], json!({}), "{job}");
    assert_eq!(
        job["config"]["schedulingConfig"]["endBehavior"],
        "FORCE_CANCEL"
    );
    let shown = c.same(&["job", "show", "J3-L"]);
    assert!(
        shown.contains("SCHEDULED")
            && shown.contains("schedule: starts ")
            && shown.contains("(FORCE_CANCEL)"),
        "{shown}"
    );
    std::fs::write(
        s.path("past.json"),
        json!({"schedulingConfig": {"startTime": now - 60}}).to_string(),
    )
    .unwrap();
    let past = p("past.json");
    c.same_error(
        &[
            "job",
            "create",
            "J4",
            "--document",
            &doc,
            "--target",
            "D-L",
            "--job-config",
            &past,
        ],
        "bad_request",
    );

    // The audit log, as both modes see it.
    let audit = c.same(&["audit", "--action", "device.suspend"]);
    assert!(
        audit.contains("device:D-L") && audit.contains("device:D-R"),
        "{audit}"
    );
    let audit = c.same_json(&["audit", "--limit", "1"]);
    let before = audit["next"].as_str().unwrap().to_string();
    c.same(&["audit", "--limit", "2", "--before-id", &before]);
}

#[test]
fn errors_read_the_same_in_both_modes_and_in_every_command() {
    let s = Server::start(Backend::Sqlite);
    let c = Cli {
        key: s.api_key("admin"),
        creds: s.path("credentials.toml"),
        s: &s,
    };
    // One missing device, one wording, whichever command and mode.
    let shown = c.same_error(&["device", "show", "NOPE"], "not_found");
    assert_eq!(shown, "error: device `NOPE` not found\n");
    assert_eq!(c.same_error(&["shadow", "get", "NOPE"], "not_found"), shown);
    assert_eq!(
        c.same_error(&["device", "suspend", "NOPE"], "not_found"),
        shown
    );

    // Validation lives in one place: CLI (both modes) and API refuse alike.
    let fw = c.same_error(
        &["device", "list", "--firmware-lt", "notaversion"],
        "bad_request",
    );
    assert!(
        fw.contains("`notaversion` is not a firmware version"),
        "{fw}"
    );
    for args in [
        vec!["device", "list", "--limit", "0"],
        vec!["token", "list", "--limit", "0"],
        vec!["cert", "list", "--limit", "1001"],
        vec!["allowlist", "list", "--limit", "0"],
        vec!["audit", "--limit", "0"],
    ] {
        let e = c.same_error(&args, "bad_request");
        assert!(
            e.contains("limit must be between 1 and 1000"),
            "{args:?}: {e}"
        );
    }
    let ttl = c.same_error(
        &["token", "create", "--serial", "SN-T", "--ttl", "-5"],
        "bad_request",
    );
    assert!(
        ttl.contains("token lifetime must be between 60 seconds and 365 days"),
        "{ttl}"
    );
    for (path, want) in [
        (
            "/api/v1/devices?firmware_lt=bogus",
            "`bogus` is not a firmware version",
        ),
        (
            "/api/v1/devices?firmware_gte=bogus",
            "`bogus` is not a firmware version",
        ),
        (
            "/api/v1/devices?limit=0",
            "limit must be between 1 and 1000",
        ),
        ("/api/v1/tokens?limit=0", "limit must be between 1 and 1000"),
        (
            "/api/v1/certificates?limit=5000",
            "limit must be between 1 and 1000",
        ),
        ("/api/v1/audit?limit=0", "limit must be between 1 and 1000"),
        ("/api/v1/jobs?limit=0", "limit must be between 1 and 1000"),
    ] {
        let r = s.api("GET", path, &c.key, None);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{path}: {msg}");
    }
    let r = s.api(
        "POST",
        "/api/v1/tokens",
        &c.key,
        Some(&json!({"serial_number": "SN-T", "ttl_secs": -5}).to_string()),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("token lifetime must be between 60 seconds and 365 days")
    );
    // A good filter still answers.
    let r = s.api(
        "GET",
        "/api/v1/devices?firmware_lt=2.5.0&limit=1000",
        &c.key,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Lifecycle refusals read as English.
    enrol(&s, "D-1");
    let e = c.same_error(&["device", "reactivate", "D-1"], "conflict");
    assert_eq!(e, "error: an active device cannot be reactivated\n");

    // A usage error with --json is JSON too, exit status 2.
    let o = c.local(&["--json", "device", "list", "--limit", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "usage", "{v}");

    // No backtrace unless asked for, even with RUST_BACKTRACE set.
    let o = c
        .bare()
        .args(["--local", "--data-dir"])
        .arg(&s.data)
        .args(["device", "show", "NOPE"])
        .env("RUST_BACKTRACE", "full")
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "error: device `NOPE` not found\n");
    let o = c
        .bare()
        .args(["--local", "--data-dir"])
        .arg(&s.data)
        .args(["device", "show", "NOPE"])
        .env("ONRAMP_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(err.starts_with("error: device `NOPE` not found\n"), "{err}");
    assert!(err.lines().count() > 3, "no backtrace: {err}");
}

#[test]
fn login_stores_private_credentials_and_refuses_bad_ones() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(Backend::Sqlite);
    let c = Cli {
        key: s.api_key("admin"),
        creds: s.path("cfg/onramp/credentials.toml"),
        s: &s,
    };
    enrol(&s, "D-1");
    let local_list = ok(&[], "local", c.local(&["device", "list"]));

    // A wrong key: refused, named as such, and nothing is written.
    let o = c.remote_with("onr_not-a-key", &s.root_pem, &["login"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "error: invalid or revoked API key\n");
    assert!(!c.creds.exists());
    let o = c.remote_with("onr_not-a-key", &s.root_pem, &["--json", "device", "list"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");

    // A CA the server's certificate does not chain to: refused before any key is sent.
    let other = s.path("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=Not Onramp",
        "-days",
        "1",
        "-keyout",
        other.join("ca.key").to_str().unwrap(),
        "-out",
        other.join("ca.pem").to_str().unwrap(),
    ]);
    let o = c.remote_with(&c.key, &other.join("ca.pem"), &["--json", "login"]);
    assert!(!o.status.success());
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "connection", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("cannot reach {}", s.url(""))) && msg.contains("--ca-file"),
        "{msg}"
    );
    assert!(!c.creds.exists());

    // The right ones: checked, then stored 0600 with the CA's PEM.
    let o = c.remote(&["login"]);
    let text = ok(&["login"], "remote", o);
    assert!(
        text.starts_with(&format!("logged in to {}", s.url(""))),
        "{text}"
    );
    assert!(text.contains("role admin, tenant default"), "{text}");
    let mode = std::fs::metadata(&c.creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored = std::fs::read_to_string(&c.creds).unwrap();
    assert!(stored.contains(&c.key) && stored.contains("BEGIN CERTIFICATE"));

    // Later commands need no flags, and print what local mode prints.
    let o = c.bare().args(["device", "list"]).output().unwrap();
    assert_eq!(ok(&[], "remote", o), local_list);
    // XDG_CONFIG_HOME finds the same file when ONRAMP_CREDENTIALS is unset.
    let o = c
        .bare()
        .env_remove("ONRAMP_CREDENTIALS")
        .env("XDG_CONFIG_HOME", s.path("cfg"))
        .args(["device", "list"])
        .output()
        .unwrap();
    assert_eq!(ok(&[], "remote", o), local_list);
    // Flags win over the file: a wrong key on the command line is used, and refused.
    let o = c
        .bare()
        .args(["--api-key", "onr_wrong", "device", "list"])
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "error: invalid or revoked API key\n");
    // So does the environment.
    let o = c
        .bare()
        .env("ONRAMP_API_KEY", "onr_wrong")
        .args(["device", "list"])
        .output()
        .unwrap();
    assert_eq!(stderr(&o), "error: invalid or revoked API key\n");
    // --local ignores the file (and needs the data directory).
    let o = c
        .bare()
        .args(["--local", "--data-dir"])
        .arg(&s.data)
        .args(["device", "list"])
        .output()
        .unwrap();
    assert_eq!(ok(&[], "local", o), local_list);

    // Bootstrap commands are local only, and say so when given a server.
    let o = c.remote(&["--json", "tenant", "list"]);
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "local_only", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`onramp tenant list`")
    );
    // --tenant is local: a server takes the API key's tenant.
    let o = c.remote(&["--tenant", "other", "device", "list"]);
    assert!(
        stderr(&o).contains("--tenant applies to local mode only"),
        "{}",
        stderr(&o)
    );

    // Logout removes the file; then nothing points at the server.
    let out = ok(
        &["logout"],
        "local",
        c.bare().arg("logout").output().unwrap(),
    );
    assert!(out.starts_with("removed "), "{out}");
    assert!(!c.creds.exists());
    let o = c.bare().args(["device", "list"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--server"), "{}", stderr(&o));
}

#[test]
fn help_names_the_local_only_commands() {
    let o = Command::new(bin()).arg("--help").output().unwrap();
    let help = stdout(&o);
    assert!(
        help.contains("Local-only: serve, init, config check, ca import"),
        "{help}"
    );
    assert!(help.contains("--server"), "{help}");
    assert!(help.contains("ONRAMP_BACKTRACE"), "{help}");
    let o = Command::new(bin())
        .args(["device", "list", "--help"])
        .output()
        .unwrap();
    let help = stdout(&o);
    for line in [
        "Only devices in this lifecycle state",
        "Only devices of this device class",
        "Continue after this key",
        "Items per page, 1 to 1000",
    ] {
        assert!(help.contains(line), "{line}: {help}");
    }
}

#[test]
fn artifact_and_signer_commands_print_the_same_locally_and_remotely() {
    let s = Server::start(Backend::Sqlite);
    let c = Cli {
        key: s.api_key("admin"),
        creds: s.path("credentials.toml"),
        s: &s,
    };
    let p = |name: &str| s.path(name).display().to_string();
    // The build machine's commands need no server, even when one is given.
    let keygen = [
        "artifact",
        "keygen",
        "--out",
        &p("vendor.key"),
        "--public-out",
        &p("vendor.pub"),
    ];
    ok(&keygen, "remote", c.remote(&keygen));
    // Over the API's 1 MiB JSON limit: the upload streams.
    let firmware: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(s.path("firmware.bin"), &firmware).unwrap();
    std::fs::write(s.path("other.bin"), b"another image").unwrap();
    let sign = [
        "artifact",
        "sign",
        &p("firmware.bin"),
        "--key",
        &p("vendor.key"),
    ];
    ok(&sign, "remote", c.remote(&sign));
    let digest = openssl(&["dgst", "-sha256", "-r", &p("firmware.bin")]);
    let sha = String::from_utf8_lossy(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    // Signers: added on twin names, listed and shown alike.
    let signer = c.pair_json(
        &[
            "signer",
            "add",
            "vendor-l",
            "--public-key",
            &p("vendor.pub"),
        ],
        &[
            "signer",
            "add",
            "vendor-r",
            "--public-key",
            &p("vendor.pub"),
        ],
        &[("vendor-r", "vendor-l")],
    );
    assert_eq!(signer["algorithm"], "ed25519", "{signer}");
    let listed = c.same(&["signer", "list"]);
    assert!(
        listed.contains("vendor-l") && listed.contains("vendor-r"),
        "{listed}"
    );
    c.same_error(
        &[
            "signer",
            "add",
            "vendor-l",
            "--public-key",
            &p("vendor.pub"),
        ],
        "conflict",
    );

    // A signed upload through the API: streamed, stored under its SHA-256,
    // and the same record the local upload of the same bytes answers.
    let upload = [
        "--json",
        "artifact",
        "upload",
        &p("firmware.bin"),
        "--signature",
        &p("firmware.bin.sig"),
        "--signer",
        "vendor-r",
        "--name",
        "firmware-2.0.bin",
    ];
    let remote: Value = serde_json::from_str(&ok(&upload, "remote", c.remote(&upload))).unwrap();
    assert_eq!(remote["sha256"], sha.as_str(), "{remote}");
    assert_eq!(remote["size"], firmware.len(), "{remote}");
    assert_eq!(remote["signed"], true, "{remote}");
    assert_eq!(remote["signer"], "vendor-r", "{remote}");
    let stored = std::fs::read(s.data.join("artifacts").join(&sha)).unwrap();
    assert!(stored == firmware, "the stored bytes are the uploaded file");
    let local: Value = serde_json::from_str(&ok(&upload, "local", c.local(&upload))).unwrap();
    assert_eq!(local, remote);
    let table = c.same(&upload[1..]);
    assert!(
        table.contains(&sha) && table.contains("vendor-r"),
        "{table}"
    );
    // An unsigned upload, and refusals that read the same in both modes.
    let unsigned = c.same_json(&["artifact", "upload", &p("other.bin")]);
    assert_eq!(unsigned["signed"], false, "{unsigned}");
    assert_eq!(unsigned["name"], "other.bin", "{unsigned}");
    let wrong = c.same_error(
        &[
            "artifact",
            "upload",
            &p("other.bin"),
            "--signature",
            &p("firmware.bin.sig"),
            "--signer",
            "vendor-l",
        ],
        "bad_request",
    );
    assert!(wrong.contains("signature"), "{wrong}");
    c.same_error(
        &[
            "artifact",
            "upload",
            &p("firmware.bin"),
            "--signature",
            &p("firmware.bin.sig"),
            "--signer",
            "nobody",
        ],
        "bad_request",
    );

    // Reads.
    let listed = c.same_json(&["artifact", "list"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let page = c.same_json(&["artifact", "list", "--limit", "1"]);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["next"].is_string(), "{page}");
    let shown = c.same(&["artifact", "show", &sha]);
    assert!(shown.contains("firmware-2.0.bin"), "{shown}");
    c.same_error(&["artifact", "show", &"0".repeat(64)], "not_found");

    // Deleting a signer, on twin names.
    let gone = c.pair_text(
        &["signer", "delete", "vendor-l"],
        &["signer", "delete", "vendor-r"],
        &[("vendor-r", "vendor-l")],
    );
    assert_eq!(gone, "deleted signer vendor-l\n");
    c.same_error(&["signer", "delete", "vendor-l"], "not_found");
    let listed = c.same_json(&["signer", "list"]);
    assert_eq!(listed, json!([]));
}
