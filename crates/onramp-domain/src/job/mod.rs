//! Jobs, as AWS IoT Jobs defines them for devices: execution states and
//! their transitions, the four device requests and their replies, the
//! `notify` and `notify-next` notifications, timers, retries, rollout and
//! abort rules.
//!
//! Everything here is a pure function of plain data and an explicit `now` in
//! epoch seconds. The service loads executions, calls these rules and stores
//! what they return; nothing here knows about topics, storage or clocks.
//!
//! Where AWS leaves a behaviour open, Onramp's choice is stated beside the
//! code that makes it:
//!
//! - **QUEUED straight to a final status.** A device may report SUCCEEDED or
//!   FAILED for an execution it never marked IN_PROGRESS, so that firmware
//!   which skips the start step still completes its jobs.
//! - **An empty `statusDetails` object** is accepted and clears the details.
//!   Keys and values follow AWS's API reference (keys 1–128 of
//!   `[A-Za-z0-9:_-]`, values 1–1024 characters without control characters),
//!   at most ten pairs.
//! - **Nothing pending.** start-next, `$next` and `notify-next` then carry
//!   no `execution` member at all, as AWS documents for start-next.
//! - **Execution numbers on retry.** A retry is a new execution of the same
//!   job with the next execution number, queued afresh.
//! - **Truthful success** (Onramp's own): a job may require that a SUCCEEDED
//!   execution be confirmed by the firmware version the device reports
//!   afterwards; see [`confirm`] and [`confirmation_expired`].

mod config;
mod control;
mod execution;
mod notify;
mod reply;
mod request;
mod rollout;

pub use config::*;
pub use control::*;
pub use execution::*;
pub use notify::*;
pub use reply::*;
pub use request::*;
pub use rollout::*;

use crate::UnixTime;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The `statusDetails` of an execution: string keys to string values.
pub type StatusDetails = BTreeMap<String, String>;

/// The `$next` pseudo job id of DescribeJobExecution.
pub const NEXT_JOB_ID: &str = "$next";

/// The longest job id AWS accepts.
pub const JOB_ID_MAX: usize = 64;

/// The status of one job execution, spelt as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobExecutionStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
    Canceled,
}

impl JobExecutionStatus {
    pub const ALL: [JobExecutionStatus; 8] = [
        JobExecutionStatus::Queued,
        JobExecutionStatus::InProgress,
        JobExecutionStatus::Succeeded,
        JobExecutionStatus::Failed,
        JobExecutionStatus::TimedOut,
        JobExecutionStatus::Rejected,
        JobExecutionStatus::Removed,
        JobExecutionStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobExecutionStatus::Queued => "QUEUED",
            JobExecutionStatus::InProgress => "IN_PROGRESS",
            JobExecutionStatus::Succeeded => "SUCCEEDED",
            JobExecutionStatus::Failed => "FAILED",
            JobExecutionStatus::TimedOut => "TIMED_OUT",
            JobExecutionStatus::Rejected => "REJECTED",
            JobExecutionStatus::Removed => "REMOVED",
            JobExecutionStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<JobExecutionStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// A terminal execution never changes status again.
    pub fn is_terminal(self) -> bool {
        !self.is_pending()
    }

    /// QUEUED and IN_PROGRESS executions are the thing's pending ones.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            JobExecutionStatus::Queued | JobExecutionStatus::InProgress
        )
    }
}

impl std::fmt::Display for JobExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many retries an execution's job has already spent on this thing, by
/// the failure that caused them. A retry carries the counts forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryAttempts {
    pub failed: u32,
    pub timed_out: u32,
}

impl RetryAttempts {
    pub fn total(&self) -> u32 {
        self.failed.saturating_add(self.timed_out)
    }
}

/// Why Onramp, rather than the device, ended an execution as FAILED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// SUCCEEDED was reported, but the device never reported the job's
    /// target firmware version before the confirmation deadline.
    NotConfirmed,
}

/// Where a SUCCEEDED execution of a job that requires confirmation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "state"
)]
pub enum Confirmation {
    /// Waiting for the device to report `firmware_version` before `deadline`.
    Pending {
        deadline: UnixTime,
        firmware_version: String,
    },
    /// The device reported the target version at `at`.
    Confirmed { at: UnixTime, version: String },
}

/// One execution of a job on one thing, as Onramp stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobExecution {
    pub job_id: String,
    pub thing_name: String,
    pub status: JobExecutionStatus,
    #[serde(default)]
    pub status_details: StatusDetails,
    pub queued_at: UnixTime,
    #[serde(default)]
    pub started_at: Option<UnixTime>,
    pub last_updated_at: UnixTime,
    /// `versionNumber` on the wire: starts at 1, one more on every change.
    pub version: u64,
    /// Starts at 1; a retry is the next number.
    pub execution_number: u64,
    /// When the step timer set by the device expires.
    #[serde(default)]
    pub step_deadline: Option<UnixTime>,
    /// When the job's in-progress timer expires; fixed once started.
    #[serde(default)]
    pub in_progress_deadline: Option<UnixTime>,
    #[serde(default)]
    pub retry_attempts: RetryAttempts,
    #[serde(default)]
    pub confirmation: Option<Confirmation>,
    #[serde(default)]
    pub failure_reason: Option<FailureReason>,
}

impl JobExecution {
    /// A freshly queued first execution of `job_id` on `thing_name`.
    pub fn queued(job_id: &str, thing_name: &str, now: UnixTime) -> JobExecution {
        JobExecution {
            job_id: job_id.to_string(),
            thing_name: thing_name.to_string(),
            status: JobExecutionStatus::Queued,
            status_details: StatusDetails::new(),
            queued_at: now,
            started_at: None,
            last_updated_at: now,
            version: 1,
            execution_number: 1,
            step_deadline: None,
            in_progress_deadline: None,
            retry_attempts: RetryAttempts::default(),
            confirmation: None,
            failure_reason: None,
        }
    }

    /// The earlier of the two running timers, if any.
    pub fn deadline(&self) -> Option<UnixTime> {
        match (self.step_deadline, self.in_progress_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `approximateSecondsBeforeTimedOut`: never negative.
    pub fn seconds_before_timed_out(&self, now: UnixTime) -> Option<i64> {
        self.deadline().map(|d| d.saturating_sub(now).max(0))
    }

    /// The `executionState` object of replies.
    pub fn state(&self) -> JobExecutionState {
        JobExecutionState {
            status: self.status,
            status_details: self.status_details.clone(),
            version_number: self.version,
        }
    }

    /// The ordering key of pending executions: IN_PROGRESS before QUEUED,
    /// then queue time; job id and execution number only break ties so that
    /// the order never depends on how the caller listed them.
    fn pending_order(&self) -> (u8, UnixTime, &str, u64) {
        let rank = if self.status == JobExecutionStatus::InProgress {
            0
        } else {
            1
        };
        (rank, self.queued_at, &self.job_id, self.execution_number)
    }
}

/// `JobExecutionState`, as carried by update replies and rejections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobExecutionState {
    pub status: JobExecutionStatus,
    pub status_details: StatusDetails,
    pub version_number: u64,
}

/// The error codes of Jobs `/rejected` replies, spelt as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobErrorCode {
    InvalidTopic,
    InvalidJson,
    InvalidRequest,
    InvalidStateTransition,
    ResourceNotFound,
    VersionMismatch,
    InternalError,
    RequestThrottled,
    TerminalStateReached,
}

impl JobErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::InvalidTopic => "InvalidTopic",
            JobErrorCode::InvalidJson => "InvalidJson",
            JobErrorCode::InvalidRequest => "InvalidRequest",
            JobErrorCode::InvalidStateTransition => "InvalidStateTransition",
            JobErrorCode::ResourceNotFound => "ResourceNotFound",
            JobErrorCode::VersionMismatch => "VersionMismatch",
            JobErrorCode::InternalError => "InternalError",
            JobErrorCode::RequestThrottled => "RequestThrottled",
            JobErrorCode::TerminalStateReached => "TerminalStateReached",
        }
    }
}

impl std::fmt::Display for JobErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused Jobs request: what goes on the `/rejected` topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobRejection {
    pub code: JobErrorCode,
    pub message: String,
    /// Only for InvalidStateTransition and VersionMismatch: the execution as
    /// it is, so the device can resynchronise.
    pub execution_state: Option<JobExecutionState>,
}

impl JobRejection {
    fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        JobRejection {
            code,
            message: message.into(),
            execution_state: None,
        }
    }

    pub fn invalid_topic(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::InvalidTopic, message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::InvalidJson, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::InvalidRequest, message)
    }

    pub fn invalid_state_transition(current: &JobExecution, to: JobExecutionStatus) -> Self {
        JobRejection {
            code: JobErrorCode::InvalidStateTransition,
            message: format!(
                "job execution {} of {} cannot go from {} to {to}",
                current.execution_number, current.job_id, current.status
            ),
            execution_state: Some(current.state()),
        }
    }

    pub fn resource_not_found(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::ResourceNotFound, message)
    }

    pub fn version_mismatch(current: &JobExecution, expected: u64) -> Self {
        JobRejection {
            code: JobErrorCode::VersionMismatch,
            message: format!(
                "expected version {expected}, the job execution is at version {}",
                current.version
            ),
            execution_state: Some(current.state()),
        }
    }

    pub fn internal_error(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::InternalError, message)
    }

    pub fn request_throttled(message: impl Into<String>) -> Self {
        Self::new(JobErrorCode::RequestThrottled, message)
    }

    pub fn terminal_state_reached(current: &JobExecution) -> Self {
        Self::new(
            JobErrorCode::TerminalStateReached,
            format!(
                "job execution {} of {} is {}",
                current.execution_number, current.job_id, current.status
            ),
        )
    }

    /// The `/rejected` payload: `code`, `message`, `timestamp`, and
    /// `clientToken` and `executionState` when there are any.
    pub fn to_reject_json(&self, client_token: Option<&str>, now: UnixTime) -> Value {
        let mut out = Map::new();
        out.insert("code".into(), json!(self.code.as_str()));
        out.insert("message".into(), json!(self.message));
        out.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            out.insert("clientToken".into(), json!(token));
        }
        if let Some(state) = &self.execution_state {
            out.insert("executionState".into(), state_json(state));
        }
        Value::Object(out)
    }
}

fn state_json(state: &JobExecutionState) -> Value {
    json!({
        "status": state.status.as_str(),
        "statusDetails": state.status_details,
        "versionNumber": state.version_number,
    })
}

/// Orders pending executions as start-next, `$next` and `notify` see them.
pub fn sort_pending(executions: &mut [JobExecution]) {
    executions.sort_by(|a, b| a.pending_order().cmp(&b.pending_order()));
}

/// The execution start-next and `$next` return: the first IN_PROGRESS one
/// by queue time, else the first QUEUED one. Terminal executions are skipped.
pub fn next_pending(executions: &[JobExecution]) -> Option<&JobExecution> {
    executions
        .iter()
        .filter(|e| e.status.is_pending())
        .min_by(|a, b| a.pending_order().cmp(&b.pending_order()))
}

/// A job id as AWS accepts it: 1–64 of `[A-Za-z0-9_-]`.
pub fn valid_job_id(job_id: &str) -> bool {
    !job_id.is_empty()
        && job_id.len() <= JOB_ID_MAX
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelt_as_on_the_wire() {
        for status in JobExecutionStatus::ALL {
            let text = serde_json::to_value(status).unwrap();
            assert_eq!(text, json!(status.as_str()));
            assert_eq!(JobExecutionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(
            serde_json::to_value(JobExecutionStatus::TimedOut).unwrap(),
            json!("TIMED_OUT")
        );
        assert_eq!(JobExecutionStatus::parse("in_progress"), None);
    }

    #[test]
    fn only_queued_and_in_progress_are_pending() {
        let pending: Vec<_> = JobExecutionStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(
            pending,
            [JobExecutionStatus::Queued, JobExecutionStatus::InProgress]
        );
    }

    #[test]
    fn next_prefers_in_progress_then_the_oldest_queued() {
        let mut a = JobExecution::queued("a", "t", 10);
        let b = JobExecution::queued("b", "t", 5);
        assert_eq!(next_pending(&[a.clone(), b.clone()]).unwrap().job_id, "b");
        a.status = JobExecutionStatus::InProgress;
        assert_eq!(next_pending(&[b.clone(), a.clone()]).unwrap().job_id, "a");
        let mut done = JobExecution::queued("c", "t", 1);
        done.status = JobExecutionStatus::Succeeded;
        assert_eq!(next_pending(&[done.clone(), b]).unwrap().job_id, "b");
        assert!(next_pending(&[done]).is_none());
    }

    #[test]
    fn rejections_carry_code_message_timestamp_token_and_state() {
        let exec = JobExecution::queued("job-1", "thing", 1);
        let reply = JobRejection::version_mismatch(&exec, 7).to_reject_json(Some("tok"), 99);
        assert_eq!(reply["code"], "VersionMismatch");
        assert_eq!(reply["timestamp"], 99);
        assert_eq!(reply["clientToken"], "tok");
        assert_eq!(
            reply["executionState"],
            json!({"status": "QUEUED", "statusDetails": {}, "versionNumber": 1})
        );
        let plain = JobRejection::invalid_json("no").to_reject_json(None, 5);
        assert_eq!(
            plain.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["code", "message", "timestamp"]
        );
    }

    #[test]
    fn every_error_code_is_spelt_as_on_the_wire() {
        let exec = JobExecution::queued("j", "t", 0);
        let cases = [
            (JobRejection::invalid_topic("x"), "InvalidTopic", false),
            (JobRejection::invalid_json("x"), "InvalidJson", false),
            (JobRejection::invalid_request("x"), "InvalidRequest", false),
            (
                JobRejection::invalid_state_transition(&exec, JobExecutionStatus::Canceled),
                "InvalidStateTransition",
                true,
            ),
            (
                JobRejection::resource_not_found("x"),
                "ResourceNotFound",
                false,
            ),
            (
                JobRejection::version_mismatch(&exec, 3),
                "VersionMismatch",
                true,
            ),
            (JobRejection::internal_error("x"), "InternalError", false),
            (
                JobRejection::request_throttled("x"),
                "RequestThrottled",
                false,
            ),
            (
                JobRejection::terminal_state_reached(&exec),
                "TerminalStateReached",
                false,
            ),
        ];
        for (rejection, code, has_state) in cases {
            let reply = rejection.to_reject_json(None, 1);
            assert_eq!(reply["code"], code);
            assert_eq!(
                serde_json::to_value(rejection.code).unwrap(),
                json!(code),
                "serde name of {code}"
            );
            assert_eq!(reply.get("executionState").is_some(), has_state, "{code}");
        }
    }

    #[test]
    fn a_stored_execution_reads_back_as_it_was_written() {
        let mut e = JobExecution::queued("job-1", "thing-1", 10);
        e.status = JobExecutionStatus::Succeeded;
        e.confirmation = Some(Confirmation::Pending {
            deadline: 70,
            firmware_version: "2.5.0".into(),
        });
        e.retry_attempts.timed_out = 2;
        let stored = serde_json::to_value(&e).unwrap();
        assert_eq!(
            stored["confirmation"],
            json!({"state": "pending", "deadline": 70, "firmwareVersion": "2.5.0"})
        );
        assert_eq!(stored["retryAttempts"], json!({"failed": 0, "timedOut": 2}));
        assert_eq!(serde_json::from_value::<JobExecution>(stored).unwrap(), e);
    }

    #[test]
    fn job_ids_follow_the_aws_pattern() {
        assert!(valid_job_id("firmware-2_5"));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id("$next"));
        assert!(!valid_job_id(&"a".repeat(65)));
        assert!(valid_job_id(&"a".repeat(64)));
    }
}
