//! Outbound events: webhook subscriptions, the outbox the scheduler
//! delivers from (signed, retried with back-off, dead-lettered), the
//! certificate-expiry scan, and audit checks whose findings become events.

use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::audit_check::{
    AuditSnapshot, CaSummary, CheckName, CheckSettings, ConnectionObservation, OTHER_CLIENTS,
    run_checks,
};
use onramp_domain::event::{
    self, EVENT_ID_HEADER, EVENT_TYPE_HEADER, Event, EventFilter, EventType, RetryDecision,
    RetryPolicy, SIGNATURE_HEADER,
};
use onramp_domain::{CertStatus, DeviceFilter, Page, Permission, UnixTime};
use onramp_store::{DeliveryOutcome, DeliveryRecord, FindingRecord, SubscriptionRecord};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Tunables of outbound events.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub retry: RetryPolicy,
    /// How long one delivery may take.
    pub timeout: Duration,
    /// Deliveries sent per run of the delivery task.
    pub batch: u32,
    /// Seconds between runs of the scheduled audit checks; 0: never scheduled.
    pub audit_interval_secs: i64,
    pub checks: CheckSettings,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(10),
            batch: 100,
            audit_interval_secs: 86_400,
            checks: CheckSettings::default(),
        }
    }
}

/// A webhook subscription as shown (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSubscription {
    pub id: String,
    pub url: String,
    /// `*` or comma-separated event types.
    pub event_types: String,
    pub created_at: UnixTime,
    pub created_by: String,
}

/// A new subscription and its signing secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedSubscription {
    #[serde(flatten)]
    pub subscription: EventSubscription,
    pub secret: String,
}

/// A delivery of one event to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDelivery {
    pub event_id: String,
    pub subscription_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: UnixTime,
    pub last_error: Option<String>,
    pub updated_at: UnixTime,
}

/// An audit-check finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditFinding {
    pub id: String,
    pub check: String,
    pub resource: String,
    pub severity: String,
    pub detail: String,
    /// `open` or `resolved`.
    pub status: String,
    pub first_seen_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub suppressed: bool,
    pub suppressed_reason: Option<String>,
    pub suppressed_by: Option<String>,
}

impl From<SubscriptionRecord> for EventSubscription {
    fn from(r: SubscriptionRecord) -> Self {
        EventSubscription {
            id: r.id,
            url: r.url,
            event_types: r.event_types,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

impl From<DeliveryRecord> for EventDelivery {
    fn from(r: DeliveryRecord) -> Self {
        EventDelivery {
            event_id: r.event_id,
            subscription_id: r.subscription_id,
            event_type: r.event_type,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            updated_at: r.updated_at,
        }
    }
}

impl From<FindingRecord> for AuditFinding {
    fn from(r: FindingRecord) -> Self {
        AuditFinding {
            id: r.id,
            check: r.check,
            resource: r.resource,
            severity: r.severity,
            detail: r.detail,
            status: r.status,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            suppressed: r.suppressed_reason.is_some(),
            suppressed_reason: r.suppressed_reason,
            suppressed_by: r.suppressed_by,
        }
    }
}

/// Connection attempts seen by this node and not yet written.
#[derive(Default)]
pub(crate) struct AttemptBuffer {
    map: HashMap<AttemptKey, ConnectionObservation>,
    /// Distinct (client id, source) pairs buffered per (tenant, certificate, refused).
    per_certificate: HashMap<(String, String, bool), usize>,
}

type AttemptKey = (String, String, String, String, bool);

impl AttemptBuffer {
    /// Counts one more attempt of an already buffered kind.
    fn count_again(&mut self, key: &AttemptKey, at: UnixTime) -> bool {
        match self.map.get_mut(key) {
            Some(o) => {
                o.count += 1;
                o.last_at = at;
                true
            }
            None => false,
        }
    }
}

/// Distinct client ids and sources recorded per certificate and window
/// (5 s); more are folded into one [`OTHER_CLIENTS`] row. Two are enough for
/// the shared-key check, and a client inventing a client id per connection
/// would otherwise write a row per connection and make that check quadratic.
const RECORDED_CLIENTS_PER_CERTIFICATE: usize = 8;

/// A flood of distinct attempts is counted, not remembered without bound.
const MAX_BUFFERED_ATTEMPTS: usize = 10_000;

fn bad(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::BadRequest(e.to_string())
}

fn check_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("the URL must be http:// or https:// with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("the URL must not carry credentials"));
    }
    Ok(())
}

impl Onramp {
    /// A subscription's signing secret: derived from the server's hashing
    /// key and the subscription's salt, so the database never holds it.
    fn subscription_secret(&self, id: &str, salt: &str) -> String {
        format!(
            "whsec_{}",
            self.inner
                .hasher
                .hash(&format!("event-subscription:{id}:{salt}"))
        )
    }

    pub async fn create_event_subscription(
        &self,
        caller: &Caller,
        url: &str,
        event_types: &str,
    ) -> Result<CreatedSubscription> {
        caller.require(Permission::ManageApiKeys)?;
        check_url(url)?;
        let filter = EventFilter::parse(event_types).ok_or_else(|| {
            bad(format!(
                "event types must be `*` or a comma-separated list of: {}",
                EventType::ALL.map(EventType::as_str).join(", ")
            ))
        })?;
        let now = now();
        let record = SubscriptionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant: caller.tenant.clone(),
            url: url.to_string(),
            event_types: filter.as_string(),
            secret_salt: uuid::Uuid::new_v4().simple().to_string(),
            created_at: now,
            created_by: caller.actor.clone(),
        };
        let audit = caller.audit(
            "event.subscribe",
            format!("subscription:{}", record.id),
            format!("{} {}", record.event_types, record.url),
            now,
        );
        self.inner
            .store
            .create_subscription(&record, &audit)
            .await?;
        let secret = self.subscription_secret(&record.id, &record.secret_salt);
        Ok(CreatedSubscription {
            subscription: record.into(),
            secret,
        })
    }

    pub async fn list_event_subscriptions(
        &self,
        caller: &Caller,
    ) -> Result<Vec<EventSubscription>> {
        caller.require(Permission::ReadAudit)?;
        Ok(self
            .inner
            .store
            .list_subscriptions(&caller.tenant)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn delete_event_subscription(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require(Permission::ManageApiKeys)?;
        let audit = caller.audit(
            "event.unsubscribe",
            format!("subscription:{id}"),
            String::new(),
            now(),
        );
        if self
            .inner
            .store
            .delete_subscription(&caller.tenant, id, &audit)
            .await?
        {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!("subscription `{id}`")))
        }
    }

    pub async fn list_events(&self, caller: &Caller, page: &Page) -> Result<Vec<Event>> {
        caller.require(Permission::ReadAudit)?;
        Ok(self.inner.store.list_events(&caller.tenant, page).await?)
    }

    /// The tenant's deliveries, of one status (`dead`: the dead letters) or all.
    pub async fn list_event_deliveries(
        &self,
        caller: &Caller,
        status: Option<&str>,
    ) -> Result<Vec<EventDelivery>> {
        caller.require(Permission::ReadAudit)?;
        if let Some(s) = status
            && !matches!(s, "pending" | "delivered" | "dead")
        {
            return Err(bad("status must be pending, delivered or dead"));
        }
        Ok(self
            .inner
            .store
            .list_deliveries(&caller.tenant, status, 1000)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Sends a dead-lettered delivery again (from attempt one).
    pub async fn replay_event_delivery(
        &self,
        caller: &Caller,
        event_id: &str,
        subscription_id: &str,
    ) -> Result<()> {
        caller.require(Permission::ManageDevices)?;
        let now = now();
        let audit = caller.audit(
            "event.replay",
            format!("event:{event_id}"),
            format!("subscription {subscription_id}"),
            now,
        );
        if self
            .inner
            .store
            .replay_delivery(&caller.tenant, event_id, subscription_id, &audit, now)
            .await?
        {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!(
                "dead delivery of event `{event_id}` to subscription `{subscription_id}`"
            )))
        }
    }

    /// Stores an event for delivery; with `once_keys`, only if the first is
    /// new. Returns whether it was stored.
    pub async fn emit_event(
        &self,
        tenant: &str,
        event_type: EventType,
        subject: String,
        data: serde_json::Value,
        once_keys: &[String],
    ) -> Result<bool> {
        let event = Event {
            // Time-ordered ids keep listings in emission order.
            id: format!("{:012x}-{}", now(), uuid::Uuid::new_v4().simple()),
            tenant: tenant.to_string(),
            event_type,
            subject,
            occurred_at: now(),
            data,
        };
        let stored = self.inner.store.enqueue_event(&event, once_keys).await?;
        if stored {
            metrics::counter!("onramp_events_emitted_total", "type" => event_type.as_str())
                .increment(1);
        }
        Ok(stored)
    }

    /// Sends the deliveries that are due; returns how many were attempted.
    pub async fn deliver_events(&self) -> Result<usize> {
        let settings = &self.inner.settings.events;
        let due = self
            .inner
            .store
            .due_deliveries(now(), settings.batch)
            .await?;
        let n = due.len();
        for d in due {
            let secret = self.subscription_secret(&d.subscription_id, &d.secret_salt);
            let at = now();
            let signature = event::sign(secret.as_bytes(), at, d.body.as_bytes());
            let result = self
                .inner
                .http
                .post(&d.url)
                .timeout(settings.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .header(EVENT_ID_HEADER, &d.event_id)
                .header(EVENT_TYPE_HEADER, &d.event_type)
                .body(d.body.clone())
                .send()
                .await;
            let error = match result {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                Err(e) => Some(if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    "connection failed".to_string()
                }),
            };
            let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
            let (outcome, label) = match error {
                None => (DeliveryOutcome::Delivered, "delivered"),
                Some(error) => match settings.retry.after_failure(attempts, now()) {
                    RetryDecision::RetryAt(at) => (DeliveryOutcome::RetryAt { at, error }, "retry"),
                    RetryDecision::DeadLetter => {
                        tracing::warn!(event = %d.event_id, subscription = %d.subscription_id,
                            %error, "event delivery gave up; it is in the dead-letter list");
                        (DeliveryOutcome::Dead { error }, "dead")
                    }
                },
            };
            metrics::counter!("onramp_event_deliveries_total", "outcome" => label).increment(1);
            self.inner
                .store
                .record_delivery(&d.event_id, &d.subscription_id, &outcome, now())
                .await?;
        }
        Ok(n)
    }

    /// Emits the certificate-expiry events that are due: one warning per
    /// threshold (30, 14, 7 days) and one `certificate.expired` per
    /// certificate, each once; and `ca.expiring` for CAs within the audit
    /// window. Returns how many events were stored.
    pub async fn scan_certificate_expiry(&self) -> Result<usize> {
        let now = now();
        let max = i64::from(event::EXPIRY_THRESHOLDS_DAYS[0]) * 86_400;
        let certs = self
            .inner
            .store
            .active_certificates_expiring(now + max)
            .await?;
        metrics::gauge!("onramp_certificates_expired_active")
            .set(certs.iter().filter(|c| c.not_after <= now).count() as f64);
        let mut emitted = 0;
        // Revocations whose event was not stored when they committed (a
        // decommissioned device's certificates, a process that died between
        // the two writes): the once-key keeps those already sent from repeating.
        for c in self
            .inner
            .store
            .certificates_revoked_since(now - 7 * 86_400)
            .await?
        {
            let reason = c
                .revocation_reason
                .clone()
                .unwrap_or_else(|| "unspecified".into());
            if self.emit_certificate_revoked(&c, &reason).await {
                emitted += 1;
            }
        }
        for c in &certs {
            let subject = format!("certificate:{}", c.serial);
            if c.not_after <= now {
                let key = event::once_key(EventType::CertificateExpired, &c.serial, "");
                let data = serde_json::json!({
                    "serial": c.serial, "thingName": c.thing_name, "notAfter": c.not_after,
                });
                if self
                    .emit_event(
                        &c.tenant,
                        EventType::CertificateExpired,
                        subject,
                        data,
                        &[key],
                    )
                    .await?
                {
                    emitted += 1;
                }
                continue;
            }
            let keys: Vec<String> = event::EXPIRY_THRESHOLDS_DAYS
                .iter()
                .map(|d| event::once_key(EventType::CertificateExpiring, &c.serial, &d.to_string()))
                .collect();
            let taken = self.inner.store.once_keys_taken(&keys).await?;
            let sent: Vec<u32> = event::EXPIRY_THRESHOLDS_DAYS
                .into_iter()
                .zip(&keys)
                .filter(|(_, k)| taken.contains(k))
                .map(|(d, _)| d)
                .collect();
            let Some((days, also)) = event::due_expiry_threshold(c.not_after, now, &sent) else {
                continue;
            };
            let mut once = vec![event::once_key(
                EventType::CertificateExpiring,
                &c.serial,
                &days.to_string(),
            )];
            once.extend(also.iter().map(|d| {
                event::once_key(EventType::CertificateExpiring, &c.serial, &d.to_string())
            }));
            let data =
                event::certificate_expiring_data(&c.serial, &c.thing_name, c.not_after, days, now);
            if self
                .emit_event(
                    &c.tenant,
                    EventType::CertificateExpiring,
                    subject,
                    data,
                    &once,
                )
                .await?
            {
                emitted += 1;
            }
        }
        Ok(emitted)
    }

    /// `certificate.revoked`, once per certificate; whether it was stored now.
    pub(crate) async fn emit_certificate_revoked(
        &self,
        c: &onramp_domain::Certificate,
        reason: &str,
    ) -> bool {
        let key = event::once_key(EventType::CertificateRevoked, &c.serial, "");
        let data = serde_json::json!({
            "serial": c.serial, "thingName": c.thing_name, "reason": reason,
            "revokedAt": c.revoked_at,
        });
        match self
            .emit_event(
                &c.tenant,
                EventType::CertificateRevoked,
                format!("certificate:{}", c.serial),
                data,
                &[key],
            )
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(serial = %c.serial, error = %e,
                    "could not store the revocation event; the hourly scan stores it");
                false
            }
        }
    }

    /// `claim.expiring`, once per claim certificate.
    pub(crate) async fn emit_claim_expiring(
        &self,
        c: &onramp_domain::ClaimCertificate,
    ) -> Result<()> {
        let key = event::once_key(EventType::ClaimExpiring, &c.serial, "");
        let data = serde_json::json!({
            "serial": c.serial, "template": c.template, "notAfter": c.not_after,
            "daysLeft": event::days_left(c.not_after, now()),
        });
        self.emit_event(
            &c.tenant,
            EventType::ClaimExpiring,
            format!("claim:{}", c.serial),
            data,
            &[key],
        )
        .await?;
        Ok(())
    }

    // ---- connection attempts ----

    /// Notes an MQTT connection attempt for the audit checks (kept in memory,
    /// written by [`Onramp::flush_connection_attempts`]).
    pub fn observe_connection(
        &self,
        tenant: &str,
        serial: &str,
        thing_name: &str,
        client_id: &str,
        source: &str,
        refused: bool,
    ) {
        let at = now();
        let Ok(mut buf) = self.inner.attempts.lock() else {
            return;
        };
        let mut key = (
            tenant.to_string(),
            serial.to_string(),
            client_id.to_string(),
            source.to_string(),
            refused,
        );
        if buf.count_again(&key, at) {
            return;
        }
        let certificate = (tenant.to_string(), serial.to_string(), refused);
        let recorded = buf.per_certificate.get(&certificate).copied().unwrap_or(0);
        let (client_id, source) = if recorded >= RECORDED_CLIENTS_PER_CERTIFICATE {
            key.2 = OTHER_CLIENTS.to_string();
            key.3 = OTHER_CLIENTS.to_string();
            if buf.count_again(&key, at) {
                return;
            }
            (OTHER_CLIENTS, OTHER_CLIENTS)
        } else {
            (client_id, source)
        };
        if buf.map.len() >= MAX_BUFFERED_ATTEMPTS {
            metrics::counter!("onramp_connection_attempts_dropped_total").increment(1);
            return;
        }
        *buf.per_certificate.entry(certificate).or_default() += 1;
        buf.map.insert(
            key,
            ConnectionObservation {
                serial: serial.to_string(),
                thing_name: thing_name.to_string(),
                client_id: client_id.to_string(),
                source: source.to_string(),
                refused,
                count: 1,
                first_at: at,
                last_at: at,
            },
        );
    }

    /// Notes a refused connection of a registered certificate that is no
    /// longer active (revoked, superseded): the device is still trying.
    pub async fn observe_refused_connection(
        &self,
        chain: &[Vec<u8>],
        client_id: &str,
        source: &str,
    ) {
        let Some(leaf) = chain.first() else { return };
        let Ok(info) = onramp_pki::parse_cert(leaf) else {
            return;
        };
        if let Ok(Some(cert)) = self.inner.store.get_certificate(&info.serial).await
            && cert.status != CertStatus::Active
        {
            metrics::counter!("onramp_mqtt_inactive_certificate_attempts_total").increment(1);
            self.observe_connection(
                &cert.tenant,
                &cert.serial,
                &cert.thing_name,
                client_id,
                source,
                true,
            );
        }
    }

    /// Writes the buffered connection attempts.
    pub async fn flush_connection_attempts(&self) -> Result<()> {
        let taken: Vec<(String, ConnectionObservation)> = {
            let Ok(mut buf) = self.inner.attempts.lock() else {
                return Ok(());
            };
            buf.per_certificate = HashMap::new();
            std::mem::take(&mut buf.map)
                .into_iter()
                .map(|((tenant, ..), o)| (tenant, o))
                .collect()
        };
        self.inner.store.record_connection_attempts(&taken).await?;
        Ok(())
    }

    // ---- audit checks ----

    /// Runs the audit checks (all, or `only`) for the caller's tenant.
    pub async fn run_audit_checks_as(
        &self,
        caller: &Caller,
        only: &[String],
    ) -> Result<Vec<AuditFinding>> {
        caller.require(Permission::ReadAudit)?;
        let mut checks = Vec::new();
        for name in only {
            checks.push(CheckName::parse(name).ok_or_else(|| {
                bad(format!(
                    "unknown check `{name}`; checks: {}",
                    CheckName::ALL.map(CheckName::as_str).join(", ")
                ))
            })?);
        }
        self.run_audit_checks(&caller.tenant, &checks).await?;
        self.list_audit_findings(caller, Some("open")).await
    }

    /// The scheduled run: every tenant, every check.
    pub async fn run_scheduled_audit_checks(&self) -> Result<()> {
        for tenant in self.inner.store.list_tenants().await? {
            self.run_audit_checks(&tenant, &[]).await?;
        }
        let keep = self.inner.settings.events.checks.lookback_secs.max(86_400) * 7;
        self.inner
            .store
            .prune_connection_attempts(now() - keep)
            .await?;
        Ok(())
    }

    async fn audit_snapshot(&self, tenant: &str, since: UnixTime) -> Result<AuditSnapshot> {
        let store = &self.inner.store;
        let mut certificates = Vec::new();
        let mut after = None;
        loop {
            let page = Page::new(after.clone(), Some(Page::MAX_LIMIT));
            let batch = store.list_certificates(tenant, None, None, &page).await?;
            let done = batch.len() < Page::MAX_LIMIT as usize;
            after = batch.last().map(|c| c.serial.clone());
            certificates.extend(batch);
            if done {
                break;
            }
        }
        let mut devices = Vec::new();
        let mut after = None;
        loop {
            let page = Page::new(after.clone(), Some(Page::MAX_LIMIT));
            let batch = store
                .list_devices(tenant, &DeviceFilter::default(), &page)
                .await?;
            let done = batch.len() < Page::MAX_LIMIT as usize;
            after = batch.last().map(|d| d.thing_name.clone());
            devices.extend(batch);
            if done {
                break;
            }
        }
        let mut cas: Vec<CaSummary> = store
            .list_registered_cas(Some(tenant))
            .await?
            .into_iter()
            .filter(|c| c.status == onramp_domain::CaStatus::Active)
            .map(|c| CaSummary {
                id: c.id,
                not_after: c.not_after,
            })
            .collect();
        // Every issuing CA still trusted counts: during a rollover the
        // previous one keeps serving the devices it signed.
        for ca in self.inner.authorities().trusted() {
            let issuing = ca.issuing_info();
            cas.push(CaSummary {
                id: format!("onramp-issuing:{}", issuing.serial),
                not_after: issuing.not_after,
            });
        }
        Ok(AuditSnapshot {
            certificates,
            cas,
            devices,
            policies: store
                .list_policies(tenant)
                .await?
                .into_iter()
                .map(|p| (p.name, p.document))
                .collect(),
            claims: store.list_claim_certificates(tenant).await?,
            templates: store.list_templates(tenant).await?,
            connections: store.connection_attempts(tenant, since).await?,
        })
    }

    async fn run_audit_checks(&self, tenant: &str, only: &[CheckName]) -> Result<()> {
        let settings = self.inner.settings.events.checks;
        let now = now();
        // Buffered attempts count too.
        self.flush_connection_attempts().await?;
        let snapshot = self
            .audit_snapshot(tenant, now - settings.lookback_secs)
            .await?;
        let findings = run_checks(&snapshot, only, &settings, now);
        let ran: Vec<CheckName> = if only.is_empty() {
            CheckName::ALL.to_vec()
        } else {
            only.to_vec()
        };
        let opened = self
            .inner
            .store
            .record_findings(tenant, &ran, &findings, now)
            .await?;
        metrics::counter!("onramp_audit_check_runs_total").increment(1);
        for f in opened {
            metrics::counter!("onramp_audit_findings_total", "check" => check_label(&f.check))
                .increment(1);
            if f.suppressed_reason.is_some() {
                continue;
            }
            // A CA close to expiry is also its own event type.
            if f.check == CheckName::CaCertificateExpiring.as_str() {
                let key = event::once_key(EventType::CaExpiring, &f.resource, "");
                self.emit_event(
                    tenant,
                    EventType::CaExpiring,
                    f.resource.clone(),
                    serde_json::json!({"ca": f.resource, "detail": f.detail}),
                    &[key],
                )
                .await?;
            }
            let data = serde_json::json!({
                "findingId": f.id, "check": f.check, "resource": f.resource,
                "severity": f.severity, "detail": f.detail,
            });
            self.emit_event(
                tenant,
                EventType::AuditFinding,
                format!("finding:{}", f.id),
                data,
                &[],
            )
            .await?;
        }
        let open = self.inner.store.list_findings(tenant, Some("open")).await?;
        metrics::gauge!("onramp_audit_findings_open", "tenant" => tenant.to_string()).set(
            open.iter()
                .filter(|f| f.suppressed_reason.is_none())
                .count() as f64,
        );
        Ok(())
    }

    pub async fn list_audit_findings(
        &self,
        caller: &Caller,
        status: Option<&str>,
    ) -> Result<Vec<AuditFinding>> {
        caller.require(Permission::ReadAudit)?;
        if let Some(s) = status
            && !matches!(s, "open" | "resolved")
        {
            return Err(bad("status must be open or resolved"));
        }
        Ok(self
            .inner
            .store
            .list_findings(&caller.tenant, status)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Suppresses a finding with a reason (no events while suppressed), or
    /// lifts the suppression (`reason` None).
    pub async fn suppress_audit_finding(
        &self,
        caller: &Caller,
        id: &str,
        reason: Option<&str>,
    ) -> Result<AuditFinding> {
        caller.require(Permission::ManageDevices)?;
        if reason.is_some_and(|r| r.trim().is_empty()) {
            return Err(bad("a suppression needs a reason"));
        }
        let now = now();
        let audit = caller.audit(
            if reason.is_some() {
                "finding.suppress"
            } else {
                "finding.unsuppress"
            },
            format!("finding:{id}"),
            reason.unwrap_or_default().to_string(),
            now,
        );
        Ok(self
            .inner
            .store
            .suppress_finding(&caller.tenant, id, reason, &audit, now)
            .await?
            .into())
    }
}

/// Check names are a closed set; anything else is counted as `other`.
fn check_label(check: &str) -> &'static str {
    CheckName::parse(check).map_or("other", CheckName::as_str)
}
