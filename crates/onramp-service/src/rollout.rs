//! Paced rollouts and automatic aborts. A job with a
//! `jobExecutionsRolloutConfig` keeps its targets waiting; the scheduler's
//! `job-rollouts` task releases them at the configured rate (a sliding
//! 60-second window, rising exponentially when configured). After every
//! terminal outcome the job's `abortConfig` is checked; an abort cancels the
//! queued executions and drops the targets not yet released.

use crate::{Caller, Onramp, Result, now};
use onramp_domain::job::{self, ExecutionCounts, JobExecution, JobExecutionStatus, RolloutState};
use onramp_domain::{AuditEntry, Outcome, Page, UnixTime};
use serde::{Deserialize, Serialize};

/// The saved part of a rollout's state.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedRollout {
    #[serde(default)]
    recent_releases: Vec<(UnixTime, u32)>,
    #[serde(default)]
    released_total: u64,
}

fn counts_of(rows: &[(String, i64)]) -> ExecutionCounts {
    let mut c = ExecutionCounts::default();
    for (status, n) in rows {
        let n = u64::try_from(*n).unwrap_or(0);
        match JobExecutionStatus::parse(status) {
            Some(JobExecutionStatus::Succeeded) => c.succeeded += n,
            Some(JobExecutionStatus::Failed) => c.failed += n,
            Some(JobExecutionStatus::Rejected) => c.rejected += n,
            Some(JobExecutionStatus::TimedOut) => c.timed_out += n,
            _ => {}
        }
    }
    c
}

impl Onramp {
    /// Releases what each rollout allows now: a paced rollout at its pace,
    /// any other job (a scheduled job that started, a continuous job's new
    /// members, a resumed job) every waiting target. Paused jobs wait.
    /// Returns how many executions were queued.
    pub async fn release_rollouts(&self, at: UnixTime) -> Result<usize> {
        let mut queued = 0;
        for (tenant, job_id) in self.inner.store.jobs_awaiting_release().await? {
            queued += self.release_job(&tenant, &job_id, at).await?;
        }
        Ok(queued)
    }

    /// Releases what one job's rollout allows at `at`, and notifies the
    /// things. Nothing when the job is paused, ended or not in progress.
    pub(crate) async fn release_job(
        &self,
        tenant: &str,
        job_id: &str,
        at: UnixTime,
    ) -> Result<usize> {
        let store = &self.inner.store;
        let Some(rules) = self.job_rules(tenant, job_id).await? else {
            return Ok(0);
        };
        let raw = store.rollout_state(tenant, job_id).await?;
        let Some(config) = rules.config.job_executions_rollout_config.clone() else {
            // Not paced: every waiting target goes out now; the state is
            // kept as it is, so the release still refuses a paused job.
            let keep = raw.clone().unwrap_or_default();
            let Some(released) = store
                .release_job_targets(tenant, job_id, u32::MAX, at, raw.as_deref(), &keep)
                .await?
            else {
                return Ok(0);
            };
            return Ok(self.count_and_notify(tenant, &released).await);
        };
        let saved: SavedRollout = raw
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let counts = counts_of(&store.job_execution_counts(tenant, job_id).await?);
        let mut state = RolloutState {
            recent_releases: saved.recent_releases,
            released_total: saved.released_total,
            notified: saved.released_total,
            succeeded: counts.succeeded,
        };
        let window = self.settings().rollout_window_secs;
        let allowance = job::released_allowance_within(&config, &state, at, window);
        if allowance == 0 {
            return Ok(0);
        }
        // The state is saved as if the whole allowance went out; the
        // count is corrected below when fewer targets were waiting.
        let mut planned = state.clone();
        planned.record_release_within(at, allowance, window);
        let text = serde_json::to_string(&SavedRollout {
            recent_releases: planned.recent_releases.clone(),
            released_total: planned.released_total,
        })
        .map_err(|e| crate::ServiceError::Internal(e.to_string()))?;
        let Some(released) = store
            .release_job_targets(tenant, job_id, allowance, at, raw.as_deref(), &text)
            .await?
        else {
            // Another release got there first (its pace stands), or the
            // job was paused or stopped meanwhile.
            return Ok(0);
        };
        let n = u32::try_from(released.len()).unwrap_or(u32::MAX);
        if n < allowance {
            state.record_release_within(at, n, window);
            let exact = serde_json::to_string(&SavedRollout {
                recent_releases: state.recent_releases.clone(),
                released_total: state.released_total,
            })
            .map_err(|e| crate::ServiceError::Internal(e.to_string()))?;
            store
                .release_job_targets(tenant, job_id, 0, at, Some(&text), &exact)
                .await?;
        }
        if !released.is_empty() {
            metrics::counter!("onramp_job_rollout_released_total").increment(released.len() as u64);
        }
        Ok(self.count_and_notify(tenant, &released).await)
    }

    async fn count_and_notify(&self, tenant: &str, released: &[JobExecution]) -> usize {
        if released.is_empty() {
            return 0;
        }
        metrics::counter!("onramp_job_execution_updates_total", "status" => "QUEUED")
            .increment(released.len() as u64);
        self.notify_released(tenant, released).await;
        released.len()
    }

    async fn notify_released(&self, tenant: &str, released: &[JobExecution]) {
        let things: Vec<String> = released.iter().map(|e| e.thing_name.clone()).collect();
        let Ok(mut pending) = self
            .inner
            .store
            .pending_executions_of(tenant, &things)
            .await
        else {
            return;
        };
        let changes = released
            .iter()
            .map(|e| {
                let before: Vec<JobExecution> = pending
                    .remove(&e.thing_name)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|x| !(x.job_id == e.job_id && x.execution_number == e.execution_number))
                    .collect();
                (e.thing_name.clone(), before)
            })
            .collect();
        self.notify_things(tenant, changes).await;
    }

    /// Aborts the job if its abort criteria are met: the job becomes
    /// CANCELED, queued executions are canceled and waiting targets dropped.
    pub(crate) async fn check_abort(&self, tenant: &str, job_id: &str) {
        let Ok(Some(rules)) = self.job_rules(tenant, job_id).await else {
            return;
        };
        let Some(abort) = rules.config.abort_config.as_ref() else {
            return;
        };
        let store = &self.inner.store;
        let Ok(rows) = store.job_execution_counts(tenant, job_id).await else {
            return;
        };
        let Some(reason) = job::should_abort(abort, &counts_of(&rows)) else {
            return;
        };
        let detail = format!(
            "abort criterion {} met: {} of {} executed things failed ({:?}), threshold {}%",
            reason.criterion + 1,
            reason.failures,
            reason.executed,
            reason.failure_type,
            reason.threshold_percentage
        );
        let caller = crate::job_control::system_caller(tenant, "onramp:abort");
        match self
            .stop_job(&caller, job_id, false, "job.abort", &detail)
            .await
        {
            Ok(true) => {
                metrics::counter!("onramp_job_aborts_total").increment(1);
                tracing::warn!(tenant, job = job_id, %detail, "job aborted");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(job = job_id, error = %e, "job abort failed"),
        }
    }

    /// Stops a scheduled or in-progress job: CANCELED with an audit entry, waiting
    /// targets dropped, queued (and with `force` in-progress) executions
    /// canceled and their things notified. False if it was not in progress.
    pub(crate) async fn stop_job(
        &self,
        caller: &Caller,
        job_id: &str,
        force: bool,
        action: &str,
        detail: &str,
    ) -> Result<bool> {
        let tenant = caller.tenant.as_str();
        let store = &self.inner.store;
        let Some(record) = store.get_job(tenant, job_id).await? else {
            return Err(crate::ServiceError::NotFound(format!("job {job_id}")));
        };
        if record.status != "IN_PROGRESS" && record.status != "SCHEDULED" {
            return Ok(false);
        }
        let at = now();
        let audit = AuditEntry {
            id: 0,
            tenant: tenant.to_string(),
            actor: caller.actor.clone(),
            action: action.into(),
            target: format!("job:{job_id}"),
            source: caller.source.clone(),
            outcome: Outcome::Success,
            detail: detail.to_string(),
            at,
        };
        // The job stops first, so no release or start happens after this.
        store
            .set_job_status(tenant, job_id, "CANCELED", at, Some(&audit))
            .await?;
        store.drop_waiting_targets(tenant, job_id).await?;
        let mut notes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .job_executions(
                    tenant,
                    job_id,
                    &Page::new(after.clone(), Some(Page::MAX_LIMIT)),
                )
                .await?;
            for e in page.iter().filter(|e| e.status.is_pending()) {
                let before = store.thing_executions(tenant, &e.thing_name, None).await?;
                let mut current = e.clone();
                for _ in 0..16 {
                    let Ok(canceled) = job::cancel(&current, force, at) else {
                        break;
                    };
                    if store
                        .save_execution(tenant, &canceled, Some(current.version), None)
                        .await?
                    {
                        metrics::counter!("onramp_job_execution_updates_total", "status" => "CANCELED").increment(1);
                        notes.push((e.thing_name.clone(), before.clone()));
                        break;
                    }
                    match store
                        .thing_executions(tenant, &e.thing_name, Some(job_id))
                        .await?
                        .into_iter()
                        .find(|x| x.execution_number == e.execution_number)
                    {
                        Some(fresh) if fresh.status.is_pending() => current = fresh,
                        _ => break,
                    }
                }
            }
            if page.len() < Page::MAX_LIMIT as usize {
                break;
            }
            after = page.last().map(onramp_store::execution_cursor_of);
        }
        self.notify_things(tenant, notes).await;
        Ok(true)
    }
}

/// The firmware version a device reports: its classic shadow's reported
/// `firmware_version`, `firmwareVersion` or `firmware` (the first that is a
/// string), else the registry's.
fn reported_firmware(
    reported: Option<&serde_json::Value>,
    registry: Option<&str>,
) -> Option<String> {
    reported
        .and_then(|r| {
            ["firmware_version", "firmwareVersion", "firmware"]
                .iter()
                .find_map(|k| r.get(*k).and_then(serde_json::Value::as_str))
        })
        .or(registry)
        .map(str::to_string)
}

impl Onramp {
    /// Settles successes that await confirmation: confirmed when the device
    /// reports the job's target firmware version, FAILED with reason
    /// `NotConfirmed` once the deadline passes without it. Returns how many
    /// executions changed.
    pub async fn confirm_job_executions(&self, at: UnixTime) -> Result<usize> {
        let store = &self.inner.store;
        let mut changed = 0;
        for (tenant, e) in store.awaiting_confirmation(1000).await? {
            let rules = self.job_rules(&tenant, &e.job_id).await?;
            let config = rules.map(|r| r.config.clone()).unwrap_or_default();
            let device = store.get_device(&tenant, &e.thing_name).await?;
            let shadow = store.get_shadow(&tenant, &e.thing_name, "").await?;
            let reported = shadow
                .and_then(|s| s.document)
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                .and_then(|d| d.pointer("/state/reported").cloned());
            let version = reported_firmware(
                reported.as_ref(),
                device.as_ref().and_then(|d| d.firmware_version.as_deref()),
            );
            let next = match version.as_deref().map(|v| job::confirm(&e, v, at)) {
                Some(job::ConfirmOutcome::Confirmed(next)) => Some(job::ExecutionChange {
                    execution: *next,
                    retry: None,
                }),
                _ => job::confirmation_expired(&e, at, &config),
            };
            let Some(change) = next else { continue };
            if store
                .save_execution(
                    &tenant,
                    &change.execution,
                    Some(e.version),
                    change.retry.as_ref(),
                )
                .await?
            {
                changed += 1;
                let outcome = if change.execution.status == JobExecutionStatus::Succeeded {
                    "confirmed"
                } else {
                    "not_confirmed"
                };
                metrics::counter!("onramp_job_confirmations_total", "outcome" => outcome)
                    .increment(1);
                if change.retry.is_some() {
                    let before = store.thing_executions(&tenant, &e.thing_name, None).await?;
                    let before: Vec<JobExecution> = before
                        .into_iter()
                        .filter(|x| Some(x) != change.retry.as_ref())
                        .collect();
                    self.notify_things(&tenant, vec![(e.thing_name.clone(), before)])
                        .await;
                }
                self.note_job_progress(&tenant, &e.job_id).await;
            }
        }
        Ok(changed)
    }
}

impl Onramp {
    /// Adds to each continuous job the things that joined its groups or
    /// started matching its query since: queued at once, or waiting for the
    /// rollout when the job is paced or paused. Returns how many things
    /// were added.
    pub async fn extend_continuous_jobs(&self, at: UnixTime) -> Result<usize> {
        let store = &self.inner.store;
        let mut added = 0;
        for (tenant, job_id) in store.continuous_jobs().await? {
            let Some(record) = store.get_job(&tenant, &job_id).await? else {
                continue;
            };
            let Ok(targets) = serde_json::from_str::<crate::JobTargets>(&record.targets) else {
                tracing::warn!(job = %job_id, "a continuous job's targets do not parse");
                continue;
            };
            let known: std::collections::BTreeSet<String> = store
                .job_target_names(&tenant, &job_id)
                .await?
                .into_iter()
                .collect();
            // Named things are fixed at creation; groups and queries move.
            let moving = crate::JobTargets {
                things: Vec::new(),
                ..targets
            };
            let fresh: Vec<String> = self
                .resolve_targets(&tenant, &moving)
                .await?
                .into_iter()
                .filter(|t| !known.contains(t))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let paced = self
                .job_rules(&tenant, &job_id)
                .await?
                .is_some_and(|r| r.config.job_executions_rollout_config.is_some());
            added += fresh.len();
            // New members wait as targets; an unpaced job releases them at
            // once, unless its rollout is paused (the release checks).
            store.add_job_targets(&tenant, &job_id, &[], &fresh).await?;
            if !paced {
                self.release_job(&tenant, &job_id, at).await?;
            }
        }
        Ok(added)
    }
}
