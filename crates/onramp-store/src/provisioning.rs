//! Storage for fleet provisioning and JITP: templates and their versions,
//! claim certificates, certificates waiting for RegisterThing, registered
//! manufacturer CAs, and the one transaction that registers a device.

use crate::sql::{
    CERT_COLUMNS, DEVICE_COLUMNS, Dialect, SqlStore, cert_from_row, device_from_row, insert_audit,
    not_found,
};
use crate::{NewCertificate, Result, StoreError};
use async_trait::async_trait;
use onramp_domain::template::{ExistingThing, ThingPlan, apply_thing_overrides};
use onramp_domain::{
    AuditEntry, CaStatus, CertStatus, Certificate, ClaimCertificate, LifecycleAction,
    PendingCertificate, ProvisioningTemplateRecord, RegisteredCa, TemplateKind, TemplateVersion,
    UnixTime,
};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A policy a registration attaches to the new thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyToAttach {
    pub name: String,
    /// Created (or given a new version when it differs) before attaching;
    /// `None` attaches an existing policy, which must exist.
    pub document: Option<String>,
}

/// The ownership token presented with RegisterThing, and the reply to keep
/// for a retry of the same request.
#[derive(Debug, Clone)]
pub struct OwnershipClaim {
    pub token_hash: String,
    pub request_digest: String,
    pub response: String,
}

/// Everything a registration writes, committed as one transaction: the
/// thing (created or updated per its override settings), the certificate
/// (activated), earlier certificates superseded, policies attached, the
/// ownership token consumed and the audit entry.
#[derive(Debug, Clone)]
pub struct RegistrationCommit {
    pub tenant: String,
    pub serial_number: String,
    pub thing: ThingPlan,
    pub certificate: NewCertificate,
    pub certificate_status: CertStatus,
    pub issuer_ca: Option<String>,
    /// Fleet provisioning: the pending certificate's token. JITP: `None`.
    pub ownership: Option<OwnershipClaim>,
    pub policies: Vec<PolicyToAttach>,
    pub audit: AuditEntry,
    pub now: UnixTime,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// The thing was created.
    Created,
    /// An existing thing was updated per its override settings.
    Updated,
    /// The same request was already registered: its stored reply.
    Replayed(String),
}

#[async_trait]
pub trait ProvisioningStore: Send + Sync {
    // ---- templates ----
    async fn create_template(
        &self,
        template: &ProvisioningTemplateRecord,
        body: &str,
        audit: &AuditEntry,
    ) -> Result<()>;
    /// Stores a new version; it becomes the default when `set_default`.
    async fn add_template_version(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        set_default: bool,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ProvisioningTemplateRecord>;
    async fn set_template_default_version(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ProvisioningTemplateRecord>;
    /// Replaces description, enabled, allow/deny lists and hook.
    async fn update_template_settings(
        &self,
        template: &ProvisioningTemplateRecord,
        audit: &AuditEntry,
    ) -> Result<()>;
    async fn get_template(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<ProvisioningTemplateRecord>>;
    async fn get_template_version(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<TemplateVersion>>;
    async fn list_templates(&self, tenant: &str) -> Result<Vec<ProvisioningTemplateRecord>>;
    async fn list_template_versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<TemplateVersion>>;

    // ---- claim certificates ----
    async fn create_claim_certificate(
        &self,
        claim: &ClaimCertificate,
        audit: &AuditEntry,
    ) -> Result<()>;
    async fn get_claim_certificate(&self, serial: &str) -> Result<Option<ClaimCertificate>>;
    async fn list_claim_certificates(&self, tenant: &str) -> Result<Vec<ClaimCertificate>>;
    async fn revoke_claim_certificate(
        &self,
        tenant: &str,
        serial: &str,
        replaced_by: Option<&str>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<()>;
    /// Active claim certificates (all tenants) expiring before `before`.
    async fn claim_certificates_expiring(&self, before: UnixTime) -> Result<Vec<ClaimCertificate>>;

    // ---- certificates waiting for RegisterThing ----
    async fn create_pending_certificate(
        &self,
        pending: &PendingCertificate,
        token_hash: &str,
    ) -> Result<()>;
    async fn get_pending_by_token(&self, token_hash: &str) -> Result<Option<PendingCertificate>>;
    /// Deletes pending certificates whose token expired; returns those that
    /// were never registered (each gets an audit entry: revoked, purged).
    async fn purge_expired_pending(&self, now: UnixTime) -> Result<Vec<PendingCertificate>>;
    async fn commit_registration(&self, commit: &RegistrationCommit)
    -> Result<RegistrationOutcome>;

    // ---- registered CAs ----
    async fn register_ca(&self, ca: &RegisteredCa, audit: &AuditEntry) -> Result<()>;
    async fn get_registered_ca(&self, id: &str) -> Result<Option<RegisteredCa>>;
    /// `None`: every tenant's (the TLS layer trusts them all).
    async fn list_registered_cas(&self, tenant: Option<&str>) -> Result<Vec<RegisteredCa>>;
    async fn update_registered_ca(&self, ca: &RegisteredCa, audit: &AuditEntry) -> Result<()>;
    async fn get_certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Certificate>>;
}

const TEMPLATE_COLUMNS: &str = "tenant, name, kind, description, enabled, default_version, \
     latest_version, serial_allow, serial_deny, hook_url, created_at, updated_at";
const CLAIM_COLUMNS: &str = "serial, tenant, template, fingerprint, pem, not_before, not_after, \
     status, created_at, revoked_at, created_by, replaced_by";
const PENDING_COLUMNS: &str = "serial, tenant, fingerprint, pem, not_before, not_after, \
     claim_serial, token_expires_at, created_at, registered_at, request_digest, response";
const CA_COLUMNS: &str = "id, tenant, pem, subject, not_after, status, auto_registration, \
     template, created_at, updated_at";

macro_rules! sqlf {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

fn template_from_row(row: &AnyRow) -> Result<ProvisioningTemplateRecord> {
    let kind: String = row.try_get("kind")?;
    let allow: Option<String> = row.try_get("serial_allow")?;
    let deny: String = row.try_get("serial_deny")?;
    let list = |s: &str| -> Result<Vec<String>> {
        serde_json::from_str(s).map_err(|_| StoreError::Corrupt("template serial list".into()))
    };
    Ok(ProvisioningTemplateRecord {
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        kind: match kind.as_str() {
            "fleet" => TemplateKind::Fleet,
            "jitp" => TemplateKind::Jitp,
            other => return Err(StoreError::Corrupt(format!("template kind `{other}`"))),
        },
        description: row.try_get("description")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        default_version: row.try_get("default_version")?,
        latest_version: row.try_get("latest_version")?,
        serial_allow: allow.as_deref().map(list).transpose()?,
        serial_deny: list(&deny)?,
        hook_url: row.try_get("hook_url")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<TemplateVersion> {
    Ok(TemplateVersion {
        version: row.try_get("version")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

fn claim_from_row(row: &AnyRow) -> Result<ClaimCertificate> {
    let status: String = row.try_get("status")?;
    Ok(ClaimCertificate {
        serial: row.try_get("serial")?,
        tenant: row.try_get("tenant")?,
        template: row.try_get("template")?,
        certificate_id: row.try_get("fingerprint")?,
        pem: row.try_get("pem")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_by: row.try_get("created_by")?,
        replaced_by: row.try_get("replaced_by")?,
    })
}

fn pending_from_row(row: &AnyRow) -> Result<PendingCertificate> {
    Ok(PendingCertificate {
        serial: row.try_get("serial")?,
        tenant: row.try_get("tenant")?,
        certificate_id: row.try_get("fingerprint")?,
        pem: row.try_get("pem")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        claim_serial: row.try_get("claim_serial")?,
        token_expires_at: row.try_get("token_expires_at")?,
        created_at: row.try_get("created_at")?,
        registered_at: row.try_get("registered_at")?,
        request_digest: row.try_get("request_digest")?,
        response: row.try_get("response")?,
    })
}

fn ca_from_row(row: &AnyRow) -> Result<RegisteredCa> {
    let status: String = row.try_get("status")?;
    Ok(RegisteredCa {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        pem: row.try_get("pem")?,
        subject: row.try_get("subject")?,
        not_after: row.try_get("not_after")?,
        status: CaStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("CA status `{status}`")))?,
        auto_registration: row.try_get::<i64, _>("auto_registration")? != 0,
        template: row.try_get("template")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn map_unique(e: sqlx::Error, what: String) -> StoreError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            StoreError::NotFound("tenant".into())
        }
        other => other.into(),
    }
}

impl SqlStore {
    /// `FOR UPDATE` on PostgreSQL, where writers run concurrently: a row read
    /// to be written back must stay locked until the commit. SQLite has one
    /// writer, so its transactions are serial already.
    fn lock_clause(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    async fn template_in_tx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        tenant: &str,
        name: &str,
    ) -> Result<ProvisioningTemplateRecord> {
        let lock = self.lock_clause();
        let row = sqlx::query(sqlf!(
            "SELECT {TEMPLATE_COLUMNS} FROM provisioning_templates WHERE tenant = $1 AND name = $2{lock}"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        match row {
            Some(r) => template_from_row(&r),
            None => Err(not_found("template", name)),
        }
    }
}

#[async_trait]
impl ProvisioningStore for SqlStore {
    async fn create_template(
        &self,
        t: &ProvisioningTemplateRecord,
        body: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO provisioning_templates (tenant, name, kind, description, enabled, \
             default_version, latest_version, serial_allow, serial_deny, hook_url, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, 1, 1, $6, $7, $8, $9, $9)",
        )
        .bind(&t.tenant)
        .bind(&t.name)
        .bind(t.kind.as_str())
        .bind(&t.description)
        .bind(i64::from(t.enabled))
        .bind(t.serial_allow.as_deref().map(json_list))
        .bind(json_list(&t.serial_deny))
        .bind(t.hook_url.as_deref())
        .bind(t.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, format!("template `{}` already exists", t.name)))?;
        sqlx::query(
            "INSERT INTO provisioning_template_versions (tenant, name, version, body, created_at) \
             VALUES ($1, $2, 1, $3, $4)",
        )
        .bind(&t.tenant)
        .bind(&t.name)
        .bind(body)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_template_version(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        set_default: bool,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ProvisioningTemplateRecord> {
        let mut tx = self.begin().await?;
        let mut t = self.template_in_tx(&mut tx, tenant, name).await?;
        t.latest_version += 1;
        if set_default {
            t.default_version = t.latest_version;
        }
        t.updated_at = now;
        sqlx::query(
            "INSERT INTO provisioning_template_versions (tenant, name, version, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(name)
        .bind(t.latest_version)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, format!("template `{name}` changed concurrently")))?;
        sqlx::query(
            "UPDATE provisioning_templates SET latest_version = $1, default_version = $2, \
             updated_at = $3 WHERE tenant = $4 AND name = $5",
        )
        .bind(t.latest_version)
        .bind(t.default_version)
        .bind(now)
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(t)
    }

    async fn set_template_default_version(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ProvisioningTemplateRecord> {
        let mut tx = self.begin().await?;
        let mut t = self.template_in_tx(&mut tx, tenant, name).await?;
        let exists = sqlx::query(
            "SELECT 1 FROM provisioning_template_versions WHERE tenant = $1 AND name = $2 \
             AND version = $3",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(not_found("template version", &format!("{name} v{version}")));
        }
        sqlx::query(
            "UPDATE provisioning_templates SET default_version = $1, updated_at = $2 \
             WHERE tenant = $3 AND name = $4",
        )
        .bind(version)
        .bind(now)
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        t.default_version = version;
        t.updated_at = now;
        Ok(t)
    }

    async fn update_template_settings(
        &self,
        t: &ProvisioningTemplateRecord,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE provisioning_templates SET description = $1, enabled = $2, serial_allow = $3, \
             serial_deny = $4, hook_url = $5, updated_at = $6 WHERE tenant = $7 AND name = $8",
        )
        .bind(&t.description)
        .bind(i64::from(t.enabled))
        .bind(t.serial_allow.as_deref().map(json_list))
        .bind(json_list(&t.serial_deny))
        .bind(t.hook_url.as_deref())
        .bind(t.updated_at)
        .bind(&t.tenant)
        .bind(&t.name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(not_found("template", &t.name));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_template(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<ProvisioningTemplateRecord>> {
        let row = sqlx::query(sqlf!(
            "SELECT {TEMPLATE_COLUMNS} FROM provisioning_templates WHERE tenant = $1 AND name = $2"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(template_from_row).transpose()
    }

    async fn get_template_version(
        &self,
        tenant: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<TemplateVersion>> {
        let row = sqlx::query(
            "SELECT version, body, created_at FROM provisioning_template_versions \
             WHERE tenant = $1 AND name = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn list_templates(&self, tenant: &str) -> Result<Vec<ProvisioningTemplateRecord>> {
        let rows = sqlx::query(sqlf!(
            "SELECT {TEMPLATE_COLUMNS} FROM provisioning_templates WHERE tenant = $1 ORDER BY name"
        ))
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(template_from_row).collect()
    }

    async fn list_template_versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<TemplateVersion>> {
        let rows = sqlx::query(
            "SELECT version, body, created_at FROM provisioning_template_versions \
             WHERE tenant = $1 AND name = $2 ORDER BY version",
        )
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn create_claim_certificate(
        &self,
        c: &ClaimCertificate,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO claim_certificates (serial, tenant, template, fingerprint, pem, \
             not_before, not_after, status, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9)",
        )
        .bind(&c.serial)
        .bind(&c.tenant)
        .bind(&c.template)
        .bind(&c.certificate_id)
        .bind(&c.pem)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(c.created_at)
        .bind(&c.created_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, "claim certificate already recorded".into()))?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_claim_certificate(&self, serial: &str) -> Result<Option<ClaimCertificate>> {
        let row = sqlx::query(sqlf!(
            "SELECT {CLAIM_COLUMNS} FROM claim_certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(claim_from_row).transpose()
    }

    async fn list_claim_certificates(&self, tenant: &str) -> Result<Vec<ClaimCertificate>> {
        let rows = sqlx::query(sqlf!(
            "SELECT {CLAIM_COLUMNS} FROM claim_certificates WHERE tenant = $1 \
             ORDER BY created_at, serial"
        ))
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn revoke_claim_certificate(
        &self,
        tenant: &str,
        serial: &str,
        replaced_by: Option<&str>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE claim_certificates SET status = 'revoked', revoked_at = $1, replaced_by = $2 \
             WHERE tenant = $3 AND serial = $4 AND status = 'active'",
        )
        .bind(now)
        .bind(replaced_by)
        .bind(tenant)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(not_found("active claim certificate", serial));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_certificates_expiring(&self, before: UnixTime) -> Result<Vec<ClaimCertificate>> {
        let rows = sqlx::query(sqlf!(
            "SELECT {CLAIM_COLUMNS} FROM claim_certificates WHERE status = 'active' \
             AND not_after < $1 ORDER BY not_after"
        ))
        .bind(before)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(claim_from_row).collect()
    }

    async fn create_pending_certificate(
        &self,
        p: &PendingCertificate,
        token_hash: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO pending_certificates (serial, tenant, fingerprint, pem, not_before, \
             not_after, claim_serial, token_hash, token_expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&p.serial)
        .bind(&p.tenant)
        .bind(&p.certificate_id)
        .bind(&p.pem)
        .bind(p.not_before)
        .bind(p.not_after)
        .bind(&p.claim_serial)
        .bind(token_hash)
        .bind(p.token_expires_at)
        .bind(p.created_at)
        .execute(&self.writer)
        .await
        .map_err(|e| map_unique(e, "certificate already recorded".into()))?;
        Ok(())
    }

    async fn get_pending_by_token(&self, token_hash: &str) -> Result<Option<PendingCertificate>> {
        // The row was committed before its token was handed out, so a reader sees it.
        let row = sqlx::query(sqlf!(
            "SELECT {PENDING_COLUMNS} FROM pending_certificates WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(pending_from_row).transpose()
    }

    async fn purge_expired_pending(&self, now: UnixTime) -> Result<Vec<PendingCertificate>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(sqlf!(
            "SELECT {PENDING_COLUMNS} FROM pending_certificates WHERE token_expires_at <= $1"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let expired: Vec<PendingCertificate> =
            rows.iter().map(pending_from_row).collect::<Result<_>>()?;
        sqlx::query("DELETE FROM pending_certificates WHERE token_expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let unregistered: Vec<PendingCertificate> = expired
            .into_iter()
            .filter(|p| p.registered_at.is_none())
            .collect();
        for p in &unregistered {
            insert_audit(
                &mut tx,
                &AuditEntry {
                    id: 0,
                    tenant: p.tenant.clone(),
                    actor: "system".into(),
                    action: "certificate.pending_expired".into(),
                    target: format!("certificate:{}", p.serial),
                    source: "maintenance".into(),
                    outcome: onramp_domain::Outcome::Success,
                    detail: "ownership token expired unused; certificate revoked and purged".into(),
                    at: now,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(unregistered)
    }

    async fn commit_registration(&self, c: &RegistrationCommit) -> Result<RegistrationOutcome> {
        let mut tx = self.begin().await?;
        if let Some(own) = &c.ownership {
            // Consumes the token only if it is unused and unexpired at this
            // instant and belongs to this certificate: of two concurrent
            // RegisterThing calls with one token, exactly one registers.
            let done = sqlx::query(
                "UPDATE pending_certificates SET registered_at = $1, request_digest = $2, \
                 response = $3 WHERE token_hash = $4 AND serial = $5 \
                 AND registered_at IS NULL AND token_expires_at > $1",
            )
            .bind(c.now)
            .bind(&own.request_digest)
            .bind(&own.response)
            .bind(&own.token_hash)
            .bind(&c.certificate.serial)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                let row = sqlx::query(sqlf!(
                    "SELECT {PENDING_COLUMNS} FROM pending_certificates WHERE token_hash = $1"
                ))
                .bind(&own.token_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let pending = row.as_ref().map(pending_from_row).transpose()?;
                return match pending {
                    Some(p)
                        if p.registered_at.is_some()
                            && p.token_expires_at > c.now
                            && p.request_digest.as_deref() == Some(&own.request_digest) =>
                    {
                        Ok(RegistrationOutcome::Replayed(
                            p.response.unwrap_or_default(),
                        ))
                    }
                    _ => Err(StoreError::TokenNotUsable),
                };
            }
        }
        let thing_name = &c.thing.thing_name;
        // The common case is a new thing: try the insert first and fall back
        // to reading and updating the existing one. Fewer statements matter
        // here, since SQLite has one writer.
        let attributes = serde_json::to_string(&c.thing.attributes)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO devices (tenant, thing_name, serial_number, device_class, \
             attributes, thing_groups, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&c.tenant)
        .bind(thing_name)
        .bind(&c.serial_number)
        .bind(c.thing.thing_type.as_deref())
        .bind(attributes)
        .bind(json_list(&c.thing.thing_groups))
        .bind(c.now)
        .execute(&mut *tx)
        .await?;
        let outcome = if inserted.rows_affected() == 1 {
            RegistrationOutcome::Created
        } else {
            let lock = self.lock_clause();
            let row = sqlx::query(sqlf!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant = $1 AND thing_name = $2{lock}"
            ))
            .bind(&c.tenant)
            .bind(thing_name)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(device) = row.as_ref().map(device_from_row).transpose()? else {
                return Err(StoreError::Conflict(format!(
                    "serial `{}` is registered to another thing",
                    c.serial_number
                )));
            };
            if device.serial_number != c.serial_number {
                return Err(StoreError::Conflict(format!(
                    "thing `{thing_name}` belongs to serial `{}`",
                    device.serial_number
                )));
            }
            device.status.apply(LifecycleAction::Activate)?;
            let existing = ExistingThing {
                attributes: device
                    .attributes
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect(),
                thing_type: device.device_class.clone(),
                thing_groups: device.thing_groups.clone(),
            };
            let next = apply_thing_overrides(&existing, &c.thing)
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
            // Keys the template left alone keep their stored JSON values
            // (a number stays a number); changed ones are template strings.
            let merged: serde_json::Map<String, serde_json::Value> = next
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match (existing.attributes.get(k), device.attributes.get(k)) {
                        (Some(old), Some(stored)) if old == v => stored.clone(),
                        _ => serde_json::Value::String(v.clone()),
                    };
                    (k.clone(), value)
                })
                .collect();
            let attributes =
                serde_json::to_string(&merged).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "UPDATE devices SET status = 'active', attributes = $1, device_class = $2, \
                 thing_groups = $3, updated_at = $4 WHERE tenant = $5 AND thing_name = $6",
            )
            .bind(attributes)
            .bind(next.thing_type.as_deref())
            .bind(json_list(&next.thing_groups))
            .bind(c.now)
            .bind(&c.tenant)
            .bind(thing_name)
            .execute(&mut *tx)
            .await?;
            // One identity per device: a new registration replaces earlier certificates.
            sqlx::query(
                "UPDATE certificates SET status = 'superseded', superseded_by = $1 \
                 WHERE tenant = $2 AND thing_name = $3 AND status IN ('active', 'inactive')",
            )
            .bind(&c.certificate.serial)
            .bind(&c.tenant)
            .bind(thing_name)
            .execute(&mut *tx)
            .await?;
            RegistrationOutcome::Updated
        };
        let cert = &c.certificate;
        sqlx::query(
            "INSERT INTO certificates (serial, tenant, thing_name, fingerprint, pem, not_before, \
             not_after, status, issued_at, issuer_ca) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&cert.serial)
        .bind(&c.tenant)
        .bind(thing_name)
        .bind(&cert.fingerprint)
        .bind(&cert.pem)
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(c.certificate_status.as_str())
        .bind(c.now)
        .bind(c.issuer_ca.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, "certificate already registered".into()))?;
        for p in &c.policies {
            match &p.document {
                None => {
                    let exists =
                        sqlx::query("SELECT 1 FROM policies WHERE tenant = $1 AND name = $2")
                            .bind(&c.tenant)
                            .bind(&p.name)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_none() {
                        return Err(not_found("policy", &p.name));
                    }
                }
                Some(doc) => {
                    // Created once; a changed document becomes a new version.
                    sqlx::query(
                        "INSERT INTO policies (tenant, name, document, version, created_at, \
                         updated_at) VALUES ($1, $2, $3, 1, $4, $4) \
                         ON CONFLICT (tenant, name) DO UPDATE SET document = $3, \
                         version = policies.version + 1, updated_at = $4 \
                         WHERE policies.document <> $3",
                    )
                    .bind(&c.tenant)
                    .bind(&p.name)
                    .bind(doc)
                    .bind(c.now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(
                "INSERT INTO policy_attachments (tenant, policy, target_kind, target, attached_at) \
                 VALUES ($1, $2, 'device', $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&c.tenant)
            .bind(&p.name)
            .bind(thing_name)
            .bind(c.now)
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, &c.audit).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn register_ca(&self, ca: &RegisteredCa, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO registered_cas (id, tenant, pem, subject, not_after, status, \
             auto_registration, template, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&ca.id)
        .bind(&ca.tenant)
        .bind(&ca.pem)
        .bind(&ca.subject)
        .bind(ca.not_after)
        .bind(ca.status.as_str())
        .bind(i64::from(ca.auto_registration))
        .bind(ca.template.as_deref())
        .bind(ca.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_unique(e, format!("CA `{}` is already registered", ca.id)))?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_registered_ca(&self, id: &str) -> Result<Option<RegisteredCa>> {
        let row = sqlx::query(sqlf!(
            "SELECT {CA_COLUMNS} FROM registered_cas WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(ca_from_row).transpose()
    }

    async fn list_registered_cas(&self, tenant: Option<&str>) -> Result<Vec<RegisteredCa>> {
        let rows = match tenant {
            Some(t) => sqlx::query(sqlf!(
                "SELECT {CA_COLUMNS} FROM registered_cas WHERE tenant = $1 ORDER BY created_at, id"
            ))
            .bind(t)
            .fetch_all(&self.reader)
            .await?,
            None => {
                sqlx::query(sqlf!(
                    "SELECT {CA_COLUMNS} FROM registered_cas ORDER BY created_at, id"
                ))
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter().map(ca_from_row).collect()
    }

    async fn update_registered_ca(&self, ca: &RegisteredCa, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE registered_cas SET status = $1, auto_registration = $2, template = $3, \
             updated_at = $4 WHERE id = $5 AND tenant = $6",
        )
        .bind(ca.status.as_str())
        .bind(i64::from(ca.auto_registration))
        .bind(ca.template.as_deref())
        .bind(ca.updated_at)
        .bind(&ca.id)
        .bind(&ca.tenant)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(not_found("registered CA", &ca.id));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Certificate>> {
        let row = sqlx::query(sqlf!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }
}
