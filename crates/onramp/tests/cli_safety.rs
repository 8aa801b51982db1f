//! The admin CLI beside a running server, and the data directory's safety:
//! concurrent CLI and API writes on SQLite, a locked database, a missing data
//! directory, file modes and owners.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// 60 `onramp allowlist add` commands run while 200 API lifecycle and
/// allow-list writes hit the same SQLite database: no API call answers 5xx,
/// every CLI command succeeds, and the registry ends as the calls asked.
#[test]
fn cli_and_api_writes_side_by_side_on_sqlite_never_fail() {
    let s = Arc::new(Server::start(Backend::Sqlite));
    let key = s.api_key("operator");
    const DEVICES: usize = 20;
    const ROUNDS: usize = 5;
    for i in 0..DEVICES {
        // A pending device per token, which suspend/reactivate cycles act on.
        s.token(&format!("LC-{i}"));
    }
    let api_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let cli_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for i in 0..DEVICES {
        let (s, key, failures) = (s.clone(), key.clone(), api_failures.clone());
        threads.push(std::thread::spawn(move || {
            let thing = format!("LC-{i}");
            for round in 0..ROUNDS {
                // Two lifecycle writes per round, in order: a refused or
                // failed suspend would make the reactivate answer 409.
                for action in ["suspend", "reactivate"] {
                    let r = s.api(
                        "POST",
                        &format!("/api/v1/devices/{thing}/{action}"),
                        &key,
                        None,
                    );
                    if r.status != 200 {
                        failures.lock().unwrap().push(format!(
                            "{action} {thing} round {round}: {} {}",
                            r.status,
                            r.text()
                        ));
                    }
                }
            }
        }));
    }
    for t in 0..6 {
        let (s, failures) = (s.clone(), cli_failures.clone());
        threads.push(std::thread::spawn(move || {
            for j in 0..10 {
                let serial = format!("CLI-{t}-{j}");
                let out = s.cli(&["allowlist", "add", &serial]);
                if !out.status.success() {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("allowlist add {serial}: {}", stderr(&out)));
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let api_failures = api_failures.lock().unwrap().clone();
    let cli_failures = cli_failures.lock().unwrap().clone();
    assert!(
        api_failures.is_empty(),
        "{} of {} API calls failed: {api_failures:#?}",
        api_failures.len(),
        DEVICES * ROUNDS * 2
    );
    assert!(cli_failures.is_empty(), "{cli_failures:#?}");
    for i in 0..DEVICES {
        assert_eq!(
            s.devices_json(&format!("LC-{i}"))["status"],
            "active",
            "LC-{i} went through {ROUNDS} suspend/reactivate rounds"
        );
    }
    let listed = s.cli_json(&["allowlist", "list", "--limit", "1000"])["items"].clone();
    let serials: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["serial_number"].as_str())
        .collect();
    for t in 0..6 {
        for j in 0..10 {
            let serial = format!("CLI-{t}-{j}");
            assert!(serials.contains(&serial.as_str()), "{serial} missing");
        }
    }
    let audit =
        s.cli_json(&["audit", "--action", "device.suspend", "--limit", "1000"])["items"].clone();
    assert_eq!(
        audit.as_array().unwrap().len(),
        DEVICES * ROUNDS,
        "one audit entry per suspension"
    );
}

/// Another process holds SQLite's write lock past the busy timeout: a write
/// answers 503 with Retry-After (not 500), and succeeds once the lock is gone.
#[test]
fn a_locked_sqlite_database_answers_503_with_retry_after_and_recovers() {
    let s = Server::start(Backend::Sqlite);
    let key = s.api_key("operator");
    let add = |serial: &str| {
        s.api(
            "POST",
            "/api/v1/allowlist",
            &key,
            Some(&format!(r#"{{"serial_numbers": ["{serial}"]}}"#)),
        )
    };
    assert_eq!(add("BEFORE").status, 200, "the write works unlocked");
    let db = s.data.join("onramp.db");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n\
             c.execute('ROLLBACK')\n",
            db.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let locked = add("DURING");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert_eq!(locked.status, 503, "{}", locked.text());
    assert_eq!(locked.json()["error"]["code"], "unavailable");
    assert_eq!(locked.header("retry-after").as_deref(), Some("1"));
    assert!(
        !s.cli_json(&["allowlist", "list"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["serial_number"] == "DURING")
    );
    assert_eq!(add("AFTER").status, 200, "the lock is gone");
}

fn bare_onramp(cwd: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd)
        .env_remove("ONRAMP_DATA_DIR")
        .env_remove("ONRAMP_CONFIG")
        .env_remove("ONRAMP_DATABASE_URL")
        .env_remove("RUST_LOG");
    c
}

/// Outside a data directory, admin commands refuse and create nothing; only
/// `onramp init` (or `onramp serve`) creates the directory and the CA.
#[test]
fn admin_commands_refuse_a_missing_data_directory_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    for args in [
        vec!["token", "create", "--serial", "SN-1"],
        vec!["allowlist", "add", "SN-1"],
        vec!["ca", "export"],
        vec!["device", "list"],
    ] {
        let out = bare_onramp(cwd).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("the data directory ./onramp-data")
                && err.contains(&cwd.join("onramp-data").display().to_string())
                && err.contains("does not exist")
                && err.contains("--data-dir")
                && err.contains("ONRAMP_DATA_DIR"),
            "{args:?}: {err}"
        );
        assert!(
            !cwd.join("onramp-data").exists(),
            "{args:?} created a data directory"
        );
    }
    // Named by the flag or the variable, the message names that directory.
    let elsewhere = cwd.join("elsewhere");
    let out = bare_onramp(cwd)
        .args(["token", "create", "--serial", "SN-1", "--data-dir"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("the data directory {}", elsewhere.display())),
        "{}",
        stderr(&out)
    );
    let out = bare_onramp(cwd)
        .args(["token", "create", "--serial", "SN-1"])
        .env("ONRAMP_DATA_DIR", &elsewhere)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&elsewhere.display().to_string()));
    assert!(!elsewhere.exists());
    // An existing directory without a CA is refused too, and gets none.
    let empty = cwd.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = bare_onramp(cwd)
        .arg("--data-dir")
        .arg(&empty)
        .args(["token", "create", "--serial", "SN-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds no CA"), "{}", stderr(&out));
    assert!(!empty.join("ca").exists(), "a CA was created");
    assert!(!empty.join("onramp.db").exists(), "a database was created");
    // `onramp init` creates it; then the same command works.
    let out = bare_onramp(cwd).args(["init"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let data = cwd.join("onramp-data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/issuing.key")), 0o600);
    assert_eq!(mode(&data.join("onramp.db")), 0o600);
    let out = bare_onramp(cwd)
        .args(["token", "create", "--serial", "SN-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let root_before = std::fs::read(data.join("ca/root.pem")).unwrap();
    let out = bare_onramp(cwd).args(["init"]).output().unwrap();
    assert!(out.status.success(), "init again: {}", stderr(&out));
    assert_eq!(
        std::fs::read(data.join("ca/root.pem")).unwrap(),
        root_before,
        "init on an existing directory keeps its CA"
    );
}

/// The registry's files are the owner's only, those SQLite creates later included.
#[test]
fn the_sqlite_database_files_are_owner_only() {
    let mut s = Server::start(Backend::Sqlite);
    // A write through the server and one through the CLI.
    s.token("SN-M1");
    let out = s.cli(&["allowlist", "add", "SN-M1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["onramp.db", "onramp.db-wal", "onramp.db-shm"] {
        assert_eq!(mode(&s.data.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&s.data), 0o700);
    // A database left readable by an older version is tightened on start.
    s.stop();
    for name in ["onramp.db", "onramp.db-wal", "onramp.db-shm"] {
        let p = s.data.join(name);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    s.start_again();
    s.token("SN-M2");
    for name in ["onramp.db", "onramp.db-wal", "onramp.db-shm"] {
        assert_eq!(mode(&s.data.join(name)), 0o600, "{name} after restart");
    }
}

/// `onramp serve` expected to refuse; the timeout ends it if it does not.
fn serve_once(s: &Server) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg(bin())
        .arg("--data-dir")
        .arg(&s.data)
        .arg("serve")
        .env_remove("ONRAMP_DATA_DIR")
        .env_remove("ONRAMP_DATABASE_URL")
        .env("ONRAMP_HTTP__LISTEN", "127.0.0.1:0")
        .env("ONRAMP_MQTT__LISTEN", "127.0.0.1:0")
        .env("ONRAMP_OPS__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap()
}

/// The server refuses a data directory or `ca/` that others may write to or
/// that another user owns, printing the command that fixes it.
#[test]
fn the_server_refuses_an_unsafe_data_directory_with_the_fix() {
    let mut s = Server::start(Backend::Sqlite);
    s.stop();
    let ca = s.data.join("ca");
    for (dir, bad) in [(&s.data, 0o777), (&s.data, 0o770), (&ca, 0o757)] {
        let good = mode(dir);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(bad)).unwrap();
        let out = serve_once(&s);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(good)).unwrap();
        assert!(
            !out.status.success(),
            "{} at {bad:o} was accepted",
            dir.display()
        );
        let err = stderr(&out);
        assert!(
            err.contains(&format!("`chmod go-w {}`", dir.display())),
            "{}: {err}",
            dir.display()
        );
        // The CLI refuses it as well.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(bad)).unwrap();
        let out = s.cli(&["device", "list"]);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(good)).unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("chmod go-w"), "{}", stderr(&out));
    }
    // Owned by another user (the suite runs as root, which may give it away;
    // as anyone else the directory cannot be given away, so this part is skipped).
    let me = std::fs::metadata(&s.data).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&me);
    if uid == 0 {
        for dir in [&s.data, &ca] {
            std::os::unix::fs::chown(dir, Some(12345), None).unwrap();
            let out = serve_once(&s);
            std::os::unix::fs::chown(dir, Some(0), None).unwrap();
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(
                err.contains("belongs to user id 12345")
                    && err.contains(&format!("`chown 0 {}`", dir.display())),
                "{err}"
            );
        }
    }
    // Put right, the same directory serves again.
    s.start_again();
    assert_eq!(s.curl(&[&s.url("/healthz")]).status, 200);
}
