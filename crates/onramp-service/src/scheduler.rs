//! Onramp's periodic work, driven by `onramp serve` whether or not the MQTT
//! gateway runs. Node tasks run in every process (they act on its memory or
//! its connections); cluster tasks act on the shared database, and on a
//! database shared by several nodes exactly one node runs each of them per
//! period: it must win the task's row (`Store::claim_task`), and a node that
//! dies mid-run leaves a lease that expires so another node takes over.

use crate::{Onramp, now};
use onramp_store::TaskClaim;
use std::time::Duration;

/// How long a node may hold a cluster task before others assume it died.
const LEASE_SECS: i64 = 300;
/// The same for the rollout release, which runs every second: a node killed
/// while releasing must not stop every paced rollout for minutes. Running
/// it twice at once is harmless (a release is guarded by the saved pace),
/// so a short lease costs nothing.
const ROLLOUT_LEASE_SECS: i64 = 15;
/// After a failed claim or run, wait this long before asking again.
const RETRY_SECS: i64 = 5;

/// Cluster tasks: run by one node per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterTask {
    /// Pending certificates whose ownership token expired unused.
    PendingCertificates,
    /// Claim certificates close to expiry raise an audit event and a warning.
    ClaimExpiry,
    /// Shadow history beyond its window.
    ShadowCompaction,
    /// Identity-change rows every node has long read.
    IdentityChangePruning,
    /// Job executions whose in-progress or step timer ran out.
    JobTimeouts,
    /// Targets of paced rollouts, released at their configured rate.
    JobRollouts,
    /// Successes awaiting confirmation by the firmware version devices report.
    JobConfirmations,
    /// Things that joined a continuous job's groups or query.
    JobContinuous,
    /// Scheduled jobs whose startTime or endTime has come.
    JobSchedules,
    /// Outbound events due for (re)delivery to webhooks.
    EventDelivery,
    /// Certificates reaching an expiry-warning threshold or expiring.
    CertificateExpiry,
    /// The audit checks, for every tenant.
    AuditChecks,
    /// Rotated-away certificates past their grace period, and rotated
    /// certificates never used, are revoked.
    CertificateRotations,
}

impl ClusterTask {
    pub const ALL: [ClusterTask; 13] = [
        ClusterTask::PendingCertificates,
        ClusterTask::ClaimExpiry,
        ClusterTask::ShadowCompaction,
        ClusterTask::IdentityChangePruning,
        ClusterTask::JobTimeouts,
        ClusterTask::JobRollouts,
        ClusterTask::JobConfirmations,
        ClusterTask::JobContinuous,
        ClusterTask::JobSchedules,
        ClusterTask::EventDelivery,
        ClusterTask::CertificateExpiry,
        ClusterTask::AuditChecks,
        ClusterTask::CertificateRotations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterTask::PendingCertificates => "pending-certificates",
            ClusterTask::ClaimExpiry => "claim-expiry",
            ClusterTask::ShadowCompaction => "shadow-compaction",
            ClusterTask::IdentityChangePruning => "identity-change-pruning",
            ClusterTask::JobTimeouts => "job-timeouts",
            ClusterTask::JobRollouts => "job-rollouts",
            ClusterTask::JobConfirmations => "job-confirmations",
            ClusterTask::JobContinuous => "job-continuous",
            ClusterTask::JobSchedules => "job-schedules",
            ClusterTask::EventDelivery => "event-delivery",
            ClusterTask::CertificateExpiry => "certificate-expiry",
            ClusterTask::AuditChecks => "audit-checks",
            ClusterTask::CertificateRotations => "certificate-rotations",
        }
    }
}

impl Onramp {
    /// Seconds between runs of a cluster task.
    pub fn task_period_secs(&self, task: ClusterTask) -> i64 {
        match task {
            // Expired ownership tokens are looked for at least twice per token lifetime.
            ClusterTask::PendingCertificates => {
                (self.settings().provisioning.ownership_token_ttl_secs / 2).clamp(1, 60)
            }
            ClusterTask::ClaimExpiry => 86_400,
            ClusterTask::ShadowCompaction | ClusterTask::IdentityChangePruning => 600,
            // Timers are set in minutes; a few seconds late is within AWS's own precision.
            ClusterTask::JobTimeouts => 5,
            ClusterTask::JobRollouts => 1,
            ClusterTask::JobConfirmations => 5,
            ClusterTask::JobContinuous => 10,
            // A scheduled start or end happens within a second of its time.
            ClusterTask::JobSchedules => 1,
            // A delivery is due within a second or two of its time.
            ClusterTask::EventDelivery => 1,
            ClusterTask::CertificateExpiry => 3600,
            // 0 turns the schedule off: checked once a year instead.
            ClusterTask::AuditChecks => match self.settings().events.audit_interval_secs {
                s if s > 0 => s,
                _ => 365 * 86_400,
            },
            // Looked for at least twice per grace period and pending lifetime.
            ClusterTask::CertificateRotations => {
                let r = &self.settings().rotation;
                (r.grace_secs.min(r.pending_ttl_secs) / 2).clamp(1, 60)
            }
        }
    }

    async fn run_cluster_task(&self, task: ClusterTask) -> crate::Result<()> {
        match task {
            ClusterTask::PendingCertificates => {
                self.purge_expired_pending_certificates().await?;
            }
            ClusterTask::ClaimExpiry => {
                self.check_claim_expiry().await?;
            }
            ClusterTask::ShadowCompaction => {
                let n = self.compact_shadow_history(7 * 86_400, 100).await?;
                if n > 0 {
                    tracing::info!(removed = n, "compacted shadow history");
                }
            }
            ClusterTask::IdentityChangePruning => {
                self.prune_identity_changes().await?;
            }
            ClusterTask::JobTimeouts => {
                // Drain: a batch at a time until nothing is overdue.
                while self.expire_job_executions(now()).await? == 500 {}
            }
            ClusterTask::JobRollouts => {
                self.release_rollouts(now()).await?;
            }
            ClusterTask::JobConfirmations => {
                self.confirm_job_executions(now()).await?;
            }
            ClusterTask::JobContinuous => {
                self.extend_continuous_jobs(now()).await?;
            }
            ClusterTask::JobSchedules => {
                self.run_job_schedules(now()).await?;
            }
            ClusterTask::EventDelivery => {
                // Drain: a batch at a time while full batches come back.
                let batch = self.settings().events.batch as usize;
                while self.deliver_events().await? >= batch.max(1) {}
            }
            ClusterTask::CertificateExpiry => {
                let n = self.scan_certificate_expiry().await?;
                if n > 0 {
                    tracing::info!(events = n, "certificate expiry events stored");
                }
            }
            ClusterTask::AuditChecks => {
                if self.settings().events.audit_interval_secs > 0 {
                    self.run_scheduled_audit_checks().await?;
                }
            }
            ClusterTask::CertificateRotations => {
                // Drain: a batch at a time until nothing is due.
                while self.sweep_certificate_rotations().await? >= 500 {}
            }
        }
        Ok(())
    }

    /// Claims, runs and finishes one cluster task if it is this node's turn.
    /// Returns when to look at the task again.
    pub async fn run_cluster_task_if_due(&self, task: ClusterTask, at: i64) -> i64 {
        let name = task.name();
        let period = self.task_period_secs(task);
        let lease = match task {
            // A delivery sent twice is harmless (receivers deduplicate by
            // event id); a dead node must not hold webhooks for minutes.
            ClusterTask::JobRollouts | ClusterTask::EventDelivery => ROLLOUT_LEASE_SECS,
            _ => LEASE_SECS,
        };
        let store = &self.inner.store;
        match store
            .claim_task(name, &self.inner.node_id, at, period, lease)
            .await
        {
            Ok(TaskClaim::NotBefore(t)) => t.max(at + 1),
            Ok(TaskClaim::Won) => {
                let outcome = match self.run_cluster_task(task).await {
                    Ok(()) => "ok",
                    Err(e) => {
                        tracing::warn!(task = name, error = %e, "scheduled task failed");
                        "failed"
                    }
                };
                metrics::counter!("onramp_scheduler_runs_total", "task" => name, "outcome" => outcome)
                    .increment(1);
                let done = now();
                match store.finish_task(name, &self.inner.node_id, done).await {
                    Ok(true) if outcome == "ok" => done + period,
                    Ok(true) => done + period.min(RETRY_SECS),
                    Ok(false) => {
                        tracing::warn!(task = name, "scheduled task outlived its lease");
                        done + RETRY_SECS
                    }
                    Err(e) => {
                        tracing::warn!(task = name, error = %e, "could not record a scheduled run");
                        done + RETRY_SECS
                    }
                }
            }
            Err(e) => {
                tracing::warn!(task = name, error = %e, "could not claim a scheduled task");
                at + RETRY_SECS
            }
        }
    }

    /// Runs the scheduler until `stop` turns true.
    pub async fn run_scheduler(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let cluster = {
            let onramp = self.clone();
            tokio::spawn(async move {
                let mut next = [0i64; ClusterTask::ALL.len()];
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    for (i, task) in ClusterTask::ALL.into_iter().enumerate() {
                        let at = now();
                        if next[i] <= at {
                            next[i] = onramp.run_cluster_task_if_due(task, at).await;
                        }
                    }
                }
            })
        };
        let node = {
            let onramp = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_limit_sweep = std::time::Instant::now();
                let mut last_audit_flush = std::time::Instant::now();
                let mut last_revocation = std::time::Instant::now();
                let mut last_attempt_flush = std::time::Instant::now();
                // Messages other nodes publish for every node's subscribers.
                let relay = onramp.inner.sink.get().is_some() && onramp.backend() == "postgres";
                let mut outbox = if relay {
                    match onramp.outbox_head().await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the outbox head; retrying");
                            None
                        }
                    }
                } else {
                    None
                };
                loop {
                    tick.tick().await;
                    if relay {
                        match outbox.as_mut() {
                            Some(cursor) => {
                                if let Err(e) = onramp.relay_outbox(cursor).await {
                                    tracing::warn!(error = %e, "outbox read failed; retrying");
                                }
                            }
                            None => outbox = onramp.outbox_head().await.ok(),
                        }
                    }
                    // Shadows written by the CLI or another node: their
                    // deltas go to this node's subscribers.
                    if onramp.inner.sink.get().is_some()
                        && let Err(e) = onramp.publish_shadow_changes(now() - 2).await
                    {
                        tracing::warn!(error = %e, "shadow change check failed");
                    }
                    // The CRL follows the identity-change feed within a second.
                    if last_revocation.elapsed() >= Duration::from_millis(500) {
                        last_revocation = std::time::Instant::now();
                        if let Err(e) = onramp.refresh_revocation().await {
                            metrics::counter!("onramp_crl_feed_errors_total").increment(1);
                            tracing::warn!(error = %e, "CRL upkeep failed; retrying");
                        }
                    }
                    // Aggregated refusal audit rows are written when their window ends.
                    if last_audit_flush.elapsed() >= Duration::from_secs(1) {
                        last_audit_flush = std::time::Instant::now();
                        onramp.flush_refusal_audits(false).await;
                    }
                    // Connection attempts for the audit checks.
                    if last_attempt_flush.elapsed() >= Duration::from_secs(5) {
                        last_attempt_flush = std::time::Instant::now();
                        if let Err(e) = onramp.flush_connection_attempts().await {
                            tracing::warn!(error = %e, "could not write connection attempts");
                        }
                    }
                    if last_limit_sweep.elapsed() >= Duration::from_secs(60) {
                        last_limit_sweep = std::time::Instant::now();
                        onramp.sweep_rate_limits();
                    }
                }
            })
        };
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        cluster.abort();
        node.abort();
        self.flush_refusal_audits(true).await;
    }
}
