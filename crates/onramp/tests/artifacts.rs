//! Signed OTA artifacts end to end: keys and signatures made by the CLI on a
//! "build machine" (no data directory), checked by openssl, uploaded and
//! verified by the server, referenced by a job, and downloaded over mTLS by
//! the device the job targets (whole, by range, resumed by curl).

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

const DOC: &str = include_str!("../../../docs/artifacts.md");

/// The fenced block after `<!-- example: NAME -->` in docs/artifacts.md.
fn example(name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = DOC
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/artifacts.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    body.split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string()
}

/// Runs a documented shell block in `dir` with `onramp` on the PATH and no
/// data directory.
fn run_example(name: &str, dir: &Path, env: &[(&str, &str)]) -> Output {
    let bin_dir = Path::new(bin()).parent().unwrap();
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", &example(name)])
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_DATA_DIR", "/nonexistent/onramp-build-machine")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// As the device over MQTT (paho, one connection): describe a job, then
/// start the next one; prints each accepted payload on its own line.
const DESCRIBE_SCRIPT: &str = r#"
import json, queue, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, cafile, cert, key, thing, job = sys.argv[1:7]
got = queue.Queue()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing)
c.tls_set(ca_certs=cafile, certfile=cert, keyfile=key)
c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload.decode()))
c.connect("localhost", int(port))
c.loop_start()
base = f"$aws/things/{thing}/jobs"
for t in (f"{base}/{job}/get/accepted", f"{base}/start-next/accepted",
          f"{base}/{job}/get/rejected", f"{base}/start-next/rejected"):
    c.subscribe(t, qos=1)[1]
import time; time.sleep(0.5)
for request in (f"{base}/{job}/get", f"{base}/start-next"):
    c.publish(request, json.dumps({"clientToken": "t"}), qos=1).wait_for_publish()
    topic, payload = got.get(timeout=10)
    print(payload, flush=True)
c.loop_stop()
c.disconnect()
"#;

fn mqtt_describe_and_start(s: &Server, id: &Identity, job: &str) -> (Value, Value) {
    let py = python_with(&["paho.mqtt"]);
    let out = Command::new(py)
        .args(["-c", DESCRIBE_SCRIPT])
        .arg(s.mqtt_port.to_string())
        .arg(&s.root_pem)
        .arg(&id.cert)
        .arg(&id.key)
        .arg(&id.name)
        .arg(job)
        .output()
        .unwrap();
    ok(&out, "the MQTT describe script");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap());
    (lines.next().unwrap(), lines.next().unwrap())
}

fn onramp_offline(args: &[&str]) -> Output {
    // A data directory that does not exist: signing must not need one.
    Command::new(bin())
        .args(["--data-dir", "/nonexistent/onramp-build-machine"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_of(path: &Path) -> String {
    let out = openssl(&["dgst", "-sha256", "-r", path.to_str().unwrap()]);
    ok(&out, "openssl dgst");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn firmware(s: &Server, name: &str, len: usize, seed: u32) -> PathBuf {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect();
    let path = s.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn b64_file(path: &Path) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn upload(s: &Server, key: &str, file: &Path, query: &str, signature: Option<&str>) -> Curl {
    let auth = format!("Authorization: Bearer {key}");
    let url = s.url(&format!("/api/v1/artifacts?{query}"));
    let data = format!("@{}", file.display());
    let sig_header = signature.map(|sig| format!("X-Onramp-Signature: {sig}"));
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &data,
    ];
    if let Some(h) = &sig_header {
        args.extend_from_slice(&["-H", h]);
    }
    args.push(&url);
    s.curl(&args)
}

fn device_get(s: &Server, id: &Identity, url: &str, extra: &[&str]) -> Curl {
    let cert = id.cert.display().to_string();
    let key = id.key.display().to_string();
    let mut args = vec!["--cert", &cert, "--key", &key];
    args.extend_from_slice(extra);
    args.push(url);
    s.curl(&args)
}

/// Files under the data directory's artifacts/ folder (temporary ones included).
fn stored_files(s: &Server) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.data.join("artifacts"), &mut out);
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn signed_artifacts_are_verified_on_upload_and_reach_only_devices_with_a_job() {
    end_to_end(Backend::Sqlite);
}

#[test]
fn signed_artifacts_end_to_end_on_postgres() {
    end_to_end(Backend::Postgres);
}

fn end_to_end(backend: Backend) {
    // D1 makes more downloads here than the default burst allows.
    let s = Server::start_with(
        backend,
        &[("ONRAMP_ARTIFACTS__DOWNLOADS_PER_DEVICE__BURST", "100")],
        None,
    );
    let admin = s.api_key("admin");

    // ---- the build machine: Ed25519 key, signature, openssl check ----
    let key = s.path("vendor.key");
    let public = s.path("vendor.pub");
    ok(
        &onramp_offline(&[
            "artifact",
            "keygen",
            "--out",
            key.to_str().unwrap(),
            "--public-out",
            public.to_str().unwrap(),
        ]),
        "keygen",
    );
    assert_eq!(mode(&key), 0o600, "the signing key is private");
    let fw = firmware(&s, "fw.bin", 300_000, 1);
    ok(
        &onramp_offline(&[
            "artifact",
            "sign",
            "--key",
            key.to_str().unwrap(),
            fw.to_str().unwrap(),
        ]),
        "sign",
    );
    let sig = s.path("fw.bin.sig");
    assert_eq!(
        std::fs::read(&sig).unwrap().len(),
        64,
        "a raw Ed25519 signature"
    );
    let verified = openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        public.to_str().unwrap(),
        "-rawin",
        "-in",
        fw.to_str().unwrap(),
        "-sigfile",
        sig.to_str().unwrap(),
    ]);
    ok(&verified, "openssl pkeyutl -verify");

    // ---- signers ----
    let pem = std::fs::read_to_string(&public).unwrap();
    let r = s.api(
        "POST",
        "/api/v1/signers",
        &admin,
        Some(&json!({"name": "vendor", "publicKeyPem": pem}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["algorithm"], "ed25519");
    assert!(!r.text().contains("PRIVATE"));
    let r = s.api(
        "POST",
        "/api/v1/signers",
        &admin,
        Some(&json!({"name": "vendor", "publicKeyPem": pem}).to_string()),
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // ---- uploads ----
    let sha = sha256_of(&fw);
    let sig_b64 = b64_file(&sig);
    let r = upload(&s, &admin, &fw, "name=fw.bin&signer=vendor", Some(&sig_b64));
    assert_eq!(r.status, 201, "{}", r.text());
    let a = r.json();
    assert_eq!(a["sha256"], sha.as_str());
    assert_eq!(a["size"], 300_000);
    assert_eq!(a["signed"], true);
    assert_eq!(a["signature"], sig_b64.as_str());
    // The same bytes again: the same artifact.
    let r = upload(
        &s,
        &admin,
        &fw,
        "name=again.bin&signer=vendor",
        Some(&sig_b64),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["sha256"], sha.as_str());
    let stored = s.data.join("artifacts").join(&sha);
    assert_eq!(std::fs::read(&stored).unwrap(), std::fs::read(&fw).unwrap());
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(&s.data.join("artifacts")), 0o700);
    let before = stored_files(&s);

    // A tampered file, another key's signature, an unknown signer: refused,
    // and nothing is left behind.
    let mut tampered = std::fs::read(&fw).unwrap();
    tampered[1000] ^= 1;
    let tampered_path = s.path("tampered.bin");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let r = upload(
        &s,
        &admin,
        &tampered_path,
        "name=fw.bin&signer=vendor",
        Some(&sig_b64),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("does not verify"), "{}", r.text());
    let other_key = s.path("other.key");
    let other_pub = s.path("other.pub");
    ok(
        &onramp_offline(&[
            "artifact",
            "keygen",
            "--out",
            other_key.to_str().unwrap(),
            "--public-out",
            other_pub.to_str().unwrap(),
        ]),
        "keygen other",
    );
    let other_sig = s.path("fw.other.sig");
    ok(
        &onramp_offline(&[
            "artifact",
            "sign",
            "--key",
            other_key.to_str().unwrap(),
            "--out",
            other_sig.to_str().unwrap(),
            fw.to_str().unwrap(),
        ]),
        "sign other",
    );
    let r = upload(
        &s,
        &admin,
        &fw,
        "name=fw.bin&signer=vendor",
        Some(&b64_file(&other_sig)),
    );
    assert_eq!(r.status, 400, "wrong key: {}", r.text());
    let r = upload(&s, &admin, &fw, "name=fw.bin&signer=nobody", Some(&sig_b64));
    assert_eq!(r.status, 400, "unknown signer: {}", r.text());
    assert!(r.text().contains("unknown signer"), "{}", r.text());
    assert_eq!(stored_files(&s), before, "a refused upload leaves nothing");

    // ---- ECDSA P-256: an openssl key, signed by the CLI, uploaded by the CLI ----
    let p256_key = s.path("p256.key");
    let p256_pub = s.path("p256.pub");
    ok(
        &openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p256_key.to_str().unwrap(),
        ]),
        "openssl genpkey",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p256_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    ok(
        &openssl(&[
            "pkey",
            "-in",
            p256_key.to_str().unwrap(),
            "-pubout",
            "-out",
            p256_pub.to_str().unwrap(),
        ]),
        "openssl pkey -pubout",
    );
    let fw2 = firmware(&s, "fw2.bin", 70_000, 2);
    let sig2 = s.path("fw2.sig");
    ok(
        &onramp_offline(&[
            "artifact",
            "sign",
            "--key",
            p256_key.to_str().unwrap(),
            "--out",
            sig2.to_str().unwrap(),
            fw2.to_str().unwrap(),
        ]),
        "sign p256",
    );
    ok(
        &openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            p256_pub.to_str().unwrap(),
            "-signature",
            sig2.to_str().unwrap(),
            fw2.to_str().unwrap(),
        ]),
        "openssl dgst -verify",
    );
    ok(
        &s.cli(&[
            "signer",
            "add",
            "p256",
            "--public-key",
            p256_pub.to_str().unwrap(),
        ]),
        "signer add",
    );
    let up = s.cli_json(&[
        "artifact",
        "upload",
        fw2.to_str().unwrap(),
        "--signature",
        sig2.to_str().unwrap(),
        "--signer",
        "p256",
    ]);
    assert_eq!(up["sha256"], sha256_of(&fw2).as_str());
    assert_eq!(up["signer"], "p256");
    let bad = s.cli(&[
        "artifact",
        "upload",
        fw.to_str().unwrap(),
        "--signature",
        sig2.to_str().unwrap(),
        "--signer",
        "p256",
    ]);
    assert!(!bad.status.success(), "a P-256 signature of another file");

    // An unsigned upload is accepted and marked so.
    let plain = firmware(&s, "plain.bin", 1000, 3);
    let r = upload(&s, &admin, &plain, "name=plain.bin", None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["signed"], false);
    let plain_sha = sha256_of(&plain);

    // ---- jobs refer to artifacts ----
    let d1 = s.device("D1");
    let d2 = s.device("D2");
    let unknown = "0".repeat(64);
    let job = |id: &str, things: &[&str], sha: &str, signed_only: bool| {
        json!({
            "jobId": id,
            "targets": things,
            "document": {
                "operation": "ota",
                "url": format!("${{onramp:artifact-url:{sha}}}"),
                "sha256": format!("${{onramp:artifact-sha256:{sha}}}"),
                "signature": format!("${{onramp:artifact-signature:{sha}}}"),
            },
            "requireSignedArtifacts": signed_only,
        })
        .to_string()
    };
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &admin,
        Some(&job("J0", &["D1"], &unknown, false)),
    );
    assert_eq!(r.status, 400, "an unknown artifact: {}", r.text());
    assert!(r.text().contains("unknown artifact"), "{}", r.text());
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &admin,
        Some(&job("J0", &["D1"], &plain_sha, true)),
    );
    assert_eq!(r.status, 400, "unsigned but required signed: {}", r.text());
    assert!(r.text().contains("is unsigned"), "{}", r.text());

    // D1 listens for its next job, then the job is created.
    let sub = s.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "$aws/things/D1/jobs/notify-next",
            "-C",
            "1",
            "-W",
            "20",
        ],
    );
    settle();
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &admin,
        Some(&job("J1", &["D1"], &sha, true)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, lines, err) = sub.wait();
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no notify-next: {err}"));
    let payload: Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
    let doc = &payload["execution"]["jobDocument"];
    assert_eq!(doc["sha256"], sha.as_str());
    assert_eq!(doc["signature"], sig_b64.as_str());
    let url = doc["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&s.url(&format!("/artifacts/{sha}?token="))),
        "{url}"
    );
    // Describe and start-next over MQTT give the device working URLs too.
    let (described, started) = mqtt_describe_and_start(&s, &d1, "J1");
    for (what, reply) in [("describe", &described), ("start-next", &started)] {
        let doc = &reply["execution"]["jobDocument"];
        assert_eq!(doc["sha256"], sha.as_str(), "{what}: {reply}");
        let url = doc["url"].as_str().unwrap_or_default();
        assert!(url.contains("?token="), "{what}: {reply}");
        let r = device_get(&s, &d1, url, &["-H", "Range: bytes=0-99"]);
        assert_eq!(r.status, 206, "{what}: {}", r.text());
        assert_eq!(r.body, std::fs::read(&fw).unwrap()[..100]);
    }

    // The stored job keeps the placeholder; only the device's copy has a URL.
    let r = s.api("GET", "/api/v1/jobs/J1", &admin, None);
    assert!(
        r.json()["document"]["url"]
            .as_str()
            .unwrap()
            .starts_with("${onramp:artifact-url:")
    );

    // ---- downloads ----
    let r = device_get(&s, &d1, &url, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, std::fs::read(&fw).unwrap());
    assert_eq!(
        r.header("etag").as_deref(),
        Some(format!("\"{sha}\"").as_str())
    );
    let downloaded = s.path("downloaded.bin");
    std::fs::write(&downloaded, &r.body).unwrap();
    assert_eq!(sha256_of(&downloaded), sha);
    // The device checks the signature with openssl and the vendor's public key.
    ok(
        &openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            public.to_str().unwrap(),
            "-rawin",
            "-in",
            downloaded.to_str().unwrap(),
            "-sigfile",
            sig.to_str().unwrap(),
        ]),
        "device-side verification",
    );

    // The documented device-side check, as written, on what the device got.
    let device_dir = s.path("device");
    std::fs::create_dir_all(&device_dir).unwrap();
    std::fs::copy(&downloaded, device_dir.join("firmware.bin")).unwrap();
    std::fs::copy(&public, device_dir.join("vendor.pub")).unwrap();
    let check = run_example(
        "device-check",
        &device_dir,
        &[
            ("SHA256", doc["sha256"].as_str().unwrap()),
            ("SIGNATURE", doc["signature"].as_str().unwrap()),
        ],
    );
    ok(&check, "the documented device check");
    assert!(String::from_utf8_lossy(&check.stdout).contains("Signature Verified Successfully"));
    std::fs::write(device_dir.join("firmware.bin"), &tampered).unwrap();
    let refused = run_example(
        "device-check",
        &device_dir,
        &[
            ("SHA256", &sha256_of(&tampered_path)),
            ("SIGNATURE", doc["signature"].as_str().unwrap()),
        ],
    );
    assert!(
        !refused.status.success(),
        "a tampered file fails the device check"
    );

    // A range: 206 with Content-Range and exactly that slice.
    let whole = std::fs::read(&fw).unwrap();
    let r = device_get(&s, &d1, &url, &["-H", "Range: bytes=1000-1999"]);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, whole[1000..2000]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 1000-1999/300000")
    );
    let r = device_get(&s, &d1, &url, &["-H", "Range: bytes=-10"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, whole[whole.len() - 10..]);
    let r = device_get(&s, &d1, &url, &["-H", "Range: bytes=300000-"]);
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(r.header("content-range").as_deref(), Some("bytes */300000"));

    // An interrupted download completed with `curl -C -`.
    let partial = s.path("partial.bin");
    std::fs::write(&partial, &whole[..123_457]).unwrap();
    let resumed = Command::new("curl")
        .args(["-s", "-S", "-f", "--cacert"])
        .arg(&s.root_pem)
        .arg("--cert")
        .arg(&d1.cert)
        .arg("--key")
        .arg(&d1.key)
        .args(["-C", "-", "-o"])
        .arg(&partial)
        .arg(&url)
        .output()
        .unwrap();
    ok(&resumed, "curl -C -");
    assert_eq!(std::fs::read(&partial).unwrap(), whole);

    // D2 has no job that refers to the artifact: 403, with or without D1's URL.
    let r = device_get(&s, &d2, &url, &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    let bare = s.url(&format!("/artifacts/{sha}"));
    let r = device_get(&s, &d2, &bare, &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    // D1 without a token still downloads; with a forged token it does not.
    let r = device_get(&s, &d1, &bare, &["-H", "Range: bytes=0-0"]);
    assert_eq!(r.status, 206, "{}", r.text());
    let forged = format!("{bare}?token=9999999999.{}", "ab".repeat(32));
    let r = device_get(&s, &d1, &forged, &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    // Unknown artifact: 404; no client certificate: 401.
    let r = device_get(&s, &d1, &s.url(&format!("/artifacts/{unknown}")), &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.curl(&[&bare]);
    assert_eq!(r.status, 401, "{}", r.text());

    // A canceled job no longer grants the download.
    let r = s.api("POST", "/api/v1/jobs/J1/cancel?force=true", &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = device_get(&s, &d1, &bare, &[]);
    assert_eq!(r.status, 403, "{}", r.text());

    // ---- audit, and a deleted signer ----
    let audit = s.cli_json(&["audit", "--limit", "200"]);
    let audit = audit.get("items").unwrap_or(&audit);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["signer.add", "artifact.upload"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    let r = s.api("DELETE", "/api/v1/signers/vendor", &admin, None);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = upload(&s, &admin, &fw, "name=fw.bin&signer=vendor", Some(&sig_b64));
    assert_eq!(r.status, 400, "a deleted signer: {}", r.text());
    let signers = s.api("GET", "/api/v1/signers", &admin, None).json();
    assert_eq!(signers.as_array().unwrap().len(), 1, "{signers}");
    let deleted = s.cli_json(&["audit", "--action", "signer.delete"]);
    let deleted = deleted.get("items").unwrap_or(&deleted);
    assert_eq!(deleted.as_array().map(Vec::len), Some(1), "{deleted}");

    // ---- metrics ----
    let text = s.metrics();
    // Two 100-byte ranges (the MQTT URLs) + whole file + 1000-byte range +
    // last 10 bytes + the resumed rest + 1 byte.
    let bytes = metric_value(&text, "onramp_artifact_download_bytes_total");
    assert_eq!(
        bytes,
        Some((200 + 300_000 + 1000 + 10 + (300_000 - 123_457) + 1) as f64)
    );
    // Those that reached the end of the file: whole, last 10 bytes, resumed.
    let completed = metric_value(&text, "onramp_artifact_downloads_completed_total");
    assert_eq!(completed, Some(3.0));

    // A job canceled without force still grants the download to a device
    // whose execution is in progress; once the job is deleted it does not.
    let r = s.api(
        "POST",
        "/api/v1/jobs",
        &admin,
        Some(&job("J9", &["D1"], &sha, true)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, started) = mqtt_describe_and_start(&s, &d1, "J9");
    assert_eq!(started["execution"]["jobId"], "J9", "{started}");
    let r = s.api("POST", "/api/v1/jobs/J9/cancel", &admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["executionCounts"], json!({"IN_PROGRESS": 1}));
    let r = device_get(&s, &d1, &bare, &["-H", "Range: bytes=0-0"]);
    assert_eq!(r.status, 206, "still granted: {}", r.text());
    let r = s.api("DELETE", "/api/v1/jobs/J9", &admin, None);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = device_get(&s, &d1, &bare, &[]);
    assert_eq!(r.status, 403, "a deleted job grants nothing: {}", r.text());
}

#[test]
fn upload_size_and_time_limits_and_the_per_device_download_rate() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            ("ONRAMP_ARTIFACTS__DOWNLOADS_PER_DEVICE__PER_SECOND", "0"),
            ("ONRAMP_ARTIFACTS__DOWNLOADS_PER_DEVICE__BURST", "2"),
            ("ONRAMP_ARTIFACTS__MAX_UPLOAD_BYTES", "10000"),
            ("ONRAMP_HTTP__UPLOAD_BODY_READ_TIMEOUT_SECS", "1"),
        ],
        None,
    );
    let admin = s.api_key("admin");
    // Over the upload limit: 413, declared or streamed, and nothing is kept.
    let big = firmware(&s, "big.bin", 10_001, 8);
    let r = upload(&s, &admin, &big, "name=big.bin", None);
    assert_eq!(r.status, 413, "{}", r.text());
    let chunked = s.curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", big.display()),
        &s.url("/api/v1/artifacts?name=big.bin"),
    ]);
    assert_eq!(chunked.status, 413, "{}", chunked.text());
    assert!(stored_files(&s).is_empty(), "{:?}", stored_files(&s));
    // An upload slower than its deadline: 408 (over HTTP/1.1, where the
    // answer can precede the end of the body), and nothing is kept.
    let slow = firmware(&s, "slow.bin", 9000, 7);
    let r = s.curl(&[
        "--http1.1",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "--limit-rate",
        "3K",
        "--data-binary",
        &format!("@{}", slow.display()),
        &s.url("/api/v1/artifacts?name=slow.bin"),
    ]);
    assert_eq!(r.status, 408, "{} {}", r.text(), r.stderr);
    assert!(stored_files(&s).is_empty(), "{:?}", stored_files(&s));
    let fw = firmware(&s, "fw.bin", 5000, 9);
    let r = upload(&s, &admin, &fw, "name=fw.bin", None);
    assert_eq!(r.status, 201, "{}", r.text());
    let sha = sha256_of(&fw);
    let d1 = s.device("D1");
    let body = json!({
        "jobId": "J1",
        "targets": ["D1"],
        "document": {"url": format!("${{onramp:artifact-url:{sha}}}")},
    })
    .to_string();
    let r = s.api("POST", "/api/v1/jobs", &admin, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let url = s.url(&format!("/artifacts/{sha}"));
    let statuses: Vec<u16> = (0..3)
        .map(|_| device_get(&s, &d1, &url, &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
}

#[test]
fn the_documented_build_machine_commands_work_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("firmware.bin"), b"firmware 2.4.0\n").unwrap();
    let out = run_example("build-machine", dir.path(), &[]);
    ok(&out, "the build-machine example");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"));
    assert_eq!(mode(&dir.path().join("vendor.key")), 0o600);
    let key = std::fs::read_to_string(dir.path().join("vendor.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    // The key is never overwritten by a second keygen.
    let again = run_example("build-machine", dir.path(), &[]);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("vendor.key")).unwrap(),
        key
    );
}

#[test]
fn slow_uploads_and_paced_downloads_outlive_the_body_and_idle_timeouts() {
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            ("ONRAMP_ARTIFACTS__DOWNLOAD_BYTES_PER_SEC", "100000"),
            ("ONRAMP_HTTP__IDLE_TIMEOUT_SECS", "1"),
            ("ONRAMP_HTTP__BODY_READ_TIMEOUT_SECS", "1"),
        ],
        None,
    );
    let admin = s.api_key("admin");
    let fw = firmware(&s, "fw.bin", 600_000, 5);
    // A slow upload (about 3 s) is not held to the 1 s body deadline of
    // other requests: uploads have their own.
    let started = std::time::Instant::now();
    let r = s.curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "--limit-rate",
        "200K",
        "--data-binary",
        &format!("@{}", fw.display()),
        &s.url("/api/v1/artifacts?name=fw.bin"),
    ]);
    assert_eq!(r.status, 201, "{} {}", r.text(), r.stderr);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    let sha = sha256_of(&fw);
    let d1 = s.device("D1");
    let body = json!({
        "jobId": "J1",
        "targets": ["D1"],
        "document": {"url": format!("${{onramp:artifact-url:{sha}}}")},
    })
    .to_string();
    let r = s.api("POST", "/api/v1/jobs", &admin, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let started = std::time::Instant::now();
    let r = device_get(&s, &d1, &s.url(&format!("/artifacts/{sha}")), &[]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.stderr);
    let expected = std::fs::read(&fw).unwrap();
    assert!(
        r.body == expected,
        "got {} of {} bytes: {}",
        r.body.len(),
        expected.len(),
        r.stderr
    );
    // 600 kB at 100 kB/s: the first 64 KiB at once, the rest paced, well past
    // the idle timeout and its grace period.
    assert!(
        took >= std::time::Duration::from_millis(5000),
        "not paced: {took:?}"
    );
}
