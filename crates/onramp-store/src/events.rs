//! Outbound events (the outbox of webhook deliveries, subscriptions, dead
//! letters), audit-check findings and the connection attempts the checks
//! look at.

use crate::sql::{SqlStore, insert_audit, not_found};
use crate::{Result, StoreError};
use async_trait::async_trait;
use onramp_domain::audit_check::{CheckName, ConnectionObservation, Finding};
use onramp_domain::event::{Event, EventFilter};
use onramp_domain::{AuditEntry, Certificate, Page, UnixTime};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A webhook subscription as stored (no secret: only the salt it is derived from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub id: String,
    pub tenant: String,
    pub url: String,
    /// `*` or comma-separated event type names.
    pub event_types: String,
    pub secret_salt: String,
    pub created_at: UnixTime,
    pub created_by: String,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub event_id: String,
    pub subscription_id: String,
    pub tenant: String,
    pub url: String,
    pub secret_salt: String,
    pub event_type: String,
    pub body: String,
    pub attempts: i64,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    RetryAt { at: UnixTime, error: String },
    Dead { error: String },
}

/// A delivery as listed (dead letters, history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub subscription_id: String,
    pub tenant: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: UnixTime,
    pub last_error: Option<String>,
    pub updated_at: UnixTime,
}

/// A stored audit-check finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRecord {
    pub id: String,
    pub tenant: String,
    pub check: String,
    pub resource: String,
    pub severity: String,
    pub detail: String,
    /// `open` or `resolved`.
    pub status: String,
    pub first_seen_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub suppressed_reason: Option<String>,
    pub suppressed_by: Option<String>,
    pub suppressed_at: Option<UnixTime>,
}

#[async_trait]
pub trait EventStore: Send + Sync {
    async fn create_subscription(&self, s: &SubscriptionRecord, audit: &AuditEntry) -> Result<()>;
    async fn list_subscriptions(&self, tenant: &str) -> Result<Vec<SubscriptionRecord>>;
    /// Removes a subscription and its undelivered deliveries; false when there was none.
    async fn delete_subscription(&self, tenant: &str, id: &str, audit: &AuditEntry)
    -> Result<bool>;

    /// Stores the event with a pending delivery for each of its tenant's
    /// subscriptions that wants its type, in one transaction. `once_keys`
    /// are taken with it: when the first is already taken the event is a
    /// repeat and nothing is written (false); the others are only marked.
    async fn enqueue_event(&self, event: &Event, once_keys: &[String]) -> Result<bool>;
    /// Which of `keys` are taken.
    async fn once_keys_taken(&self, keys: &[String]) -> Result<Vec<String>>;
    /// Events of a tenant, by id after `page.after`.
    async fn list_events(&self, tenant: &str, page: &Page) -> Result<Vec<Event>>;

    /// Pending deliveries due at `now`, oldest first.
    async fn due_deliveries(&self, now: UnixTime, limit: u32) -> Result<Vec<DueDelivery>>;
    /// Records an attempt's outcome and counts it.
    async fn record_delivery(
        &self,
        event_id: &str,
        subscription_id: &str,
        outcome: &DeliveryOutcome,
        now: UnixTime,
    ) -> Result<()>;
    /// A tenant's deliveries, optionally of one status (`dead`: the dead letters).
    async fn list_deliveries(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Puts a dead delivery back to pending (attempts from zero); false when
    /// the tenant has no such dead delivery.
    async fn replay_delivery(
        &self,
        tenant: &str,
        event_id: &str,
        subscription_id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<bool>;

    /// Active device certificates of every tenant expiring before `before`.
    async fn active_certificates_expiring(&self, before: UnixTime) -> Result<Vec<Certificate>>;
    /// Device certificates of every tenant revoked at or after `since`.
    async fn certificates_revoked_since(&self, since: UnixTime) -> Result<Vec<Certificate>>;

    /// Stores what the checks `ran` found for a tenant: new findings and
    /// resolved ones seen again are opened; open findings of those checks
    /// not found now are resolved. Returns the findings that opened now.
    async fn record_findings(
        &self,
        tenant: &str,
        ran: &[CheckName],
        findings: &[Finding],
        now: UnixTime,
    ) -> Result<Vec<FindingRecord>>;
    async fn list_findings(&self, tenant: &str, status: Option<&str>)
    -> Result<Vec<FindingRecord>>;
    /// Suppresses (with a reason) or unsuppresses (None) a finding.
    async fn suppress_finding(
        &self,
        tenant: &str,
        id: &str,
        reason: Option<&str>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<FindingRecord>;

    /// Adds connection attempts, aggregated by certificate, client id,
    /// source and outcome (counts add up; the time span widens).
    async fn record_connection_attempts(
        &self,
        tenant_attempts: &[(String, ConnectionObservation)],
    ) -> Result<()>;
    /// A tenant's attempts last seen at or after `since`.
    async fn connection_attempts(
        &self,
        tenant: &str,
        since: UnixTime,
    ) -> Result<Vec<ConnectionObservation>>;
    /// Forgets attempts last seen before `before`.
    async fn prune_connection_attempts(&self, before: UnixTime) -> Result<u64>;
}

fn subscription_from_row(r: &AnyRow) -> Result<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        url: r.try_get("url")?,
        event_types: r.try_get("event_types")?,
        secret_salt: r.try_get("secret_salt")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        event_id: r.try_get("event_id")?,
        subscription_id: r.try_get("subscription_id")?,
        tenant: r.try_get("tenant")?,
        event_type: r.try_get("event_type")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn finding_from_row(r: &AnyRow) -> Result<FindingRecord> {
    Ok(FindingRecord {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        check: r.try_get("check_name")?,
        resource: r.try_get("resource")?,
        severity: r.try_get("severity")?,
        detail: r.try_get("detail")?,
        status: r.try_get("status")?,
        first_seen_at: r.try_get("first_seen_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        suppressed_reason: r.try_get("suppressed_reason")?,
        suppressed_by: r.try_get("suppressed_by")?,
        suppressed_at: r.try_get("suppressed_at")?,
    })
}

fn observation_from_row(r: &AnyRow) -> Result<ConnectionObservation> {
    Ok(ConnectionObservation {
        serial: r.try_get("serial")?,
        thing_name: r.try_get("thing_name")?,
        client_id: r.try_get("client_id")?,
        source: r.try_get("source")?,
        refused: r.try_get::<i64, _>("refused")? != 0,
        count: r.try_get("attempts")?,
        first_at: r.try_get("first_at")?,
        last_at: r.try_get("last_at")?,
    })
}

const SUB_COLUMNS: &str = "id, tenant, url, event_types, secret_salt, created_at, created_by";
const FINDING_COLUMNS: &str = "id, tenant, check_name, resource, severity, detail, status, \
     first_seen_at, last_seen_at, suppressed_reason, suppressed_by, suppressed_at";
const DELIVERY_COLUMNS: &str = "d.event_id, d.subscription_id, d.tenant, e.event_type, d.status, \
     d.attempts, d.next_attempt_at, d.last_error, d.updated_at";

#[async_trait]
impl EventStore for SqlStore {
    async fn create_subscription(&self, s: &SubscriptionRecord, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO event_subscriptions (id, tenant, url, event_types, secret_salt, \
             created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.url)
        .bind(&s.event_types)
        .bind(&s.secret_salt)
        .bind(s.created_at)
        .bind(&s.created_by)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_subscriptions(&self, tenant: &str) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUB_COLUMNS} FROM event_subscriptions WHERE tenant = $1 ORDER BY created_at, id"
        )))
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn delete_subscription(
        &self,
        tenant: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM event_subscriptions WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM event_deliveries WHERE subscription_id = $1 AND status <> 'delivered'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn enqueue_event(&self, event: &Event, once_keys: &[String]) -> Result<bool> {
        let mut tx = self.begin().await?;
        for (i, key) in once_keys.iter().enumerate() {
            let taken = sqlx::query(
                "INSERT INTO event_once (once_key, event_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (once_key) DO NOTHING",
            )
            .bind(key)
            .bind(&event.id)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if i == 0 && taken == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO events (id, tenant, event_type, subject, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&event.id)
        .bind(&event.tenant)
        .bind(event.event_type.as_str())
        .bind(&event.subject)
        .bind(event.body())
        .bind(event.occurred_at)
        .execute(&mut *tx)
        .await?;
        let subs = sqlx::query("SELECT id, event_types FROM event_subscriptions WHERE tenant = $1")
            .bind(&event.tenant)
            .fetch_all(&mut *tx)
            .await?;
        for r in &subs {
            let id: String = r.try_get("id")?;
            let types: String = r.try_get("event_types")?;
            let wanted = EventFilter::parse(&types).is_some_and(|f| f.matches(event.event_type));
            if !wanted {
                continue;
            }
            sqlx::query(
                "INSERT INTO event_deliveries (event_id, subscription_id, tenant, status, \
                 attempts, next_attempt_at, updated_at) VALUES ($1, $2, $3, 'pending', 0, $4, $4)",
            )
            .bind(&event.id)
            .bind(&id)
            .bind(&event.tenant)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn once_keys_taken(&self, keys: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT once_key FROM event_once WHERE once_key IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for k in chunk {
                q = q.bind(k);
            }
            for r in q.fetch_all(&self.reader).await? {
                out.push(r.try_get("once_key")?);
            }
        }
        Ok(out)
    }

    async fn list_events(&self, tenant: &str, page: &Page) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT body FROM events WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant)
        .bind(page.after.clone().unwrap_or_default())
        .bind(i64::from(page.limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn due_deliveries(&self, now: UnixTime, limit: u32) -> Result<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "SELECT d.event_id, d.subscription_id, d.tenant, d.attempts, s.url, s.secret_salt, \
             e.event_type, e.body FROM event_deliveries d \
             JOIN event_subscriptions s ON s.id = d.subscription_id \
             JOIN events e ON e.id = d.event_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
             ORDER BY d.next_attempt_at, e.created_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueDelivery {
                    event_id: r.try_get("event_id")?,
                    subscription_id: r.try_get("subscription_id")?,
                    tenant: r.try_get("tenant")?,
                    url: r.try_get("url")?,
                    secret_salt: r.try_get("secret_salt")?,
                    event_type: r.try_get("event_type")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn record_delivery(
        &self,
        event_id: &str,
        subscription_id: &str,
        outcome: &DeliveryOutcome,
        now: UnixTime,
    ) -> Result<()> {
        let (status, next, error) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", now, None),
            DeliveryOutcome::RetryAt { at, error } => ("pending", *at, Some(error.as_str())),
            DeliveryOutcome::Dead { error } => ("dead", now, Some(error.as_str())),
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE event_deliveries SET status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, last_error = $3, updated_at = $4 \
             WHERE event_id = $5 AND subscription_id = $6 AND status = 'pending'",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(now)
        .bind(event_id)
        .bind(subscription_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries d JOIN events e ON e.id = d.event_id \
             WHERE d.tenant = $1 AND ($2 = '' OR d.status = $2) \
             ORDER BY d.updated_at DESC, d.event_id LIMIT $3"
        )))
        .bind(tenant)
        .bind(status.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn replay_delivery(
        &self,
        tenant: &str,
        event_id: &str,
        subscription_id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE event_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
             updated_at = $1 WHERE tenant = $2 AND event_id = $3 AND subscription_id = $4 \
             AND status = 'dead'",
        )
        .bind(now)
        .bind(tenant)
        .bind(event_id)
        .bind(subscription_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn active_certificates_expiring(&self, before: UnixTime) -> Result<Vec<Certificate>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM certificates WHERE status = 'active' AND not_after < $1 \
             ORDER BY not_after, serial",
            crate::sql::CERT_COLUMNS
        )))
        .bind(before)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::sql::cert_from_row).collect()
    }

    async fn certificates_revoked_since(&self, since: UnixTime) -> Result<Vec<Certificate>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM certificates WHERE status = 'revoked' AND revoked_at >= $1 \
             ORDER BY revoked_at, serial",
            crate::sql::CERT_COLUMNS
        )))
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::sql::cert_from_row).collect()
    }

    async fn record_findings(
        &self,
        tenant: &str,
        ran: &[CheckName],
        findings: &[Finding],
        now: UnixTime,
    ) -> Result<Vec<FindingRecord>> {
        let mut tx = self.begin().await?;
        let mut opened = Vec::new();
        for f in findings {
            let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {FINDING_COLUMNS} FROM audit_findings \
                 WHERE tenant = $1 AND check_name = $2 AND resource = $3"
            )))
            .bind(tenant)
            .bind(f.check.as_str())
            .bind(&f.resource)
            .fetch_optional(&mut *tx)
            .await?;
            match existing.as_ref().map(finding_from_row).transpose()? {
                Some(mut rec) => {
                    let reopened = rec.status != "open";
                    sqlx::query(
                        "UPDATE audit_findings SET detail = $1, status = 'open', \
                         last_seen_at = $2 WHERE id = $3",
                    )
                    .bind(&f.detail)
                    .bind(now)
                    .bind(&rec.id)
                    .execute(&mut *tx)
                    .await?;
                    if reopened {
                        rec.status = "open".into();
                        rec.detail = f.detail.clone();
                        rec.last_seen_at = now;
                        opened.push(rec);
                    }
                }
                None => {
                    let rec = FindingRecord {
                        id: uuid::Uuid::new_v4().to_string(),
                        tenant: tenant.to_string(),
                        check: f.check.as_str().to_string(),
                        resource: f.resource.clone(),
                        severity: f.check.severity().as_str().to_string(),
                        detail: f.detail.clone(),
                        status: "open".into(),
                        first_seen_at: now,
                        last_seen_at: now,
                        suppressed_reason: None,
                        suppressed_by: None,
                        suppressed_at: None,
                    };
                    sqlx::query(
                        "INSERT INTO audit_findings (id, tenant, check_name, resource, severity, \
                         detail, status, first_seen_at, last_seen_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7)",
                    )
                    .bind(&rec.id)
                    .bind(tenant)
                    .bind(&rec.check)
                    .bind(&rec.resource)
                    .bind(&rec.severity)
                    .bind(&rec.detail)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    opened.push(rec);
                }
            }
        }
        // Open findings of the checks that ran and found nothing this time.
        for check in ran {
            sqlx::query(
                "UPDATE audit_findings SET status = 'resolved' \
                 WHERE tenant = $1 AND check_name = $2 AND status = 'open' AND last_seen_at < $3",
            )
            .bind(tenant)
            .bind(check.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(opened)
    }

    async fn list_findings(
        &self,
        tenant: &str,
        status: Option<&str>,
    ) -> Result<Vec<FindingRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FINDING_COLUMNS} FROM audit_findings WHERE tenant = $1 \
             AND ($2 = '' OR status = $2) ORDER BY check_name, resource"
        )))
        .bind(tenant)
        .bind(status.unwrap_or(""))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(finding_from_row).collect()
    }

    async fn suppress_finding(
        &self,
        tenant: &str,
        id: &str,
        reason: Option<&str>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<FindingRecord> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE audit_findings SET suppressed_reason = $1, suppressed_by = $2, \
             suppressed_at = $3 WHERE tenant = $4 AND id = $5",
        )
        .bind(reason)
        .bind(reason.map(|_| audit.actor.clone()))
        .bind(reason.map(|_| now))
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(not_found("finding", id));
        }
        insert_audit(&mut tx, audit).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FINDING_COLUMNS} FROM audit_findings WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let rec = finding_from_row(&row)?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn record_connection_attempts(
        &self,
        tenant_attempts: &[(String, ConnectionObservation)],
    ) -> Result<()> {
        if tenant_attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (tenant, o) in tenant_attempts {
            sqlx::query(
                "INSERT INTO connection_attempts (tenant, serial, thing_name, client_id, source, \
                 refused, attempts, first_at, last_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (serial, client_id, source, refused) DO UPDATE SET \
                 attempts = connection_attempts.attempts + excluded.attempts, \
                 first_at = CASE WHEN excluded.first_at < connection_attempts.first_at \
                     THEN excluded.first_at ELSE connection_attempts.first_at END, \
                 last_at = CASE WHEN excluded.last_at > connection_attempts.last_at \
                     THEN excluded.last_at ELSE connection_attempts.last_at END",
            )
            .bind(tenant)
            .bind(&o.serial)
            .bind(&o.thing_name)
            .bind(&o.client_id)
            .bind(&o.source)
            .bind(i64::from(o.refused))
            .bind(o.count)
            .bind(o.first_at)
            .bind(o.last_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn connection_attempts(
        &self,
        tenant: &str,
        since: UnixTime,
    ) -> Result<Vec<ConnectionObservation>> {
        let rows = sqlx::query(
            "SELECT serial, thing_name, client_id, source, refused, attempts, first_at, last_at \
             FROM connection_attempts WHERE tenant = $1 AND last_at >= $2 \
             ORDER BY serial, client_id, source",
        )
        .bind(tenant)
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(observation_from_row).collect()
    }

    async fn prune_connection_attempts(&self, before: UnixTime) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM connection_attempts WHERE last_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
