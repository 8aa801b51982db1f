//! Shadow updates survive a crash: every version the REST API acknowledged
//! is still there after the server is killed with SIGKILL and started again.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// How long the writer runs before the server is killed.
const WRITE_FOR: Duration = Duration::from_millis(1500);

/// The pid of this test's `onramp serve` child: a direct child of this
/// process whose command line is `... --data-dir <data> ... serve`.
fn server_pid(s: &Server) -> u32 {
    let me = std::process::id();
    let data = s.data.as_os_str().to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let data_dir = args
            .windows(2)
            .any(|w| w[0] == "--data-dir" && w[1] == data);
        if !data_dir || !args.iter().any(|a| a == "serve") {
            continue;
        }
        // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            found.push(pid);
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected one onramp serve child, found {found:?}"
    );
    found[0]
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// What the writer saw: acknowledged versions with the `seq` each carried,
/// and the request that was cut off by the kill.
#[derive(Debug, Default)]
struct Written {
    acked: BTreeMap<i64, i64>,
    /// The `seq` of the request that got no acknowledgement.
    unacked: Option<i64>,
    /// Whether the first failure came only after the kill.
    failed_after_kill: bool,
    failure: String,
}

fn write_until_failure(s: &Server, key: &str, killed: &AtomicBool) -> Written {
    let mut w = Written::default();
    for seq in 1.. {
        let body = format!(r#"{{"state":{{"reported":{{"seq":{seq}}}}}}}"#);
        let r = s.api("POST", "/api/v1/things/D1/shadow", key, Some(&body));
        let version = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["version"].as_i64());
        match (r.status, version) {
            (200, Some(v)) => {
                let before = w.acked.insert(v, seq);
                assert!(before.is_none(), "version {v} acknowledged twice");
            }
            _ => {
                w.failed_after_kill = killed.load(Ordering::SeqCst);
                w.unacked = Some(seq);
                w.failure = format!("{} {} {}", r.status, r.text(), r.stderr.trim());
                break;
            }
        }
    }
    w
}

fn history(s: &Server, key: &str) -> Vec<Value> {
    let r = s.api(
        "GET",
        "/api/v1/things/D1/shadow/history?limit=1000",
        key,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn seq_of(doc: &Value) -> Option<i64> {
    doc["state"]["reported"]["seq"].as_i64()
}

#[test]
fn acknowledged_shadow_versions_survive_a_kill() {
    let mut s = Server::start(Backend::Sqlite);
    s.device("D1");
    let key = s.api_key("operator");
    let killed = AtomicBool::new(false);
    let pid = server_pid(&s);

    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_until_failure(&s, &key, &killed));
        let started = Instant::now();
        while started.elapsed() < WRITE_FOR && !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        killed.store(true, Ordering::SeqCst);
        sigkill(pid);
        writer.join().unwrap()
    });
    assert!(
        written.failed_after_kill,
        "an update failed before the kill: {}\n{}",
        written.failure,
        s.server_log()
    );
    assert!(
        written.acked.len() >= 5,
        "too few acknowledged updates before the kill to mean anything: {written:?}"
    );
    let max_acked = *written.acked.keys().next_back().unwrap();
    let acked_count = i64::try_from(written.acked.len()).unwrap();
    assert_eq!(
        max_acked, acked_count,
        "one writer from an empty shadow: versions are 1..=n: {written:?}"
    );

    // The child was killed; `restart` reaps it and spawns a new server on
    // the same data directory (new ports).
    s.restart();

    let history = history(&s, &key);
    let by_version: BTreeMap<i64, &Value> = history
        .iter()
        .map(|h| (h["version"].as_i64().unwrap(), &h["document"]))
        .collect();
    assert_eq!(
        by_version.len(),
        history.len(),
        "duplicate versions in history"
    );
    assert!(
        history.len() < 1000,
        "history limit reached; the check would not see every version"
    );
    for (version, seq) in &written.acked {
        let doc = by_version.get(version).unwrap_or_else(|| {
            panic!(
                "acknowledged version {version} (seq {seq}) is missing after the kill; history has {:?}",
                by_version.keys().collect::<Vec<_>>()
            )
        });
        assert_eq!(
            seq_of(doc),
            Some(*seq),
            "version {version} holds {doc}, acknowledged with seq {seq}"
        );
    }
    let max = *by_version.keys().next_back().unwrap();
    let versions: Vec<i64> = by_version.keys().copied().collect();
    assert_eq!(
        versions,
        (1..=max).collect::<Vec<_>>(),
        "versions have gaps"
    );
    // Only the request cut off by the kill may have been committed unacknowledged.
    assert!(
        max == max_acked || max == max_acked + 1,
        "history goes to {max}, but only {max_acked} were acknowledged and one more was in flight"
    );
    if max == max_acked + 1 {
        assert_eq!(
            seq_of(by_version[&max]),
            written.unacked,
            "the unacknowledged version {max} holds {}",
            by_version[&max]
        );
    }

    let r = s.api("GET", "/api/v1/things/D1/shadow", &key, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let current = r.json();
    assert_eq!(current["version"], max, "{current}");
    assert_eq!(
        seq_of(&current),
        seq_of(by_version[&max]),
        "the current document is not the one written at version {max}: {current}"
    );
    println!(
        "{} acknowledged (max version {max_acked}), history 1..={max} after SIGKILL",
        written.acked.len()
    );
}
