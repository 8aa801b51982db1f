//! The accepted replies of the four device requests, and the wire shapes of
//! `JobExecution` and `JobExecutionSummary` that replies and notifications
//! share. Times are epoch seconds; `clientToken` is echoed when the request
//! had one.

use super::{DescribeRequest, JobExecution, JobExecutionStatus, UpdateRequest, state_json};
use crate::UnixTime;
use serde_json::{Map, Value, json};

/// A `JobExecution` object. `jobDocument` is included when given, as the
/// JSON object it is (not a string); `startedAt` once started;
/// `approximateSecondsBeforeTimedOut` while a timer runs.
pub fn execution_json(execution: &JobExecution, document: Option<&Value>, now: UnixTime) -> Value {
    let mut out = Map::new();
    out.insert("jobId".into(), json!(execution.job_id));
    out.insert("thingName".into(), json!(execution.thing_name));
    if let Some(document) = document {
        out.insert("jobDocument".into(), document.clone());
    }
    out.insert("status".into(), json!(execution.status.as_str()));
    out.insert("statusDetails".into(), json!(execution.status_details));
    out.insert("queuedAt".into(), json!(execution.queued_at));
    if let Some(started) = execution.started_at {
        out.insert("startedAt".into(), json!(started));
    }
    out.insert("lastUpdatedAt".into(), json!(execution.last_updated_at));
    if let Some(seconds) = execution.seconds_before_timed_out(now) {
        out.insert("approximateSecondsBeforeTimedOut".into(), json!(seconds));
    }
    out.insert("versionNumber".into(), json!(execution.version));
    out.insert("executionNumber".into(), json!(execution.execution_number));
    Value::Object(out)
}

/// A `JobExecutionSummary` object, as listed by GetPending and `notify`.
pub fn summary_json(execution: &JobExecution) -> Value {
    let mut out = Map::new();
    out.insert("jobId".into(), json!(execution.job_id));
    out.insert("queuedAt".into(), json!(execution.queued_at));
    if let Some(started) = execution.started_at {
        out.insert("startedAt".into(), json!(started));
    }
    out.insert("lastUpdatedAt".into(), json!(execution.last_updated_at));
    out.insert("versionNumber".into(), json!(execution.version));
    out.insert("executionNumber".into(), json!(execution.execution_number));
    Value::Object(out)
}

/// Adds `timestamp` and, when given, `clientToken` to a reply object.
pub(super) fn envelope(
    mut out: Map<String, Value>,
    client_token: Option<&str>,
    now: UnixTime,
) -> Value {
    out.insert("timestamp".into(), json!(now));
    if let Some(token) = client_token {
        out.insert("clientToken".into(), json!(token));
    }
    Value::Object(out)
}

/// Pending executions of `status`, in queue order.
pub(super) fn pending_with(
    executions: &[JobExecution],
    status: JobExecutionStatus,
) -> Vec<&JobExecution> {
    let mut out: Vec<&JobExecution> = executions.iter().filter(|e| e.status == status).collect();
    out.sort_by(|a, b| a.pending_order().cmp(&b.pending_order()));
    out
}

/// `jobs/get/accepted`: every pending execution, `inProgressJobs` and
/// `queuedJobs` each in queue order. Terminal executions in the input are
/// left out.
pub fn get_pending_accepted(
    executions: &[JobExecution],
    client_token: Option<&str>,
    now: UnixTime,
) -> Value {
    let list = |status| {
        Value::Array(
            pending_with(executions, status)
                .into_iter()
                .map(summary_json)
                .collect(),
        )
    };
    let mut out = Map::new();
    out.insert(
        "inProgressJobs".into(),
        list(JobExecutionStatus::InProgress),
    );
    out.insert("queuedJobs".into(), list(JobExecutionStatus::Queued));
    envelope(out, client_token, now)
}

/// `jobs/start-next/accepted`: the started (or already running) execution
/// with its document, or no `execution` member when nothing was pending.
pub fn start_next_accepted(
    execution: Option<(&JobExecution, &Value)>,
    client_token: Option<&str>,
    now: UnixTime,
) -> Value {
    let mut out = Map::new();
    if let Some((execution, document)) = execution {
        out.insert(
            "execution".into(),
            execution_json(execution, Some(document), now),
        );
    }
    envelope(out, client_token, now)
}

/// `jobs/{jobId}/get/accepted`. For `$next` with nothing pending, pass
/// `None`: the reply then has no `execution` member.
pub fn describe_accepted(
    execution: Option<(&JobExecution, &Value)>,
    request: &DescribeRequest,
    now: UnixTime,
) -> Value {
    let mut out = Map::new();
    if let Some((execution, document)) = execution {
        let document = request.include_job_document.then_some(document);
        out.insert("execution".into(), execution_json(execution, document, now));
    }
    envelope(out, request.client_token.as_deref(), now)
}

/// `jobs/{jobId}/update/accepted`: `executionState` and `jobDocument` only
/// when the request asked for them.
pub fn update_accepted(
    execution: &JobExecution,
    document: &Value,
    request: &UpdateRequest,
    now: UnixTime,
) -> Value {
    let mut out = Map::new();
    if request.include_job_execution_state {
        out.insert("executionState".into(), state_json(&execution.state()));
    }
    if request.include_job_document {
        out.insert("jobDocument".into(), document.clone());
    }
    envelope(out, request.client_token.as_deref(), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::StatusDetails;

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn running() -> JobExecution {
        let mut e = JobExecution::queued("job-1", "thing-1", 100);
        e.status = JobExecutionStatus::InProgress;
        e.started_at = Some(110);
        e.last_updated_at = 120;
        e.version = 3;
        e.step_deadline = Some(200);
        e.status_details = StatusDetails::from([("step".into(), "flash".into())]);
        e
    }

    #[test]
    fn a_job_execution_has_the_wire_field_names() {
        let doc = json!({"operation": "update"});
        let v = execution_json(&running(), Some(&doc), 150);
        assert_eq!(
            v,
            json!({
                "jobId": "job-1", "thingName": "thing-1", "jobDocument": {"operation": "update"},
                "status": "IN_PROGRESS", "statusDetails": {"step": "flash"}, "queuedAt": 100,
                "startedAt": 110, "lastUpdatedAt": 120, "approximateSecondsBeforeTimedOut": 50,
                "versionNumber": 3, "executionNumber": 1,
            })
        );
        let queued = JobExecution::queued("j", "t", 5);
        let v = execution_json(&queued, None, 6);
        assert_eq!(
            keys(&v),
            [
                "executionNumber",
                "jobId",
                "lastUpdatedAt",
                "queuedAt",
                "status",
                "statusDetails",
                "thingName",
                "versionNumber"
            ]
        );
    }

    #[test]
    fn a_summary_has_the_wire_field_names() {
        assert_eq!(
            summary_json(&running()),
            json!({"jobId": "job-1", "queuedAt": 100, "startedAt": 110, "lastUpdatedAt": 120,
                   "versionNumber": 3, "executionNumber": 1})
        );
    }

    #[test]
    fn get_pending_splits_in_progress_from_queued_and_drops_finished() {
        let mut old = JobExecution::queued("old", "t", 1);
        old.status = JobExecutionStatus::Succeeded;
        let a = JobExecution::queued("a", "t", 20);
        let b = JobExecution::queued("b", "t", 10);
        let v = get_pending_accepted(&[old, a, running(), b], Some("tok"), 300);
        assert_eq!(v["timestamp"], 300);
        assert_eq!(v["clientToken"], "tok");
        assert_eq!(v["inProgressJobs"].as_array().unwrap().len(), 1);
        let queued: Vec<_> = v["queuedJobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["jobId"].clone())
            .collect();
        assert_eq!(queued, [json!("b"), json!("a")]);
        let empty = get_pending_accepted(&[], None, 1);
        assert_eq!(
            empty,
            json!({"inProgressJobs": [], "queuedJobs": [], "timestamp": 1})
        );
    }

    #[test]
    fn start_next_and_describe_carry_the_execution_or_none() {
        let doc = json!({"a": 1});
        let e = running();
        let v = start_next_accepted(Some((&e, &doc)), Some("c"), 150);
        assert_eq!(v["execution"]["jobDocument"], doc);
        assert_eq!(v["clientToken"], "c");
        assert_eq!(start_next_accepted(None, None, 9), json!({"timestamp": 9}));

        let mut request = DescribeRequest {
            execution_number: None,
            include_job_document: true,
            client_token: Some("d".into()),
        };
        let v = describe_accepted(Some((&e, &doc)), &request, 150);
        assert_eq!(v["execution"]["jobDocument"], doc);
        request.include_job_document = false;
        let v = describe_accepted(Some((&e, &doc)), &request, 150);
        assert!(v["execution"].get("jobDocument").is_none());
        assert_eq!(
            describe_accepted(None, &request, 2),
            json!({"timestamp": 2, "clientToken": "d"})
        );
    }

    #[test]
    fn update_accepted_includes_state_and_document_only_on_request() {
        let doc = json!({"a": 1});
        let e = running();
        let mut request = UpdateRequest::to(JobExecutionStatus::InProgress);
        assert_eq!(
            update_accepted(&e, &doc, &request, 7),
            json!({"timestamp": 7})
        );
        request.include_job_execution_state = true;
        request.include_job_document = true;
        request.client_token = Some("u".into());
        assert_eq!(
            update_accepted(&e, &doc, &request, 7),
            json!({
                "executionState": {"status": "IN_PROGRESS", "statusDetails": {"step": "flash"}, "versionNumber": 3},
                "jobDocument": {"a": 1}, "timestamp": 7, "clientToken": "u",
            })
        );
    }
}
