//! The registry's records as plain data, shared by the store, the services and the edges.

use crate::{CertStatus, DeviceStatus, Outcome, Role, UnixTime};
use serde::{Deserialize, Serialize};

pub const DEFAULT_TENANT: &str = "default";

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub tenant: String,
    pub thing_name: String,
    pub serial_number: String,
    pub device_class: Option<String>,
    pub hardware_revision: Option<String>,
    pub firmware_version: Option<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Thing groups the device belongs to (set by provisioning templates).
    #[serde(default)]
    pub thing_groups: Vec<String>,
    pub status: DeviceStatus,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    pub last_seen_at: Option<UnixTime>,
}

/// Descriptive fields given when a device is registered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub device_class: Option<String>,
    pub hardware_revision: Option<String>,
    pub firmware_version: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub serial: String,
    pub tenant: String,
    pub thing_name: String,
    pub fingerprint: String,
    pub pem: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub status: CertStatus,
    pub issued_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
    pub revocation_reason: Option<String>,
    pub superseded_by: Option<String>,
    /// The registered manufacturer CA that issued it (JITP); `None` for Onramp's own CA.
    #[serde(default)]
    pub issuer_ca: Option<String>,
}

/// An enrolment token as listed: everything but the secret, which is shown once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentToken {
    pub id: String,
    pub tenant: String,
    pub serial_number: String,
    pub thing_name: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
    pub created_by: String,
}

impl EnrolmentToken {
    pub fn state(&self) -> crate::TokenState {
        crate::TokenState {
            serial_number: self.serial_number.clone(),
            expires_at: self.expires_at,
            used_at: self.used_at,
            revoked_at: self.revoked_at,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: Role,
    pub created_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowlistEntry {
    pub serial_number: String,
    pub added_at: UnixTime,
}

/// Filters for listing devices. Firmware bounds compare versions, not strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    pub device_class: Option<String>,
    pub hardware_revision: Option<String>,
    /// Firmware strictly below this version.
    pub firmware_lt: Option<String>,
    /// Firmware at or above this version.
    pub firmware_gte: Option<String>,
    pub firmware_eq: Option<String>,
}

/// Keyset pagination: items strictly after `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub after: Option<String>,
    pub limit: u32,
}

impl Page {
    pub const MAX_LIMIT: u32 = 1000;
    pub const DEFAULT_LIMIT: u32 = 100;

    /// A page for internal callers: the limit is clamped into range.
    pub fn new(after: Option<String>, limit: Option<u32>) -> Page {
        Page {
            after,
            limit: limit
                .unwrap_or(Self::DEFAULT_LIMIT)
                .clamp(1, Self::MAX_LIMIT),
        }
    }

    /// A page as asked for by an operator (API or CLI): a limit out of range
    /// is refused rather than quietly changed.
    pub fn checked(after: Option<String>, limit: Option<u32>) -> Result<Page, String> {
        Ok(Page {
            after,
            limit: Self::check_limit(limit.unwrap_or(Self::DEFAULT_LIMIT))?,
        })
    }

    /// The one rule for every `limit` an operator gives: 1 to 1000.
    pub fn check_limit(limit: u32) -> Result<u32, String> {
        if (1..=Self::MAX_LIMIT).contains(&limit) {
            Ok(limit)
        } else {
            Err(format!(
                "limit must be between 1 and {}, not {limit}",
                Self::MAX_LIMIT
            ))
        }
    }
}

impl DeviceFilter {
    /// Refuses firmware bounds that are not versions.
    pub fn validate(&self) -> Result<(), String> {
        for (name, bound) in [
            ("firmware_lt", &self.firmware_lt),
            ("firmware_gte", &self.firmware_gte),
            ("firmware_eq", &self.firmware_eq),
        ] {
            if let Some(v) = bound {
                crate::version::validate_version_bound(v).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<UnixTime>,
    /// Entries with an id below this (newest first paging).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// Counts shown on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetGauges {
    pub devices_by_status: Vec<(DeviceStatus, i64)>,
    /// Active certificates expiring within 7, 14 and 30 days.
    pub certs_expiring_7d: i64,
    pub certs_expiring_14d: i64,
    pub certs_expiring_30d: i64,
}

/// A named, versioned policy document as stored (the JSON text as given).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub tenant: String,
    pub name: String,
    pub document: String,
    pub version: i64,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// What a policy is attached to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum PolicyTarget {
    /// One device, by thing name.
    Device(String),
    /// Every device of a device class.
    Class(String),
}

impl PolicyTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyTarget::Device(_) => "device",
            PolicyTarget::Class(_) => "class",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            PolicyTarget::Device(n) | PolicyTarget::Class(n) => n,
        }
    }
}

/// A retained MQTT message as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRecord {
    pub tenant: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
}

/// A connection identity that must be cut: its certificate was revoked or
/// superseded, or its device left the active state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedIdentity {
    pub tenant: String,
    pub thing_name: String,
    /// The certificate, when the change was to one certificate.
    pub certificate_serial: Option<String>,
}

/// What a provisioning template is for: devices presenting a claim
/// certificate (fleet provisioning) or a certificate of a registered
/// manufacturer CA (just-in-time provisioning).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    Fleet,
    Jitp,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Fleet => "fleet",
            TemplateKind::Jitp => "jitp",
        }
    }
}

/// A named provisioning template with its settings; the body of each
/// version is stored separately and one version is the default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningTemplateRecord {
    pub tenant: String,
    pub name: String,
    pub kind: TemplateKind,
    pub description: String,
    pub enabled: bool,
    pub default_version: i64,
    pub latest_version: i64,
    /// Serial numbers allowed to provision; `None` means any serial not denied.
    pub serial_allow: Option<Vec<String>>,
    pub serial_deny: Vec<String>,
    /// Pre-provisioning webhook, called before every RegisterThing.
    pub hook_url: Option<String>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// One stored version of a template body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub version: i64,
    pub body: String,
    pub created_at: UnixTime,
}

/// A claim certificate: shared by a production batch, bound to one fleet
/// template, allowed only to obtain a device's own identity.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCertificate {
    pub serial: String,
    pub tenant: String,
    pub template: String,
    /// SHA-256 of the certificate (the id devices and hooks see).
    pub certificate_id: String,
    pub pem: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub status: CertStatus,
    pub created_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
    pub created_by: String,
    /// When this claim certificate was rotated, the one that replaced it.
    pub replaced_by: Option<String>,
}

/// Lifecycle of a registered manufacturer CA.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaStatus {
    Active,
    /// Switched off; may be activated again.
    Inactive,
    /// Withdrawn for good.
    Revoked,
}

impl CaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaStatus::Active => "active",
            CaStatus::Inactive => "inactive",
            CaStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<CaStatus> {
        match s {
            "active" => Some(CaStatus::Active),
            "inactive" => Some(CaStatus::Inactive),
            "revoked" => Some(CaStatus::Revoked),
            _ => None,
        }
    }
}

/// A manufacturer CA whose device certificates Onramp accepts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredCa {
    /// SHA-256 of the CA certificate.
    pub id: String,
    pub tenant: String,
    pub pem: String,
    pub subject: String,
    pub not_after: UnixTime,
    pub status: CaStatus,
    /// Unknown certificates of this CA are provisioned on first connection.
    pub auto_registration: bool,
    /// The JITP template run for them.
    pub template: Option<String>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// A certificate made by CreateKeysAndCertificate or CreateCertificateFromCsr,
/// waiting for RegisterThing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCertificate {
    pub serial: String,
    pub tenant: String,
    pub certificate_id: String,
    pub pem: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub claim_serial: String,
    pub token_expires_at: UnixTime,
    pub created_at: UnixTime,
    /// Set once RegisterThing committed: when, a digest of the request, and
    /// the reply, so that a retry of the same request gets the same answer.
    pub registered_at: Option<UnixTime>,
    pub request_digest: Option<String>,
    pub response: Option<String>,
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn operator_limits_outside_one_to_a_thousand_are_refused() {
        assert_eq!(Page::checked(None, None).map(|p| p.limit), Ok(100));
        assert_eq!(Page::checked(None, Some(1000)).map(|p| p.limit), Ok(1000));
        for bad in [0, 1001] {
            let err = Page::checked(None, Some(bad)).unwrap_err();
            assert_eq!(err, format!("limit must be between 1 and 1000, not {bad}"));
        }
        // Internal callers still get a clamped page.
        assert_eq!(Page::new(None, Some(0)).limit, 1);
    }

    #[test]
    fn a_firmware_bound_must_be_a_version() {
        let f = DeviceFilter {
            firmware_lt: Some("notaversion".into()),
            ..Default::default()
        };
        let err = f.validate().unwrap_err();
        assert!(
            err.starts_with("firmware_lt: `notaversion` is not"),
            "{err}"
        );
        let ok = DeviceFilter {
            firmware_gte: Some("2.5.0".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }
}
