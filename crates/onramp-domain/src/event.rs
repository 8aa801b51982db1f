//! Outbound events: what Onramp tells operators' systems by webhook.
//!
//! Pure parts only: the event types, the JSON body a receiver gets, the
//! HMAC-SHA256 signature and its verification (with a replay window), the
//! retry schedule, and which certificate-expiry warnings are due. Storing,
//! delivering and retrying live in the service and the store.

use crate::UnixTime;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Onramp-Signature";
/// The header carrying the event's id (receivers deduplicate by it).
pub const EVENT_ID_HEADER: &str = "Onramp-Event-Id";
/// The header carrying the event's type.
pub const EVENT_TYPE_HEADER: &str = "Onramp-Event-Type";
/// How far a signature's timestamp may be from the receiver's clock by default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// The days before a device certificate's expiry at which a warning is sent,
/// each once per certificate.
pub const EXPIRY_THRESHOLDS_DAYS: [u32; 3] = [30, 14, 7];

/// Every kind of event. Later features add theirs here; a subscription
/// names the kinds it wants (or `*` for all).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// A device certificate expires within 30, 14 or 7 days.
    #[serde(rename = "certificate.expiring")]
    CertificateExpiring,
    /// A device certificate reached its notAfter while still active.
    #[serde(rename = "certificate.expired")]
    CertificateExpired,
    /// A device certificate was revoked.
    #[serde(rename = "certificate.revoked")]
    CertificateRevoked,
    /// A claim certificate expires within the configured warning window.
    #[serde(rename = "claim.expiring")]
    ClaimExpiring,
    /// A CA (Onramp's issuing CA or a registered manufacturer CA) expires soon.
    #[serde(rename = "ca.expiring")]
    CaExpiring,
    /// An audit check found something (new or again after it was resolved).
    #[serde(rename = "audit.finding")]
    AuditFinding,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::CertificateExpiring,
        EventType::CertificateExpired,
        EventType::CertificateRevoked,
        EventType::ClaimExpiring,
        EventType::CaExpiring,
        EventType::AuditFinding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CertificateExpiring => "certificate.expiring",
            EventType::CertificateExpired => "certificate.expired",
            EventType::CertificateRevoked => "certificate.revoked",
            EventType::ClaimExpiring => "claim.expiring",
            EventType::CaExpiring => "ca.expiring",
            EventType::AuditFinding => "audit.finding",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which event types a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Only(Vec<EventType>),
}

impl EventFilter {
    /// Parses `*` or a comma-separated list of type names; None on an
    /// unknown name or an empty list.
    pub fn parse(s: &str) -> Option<EventFilter> {
        let s = s.trim();
        if s == "*" {
            return Some(EventFilter::All);
        }
        let mut types = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let t = EventType::parse(part)?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        if types.is_empty() {
            return None;
        }
        types.sort();
        Some(EventFilter::Only(types))
    }

    pub fn matches(&self, t: EventType) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(&t),
        }
    }

    /// The stored form: `*` or names joined by commas.
    pub fn as_string(&self) -> String {
        match self {
            EventFilter::All => "*".into(),
            EventFilter::Only(types) => types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// One event, as stored in the outbox and sent to receivers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique; receivers deduplicate by it (a delivery may repeat).
    pub id: String,
    pub tenant: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// What the event is about: `certificate:<serial>`, `claim:<serial>`, `ca:<id>`, `finding:<id>`.
    pub subject: String,
    pub occurred_at: UnixTime,
    /// Type-specific fields.
    pub data: Value,
}

impl Event {
    /// The body sent to receivers: the event as compact JSON.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// A device certificate's expiry warning.
pub fn certificate_expiring_data(
    serial: &str,
    thing_name: &str,
    not_after: UnixTime,
    threshold_days: u32,
    now: UnixTime,
) -> Value {
    serde_json::json!({
        "serial": serial,
        "thingName": thing_name,
        "notAfter": not_after,
        "thresholdDays": threshold_days,
        "daysLeft": days_left(not_after, now),
    })
}

/// Whole days left before `not_after` (0 once passed).
pub fn days_left(not_after: UnixTime, now: UnixTime) -> i64 {
    (not_after - now).max(0) / 86_400
}

/// The expiry thresholds (days) reached at `now` by a certificate valid until
/// `not_after` that have not been sent yet (`sent`): the tightest one is the
/// warning to send; every looser one reached at the same time is marked sent
/// without a message of its own, so a certificate first seen 5 days from
/// expiry gets one 7-day warning, not three.
///
/// Returns `(to_send, also_done)`.
pub fn due_expiry_threshold(
    not_after: UnixTime,
    now: UnixTime,
    sent: &[u32],
) -> Option<(u32, Vec<u32>)> {
    if not_after <= now {
        return None;
    }
    let reached: Vec<u32> = EXPIRY_THRESHOLDS_DAYS
        .into_iter()
        .filter(|d| not_after - now <= i64::from(*d) * 86_400)
        .collect();
    let tightest = *reached.iter().min()?;
    if sent.iter().any(|s| *s <= tightest) {
        return None;
    }
    let also: Vec<u32> = reached
        .into_iter()
        .filter(|d| *d != tightest && !sent.contains(d))
        .collect();
    Some((tightest, also))
}

/// The dedup key of an event that must happen once: a certificate's
/// threshold warning, its expiry, its revocation.
pub fn once_key(event_type: EventType, subject: &str, detail: &str) -> String {
    format!("{}:{subject}:{detail}", event_type.as_str())
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub initial_secs: i64,
    /// No delay is longer than this.
    pub max_secs: i64,
    /// After this many failed attempts the delivery is dead-lettered.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_secs: 10,
            max_secs: 3600,
            max_attempts: 12,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time.
    RetryAt(UnixTime),
    /// Give up: the delivery goes to the dead-letter list.
    DeadLetter,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt (1-based): doubling
    /// from `initial_secs`, capped at `max_secs`.
    pub fn delay(&self, attempts: u32) -> i64 {
        let exp = attempts.saturating_sub(1).min(40);
        self.initial_secs
            .max(1)
            .saturating_mul(1i64 << exp)
            .min(self.max_secs.max(1))
    }

    /// After the `attempts`-th failure at `now`.
    pub fn after_failure(&self, attempts: u32, now: UnixTime) -> RetryDecision {
        if attempts >= self.max_attempts {
            RetryDecision::DeadLetter
        } else {
            RetryDecision::RetryAt(now + self.delay(attempts))
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: UnixTime, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so the fallback is never used; it
    // keeps this free of a panic path.
    let mut m =
        HmacSha256::new_from_slice(secret).unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature header's value: `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn sign(secret: &[u8], timestamp: UnixTime, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Why a receiver refuses a signed body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance (replay?)")]
    Stale,
}

/// Checks a signature header against the body, as a receiver does: the MAC
/// must match (compared in constant time) and the timestamp be within
/// `tolerance_secs` of `now`, so a captured request cannot be replayed later.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: UnixTime,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matched = tags
        .iter()
        .any(|t| mac(secret, timestamp, body).verify_slice(t).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    #[test]
    fn type_names_round_trip_and_match_serde() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                Value::String(t.as_str().into())
            );
        }
        assert_eq!(EventType::parse("certificate.bogus"), None);
    }

    #[test]
    fn filters_parse_match_and_store() {
        assert_eq!(EventFilter::parse("*"), Some(EventFilter::All));
        let f = EventFilter::parse("certificate.revoked, certificate.expiring").unwrap();
        assert!(f.matches(EventType::CertificateRevoked));
        assert!(!f.matches(EventType::AuditFinding));
        assert_eq!(f.as_string(), "certificate.expiring,certificate.revoked");
        assert_eq!(EventFilter::parse(&f.as_string()), Some(f));
        assert_eq!(EventFilter::parse(""), None);
        assert_eq!(EventFilter::parse("certificate.expiring,nope"), None);
    }

    #[test]
    fn signature_verifies_and_refuses_tampering_other_keys_and_replays() {
        let body = br#"{"id":"e1"}"#;
        let h = sign(b"secret", 1_000, body);
        assert!(h.starts_with("t=1000,v1="));
        assert_eq!(verify(b"secret", &h, body, 1_010, 300), Ok(()));
        assert_eq!(
            verify(b"secret", &h, br#"{"id":"e2"}"#, 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, body, 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &h, body, 1_000 + 301, 300),
            Err(SignatureError::Stale)
        );
        // A new timestamp on an old signature does not verify.
        let moved = h.replace("t=1000", "t=2000");
        assert_eq!(
            verify(b"secret", &moved, body, 2_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", "v1=zz", body, 0, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"secret", "t=5", body, 5, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn signature_matches_openssl() {
        // printf '%s' '1700000000.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1_700_000_000, b"{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn backoff_doubles_caps_and_dead_letters() {
        let p = RetryPolicy {
            initial_secs: 10,
            max_secs: 300,
            max_attempts: 5,
        };
        assert_eq!(p.delay(1), 10);
        assert_eq!(p.delay(2), 20);
        assert_eq!(p.delay(3), 40);
        assert_eq!(p.delay(6), 300);
        assert_eq!(p.after_failure(1, 100), RetryDecision::RetryAt(110));
        assert_eq!(p.after_failure(4, 100), RetryDecision::RetryAt(180));
        assert_eq!(p.after_failure(5, 100), RetryDecision::DeadLetter);
    }

    #[test]
    fn expiry_thresholds_fire_once_each_tightest_first() {
        let now = 1_000 * DAY;
        // Far away: nothing.
        assert_eq!(due_expiry_threshold(now + 40 * DAY, now, &[]), None);
        // 30 days out.
        assert_eq!(
            due_expiry_threshold(now + 29 * DAY, now, &[]),
            Some((30, vec![]))
        );
        assert_eq!(due_expiry_threshold(now + 29 * DAY, now, &[30]), None);
        // 14 days, 30 already sent.
        assert_eq!(
            due_expiry_threshold(now + 10 * DAY, now, &[30]),
            Some((14, vec![]))
        );
        // First seen 5 days out: one warning, the others marked done.
        assert_eq!(
            due_expiry_threshold(now + 5 * DAY, now, &[]),
            Some((7, vec![30, 14]))
        );
        assert_eq!(due_expiry_threshold(now + 5 * DAY, now, &[7]), None);
        // Expired: no warning (the expired event covers it).
        assert_eq!(due_expiry_threshold(now - 1, now, &[]), None);
    }

    proptest! {
        #[test]
        fn any_signature_verifies_with_its_key(
            secret in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            t in 0i64..4_000_000_000,
            skew in -300i64..=300,
        ) {
            let h = sign(&secret, t, &body);
            prop_assert_eq!(verify(&secret, &h, &body, t + skew, 300), Ok(()));
        }

        #[test]
        fn delays_never_shrink_and_stay_capped(
            initial in 1i64..1000, max in 1i64..100_000, a in 1u32..100,
        ) {
            let p = RetryPolicy { initial_secs: initial, max_secs: max, max_attempts: 200 };
            prop_assert!(p.delay(a) <= p.delay(a + 1));
            prop_assert!(p.delay(a) <= max.max(1));
            prop_assert!(p.delay(a) >= 1);
        }

        #[test]
        fn a_threshold_is_never_sent_twice(
            start in 0i64..60, step in 1i64..5,
        ) {
            // Walk a certificate's last 60 days, day by day.
            let not_after = 10_000 * DAY;
            let mut sent: Vec<u32> = Vec::new();
            let mut sent_messages = Vec::new();
            let mut day = 60 - start;
            while day > 0 {
                let now = not_after - day * DAY;
                if let Some((t, also)) = due_expiry_threshold(not_after, now, &sent) {
                    prop_assert!(!sent.contains(&t));
                    sent_messages.push(t);
                    sent.push(t);
                    sent.extend(also);
                }
                day -= step;
            }
            let mut dedup = sent_messages.clone();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), sent_messages.len());
        }
    }
}
