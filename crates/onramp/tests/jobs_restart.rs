//! A paced rollout survives `kill -9`: the real `onramp serve` is killed
//! (SIGKILL, no shutdown path runs) while the scheduler releases a paced
//! job, started again on the same data, and the rollout goes on with no
//! execution lost or repeated and the configured pace kept across the
//! restart. On SQLite, and on PostgreSQL with `ONRAMP_TEST_STORE=postgres`.
//!
//! The rollout window is shortened to 5 s (`jobs.rollout_window_secs`) so
//! that several windows pass in a few seconds each.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const WINDOW_SECS: i64 = 5;
const PER_WINDOW: usize = 10;
const THINGS: usize = 40;
const JOB: &str = "fw-restart";

/// Every execution of the job now: thing name → (execution number,
/// status, queuedAt), paging through the listing.
fn executions(s: &Server, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/jobs/{JOB}/executions?limit=1000&after={a}"),
            None => format!("/api/v1/jobs/{JOB}/executions?limit=1000"),
        };
        let r = s.api("GET", &path, key, None);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let items = page["items"].as_array().cloned().unwrap_or_default();
        all.extend(items);
        match page["next"].as_str() {
            Some(n) if !n.is_empty() => after = Some(n.to_string()),
            _ => break,
        }
    }
    all
}

/// The executions by thing, checking that no thing has more than one.
fn by_thing(list: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in list {
        let thing = e["thingName"].as_str().unwrap().to_string();
        assert_eq!(e["executionNumber"], 1, "a repeated execution: {e}");
        assert!(
            out.insert(thing.clone(), e.clone()).is_none(),
            "two executions of {JOB} on {thing}: {list:?}"
        );
    }
    out
}

/// Asserts that everything seen before is still there, unchanged.
fn nothing_lost(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) {
    for (thing, e) in before {
        let now = after
            .get(thing)
            .unwrap_or_else(|| panic!("the execution on {thing} was lost: {e}"));
        assert_eq!(now["queuedAt"], e["queuedAt"], "{thing}: {e} became {now}");
        assert_eq!(now["status"], "QUEUED", "{thing}: {now}");
    }
}

/// Asserts that no window of `WINDOW_SECS` holds more than `PER_WINDOW`
/// releases, counted by the executions' `queuedAt` (the server's second).
fn pace_kept(list: &BTreeMap<String, Value>) {
    let stamps: Vec<i64> = list
        .values()
        .map(|e| e["queuedAt"].as_i64().unwrap())
        .collect();
    let (Some(first), Some(last)) = (stamps.iter().min(), stamps.iter().max()) else {
        return;
    };
    for end in *first..=*last {
        let inside = stamps
            .iter()
            .filter(|&&t| t <= end && t > end - WINDOW_SECS)
            .count();
        assert!(
            inside <= PER_WINDOW,
            "{inside} releases in the {WINDOW_SECS} s ending at {end} (at most {PER_WINDOW}): {stamps:?}"
        );
    }
}

fn epoch_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls until at least `n` executions exist; returns them.
fn wait_for(s: &Server, key: &str, n: usize, within: Duration) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + within;
    loop {
        let now = by_thing(&executions(s, key));
        if now.len() >= n {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} executions released within {within:?}; server log:\n{}",
            now.len(),
            s.server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_paced_rollout_survives_kill_9(backend: Backend) {
    let window = WINDOW_SECS.to_string();
    let mut s = Server::start_with(
        backend,
        &[("ONRAMP_JOBS__ROLLOUT_WINDOW_SECS", window.as_str())],
        None,
    );
    let key = s.api_key("operator");
    let things: Vec<String> = (0..THINGS).map(|i| format!("restart-{i:02}")).collect();
    for (i, t) in things.iter().enumerate() {
        let body = json!({"serial_number": format!("SN-R{i}"), "thing_name": t}).to_string();
        let r = s.api("POST", "/api/v1/tokens", &key, Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let body = json!({
        "jobId": JOB,
        "document": {"operation": "firmware-update", "version": "9.9.9"},
        "targets": things,
        "jobExecutionsRolloutConfig": {"maximumPerMinute": PER_WINDOW},
    })
    .to_string();
    let r = s.api("POST", "/api/v1/jobs", &key, Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let created_at = r.json()["createdAt"].as_i64().unwrap();
    // The first window's share goes out with the creation.
    let first = wait_for(&s, &key, PER_WINDOW, Duration::from_secs(5));
    assert_eq!(first.len(), PER_WINDOW, "{first:?}");

    // Kill 1: in the second the next release falls due (the first release
    // leaves the window), while the scheduler is at work on it.
    let due = (created_at + WINDOW_SECS) as f64;
    let jitter = f64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            % 400,
    ) / 1000.0;
    let wait = due + jitter - epoch_secs_f64();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let before_kill = by_thing(&executions(&s, &key));
    s.kill();
    s.start_again();
    let after_restart = by_thing(&executions(&s, &key));
    nothing_lost(&before_kill, &after_restart);
    assert!(after_restart.len() >= before_kill.len());
    pace_kept(&after_restart);

    // The rollout goes on after the restart.
    let seen = wait_for(&s, &key, 2 * PER_WINDOW, Duration::from_secs(40));
    nothing_lost(&after_restart, &seen);
    pace_kept(&seen);

    // Kill 2: just after a release is seen, while its notifications and the
    // scheduler's bookkeeping may still be under way.
    let next = wait_for(&s, &key, seen.len() + 1, Duration::from_secs(40));
    s.kill();
    s.start_again();
    let after_second = by_thing(&executions(&s, &key));
    nothing_lost(&next, &after_second);
    pace_kept(&after_second);

    // Every target is released once in the end, at the configured pace.
    let all = wait_for(&s, &key, THINGS, Duration::from_secs(60));
    nothing_lost(&after_second, &all);
    pace_kept(&all);
    let names: Vec<String> = all.keys().cloned().collect();
    let mut expected = things.clone();
    expected.sort();
    assert_eq!(names, expected);
    // Four windows' worth: the releases span at least three more windows
    // after the first.
    let stamps: Vec<i64> = all
        .values()
        .map(|e| e["queuedAt"].as_i64().unwrap())
        .collect();
    let span = stamps.iter().max().unwrap() - stamps.iter().min().unwrap();
    assert!(
        span >= 3 * WINDOW_SECS,
        "{THINGS} things at {PER_WINDOW} per {WINDOW_SECS} s released within {span} s"
    );
    let job = s
        .api("GET", &format!("/api/v1/jobs/{JOB}"), &key, None)
        .json();
    assert_eq!(
        job["executionCounts"]["QUEUED"].as_i64(),
        Some(THINGS as i64),
        "{job}"
    );
}

#[test]
fn a_paced_rollout_survives_kill_9_and_keeps_its_pace() {
    a_paced_rollout_survives_kill_9(backend());
}
