//! Storage for an operator's control of whole jobs: a paused rollout, a
//! scheduled start and end, and deletion. The rules (which status allows
//! what, when a schedule is due) live in `onramp_domain::job`; each write
//! here re-checks the status it was decided on, so a change that committed
//! first wins and the caller reads again.

use crate::Result;
use crate::sql::{SqlStore, insert_audit};
use async_trait::async_trait;
use onramp_domain::{AuditEntry, UnixTime};
use sqlx::Row;

/// A job's rollout controls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobControl {
    /// No execution is released until the job is resumed.
    pub paused: bool,
    /// The job's scheduled end stopped its rollout.
    pub rollout_ended: bool,
}

/// A job the scheduler may have to start or end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledJob {
    pub tenant: String,
    pub job_id: String,
    pub status: String,
    /// The job's configuration (JSON text), which holds its `schedulingConfig`.
    pub config: String,
    pub rollout_ended: bool,
}

#[async_trait]
pub trait JobControlStore: Send + Sync {
    /// A job's rollout controls; None when there is no such job.
    async fn job_control(&self, tenant: &str, job_id: &str) -> Result<Option<JobControl>>;
    /// The paused jobs whose ids lie in `first..=last`, in id order.
    async fn paused_jobs(&self, tenant: &str, first: &str, last: &str) -> Result<Vec<String>>;
    /// Pauses (`paused`) or resumes a SCHEDULED or IN_PROGRESS job whose
    /// rollout is in the other state, with its audit entry, in one
    /// transaction. False (nothing written) when the job is not found in
    /// such a state.
    async fn set_rollout_paused(
        &self,
        tenant: &str,
        job_id: &str,
        paused: bool,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// SCHEDULED jobs, and IN_PROGRESS jobs with an `endTime` not yet applied.
    async fn scheduled_jobs(&self) -> Result<Vec<ScheduledJob>>;
    /// A SCHEDULED job becomes IN_PROGRESS, with its audit entry. False
    /// when it was no longer SCHEDULED.
    async fn start_scheduled_job(
        &self,
        tenant: &str,
        job_id: &str,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Stops a SCHEDULED or IN_PROGRESS job's rollout for good: marks it
    /// ended (a SCHEDULED job becomes IN_PROGRESS, to complete when its
    /// executions have) and drops its targets still waiting, with its audit
    /// entry, in one transaction. False when it was neither, or already ended.
    async fn end_job_rollout(
        &self,
        tenant: &str,
        job_id: &str,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Deletes a COMPLETED or CANCELED job with its executions, targets and
    /// rollout state, with its audit entry, in one transaction. False
    /// (nothing deleted) when the job is not found in either status.
    async fn delete_job(&self, tenant: &str, job_id: &str, audit: &AuditEntry) -> Result<bool>;
}

#[async_trait]
impl JobControlStore for SqlStore {
    async fn job_control(&self, tenant: &str, job_id: &str) -> Result<Option<JobControl>> {
        let row = sqlx::query(
            "SELECT rollout_paused, rollout_ended FROM jobs WHERE tenant = $1 AND job_id = $2",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let paused: i64 = r.try_get("rollout_paused")?;
        let ended: i64 = r.try_get("rollout_ended")?;
        Ok(Some(JobControl {
            paused: paused != 0,
            rollout_ended: ended != 0,
        }))
    }

    async fn paused_jobs(&self, tenant: &str, first: &str, last: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT job_id FROM jobs WHERE tenant = $1 AND job_id >= $2 AND job_id <= $3 \
             AND rollout_paused <> 0 ORDER BY job_id",
        )
        .bind(tenant)
        .bind(first)
        .bind(last)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("job_id")?)).collect()
    }

    async fn set_rollout_paused(
        &self,
        tenant: &str,
        job_id: &str,
        paused: bool,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let (to, from) = if paused { (1i64, 0i64) } else { (0, 1) };
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE jobs SET rollout_paused = $3, updated_at = $4 WHERE tenant = $1 \
             AND job_id = $2 AND status IN ('SCHEDULED', 'IN_PROGRESS') AND rollout_paused = $5",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(to)
        .bind(now)
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit_if_changed(tx, changed, audit).await
    }

    async fn scheduled_jobs(&self) -> Result<Vec<ScheduledJob>> {
        // The configuration is JSON text written by Onramp, so a job with an
        // end time holds the member name `"endTime"` verbatim.
        let rows = sqlx::query(
            "SELECT tenant, job_id, status, config, rollout_ended FROM jobs \
             WHERE status = 'SCHEDULED' OR (status = 'IN_PROGRESS' AND rollout_ended = 0 \
             AND config LIKE '%\"endTime\"%') ORDER BY tenant, job_id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let ended: i64 = r.try_get("rollout_ended")?;
                Ok(ScheduledJob {
                    tenant: r.try_get("tenant")?,
                    job_id: r.try_get("job_id")?,
                    status: r.try_get("status")?,
                    config: r.try_get("config")?,
                    rollout_ended: ended != 0,
                })
            })
            .collect()
    }

    async fn start_scheduled_job(
        &self,
        tenant: &str,
        job_id: &str,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE jobs SET status = 'IN_PROGRESS', updated_at = $3 WHERE tenant = $1 \
             AND job_id = $2 AND status = 'SCHEDULED'",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit_if_changed(tx, changed, audit).await
    }

    async fn end_job_rollout(
        &self,
        tenant: &str,
        job_id: &str,
        now: UnixTime,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE jobs SET rollout_ended = 1, status = 'IN_PROGRESS', updated_at = $3 \
             WHERE tenant = $1 AND job_id = $2 AND status IN ('SCHEDULED', 'IN_PROGRESS') \
             AND rollout_ended = 0",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM job_targets WHERE tenant = $1 AND job_id = $2 AND released_at IS NULL",
        )
        .bind(tenant)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_job(&self, tenant: &str, job_id: &str, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The job row goes first: once its status check passed here, no
        // release, start or new member can add to what is deleted below.
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE tenant = $1 AND job_id = $2 \
             AND status IN ('COMPLETED', 'CANCELED')",
        )
        .bind(tenant)
        .bind(job_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for table in ["job_executions", "job_targets"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant = $1 AND job_id = $2"
            )))
            .bind(tenant)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Ends a guarded change: rolled back (`false`) when its guard matched no
/// row, otherwise audited and committed (`true`).
async fn audit_if_changed(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    changed: u64,
    audit: &AuditEntry,
) -> Result<bool> {
    if changed == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(true)
}
