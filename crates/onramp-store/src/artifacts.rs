//! Storage for OTA artifacts and the public keys of their signers.

use crate::sql::{SqlStore, insert_audit};
use crate::{Result, StoreError};
use async_trait::async_trait;
use onramp_domain::{AuditEntry, Page, UnixTime};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A signer: a named public key (SubjectPublicKeyInfo PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerRecord {
    pub tenant: String,
    pub name: String,
    /// `ed25519` or `ecdsa-p256`.
    pub algorithm: String,
    pub public_key_pem: String,
    pub created_at: UnixTime,
    pub created_by: String,
}

/// An artifact's metadata; its bytes are in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub tenant: String,
    /// Lowercase hex SHA-256 of the bytes: the artifact's id.
    pub sha256: String,
    pub name: String,
    pub size: i64,
    /// The signer that verified the signature; None for an unsigned artifact.
    pub signer: Option<String>,
    /// The detached signature, base64.
    pub signature: Option<String>,
    pub created_at: UnixTime,
    pub created_by: String,
}

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Adds a signer; Conflict when the name is taken.
    async fn add_signer(&self, signer: &SignerRecord, audit: &AuditEntry) -> Result<()>;
    async fn get_signer(&self, tenant: &str, name: &str) -> Result<Option<SignerRecord>>;
    async fn list_signers(&self, tenant: &str) -> Result<Vec<SignerRecord>>;
    /// Removes a signer; false when there was none.
    async fn delete_signer(&self, tenant: &str, name: &str, audit: &AuditEntry) -> Result<bool>;
    /// Records an artifact. The same bytes uploaded again keep the first
    /// record, except that a signed upload signs an unsigned one. Returns
    /// the record as stored.
    async fn put_artifact(
        &self,
        artifact: &ArtifactRecord,
        audit: &AuditEntry,
    ) -> Result<ArtifactRecord>;
    async fn get_artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactRecord>>;
    /// Artifacts in SHA-256 order after `page.after`.
    async fn list_artifacts(&self, tenant: &str, page: &Page) -> Result<Vec<ArtifactRecord>>;
    /// Jobs whose document mentions the artifact in a placeholder and of
    /// which the thing has an execution that is neither CANCELED nor
    /// REMOVED. The caller confirms the reference by parsing the document.
    async fn jobs_granting_artifact(
        &self,
        tenant: &str,
        thing_name: &str,
        sha256: &str,
    ) -> Result<Vec<String>>;
}

fn signer_from_row(r: &AnyRow) -> Result<SignerRecord> {
    Ok(SignerRecord {
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        algorithm: r.try_get("algorithm")?,
        public_key_pem: r.try_get("public_key_pem")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

fn artifact_from_row(r: &AnyRow) -> Result<ArtifactRecord> {
    Ok(ArtifactRecord {
        tenant: r.try_get("tenant")?,
        sha256: r.try_get("sha256")?,
        name: r.try_get("name")?,
        size: r.try_get("size")?,
        signer: r.try_get("signer")?,
        signature: r.try_get("signature")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

const SIGNER_COLUMNS: &str = "tenant, name, algorithm, public_key_pem, created_at, created_by";
const ARTIFACT_COLUMNS: &str =
    "tenant, sha256, name, size, signer, signature, created_at, created_by";

#[async_trait]
impl ArtifactStore for SqlStore {
    async fn add_signer(&self, s: &SignerRecord, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO artifact_signers (tenant, name, algorithm, public_key_pem, created_at, \
             created_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(&s.tenant)
        .bind(&s.name)
        .bind(&s.algorithm)
        .bind(&s.public_key_pem)
        .bind(s.created_at)
        .bind(&s.created_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "signer `{}` already exists",
                s.name
            )));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_signer(&self, tenant: &str, name: &str) -> Result<Option<SignerRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIGNER_COLUMNS} FROM artifact_signers WHERE tenant = $1 AND name = $2"
        )))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(signer_from_row).transpose()
    }

    async fn list_signers(&self, tenant: &str) -> Result<Vec<SignerRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIGNER_COLUMNS} FROM artifact_signers WHERE tenant = $1 ORDER BY name"
        )))
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(signer_from_row).collect()
    }

    async fn delete_signer(&self, tenant: &str, name: &str, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM artifact_signers WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn put_artifact(&self, a: &ArtifactRecord, audit: &AuditEntry) -> Result<ArtifactRecord> {
        let mut tx = self.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO artifacts ({ARTIFACT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant, sha256) DO UPDATE SET signer = excluded.signer, \
             signature = excluded.signature \
             WHERE artifacts.signature IS NULL AND excluded.signature IS NOT NULL"
        )))
        .bind(&a.tenant)
        .bind(&a.sha256)
        .bind(&a.name)
        .bind(a.size)
        .bind(a.signer.as_deref())
        .bind(a.signature.as_deref())
        .bind(a.created_at)
        .bind(&a.created_by)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 AND sha256 = $2"
        )))
        .bind(&a.tenant)
        .bind(&a.sha256)
        .fetch_one(&mut *tx)
        .await?;
        let stored = artifact_from_row(&row)?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_artifact(&self, tenant: &str, sha256: &str) -> Result<Option<ArtifactRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 AND sha256 = $2"
        )))
        .bind(tenant)
        .bind(sha256)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(artifact_from_row).transpose()
    }

    async fn list_artifacts(&self, tenant: &str, page: &Page) -> Result<Vec<ArtifactRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE tenant = $1 AND sha256 > $2 \
             ORDER BY sha256 LIMIT $3"
        )))
        .bind(tenant)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(i64::from(page.limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    async fn jobs_granting_artifact(
        &self,
        tenant: &str,
        thing_name: &str,
        sha256: &str,
    ) -> Result<Vec<String>> {
        // The SHA-256 is hex (checked by the caller), so it holds no LIKE
        // wildcard; the pattern finds `${onramp:artifact-<kind>:<sha>}`.
        if !onramp_domain::artifact::valid_sha256(sha256) {
            return Ok(Vec::new());
        }
        let pattern = format!("%${{onramp:artifact-%:{sha256}}}%");
        let rows = sqlx::query(
            "SELECT DISTINCT e.job_id AS job_id FROM job_executions e \
             JOIN jobs j ON j.tenant = e.tenant AND j.job_id = e.job_id \
             WHERE e.tenant = $1 AND e.thing_name = $2 \
             AND e.status NOT IN ('CANCELED', 'REMOVED') AND j.document LIKE $3 \
             ORDER BY e.job_id",
        )
        .bind(tenant)
        .bind(thing_name)
        .bind(pattern)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("job_id")?))
            .collect()
    }
}
