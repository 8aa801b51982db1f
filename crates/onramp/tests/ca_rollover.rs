//! A whole CA rollover against the real server, on SQLite and on
//! PostgreSQL, with the commands of `docs/ca-rollover.md` run as written:
//! devices under the old issuing CA keep connecting over mutual-TLS MQTT,
//! new certificates come from the new CA, a renewal over EST moves a device
//! across, retirement is refused while devices depend on the old CA, and once
//! retired its certificates fail the TLS handshake while its CRL is still
//! served. Then the root rolls, and a forced retirement shuts out a device
//! whose certificate the registry still holds as active.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const DOC: &str = include_str!("../../../docs/ca-rollover.md");

/// Runs the shell example `name` of `docs/ca-rollover.md` in `work`, with
/// `onramp` on the PATH and the server's data directory and database:
/// success, and its standard output (with its errors when it failed).
fn run_doc(s: &Server, work: &Path, name: &str) -> (bool, String) {
    let marker = format!("<!-- example: {name} -->");
    let rest = DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/ca-rollover.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    let script = body.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let bin_dir = Path::new(bin()).parent().unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_DATA_DIR", &s.data)
        .env(
            "ONRAMP_CREDENTIALS",
            work.join("no-credentials.toml").display().to_string(),
        )
        .env_remove("ONRAMP_SERVER")
        .env_remove("ONRAMP_API_KEY")
        .env_remove("RUST_LOG");
    if let Some(url) = &s.database_url {
        cmd.env("ONRAMP_DATABASE_URL", url);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        (true, stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        (false, format!("{stdout}{stderr}"))
    }
}

/// The certificates `/.well-known/est/cacerts` serves, as one PEM file.
fn cacerts(s: &Server, name: &str) -> (PathBuf, usize) {
    let r = s.curl(&[&s.url("/.well-known/est/cacerts")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let pem = pkcs7_to_pem(s.dir.path(), name, &r.body);
    let n = std::fs::read_to_string(&pem)
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count();
    (pem, n)
}

/// Waits until `/cacerts` serves `n` certificates: the server has seen the
/// change in its CA directory.
fn wait_for_cacerts(s: &Server, n: usize) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    loop {
        i += 1;
        let (pem, got) = cacerts(s, &format!("cacerts-{n}-{i}"));
        if got == n {
            return pem;
        }
        assert!(
            Instant::now() < deadline,
            "/cacerts serves {got} certificates, not {n}\n{}",
            s.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn issuing_cas(s: &Server) -> Vec<Value> {
    s.cli_json(&["ca", "list"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn ca_by_role(s: &Server, role: &str) -> Value {
    issuing_cas(s)
        .into_iter()
        .find(|c| c["role"] == role)
        .unwrap_or_else(|| panic!("no {role} CA"))
}

fn ca_by_id(s: &Server, id: &str) -> Value {
    issuing_cas(s)
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no CA {id}"))
}

/// The issuing CA's certificate and its root from a chain PEM, as files.
fn split_chain(dir: &Path, name: &str, chain_pem: &str) -> (PathBuf, PathBuf) {
    let certs: Vec<&str> = chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    let issuing = dir.join(format!("{name}-issuing.pem"));
    let root = dir.join(format!("{name}-root.pem"));
    std::fs::write(&issuing, certs[0]).unwrap();
    std::fs::write(&root, certs.last().unwrap()).unwrap();
    (issuing, root)
}

fn verify(root: &Path, issuing: &Path, cert: &Path) -> bool {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(issuing)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}

/// Publishes once over mutual-TLS MQTT as `id`.
fn publishes(s: &Server, id: &Identity) -> (bool, String) {
    s.mosquitto_pub(
        id,
        &["-t", &format!("things/{}/t", id.name), "-m", "x", "-q", "1"],
    )
}

/// Waits until `id` can no longer publish (the listener dropped its CA).
fn wait_until_refused(s: &Server, id: &Identity) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, err) = publishes(s, id);
        if !ok {
            return err;
        }
        assert!(Instant::now() < deadline, "{} still connects", id.name);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Renews `id` over EST simplereenroll, presenting its current certificate.
fn renew(s: &Server, id: &Identity, label: &str) -> Identity {
    let csr = csr_for_key(
        s.dir.path(),
        &format!("{}-{label}", id.name),
        &id.key,
        &format!("/CN={}", id.name),
    );
    let r = s.reenrol(&id.cert, &id.key, &csr.csr_b64);
    assert_eq!(r.status, 200, "{} {}", r.text(), r.stderr);
    Identity {
        name: id.name.clone(),
        cert: pkcs7_to_pem(s.dir.path(), &format!("{}-{label}-cert", id.name), &r.body),
        key: id.key.clone(),
    }
}

fn a_whole_rollover(backend: Backend) {
    let s = Server::start(backend);
    let work = s.path("rollover-docs");
    std::fs::create_dir_all(&work).unwrap();
    let admin = s.api_key("admin");

    // Before: one issuing CA, two devices under it.
    let a = s.device("SN-ROLL-A");
    let c = s.device("SN-ROLL-C");
    let g1 = ca_by_role(&s, "active");
    let g1_id = g1["id"].as_str().unwrap().to_string();
    assert_eq!(g1["active_certificates"], 2, "{g1}");
    let (g1_issuing, root1) = split_chain(&work, "g1", g1["chain_pem"].as_str().unwrap());
    assert!(verify(&root1, &g1_issuing, &a.cert));
    assert_eq!(cacerts(&s, "cacerts-before").1, 2);

    // The rollover, as the runbook has it.
    let (ok, out) = run_doc(&s, &work, "ca-rollover-begin");
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(work.join("old-ca-id"))
            .unwrap()
            .trim(),
        g1_id
    );
    let g2 = ca_by_role(&s, "active");
    let g2_id = g2["id"].as_str().unwrap().to_string();
    assert_ne!(g2_id, g1_id);
    assert_eq!(ca_by_id(&s, &g1_id)["role"], "previous");
    let (g2_issuing, g2_root) = split_chain(&work, "g2", g2["chain_pem"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&g2_root).unwrap(),
        std::fs::read(&root1).unwrap(),
        "the same root"
    );
    // Both issuing CAs and the root, once the server has seen the change.
    let served = wait_for_cacerts(&s, 3);
    let served = std::fs::read_to_string(served).unwrap();
    for (name, pem) in [("old", &g1_issuing), ("new", &g2_issuing)] {
        let want = std::fs::read_to_string(pem).unwrap();
        assert!(served.contains(want.trim()), "/cacerts lacks the {name} CA");
    }
    let chain = std::fs::read_to_string(work.join("trusted-chain.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 3);

    // A, under the old CA, still connects over mutual TLS.
    let (ok, err) = publishes(&s, &a);
    assert!(ok, "A under the previous CA: {err}");
    // B enrols after the rollover: its certificate is the new CA's.
    let b = s.device("SN-ROLL-B");
    assert!(verify(&root1, &g2_issuing, &b.cert));
    assert!(!verify(&root1, &g1_issuing, &b.cert));
    let (ok, err) = publishes(&s, &b);
    assert!(ok, "B under the new CA: {err}");

    // Retiring the old CA is refused while A and C depend on it.
    let out = s.cli(&["ca", "retire", &g1_id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 active certificate"), "{err}");

    // A renews over EST and moves across; its new certificate connects.
    let a2 = renew(&s, &a, "renewed");
    assert!(verify(&root1, &g2_issuing, &a2.cert));
    let (ok, err) = publishes(&s, &a2);
    assert!(ok, "A renewed: {err}");
    let (ok, out) = run_doc(&s, &work, "ca-rollover-wait");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "previous 1", "C still depends on the old CA");

    // Over REST: the same count, and the same refusal.
    let listed = s.api("GET", "/api/v1/ca/issuing", &admin, None).json();
    let old = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == g1_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(old["active_certificates"], 1, "{old}");
    let r = s.api(
        "POST",
        &format!("/api/v1/ca/issuing/{g1_id}/retire"),
        &admin,
        Some("{}"),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // An operator may not roll the CA over.
    let operator = s.api_key("operator");
    let r = s.api(
        "POST",
        "/api/v1/ca/rollover",
        &operator,
        Some(r#"{"kind":"new_issuing"}"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    // C renews too: nothing depends on the old CA any more; retire it.
    let c2 = renew(&s, &c, "renewed");
    assert!(verify(&root1, &g2_issuing, &c2.cert));
    let (ok, out) = run_doc(&s, &work, "ca-rollover-wait");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "previous 0");
    // Before retirement the old certificate still passes TLS at the HTTPS
    // listener (the registry then refuses it as superseded).
    let before = s.reenrol(&a.cert, &a.key, &a.cert);
    assert_ne!(
        before.status, 0,
        "TLS accepted the old CA: {}",
        before.stderr
    );
    let (ok, out) = run_doc(&s, &work, "ca-rollover-retire");
    assert!(ok, "{out}");
    assert_eq!(ca_by_id(&s, &g1_id)["role"], "retired");
    let served = std::fs::read_to_string(wait_for_cacerts(&s, 2)).unwrap();
    let old_pem = std::fs::read_to_string(&g1_issuing).unwrap();
    assert!(
        !served.contains(old_pem.trim()),
        "/cacerts lists the retired CA"
    );

    // The retired CA's certificates now fail the TLS handshake.
    let refused = s.reenrol(&a.cert, &a.key, &a.cert);
    assert_eq!(
        refused.status,
        0,
        "HTTPS accepted a retired CA's certificate: {}",
        refused.text()
    );
    wait_until_refused(&s, &a);
    let (ok, err) = publishes(&s, &a2);
    assert!(ok, "A's new certificate: {err}");
    // Its CRL is still served and signed by it.
    let r = s.curl(&[&s.url(&format!("/crl/{g1_id}.crl"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let crl = work.join("g1.crl");
    std::fs::write(&crl, &r.body).unwrap();
    let g1_chain = work.join("g1-chain.pem");
    std::fs::write(
        &g1_chain,
        format!("{}{}", old_pem, std::fs::read_to_string(&root1).unwrap()),
    )
    .unwrap();
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl.to_str().unwrap(),
        "-CAfile",
        g1_chain.to_str().unwrap(),
        "-noout",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify OK")
            || String::from_utf8_lossy(&out.stdout).contains("verify OK"),
        "{out:?}"
    );

    // The root rolls: a new root and issuing CA; both roots are served.
    let (ok, out) = run_doc(&s, &work, "ca-rollover-root");
    assert!(ok, "{out}");
    assert_eq!(out.lines().last().unwrap_or_default().trim(), "2", "{out}");
    let g3 = ca_by_role(&s, "active");
    let (g3_issuing, root2) = split_chain(&work, "g3", g3["chain_pem"].as_str().unwrap());
    assert_ne!(
        std::fs::read(&root2).unwrap(),
        std::fs::read(&root1).unwrap()
    );
    wait_for_cacerts(&s, 4);
    let e = s.device("SN-ROLL-E");
    assert!(verify(&root2, &g3_issuing, &e.cert));
    assert!(!verify(&root1, &g2_issuing, &e.cert));
    let (ok, err) = publishes(&s, &e);
    assert!(ok, "E under the new root: {err}");
    let (ok, err) = publishes(&s, &b);
    assert!(ok, "B under the old root: {err}");

    // B and the renewed A and C depend on G2: retiring it needs --force,
    // and then B, whose certificate the registry still holds as active, is
    // shut out by TLS.
    let r = s.api(
        "POST",
        &format!("/api/v1/ca/issuing/{g2_id}/retire"),
        &admin,
        Some(r#"{"force": false}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("3 active certificate"), "{}", r.text());
    let r = s.api(
        "POST",
        &format!("/api/v1/ca/issuing/{g2_id}/retire"),
        &admin,
        Some(r#"{"force": true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role"], "retired");
    wait_until_refused(&s, &b);
    assert_eq!(s.certs_of("SN-ROLL-B")[0]["status"], "active");
    let (ok, err) = publishes(&s, &e);
    assert!(ok, "E after G2 retired: {err}");
    let audit = s.cli_json(&["audit", "--action", "ca.retire"]);
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(2), "{audit}");
}

#[test]
fn a_whole_rollover_on_sqlite() {
    a_whole_rollover(Backend::Sqlite);
}

#[test]
fn a_whole_rollover_on_postgres() {
    a_whole_rollover(Backend::Postgres);
}
