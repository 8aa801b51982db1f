//! The SQL implementation of [`Store`], shared by SQLite and PostgreSQL
//! through sqlx's `Any` driver. The two dialects differ only in their
//! migrations and in how connections are set up.
//!
//! Placeholders are numbered in order of first appearance in every statement:
//! SQLite binds `$n` by position of first use, PostgreSQL by number.

use crate::{
    EnrolmentCommit, IdentityChangeCursor, NewToken, OutboxMessage, OwnCertificate, Result,
    RevokedEntry, ShadowChange, Store, StoreError, StoredShadow, Supersede, TaskClaim,
    TokenEnrolment, parse_role, parse_status,
};
use async_trait::async_trait;
use onramp_domain::{
    AllowlistEntry, ApiKey, AuditEntry, AuditQuery, CertStatus, Certificate, Device, DeviceFilter,
    DeviceStatus, EnrolmentToken, FleetGauges, LifecycleAction, Outcome, Page, PolicyTarget,
    RetainedRecord, RevokedIdentity, StoredPolicy, UnixTime, version_sort_key,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::time::Duration;

/// SQL text assembled from constant column lists and numbered placeholders;
/// values are always bound, never formatted in.
macro_rules! sqlf {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The registry on SQL. For SQLite, writes go through a single connection so
/// that they queue in the pool instead of failing with SQLITE_BUSY, while
/// reads use several connections (WAL lets them run beside the writer).
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(crate) dialect: Dialect,
    pub(crate) reader: AnyPool,
    pub(crate) writer: AnyPool,
    /// Group commit of job execution writes (used on SQLite).
    pub(crate) execution_writer: std::sync::Arc<crate::jobs::ExecutionCommitter>,
}

pub(crate) const DEVICE_COLUMNS: &str = "tenant, thing_name, serial_number, device_class, \
     hardware_revision, firmware_version, attributes, thing_groups, status, created_at, updated_at, \
     last_seen_at";
pub(crate) const CERT_COLUMNS: &str = "serial, tenant, thing_name, fingerprint, pem, not_before, \
     not_after, status, issued_at, revoked_at, revocation_reason, superseded_by, issuer_ca";
const TOKEN_COLUMNS: &str = "id, tenant, serial_number, thing_name, created_at, expires_at, \
     used_at, revoked_at, created_by";
const AUDIT_COLUMNS: &str = "id, tenant, actor, action, target, source, outcome, detail, at";

impl SqlStore {
    /// Where a reader of a feed table (one read by position: identity
    /// changes, the message outbox) starts: after everything committed now.
    async fn feed_head(&self, table: &'static str) -> Result<IdentityChangeCursor> {
        match self.dialect {
            Dialect::Sqlite => {
                let seq: Option<i64> = sqlx::query(sqlf!("SELECT MAX(seq) AS seq FROM {table}"))
                    .fetch_one(&self.reader)
                    .await?
                    .try_get("seq")?;
                Ok(IdentityChangeCursor {
                    seq: seq.unwrap_or(0),
                    ..IdentityChangeCursor::default()
                })
            }
            Dialect::Postgres => {
                let xmin = pg_snapshot_xmin(&self.reader).await?;
                // Rows of transactions still running at xmin or later that
                // are visible now committed before this head: skip them.
                let rows = sqlx::query(sqlf!("SELECT seq, txid FROM {table} WHERE txid >= $1"))
                    .bind(xmin)
                    .fetch_all(&self.reader)
                    .await?;
                let mut seen = std::collections::HashMap::new();
                for r in &rows {
                    seen.insert(r.try_get::<i64, _>("seq")?, r.try_get::<i64, _>("txid")?);
                }
                Ok(IdentityChangeCursor {
                    seq: 0,
                    txid_floor: xmin,
                    seen,
                })
            }
        }
    }

    /// Rows of a feed table committed after `cursor`, each once however late
    /// its transaction committed, and the cursor past them; the caller keeps
    /// the new cursor only once it has handled the rows.
    async fn feed_rows(
        &self,
        table: &'static str,
        columns: &'static str,
        cursor: &IdentityChangeCursor,
    ) -> Result<(Vec<AnyRow>, IdentityChangeCursor)> {
        let mut next = cursor.clone();
        let rows = match self.dialect {
            Dialect::Sqlite => {
                let rows = sqlx::query(sqlf!(
                    "SELECT {columns} FROM {table} WHERE seq > $1 ORDER BY seq LIMIT 1000"
                ))
                .bind(cursor.seq)
                .fetch_all(&self.reader)
                .await?;
                if let Some(last) = rows.last() {
                    next.seq = last.try_get("seq")?;
                }
                rows
            }
            Dialect::Postgres => {
                // Read xmin first: every transaction below it had finished
                // before the rows are read, so none of them can add a row later.
                let xmin = pg_snapshot_xmin(&self.reader).await?;
                let rows = sqlx::query(sqlf!(
                    "SELECT {columns}, txid FROM {table} WHERE txid >= $1 \
                     ORDER BY txid, seq"
                ))
                .bind(cursor.txid_floor)
                .fetch_all(&self.reader)
                .await?;
                let mut fresh = Vec::with_capacity(rows.len());
                for r in rows {
                    let seq: i64 = r.try_get("seq")?;
                    let txid: i64 = r.try_get("txid")?;
                    if next.seen.insert(seq, txid).is_none() {
                        fresh.push(r);
                    }
                }
                next.txid_floor = next.txid_floor.max(xmin);
                let floor = next.txid_floor;
                next.seen.retain(|_, txid| *txid >= floor);
                fresh
            }
        };
        Ok((rows, next))
    }

    pub async fn open(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Corrupt(format!(
                "unsupported database URL `{}`: use sqlite:// or postgres://",
                url.split(':').next().unwrap_or("")
            )));
        };
        let store = match dialect {
            Dialect::Sqlite => {
                secure_sqlite_files(url)?;
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let setup = |pool: AnyPoolOptions| {
                    pool.after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                // The default 2 MB page cache makes lookups in a
                                // fleet-sized database read system calls.
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                                 PRAGMA cache_size = -16384;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                };
                let writer = setup(AnyPoolOptions::new().max_connections(1).min_connections(1))
                    .connect(&url)
                    .await?;
                // A reader holds a thread, its own copy of the schema and
                // prepared statements, and up to 16 MiB of page cache: one
                // idle for 30 s is closed, so memory a burst took comes back.
                let reader = setup(AnyPoolOptions::new().max_connections(8))
                    .idle_timeout(Duration::from_secs(30))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await?;
                SqlStore {
                    dialect,
                    reader,
                    writer,
                    execution_writer: std::sync::Arc::default(),
                }
            }
            Dialect::Postgres => {
                // As with SQLite's readers, connections a burst opened are
                // closed once idle for 30 s (with their buffers and statement
                // caches); two stay open for the steady state.
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .min_connections(2)
                    .idle_timeout(Duration::from_secs(30))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                SqlStore {
                    dialect,
                    reader: pool.clone(),
                    writer: pool,
                    execution_writer: std::sync::Arc::default(),
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        match self.dialect {
            Dialect::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.writer)
                    .await?
            }
            Dialect::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.writer)
                    .await?
            }
        }
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (BEGIN IMMEDIATE), waiting up to the busy timeout for another process
    /// (the CLI beside the server) to finish: a deferred transaction that
    /// reads first and then writes would instead fail at once with
    /// SQLITE_BUSY(_SNAPSHOT) whenever another connection wrote in between,
    /// since SQLite cannot wait there without risking a deadlock.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.writer.begin().await?,
        })
    }
}

/// Creates the SQLite database file readable by its owner only, and tightens
/// an existing one and its `-wal`/`-shm` files: they hold the whole registry.
/// SQLite gives the `-wal` and `-shm` files it creates later the database
/// file's mode, so they follow.
fn secure_sqlite_files(url: &str) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::str::FromStr;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(());
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let db = options.get_filename().to_path_buf();
    let io = |path: &std::path::Path, e: std::io::Error| {
        StoreError::Io(format!("{}: {e}", path.display()))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&db, e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path, e)),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

// ---- row mapping ----

pub(crate) fn device_from_row(row: &AnyRow) -> Result<Device> {
    let attributes: String = row.try_get("attributes")?;
    let attributes = match serde_json::from_str::<serde_json::Value>(&attributes) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return Err(StoreError::Corrupt(
                "device attributes are not a JSON object".into(),
            ));
        }
    };
    Ok(Device {
        tenant: row.try_get("tenant")?,
        thing_name: row.try_get("thing_name")?,
        serial_number: row.try_get("serial_number")?,
        device_class: row.try_get("device_class")?,
        hardware_revision: row.try_get("hardware_revision")?,
        firmware_version: row.try_get("firmware_version")?,
        attributes,
        thing_groups: serde_json::from_str(&row.try_get::<String, _>("thing_groups")?)
            .map_err(|_| StoreError::Corrupt("device thing groups are not a JSON list".into()))?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}

pub(crate) fn cert_from_row(row: &AnyRow) -> Result<Certificate> {
    let status: String = row.try_get("status")?;
    Ok(Certificate {
        serial: row.try_get("serial")?,
        tenant: row.try_get("tenant")?,
        thing_name: row.try_get("thing_name")?,
        fingerprint: row.try_get("fingerprint")?,
        pem: row.try_get("pem")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        issued_at: row.try_get("issued_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revocation_reason: row.try_get("revocation_reason")?,
        superseded_by: row.try_get("superseded_by")?,
        issuer_ca: row.try_get("issuer_ca")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<EnrolmentToken> {
    Ok(EnrolmentToken {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        serial_number: row.try_get("serial_number")?,
        thing_name: row.try_get("thing_name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        role: parse_role(&row.try_get::<String, _>("role")?)?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn policy_from_row(row: &AnyRow) -> Result<StoredPolicy> {
    Ok(StoredPolicy {
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        document: row.try_get("document")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A shadow row; history rows name their time column `at`.
fn shadow_from_row(row: &AnyRow, time_column: &str) -> Result<StoredShadow> {
    Ok(StoredShadow {
        document: row.try_get("document")?,
        version: row.try_get("version")?,
        updated_at: row.try_get(time_column)?,
    })
}

fn target_from_row(row: &AnyRow) -> Result<PolicyTarget> {
    let kind: String = row.try_get("target_kind")?;
    let target: String = row.try_get("target")?;
    match kind.as_str() {
        "device" => Ok(PolicyTarget::Device(target)),
        "class" => Ok(PolicyTarget::Class(target)),
        other => Err(StoreError::Corrupt(format!("policy target kind `{other}`"))),
    }
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry> {
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        source: row.try_get("source")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("audit outcome `{outcome}`")))?,
        detail: row.try_get("detail")?,
        at: row.try_get("at")?,
    })
}

// ---- statements used inside transactions ----

pub(crate) async fn insert_audit(tx: &mut Transaction<'static, Any>, e: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (tenant, actor, action, target, source, outcome, detail, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&e.tenant)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.source)
    .bind(e.outcome.as_str())
    .bind(&e.detail)
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn device_in_tx(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    thing_name: &str,
) -> Result<Option<Device>> {
    let row = sqlx::query(sqlf!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant = $1 AND thing_name = $2"
    ))
    .bind(tenant)
    .bind(thing_name)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(device_from_row).transpose()
}

async fn cert_in_tx(tx: &mut Transaction<'static, Any>, serial: &str) -> Result<Certificate> {
    let row = sqlx::query(sqlf!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"
    ))
    .bind(serial)
    .fetch_one(&mut **tx)
    .await?;
    cert_from_row(&row)
}

pub(crate) fn not_found(what: &str, id: &str) -> StoreError {
    StoreError::NotFound(format!("{what} `{id}`"))
}

/// Appends `AND <column> <op> $n` and remembers the value to bind.
struct Where {
    sql: String,
    args: Vec<String>,
}

impl Where {
    fn new(base: String) -> Where {
        Where {
            sql: base,
            args: Vec::new(),
        }
    }
    fn and(&mut self, column: &str, op: &str, value: impl Into<String>) {
        self.args.push(value.into());
        self.sql
            .push_str(&format!(" AND {column} {op} ${}", self.args.len()));
    }
    fn next_placeholder(&self) -> usize {
        self.args.len() + 1
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    async fn create_tenant(&self, id: &str, audit: &AuditEntry, now: UnixTime) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO tenants (id, created_at) VALUES ($1, $2)")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    StoreError::Conflict(format!("tenant `{id}` already exists"))
                }
                other => other.into(),
            })?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    async fn get_device(&self, tenant: &str, thing_name: &str) -> Result<Option<Device>> {
        let row = sqlx::query(sqlf!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant = $1 AND thing_name = $2"
        ))
        .bind(tenant)
        .bind(thing_name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn get_device_by_serial(&self, tenant: &str, serial: &str) -> Result<Option<Device>> {
        let row = sqlx::query(sqlf!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant = $1 AND serial_number = $2"
        ))
        .bind(tenant)
        .bind(serial)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn list_devices(
        &self,
        tenant: &str,
        filter: &DeviceFilter,
        page: &Page,
    ) -> Result<Vec<Device>> {
        let mut w = Where::new(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant = $1"
        ));
        w.args.push(tenant.to_string());
        if let Some(s) = filter.status {
            w.and("status", "=", s.as_str());
        }
        if let Some(c) = &filter.device_class {
            w.and("device_class", "=", c.clone());
        }
        if let Some(h) = &filter.hardware_revision {
            w.and("hardware_revision", "=", h.clone());
        }
        if let Some(v) = &filter.firmware_lt {
            w.and("firmware_key", "<", version_sort_key(v));
        }
        if let Some(v) = &filter.firmware_gte {
            w.and("firmware_key", ">=", version_sort_key(v));
        }
        if let Some(v) = &filter.firmware_eq {
            w.and("firmware_key", "=", version_sort_key(v));
        }
        if let Some(after) = &page.after {
            w.and("thing_name", ">", after.clone());
        }
        let sql = format!(
            "{} ORDER BY thing_name LIMIT ${}",
            w.sql,
            w.next_placeholder()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &w.args {
            q = q.bind(a.as_str());
        }
        let rows = q
            .bind(i64::from(page.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn transition_device(
        &self,
        tenant: &str,
        thing_name: &str,
        action: LifecycleAction,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Device> {
        let mut tx = self.begin().await?;
        let device = device_in_tx(&mut tx, tenant, thing_name)
            .await?
            .ok_or_else(|| not_found("device", thing_name))?;
        let next = device.status.apply(action)?;
        sqlx::query(
            "UPDATE devices SET status = $1, updated_at = $2 WHERE tenant = $3 AND thing_name = $4",
        )
        .bind(next.as_str())
        .bind(now)
        .bind(tenant)
        .bind(thing_name)
        .execute(&mut *tx)
        .await?;
        if next == DeviceStatus::Decommissioned {
            sqlx::query(
                "UPDATE certificates SET status = 'revoked', revoked_at = $1, \
                 revocation_reason = 'decommissioned' \
                 WHERE tenant = $2 AND thing_name = $3 AND status <> 'revoked'",
            )
            .bind(now)
            .bind(tenant)
            .bind(thing_name)
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, audit).await?;
        let device = device_in_tx(&mut tx, tenant, thing_name)
            .await?
            .ok_or_else(|| not_found("device", thing_name))?;
        tx.commit().await?;
        Ok(device)
    }

    async fn patch_device_attributes(
        &self,
        tenant: &str,
        thing_name: &str,
        patch: &serde_json::Map<String, serde_json::Value>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Device> {
        let mut tx = self.begin().await?;
        let mut device = device_in_tx(&mut tx, tenant, thing_name)
            .await?
            .ok_or_else(|| not_found("device", thing_name))?;
        for (k, v) in patch {
            if v.is_null() {
                device.attributes.remove(k);
            } else {
                device.attributes.insert(k.clone(), v.clone());
            }
        }
        let json = serde_json::Value::Object(device.attributes.clone()).to_string();
        sqlx::query(
            "UPDATE devices SET attributes = $1, updated_at = $2 WHERE tenant = $3 AND thing_name = $4",
        )
        .bind(json)
        .bind(now)
        .bind(tenant)
        .bind(thing_name)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        device.updated_at = now;
        Ok(device)
    }

    async fn commit_enrolment(&self, c: &EnrolmentCommit) -> Result<Certificate> {
        let mut tx = self.begin().await?;
        if let Some(token_id) = &c.token_id {
            // The token is consumed only if it is still usable at this instant:
            // of two concurrent enrolments with one token, exactly one wins.
            // What it produced is recorded with it, so a retry of this very
            // request can be answered with the same certificate.
            let used = sqlx::query(
                "UPDATE enrolment_tokens SET used_at = $1, certificate_serial = $2, \
                 public_key_sha256 = $3 WHERE id = $4 AND used_at IS NULL \
                 AND revoked_at IS NULL AND expires_at > $1",
            )
            .bind(c.now)
            .bind(&c.certificate.serial)
            .bind(&c.public_key_sha256)
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
            if used.rows_affected() != 1 {
                return Err(StoreError::TokenNotUsable);
            }
        }
        match device_in_tx(&mut tx, &c.tenant, &c.thing_name).await? {
            Some(device) => {
                if device.serial_number != c.serial_number {
                    return Err(StoreError::Conflict(format!(
                        "thing `{}` belongs to serial `{}`",
                        c.thing_name, device.serial_number
                    )));
                }
                device.status.apply(LifecycleAction::Activate)?;
                sqlx::query(
                    "UPDATE devices SET status = 'active', updated_at = $1 \
                     WHERE tenant = $2 AND thing_name = $3",
                )
                .bind(c.now)
                .bind(&c.tenant)
                .bind(&c.thing_name)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                let fw_key = c.profile.firmware_version.as_deref().map(version_sort_key);
                sqlx::query(
                    "INSERT INTO devices (tenant, thing_name, serial_number, device_class, \
                     hardware_revision, firmware_version, firmware_key, attributes, status, \
                     created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', 'active', $8, $8)",
                )
                .bind(&c.tenant)
                .bind(&c.thing_name)
                .bind(&c.serial_number)
                .bind(c.profile.device_class.as_deref())
                .bind(c.profile.hardware_revision.as_deref())
                .bind(c.profile.firmware_version.as_deref())
                .bind(fw_key)
                .bind(c.now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        StoreError::Conflict(format!(
                            "serial `{}` is registered to another thing",
                            c.serial_number
                        ))
                    }
                    other => other.into(),
                })?;
            }
        }
        let new_serial = &c.certificate.serial;
        match &c.supersede {
            Supersede::AllActive => {
                sqlx::query(
                    "UPDATE certificates SET status = 'superseded', superseded_by = $1 \
                     WHERE tenant = $2 AND thing_name = $3 AND status = 'active'",
                )
                .bind(new_serial)
                .bind(&c.tenant)
                .bind(&c.thing_name)
                .execute(&mut *tx)
                .await?;
            }
            Supersede::Certificate(old) => {
                let done = sqlx::query(
                    "UPDATE certificates SET status = 'superseded', superseded_by = $1 \
                     WHERE serial = $2 AND tenant = $3 AND thing_name = $4 AND status = 'active'",
                )
                .bind(new_serial)
                .bind(old)
                .bind(&c.tenant)
                .bind(&c.thing_name)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::CertificateNotActive);
                }
            }
        }
        let cert = &c.certificate;
        sqlx::query(
            "INSERT INTO certificates (serial, tenant, thing_name, fingerprint, pem, not_before, \
             not_after, status, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8)",
        )
        .bind(&cert.serial)
        .bind(&c.tenant)
        .bind(&c.thing_name)
        .bind(&cert.fingerprint)
        .bind(&cert.pem)
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(c.now)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &c.audit).await?;
        tx.commit().await?;
        // Built from what was written rather than read back: one round trip
        // less while holding the (SQLite: only) writer.
        Ok(Certificate {
            serial: cert.serial.clone(),
            tenant: c.tenant.clone(),
            thing_name: c.thing_name.clone(),
            fingerprint: cert.fingerprint.clone(),
            pem: cert.pem.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            status: CertStatus::Active,
            issued_at: c.now,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: None,
            issuer_ca: None,
        })
    }

    async fn get_certificate(&self, serial: &str) -> Result<Option<Certificate>> {
        let row = sqlx::query(sqlf!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    async fn revoked_own_certificates(&self, now: UnixTime) -> Result<Vec<RevokedEntry>> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates \
             WHERE status = 'revoked' AND not_after > $1 AND issuer_ca IS NULL \
             UNION ALL \
             SELECT serial, revoked_at, NULL AS revocation_reason FROM claim_certificates \
             WHERE status = 'revoked' AND not_after > $2 \
             ORDER BY serial",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let revoked_at: Option<i64> = r.try_get("revoked_at")?;
            let reason: Option<String> = r.try_get("revocation_reason")?;
            out.push(RevokedEntry {
                serial: r.try_get("serial")?,
                revoked_at: revoked_at.unwrap_or(0),
                reason: reason.unwrap_or_else(|| "unspecified".into()),
            });
        }
        Ok(out)
    }

    async fn unexpired_own_certificates(&self, now: UnixTime) -> Result<Vec<OwnCertificate>> {
        let rows = sqlx::query(
            "SELECT serial, pem, status, not_after, 'device' AS kind FROM certificates \
             WHERE not_after > $1 AND issuer_ca IS NULL \
             UNION ALL \
             SELECT serial, pem, status, not_after, 'claim' AS kind FROM claim_certificates \
             WHERE not_after > $2 \
             ORDER BY serial",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: String = r.try_get("kind")?;
            out.push(OwnCertificate {
                serial: r.try_get("serial")?,
                pem: r.try_get("pem")?,
                status: r.try_get("status")?,
                not_after: r.try_get("not_after")?,
                kind: if kind == "claim" { "claim" } else { "device" },
            });
        }
        Ok(out)
    }

    async fn list_certificates(
        &self,
        tenant: &str,
        thing_name: Option<&str>,
        status: Option<CertStatus>,
        page: &Page,
    ) -> Result<Vec<Certificate>> {
        let mut w = Where::new(format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE tenant = $1"
        ));
        w.args.push(tenant.to_string());
        if let Some(t) = thing_name {
            w.and("thing_name", "=", t);
        }
        if let Some(s) = status {
            w.and("status", "=", s.as_str());
        }
        if let Some(after) = &page.after {
            w.and("serial", ">", after.clone());
        }
        let sql = format!("{} ORDER BY serial LIMIT ${}", w.sql, w.next_placeholder());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &w.args {
            q = q.bind(a.as_str());
        }
        let rows = q
            .bind(i64::from(page.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn revoke_certificate(
        &self,
        tenant: &str,
        serial: &str,
        reason: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Certificate> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = $1, revocation_reason = $2 \
             WHERE serial = $3 AND tenant = $4 AND status <> 'revoked'",
        )
        .bind(now)
        .bind(reason)
        .bind(serial)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            let exists =
                sqlx::query("SELECT status FROM certificates WHERE serial = $1 AND tenant = $2")
                    .bind(serial)
                    .bind(tenant)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match exists {
                None => not_found("certificate", serial),
                Some(_) => {
                    StoreError::Conflict(format!("certificate `{serial}` is already revoked"))
                }
            });
        }
        insert_audit(&mut tx, audit).await?;
        let cert = cert_in_tx(&mut tx, serial).await?;
        tx.commit().await?;
        Ok(cert)
    }

    async fn create_token(
        &self,
        t: &NewToken,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<EnrolmentToken> {
        let mut tx = self.begin().await?;
        match device_in_tx(&mut tx, &t.tenant, &t.thing_name).await? {
            Some(d) if d.serial_number != t.serial_number => {
                return Err(StoreError::Conflict(format!(
                    "thing `{}` belongs to serial `{}`",
                    t.thing_name, d.serial_number
                )));
            }
            Some(d) if !d.status.may_enrol() => {
                return Err(StoreError::Conflict(format!(
                    "device `{}` is {} and cannot enrol",
                    t.thing_name, d.status
                )));
            }
            Some(_) => {}
            None => {
                let fw_key = t.profile.firmware_version.as_deref().map(version_sort_key);
                sqlx::query(
                    "INSERT INTO devices (tenant, thing_name, serial_number, device_class, \
                     hardware_revision, firmware_version, firmware_key, attributes, status, \
                     created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', 'pending', $8, $8)",
                )
                .bind(&t.tenant)
                .bind(&t.thing_name)
                .bind(&t.serial_number)
                .bind(t.profile.device_class.as_deref())
                .bind(t.profile.hardware_revision.as_deref())
                .bind(t.profile.firmware_version.as_deref())
                .bind(fw_key)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        StoreError::Conflict(format!(
                            "serial `{}` is registered to another thing",
                            t.serial_number
                        ))
                    }
                    other => other.into(),
                })?;
            }
        }
        sqlx::query(
            "INSERT INTO enrolment_tokens (id, tenant, token_hash, serial_number, thing_name, \
             created_at, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.tenant)
        .bind(&t.token_hash)
        .bind(&t.serial_number)
        .bind(&t.thing_name)
        .bind(now)
        .bind(t.expires_at)
        .bind(&t.created_by)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(EnrolmentToken {
            id: t.id.clone(),
            tenant: t.tenant.clone(),
            serial_number: t.serial_number.clone(),
            thing_name: t.thing_name.clone(),
            created_at: now,
            expires_at: t.expires_at,
            used_at: None,
            revoked_at: None,
            created_by: t.created_by.clone(),
        })
    }

    async fn get_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrolmentToken>> {
        let row = sqlx::query(sqlf!(
            "SELECT {TOKEN_COLUMNS} FROM enrolment_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_enrolment(&self, token_id: &str) -> Result<Option<TokenEnrolment>> {
        let row = sqlx::query(
            "SELECT used_at, certificate_serial, public_key_sha256 FROM enrolment_tokens \
             WHERE id = $1",
        )
        .bind(token_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let used_at: Option<UnixTime> = row.try_get("used_at")?;
        let serial: Option<String> = row.try_get("certificate_serial")?;
        let key: Option<String> = row.try_get("public_key_sha256")?;
        let (Some(used_at), Some(serial), Some(public_key_sha256)) = (used_at, serial, key) else {
            return Ok(None);
        };
        let certificate = self.get_certificate(&serial).await?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "token {token_id} names certificate {serial}, which is not recorded"
            ))
        })?;
        Ok(Some(TokenEnrolment {
            used_at,
            public_key_sha256,
            certificate,
        }))
    }

    async fn list_tokens(&self, tenant: &str, page: &Page) -> Result<Vec<EnrolmentToken>> {
        let mut w = Where::new(format!(
            "SELECT {TOKEN_COLUMNS} FROM enrolment_tokens WHERE tenant = $1"
        ));
        w.args.push(tenant.to_string());
        if let Some(after) = &page.after {
            w.and("id", ">", after.clone());
        }
        let sql = format!("{} ORDER BY id LIMIT ${}", w.sql, w.next_placeholder());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &w.args {
            q = q.bind(a.as_str());
        }
        let rows = q
            .bind(i64::from(page.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(
        &self,
        tenant: &str,
        id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<EnrolmentToken> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE enrolment_tokens SET revoked_at = $1 \
             WHERE id = $2 AND tenant = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(sqlf!(
            "SELECT {TOKEN_COLUMNS} FROM enrolment_tokens WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("enrolment token", id))?;
        if done.rows_affected() == 1 {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        token_from_row(&row)
    }

    async fn allowlist_add(
        &self,
        tenant: &str,
        serials: &[String],
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut added = 0;
        for s in serials {
            added += sqlx::query(
                "INSERT INTO allowlist (tenant, serial_number, added_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, serial_number) DO NOTHING",
            )
            .bind(tenant)
            .bind(s)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn allowlist_remove(&self, tenant: &str, serial: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM allowlist WHERE tenant = $1 AND serial_number = $2")
            .bind(tenant)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("allow-list entry", serial));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn allowlist_contains(&self, tenant: &str, serial: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM allowlist WHERE tenant = $1 AND serial_number = $2")
            .bind(tenant)
            .bind(serial)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.is_some())
    }

    async fn list_allowlist(&self, tenant: &str, page: &Page) -> Result<Vec<AllowlistEntry>> {
        let mut w = Where::new(
            "SELECT serial_number, added_at FROM allowlist WHERE tenant = $1".to_string(),
        );
        w.args.push(tenant.to_string());
        if let Some(after) = &page.after {
            w.and("serial_number", ">", after.clone());
        }
        let sql = format!(
            "{} ORDER BY serial_number LIMIT ${}",
            w.sql,
            w.next_placeholder()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &w.args {
            q = q.bind(a.as_str());
        }
        let rows = q
            .bind(i64::from(page.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AllowlistEntry {
                    serial_number: r.try_get("serial_number")?,
                    added_at: r.try_get("added_at")?,
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: &str, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, role, key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.tenant)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(key_hash)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                not_found("tenant", &key.tenant)
            }
            other => other.into(),
        })?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(
            "SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys \
             WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(
        &self,
        tenant: &str,
        id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ApiKey> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND tenant = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT id, tenant, name, role, created_at, revoked_at FROM api_keys \
             WHERE id = $1 AND tenant = $2",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("API key", id))?;
        if done.rows_affected() == 1 {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        api_key_from_row(&row)
    }

    async fn put_policy(
        &self,
        tenant: &str,
        name: &str,
        document: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<StoredPolicy> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO policies (tenant, name, document, version, created_at, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $4) \
             ON CONFLICT (tenant, name) DO UPDATE SET document = $3, \
             version = policies.version + 1, updated_at = $4",
        )
        .bind(tenant)
        .bind(name)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => not_found("tenant", tenant),
            other => other.into(),
        })?;
        insert_audit(&mut tx, audit).await?;
        let row = sqlx::query(
            "SELECT tenant, name, document, version, created_at, updated_at FROM policies \
             WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        policy_from_row(&row)
    }

    async fn get_policy(&self, tenant: &str, name: &str) -> Result<Option<StoredPolicy>> {
        let row = sqlx::query(
            "SELECT tenant, name, document, version, created_at, updated_at FROM policies \
             WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn list_policies(&self, tenant: &str) -> Result<Vec<StoredPolicy>> {
        let rows = sqlx::query(
            "SELECT tenant, name, document, version, created_at, updated_at FROM policies \
             WHERE tenant = $1 ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn attach_policy(
        &self,
        tenant: &str,
        name: &str,
        target: &PolicyTarget,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM policies WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(not_found("policy", name));
        }
        let done = sqlx::query(
            "INSERT INTO policy_attachments (tenant, policy, target_kind, target, attached_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(name)
        .bind(target.kind())
        .bind(target.name())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn detach_policy(
        &self,
        tenant: &str,
        name: &str,
        target: &PolicyTarget,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "DELETE FROM policy_attachments WHERE tenant = $1 AND policy = $2 \
             AND target_kind = $3 AND target = $4",
        )
        .bind(tenant)
        .bind(name)
        .bind(target.kind())
        .bind(target.name())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "attachment of policy `{name}` to {} `{}`",
                target.kind(),
                target.name()
            )));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn policy_targets(&self, tenant: &str, name: &str) -> Result<Vec<PolicyTarget>> {
        let rows = sqlx::query(
            "SELECT target_kind, target FROM policy_attachments WHERE tenant = $1 AND policy = $2 \
             ORDER BY target_kind, target",
        )
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(target_from_row).collect()
    }

    async fn policies_for_device(
        &self,
        tenant: &str,
        thing_name: &str,
        device_class: Option<&str>,
    ) -> Result<Vec<StoredPolicy>> {
        let rows = sqlx::query(
            // Two exact lookups on the target index: written with OR, the
            // planner scanned every attachment of the tenant.
            "SELECT p.tenant, p.name, p.document, p.version, p.created_at, p.updated_at \
             FROM policies p WHERE p.tenant = $1 AND p.name IN ( \
             SELECT policy FROM policy_attachments \
             WHERE tenant = $1 AND target_kind = 'device' AND target = $2 \
             UNION ALL SELECT policy FROM policy_attachments \
             WHERE tenant = $1 AND target_kind = 'class' AND target = $3) ORDER BY p.name",
        )
        .bind(tenant)
        .bind(thing_name)
        .bind(device_class.unwrap_or(""))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn set_device_connected(
        &self,
        tenant: &str,
        thing_name: &str,
        connected: bool,
        now: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET connected = $1, last_seen_at = $2 WHERE tenant = $3 AND thing_name = $4",
        )
        .bind(i64::from(connected))
        .bind(now)
        .bind(tenant)
        .bind(thing_name)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn set_devices_connected(
        &self,
        updates: &[(String, String, bool)],
        now: UnixTime,
    ) -> Result<()> {
        // One statement per chunk: on SQLite's single writer, round trips are the cost.
        for chunk in updates.chunks(300) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = 2 + i * 3;
                    format!(
                        "(CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT))",
                        n,
                        n + 1,
                        n + 2
                    )
                })
                .collect();
            let sql = sqlf!(
                "UPDATE devices SET connected = v.column3, last_seen_at = $1 \
                 FROM (VALUES {}) AS v \
                 WHERE devices.tenant = v.column1 AND devices.thing_name = v.column2",
                values.join(", ")
            );
            let mut q = sqlx::query(sql).bind(now);
            for (tenant, thing, connected) in chunk {
                q = q.bind(tenant).bind(thing).bind(i64::from(*connected));
            }
            q.execute(&self.writer).await?;
        }
        Ok(())
    }

    async fn put_retained(&self, r: &RetainedRecord, now: UnixTime) -> Result<()> {
        sqlx::query(
            "INSERT INTO retained_messages (tenant, topic, payload, qos, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, topic) DO UPDATE SET \
             payload = $3, qos = $4, updated_at = $5",
        )
        .bind(&r.tenant)
        .bind(&r.topic)
        .bind(r.payload.clone())
        .bind(i64::from(r.qos))
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn delete_retained(&self, tenant: &str, topic: &str) -> Result<()> {
        sqlx::query("DELETE FROM retained_messages WHERE tenant = $1 AND topic = $2")
            .bind(tenant)
            .bind(topic)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn load_retained(&self) -> Result<Vec<RetainedRecord>> {
        let rows = sqlx::query("SELECT tenant, topic, payload, qos FROM retained_messages")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RetainedRecord {
                    tenant: r.try_get("tenant")?,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    qos: u8::try_from(r.try_get::<i64, _>("qos")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn identity_change_head(&self) -> Result<IdentityChangeCursor> {
        self.feed_head("identity_changes").await
    }

    async fn identity_changes(
        &self,
        cursor: &mut IdentityChangeCursor,
    ) -> Result<Vec<RevokedIdentity>> {
        const COLUMNS: &str = "seq, tenant, kind, thing_name, serial, ca_id";
        let (rows, next) = self.feed_rows("identity_changes", COLUMNS, cursor).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let tenant: String = r.try_get("tenant")?;
            let kind: String = r.try_get("kind")?;
            let thing_name: Option<String> = r.try_get("thing_name")?;
            let serial: Option<String> = r.try_get("serial")?;
            match (kind.as_str(), thing_name, serial) {
                ("certificate", Some(thing_name), Some(serial)) => out.push(RevokedIdentity {
                    tenant,
                    thing_name,
                    certificate_serial: Some(serial),
                }),
                ("device", Some(thing_name), _) => out.push(RevokedIdentity {
                    tenant,
                    thing_name,
                    certificate_serial: None,
                }),
                ("claim", _, Some(serial)) => out.push(RevokedIdentity {
                    tenant,
                    thing_name: format!(
                        "{}{serial}",
                        onramp_domain::provisioning::CLAIM_IDENTITY_PREFIX
                    ),
                    certificate_serial: Some(serial),
                }),
                ("registered_ca", _, _) => {
                    let ca_id: String = r.try_get("ca_id")?;
                    // The CA's devices whose certificates still work; found
                    // through the issuer index, filtered here.
                    let certs = sqlx::query(
                        "SELECT tenant, thing_name, serial, status FROM certificates \
                         WHERE issuer_ca = $1",
                    )
                    .bind(&ca_id)
                    .fetch_all(&self.reader)
                    .await?;
                    for c in &certs {
                        if c.try_get::<String, _>("status")? != "active" {
                            continue;
                        }
                        out.push(RevokedIdentity {
                            tenant: c.try_get("tenant")?,
                            thing_name: c.try_get("thing_name")?,
                            certificate_serial: Some(c.try_get("serial")?),
                        });
                    }
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "identity change of kind `{kind}` lacks its subject"
                    )));
                }
            }
        }
        *cursor = next;
        Ok(out)
    }

    async fn prune_identity_changes(&self, before: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM identity_changes WHERE created_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn append_outbox(
        &self,
        messages: &[OutboxMessage],
        origin: &str,
        now: UnixTime,
    ) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // Multi-row statements: a job's notifications to thousands of
        // things are one write of a few statements.
        for chunk in messages.chunks(crate::jobs::rows_per_statement(self.dialect, 5)) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let b = i * 5;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut q = sqlx::query(sqlf!(
                "INSERT INTO message_outbox (tenant, topic, payload, origin, created_at) \
                 VALUES {rows}"
            ));
            for m in chunk {
                q = q
                    .bind(&m.tenant)
                    .bind(&m.topic)
                    .bind(&m.payload)
                    .bind(origin)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_head(&self) -> Result<IdentityChangeCursor> {
        self.feed_head("message_outbox").await
    }

    async fn outbox_messages(
        &self,
        cursor: &mut IdentityChangeCursor,
    ) -> Result<Vec<(OutboxMessage, String)>> {
        const COLUMNS: &str = "seq, tenant, topic, payload, origin";
        let (rows, next) = self.feed_rows("message_outbox", COLUMNS, cursor).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((
                OutboxMessage {
                    tenant: r.try_get("tenant")?,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                },
                r.try_get("origin")?,
            ));
        }
        *cursor = next;
        Ok(out)
    }

    async fn prune_outbox(&self, before: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM message_outbox WHERE created_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn claim_task(
        &self,
        name: &str,
        holder: &str,
        now: UnixTime,
        period_secs: i64,
        lease_secs: i64,
    ) -> Result<TaskClaim> {
        sqlx::query(
            "INSERT INTO scheduled_tasks (name, holder, lease_until, last_run_at) \
             VALUES ($1, NULL, 0, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&self.writer)
        .await?;
        // One conditional UPDATE decides: concurrent claimants serialise on
        // the row, and the loser re-reads it and no longer matches.
        let won = sqlx::query(
            "UPDATE scheduled_tasks SET holder = $2, lease_until = $3 \
             WHERE name = $1 AND lease_until <= $4 AND last_run_at + $5 <= $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(lease_secs))
        .bind(now)
        .bind(period_secs)
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1;
        if won {
            return Ok(TaskClaim::Won);
        }
        let row =
            sqlx::query("SELECT lease_until, last_run_at FROM scheduled_tasks WHERE name = $1")
                .bind(name)
                .fetch_one(&self.writer)
                .await?;
        let lease_until: i64 = row.try_get("lease_until")?;
        let last_run_at: i64 = row.try_get("last_run_at")?;
        Ok(TaskClaim::NotBefore(
            lease_until.max(last_run_at.saturating_add(period_secs)),
        ))
    }

    async fn finish_task(&self, name: &str, holder: &str, now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE scheduled_tasks SET holder = NULL, lease_until = 0, last_run_at = $3 \
             WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_shadow(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
    ) -> Result<Option<StoredShadow>> {
        let row = sqlx::query(
            "SELECT document, version, updated_at FROM shadows \
             WHERE tenant = $1 AND thing_name = $2 AND shadow_name = $3",
        )
        .bind(tenant)
        .bind(thing_name)
        .bind(shadow_name)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| shadow_from_row(&r, "updated_at")).transpose()
    }

    async fn put_shadow(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
        expected_version: Option<i64>,
        write: &StoredShadow,
        writer: &str,
        now: UnixTime,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let written = match expected_version {
            Some(v) => {
                sqlx::query(
                    "UPDATE shadows SET document = $1, version = $2, updated_at = $3, writer = $4 \
                     WHERE tenant = $5 AND thing_name = $6 AND shadow_name = $7 AND version = $8",
                )
                .bind(write.document.as_deref())
                .bind(write.version)
                .bind(now)
                .bind(writer)
                .bind(tenant)
                .bind(thing_name)
                .bind(shadow_name)
                .bind(v)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
            None => {
                sqlx::query(
                    "INSERT INTO shadows (tenant, thing_name, shadow_name, document, version, updated_at, writer) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(thing_name)
                .bind(shadow_name)
                .bind(write.document.as_deref())
                .bind(write.version)
                .bind(now)
                .bind(writer)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
        };
        if written != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO shadow_history (tenant, thing_name, shadow_name, version, document, at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(thing_name)
        .bind(shadow_name)
        .bind(write.version)
        .bind(write.document.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_shadows(&self, tenant: &str, thing_name: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT shadow_name FROM shadows WHERE tenant = $1 AND thing_name = $2 \
             AND document IS NOT NULL ORDER BY shadow_name",
        )
        .bind(tenant)
        .bind(thing_name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("shadow_name")
                    .map_err(StoreError::from)
            })
            .collect()
    }

    async fn shadow_history(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
        limit: u32,
    ) -> Result<Vec<StoredShadow>> {
        let rows = sqlx::query(
            "SELECT document, version, at FROM shadow_history WHERE tenant = $1 AND thing_name = $2 \
             AND shadow_name = $3 ORDER BY version DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(thing_name)
        .bind(shadow_name)
        .bind(i64::from(limit.clamp(1, Page::MAX_LIMIT)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| shadow_from_row(r, "at")).collect()
    }

    async fn list_shadow_documents(
        &self,
        tenant: &str,
        shadow_name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredShadow)>> {
        let rows = sqlx::query(
            "SELECT thing_name, document, version, updated_at FROM shadows \
             WHERE tenant = $1 AND shadow_name = $2 AND document IS NOT NULL AND thing_name > $3 \
             ORDER BY thing_name LIMIT $4",
        )
        .bind(tenant)
        .bind(shadow_name)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit.clamp(1, Page::MAX_LIMIT)))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("thing_name")?, shadow_from_row(r, "updated_at")?)))
            .collect()
    }

    async fn shadows_updated_since(
        &self,
        since: UnixTime,
        except_writer: &str,
    ) -> Result<Vec<ShadowChange>> {
        let rows = sqlx::query(
            "SELECT tenant, thing_name, shadow_name, document, version, updated_at FROM shadows \
             WHERE updated_at >= $1 AND writer <> $2",
        )
        .bind(since)
        .bind(except_writer)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ShadowChange {
                    tenant: r.try_get("tenant")?,
                    thing_name: r.try_get("thing_name")?,
                    shadow_name: r.try_get("shadow_name")?,
                    shadow: shadow_from_row(r, "updated_at")?,
                })
            })
            .collect()
    }

    async fn compact_shadow_history(&self, before: UnixTime, keep: i64) -> Result<u64> {
        // A version is dropped when it is older than the window AND not among
        // the newest `keep` versions of its shadow.
        let done = sqlx::query(
            "DELETE FROM shadow_history WHERE at < $1 AND version <= ( \
               SELECT s.version - $2 FROM shadows s WHERE s.tenant = shadow_history.tenant \
               AND s.thing_name = shadow_history.thing_name \
               AND s.shadow_name = shadow_history.shadow_name)",
        )
        .bind(before)
        .bind(keep)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn query_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut w = Where::new(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant = $1"
        ));
        w.args.push(tenant.to_string());
        if let Some(a) = &query.action {
            w.and("action", "=", a.clone());
        }
        if let Some(t) = &query.target {
            w.and("target", "=", t.clone());
        }
        if let Some(a) = &query.actor {
            w.and("actor", "=", a.clone());
        }
        if let Some(o) = query.outcome {
            w.and("outcome", "=", o.as_str());
        }
        // Numeric bounds are bound as integers, after the text arguments.
        let mut sql = w.sql.clone();
        let mut n = w.next_placeholder();
        let mut ints = Vec::new();
        if let Some(since) = query.since {
            sql.push_str(&format!(" AND at >= ${n}"));
            ints.push(since);
            n += 1;
        }
        if let Some(before) = query.before_id {
            sql.push_str(&format!(" AND id < ${n}"));
            ints.push(before);
            n += 1;
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${n}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &w.args {
            q = q.bind(a.as_str());
        }
        for i in ints {
            q = q.bind(i);
        }
        let limit = i64::from(query.limit.clamp(1, Page::MAX_LIMIT));
        let rows = q.bind(limit).fetch_all(&self.reader).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn fleet_gauges(&self, now: UnixTime) -> Result<FleetGauges> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM devices GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        let mut by_status: Vec<(DeviceStatus, i64)> =
            DeviceStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for r in &rows {
            let status = parse_status(&r.try_get::<String, _>("status")?)?;
            let n: i64 = r.try_get("n")?;
            if let Some(slot) = by_status.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = n;
            }
        }
        let day = 86_400;
        let row = sqlx::query(
            "SELECT \
             COALESCE(SUM(CASE WHEN not_after <= $1 THEN 1 ELSE 0 END), 0) AS d7, \
             COALESCE(SUM(CASE WHEN not_after <= $2 THEN 1 ELSE 0 END), 0) AS d14, \
             COUNT(*) AS d30 \
             FROM certificates WHERE status = 'active' AND not_after <= $3",
        )
        .bind(now + 7 * day)
        .bind(now + 14 * day)
        .bind(now + 30 * day)
        .fetch_one(&self.reader)
        .await?;
        Ok(FleetGauges {
            devices_by_status: by_status,
            certs_expiring_7d: row.try_get("d7")?,
            certs_expiring_14d: row.try_get("d14")?,
            certs_expiring_30d: row.try_get("d30")?,
        })
    }

    async fn probe_writable(&self, now: UnixTime) -> Result<()> {
        sqlx::query(
            "INSERT INTO readiness_probe (id, checked_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET checked_at = $1",
        )
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

/// The oldest transaction id still running on the PostgreSQL cluster: every
/// transaction below it has committed or rolled back.
async fn pg_snapshot_xmin(pool: &sqlx::Pool<Any>) -> Result<i64> {
    Ok(
        sqlx::query("SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT AS xmin")
            .fetch_one(pool)
            .await?
            .try_get("xmin")?,
    )
}
