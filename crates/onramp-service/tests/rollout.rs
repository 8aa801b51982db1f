//! Paced rollouts and aborts, driven in-process with a simulated clock
//! (`release_rollouts(at)`), on SQLite and on PostgreSQL: the release rate,
//! a restart that keeps the pace, no execution lost or repeated, and an
//! abort at its threshold that cancels what is queued and drops what waits.

use onramp_domain::job::{JobExecution, JobExecutionStatus};
use onramp_domain::{DEFAULT_TENANT, DeviceProfile, JobsOp, JobsTopic, Page};
use onramp_pki::{CaKeyAlgorithm, CertificateAuthority, SecretHasher};
use onramp_service::{
    Caller, CreateJob, JobTargets, Onramp, RequestOrigin, Settings, TokenRequest,
};
use onramp_store::testing::{scratch_postgres, sqlite_url};
use serde_json::json;
use std::collections::BTreeSet;

struct Fixture {
    url: String,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(postgres: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = if postgres {
            scratch_postgres().await
        } else {
            sqlite_url(dir.path())
        };
        CertificateAuthority::create(
            &dir.path().join("ca"),
            CaKeyAlgorithm::EcdsaP256,
            "Test",
            onramp_service::now(),
        )
        .unwrap();
        Fixture { url, dir }
    }

    /// A server process over the same database: a restart is a new one.
    async fn onramp(&self) -> Onramp {
        let store = onramp_store::open(&self.url).await.unwrap();
        let ca = CertificateAuthority::load(&self.dir.path().join("ca")).unwrap();
        let hasher = SecretHasher::load_or_create(&self.dir.path().join("hmac.key")).unwrap();
        Onramp::new(store, ca, hasher, Settings::default())
    }
}

fn caller() -> Caller {
    Caller::local(DEFAULT_TENANT)
}

async fn things(o: &Onramp, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("dev-{i:03}");
        o.create_token(
            &caller(),
            &TokenRequest {
                serial_number: name.clone(),
                thing_name: None,
                profile: DeviceProfile::default(),
                ttl_secs: None,
            },
        )
        .await
        .unwrap();
        names.push(name);
    }
    names
}

async fn executions(o: &Onramp, job: &str) -> Vec<JobExecution> {
    o.list_job_executions(&caller(), job, &Page::new(None, Some(1000)))
        .await
        .unwrap()
}

async fn rollout_is_paced_survives_a_restart_and_releases_each_target_once(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let targets = things(&o, 25).await;
    let t0 = onramp_service::now();
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "paced".into(),
            description: None,
            document: br#"{"op":"update"}"#.to_vec(),
            targets: JobTargets {
                things: targets.clone(),
                thing_groups: vec![],
                query: None,
            },
            continuous: false,
            config: json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 10}}),
        },
    )
    .await
    .unwrap();
    // The first release goes out at creation.
    assert_eq!(executions(&o, "paced").await.len(), 10);
    // Within the same minute nothing more is released.
    assert_eq!(o.release_rollouts(t0 + 30).await.unwrap(), 0);
    // A restart (a new process on the same database) keeps the pace.
    drop(o);
    let o = f.onramp().await;
    assert_eq!(o.release_rollouts(t0 + 45).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(t0 + 61).await.unwrap(), 10);
    assert_eq!(o.release_rollouts(t0 + 90).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(t0 + 121).await.unwrap(), 5);
    assert_eq!(o.release_rollouts(t0 + 200).await.unwrap(), 0);
    let all = executions(&o, "paced").await;
    let names: BTreeSet<_> = all.iter().map(|e| e.thing_name.clone()).collect();
    assert_eq!(all.len(), 25, "every target released exactly once");
    assert_eq!(names, targets.into_iter().collect::<BTreeSet<_>>());
    assert!(all.iter().all(|e| e.status == JobExecutionStatus::Queued));
}

async fn update(o: &Onramp, thing: &str, job: &str, status: &str) -> Vec<String> {
    let origin = RequestOrigin {
        tenant: DEFAULT_TENANT,
        client_id: thing,
        source: "127.0.0.1",
        claim: None,
        certificate_id: None,
    };
    let request = onramp_domain::DeviceRequest::Jobs(JobsTopic {
        thing_name: thing.into(),
        op: JobsOp::Update { job_id: job.into() },
    });
    let payload = json!({"status": status}).to_string();
    o.device_request(&origin, &request, payload.as_bytes())
        .await
        .into_iter()
        .map(|r| r.topic)
        .collect()
}

async fn abort_at_the_threshold_cancels_queued_and_drops_waiting(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let targets = things(&o, 12).await;
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "risky".into(),
            description: None,
            document: br#"{"op":"flash"}"#.to_vec(),
            targets: JobTargets {
                things: targets.clone(),
                thing_groups: vec![],
                query: None,
            },
            continuous: false,
            config: json!({
                "jobExecutionsRolloutConfig": {"maximumPerMinute": 6},
                "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                    "thresholdPercentage": 50, "minNumberOfExecutedThings": 3}]}
            }),
        },
    )
    .await
    .unwrap();
    let released = executions(&o, "risky").await;
    assert_eq!(released.len(), 6);
    let names: Vec<String> = released.iter().map(|e| e.thing_name.clone()).collect();
    // One success, one failure: 2 executed, below the minimum of 3.
    assert!(update(&o, &names[0], "risky", "SUCCEEDED").await[0].ends_with("/accepted"));
    assert!(update(&o, &names[1], "risky", "FAILED").await[0].ends_with("/accepted"));
    let job = o.describe_job(&caller(), "risky").await.unwrap();
    assert_eq!(job.status, "IN_PROGRESS", "not aborted before the minimum");
    // A second failure: 2 of 3 executed failed, 66% >= 50%: abort.
    assert!(update(&o, &names[2], "risky", "FAILED").await[0].ends_with("/accepted"));
    let job = o.describe_job(&caller(), "risky").await.unwrap();
    assert_eq!(job.status, "CANCELED");
    assert_eq!(job.execution_counts.get("CANCELED"), Some(&3));
    assert_eq!(job.execution_counts.get("QUEUED"), None);
    // The six waiting targets are never released.
    let later = onramp_service::now() + 3600;
    assert_eq!(o.release_rollouts(later).await.unwrap(), 0);
    assert_eq!(executions(&o, "risky").await.len(), 6);
    // A device of a canceled execution is told so.
    let topics = update(&o, &names[3], "risky", "IN_PROGRESS").await;
    assert!(topics[0].ends_with("/rejected"), "{topics:?}");
    // The abort is in the audit log with its reason.
    let audit = o
        .query_audit(
            &caller(),
            &onramp_domain::AuditQuery {
                action: Some("job.abort".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert!(audit[0].detail.contains("2 of 3"), "{}", audit[0].detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_on_sqlite() {
    rollout_is_paced_survives_a_restart_and_releases_each_target_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_on_postgres() {
    rollout_is_paced_survives_a_restart_and_releases_each_target_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_sqlite() {
    abort_at_the_threshold_cancels_queued_and_drops_waiting(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_postgres() {
    abort_at_the_threshold_cancels_queued_and_drops_waiting(true).await;
}

async fn thing_with(o: &Onramp, name: &str, hw: &str, fw: &str) {
    o.create_token(
        &caller(),
        &TokenRequest {
            serial_number: name.into(),
            thing_name: None,
            profile: DeviceProfile {
                device_class: Some("sensor".into()),
                hardware_revision: Some(hw.into()),
                firmware_version: Some(fw.into()),
            },
            ttl_secs: None,
        },
    )
    .await
    .unwrap();
}

async fn report_firmware(o: &Onramp, thing: &str, version: &str) {
    let topic = onramp_domain::ShadowTopic {
        thing_name: thing.into(),
        shadow_name: None,
        op: onramp_domain::ShadowOp::Update,
    };
    let body = json!({"state": {"reported": {"firmware_version": version}}}).to_string();
    o.shadow_request(DEFAULT_TENANT, &topic, body.as_bytes())
        .await
        .unwrap();
}

async fn status_of(o: &Onramp, job: &str, thing: &str) -> (JobExecutionStatus, Option<String>) {
    let e = executions(o, job)
        .await
        .into_iter()
        .filter(|e| e.thing_name == thing)
        .max_by_key(|e| e.execution_number)
        .unwrap();
    (e.status, e.failure_reason.map(|r| format!("{r:?}")))
}

async fn success_counts_only_once_the_device_reports_the_target_version(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    thing_with(&o, "honest", "rev-a", "1.0.0").await;
    thing_with(&o, "liar", "rev-b", "1.0.0").await;
    thing_with(&o, "broken", "rev-b", "1.0.0").await;
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "fw-2".into(),
            description: None,
            document: br#"{"firmware":"2.0.0"}"#.to_vec(),
            targets: JobTargets {
                things: vec!["honest".into(), "liar".into(), "broken".into()],
                thing_groups: vec![],
                query: None,
            },
            continuous: false,
            config: json!({"successConfirmation": {"firmwareVersion": "2.0.0", "withinMinutes": 10}}),
        },
    )
    .await
    .unwrap();
    for t in ["honest", "liar"] {
        assert!(update(&o, t, "fw-2", "SUCCEEDED").await[0].ends_with("/accepted"));
    }
    assert!(update(&o, "broken", "fw-2", "FAILED").await[0].ends_with("/accepted"));
    let t = onramp_service::now();
    // Nobody runs 2.0.0 yet: both successes wait, the job is not complete.
    assert_eq!(o.confirm_job_executions(t).await.unwrap(), 0);
    assert_eq!(
        o.describe_job(&caller(), "fw-2").await.unwrap().status,
        "IN_PROGRESS"
    );
    // The honest device reports the new version (as 2.0: versions compare as versions).
    report_firmware(&o, "honest", "2.0").await;
    // The other one rolled back and keeps reporting the old version.
    report_firmware(&o, "liar", "1.0.0").await;
    assert_eq!(o.confirm_job_executions(t + 1).await.unwrap(), 1);
    assert_eq!(
        status_of(&o, "fw-2", "honest").await,
        (JobExecutionStatus::Succeeded, None)
    );
    assert_eq!(
        status_of(&o, "fw-2", "liar").await,
        (JobExecutionStatus::Succeeded, None)
    );
    // Past the deadline the unconfirmed success becomes a failure.
    assert_eq!(o.confirm_job_executions(t + 601).await.unwrap(), 1);
    assert_eq!(
        status_of(&o, "fw-2", "liar").await,
        (JobExecutionStatus::Failed, Some("NotConfirmed".into()))
    );
    let job = o.describe_job(&caller(), "fw-2").await.unwrap();
    assert_eq!(job.status, "COMPLETED");
    assert_eq!(job.execution_counts.get("SUCCEEDED"), Some(&1));
    assert_eq!(job.execution_counts.get("FAILED"), Some(&2));
    // Both failures share hardware revision rev-b: one glance shows it.
    assert_eq!(
        job.failures_by_group,
        vec![onramp_service::FailureGroup {
            hardware_revision: Some("rev-b".into()),
            device_class: Some("sensor".into()),
            status: "FAILED".into(),
            count: 2,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_on_sqlite() {
    success_counts_only_once_the_device_reports_the_target_version(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_on_postgres() {
    success_counts_only_once_the_device_reports_the_target_version(true).await;
}

async fn a_continuous_query_job_reaches_things_that_match_later(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    thing_with(&o, "old-b", "b", "1.2.0").await;
    thing_with(&o, "new-b", "b", "2.1.0").await;
    thing_with(&o, "old-a", "a", "1.2.0").await;
    let query =
        serde_json::from_value(json!({"hardwareRevision": "b", "firmwareLt": "2.0"})).unwrap();
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "fix-b".into(),
            description: None,
            document: br#"{"op":"patch"}"#.to_vec(),
            targets: JobTargets {
                things: vec![],
                thing_groups: vec![],
                query: Some(query),
            },
            continuous: true,
            config: json!({}),
        },
    )
    .await
    .unwrap();
    let names = |v: Vec<JobExecution>| v.into_iter().map(|e| e.thing_name).collect::<Vec<_>>();
    assert_eq!(names(executions(&o, "fix-b").await), vec!["old-b"]);
    // Nothing new: nothing added.
    assert_eq!(
        o.extend_continuous_jobs(onramp_service::now())
            .await
            .unwrap(),
        0
    );
    // A thing registered later that matches gets the job; one that does not, does not.
    thing_with(&o, "later-b", "b", "1.9.9").await;
    thing_with(&o, "later-a", "a", "1.0.0").await;
    assert_eq!(
        o.extend_continuous_jobs(onramp_service::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        names(executions(&o, "fix-b").await),
        vec!["later-b", "old-b"]
    );
    // Once added, never added twice.
    assert_eq!(
        o.extend_continuous_jobs(onramp_service::now())
            .await
            .unwrap(),
        0
    );
    // A snapshot job on reported state targets only things whose shadow matches.
    report_firmware(&o, "old-a", "0.9").await;
    let query = serde_json::from_value(
        json!({"reported": {"path": "firmware_version", "op": "lt", "value": "1.0"}}),
    )
    .unwrap();
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "by-shadow".into(),
            description: None,
            document: br#"{"op":"patch"}"#.to_vec(),
            targets: JobTargets {
                things: vec![],
                thing_groups: vec![],
                query: Some(query),
            },
            continuous: false,
            config: json!({}),
        },
    )
    .await
    .unwrap();
    assert_eq!(names(executions(&o, "by-shadow").await), vec!["old-a"]);
    // A bad query is refused with its reason.
    let bad = serde_json::from_value(json!({"firmwareLt": "bogus"})).unwrap();
    let err = o
        .create_job(
            &caller(),
            CreateJob {
                job_id: "bad".into(),
                description: None,
                document: br#"{}"#.to_vec(),
                targets: JobTargets {
                    things: vec![],
                    thing_groups: vec![],
                    query: Some(bad),
                },
                continuous: false,
                config: json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a version"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_on_sqlite() {
    a_continuous_query_job_reaches_things_that_match_later(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_on_postgres() {
    a_continuous_query_job_reaches_things_that_match_later(true).await;
}

async fn one_execution_is_canceled_and_the_rest_of_the_job_runs_on(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let targets = things(&o, 3).await;
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "one-off".into(),
            description: None,
            document: br#"{"op":"x"}"#.to_vec(),
            targets: JobTargets {
                things: targets.clone(),
                thing_groups: vec![],
                query: None,
            },
            continuous: false,
            config: json!({}),
        },
    )
    .await
    .unwrap();
    // A queued execution is canceled without force.
    let canceled = o
        .cancel_job_execution(&caller(), "one-off", &targets[0], false)
        .await
        .unwrap();
    assert_eq!(canceled.status, JobExecutionStatus::Canceled);
    // One in progress needs force.
    assert!(update(&o, &targets[1], "one-off", "IN_PROGRESS").await[0].ends_with("/accepted"));
    let err = o
        .cancel_job_execution(&caller(), "one-off", &targets[1], false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, onramp_service::ServiceError::Conflict(_)),
        "{err:?}"
    );
    let forced = o
        .cancel_job_execution(&caller(), "one-off", &targets[1], true)
        .await
        .unwrap();
    assert_eq!(forced.status, JobExecutionStatus::Canceled);
    // Canceled twice is a conflict; an unknown thing is not found.
    assert!(matches!(
        o.cancel_job_execution(&caller(), "one-off", &targets[0], true)
            .await
            .unwrap_err(),
        onramp_service::ServiceError::Conflict(_)
    ));
    assert!(matches!(
        o.cancel_job_execution(&caller(), "one-off", "ghost", true)
            .await
            .unwrap_err(),
        onramp_service::ServiceError::NotFound(_)
    ));
    // The job runs on for the third thing, then completes.
    let job = o.describe_job(&caller(), "one-off").await.unwrap();
    assert_eq!(job.status, "IN_PROGRESS");
    assert!(update(&o, &targets[2], "one-off", "SUCCEEDED").await[0].ends_with("/accepted"));
    let job = o.describe_job(&caller(), "one-off").await.unwrap();
    assert_eq!(job.status, "COMPLETED");
    assert_eq!(job.execution_counts.get("CANCELED"), Some(&2));
    assert_eq!(job.execution_counts.get("SUCCEEDED"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_execution_on_sqlite() {
    one_execution_is_canceled_and_the_rest_of_the_job_runs_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_execution_on_postgres() {
    one_execution_is_canceled_and_the_rest_of_the_job_runs_on(true).await;
}

// ---- pause and resume, scheduled start and end, deletion ----

/// Every message the service publishes: (topic, payload).
#[derive(Default)]
struct Captured(std::sync::Mutex<Vec<(String, serde_json::Value)>>);

impl onramp_service::MessageSink for Captured {
    fn publish(&self, _tenant: &str, topic: &str, payload: Vec<u8>) {
        let body = serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
        self.0.lock().unwrap().push((topic.to_string(), body));
    }
}

impl Captured {
    fn take(&self) -> Vec<(String, serde_json::Value)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn job_request(id: &str, things: &[String], config: serde_json::Value) -> CreateJob {
    CreateJob {
        job_id: id.into(),
        description: None,
        document: br#"{"op":"update"}"#.to_vec(),
        targets: JobTargets {
            things: things.to_vec(),
            thing_groups: vec![],
            query: None,
        },
        continuous: false,
        config,
    }
}

async fn audit_count(o: &Onramp, action: &str) -> usize {
    o.query_audit(
        &caller(),
        &onramp_domain::AuditQuery {
            action: Some(action.into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .len()
}

/// No 60-second window `(t - 60, t]` holds more than `max` queue times.
fn assert_paced(all: &[JobExecution], max: usize) {
    let times: Vec<i64> = all.iter().map(|e| e.queued_at).collect();
    for &t in &times {
        let in_window = times.iter().filter(|&&x| x > t - 60 && x <= t).count();
        assert!(
            in_window <= max,
            "{in_window} released in the minute to {t}"
        );
    }
}

async fn pause_holds_releases_and_resume_keeps_the_rate(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let targets = things(&o, 30).await;
    let t0 = onramp_service::now();
    o.create_job(
        &caller(),
        job_request(
            "paused",
            &targets,
            json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 10}}),
        ),
    )
    .await
    .unwrap();
    let first = executions(&o, "paused").await;
    assert_eq!(first.len(), 10);
    let job = o.pause_job(&caller(), "paused").await.unwrap();
    assert!(job.rollout_paused);
    assert_eq!(job.status, "IN_PROGRESS");
    // Paused twice is refused, and says why.
    let again = o.pause_job(&caller(), "paused").await.unwrap_err();
    assert_eq!(again.code(), "conflict", "{again}");
    assert!(again.to_string().contains("already paused"), "{again}");
    // Nothing is released while paused, however much time passes.
    assert_eq!(o.release_rollouts(t0 + 61).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(t0 + 200).await.unwrap(), 0);
    // A released execution keeps running: its device still updates it.
    let topics = update(&o, &first[0].thing_name, "paused", "IN_PROGRESS").await;
    assert!(topics[0].ends_with("/accepted"), "{topics:?}");
    // The pause is stored: a restarted process (or another node) holds it too.
    drop(o);
    let o = f.onramp().await;
    assert_eq!(o.release_rollouts(t0 + 250).await.unwrap(), 0);
    assert!(
        o.describe_job(&caller(), "paused")
            .await
            .unwrap()
            .rollout_paused
    );
    let listed = o
        .list_jobs(&caller(), &Page::new(None, Some(10)))
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|j| j.job_id == "paused" && j.rollout_paused)
    );
    assert_eq!(executions(&o, "paused").await.len(), 10);
    // Resumed: the pace goes on at the configured rate.
    let job = o.resume_job(&caller(), "paused").await.unwrap();
    assert!(!job.rollout_paused);
    assert_eq!(o.release_rollouts(t0 + 300).await.unwrap(), 10);
    assert_eq!(o.release_rollouts(t0 + 330).await.unwrap(), 0);
    // A pause and resume inside the minute do not reset the pace: no burst.
    o.pause_job(&caller(), "paused").await.unwrap();
    assert_eq!(o.release_rollouts(t0 + 340).await.unwrap(), 0);
    o.resume_job(&caller(), "paused").await.unwrap();
    assert_eq!(o.release_rollouts(t0 + 345).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(t0 + 359).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(t0 + 360).await.unwrap(), 10);
    let all = executions(&o, "paused").await;
    assert_eq!(all.len(), 30, "every target released exactly once");
    assert_paced(&all, 10);
    let resumed_twice = o.resume_job(&caller(), "paused").await.unwrap_err();
    assert!(
        resumed_twice.to_string().contains("not paused"),
        "{resumed_twice}"
    );
    assert_eq!(audit_count(&o, "job.pause").await, 2);
    assert_eq!(audit_count(&o, "job.resume").await, 2);
    // A terminal job cannot be paused.
    o.cancel_job(&caller(), "paused", false).await.unwrap();
    let err = o.pause_job(&caller(), "paused").await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("CANCELED"), "{err}");
    let err = o.pause_job(&caller(), "no-such-job").await.unwrap_err();
    assert_eq!(err.code(), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_on_sqlite() {
    pause_holds_releases_and_resume_keeps_the_rate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_on_postgres() {
    pause_holds_releases_and_resume_keeps_the_rate(true).await;
}

async fn a_paused_continuous_job_holds_new_members(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    thing_with(&o, "first-b", "b", "1.0.0").await;
    let query = serde_json::from_value(json!({"hardwareRevision": "b"})).unwrap();
    o.create_job(
        &caller(),
        CreateJob {
            job_id: "all-b".into(),
            description: None,
            document: br#"{"op":"patch"}"#.to_vec(),
            targets: JobTargets {
                things: vec![],
                thing_groups: vec![],
                query: Some(query),
            },
            continuous: true,
            config: json!({}),
        },
    )
    .await
    .unwrap();
    assert_eq!(executions(&o, "all-b").await.len(), 1);
    o.pause_job(&caller(), "all-b").await.unwrap();
    thing_with(&o, "second-b", "b", "1.0.0").await;
    let at = onramp_service::now();
    // The new member is recorded, but held.
    assert_eq!(o.extend_continuous_jobs(at).await.unwrap(), 1);
    assert_eq!(o.release_rollouts(at).await.unwrap(), 0);
    assert_eq!(executions(&o, "all-b").await.len(), 1);
    assert_eq!(o.extend_continuous_jobs(at).await.unwrap(), 0, "once");
    o.resume_job(&caller(), "all-b").await.unwrap();
    assert_eq!(o.release_rollouts(at + 1).await.unwrap(), 1);
    let names: Vec<String> = executions(&o, "all-b")
        .await
        .into_iter()
        .map(|e| e.thing_name)
        .collect();
    assert_eq!(names, vec!["first-b", "second-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_continuous_on_sqlite() {
    a_paused_continuous_job_holds_new_members(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_continuous_on_postgres() {
    a_paused_continuous_job_holds_new_members(true).await;
}

async fn a_scheduled_job_starts_and_ends_on_time(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let sink = std::sync::Arc::new(Captured::default());
    o.set_message_sink(sink.clone());
    let targets = things(&o, 4).await;
    let t0 = onramp_service::now();
    let (start, end) = (t0 + 3600, t0 + 7200);
    let job = o
        .create_job(
            &caller(),
            job_request(
                "later",
                &targets,
                json!({"schedulingConfig": {"startTime": start, "endTime": end,
                    "endBehavior": "CANCEL"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(job.status, "SCHEDULED");
    assert_eq!(job.config["schedulingConfig"]["endBehavior"], "CANCEL");
    assert!(executions(&o, "later").await.is_empty());
    assert!(
        sink.take().is_empty(),
        "no device hears of it before its start"
    );
    // Before the start nothing happens, neither by the schedule nor a release.
    assert_eq!(o.run_job_schedules(start - 1).await.unwrap(), 0);
    assert_eq!(o.release_rollouts(start - 1).await.unwrap(), 0);
    assert!(executions(&o, "later").await.is_empty());
    // At the start: IN_PROGRESS, every target queued and notified.
    assert_eq!(o.run_job_schedules(start).await.unwrap(), 1);
    let job = o.describe_job(&caller(), "later").await.unwrap();
    assert_eq!(job.status, "IN_PROGRESS");
    let queued = executions(&o, "later").await;
    assert_eq!(queued.len(), 4);
    assert!(queued.iter().all(|e| e.queued_at == start));
    let notified: BTreeSet<String> = sink
        .take()
        .into_iter()
        .filter(|(topic, _)| topic.ends_with("/jobs/notify-next"))
        .map(|(topic, body)| {
            assert_eq!(body["execution"]["jobId"], "later");
            topic
        })
        .collect();
    assert_eq!(notified.len(), 4, "{notified:?}");
    assert_eq!(
        o.run_job_schedules(start + 1).await.unwrap(),
        0,
        "started once"
    );
    assert!(update(&o, &targets[0], "later", "IN_PROGRESS").await[0].ends_with("/accepted"));
    // At the end, CANCEL: queued executions are canceled, in-progress run on.
    assert_eq!(o.run_job_schedules(end).await.unwrap(), 1);
    let job = o.describe_job(&caller(), "later").await.unwrap();
    assert_eq!(job.status, "CANCELED");
    assert_eq!(job.execution_counts.get("CANCELED"), Some(&3));
    assert_eq!(job.execution_counts.get("IN_PROGRESS"), Some(&1));
    assert_eq!(audit_count(&o, "job.start").await, 1);
    assert_eq!(audit_count(&o, "job.schedule_end").await, 1);

    // A paced job that stops its rollout at the end: what was released runs
    // to its end, the rest is never released, and the job then completes.
    let t0 = onramp_service::now();
    let (start, end) = (t0 + 1800, t0 + 3600);
    o.create_job(
        &caller(),
        job_request(
            "window",
            &targets,
            json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 2},
                "schedulingConfig": {"startTime": start, "endTime": end,
                    "endBehavior": "STOP_ROLLOUT"}}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(o.run_job_schedules(start).await.unwrap(), 1);
    assert_eq!(executions(&o, "window").await.len(), 2);
    assert_eq!(o.run_job_schedules(end).await.unwrap(), 1);
    assert_eq!(o.release_rollouts(end + 120).await.unwrap(), 0);
    let released = executions(&o, "window").await;
    assert_eq!(released.len(), 2);
    let job = o.describe_job(&caller(), "window").await.unwrap();
    assert_eq!(job.status, "IN_PROGRESS", "two executions still run");
    for e in &released {
        assert!(update(&o, &e.thing_name, "window", "SUCCEEDED").await[0].ends_with("/accepted"));
    }
    let job = o.describe_job(&caller(), "window").await.unwrap();
    assert_eq!(job.status, "COMPLETED");

    // FORCE_CANCEL: executions in progress are canceled too, and the device
    // that runs one is told it has nothing left.
    let t0 = onramp_service::now();
    let (start, end) = (t0 + 1800, t0 + 3600);
    o.create_job(
        &caller(),
        job_request(
            "forced",
            &targets[..2],
            json!({"schedulingConfig": {"startTime": start, "endTime": end,
                "endBehavior": "FORCE_CANCEL"}}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(o.run_job_schedules(start).await.unwrap(), 1);
    assert!(update(&o, &targets[1], "forced", "IN_PROGRESS").await[0].ends_with("/accepted"));
    sink.take();
    assert_eq!(o.run_job_schedules(end).await.unwrap(), 1);
    let job = o.describe_job(&caller(), "forced").await.unwrap();
    assert_eq!(job.status, "CANCELED");
    assert_eq!(job.execution_counts.get("CANCELED"), Some(&2), "{job:?}");
    let told = sink
        .take()
        .into_iter()
        .filter(|(topic, _)| topic == &format!("$aws/things/{}/jobs/notify-next", targets[1]))
        .count();
    assert!(told >= 1, "the device running it was told");
    let topics = update(&o, &targets[1], "forced", "SUCCEEDED").await;
    assert!(topics[0].ends_with("/rejected"), "{topics:?}");

    // AWS's limits: a start in the past or under 30 minutes ahead is
    // refused, as is an end under 30 minutes after the start.
    let t0 = onramp_service::now();
    for (config, field) in [
        (json!({"startTime": t0 - 10}), "startTime"),
        (json!({"startTime": t0 + 600}), "startTime"),
        (
            json!({"startTime": t0 + 3600, "endTime": t0 + 4000}),
            "endTime",
        ),
        (json!({"endBehavior": "CANCEL"}), "endBehavior"),
        (json!({"startTime": "soon"}), "startTime"),
    ] {
        let err = o
            .create_job(
                &caller(),
                job_request("refused", &targets, json!({"schedulingConfig": config})),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "bad_request", "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    assert_eq!(
        o.describe_job(&caller(), "refused")
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    // AWS's text form is accepted and kept as given.
    let job = o
        .create_job(
            &caller(),
            job_request(
                "text-time",
                &targets,
                json!({"schedulingConfig": {"startTime": "2099-01-01T00:00"}}),
            ),
        )
        .await
        .unwrap_err();
    assert!(job.to_string().contains("a year"), "{job}");
    let in_two_hours = time_text(t0 + 7200);
    let job = o
        .create_job(
            &caller(),
            job_request(
                "text-time",
                &targets,
                json!({"schedulingConfig": {"startTime": in_two_hours}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(job.status, "SCHEDULED");
    assert_eq!(job.config["schedulingConfig"]["startTime"], in_two_hours);
    // A scheduled job can be canceled before it starts.
    let job = o.cancel_job(&caller(), "text-time", false).await.unwrap();
    assert_eq!(job.status, "CANCELED");
    assert_eq!(o.run_job_schedules(t0 + 8000).await.unwrap(), 0);
    assert!(executions(&o, "text-time").await.is_empty());
}

/// `YYYY-MM-DDTHH:MM` (UTC) of a time, rounded down to the minute.
fn time_text(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (proleptic Gregorian), counted forward from 1970.
    let (mut year, mut left) = (1970i64, days);
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    while left >= if leap(year) { 366 } else { 365 } {
        left -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while left >= lengths[month] {
        left -= lengths[month];
        month += 1;
    }
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}",
        month + 1,
        left + 1,
        secs / 3600,
        secs % 3600 / 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_on_sqlite() {
    a_scheduled_job_starts_and_ends_on_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_on_postgres() {
    a_scheduled_job_starts_and_ends_on_time(true).await;
}

async fn a_deleted_job_is_gone_and_its_id_free(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp().await;
    let sink = std::sync::Arc::new(Captured::default());
    o.set_message_sink(sink.clone());
    let targets = things(&o, 2).await;
    o.create_job(&caller(), job_request("first", &targets, json!({})))
        .await
        .unwrap();
    // Queued a second later, so `first` is every thing's next job.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    o.create_job(&caller(), job_request("second", &targets, json!({})))
        .await
        .unwrap();
    assert!(update(&o, &targets[0], "first", "IN_PROGRESS").await[0].ends_with("/accepted"));
    sink.take();
    // In progress: refused without force, and nothing changes.
    let err = o.delete_job(&caller(), "first", false).await.unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(err.to_string().contains("IN_PROGRESS"), "{err}");
    assert_eq!(executions(&o, "first").await.len(), 2);
    // With force: canceled (the in-progress execution too), then deleted.
    o.delete_job(&caller(), "first", true).await.unwrap();
    assert_eq!(
        o.describe_job(&caller(), "first").await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        o.list_job_executions(&caller(), "first", &Page::new(None, Some(10)))
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    // Each thing now has `second` next, and was told so.
    for t in &targets {
        let pending = o.thing_pending_executions(&caller(), t).await.unwrap();
        let ids: Vec<&str> = pending.iter().map(|e| e.job_id.as_str()).collect();
        assert_eq!(ids, ["second"], "{t}");
    }
    let next: Vec<(String, serde_json::Value)> = sink
        .take()
        .into_iter()
        .filter(|(topic, _)| topic.ends_with("/notify-next"))
        .collect();
    for t in &targets {
        let last = next
            .iter()
            .rev()
            .find(|(topic, _)| topic.contains(&format!("/things/{t}/")))
            .unwrap_or_else(|| panic!("{t} had no notify-next: {next:?}"));
        assert_eq!(last.1["execution"]["jobId"], "second", "{t}");
    }
    // A device asking about the deleted job is told it does not exist.
    let topics = update(&o, &targets[0], "first", "SUCCEEDED").await;
    assert!(topics[0].ends_with("/rejected"), "{topics:?}");
    assert_eq!(audit_count(&o, "job.delete").await, 1);
    // The id may be used again at once, for a different job.
    let again = o
        .create_job(
            &caller(),
            CreateJob {
                document: br#"{"op":"another"}"#.to_vec(),
                ..job_request("first", &targets[..1], json!({}))
            },
        )
        .await
        .unwrap();
    assert_eq!(again.document, json!({"op": "another"}));
    assert_eq!(executions(&o, "first").await.len(), 1);
    // A canceled job is deleted without force; a missing one is not found.
    o.cancel_job(&caller(), "second", false).await.unwrap();
    o.delete_job(&caller(), "second", false).await.unwrap();
    assert_eq!(
        o.delete_job(&caller(), "second", false)
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(audit_count(&o, "job.delete").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_sqlite() {
    a_deleted_job_is_gone_and_its_id_free(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_postgres() {
    a_deleted_job_is_gone_and_its_id_free(true).await;
}
