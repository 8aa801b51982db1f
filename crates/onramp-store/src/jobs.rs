//! Storage for jobs and job executions. The rules (which transition is
//! allowed, what a reply says) live in `onramp_domain::job`; this keeps the
//! records and guards every execution write with its version.

use crate::sql::{Dialect, SqlStore, insert_audit};
use crate::{Result, StoreError};
use async_trait::async_trait;
use onramp_domain::job::{Confirmation, JobExecution, JobExecutionStatus};
use onramp_domain::{AuditEntry, Page, UnixTime};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A job as stored: its document and configuration are JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub tenant: String,
    pub job_id: String,
    /// `SCHEDULED`, `IN_PROGRESS`, `COMPLETED` or `CANCELED`.
    pub status: String,
    pub description: Option<String>,
    pub document: String,
    pub config: String,
    pub targets: String,
    /// `SNAPSHOT` or `CONTINUOUS`.
    pub target_selection: String,
    pub created_by: String,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    pub completed_at: Option<UnixTime>,
}

/// One version-guarded write of an execution, as [`JobStore::save_execution`]
/// takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionWrite {
    pub tenant: String,
    pub execution: JobExecution,
    /// Inserted when None, else replaced only if the stored one still has
    /// this version.
    pub expected_version: Option<u64>,
    /// A retry the change caused, inserted with it.
    pub retry: Option<JobExecution>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates the job, queues its first executions and records the targets
    /// a paced rollout will release later, in one transaction.
    async fn create_job(
        &self,
        job: &JobRecord,
        executions: &[JobExecution],
        waiting: &[String],
        audit: &AuditEntry,
    ) -> Result<()>;
    async fn get_job(&self, tenant: &str, job_id: &str) -> Result<Option<JobRecord>>;
    /// Jobs in id order after `page.after`.
    async fn list_jobs(&self, tenant: &str, page: &Page) -> Result<Vec<JobRecord>>;
    async fn set_job_status(
        &self,
        tenant: &str,
        job_id: &str,
        status: &str,
        now: UnixTime,
        audit: Option<&AuditEntry>,
    ) -> Result<()>;
    /// A thing's executions: of one job (every execution number), or with
    /// `job_id` None its pending ones (QUEUED and IN_PROGRESS) of every job.
    async fn thing_executions(
        &self,
        tenant: &str,
        thing_name: &str,
        job_id: Option<&str>,
    ) -> Result<Vec<JobExecution>>;
    /// A job's executions in thing-name order after `page.after`.
    async fn job_executions(
        &self,
        tenant: &str,
        job_id: &str,
        page: &Page,
    ) -> Result<Vec<JobExecution>>;
    /// How many executions of a job are in each status.
    async fn job_execution_counts(&self, tenant: &str, job_id: &str) -> Result<Vec<(String, i64)>>;
    /// Writes an execution: inserted when `expected_version` is None, else
    /// replaced only if the stored one still has that version. A retry the
    /// change caused is inserted in the same transaction. False when another
    /// writer got there first (nothing is written then).
    async fn save_execution(
        &self,
        tenant: &str,
        execution: &JobExecution,
        expected_version: Option<u64>,
        retry: Option<&JobExecution>,
    ) -> Result<bool>;
    /// Applies several execution writes in one transaction, each with its
    /// own version guard as in [`JobStore::save_execution`]. Per write:
    /// `Ok(true)` written, `Ok(false)` another writer got there first, `Err`
    /// that write failed; either way the other writes stand. The outer `Err`
    /// means the transaction did not commit and none of them was written.
    async fn save_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<Result<bool>>>;
    /// Which of `names` are things of the tenant (in any order).
    async fn existing_things(&self, tenant: &str, names: &[String]) -> Result<Vec<String>>;
    /// The pending executions (QUEUED and IN_PROGRESS, of every job) of
    /// each of `things`, in the order of [`JobStore::thing_executions`];
    /// things without any are left out.
    async fn pending_executions_of(
        &self,
        tenant: &str,
        things: &[String],
    ) -> Result<std::collections::BTreeMap<String, Vec<JobExecution>>>;
    /// Jobs still in progress, neither paused nor ended, with targets
    /// waiting for release.
    async fn jobs_awaiting_release(&self) -> Result<Vec<(String, String)>>;
    /// The saved state of a job's rollout (opaque JSON), if any.
    async fn rollout_state(&self, tenant: &str, job_id: &str) -> Result<Option<String>>;
    /// Releases up to `count` waiting targets of a job still in progress
    /// whose rollout is neither paused nor ended:
    /// queues an execution for each, marks them released and replaces the
    /// rollout state, in one transaction, if the stored state is still
    /// `expected` (None: never saved). `None` when another release moved the
    /// state first: nothing is written, and the caller reads it again.
    async fn release_job_targets(
        &self,
        tenant: &str,
        job_id: &str,
        count: u32,
        now: UnixTime,
        expected: Option<&str>,
        rollout_state: &str,
    ) -> Result<Option<Vec<JobExecution>>>;
    /// Drops a job's targets that were never released; returns how many.
    async fn drop_waiting_targets(&self, tenant: &str, job_id: &str) -> Result<u64>;
    /// A job's failed, timed-out and rejected executions counted by the
    /// hardware revision and device class of their things:
    /// `(hardware_revision, device_class, status, count)`.
    async fn job_failures_by_group(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> Result<Vec<(Option<String>, Option<String>, String, i64)>>;
    /// Continuous jobs still in progress whose rollout has not ended.
    async fn continuous_jobs(&self) -> Result<Vec<(String, String)>>;
    /// Every thing a job already targets: released or waiting.
    async fn job_target_names(&self, tenant: &str, job_id: &str) -> Result<Vec<String>>;
    /// Adds things to a job still in progress: queued executions and
    /// targets waiting for its rollout, in one transaction. Things the job
    /// already targets are skipped. Returns the executions queued.
    async fn add_job_targets(
        &self,
        tenant: &str,
        job_id: &str,
        executions: &[JobExecution],
        waiting: &[String],
    ) -> Result<Vec<JobExecution>>;
    /// SUCCEEDED executions still awaiting confirmation, earliest deadline first.
    async fn awaiting_confirmation(&self, limit: u32) -> Result<Vec<(String, JobExecution)>>;
    /// Whether any success of the job still awaits confirmation.
    async fn job_awaits_confirmation(&self, tenant: &str, job_id: &str) -> Result<bool>;
    /// Whether the job still has work: a pending execution or a target
    /// waiting for its rollout (each found by index, not by counting).
    async fn job_has_open_work(&self, tenant: &str, job_id: &str) -> Result<bool>;
    /// IN_PROGRESS executions whose timer ran out at `now`, oldest first.
    async fn overdue_executions(
        &self,
        now: UnixTime,
        limit: u32,
    ) -> Result<Vec<(String, JobExecution)>>;
}

/// Where a page of a job's executions starts: after `thing/number` (see
/// [`execution_cursor_of`]), or after every execution of `thing` when the
/// cursor names only a thing. A thing has one execution per retry, so a
/// cursor of the thing name alone would skip those a page boundary splits.
fn execution_cursor(after: Option<&str>) -> (&str, i64) {
    let Some(after) = after else {
        return ("", 0);
    };
    match after.rsplit_once('/') {
        Some((thing, n)) => match n.parse::<i64>() {
            Ok(n) => (thing, n),
            Err(_) => (after, i64::MAX),
        },
        None => (after, i64::MAX),
    }
}

/// The cursor that continues a listing of a job's executions after `e`.
/// Thing names never contain `/`.
pub fn execution_cursor_of(e: &JobExecution) -> String {
    format!("{}/{}", e.thing_name, e.execution_number)
}

fn job_from_row(r: &AnyRow) -> Result<JobRecord> {
    Ok(JobRecord {
        tenant: r.try_get("tenant")?,
        job_id: r.try_get("job_id")?,
        status: r.try_get("status")?,
        description: r.try_get("description")?,
        document: r.try_get("document")?,
        config: r.try_get("config")?,
        targets: r.try_get("targets")?,
        target_selection: r.try_get("target_selection")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        completed_at: r.try_get("completed_at")?,
    })
}

fn execution_from_row(r: &AnyRow) -> Result<JobExecution> {
    let text: String = r.try_get("execution")?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("stored job execution: {e}")))
}

fn encode(e: &JobExecution) -> Result<String> {
    serde_json::to_string(e).map_err(|err| StoreError::Corrupt(format!("job execution: {err}")))
}

/// The deadline column: a running execution's timer, or the confirmation
/// deadline of a success that awaits confirmation by firmware version.
fn deadline(e: &JobExecution) -> Option<i64> {
    match (&e.status, &e.confirmation) {
        (JobExecutionStatus::InProgress, _) => e.deadline(),
        (JobExecutionStatus::Succeeded, Some(Confirmation::Pending { deadline, .. })) => {
            Some(*deadline)
        }
        _ => None,
    }
}

fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const JOB_COLUMNS: &str = "tenant, job_id, status, description, document, config, targets, \
     target_selection, created_by, created_at, updated_at, completed_at";

async fn insert_execution(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant: &str,
    e: &JobExecution,
) -> Result<()> {
    insert_executions(tx, Dialect::Postgres, tenant, std::slice::from_ref(e)).await
}

/// Rows (or `IN` list members) per statement with `columns` bound values
/// each. PostgreSQL takes 500 (at most 4,500 values, under its 65,535).
/// SQLite is kept near 256 values per statement: its driver binds every
/// value by looking its name up among the statement's parameters, a cost
/// that grows with the square of their number, so that 20 statements of
/// 4,500 values cost far more than 350 statements of 256.
pub(crate) fn rows_per_statement(dialect: Dialect, columns: usize) -> usize {
    match dialect {
        Dialect::Sqlite => (256 / columns.max(1)).max(1),
        Dialect::Postgres => 500,
    }
}

/// `($first, …), (…)`: `rows` groups of `columns` numbered placeholders.
fn value_rows(rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * columns + c).to_string());
        }
        out.push(')');
    }
    out
}

/// `$first, …`: `n` numbered placeholders for an `IN (…)` list.
fn in_list(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts executions with multi-row statements.
async fn insert_executions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
    tenant: &str,
    executions: &[JobExecution],
) -> Result<()> {
    for chunk in executions.chunks(rows_per_statement(dialect, 9)) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO job_executions (tenant, job_id, thing_name, execution_number, status, \
             version, queued_at, deadline, execution) VALUES {}",
            value_rows(chunk.len(), 9, 1)
        )));
        for e in chunk {
            q = q
                .bind(tenant)
                .bind(&e.job_id)
                .bind(&e.thing_name)
                .bind(version(e.execution_number))
                .bind(e.status.as_str())
                .bind(version(e.version))
                .bind(e.queued_at)
                .bind(deadline(e))
                .bind(encode(e)?);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records targets waiting for a paced rollout, with multi-row statements.
async fn insert_waiting_targets(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
    tenant: &str,
    job_id: &str,
    things: &[String],
) -> Result<()> {
    for chunk in things.chunks(rows_per_statement(dialect, 4)) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO job_targets (tenant, job_id, thing_name, released_at) VALUES {}",
            value_rows(chunk.len(), 4, 1)
        )));
        for thing in chunk {
            q = q
                .bind(tenant)
                .bind(job_id)
                .bind(thing)
                .bind(Option::<i64>::None);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// One execution write inside `tx`: true if written, false if the version
/// guard (or an existing execution, for an insert) stopped it.
async fn write_execution(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    w: &ExecutionWrite,
) -> Result<bool> {
    let e = &w.execution;
    let written = match w.expected_version {
        None => sqlx::query(
            "INSERT INTO job_executions (tenant, job_id, thing_name, execution_number, \
             status, version, queued_at, deadline, execution) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant, job_id, thing_name, execution_number) DO NOTHING",
        )
        .bind(&w.tenant)
        .bind(&e.job_id)
        .bind(&e.thing_name)
        .bind(version(e.execution_number))
        .bind(e.status.as_str())
        .bind(version(e.version))
        .bind(e.queued_at)
        .bind(deadline(e))
        .bind(encode(e)?)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Some(expected) => sqlx::query(
            "UPDATE job_executions SET status = $5, version = $6, deadline = $7, \
             execution = $8 WHERE tenant = $1 AND job_id = $2 AND thing_name = $3 \
             AND execution_number = $4 AND version = $9",
        )
        .bind(&w.tenant)
        .bind(&e.job_id)
        .bind(&e.thing_name)
        .bind(version(e.execution_number))
        .bind(e.status.as_str())
        .bind(version(e.version))
        .bind(deadline(e))
        .bind(encode(e)?)
        .bind(version(expected))
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    if written == 0 {
        return Ok(false);
    }
    if let Some(r) = &w.retry {
        insert_execution(tx, &w.tenant, r).await?;
    }
    Ok(true)
}

impl SqlStore {
    /// [`JobStore::save_executions`]: every write in one transaction. A write
    /// that inserts a retry (two statements) runs inside a savepoint, and on
    /// PostgreSQL every write does (an error there spoils the whole
    /// transaction otherwise), so that a write that fails leaves nothing
    /// behind and the others go on. On SQLite a failed statement undoes
    /// itself alone, except for errors (I/O, disk full) after which SQLite
    /// may have rolled the transaction back: any error there other than a
    /// constraint inside a savepoint therefore fails the whole group.
    pub(crate) async fn apply_execution_writes(
        &self,
        writes: &[ExecutionWrite],
    ) -> Result<Vec<Result<bool>>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let guarded = self.dialect == Dialect::Postgres || w.retry.is_some();
            if !guarded {
                // A single statement: either it wrote or it did not.
                out.push(Ok(write_execution(&mut tx, w).await?));
                continue;
            }
            sqlx::query("SAVEPOINT execution_write")
                .execute(&mut *tx)
                .await?;
            let result = write_execution(&mut tx, w).await;
            if !matches!(result, Ok(true)) {
                sqlx::query("ROLLBACK TO SAVEPOINT execution_write")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT execution_write")
                .execute(&mut *tx)
                .await?;
            out.push(result);
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Execution writes waiting for the group writer, each with where to send
/// its own result.
struct PendingWrite {
    write: ExecutionWrite,
    reply: tokio::sync::oneshot::Sender<Result<bool>>,
}

/// The most execution writes one shared transaction takes.
const MAX_GROUP: usize = 512;

/// Group commit of execution writes on SQLite, where one connection writes
/// at a time: concurrent [`JobStore::save_execution`] calls queue here, and
/// one task applies all that are waiting in one transaction, commits once
/// and answers each with its own result, only after the commit. While it
/// commits, the next group gathers. The task starts on the first write (on
/// the runtime of that caller) and again if that runtime went away.
#[derive(Default)]
pub(crate) struct ExecutionCommitter {
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<PendingWrite>>>,
}

impl std::fmt::Debug for ExecutionCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecutionCommitter")
    }
}

impl ExecutionCommitter {
    /// Queues a write and waits for its result.
    pub(crate) async fn save(&self, store: &SqlStore, write: ExecutionWrite) -> Result<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = PendingWrite { write, reply };
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let unsent = match queue.as_ref() {
                Some(q) => q.send(pending).err().map(|e| e.0),
                None => Some(pending),
            };
            if let Some(pending) = unsent {
                // No writer yet, or its runtime is gone: start one here. Its
                // store has a committer of its own, never used, so that the
                // queue closes (and the task ends) with the last user's store.
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                let writer = SqlStore {
                    execution_writer: std::sync::Arc::default(),
                    ..store.clone()
                };
                tokio::spawn(run_group_writer(writer, receiver));
                if sender.send(pending).is_ok() {
                    *queue = Some(sender);
                }
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Uncommitted(
                "the execution writer stopped before answering".into(),
            ))
        })
    }
}

/// Takes every write waiting (up to [`MAX_GROUP`]), applies them in one
/// transaction and answers each; a failed commit fails every write of the
/// group, and none of them is answered before the commit.
async fn run_group_writer(
    store: SqlStore,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<PendingWrite>,
) {
    let mut group = Vec::new();
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (writes, replies): (Vec<ExecutionWrite>, Vec<_>) =
            group.drain(..).map(|p| (p.write, p.reply)).unzip();
        match store.apply_execution_writes(&writes).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = writes.len(), "a group of execution writes did not commit");
                let busy = matches!(e, StoreError::Busy(_));
                let text = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(if busy {
                        StoreError::Busy(text.clone())
                    } else {
                        StoreError::Uncommitted(text.clone())
                    }));
                }
            }
        }
    }
}

#[async_trait]
impl JobStore for SqlStore {
    async fn create_job(
        &self,
        job: &JobRecord,
        executions: &[JobExecution],
        waiting: &[String],
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12) ON CONFLICT (tenant, job_id) DO NOTHING"
        )))
        .bind(&job.tenant)
        .bind(&job.job_id)
        .bind(&job.status)
        .bind(job.description.as_deref())
        .bind(&job.document)
        .bind(&job.config)
        .bind(&job.targets)
        .bind(&job.target_selection)
        .bind(&job.created_by)
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(job.completed_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "job `{}` already exists",
                job.job_id
            )));
        }
        insert_executions(&mut tx, self.dialect, &job.tenant, executions).await?;
        insert_waiting_targets(&mut tx, self.dialect, &job.tenant, &job.job_id, waiting).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_job(&self, tenant: &str, job_id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND job_id = $2"
        )))
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list_jobs(&self, tenant: &str, page: &Page) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND job_id > $2 \
             ORDER BY job_id LIMIT $3"
        )))
        .bind(tenant)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn set_job_status(
        &self,
        tenant: &str,
        job_id: &str,
        status: &str,
        now: UnixTime,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET status = $3, updated_at = $4, \
             completed_at = CASE WHEN $3 = 'IN_PROGRESS' THEN NULL ELSE $4 END \
             WHERE tenant = $1 AND job_id = $2",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(status)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("job `{job_id}`")));
        }
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn thing_executions(
        &self,
        tenant: &str,
        thing_name: &str,
        job_id: Option<&str>,
    ) -> Result<Vec<JobExecution>> {
        let rows =
            match job_id {
                Some(job) => sqlx::query(
                    "SELECT execution FROM job_executions WHERE tenant = $1 AND thing_name = $2 \
                     AND job_id = $3 ORDER BY execution_number",
                )
                .bind(tenant)
                .bind(thing_name)
                .bind(job)
                .fetch_all(&self.reader)
                .await?,
                None => sqlx::query(
                    "SELECT execution FROM job_executions WHERE tenant = $1 AND thing_name = $2 \
                     AND status IN ('QUEUED', 'IN_PROGRESS') ORDER BY queued_at, job_id",
                )
                .bind(tenant)
                .bind(thing_name)
                .fetch_all(&self.reader)
                .await?,
            };
        rows.iter().map(execution_from_row).collect()
    }

    async fn job_executions(
        &self,
        tenant: &str,
        job_id: &str,
        page: &Page,
    ) -> Result<Vec<JobExecution>> {
        let (thing, number) = execution_cursor(page.after.as_deref());
        let rows = sqlx::query(
            "SELECT execution FROM job_executions WHERE tenant = $1 AND job_id = $2 \
             AND (thing_name > $3 OR (thing_name = $3 AND execution_number > $4)) \
             ORDER BY thing_name, execution_number LIMIT $5",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(thing)
        .bind(number)
        .bind(i64::from(page.limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn job_execution_counts(&self, tenant: &str, job_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM job_executions WHERE tenant = $1 AND job_id = $2 \
             GROUP BY status ORDER BY status",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    async fn save_execution(
        &self,
        tenant: &str,
        e: &JobExecution,
        expected_version: Option<u64>,
        retry: Option<&JobExecution>,
    ) -> Result<bool> {
        let write = ExecutionWrite {
            tenant: tenant.to_string(),
            execution: e.clone(),
            expected_version,
            retry: retry.cloned(),
        };
        match self.dialect {
            // One writer connection: concurrent writes share a transaction.
            Dialect::Sqlite => self.execution_writer.save(self, write).await,
            // Many connections, and PostgreSQL already flushes concurrent
            // commits together: each write is its own transaction.
            Dialect::Postgres => {
                let mut tx = self.begin().await?;
                if !write_execution(&mut tx, &write).await? {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    async fn save_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<Result<bool>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_execution_writes(writes).await
    }

    async fn existing_things(&self, tenant: &str, names: &[String]) -> Result<Vec<String>> {
        let mut found = Vec::with_capacity(names.len());
        for chunk in names.chunks(rows_per_statement(self.dialect, 1)) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT thing_name FROM devices WHERE tenant = $1 AND thing_name IN ({})",
                in_list(chunk.len(), 2)
            )))
            .bind(tenant);
            for name in chunk {
                q = q.bind(name);
            }
            for r in q.fetch_all(&self.reader).await? {
                found.push(r.try_get("thing_name")?);
            }
        }
        Ok(found)
    }

    async fn pending_executions_of(
        &self,
        tenant: &str,
        things: &[String],
    ) -> Result<std::collections::BTreeMap<String, Vec<JobExecution>>> {
        let mut out: std::collections::BTreeMap<String, Vec<JobExecution>> =
            std::collections::BTreeMap::new();
        for chunk in things.chunks(rows_per_statement(self.dialect, 1)) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT thing_name, execution FROM job_executions WHERE tenant = $1 \
                 AND status IN ('QUEUED', 'IN_PROGRESS') AND thing_name IN ({}) \
                 ORDER BY thing_name, queued_at, job_id",
                in_list(chunk.len(), 2)
            )))
            .bind(tenant);
            for name in chunk {
                q = q.bind(name);
            }
            for r in q.fetch_all(&self.reader).await? {
                let thing: String = r.try_get("thing_name")?;
                out.entry(thing).or_default().push(execution_from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn jobs_awaiting_release(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT t.tenant, t.job_id FROM job_targets t JOIN jobs j \
             ON j.tenant = t.tenant AND j.job_id = t.job_id \
             WHERE t.released_at IS NULL AND j.status = 'IN_PROGRESS' AND j.rollout_paused = 0 \
             AND j.rollout_ended = 0 ORDER BY t.tenant, t.job_id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, r.try_get("job_id")?)))
            .collect()
    }

    async fn rollout_state(&self, tenant: &str, job_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT rollout_state FROM jobs WHERE tenant = $1 AND job_id = $2")
            .bind(tenant)
            .bind(job_id)
            .fetch_optional(&self.reader)
            .await?;
        match row {
            Some(r) => Ok(r.try_get("rollout_state")?),
            None => Ok(None),
        }
    }

    async fn release_job_targets(
        &self,
        tenant: &str,
        job_id: &str,
        count: u32,
        now: UnixTime,
        expected: Option<&str>,
        rollout_state: &str,
    ) -> Result<Option<Vec<JobExecution>>> {
        let mut tx = self.begin().await?;
        // The job must still be in progress when the release commits (a
        // cancel or abort that committed first stops it), and its pace must
        // be the one the caller computed from: two releases racing (job
        // creation and the scheduler, or two nodes) cannot both go out.
        let saved = sqlx::query(
            "UPDATE jobs SET rollout_state = $3, updated_at = $4 \
             WHERE tenant = $1 AND job_id = $2 AND status = 'IN_PROGRESS' \
             AND rollout_paused = 0 AND rollout_ended = 0 AND COALESCE(rollout_state, '') = $5",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(rollout_state)
        .bind(now)
        .bind(expected.unwrap_or(""))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if saved == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        if count == 0 {
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        }
        let rows = sqlx::query(
            "SELECT thing_name FROM job_targets WHERE tenant = $1 AND job_id = $2 \
             AND released_at IS NULL ORDER BY thing_name LIMIT $3",
        )
        .bind(tenant)
        .bind(job_id)
        .bind(i64::from(count))
        .fetch_all(&mut *tx)
        .await?;
        let mut released = Vec::with_capacity(rows.len());
        for r in &rows {
            let thing: String = r.try_get("thing_name")?;
            let marked = sqlx::query(
                "UPDATE job_targets SET released_at = $4 WHERE tenant = $1 AND job_id = $2 \
                 AND thing_name = $3 AND released_at IS NULL",
            )
            .bind(tenant)
            .bind(job_id)
            .bind(&thing)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked == 1 {
                let e = JobExecution::queued(job_id, &thing, now);
                insert_execution(&mut tx, tenant, &e).await?;
                released.push(e);
            }
        }
        tx.commit().await?;
        Ok(Some(released))
    }

    async fn drop_waiting_targets(&self, tenant: &str, job_id: &str) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM job_targets WHERE tenant = $1 AND job_id = $2 AND released_at IS NULL",
        )
        .bind(tenant)
        .bind(job_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn job_failures_by_group(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> Result<Vec<(Option<String>, Option<String>, String, i64)>> {
        let rows = sqlx::query(
            "SELECT d.hardware_revision AS hardware_revision, d.device_class AS device_class, \
             e.status AS status, COUNT(*) AS n FROM job_executions e \
             LEFT JOIN devices d ON d.tenant = e.tenant AND d.thing_name = e.thing_name \
             WHERE e.tenant = $1 AND e.job_id = $2 \
             AND e.status IN ('FAILED', 'TIMED_OUT', 'REJECTED') \
             GROUP BY d.hardware_revision, d.device_class, e.status \
             ORDER BY COUNT(*) DESC, e.status",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("hardware_revision")?,
                    r.try_get("device_class")?,
                    r.try_get("status")?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    async fn continuous_jobs(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT tenant, job_id FROM jobs WHERE status = 'IN_PROGRESS' \
             AND target_selection = 'CONTINUOUS' AND rollout_ended = 0 ORDER BY tenant, job_id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, r.try_get("job_id")?)))
            .collect()
    }

    async fn job_target_names(&self, tenant: &str, job_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT thing_name FROM job_executions WHERE tenant = $1 AND job_id = $2 \
             UNION SELECT thing_name FROM job_targets WHERE tenant = $1 AND job_id = $2",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("thing_name")?)).collect()
    }

    async fn add_job_targets(
        &self,
        tenant: &str,
        job_id: &str,
        executions: &[JobExecution],
        waiting: &[String],
    ) -> Result<Vec<JobExecution>> {
        let mut tx = self.begin().await?;
        let live = sqlx::query(
            "UPDATE jobs SET updated_at = updated_at WHERE tenant = $1 AND job_id = $2 \
             AND status = 'IN_PROGRESS'",
        )
        .bind(tenant)
        .bind(job_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if live == 0 {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let targeted = |thing: &str| {
            sqlx::query(
                "SELECT 1 AS x FROM job_executions WHERE tenant = $1 AND job_id = $2 \
                 AND thing_name = $3 UNION SELECT 1 AS x FROM job_targets \
                 WHERE tenant = $1 AND job_id = $2 AND thing_name = $3",
            )
            .bind(tenant.to_string())
            .bind(job_id.to_string())
            .bind(thing.to_string())
        };
        let mut queued = Vec::new();
        for e in executions {
            if targeted(&e.thing_name)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                insert_execution(&mut tx, tenant, e).await?;
                queued.push(e.clone());
            }
        }
        for thing in waiting {
            if targeted(thing).fetch_optional(&mut *tx).await?.is_none() {
                sqlx::query(
                    "INSERT INTO job_targets (tenant, job_id, thing_name, released_at) \
                     VALUES ($1, $2, $3, NULL)",
                )
                .bind(tenant)
                .bind(job_id)
                .bind(thing)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn awaiting_confirmation(&self, limit: u32) -> Result<Vec<(String, JobExecution)>> {
        let rows = sqlx::query(
            "SELECT tenant, execution FROM job_executions WHERE deadline IS NOT NULL \
             AND status = 'SUCCEEDED' ORDER BY deadline LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, execution_from_row(r)?)))
            .collect()
    }

    async fn job_has_open_work(&self, tenant: &str, job_id: &str) -> Result<bool> {
        let pending = sqlx::query(
            "SELECT 1 AS x FROM job_executions WHERE tenant = $1 AND job_id = $2 \
             AND status IN ('QUEUED', 'IN_PROGRESS') LIMIT 1",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        if pending.is_some() {
            return Ok(true);
        }
        let waiting = sqlx::query(
            "SELECT 1 AS x FROM job_targets WHERE tenant = $1 AND job_id = $2 \
             AND released_at IS NULL LIMIT 1",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(waiting.is_some())
    }

    async fn job_awaits_confirmation(&self, tenant: &str, job_id: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS x FROM job_executions WHERE tenant = $1 AND job_id = $2 \
             AND status = 'SUCCEEDED' AND deadline IS NOT NULL LIMIT 1",
        )
        .bind(tenant)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.is_some())
    }

    async fn overdue_executions(
        &self,
        now: UnixTime,
        limit: u32,
    ) -> Result<Vec<(String, JobExecution)>> {
        let rows = sqlx::query(
            "SELECT tenant, execution FROM job_executions WHERE deadline IS NOT NULL \
             AND deadline <= $1 AND status = 'IN_PROGRESS' ORDER BY deadline LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, execution_from_row(r)?)))
            .collect()
    }
}
