//! `notify` (JobExecutionsChanged) and `notify-next`
//! (NextJobExecutionChanged): whether a change to a thing's executions
//! calls for them, and their payloads.
//!
//! - `notify` goes out when the thing's pending list changes: an execution
//!   is queued, changes to another pending status, or leaves the list by
//!   reaching a terminal status. New details or timers on an execution that
//!   stays as it was do not count.
//! - `notify-next` goes out only when *which* execution is next changes;
//!   changes to the next execution's details do not count.

use super::reply::{envelope, pending_with, summary_json};
use super::{JobExecution, JobExecutionStatus, execution_json, next_pending};
use crate::UnixTime;
use serde_json::{Map, Value, json};

/// The most executions one `notify` lists.
pub const NOTIFY_MAX_EXECUTIONS: usize = 10;

/// The payloads to publish after a change, on `J/notify` and `J/notify-next`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notifications {
    pub notify: Option<Value>,
    pub notify_next: Option<Value>,
}

/// What identifies a pending execution's place in the list.
fn pending_set(executions: &[JobExecution]) -> Vec<(&str, u64, JobExecutionStatus)> {
    let mut set: Vec<_> = executions
        .iter()
        .filter(|e| e.status.is_pending())
        .map(|e| (e.job_id.as_str(), e.execution_number, e.status))
        .collect();
    set.sort();
    set
}

/// Whether going from `before` to `after` (a thing's executions) calls for `notify`.
pub fn notify_needed(before: &[JobExecution], after: &[JobExecution]) -> bool {
    pending_set(before) != pending_set(after)
}

/// Whether going from `before` to `after` calls for `notify-next`.
pub fn notify_next_needed(before: &[JobExecution], after: &[JobExecution]) -> bool {
    let id = |e: &JobExecution| (e.job_id.clone(), e.execution_number);
    next_pending(before).map(id) != next_pending(after).map(id)
}

/// The `notify` payload: `{"timestamp", "jobs": {"IN_PROGRESS": [...],
/// "QUEUED": [...]}}`, at most ten summaries in all, IN_PROGRESS first and
/// then by queue time. A status with none is left out, so a thing with
/// nothing pending gets `"jobs": {}`.
pub fn notify_payload(executions: &[JobExecution], now: UnixTime) -> Value {
    let mut jobs = Map::new();
    let mut room = NOTIFY_MAX_EXECUTIONS;
    for status in [JobExecutionStatus::InProgress, JobExecutionStatus::Queued] {
        let listed: Vec<Value> = pending_with(executions, status)
            .into_iter()
            .take(room)
            .map(summary_json)
            .collect();
        room -= listed.len();
        if !listed.is_empty() {
            jobs.insert(status.as_str().into(), Value::Array(listed));
        }
    }
    envelope(
        Map::from_iter([("jobs".to_string(), Value::Object(jobs))]),
        None,
        now,
    )
}

/// The `notify-next` payload: the next execution with its document, or
/// only a timestamp when nothing is pending any more.
pub fn notify_next_payload(next: Option<(&JobExecution, &Value)>, now: UnixTime) -> Value {
    match next {
        Some((execution, document)) => json!({
            "timestamp": now,
            "execution": execution_json(execution, Some(document), now),
        }),
        None => json!({ "timestamp": now }),
    }
}

/// Both notifications for a change from `before` to `after`, each only when
/// due. `document_of` gives a job's document by job id.
pub fn notifications(
    before: &[JobExecution],
    after: &[JobExecution],
    now: UnixTime,
    document_of: &dyn Fn(&str) -> Option<Value>,
) -> Notifications {
    let notify = notify_needed(before, after).then(|| notify_payload(after, now));
    let notify_next = notify_next_needed(before, after).then(|| {
        let next = next_pending(after);
        let document = next
            .and_then(|e| document_of(&e.job_id))
            .unwrap_or_else(|| json!({}));
        notify_next_payload(next.map(|e| (e, &document)), now)
    });
    Notifications {
        notify,
        notify_next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{
        ExecutionChange, JobConfig, StartNextRequest, StatusDetails, UpdateRequest, apply_update,
        start_next,
    };
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn doc(job: &str) -> Option<Value> {
        Some(json!({ "for": job }))
    }

    fn q(job: &str, at: UnixTime) -> JobExecution {
        JobExecution::queued(job, "t", at)
    }

    fn replace(list: &[JobExecution], e: JobExecution) -> Vec<JobExecution> {
        list.iter()
            .map(|x| {
                if x.job_id == e.job_id {
                    e.clone()
                } else {
                    x.clone()
                }
            })
            .collect()
    }

    fn updated(
        e: &JobExecution,
        status: JobExecutionStatus,
        details: Option<StatusDetails>,
    ) -> JobExecution {
        let mut request = UpdateRequest::to(status);
        request.status_details = details;
        let ExecutionChange { execution, .. } =
            apply_update(e, &request, 50, &JobConfig::default()).unwrap();
        execution
    }

    #[test]
    fn queuing_the_first_job_sends_both() {
        let after = [q("a", 10)];
        let n = notifications(&[], &after, 11, &doc);
        assert_eq!(
            n.notify.unwrap(),
            json!({"timestamp": 11, "jobs": {"QUEUED": [
                {"jobId": "a", "queuedAt": 10, "lastUpdatedAt": 10, "versionNumber": 1, "executionNumber": 1}]}})
        );
        let next = n.notify_next.unwrap();
        assert_eq!(next["execution"]["jobId"], "a");
        assert_eq!(next["execution"]["jobDocument"], json!({"for": "a"}));
        assert_eq!(next["timestamp"], 11);
    }

    #[test]
    fn queuing_behind_the_next_sends_only_notify() {
        let before = [q("a", 10)];
        let after = [q("a", 10), q("b", 20)];
        let n = notifications(&before, &after, 21, &doc);
        assert!(n.notify.is_some());
        assert!(n.notify_next.is_none());
    }

    #[test]
    fn starting_the_next_changes_the_list_but_not_the_next() {
        let before = [q("a", 10), q("b", 20)];
        let started = start_next(&before, &StartNextRequest::default(), 30, &BTreeMap::new())
            .unwrap()
            .unwrap()
            .execution;
        let n = ExecutionChange::from(started).notifications(&before, 30, &doc);
        let notify = n.notify.unwrap();
        assert_eq!(notify["jobs"]["IN_PROGRESS"][0]["jobId"], "a");
        assert_eq!(notify["jobs"]["QUEUED"][0]["jobId"], "b");
        assert!(n.notify_next.is_none());
    }

    #[test]
    fn a_later_job_going_in_progress_becomes_next() {
        let before = [q("a", 10), q("b", 20)];
        let after = replace(
            &before,
            updated(&before[1], JobExecutionStatus::InProgress, None),
        );
        let n = notifications(&before, &after, 60, &doc);
        assert!(n.notify.is_some());
        assert_eq!(n.notify_next.unwrap()["execution"]["jobId"], "b");
    }

    #[test]
    fn new_details_on_a_running_job_send_nothing() {
        let before = [
            updated(&q("a", 10), JobExecutionStatus::InProgress, None),
            q("b", 20),
        ];
        let details = StatusDetails::from([("progress".into(), "50%".into())]);
        let after = replace(
            &before,
            updated(&before[0], JobExecutionStatus::InProgress, Some(details)),
        );
        assert_eq!(
            notifications(&before, &after, 70, &doc),
            Notifications::default()
        );
    }

    #[test]
    fn finishing_the_next_sends_both_with_the_following_one() {
        let before = [
            updated(&q("a", 10), JobExecutionStatus::InProgress, None),
            q("b", 20),
        ];
        let after = replace(
            &before,
            updated(&before[0], JobExecutionStatus::Succeeded, None),
        );
        let n = notifications(&before, &after, 80, &doc);
        let notify = n.notify.unwrap();
        assert!(notify["jobs"].get("IN_PROGRESS").is_none());
        assert_eq!(n.notify_next.unwrap()["execution"]["jobId"], "b");
    }

    #[test]
    fn finishing_the_last_sends_an_empty_list_and_no_execution() {
        let before = [q("a", 10)];
        let after = replace(
            &before,
            updated(&before[0], JobExecutionStatus::Rejected, None),
        );
        let n = notifications(&before, &after, 90, &doc);
        assert_eq!(n.notify.unwrap(), json!({"timestamp": 90, "jobs": {}}));
        assert_eq!(n.notify_next.unwrap(), json!({"timestamp": 90}));
    }

    #[test]
    fn a_retry_of_the_next_job_is_a_new_next() {
        let before = [q("a", 10)];
        let mut retry = q("a", 95);
        retry.execution_number = 2;
        let mut failed = before[0].clone();
        failed.status = JobExecutionStatus::Failed;
        let after = [failed, retry];
        let n = notifications(&before, &after, 95, &doc);
        assert!(n.notify.is_some());
        assert_eq!(n.notify_next.unwrap()["execution"]["executionNumber"], 2);
    }

    #[test]
    fn notify_lists_at_most_ten_in_progress_first() {
        let mut list: Vec<JobExecution> =
            (0..12).map(|i| q(&format!("j{i:02}"), 100 - i)).collect();
        list[11] = updated(&list[11], JobExecutionStatus::InProgress, None);
        let v = notify_payload(&list, 5);
        let in_progress = v["jobs"]["IN_PROGRESS"].as_array().unwrap();
        let queued = v["jobs"]["QUEUED"].as_array().unwrap();
        assert_eq!(in_progress.len() + queued.len(), NOTIFY_MAX_EXECUTIONS);
        assert_eq!(in_progress[0]["jobId"], "j11");
        // Oldest first: j10 was queued at 90, j09 at 91.
        assert_eq!(queued[0]["jobId"], "j10");
        assert_eq!(queued[1]["jobId"], "j09");
    }

    proptest! {
        #[test]
        fn notify_next_is_sent_exactly_when_the_next_changes(
            statuses_before in proptest::collection::vec(0usize..8, 0..6),
            statuses_after in proptest::collection::vec(0usize..8, 0..6),
        ) {
            let build = |s: &[usize]| -> Vec<JobExecution> {
                s.iter().enumerate().map(|(i, &k)| {
                    let mut e = q(&format!("j{i}"), i as i64);
                    e.status = JobExecutionStatus::ALL[k];
                    e
                }).collect()
            };
            let before = build(&statuses_before);
            let after = build(&statuses_after);
            let n = notifications(&before, &after, 1, &doc);
            let next_id = |l: &[JobExecution]| next_pending(l).map(|e| e.job_id.clone());
            prop_assert_eq!(n.notify_next.is_some(), next_id(&before) != next_id(&after));
            let pending = |l: &[JobExecution]| -> Vec<(String, JobExecutionStatus)> {
                l.iter().filter(|e| e.status.is_pending()).map(|e| (e.job_id.clone(), e.status)).collect()
            };
            prop_assert_eq!(n.notify.is_some(), pending(&before) != pending(&after));
            if let Some(next) = n.notify_next {
                prop_assert_eq!(next.get("execution").map(|e| e["jobId"].clone()), next_id(&after).map(Value::from));
            }
        }
    }
}
