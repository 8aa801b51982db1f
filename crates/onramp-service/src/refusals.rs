//! Refused credentials and requests on the HTTPS edge: back-off after failed
//! credentials, and audit rows aggregated per window so that a guessing
//! flood cannot become a flood of writes.

use crate::enrolment::credential_actor;
use crate::{EnrolCredential, EnrolOperation, Onramp, Result, ServiceError, now};
use onramp_domain::{AuditEntry, DEFAULT_TENANT, Outcome};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What makes two refusals "the same" for aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    action: String,
    target: String,
    source: String,
    kind: &'static str,
}

#[derive(Debug)]
struct Pending {
    /// The window's first refusal, already written with `count=1`.
    first: AuditEntry,
    reason: String,
    started: i64,
    /// Refusals after the first in this window, not yet written.
    more: u64,
}

/// Distinct keys aggregated at most; beyond, refusals share one key per
/// action, so memory stays bounded whatever an attacker varies.
const MAX_KEYS: usize = 10_000;

/// Aggregates refusal audit rows: the first refusal of a key in a window is
/// written at once (`count=1`); later ones in the same window are counted and
/// written as one row (`count=N`) when the window ends. The sum of the counts
/// is the number of refusals. Pure: the caller passes the time and writes.
pub struct RefusalAggregator {
    window_secs: i64,
    pending: Mutex<HashMap<Key, Pending>>,
}

impl RefusalAggregator {
    pub fn new(window_secs: i64) -> RefusalAggregator {
        RefusalAggregator {
            window_secs: window_secs.max(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one refusal; returns the rows to write now.
    fn record(&self, mut entry: AuditEntry, kind: &'static str, now: i64) -> Vec<AuditEntry> {
        let mut out = Vec::new();
        let mut pending = self.lock();
        let mut key = Key {
            tenant: entry.tenant.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            source: entry.source.clone(),
            kind,
        };
        if pending.len() >= MAX_KEYS && !pending.contains_key(&key) {
            key.target = "(many)".into();
            key.source = "(many)".into();
            entry.target = key.target.clone();
            entry.source = key.source.clone();
        }
        if let Some(p) = pending.get_mut(&key) {
            if now < p.started + self.window_secs {
                p.more += 1;
                return out;
            }
            if let Some(p) = pending.remove(&key) {
                out.extend(self.summary(p, now));
            }
        }
        let reason = entry.detail.clone();
        entry.detail = format!("count=1; {reason}");
        entry.at = now;
        out.push(entry.clone());
        pending.insert(
            key,
            Pending {
                first: entry,
                reason,
                started: now,
                more: 0,
            },
        );
        out
    }

    fn summary(&self, p: Pending, now: i64) -> Option<AuditEntry> {
        (p.more > 0).then(|| AuditEntry {
            detail: format!(
                "count={}; {} (within {} s)",
                p.more, p.reason, self.window_secs
            ),
            at: now,
            ..p.first
        })
    }

    /// The rows of windows that have ended (all of them when `all`).
    fn due(&self, now: i64, all: bool) -> Vec<AuditEntry> {
        let mut pending = self.lock();
        let ended: Vec<Key> = pending
            .iter()
            .filter(|(_, p)| all || now >= p.started + self.window_secs)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| pending.remove(&k))
            .filter_map(|p| self.summary(p, now))
            .collect()
    }
}

/// A short label of a refusal, so different reasons aggregate apart.
fn kind_of(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::BadRequest(_) => "bad_request",
        ServiceError::Unauthorized(_) => "unauthorized",
        ServiceError::Forbidden(_) => "forbidden",
        ServiceError::NotFound(_) | ServiceError::Conflict(_) => "conflict",
        ServiceError::RateLimited { .. } => "rate_limited",
        ServiceError::TooManyFailures { .. } => "locked_out",
        ServiceError::Unavailable { .. } => "unavailable",
        ServiceError::PayloadTooLarge(_) => "too_large",
        ServiceError::Timeout(_) => "timeout",
        ServiceError::Internal(_) => "internal",
    }
}

/// The user name of an EST token credential as a bounded, printable key.
fn serial_key(username: &str) -> String {
    username
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

impl Onramp {
    /// Writes one refusal through the aggregator.
    pub(crate) async fn audit_aggregated(&self, entry: AuditEntry, kind: &'static str) {
        let rows = self.inner.refusals.record(entry, kind, now());
        self.write_refusal_rows(rows).await;
    }

    async fn write_refusal_rows(&self, rows: Vec<AuditEntry>) {
        for row in rows {
            if let Err(e) = self.inner.store.append_audit(&row).await {
                tracing::error!(error = %e, action = %row.action, "could not audit a refusal");
            }
        }
    }

    /// Writes the aggregated refusal rows whose window has ended; call every
    /// second or so. With `all`, writes every pending count (at shutdown).
    pub async fn flush_refusal_audits(&self, all: bool) {
        let rows = self.inner.refusals.due(now(), all);
        self.write_refusal_rows(rows).await;
    }

    /// An EST refusal: counted, logged and audited (aggregated). Handlers call
    /// this for requests refused before the enrolment itself (body too large,
    /// wrong Content-Type, not base64); `simple_enroll` uses it for the rest.
    pub async fn enrolment_refused(
        &self,
        op: EnrolOperation,
        credential: &EnrolCredential,
        source: &str,
        error: ServiceError,
    ) -> ServiceError {
        metrics::counter!("onramp_enrolments_total", "operation" => op.as_str(), "outcome" => enrol_outcome(&error))
            .increment(1);
        self.audit_enrolment_refusal(op, credential, source, None, &error)
            .await;
        error
    }

    pub(crate) async fn audit_enrolment_refusal(
        &self,
        op: EnrolOperation,
        credential: &EnrolCredential,
        source: &str,
        known: Option<(String, String)>,
        e: &ServiceError,
    ) {
        // Token-bucket refusals are only counted: they are the flood itself.
        // A busy registry could not take an audit row either.
        if matches!(
            e,
            ServiceError::RateLimited { .. } | ServiceError::Unavailable { .. }
        ) {
            return;
        }
        tracing::info!(operation = op.as_str(), source, reason = %e, "enrolment refused");
        let (tenant, target) = known.unwrap_or_else(|| {
            let target = match credential {
                // Aggregated and locked out per claimed serial.
                EnrolCredential::Token { username, .. } => {
                    format!("serial:{}", serial_key(username))
                }
                _ => "unknown".into(),
            };
            (DEFAULT_TENANT.into(), target)
        });
        let entry = AuditEntry {
            id: 0,
            tenant,
            actor: credential_actor(credential),
            action: format!("est.{}", op.as_str()),
            target,
            source: source.to_string(),
            outcome: if matches!(e, ServiceError::Internal(_)) {
                Outcome::Failed
            } else {
                Outcome::Denied
            },
            detail: e.to_string(),
            at: now(),
        };
        self.audit_aggregated(entry, kind_of(e)).await;
    }

    /// Refuses a token enrolment for a serial that failed too often lately.
    pub(crate) fn check_serial_failures(&self, credential: &EnrolCredential) -> Result<()> {
        if let EnrolCredential::Token { username, .. } = credential {
            self.inner
                .serial_failures
                .check(&serial_key(username), Instant::now())
                .map_err(|retry_after_secs| ServiceError::TooManyFailures { retry_after_secs })?;
        }
        Ok(())
    }

    /// Counts a refused token toward its serial's back-off; a success clears it.
    pub(crate) fn note_serial_outcome<T>(&self, credential: &EnrolCredential, result: &Result<T>) {
        if let EnrolCredential::Token { username, .. } = credential {
            let key = serial_key(username);
            match result {
                Ok(_) => self.inner.serial_failures.succeed(&key),
                Err(ServiceError::Unauthorized(_)) => {
                    self.inner.serial_failures.fail(&key, Instant::now())
                }
                Err(_) => {}
            }
        }
    }

    /// An API request refused before it reached a use case (no or malformed
    /// credential, locked-out address): audited aggregated per address.
    pub(crate) async fn api_auth_refused(&self, source: &str, e: &ServiceError) {
        tracing::info!(source, reason = %e, "API authentication refused");
        metrics::counter!("onramp_api_auth_failures_total", "reason" => kind_of(e)).increment(1);
        let entry = AuditEntry {
            id: 0,
            tenant: DEFAULT_TENANT.into(),
            actor: "anonymous".into(),
            action: "api.authenticate".into(),
            target: "apikey".into(),
            source: source.to_string(),
            outcome: Outcome::Denied,
            detail: e.to_string(),
            at: now(),
        };
        self.audit_aggregated(entry, kind_of(e)).await;
    }
}

pub(crate) fn enrol_outcome(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::RateLimited { .. } | ServiceError::TooManyFailures { .. } => "rate_limited",
        ServiceError::Unavailable { .. } => "unavailable",
        ServiceError::BadRequest(_) | ServiceError::PayloadTooLarge(_) => "invalid",
        ServiceError::Timeout(_) => "invalid",
        ServiceError::Unauthorized(_) | ServiceError::Forbidden(_) => "denied",
        ServiceError::Conflict(_) | ServiceError::NotFound(_) => "denied",
        ServiceError::Internal(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, source: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            tenant: "default".into(),
            actor: "token-holder:SN-1".into(),
            action: "est.simpleenroll".into(),
            target: target.into(),
            source: source.into(),
            outcome: Outcome::Denied,
            detail: "unknown enrolment token".into(),
            at: 0,
        }
    }

    fn count(e: &AuditEntry) -> u64 {
        e.detail
            .strip_prefix("count=")
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    #[test]
    fn a_window_of_refusals_becomes_two_rows_whose_counts_add_up() {
        let a = RefusalAggregator::new(60);
        let first = a.record(entry("serial:SN-1", "10.0.0.1"), "unauthorized", 100);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].detail, "count=1; unknown enrolment token");
        for t in 101..150 {
            assert!(
                a.record(entry("serial:SN-1", "10.0.0.1"), "unauthorized", t)
                    .is_empty()
            );
        }
        assert!(a.due(159, false).is_empty(), "the window is still open");
        let rest = a.due(160, false);
        assert_eq!(rest.len(), 1);
        assert_eq!(count(&rest[0]), 49);
        assert_eq!(count(&first[0]) + count(&rest[0]), 50);
        assert!(a.due(1000, true).is_empty(), "nothing left");
    }

    #[test]
    fn different_serials_and_reasons_are_kept_apart() {
        let a = RefusalAggregator::new(60);
        assert_eq!(
            a.record(entry("serial:SN-1", "s"), "unauthorized", 0).len(),
            1
        );
        assert_eq!(
            a.record(entry("serial:SN-2", "s"), "unauthorized", 0).len(),
            1
        );
        assert_eq!(
            a.record(entry("serial:SN-1", "s"), "locked_out", 0).len(),
            1
        );
        assert!(
            a.record(entry("serial:SN-1", "s"), "unauthorized", 1)
                .is_empty()
        );
        let all = a.due(2, true);
        assert_eq!(all.len(), 1, "only SN-1/unauthorized had more than one");
        assert_eq!(all[0].target, "serial:SN-1");
    }

    #[test]
    fn a_refusal_after_the_window_writes_the_summary_and_a_new_first_row() {
        let a = RefusalAggregator::new(10);
        a.record(entry("t", "s"), "unauthorized", 0);
        a.record(entry("t", "s"), "unauthorized", 5);
        let rows = a.record(entry("t", "s"), "unauthorized", 12);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            count(&rows[0]),
            1,
            "the one after the first in the old window"
        );
        assert_eq!(rows[1].detail, "count=1; unknown enrolment token");
    }

    #[test]
    fn memory_is_bounded_whatever_the_attacker_varies() {
        let a = RefusalAggregator::new(60);
        for i in 0..(MAX_KEYS + 50) {
            a.record(entry(&format!("serial:{i}"), "s"), "unauthorized", 0);
        }
        assert!(a.lock().len() <= MAX_KEYS + 1);
        let rows = a.due(60, false);
        let overflow: Vec<_> = rows.iter().filter(|r| r.target == "(many)").collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(
            count(overflow[0]),
            49,
            "50 over the cap: one first row, 49 counted"
        );
    }
}
