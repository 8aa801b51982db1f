//! Storage for certificate rotation that keeps the thing: certificates
//! waiting for their first connection, their activation (the new certificate
//! recorded, the old one superseded, in one transaction), and the sweep that
//! revokes superseded certificates after their grace period and expires
//! pending ones never used.

use crate::sql::{CERT_COLUMNS, SqlStore, cert_from_row, insert_audit};
use crate::{Result, StoreError};
use async_trait::async_trait;
pub use onramp_domain::rotation::RotationRecord;
use onramp_domain::rotation::{RenewalKind, superseded_in_grace};
use onramp_domain::{AuditEntry, CertStatus, Certificate, Outcome, UnixTime};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationSweep {
    /// Pending certificates never used, now revoked.
    pub expired: Vec<RotationRecord>,
    /// Superseded certificates whose grace period ended, now revoked: (tenant, serial).
    pub revoked_old: Vec<(String, String)>,
}

/// Which things a bulk rotation selects, as the registry can answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationQuery {
    DeviceClass(String),
    /// `None`: Onramp's own issuing CA.
    IssuerCa(Option<String>),
    ExpiringBefore(UnixTime),
}

#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Records a pending rotation. In one transaction: the requesting
    /// certificate must still be active, or superseded by a rotation whose
    /// grace period has not ended at `record.created_at`; any earlier pending rotation of the
    /// thing is replaced (its certificate recorded as revoked); the new one
    /// is inserted; the audit entry written. Returns the replaced serials.
    async fn create_rotation(
        &self,
        record: &RotationRecord,
        audit: &AuditEntry,
    ) -> Result<Vec<String>>;
    async fn get_rotation_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<RotationRecord>>;
    /// The rotation that issued certificate `serial`.
    async fn get_rotation(&self, serial: &str) -> Result<Option<RotationRecord>>;
    async fn list_rotations(&self, tenant: &str, thing_name: &str) -> Result<Vec<RotationRecord>>;
    /// The first connection with a pending certificate: it becomes the
    /// thing's active certificate and every other active one is superseded
    /// by it, in one transaction with the audit entry. Refused (Conflict)
    /// when the rotation is no longer pending or has expired.
    async fn activate_rotation(
        &self,
        serial: &str,
        now: UnixTime,
        revoke_old_at: UnixTime,
        audit: &AuditEntry,
    ) -> Result<Certificate>;
    /// Revokes superseded certificates past their grace period and pending
    /// certificates past their expiry, each with an audit entry.
    async fn sweep_rotations(&self, now: UnixTime) -> Result<RotationSweep>;
    /// Things of the tenant with an active certificate matching the query,
    /// whose device is active.
    async fn rotation_candidates(&self, tenant: &str, query: &RotationQuery)
    -> Result<Vec<String>>;
}

const ROTATION_COLUMNS: &str = "serial, tenant, thing_name, fingerprint, pem, not_before, \
     not_after, old_serial, kind, status, created_at, expires_at, activated_at, revoke_old_at, \
     old_revoked_at";

macro_rules! sqlf {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

fn rotation_from_row(row: &AnyRow) -> Result<RotationRecord> {
    let kind: String = row.try_get("kind")?;
    Ok(RotationRecord {
        serial: row.try_get("serial")?,
        tenant: row.try_get("tenant")?,
        thing_name: row.try_get("thing_name")?,
        fingerprint: row.try_get("fingerprint")?,
        pem: row.try_get("pem")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        old_serial: row.try_get("old_serial")?,
        kind: match kind.as_str() {
            "rotation" => RenewalKind::Rotation,
            "renewal_after_expiry" => RenewalKind::AfterExpiry,
            other => return Err(StoreError::Corrupt(format!("rotation kind `{other}`"))),
        },
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        activated_at: row.try_get("activated_at")?,
        revoke_old_at: row.try_get("revoke_old_at")?,
        old_revoked_at: row.try_get("old_revoked_at")?,
    })
}

/// Records a rotation certificate that will never be used as revoked, so
/// relying parties see it on the CRL and in OCSP.
async fn record_revoked(
    tx: &mut Transaction<'static, Any>,
    r: &RotationRecord,
    now: UnixTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO certificates (serial, tenant, thing_name, fingerprint, pem, not_before, \
         not_after, status, issued_at, revoked_at, revocation_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'revoked', $8, $9, 'cessationOfOperation')",
    )
    .bind(&r.serial)
    .bind(&r.tenant)
    .bind(&r.thing_name)
    .bind(&r.fingerprint)
    .bind(&r.pem)
    .bind(r.not_before)
    .bind(r.not_after)
    .bind(r.created_at)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn system_audit(tenant: &str, action: &str, target: String, detail: String, at: i64) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: tenant.to_string(),
        actor: "system".into(),
        action: action.into(),
        target,
        source: "maintenance".into(),
        outcome: Outcome::Success,
        detail,
        at,
    }
}

#[async_trait]
impl RotationStore for SqlStore {
    async fn create_rotation(&self, r: &RotationRecord, audit: &AuditEntry) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let old = sqlx::query(sqlf!(
            "SELECT {CERT_COLUMNS} FROM certificates \
             WHERE serial = $1 AND tenant = $2 AND thing_name = $3"
        ))
        .bind(&r.old_serial)
        .bind(&r.tenant)
        .bind(&r.thing_name)
        .fetch_optional(&mut *tx)
        .await?;
        let old = old.as_ref().map(cert_from_row).transpose()?;
        let usable = match &old {
            Some(c) if c.status == CertStatus::Active => true,
            // Read in this transaction, so a sweep that revoked it meanwhile is seen.
            Some(c) if c.status == CertStatus::Superseded => match &c.superseded_by {
                Some(by) => sqlx::query(sqlf!(
                    "SELECT {ROTATION_COLUMNS} FROM certificate_rotations WHERE serial = $1"
                ))
                .bind(by)
                .fetch_optional(&mut *tx)
                .await?
                .as_ref()
                .map(rotation_from_row)
                .transpose()?
                .is_some_and(|by| superseded_in_grace(c, &by, r.created_at)),
                None => false,
            },
            _ => false,
        };
        if !usable {
            return Err(StoreError::CertificateNotActive);
        }
        let rows = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations \
             WHERE tenant = $1 AND thing_name = $2 AND status = 'pending'"
        ))
        .bind(&r.tenant)
        .bind(&r.thing_name)
        .fetch_all(&mut *tx)
        .await?;
        let earlier: Vec<RotationRecord> =
            rows.iter().map(rotation_from_row).collect::<Result<_>>()?;
        let mut replaced = Vec::with_capacity(earlier.len());
        for e in &earlier {
            sqlx::query(
                "UPDATE certificate_rotations SET status = 'replaced' \
                 WHERE serial = $1 AND status = 'pending'",
            )
            .bind(&e.serial)
            .execute(&mut *tx)
            .await?;
            record_revoked(&mut tx, e, r.created_at).await?;
            replaced.push(e.serial.clone());
        }
        sqlx::query(sqlf!(
            "INSERT INTO certificate_rotations ({ROTATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, NULL, NULL, NULL)"
        ))
        .bind(&r.serial)
        .bind(&r.tenant)
        .bind(&r.thing_name)
        .bind(&r.fingerprint)
        .bind(&r.pem)
        .bind(r.not_before)
        .bind(r.not_after)
        .bind(&r.old_serial)
        .bind(r.kind.as_str())
        .bind(r.created_at)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("certificate already recorded".into())
            }
            other => other.into(),
        })?;
        let mut audit = audit.clone();
        if !replaced.is_empty() {
            audit.detail = format!("{}; replaces pending {}", audit.detail, replaced.join(", "));
        }
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn get_rotation_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<RotationRecord>> {
        let row = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations WHERE fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rotation_from_row).transpose()
    }

    async fn get_rotation(&self, serial: &str) -> Result<Option<RotationRecord>> {
        let row = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rotation_from_row).transpose()
    }

    async fn list_rotations(&self, tenant: &str, thing_name: &str) -> Result<Vec<RotationRecord>> {
        let rows = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations \
             WHERE tenant = $1 AND thing_name = $2 ORDER BY created_at, serial"
        ))
        .bind(tenant)
        .bind(thing_name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rotation_from_row).collect()
    }

    async fn activate_rotation(
        &self,
        serial: &str,
        now: UnixTime,
        revoke_old_at: UnixTime,
        audit: &AuditEntry,
    ) -> Result<Certificate> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&mut *tx)
        .await?;
        let r = match row.as_ref().map(rotation_from_row).transpose()? {
            Some(r) => r,
            None => return Err(StoreError::NotFound(format!("rotation `{serial}`"))),
        };
        if r.status != "pending" || r.expires_at <= now {
            return Err(StoreError::Conflict(format!(
                "the rotation certificate is {}",
                if r.status == "pending" {
                    "expired"
                } else {
                    r.status.as_str()
                }
            )));
        }
        // A rotation asked for with a certificate an operator has since
        // revoked never activates: whoever holds that key may not hand
        // itself a new one. (Revoked because its grace period ended is no
        // such case: that is the device asking again in time.)
        let requester =
            sqlx::query("SELECT status, revocation_reason FROM certificates WHERE serial = $1")
                .bind(&r.old_serial)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(row) = requester {
            let status: String = row.try_get("status")?;
            let reason: Option<String> = row.try_get("revocation_reason")?;
            if status == "revoked" && reason.as_deref() != Some("superseded") {
                return Err(StoreError::Conflict(
                    "the certificate that asked for this rotation was revoked".into(),
                ));
            }
        }
        sqlx::query(
            "UPDATE certificate_rotations SET status = 'active', activated_at = $1, \
             revoke_old_at = $2 WHERE serial = $3 AND status = 'pending'",
        )
        .bind(now)
        .bind(revoke_old_at)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE certificates SET status = 'superseded', superseded_by = $1 \
             WHERE tenant = $2 AND thing_name = $3 AND status = 'active'",
        )
        .bind(serial)
        .bind(&r.tenant)
        .bind(&r.thing_name)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO certificates (serial, tenant, thing_name, fingerprint, pem, not_before, \
             not_after, status, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8)",
        )
        .bind(&r.serial)
        .bind(&r.tenant)
        .bind(&r.thing_name)
        .bind(&r.fingerprint)
        .bind(&r.pem)
        .bind(r.not_before)
        .bind(r.not_after)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        let cert = sqlx::query(sqlf!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_one(&mut *tx)
        .await?;
        let cert = cert_from_row(&cert)?;
        tx.commit().await?;
        Ok(cert)
    }

    async fn sweep_rotations(&self, now: UnixTime) -> Result<RotationSweep> {
        let mut tx = self.begin().await?;
        let mut sweep = RotationSweep::default();
        let rows = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations \
             WHERE status = 'pending' AND expires_at <= $1 LIMIT 500"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows
            .iter()
            .map(rotation_from_row)
            .collect::<Result<Vec<_>>>()?
        {
            sqlx::query(
                "UPDATE certificate_rotations SET status = 'expired' \
                 WHERE serial = $1 AND status = 'pending'",
            )
            .bind(&r.serial)
            .execute(&mut *tx)
            .await?;
            record_revoked(&mut tx, &r, now).await?;
            insert_audit(
                &mut tx,
                &system_audit(
                    &r.tenant,
                    "certificate.rotation_expired",
                    format!("device:{}", r.thing_name),
                    format!("pending certificate {} was never used; revoked", r.serial),
                    now,
                ),
            )
            .await?;
            sweep.expired.push(r);
        }
        let rows = sqlx::query(sqlf!(
            "SELECT {ROTATION_COLUMNS} FROM certificate_rotations \
             WHERE status = 'active' AND old_revoked_at IS NULL AND revoke_old_at <= $1 LIMIT 500"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows
            .iter()
            .map(rotation_from_row)
            .collect::<Result<Vec<_>>>()?
        {
            sqlx::query("UPDATE certificate_rotations SET old_revoked_at = $1 WHERE serial = $2")
                .bind(now)
                .bind(&r.serial)
                .execute(&mut *tx)
                .await?;
            // Only a certificate still superseded: one revoked meanwhile by
            // an operator keeps its own reason and time.
            let done = sqlx::query(
                "UPDATE certificates SET status = 'revoked', revoked_at = $1, \
                 revocation_reason = 'superseded' \
                 WHERE tenant = $2 AND thing_name = $3 AND superseded_by = $4 \
                 AND status = 'superseded'",
            )
            .bind(now)
            .bind(&r.tenant)
            .bind(&r.thing_name)
            .bind(&r.serial)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                insert_audit(
                    &mut tx,
                    &system_audit(
                        &r.tenant,
                        "certificate.rotation_grace_ended",
                        format!("device:{}", r.thing_name),
                        format!(
                            "certificate {} superseded by {} revoked after the grace period",
                            r.old_serial, r.serial
                        ),
                        now,
                    ),
                )
                .await?;
                sweep
                    .revoked_old
                    .push((r.tenant.clone(), r.old_serial.clone()));
            }
        }
        tx.commit().await?;
        Ok(sweep)
    }

    async fn rotation_candidates(
        &self,
        tenant: &str,
        query: &RotationQuery,
    ) -> Result<Vec<String>> {
        let base = "SELECT DISTINCT c.thing_name FROM certificates c JOIN devices d \
                    ON d.tenant = c.tenant AND d.thing_name = c.thing_name \
                    WHERE c.tenant = $1 AND c.status = 'active' AND d.status = 'active'";
        let q = match query {
            RotationQuery::DeviceClass(class) => sqlx::query(sqlf!(
                "{base} AND d.device_class = $2 ORDER BY c.thing_name"
            ))
            .bind(tenant.to_string())
            .bind(class.clone()),
            RotationQuery::IssuerCa(None) => sqlx::query(sqlf!(
                "{base} AND c.issuer_ca IS NULL ORDER BY c.thing_name"
            ))
            .bind(tenant.to_string()),
            RotationQuery::IssuerCa(Some(ca)) => {
                sqlx::query(sqlf!("{base} AND c.issuer_ca = $2 ORDER BY c.thing_name"))
                    .bind(tenant.to_string())
                    .bind(ca.clone())
            }
            RotationQuery::ExpiringBefore(at) => {
                sqlx::query(sqlf!("{base} AND c.not_after <= $2 ORDER BY c.thing_name"))
                    .bind(tenant.to_string())
                    .bind(*at)
            }
        };
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("thing_name").map_err(Into::into))
            .collect()
    }
}
