//! The execution state machine: device updates, start-next, describe, the
//! service's own transitions (timeout, cancel, remove, abort), retries and
//! truthful-success confirmation.
//!
//! Every function returns the new execution and leaves its input alone; a
//! refusal therefore changes nothing. Every accepted change raises the
//! version by one.

use super::{
    Confirmation, ConfirmationConfig, DescribeRequest, FailureReason, JobConfig, JobExecution,
    JobExecutionStatus, JobRejection, MAX_RETRIES, NEXT_JOB_ID, Notifications, RetryFailureType,
    StartNextRequest, StepTimeout, UpdateRequest, next_pending, notifications,
};
use crate::UnixTime;
use crate::version::FirmwareVersion;
use std::collections::BTreeMap;

use JobExecutionStatus::{
    Canceled, Failed, InProgress, Queued, Rejected, Removed, Succeeded, TimedOut,
};

/// An execution after an accepted change, and the retry it caused, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionChange {
    pub execution: JobExecution,
    /// The next execution of the same job, queued because this one ended as
    /// FAILED or TIMED_OUT and the job's retry configuration allows another.
    pub retry: Option<JobExecution>,
}

impl ExecutionChange {
    /// A thing's executions after this change: the changed execution in
    /// place of its previous version, and the retry, if any, added.
    pub fn apply_to(&self, executions: &[JobExecution]) -> Vec<JobExecution> {
        let same = |e: &JobExecution| {
            e.job_id == self.execution.job_id
                && e.execution_number == self.execution.execution_number
        };
        let mut out: Vec<JobExecution> = executions
            .iter()
            .map(|e| {
                if same(e) {
                    self.execution.clone()
                } else {
                    e.clone()
                }
            })
            .collect();
        if !executions.iter().any(same) {
            out.push(self.execution.clone());
        }
        out.extend(self.retry.iter().cloned());
        out
    }

    /// The `notify` and `notify-next` payloads this change calls for, given
    /// the thing's executions before it.
    pub fn notifications(
        &self,
        before: &[JobExecution],
        now: UnixTime,
        document_of: &dyn Fn(&str) -> Option<serde_json::Value>,
    ) -> Notifications {
        notifications(before, &self.apply_to(before), now, document_of)
    }
}

/// A change without a retry, such as a start.
impl From<JobExecution> for ExecutionChange {
    fn from(execution: JobExecution) -> Self {
        ExecutionChange {
            execution,
            retry: None,
        }
    }
}

/// The execution of `job_id` a request is about: the one numbered
/// `execution_number` when given, else the job's latest on this thing.
pub fn find_execution<'a>(
    executions: &'a [JobExecution],
    job_id: &str,
    execution_number: Option<u64>,
) -> Option<&'a JobExecution> {
    let mut of_job = executions.iter().filter(|e| e.job_id == job_id);
    match execution_number {
        Some(n) => of_job.find(|e| e.execution_number == n),
        None => of_job.max_by_key(|e| e.execution_number),
    }
}

/// UpdateJobExecution against a thing's executions: finds the execution
/// (ResourceNotFound when the thing has none of that job) and applies
/// [`apply_update`] to it.
pub fn update_in(
    executions: &[JobExecution],
    job_id: &str,
    request: &UpdateRequest,
    now: UnixTime,
    config: &JobConfig,
) -> Result<ExecutionChange, JobRejection> {
    let execution =
        find_execution(executions, job_id, request.execution_number).ok_or_else(|| {
            JobRejection::resource_not_found(format!("no execution of job {job_id} for this thing"))
        })?;
    apply_update(execution, request, now, config)
}

/// DescribeJobExecution against a thing's executions. For `$next` the
/// answer is the next pending execution, or `None` when nothing is pending;
/// for a job id, the execution [`describe`] allows.
pub fn describe_in<'a>(
    executions: &'a [JobExecution],
    job_id: &str,
    request: &DescribeRequest,
) -> Result<Option<&'a JobExecution>, JobRejection> {
    if job_id == NEXT_JOB_ID {
        return Ok(next_pending(executions));
    }
    describe(
        find_execution(executions, job_id, request.execution_number),
        request,
    )
    .map(Some)
}

/// A copy of `execution` one version on, last updated `now`.
fn bumped(execution: &JobExecution, now: UnixTime) -> Option<JobExecution> {
    let mut next = execution.clone();
    next.version = execution.version.checked_add(1)?;
    next.last_updated_at = now;
    Some(next)
}

fn bumped_or_refused(
    execution: &JobExecution,
    now: UnixTime,
) -> Result<JobExecution, JobRejection> {
    bumped(execution, now)
        .ok_or_else(|| JobRejection::internal_error("the job execution's version is exhausted"))
}

fn minutes(m: u32) -> i64 {
    i64::from(m) * 60
}

/// QUEUED to IN_PROGRESS: the start time and the job's in-progress timer,
/// which never moves afterwards.
fn mark_started(next: &mut JobExecution, now: UnixTime, config: &JobConfig) {
    next.status = InProgress;
    next.started_at = Some(now);
    next.in_progress_deadline = config
        .in_progress_timeout_seconds()
        .map(|s| now.saturating_add(s));
}

/// A new step timer replaces the old one but never outlives the in-progress
/// timer; `Discard` leaves no step timer; `None` keeps the current one.
fn set_step_timer(next: &mut JobExecution, step: Option<StepTimeout>, now: UnixTime) {
    match step {
        None => {}
        Some(StepTimeout::Discard) => next.step_deadline = None,
        Some(StepTimeout::Minutes(m)) => {
            let deadline = now.saturating_add(minutes(m));
            next.step_deadline = Some(match next.in_progress_deadline {
                Some(cap) => deadline.min(cap),
                None => deadline,
            });
        }
    }
}

/// A terminal execution keeps no timers.
fn finish(next: &mut JobExecution, status: JobExecutionStatus) {
    next.status = status;
    next.step_deadline = None;
    next.in_progress_deadline = None;
}

/// Whether an IN_PROGRESS execution's timer has run out at `now`.
pub fn is_overdue(execution: &JobExecution, now: UnixTime) -> bool {
    execution.status == InProgress && execution.deadline().is_some_and(|d| now >= d)
}

/// UpdateJobExecution.
///
/// Checks, in order: the execution number (ResourceNotFound), the expected
/// version (VersionMismatch), then the transition (InvalidStateTransition).
/// The device may move a pending execution to IN_PROGRESS, SUCCEEDED,
/// FAILED or REJECTED; every other target, and anything from a terminal
/// status, is refused. The caller applies [`expire`] first; an execution
/// whose timer has run out is refused here all the same, so that a late
/// report cannot overtake its timeout.
pub fn apply_update(
    execution: &JobExecution,
    request: &UpdateRequest,
    now: UnixTime,
    config: &JobConfig,
) -> Result<ExecutionChange, JobRejection> {
    if request
        .execution_number
        .is_some_and(|n| n != execution.execution_number)
    {
        return Err(JobRejection::resource_not_found(format!(
            "job {} has no execution number {} for this thing",
            execution.job_id,
            request.execution_number.unwrap_or_default()
        )));
    }
    if let Some(expected) = request.expected_version
        && expected != execution.version
    {
        return Err(JobRejection::version_mismatch(execution, expected));
    }
    let to = request.status;
    let allowed = execution.status.is_pending()
        && matches!(to, InProgress | Succeeded | Failed | Rejected)
        && !is_overdue(execution, now);
    if !allowed {
        return Err(JobRejection::invalid_state_transition(execution, to));
    }

    let mut next = bumped_or_refused(execution, now)?;
    if let Some(details) = &request.status_details {
        next.status_details = details.clone();
    }
    if to == InProgress {
        if execution.status == Queued {
            mark_started(&mut next, now, config);
        }
        set_step_timer(&mut next, request.step_timeout, now);
        return Ok(ExecutionChange {
            execution: next,
            retry: None,
        });
    }
    finish(&mut next, to);
    if to == Succeeded
        && let Some(ConfirmationConfig {
            firmware_version,
            within_minutes,
        }) = &config.success_confirmation
    {
        next.confirmation = Some(Confirmation::Pending {
            deadline: now.saturating_add(minutes(*within_minutes)),
            firmware_version: firmware_version.clone(),
        });
    }
    let retry = if to == Failed {
        retry_of(&next, RetryFailureType::Failed, now, config)
    } else {
        None
    };
    Ok(ExecutionChange {
        execution: next,
        retry,
    })
}

/// What start-next did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub execution: JobExecution,
    /// False when the next execution was already IN_PROGRESS: it is returned
    /// as it is, details and timers untouched, and nothing needs storing.
    pub changed: bool,
}

/// StartNextPendingJobExecution over a thing's executions. `configs` holds
/// the configuration of each job by id; a job missing there has none.
/// `Ok(None)` when nothing is pending.
pub fn start_next(
    executions: &[JobExecution],
    request: &StartNextRequest,
    now: UnixTime,
    configs: &BTreeMap<String, JobConfig>,
) -> Result<Option<Started>, JobRejection> {
    let Some(next) = next_pending(executions) else {
        return Ok(None);
    };
    if next.status == InProgress {
        return Ok(Some(Started {
            execution: next.clone(),
            changed: false,
        }));
    }
    let default = JobConfig::default();
    let config = configs.get(&next.job_id).unwrap_or(&default);
    start(next, request, now, config).map(|execution| {
        Some(Started {
            execution,
            changed: true,
        })
    })
}

/// Starts one QUEUED execution with the request's details and step timer.
pub fn start(
    execution: &JobExecution,
    request: &StartNextRequest,
    now: UnixTime,
    config: &JobConfig,
) -> Result<JobExecution, JobRejection> {
    if execution.status != Queued {
        return Err(JobRejection::invalid_state_transition(
            execution, InProgress,
        ));
    }
    let mut next = bumped_or_refused(execution, now)?;
    if let Some(details) = &request.status_details {
        next.status_details = details.clone();
    }
    mark_started(&mut next, now, config);
    set_step_timer(&mut next, request.step_timeout, now);
    Ok(next)
}

/// DescribeJobExecution of a named job: `execution` is the thing's latest
/// execution of that job, if it has one. A terminal execution is refused
/// with TerminalStateReached.
pub fn describe<'a>(
    execution: Option<&'a JobExecution>,
    request: &DescribeRequest,
) -> Result<&'a JobExecution, JobRejection> {
    let execution = execution
        .ok_or_else(|| JobRejection::resource_not_found("no such job execution for this thing"))?;
    if request
        .execution_number
        .is_some_and(|n| n != execution.execution_number)
    {
        return Err(JobRejection::resource_not_found(format!(
            "job {} has no such execution number for this thing",
            execution.job_id
        )));
    }
    if execution.status.is_terminal() {
        return Err(JobRejection::terminal_state_reached(execution));
    }
    Ok(execution)
}

/// A timer that ran out: IN_PROGRESS past its step or in-progress deadline
/// becomes TIMED_OUT, and the retry configuration may queue another
/// execution. `None` when there is nothing to expire at `now`.
pub fn expire(
    execution: &JobExecution,
    now: UnixTime,
    config: &JobConfig,
) -> Option<ExecutionChange> {
    if !is_overdue(execution, now) {
        return None;
    }
    let mut next = bumped(execution, now)?;
    finish(&mut next, TimedOut);
    let retry = retry_of(&next, RetryFailureType::TimedOut, now, config);
    Some(ExecutionChange {
        execution: next,
        retry,
    })
}

/// The next execution of a job that ended as `failure`, if the job's retry
/// criteria still allow one: counted per failure type, or together for ALL,
/// and never more than ten in all.
pub fn retry_of(
    finished: &JobExecution,
    failure: RetryFailureType,
    now: UnixTime,
    config: &JobConfig,
) -> Option<JobExecution> {
    let criteria = config.job_executions_retry_config.as_ref()?;
    let (kind, allowed) = criteria.retries_for(failure)?;
    let attempts = finished.retry_attempts;
    let used = match kind {
        RetryFailureType::Failed => attempts.failed,
        RetryFailureType::TimedOut => attempts.timed_out,
        RetryFailureType::All => attempts.total(),
    };
    if used >= allowed || attempts.total() >= MAX_RETRIES {
        return None;
    }
    let mut retry = JobExecution::queued(&finished.job_id, &finished.thing_name, now);
    retry.execution_number = finished.execution_number.checked_add(1)?;
    retry.retry_attempts = attempts;
    match failure {
        RetryFailureType::TimedOut => retry.retry_attempts.timed_out += 1,
        _ => retry.retry_attempts.failed += 1,
    }
    Some(retry)
}

/// CancelJob or CancelJobExecution: a QUEUED execution is canceled; an
/// IN_PROGRESS one only with `force`.
pub fn cancel(
    execution: &JobExecution,
    force: bool,
    now: UnixTime,
) -> Result<JobExecution, JobRejection> {
    let allowed = match execution.status {
        Queued => true,
        InProgress => force,
        _ => false,
    };
    if !allowed {
        return Err(JobRejection::invalid_state_transition(execution, Canceled));
    }
    let mut next = bumped_or_refused(execution, now)?;
    finish(&mut next, Canceled);
    Ok(next)
}

/// The thing left the job's target group: its QUEUED execution is removed.
pub fn remove(execution: &JobExecution, now: UnixTime) -> Result<JobExecution, JobRejection> {
    if execution.status != Queued {
        return Err(JobRejection::invalid_state_transition(execution, Removed));
    }
    let mut next = bumped_or_refused(execution, now)?;
    finish(&mut next, Removed);
    Ok(next)
}

/// An aborting job cancels its QUEUED executions and leaves every other one
/// to finish: `None` for those.
pub fn abort_execution(execution: &JobExecution, now: UnixTime) -> Option<JobExecution> {
    if execution.status != Queued {
        return None;
    }
    cancel(execution, false, now).ok()
}

/// What a firmware version report meant for an execution awaiting
/// confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// The device runs the target version: the success stands.
    Confirmed(Box<JobExecution>),
    /// Another version: the execution still waits.
    NotTarget,
    /// The deadline has passed; [`confirmation_expired`] decides.
    TooLate,
    /// The execution is not a SUCCEEDED one awaiting confirmation.
    NotAwaiting,
}

/// A firmware version the device reported, against an execution that may be
/// awaiting confirmation. Versions compare as versions: `2.5` confirms
/// `2.5.0`.
pub fn confirm(execution: &JobExecution, reported_version: &str, now: UnixTime) -> ConfirmOutcome {
    let Some(Confirmation::Pending {
        deadline,
        firmware_version,
    }) = &execution.confirmation
    else {
        return ConfirmOutcome::NotAwaiting;
    };
    if execution.status != Succeeded {
        return ConfirmOutcome::NotAwaiting;
    }
    if now >= *deadline {
        return ConfirmOutcome::TooLate;
    }
    if FirmwareVersion::parse(reported_version) != FirmwareVersion::parse(firmware_version) {
        return ConfirmOutcome::NotTarget;
    }
    match bumped(execution, now) {
        Some(mut next) => {
            next.confirmation = Some(Confirmation::Confirmed {
                at: now,
                version: reported_version.to_string(),
            });
            ConfirmOutcome::Confirmed(Box::new(next))
        }
        None => ConfirmOutcome::NotAwaiting,
    }
}

/// An unconfirmed SUCCEEDED execution whose confirmation deadline has
/// passed becomes FAILED with reason `NotConfirmed`, and may be retried as
/// any failure. `None` when there is nothing to expire at `now`.
pub fn confirmation_expired(
    execution: &JobExecution,
    now: UnixTime,
    config: &JobConfig,
) -> Option<ExecutionChange> {
    let Some(Confirmation::Pending { deadline, .. }) = &execution.confirmation else {
        return None;
    };
    if execution.status != Succeeded || now < *deadline {
        return None;
    }
    let mut next = bumped(execution, now)?;
    finish(&mut next, Failed);
    next.failure_reason = Some(FailureReason::NotConfirmed);
    let retry = retry_of(&next, RetryFailureType::Failed, now, config);
    Some(ExecutionChange {
        execution: next,
        retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobErrorCode, RetryConfig, RetryCriteria, StatusDetails, TimeoutConfig};
    use proptest::prelude::*;

    const T0: UnixTime = 1_700_000_000;

    fn queued() -> JobExecution {
        JobExecution::queued("job-1", "thing-1", T0)
    }

    fn with_status(status: JobExecutionStatus) -> JobExecution {
        let mut e = queued();
        e.status = status;
        e
    }

    fn no_config() -> JobConfig {
        JobConfig::default()
    }

    fn timeout_config(minutes: u32) -> JobConfig {
        JobConfig {
            timeout_config: Some(TimeoutConfig {
                in_progress_timeout_in_minutes: minutes,
            }),
            ..JobConfig::default()
        }
    }

    fn retry_config(criteria: &[(RetryFailureType, u32)]) -> RetryConfig {
        RetryConfig {
            criteria_list: criteria
                .iter()
                .map(|&(failure_type, number_of_retries)| RetryCriteria {
                    failure_type,
                    number_of_retries,
                })
                .collect(),
        }
    }

    fn update(
        e: &JobExecution,
        status: JobExecutionStatus,
        now: UnixTime,
        config: &JobConfig,
    ) -> Result<ExecutionChange, JobRejection> {
        apply_update(e, &UpdateRequest::to(status), now, config)
    }

    fn details(k: &str, v: &str) -> StatusDetails {
        StatusDetails::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn queued_to_in_progress_by_update_starts_the_timers() {
        let config = timeout_config(30);
        let mut request = UpdateRequest::to(InProgress);
        request.status_details = Some(details("step", "download"));
        request.step_timeout = Some(StepTimeout::Minutes(5));
        let out = apply_update(&queued(), &request, T0 + 10, &config).unwrap();
        let e = out.execution;
        assert_eq!(e.status, InProgress);
        assert_eq!(e.started_at, Some(T0 + 10));
        assert_eq!(e.last_updated_at, T0 + 10);
        assert_eq!(e.version, 2);
        assert_eq!(e.status_details, details("step", "download"));
        assert_eq!(e.in_progress_deadline, Some(T0 + 10 + 1800));
        assert_eq!(e.step_deadline, Some(T0 + 10 + 300));
        assert_eq!(e.seconds_before_timed_out(T0 + 20), Some(290));
        assert!(out.retry.is_none());
    }

    #[test]
    fn queued_to_in_progress_by_start_next_takes_the_request_details() {
        let request = StartNextRequest {
            status_details: Some(details("a", "b")),
            step_timeout: Some(StepTimeout::Minutes(2)),
            client_token: None,
        };
        let started = start_next(&[queued()], &request, T0 + 1, &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert!(started.changed);
        let e = started.execution;
        assert_eq!(
            (e.status, e.version, e.started_at),
            (InProgress, 2, Some(T0 + 1))
        );
        assert_eq!(e.status_details, details("a", "b"));
        assert_eq!(e.step_deadline, Some(T0 + 121));
        assert_eq!(e.in_progress_deadline, None);
    }

    #[test]
    fn start_next_uses_the_started_jobs_own_timeout() {
        let configs = BTreeMap::from([("job-1".to_string(), timeout_config(1))]);
        let started = start_next(&[queued()], &StartNextRequest::default(), T0, &configs)
            .unwrap()
            .unwrap();
        assert_eq!(started.execution.in_progress_deadline, Some(T0 + 60));
    }

    #[test]
    fn start_next_returns_an_in_progress_execution_unchanged() {
        let mut running = with_status(InProgress);
        running.status_details = details("keep", "me");
        let mut other = JobExecution::queued("job-0", "thing-1", T0 - 100);
        other.execution_number = 1;
        let request = StartNextRequest {
            status_details: Some(details("new", "x")),
            ..StartNextRequest::default()
        };
        let started = start_next(
            &[other, running.clone()],
            &request,
            T0 + 5,
            &BTreeMap::new(),
        )
        .unwrap()
        .unwrap();
        assert!(!started.changed);
        assert_eq!(started.execution, running);
    }

    #[test]
    fn start_next_with_nothing_pending_starts_nothing() {
        let done = with_status(Succeeded);
        assert_eq!(
            start_next(&[done], &StartNextRequest::default(), T0, &BTreeMap::new()).unwrap(),
            None
        );
        assert!(
            start(
                &with_status(InProgress),
                &StartNextRequest::default(),
                T0,
                &no_config()
            )
            .is_err()
        );
    }

    #[test]
    fn queued_may_be_rejected_or_finished_directly() {
        for to in [Rejected, Succeeded, Failed] {
            let e = update(&queued(), to, T0 + 1, &no_config())
                .unwrap()
                .execution;
            assert_eq!(e.status, to);
            assert_eq!(e.version, 2);
            assert_eq!(e.started_at, None);
        }
    }

    #[test]
    fn in_progress_repeats_with_new_details_and_a_new_step_timer() {
        let config = timeout_config(60);
        let e = update(&queued(), InProgress, T0, &config)
            .unwrap()
            .execution;
        let mut request = UpdateRequest::to(InProgress);
        request.step_timeout = Some(StepTimeout::Minutes(10));
        let e2 = apply_update(&e, &request, T0 + 60, &config)
            .unwrap()
            .execution;
        assert_eq!(e2.step_deadline, Some(T0 + 660));
        assert_eq!(e2.version, 3);
        assert_eq!(
            e2.status_details, e.status_details,
            "omitted details are unchanged"
        );
        assert_eq!(e2.started_at, Some(T0), "the start time does not move");
        assert_eq!(
            e2.in_progress_deadline,
            Some(T0 + 3600),
            "immutable once started"
        );

        request.step_timeout = Some(StepTimeout::Minutes(1));
        request.status_details = Some(details("p", "50"));
        let e3 = apply_update(&e2, &request, T0 + 120, &config)
            .unwrap()
            .execution;
        assert_eq!(
            e3.step_deadline,
            Some(T0 + 180),
            "a new timer replaces a later one"
        );
        assert_eq!(e3.status_details, details("p", "50"));

        request.step_timeout = Some(StepTimeout::Discard);
        let e4 = apply_update(&e3, &request, T0 + 130, &config)
            .unwrap()
            .execution;
        assert_eq!(e4.step_deadline, None);
        assert_eq!(e4.deadline(), Some(T0 + 3600));

        request.step_timeout = None;
        let e5 = apply_update(&e3, &request, T0 + 130, &config)
            .unwrap()
            .execution;
        assert_eq!(
            e5.step_deadline,
            Some(T0 + 180),
            "no stepTimeoutInMinutes keeps the timer"
        );
    }

    #[test]
    fn a_step_timer_never_outlives_the_in_progress_timer() {
        let config = timeout_config(10);
        let mut request = UpdateRequest::to(InProgress);
        request.step_timeout = Some(StepTimeout::Minutes(60));
        let e = apply_update(&queued(), &request, T0, &config)
            .unwrap()
            .execution;
        assert_eq!(e.step_deadline, Some(T0 + 600));
    }

    #[test]
    fn in_progress_ends_as_the_device_reports() {
        let running = update(&queued(), InProgress, T0, &timeout_config(5))
            .unwrap()
            .execution;
        for to in [Succeeded, Failed, Rejected] {
            let e = update(&running, to, T0 + 1, &no_config())
                .unwrap()
                .execution;
            assert_eq!(e.status, to);
            assert_eq!(e.version, running.version + 1);
            assert_eq!(e.deadline(), None, "a finished execution keeps no timers");
        }
    }

    #[test]
    fn the_device_cannot_set_service_statuses() {
        for from in [Queued, InProgress] {
            for to in [Queued, TimedOut, Removed, Canceled] {
                let e = with_status(from);
                let err = update(&e, to, T0, &no_config()).unwrap_err();
                assert_eq!(
                    err.code,
                    JobErrorCode::InvalidStateTransition,
                    "{from} -> {to}"
                );
                assert_eq!(err.execution_state, Some(e.state()));
            }
        }
    }

    #[test]
    fn nothing_leaves_a_terminal_status() {
        for from in JobExecutionStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
        {
            let e = with_status(from);
            for to in JobExecutionStatus::ALL {
                let err = update(&e, to, T0, &no_config()).unwrap_err();
                assert_eq!(
                    err.code,
                    JobErrorCode::InvalidStateTransition,
                    "{from} -> {to}"
                );
                assert_eq!(err.execution_state.unwrap().status, from);
            }
            assert!(start(&e, &StartNextRequest::default(), T0, &no_config()).is_err());
            assert!(cancel(&e, true, T0).is_err());
            assert!(remove(&e, T0).is_err());
            assert!(expire(&e, T0 + 1_000_000, &no_config()).is_none());
        }
    }

    #[test]
    fn a_wrong_expected_version_is_a_version_mismatch_with_the_current_state() {
        let e = queued();
        let mut request = UpdateRequest::to(InProgress);
        request.expected_version = Some(5);
        let err = apply_update(&e, &request, T0, &no_config()).unwrap_err();
        assert_eq!(err.code, JobErrorCode::VersionMismatch);
        assert_eq!(err.execution_state, Some(e.state()));
        request.expected_version = Some(1);
        assert!(apply_update(&e, &request, T0, &no_config()).is_ok());
    }

    #[test]
    fn another_execution_number_is_not_found() {
        let mut request = UpdateRequest::to(InProgress);
        request.execution_number = Some(2);
        let err = apply_update(&queued(), &request, T0, &no_config()).unwrap_err();
        assert_eq!(err.code, JobErrorCode::ResourceNotFound);
        assert_eq!(err.execution_state, None);
        request.execution_number = Some(1);
        assert!(apply_update(&queued(), &request, T0, &no_config()).is_ok());
    }

    #[test]
    fn a_version_at_its_limit_is_an_internal_error_not_a_wrap() {
        let mut e = queued();
        e.version = u64::MAX;
        let err = update(&e, InProgress, T0, &no_config()).unwrap_err();
        assert_eq!(err.code, JobErrorCode::InternalError);
    }

    #[test]
    fn describe_refuses_missing_other_numbered_and_terminal_executions() {
        let request = DescribeRequest {
            execution_number: None,
            include_job_document: true,
            client_token: None,
        };
        assert_eq!(
            describe(None, &request).unwrap_err().code,
            JobErrorCode::ResourceNotFound
        );
        let e = queued();
        assert_eq!(describe(Some(&e), &request).unwrap(), &e);
        let numbered = DescribeRequest {
            execution_number: Some(3),
            ..request.clone()
        };
        assert_eq!(
            describe(Some(&e), &numbered).unwrap_err().code,
            JobErrorCode::ResourceNotFound
        );
        let done = with_status(Succeeded);
        assert_eq!(
            describe(Some(&done), &request).unwrap_err().code,
            JobErrorCode::TerminalStateReached
        );
    }

    #[test]
    fn the_in_progress_timer_times_the_execution_out() {
        let config = timeout_config(10);
        let e = update(&queued(), InProgress, T0, &config)
            .unwrap()
            .execution;
        assert!(expire(&e, T0 + 599, &config).is_none());
        let out = expire(&e, T0 + 600, &config).unwrap();
        assert_eq!(out.execution.status, TimedOut);
        assert_eq!(out.execution.version, e.version + 1);
        assert_eq!(out.execution.last_updated_at, T0 + 600);
        assert!(out.retry.is_none(), "no retry configuration");
    }

    #[test]
    fn the_step_timer_times_the_execution_out() {
        let mut request = UpdateRequest::to(InProgress);
        request.step_timeout = Some(StepTimeout::Minutes(1));
        let e = apply_update(&queued(), &request, T0, &no_config())
            .unwrap()
            .execution;
        assert!(expire(&e, T0 + 59, &no_config()).is_none());
        assert_eq!(
            expire(&e, T0 + 60, &no_config()).unwrap().execution.status,
            TimedOut
        );
    }

    #[test]
    fn a_late_update_cannot_overtake_its_timeout() {
        let config = timeout_config(1);
        let e = update(&queued(), InProgress, T0, &config)
            .unwrap()
            .execution;
        let err = update(&e, Succeeded, T0 + 60, &config).unwrap_err();
        assert_eq!(err.code, JobErrorCode::InvalidStateTransition);
        assert!(update(&e, Succeeded, T0 + 59, &config).is_ok());
    }

    #[test]
    fn queued_executions_never_time_out() {
        let config = timeout_config(1);
        assert!(expire(&queued(), T0 + 1_000_000, &config).is_none());
    }

    #[test]
    fn cancel_takes_queued_and_forced_in_progress_executions() {
        let e = cancel(&queued(), false, T0 + 1).unwrap();
        assert_eq!((e.status, e.version), (Canceled, 2));
        let running = with_status(InProgress);
        let err = cancel(&running, false, T0).unwrap_err();
        assert_eq!(err.code, JobErrorCode::InvalidStateTransition);
        assert_eq!(cancel(&running, true, T0).unwrap().status, Canceled);
    }

    #[test]
    fn removal_takes_only_queued_executions() {
        assert_eq!(remove(&queued(), T0).unwrap().status, Removed);
        assert!(remove(&with_status(InProgress), T0).is_err());
    }

    #[test]
    fn abort_cancels_only_queued_executions() {
        assert_eq!(abort_execution(&queued(), T0).unwrap().status, Canceled);
        for status in JobExecutionStatus::ALL.into_iter().filter(|s| *s != Queued) {
            assert!(
                abort_execution(&with_status(status), T0).is_none(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_failure_is_retried_as_the_next_execution_number() {
        let config = JobConfig {
            job_executions_retry_config: Some(retry_config(&[(RetryFailureType::Failed, 1)])),
            ..JobConfig::default()
        };
        let out = update(&with_status(InProgress), Failed, T0 + 9, &config).unwrap();
        let retry = out.retry.unwrap();
        assert_eq!(retry.status, Queued);
        assert_eq!(retry.execution_number, 2);
        assert_eq!(retry.version, 1);
        assert_eq!(retry.queued_at, T0 + 9);
        assert_eq!(retry.retry_attempts.failed, 1);
        let again = update(&retry, Failed, T0 + 10, &config).unwrap();
        assert!(again.retry.is_none(), "one retry only");
        for not_retried in [Rejected, Succeeded] {
            assert!(
                update(&with_status(InProgress), not_retried, T0, &config)
                    .unwrap()
                    .retry
                    .is_none()
            );
        }
    }

    #[test]
    fn a_timeout_is_retried_only_under_a_timed_out_or_all_criterion() {
        let failed_only = JobConfig {
            job_executions_retry_config: Some(retry_config(&[(RetryFailureType::Failed, 3)])),
            ..timeout_config(1)
        };
        let e = update(&queued(), InProgress, T0, &failed_only)
            .unwrap()
            .execution;
        assert!(expire(&e, T0 + 60, &failed_only).unwrap().retry.is_none());
        let all = JobConfig {
            job_executions_retry_config: Some(retry_config(&[(RetryFailureType::All, 2)])),
            ..timeout_config(1)
        };
        let retry = expire(&e, T0 + 60, &all).unwrap().retry.unwrap();
        assert_eq!(retry.retry_attempts.timed_out, 1);
        // ALL counts both kinds together.
        let mut spent = retry.clone();
        spent.retry_attempts.failed = 1;
        let started = update(&spent, InProgress, T0 + 100, &all)
            .unwrap()
            .execution;
        assert!(expire(&started, T0 + 160, &all).unwrap().retry.is_none());
    }

    #[test]
    fn never_more_than_ten_retries_in_all() {
        let config = JobConfig {
            job_executions_retry_config: Some(retry_config(&[
                (RetryFailureType::Failed, 10),
                (RetryFailureType::TimedOut, 10),
            ])),
            ..JobConfig::default()
        };
        let mut e = with_status(InProgress);
        e.retry_attempts.failed = 4;
        e.retry_attempts.timed_out = 5;
        let retry = update(&e, Failed, T0, &config).unwrap().retry.unwrap();
        assert_eq!(retry.retry_attempts.total(), 10);
        let started = update(&retry, InProgress, T0, &config).unwrap().execution;
        assert!(
            update(&started, Failed, T0, &config)
                .unwrap()
                .retry
                .is_none()
        );
    }

    #[test]
    fn requests_find_the_latest_or_the_named_execution() {
        let mut first = with_status(Failed);
        first.execution_number = 1;
        let mut second = queued();
        second.execution_number = 2;
        let other = JobExecution::queued("job-2", "thing-1", T0);
        let all = [first.clone(), second.clone(), other];
        assert_eq!(find_execution(&all, "job-1", None), Some(&second));
        assert_eq!(find_execution(&all, "job-1", Some(1)), Some(&first));
        assert_eq!(find_execution(&all, "job-1", Some(3)), None);
        assert_eq!(find_execution(&all, "job-9", None), None);

        let err = update_in(
            &all,
            "job-9",
            &UpdateRequest::to(InProgress),
            T0,
            &no_config(),
        )
        .unwrap_err();
        assert_eq!(err.code, JobErrorCode::ResourceNotFound);
        let change = update_in(
            &all,
            "job-1",
            &UpdateRequest::to(InProgress),
            T0,
            &no_config(),
        )
        .unwrap();
        assert_eq!(change.execution.execution_number, 2);
        let mut old = UpdateRequest::to(InProgress);
        old.execution_number = Some(1);
        assert_eq!(
            update_in(&all, "job-1", &old, T0, &no_config())
                .unwrap_err()
                .code,
            JobErrorCode::InvalidStateTransition
        );
    }

    #[test]
    fn describe_in_answers_next_and_named_jobs() {
        let request = DescribeRequest {
            execution_number: None,
            include_job_document: true,
            client_token: None,
        };
        let a = JobExecution::queued("a", "t", 5);
        let b = JobExecution::queued("b", "t", 1);
        let all = [a.clone(), b.clone()];
        assert_eq!(describe_in(&all, NEXT_JOB_ID, &request).unwrap(), Some(&b));
        assert_eq!(describe_in(&all, "a", &request).unwrap(), Some(&a));
        assert_eq!(describe_in(&[], NEXT_JOB_ID, &request).unwrap(), None);
        assert_eq!(
            describe_in(&all, "c", &request).unwrap_err().code,
            JobErrorCode::ResourceNotFound
        );
    }

    #[test]
    fn a_change_replaces_its_execution_and_adds_the_retry() {
        let config = JobConfig {
            job_executions_retry_config: Some(retry_config(&[(RetryFailureType::Failed, 1)])),
            ..JobConfig::default()
        };
        let other = JobExecution::queued("job-0", "thing-1", T0 + 50);
        let before = [other.clone(), queued()];
        let change = update(&before[1], Failed, T0 + 60, &config).unwrap();
        let after = change.apply_to(&before);
        assert_eq!(after.len(), 3);
        assert_eq!(after[0], other);
        assert_eq!(after[1].status, Failed);
        assert_eq!(after[2].execution_number, 2);
        let n = change.notifications(&before, T0 + 60, &|_| None);
        assert!(n.notify.is_some(), "the list changed");
        let next = n
            .notify_next
            .expect("job-0 is next now: queued before the retry");
        assert_eq!(next["execution"]["jobId"], "job-0");
    }

    fn confirming(minutes: u32) -> JobConfig {
        JobConfig {
            success_confirmation: Some(ConfirmationConfig {
                firmware_version: "2.5.0".into(),
                within_minutes: minutes,
            }),
            ..JobConfig::default()
        }
    }

    #[test]
    fn a_success_awaits_confirmation_by_the_target_version() {
        let config = confirming(10);
        let done = update(&with_status(InProgress), Succeeded, T0, &config)
            .unwrap()
            .execution;
        assert_eq!(
            done.confirmation,
            Some(Confirmation::Pending {
                deadline: T0 + 600,
                firmware_version: "2.5.0".into()
            })
        );
        assert_eq!(confirm(&done, "2.4.9", T0 + 5), ConfirmOutcome::NotTarget);
        let ConfirmOutcome::Confirmed(confirmed) = confirm(&done, "v2.5", T0 + 5) else {
            panic!("2.5 is 2.5.0");
        };
        assert_eq!(confirmed.status, Succeeded);
        assert_eq!(confirmed.version, done.version + 1);
        assert!(confirmation_expired(&confirmed, T0 + 10_000, &config).is_none());
        assert_eq!(
            confirm(&confirmed, "2.5.0", T0 + 6),
            ConfirmOutcome::NotAwaiting
        );
        assert_eq!(confirm(&done, "2.5.0", T0 + 600), ConfirmOutcome::TooLate);
    }

    #[test]
    fn an_unconfirmed_success_fails_as_not_confirmed() {
        let config = JobConfig {
            job_executions_retry_config: Some(retry_config(&[(RetryFailureType::Failed, 1)])),
            ..confirming(10)
        };
        let done = update(&with_status(InProgress), Succeeded, T0, &config)
            .unwrap()
            .execution;
        assert!(confirmation_expired(&done, T0 + 599, &config).is_none());
        let out = confirmation_expired(&done, T0 + 600, &config).unwrap();
        assert_eq!(out.execution.status, Failed);
        assert_eq!(
            out.execution.failure_reason,
            Some(FailureReason::NotConfirmed)
        );
        assert_eq!(out.execution.version, done.version + 1);
        assert_eq!(out.retry.unwrap().execution_number, 2);
        assert_eq!(
            confirm(&out.execution, "2.5.0", T0 + 601),
            ConfirmOutcome::NotAwaiting
        );
    }

    #[test]
    fn jobs_without_confirmation_succeed_at_once() {
        let done = update(&with_status(InProgress), Succeeded, T0, &no_config())
            .unwrap()
            .execution;
        assert_eq!(done.confirmation, None);
        assert_eq!(confirm(&done, "2.5.0", T0), ConfirmOutcome::NotAwaiting);
        assert!(confirmation_expired(&done, T0 + 1_000_000, &no_config()).is_none());
    }

    /// One step of a simulated device and clock.
    #[derive(Debug, Clone)]
    enum Step {
        Update {
            status: JobExecutionStatus,
            expected: Option<u64>,
            step: Option<StepTimeout>,
            wait: i64,
        },
        Start {
            step: Option<u32>,
            wait: i64,
        },
        Tick(i64),
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        let status = proptest::sample::select(JobExecutionStatus::ALL.to_vec());
        let step = prop_oneof![
            Just(None),
            Just(Some(StepTimeout::Discard)),
            (1u32..20).prop_map(|m| Some(StepTimeout::Minutes(m))),
        ];
        prop_oneof![
            (status, proptest::option::of(0u64..8), step, 0i64..400).prop_map(
                |(status, expected, step, wait)| Step::Update {
                    status,
                    expected,
                    step,
                    wait
                }
            ),
            (proptest::option::of(1u32..20), 0i64..400)
                .prop_map(|(step, wait)| Step::Start { step, wait }),
            (0i64..2000).prop_map(Step::Tick),
        ]
    }

    proptest! {
        #[test]
        fn terminal_stays_terminal_and_versions_only_grow(
            steps in proptest::collection::vec(step_strategy(), 1..40),
            timeout in proptest::option::of(1u32..30),
        ) {
            let config = JobConfig {
                timeout_config: timeout.map(|m| TimeoutConfig { in_progress_timeout_in_minutes: m }),
                ..JobConfig::default()
            };
            let mut e = queued();
            let mut now = T0;
            for step in steps {
                let before = e.clone();
                let result = match step {
                    Step::Update { status, expected, step, wait } => {
                        now += wait;
                        let request = UpdateRequest {
                            expected_version: expected,
                            step_timeout: step,
                            ..UpdateRequest::to(status)
                        };
                        match apply_update(&e, &request, now, &config) {
                            Ok(change) => Some(change.execution),
                            Err(err) => {
                                if err.code == JobErrorCode::VersionMismatch {
                                    prop_assert_eq!(err.execution_state, Some(e.state()));
                                    prop_assert_ne!(expected, Some(e.version));
                                }
                                None
                            }
                        }
                    }
                    Step::Start { step, wait } => {
                        now += wait;
                        let request = StartNextRequest {
                            step_timeout: step.map(StepTimeout::Minutes),
                            ..StartNextRequest::default()
                        };
                        start(&e, &request, now, &config).ok()
                    }
                    Step::Tick(wait) => {
                        now += wait;
                        expire(&e, now, &config).map(|c| c.execution)
                    }
                };
                if let Some(next) = result {
                    prop_assert!(!before.status.is_terminal(), "{} changed", before.status);
                    prop_assert_eq!(next.version, before.version + 1);
                    prop_assert!(next.last_updated_at >= before.last_updated_at);
                    if let (Some(step), Some(cap)) = (next.step_deadline, next.in_progress_deadline) {
                        prop_assert!(step <= cap);
                    }
                    e = next;
                }
            }
        }

        #[test]
        fn timeouts_retry_exactly_number_of_retries_times(
            retries in 0u32..=10,
            all in any::<bool>(),
            minutes in 1u32..60,
        ) {
            let kind = if all { RetryFailureType::All } else { RetryFailureType::TimedOut };
            let config = JobConfig {
                job_executions_retry_config: Some(retry_config(&[(kind, retries)])),
                ..timeout_config(minutes)
            };
            let mut now = T0;
            let mut current = Some(queued());
            let mut timed_out = 0u32;
            while let Some(e) = current.take() {
                let running = start(&e, &StartNextRequest::default(), now, &config).unwrap();
                now += i64::from(minutes) * 60;
                let change = expire(&running, now, &config).unwrap();
                prop_assert_eq!(change.execution.status, TimedOut);
                timed_out += 1;
                if let Some(retry) = &change.retry {
                    prop_assert_eq!(retry.execution_number, e.execution_number + 1);
                    prop_assert_eq!(retry.status, Queued);
                }
                current = change.retry;
                prop_assert!(timed_out <= 11);
            }
            prop_assert_eq!(timed_out, retries + 1);
        }

        #[test]
        fn a_version_mismatch_wins_over_every_other_check_and_reports_the_current_state(
            status in proptest::sample::select(JobExecutionStatus::ALL.to_vec()),
            target in proptest::sample::select(JobExecutionStatus::ALL.to_vec()),
            version in 1u64..1000,
            expected in 0u64..1000,
        ) {
            prop_assume!(expected != version);
            let mut e = with_status(status);
            e.version = version;
            let request = UpdateRequest {
                expected_version: Some(expected),
                ..UpdateRequest::to(target)
            };
            let err = apply_update(&e, &request, T0, &no_config()).unwrap_err();
            prop_assert_eq!(err.code, JobErrorCode::VersionMismatch);
            prop_assert_eq!(err.execution_state, Some(e.state()));
        }

        #[test]
        fn a_timer_fires_at_its_deadline_and_not_a_second_before(
            in_progress in proptest::option::of(1u32..=10_080),
            step_minutes in 1u32..=10_080,
            with_step in any::<bool>(),
            started in 0i64..1_000_000,
        ) {
            // At least one timer runs: the step timer whenever the job has no
            // in-progress timer.
            let step = (with_step || in_progress.is_none()).then_some(step_minutes);
            let config = JobConfig {
                timeout_config: in_progress.map(|m| TimeoutConfig { in_progress_timeout_in_minutes: m }),
                ..JobConfig::default()
            };
            let request = StartNextRequest {
                step_timeout: step.map(StepTimeout::Minutes),
                ..StartNextRequest::default()
            };
            let running = start(&queued(), &request, T0 + started, &config).unwrap();
            let expected = [in_progress, step]
                .into_iter()
                .flatten()
                .map(|m| T0 + started + i64::from(m) * 60)
                .min()
                .unwrap();
            prop_assert_eq!(running.deadline(), Some(expected));
            prop_assert!(expire(&running, expected - 1, &config).is_none());
            prop_assert_eq!(expire(&running, expected, &config).unwrap().execution.status, TimedOut);
        }

        #[test]
        fn the_next_execution_does_not_depend_on_listing_order(
            specs in proptest::collection::vec((0usize..8, 0i64..50), 0..8),
            rotate in 0usize..8,
        ) {
            let list: Vec<JobExecution> = specs
                .iter()
                .enumerate()
                .map(|(i, &(k, at))| {
                    let mut e = JobExecution::queued(&format!("j{i}"), "t", at);
                    e.status = JobExecutionStatus::ALL[k];
                    e
                })
                .collect();
            let mut rotated = list.clone();
            if !rotated.is_empty() {
                let by = rotate % rotated.len();
                rotated.rotate_left(by);
            }
            let next = next_pending(&list);
            prop_assert_eq!(next, next_pending(&rotated));
            if let Some(next) = next {
                let in_progress = list.iter().filter(|e| e.status == InProgress);
                let queued = list.iter().filter(|e| e.status == Queued);
                let first = |it: &mut dyn Iterator<Item = &JobExecution>| it.map(|e| e.queued_at).min();
                match first(&mut in_progress.clone()) {
                    Some(at) => prop_assert_eq!((next.status, next.queued_at), (InProgress, at)),
                    None => prop_assert_eq!(Some(next.queued_at), first(&mut queued.clone())),
                }
            }
        }
    }
}
