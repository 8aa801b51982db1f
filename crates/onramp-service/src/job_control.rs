//! An operator's control of whole jobs: pause and resume a rollout, start
//! and end scheduled jobs (`schedulingConfig`), and delete jobs. The rules
//! are `onramp_domain::job`'s (`check_pause`, `schedule_action`,
//! `check_delete`); every change is written with its audit entry.
//!
//! A pause is a flag on the job that every release checks in the same
//! statement that saves the rollout's pace, so no node releases after the
//! pause commits. The pace itself (the releases of the last 60 seconds) is
//! kept while paused, so a resumed rollout never exceeds its
//! `maximumPerMinute` in any minute, the minute around the pause included.

use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::job::{self, EndBehavior, JobConfig, JobExecution, JobStatus, ScheduleAction};
use onramp_domain::{AuditEntry, Outcome, Page, Permission, UnixTime};

/// A caller for what the scheduler does on its own.
pub(crate) fn system_caller(tenant: &str, actor: &str) -> Caller {
    Caller {
        tenant: tenant.to_string(),
        role: onramp_domain::Role::Admin,
        actor: actor.into(),
        source: "local".into(),
    }
}

fn audit_entry(caller: &Caller, action: &str, job_id: &str, detail: String) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: caller.tenant.clone(),
        actor: caller.actor.clone(),
        action: action.into(),
        target: format!("job:{job_id}"),
        source: caller.source.clone(),
        outcome: Outcome::Success,
        detail,
        at: now(),
    }
}

fn status_of(job_id: &str, status: &str) -> Result<JobStatus> {
    JobStatus::parse(status)
        .ok_or_else(|| ServiceError::Internal(format!("job {job_id} has status {status:?}")))
}

impl Onramp {
    /// Pauses a job's rollout: no execution is released (paced or not, and
    /// no new member of a continuous job is queued) until it is resumed.
    /// Executions already released run on. Refused for a COMPLETED or
    /// CANCELED job, and for one already paused.
    pub async fn pause_job(&self, caller: &Caller, job_id: &str) -> Result<crate::JobDescription> {
        self.set_job_paused(caller, job_id, true).await
    }

    /// Resumes a paused rollout. The scheduler's next release (within a
    /// second) continues at the configured pace.
    pub async fn resume_job(&self, caller: &Caller, job_id: &str) -> Result<crate::JobDescription> {
        self.set_job_paused(caller, job_id, false).await
    }

    async fn set_job_paused(
        &self,
        caller: &Caller,
        job_id: &str,
        paused: bool,
    ) -> Result<crate::JobDescription> {
        caller.require(Permission::ManageDevices)?;
        let tenant = caller.tenant.as_str();
        let store = &self.inner.store;
        let record = store
            .get_job(tenant, job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("job {job_id}")))?;
        let control = store.job_control(tenant, job_id).await?.unwrap_or_default();
        let status = status_of(job_id, &record.status)?;
        let checked = if paused {
            job::check_pause(job_id, status, control.paused)
        } else {
            job::check_resume(job_id, status, control.paused)
        };
        checked.map_err(|r| ServiceError::Conflict(r.0))?;
        let (action, detail) = if paused {
            ("job.pause", format!("rollout paused while {status}"))
        } else {
            ("job.resume", format!("rollout resumed while {status}"))
        };
        let audit = audit_entry(caller, action, job_id, detail);
        if !store
            .set_rollout_paused(tenant, job_id, paused, audit.at, &audit)
            .await?
        {
            return Err(ServiceError::Conflict(format!(
                "job {job_id} changed meanwhile; look at it again"
            )));
        }
        metrics::counter!("onramp_job_controls_total", "action" => action).increment(1);
        self.describe_job(caller, job_id).await
    }

    /// Deletes a job as AWS's DeleteJob: a COMPLETED or CANCELED job, or
    /// with `force` one in any status, which is first canceled with force
    /// (its in-progress executions too). Its executions, targets and
    /// rollout state go with it; things that had one of its executions
    /// pending are told their next job. The job id may be used again at once.
    pub async fn delete_job(&self, caller: &Caller, job_id: &str, force: bool) -> Result<()> {
        caller.require(Permission::ManageDevices)?;
        let tenant = caller.tenant.as_str();
        let store = &self.inner.store;
        let record = store
            .get_job(tenant, job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("job {job_id}")))?;
        let status = status_of(job_id, &record.status)?;
        job::check_delete(job_id, status, force).map_err(|r| ServiceError::Conflict(r.0))?;
        if !status.is_terminal() {
            self.stop_job(caller, job_id, true, "job.cancel", "force, before deletion")
                .await?;
        }
        // Things with an execution of the job still pending (a canceled
        // job's in-progress executions): their next job changes.
        let mut changes: Vec<(String, Vec<JobExecution>)> = Vec::new();
        let mut total = 0usize;
        let mut after: Option<String> = None;
        loop {
            let page = store
                .job_executions(
                    tenant,
                    job_id,
                    &Page::new(after.clone(), Some(Page::MAX_LIMIT)),
                )
                .await?;
            total += page.len();
            for e in page.iter().filter(|e| e.status.is_pending()) {
                let before = store.thing_executions(tenant, &e.thing_name, None).await?;
                changes.push((e.thing_name.clone(), before));
            }
            if page.len() < Page::MAX_LIMIT as usize {
                break;
            }
            after = page.last().map(onramp_store::execution_cursor_of);
        }
        let detail = format!(
            "{total} executions deleted ({} pending){}",
            changes.len(),
            if force { ", force" } else { "" }
        );
        let audit = audit_entry(caller, "job.delete", job_id, detail);
        if !store.delete_job(tenant, job_id, &audit).await? {
            return Err(ServiceError::Conflict(format!(
                "job {job_id} changed while being deleted; retry"
            )));
        }
        self.forget_job_rules(tenant, job_id);
        metrics::counter!("onramp_job_controls_total", "action" => "job.delete").increment(1);
        self.notify_things(tenant, changes).await;
        Ok(())
    }

    /// Checks a new job's `schedulingConfig` against AWS's limits at `at`;
    /// true when the job is to start later (SCHEDULED).
    pub(crate) fn check_job_schedule(&self, config: &JobConfig, at: UnixTime) -> Result<bool> {
        match &config.scheduling_config {
            None => Ok(false),
            Some(scheduling) => {
                let schedule = scheduling
                    .schedule_at(at)
                    .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
                Ok(schedule.start.is_some())
            }
        }
    }

    /// Drops this node's cached document and configuration of a job.
    pub(crate) fn forget_job_rules(&self, tenant: &str, job_id: &str) {
        self.inner
            .job_rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(tenant.to_string(), job_id.to_string()));
    }

    /// Starts scheduled jobs whose `startTime` has come (releasing what
    /// their rollout allows at once) and applies the `endBehavior` of jobs
    /// whose `endTime` has come. Returns how many jobs changed.
    pub async fn run_job_schedules(&self, at: UnixTime) -> Result<usize> {
        let store = &self.inner.store;
        let mut changed = 0;
        for j in store.scheduled_jobs().await? {
            let schedule = serde_json::from_str::<JobConfig>(&j.config)
                .ok()
                .and_then(|c| c.scheduling_config)
                .and_then(|s| s.schedule().ok());
            let (Some(schedule), Some(status)) = (schedule, JobStatus::parse(&j.status)) else {
                tracing::warn!(job = %j.job_id, "a scheduled job's configuration does not parse");
                continue;
            };
            let Some(action) = job::schedule_action(status, &schedule, j.rollout_ended, at) else {
                continue;
            };
            let caller = system_caller(&j.tenant, "onramp:schedule");
            let done = match action {
                ScheduleAction::Start => {
                    let audit = audit_entry(
                        &caller,
                        "job.start",
                        &j.job_id,
                        "the scheduled startTime came".into(),
                    );
                    let started = store
                        .start_scheduled_job(&j.tenant, &j.job_id, at, &audit)
                        .await?;
                    if started {
                        self.release_job(&j.tenant, &j.job_id, at).await?;
                    }
                    started
                }
                ScheduleAction::End(EndBehavior::StopRollout) => {
                    let audit = audit_entry(
                        &caller,
                        "job.schedule_end",
                        &j.job_id,
                        "the scheduled endTime came: STOP_ROLLOUT".into(),
                    );
                    let ended = store
                        .end_job_rollout(&j.tenant, &j.job_id, at, &audit)
                        .await?;
                    if ended {
                        self.note_job_progress(&j.tenant, &j.job_id).await;
                    }
                    ended
                }
                ScheduleAction::End(behavior) => {
                    let force = behavior == EndBehavior::ForceCancel;
                    let detail = format!(
                        "the scheduled endTime came: {}",
                        if force { "FORCE_CANCEL" } else { "CANCEL" }
                    );
                    self.stop_job(&caller, &j.job_id, force, "job.schedule_end", &detail)
                        .await?
                }
            };
            if done {
                changed += 1;
                let name = match action {
                    ScheduleAction::Start => "start",
                    ScheduleAction::End(_) => "end",
                };
                metrics::counter!("onramp_job_schedule_events_total", "event" => name).increment(1);
                tracing::info!(tenant = %j.tenant, job = %j.job_id, event = name, "job schedule");
            }
        }
        Ok(changed)
    }
}
