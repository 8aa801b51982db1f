//! Certificate rotation that keeps the thing's identity, renewal after
//! expiry, and bulk rotation delivered as a job.
//!
//! A device connected with its own certificate asks for a new one on the
//! fleet-provisioning topics (`$aws/certificates/create-from-csr/json`,
//! `$aws/certificates/create/json`). The new certificate is bound to the
//! same thing as *pending rotation*; it becomes active when the device first
//! connects with it, the old one is then superseded and revoked after a grace
//! period. These are the rules, as pure functions over plain data.

use crate::{CertStatus, Certificate, DeviceStatus, UnixTime};
use serde::{Deserialize, Serialize};

/// The `operation` of a bulk-rotation job document.
pub const ROTATE_OPERATION: &str = "onramp.rotate-certificate";

/// The only policy of a connection made with a recently expired
/// certificate: connect as its thing and ask for a new certificate.
pub const RENEWAL_ONLY_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "iot:Connect",
      "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"
    },
    {
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive"],
      "Resource": [
        "arn:aws:iot:*:*:topic/$aws/certificates/create/json*",
        "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/json*"
      ]
    },
    {
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/json*",
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/json*"
      ]
    }
  ]
}"#;

/// The knobs of rotation, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationRules {
    /// How long after a superseding certificate's first connection the old
    /// one is revoked.
    pub grace_secs: i64,
    /// How long a pending-rotation certificate may wait for its first connection.
    pub pending_ttl_secs: i64,
    /// Renewal with an expired certificate is allowed for this long after its
    /// expiry; 0: never (the default).
    pub renew_expired_within_secs: i64,
}

impl Default for RotationRules {
    fn default() -> Self {
        RotationRules {
            grace_secs: 86_400,
            pending_ttl_secs: 7 * 86_400,
            renew_expired_within_secs: 0,
        }
    }
}

/// The presented certificate and its device, as the registry has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub thing_name: &'a str,
    pub status: CertStatus,
    pub not_after: UnixTime,
    /// Ever revoked (a revoked certificate stays revoked; kept for clarity
    /// when the status says otherwise).
    pub revoked_at: Option<UnixTime>,
    pub device: Option<DeviceStatus>,
    /// Superseded by a rotation whose grace period has not ended (see
    /// [`superseded_in_grace`]): it may ask again, as a device that lost the
    /// new key must.
    pub in_grace: bool,
}

/// What kind of renewal a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalKind {
    /// The certificate is still valid.
    Rotation,
    /// The certificate has expired, within the configured window.
    #[serde(rename = "renewal_after_expiry")]
    AfterExpiry,
}

impl RenewalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalKind::Rotation => "rotation",
            RenewalKind::AfterExpiry => "renewal_after_expiry",
        }
    }
}

/// Why a rotation or renewal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefusal {
    #[error("a claim certificate cannot rotate the certificate of thing `{0}`")]
    ClaimNamesThing(String),
    #[error("this certificate belongs to `{own}`, not `{asked}`")]
    OtherThing { own: String, asked: String },
    #[error("the certificate is {0}")]
    CertificateNotActive(CertStatus),
    #[error("the certificate was revoked")]
    Revoked,
    #[error("the device is {0}")]
    DeviceNotActive(DeviceStatus),
    #[error("the device is not registered")]
    NoDevice,
    #[error("the certificate expired and renewal after expiry is off")]
    ExpiredRenewalOff,
    #[error("the certificate expired {0} s ago, beyond the renewal window")]
    ExpiredBeyondWindow(i64),
}

/// Whether the holder of `presented` may obtain a new certificate for its
/// thing now; `asked` is the `thingName` the request named, if any.
pub fn check_rotation(
    presented: &Presented<'_>,
    asked: Option<&str>,
    now: UnixTime,
    rules: &RotationRules,
) -> Result<RenewalKind, RotationRefusal> {
    if let Some(asked) = asked
        && asked != presented.thing_name
    {
        return Err(RotationRefusal::OtherThing {
            own: presented.thing_name.to_string(),
            asked: asked.to_string(),
        });
    }
    if presented.revoked_at.is_some() || presented.status == CertStatus::Revoked {
        return Err(RotationRefusal::Revoked);
    }
    let usable = presented.status == CertStatus::Active
        || (presented.status == CertStatus::Superseded && presented.in_grace);
    if !usable {
        return Err(RotationRefusal::CertificateNotActive(presented.status));
    }
    match presented.device {
        None => return Err(RotationRefusal::NoDevice),
        Some(DeviceStatus::Active) => {}
        Some(other) => return Err(RotationRefusal::DeviceNotActive(other)),
    }
    check_expiry(presented.not_after, now, rules)
}

/// Whether a certificate valid until `not_after` may still renew at `now`:
/// a valid one always, an expired one only within the renewal window.
pub fn check_expiry(
    not_after: UnixTime,
    now: UnixTime,
    rules: &RotationRules,
) -> Result<RenewalKind, RotationRefusal> {
    if now <= not_after {
        return Ok(RenewalKind::Rotation);
    }
    let ago = now - not_after;
    if rules.renew_expired_within_secs <= 0 {
        Err(RotationRefusal::ExpiredRenewalOff)
    } else if ago > rules.renew_expired_within_secs {
        Err(RotationRefusal::ExpiredBeyondWindow(ago))
    } else {
        Ok(RenewalKind::AfterExpiry)
    }
}

/// A claim connection may provision, never rotate a thing's certificate.
pub fn check_claim_request(asked: Option<&str>) -> Result<(), RotationRefusal> {
    match asked {
        Some(thing) => Err(RotationRefusal::ClaimNamesThing(thing.to_string())),
        None => Ok(()),
    }
}

/// The optional `thingName` member of a create or create-from-csr request
/// (an Onramp addition: a device may name the thing it rotates, and is
/// refused when it names another). A non-string value is named as given.
pub fn requested_thing(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match v.get("thingName")? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// When a pending rotation issued at `created_at` expires unused.
pub fn pending_expires_at(created_at: UnixTime, rules: &RotationRules) -> UnixTime {
    created_at.saturating_add(rules.pending_ttl_secs.max(1))
}

/// When the certificate a rotation superseded at `activated_at` is revoked.
pub fn old_revoked_at(activated_at: UnixTime, rules: &RotationRules) -> UnixTime {
    activated_at.saturating_add(rules.grace_secs.max(0))
}

/// Whether `cert`, superseded when `rotation` was activated, is still in
/// that rotation's grace period at `now`: the device keeps a working
/// certificate until the sweep revokes it, in case it lost the new key.
/// A certificate superseded any other way (re-enrolment, provisioning) has
/// no grace period.
pub fn superseded_in_grace(cert: &Certificate, rotation: &RotationRecord, now: UnixTime) -> bool {
    cert.status == CertStatus::Superseded
        && cert.revoked_at.is_none()
        && cert.superseded_by.as_deref() == Some(rotation.serial.as_str())
        && cert.tenant == rotation.tenant
        && cert.thing_name == rotation.thing_name
        && rotation.status == "active"
        && rotation.old_revoked_at.is_none()
        && rotation.revoke_old_at.is_some_and(|end| now < end)
}

/// A certificate issued by rotation, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    pub serial: String,
    pub tenant: String,
    pub thing_name: String,
    pub fingerprint: String,
    pub pem: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// The certificate that asked for it.
    pub old_serial: String,
    pub kind: RenewalKind,
    /// `pending`, `active`, `replaced` or `expired`.
    pub status: String,
    pub created_at: UnixTime,
    /// A pending certificate not used by then is revoked.
    pub expires_at: UnixTime,
    pub activated_at: Option<UnixTime>,
    /// When the superseded certificate is revoked.
    pub revoke_old_at: Option<UnixTime>,
    pub old_revoked_at: Option<UnixTime>,
}

/// Which things a bulk rotation targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RotationSelector {
    /// One thing.
    Thing(String),
    /// Every thing of a device class (thing type).
    DeviceClass(String),
    /// Every member of a thing group.
    ThingGroup(String),
    /// Every thing whose active certificate was issued by this CA: a
    /// registered CA's id, or `onramp` for Onramp's own issuing CA.
    Ca(String),
    /// Every thing whose active certificate expires within this many days.
    ExpiringWithinDays(u32),
}

impl RotationSelector {
    /// Builds the selector from the request's members: exactly one is given.
    pub fn from_parts(
        thing: Option<String>,
        device_class: Option<String>,
        thing_group: Option<String>,
        ca: Option<String>,
        expiring_within_days: Option<u32>,
    ) -> Result<RotationSelector, String> {
        let mut chosen = Vec::new();
        if let Some(t) = thing {
            chosen.push(RotationSelector::Thing(t));
        }
        if let Some(c) = device_class {
            chosen.push(RotationSelector::DeviceClass(c));
        }
        if let Some(g) = thing_group {
            chosen.push(RotationSelector::ThingGroup(g));
        }
        if let Some(c) = ca {
            chosen.push(RotationSelector::Ca(c));
        }
        if let Some(d) = expiring_within_days {
            if !(1..=3650).contains(&d) {
                return Err(format!(
                    "expiringWithinDays must be between 1 and 3650, not {d}"
                ));
            }
            chosen.push(RotationSelector::ExpiringWithinDays(d));
        }
        match chosen.len() {
            1 => Ok(chosen.remove(0)),
            0 => {
                Err("give one of thingName, deviceClass, thingGroup, ca, expiringWithinDays".into())
            }
            _ => Err(
                "give only one of thingName, deviceClass, thingGroup, ca, expiringWithinDays"
                    .into(),
            ),
        }
    }

    /// For the job's description and the audit log.
    pub fn describe(&self) -> String {
        match self {
            RotationSelector::Thing(t) => format!("thing {t}"),
            RotationSelector::DeviceClass(c) => format!("device class {c}"),
            RotationSelector::ThingGroup(g) => format!("thing group {g}"),
            RotationSelector::Ca(c) => format!("certificates of CA {c}"),
            RotationSelector::ExpiringWithinDays(d) => {
                format!("certificates expiring within {d} days")
            }
        }
    }
}

/// The job document of a bulk rotation: what a device running AWS jobs
/// reads to know it must rotate, and how.
pub fn rotation_job_document(selector: &RotationSelector) -> serde_json::Value {
    serde_json::json!({
        "operation": ROTATE_OPERATION,
        "topic": "$aws/certificates/create-from-csr/json",
        "alternativeTopic": "$aws/certificates/create/json",
        "reason": selector.describe(),
        "steps": [
            "publish a new CSR to $aws/certificates/create-from-csr/json",
            "store certificatePem from .../accepted beside the current certificate",
            "reconnect with the new certificate",
            "report the job execution SUCCEEDED over the new connection"
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn presented(status: CertStatus, not_after: UnixTime) -> Presented<'static> {
        Presented {
            thing_name: "pump-1",
            status,
            not_after,
            revoked_at: None,
            device: Some(DeviceStatus::Active),
            in_grace: false,
        }
    }

    fn rules(window: i64) -> RotationRules {
        RotationRules {
            renew_expired_within_secs: window,
            ..RotationRules::default()
        }
    }

    #[test]
    fn an_active_valid_certificate_rotates() {
        let p = presented(CertStatus::Active, NOW + 10);
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Ok(RenewalKind::Rotation)
        );
        assert_eq!(
            check_rotation(&p, Some("pump-1"), NOW, &rules(0)),
            Ok(RenewalKind::Rotation)
        );
    }

    #[test]
    fn naming_another_thing_is_refused() {
        let p = presented(CertStatus::Active, NOW + 10);
        assert!(matches!(
            check_rotation(&p, Some("pump-2"), NOW, &rules(0)),
            Err(RotationRefusal::OtherThing { .. })
        ));
        assert_eq!(
            check_claim_request(Some("pump-2")),
            Err(RotationRefusal::ClaimNamesThing("pump-2".into()))
        );
        assert_eq!(check_claim_request(None), Ok(()));
    }

    #[test]
    fn revoked_superseded_and_inactive_certificates_are_refused() {
        for (status, want) in [
            (CertStatus::Revoked, RotationRefusal::Revoked),
            (
                CertStatus::Superseded,
                RotationRefusal::CertificateNotActive(CertStatus::Superseded),
            ),
            (
                CertStatus::Inactive,
                RotationRefusal::CertificateNotActive(CertStatus::Inactive),
            ),
        ] {
            let p = presented(status, NOW + 10);
            assert_eq!(check_rotation(&p, None, NOW, &rules(86_400)), Err(want));
        }
        let mut p = presented(CertStatus::Active, NOW - 10);
        p.revoked_at = Some(NOW - 100);
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(86_400)),
            Err(RotationRefusal::Revoked)
        );
    }

    #[test]
    fn a_superseded_certificate_may_rotate_again_only_in_its_grace_period() {
        let mut p = presented(CertStatus::Superseded, NOW + 10);
        p.in_grace = true;
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Ok(RenewalKind::Rotation)
        );
        // Grace does not outweigh a revocation or an inactive certificate.
        p.revoked_at = Some(NOW - 1);
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Err(RotationRefusal::Revoked)
        );
        let mut p = presented(CertStatus::Inactive, NOW + 10);
        p.in_grace = true;
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Err(RotationRefusal::CertificateNotActive(CertStatus::Inactive))
        );
    }

    fn superseded_cert() -> Certificate {
        Certificate {
            serial: "01".into(),
            tenant: "acme".into(),
            thing_name: "pump-1".into(),
            fingerprint: "f1".into(),
            pem: String::new(),
            not_before: NOW - 100,
            not_after: NOW + 100,
            status: CertStatus::Superseded,
            issued_at: NOW - 100,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: Some("02".into()),
            issuer_ca: None,
        }
    }

    fn activated_rotation() -> RotationRecord {
        RotationRecord {
            serial: "02".into(),
            tenant: "acme".into(),
            thing_name: "pump-1".into(),
            fingerprint: "f2".into(),
            pem: String::new(),
            not_before: NOW - 10,
            not_after: NOW + 1_000,
            old_serial: "01".into(),
            kind: RenewalKind::Rotation,
            status: "active".into(),
            created_at: NOW - 10,
            expires_at: NOW + 1_000,
            activated_at: Some(NOW - 5),
            revoke_old_at: Some(NOW + 60),
            old_revoked_at: None,
        }
    }

    #[test]
    fn grace_lasts_until_the_revocation_time_and_only_for_that_rotation() {
        let (cert, r) = (superseded_cert(), activated_rotation());
        assert!(superseded_in_grace(&cert, &r, NOW));
        assert!(superseded_in_grace(&cert, &r, NOW + 59));
        assert!(!superseded_in_grace(&cert, &r, NOW + 60));
        // The sweep already revoked it, or an operator did.
        let mut swept = r.clone();
        swept.old_revoked_at = Some(NOW);
        assert!(!superseded_in_grace(&cert, &swept, NOW));
        let mut revoked = cert.clone();
        revoked.revoked_at = Some(NOW - 1);
        assert!(!superseded_in_grace(&revoked, &r, NOW));
        revoked.status = CertStatus::Revoked;
        assert!(!superseded_in_grace(&revoked, &r, NOW));
        // Superseded by another certificate (re-enrolment), another thing,
        // another tenant, or a rotation not (or no longer) active.
        let mut other = cert.clone();
        other.superseded_by = Some("03".into());
        assert!(!superseded_in_grace(&other, &r, NOW));
        other.superseded_by = None;
        assert!(!superseded_in_grace(&other, &r, NOW));
        let mut other = cert.clone();
        other.thing_name = "pump-2".into();
        assert!(!superseded_in_grace(&other, &r, NOW));
        let mut other = cert.clone();
        other.tenant = "globex".into();
        assert!(!superseded_in_grace(&other, &r, NOW));
        for status in ["pending", "replaced", "expired"] {
            let mut r = r.clone();
            r.status = status.into();
            assert!(!superseded_in_grace(&cert, &r, NOW), "{status}");
        }
        let mut r = r.clone();
        r.revoke_old_at = None;
        assert!(!superseded_in_grace(&cert, &r, NOW));
        // An active certificate is not "in grace": it needs none.
        let mut active = cert.clone();
        active.status = CertStatus::Active;
        assert!(!superseded_in_grace(&active, &activated_rotation(), NOW));
    }

    #[test]
    fn a_suspended_or_missing_device_is_refused() {
        for status in [
            DeviceStatus::Suspended,
            DeviceStatus::Pending,
            DeviceStatus::Decommissioned,
        ] {
            let mut p = presented(CertStatus::Active, NOW + 10);
            p.device = Some(status);
            assert_eq!(
                check_rotation(&p, None, NOW, &rules(0)),
                Err(RotationRefusal::DeviceNotActive(status))
            );
        }
        let mut p = presented(CertStatus::Active, NOW + 10);
        p.device = None;
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Err(RotationRefusal::NoDevice)
        );
    }

    #[test]
    fn an_expired_certificate_renews_only_within_the_window() {
        let p = presented(CertStatus::Active, NOW - 3600);
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(0)),
            Err(RotationRefusal::ExpiredRenewalOff)
        );
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(3600)),
            Ok(RenewalKind::AfterExpiry)
        );
        assert_eq!(
            check_rotation(&p, None, NOW, &rules(3599)),
            Err(RotationRefusal::ExpiredBeyondWindow(3600))
        );
        // The last second of validity is still a rotation.
        assert_eq!(check_expiry(NOW, NOW, &rules(0)), Ok(RenewalKind::Rotation));
    }

    #[test]
    fn the_thing_name_member_is_read_when_present() {
        assert_eq!(requested_thing(b"{}"), None);
        assert_eq!(requested_thing(b""), None);
        assert_eq!(
            requested_thing(br#"{"thingName":"pump-1"}"#),
            Some("pump-1".into())
        );
        assert_eq!(requested_thing(br#"{"thingName":7}"#), Some("7".into()));
    }

    #[test]
    fn exactly_one_selector_is_given() {
        assert_eq!(
            RotationSelector::from_parts(Some("a".into()), None, None, None, None),
            Ok(RotationSelector::Thing("a".into()))
        );
        assert!(RotationSelector::from_parts(None, None, None, None, None).is_err());
        assert!(
            RotationSelector::from_parts(Some("a".into()), None, Some("g".into()), None, None)
                .is_err()
        );
        assert!(RotationSelector::from_parts(None, None, None, None, Some(0)).is_err());
        assert_eq!(
            RotationSelector::from_parts(None, None, None, None, Some(30)),
            Ok(RotationSelector::ExpiringWithinDays(30))
        );
    }

    #[test]
    fn the_job_document_names_the_operation() {
        let d = rotation_job_document(&RotationSelector::ThingGroup("pumps".into()));
        assert_eq!(d["operation"], ROTATE_OPERATION);
        assert_eq!(d["topic"], "$aws/certificates/create-from-csr/json");
    }

    #[test]
    fn the_renewal_only_policy_allows_nothing_but_renewal() {
        use crate::policy::{Action, PolicyContext, PolicyDocument, Resource, evaluate};
        let p = [PolicyDocument::parse(RENEWAL_ONLY_POLICY).unwrap()];
        let ctx = PolicyContext {
            client_id: "pump-1".into(),
            thing_name: Some("pump-1".into()),
            ..PolicyContext::default()
        };
        let allowed = |a, r| evaluate(&p, a, &r, &ctx).is_allowed();
        assert!(allowed(Action::Connect, Resource::Client("pump-1")));
        assert!(allowed(
            Action::Publish,
            Resource::Topic("$aws/certificates/create-from-csr/json")
        ));
        assert!(allowed(
            Action::Subscribe,
            Resource::TopicFilter("$aws/certificates/create/json/accepted")
        ));
        assert!(!allowed(
            Action::Publish,
            Resource::Topic("$aws/things/pump-1/jobs/get")
        ));
        assert!(!allowed(
            Action::Publish,
            Resource::Topic("things/pump-1/x")
        ));
        assert!(!allowed(Action::Connect, Resource::Client("pump-2")));
    }

    #[test]
    fn deadlines_follow_the_rules() {
        let r = RotationRules::default();
        assert_eq!(pending_expires_at(NOW, &r), NOW + 7 * 86_400);
        assert_eq!(old_revoked_at(NOW, &r), NOW + 86_400);
    }
}
