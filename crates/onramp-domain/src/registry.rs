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
    pub fn new(after: Option<String>, limit: Option<u32>) -> Page {
        Page {
            after,
            limit: limit.unwrap_or(100).clamp(1, Self::MAX_LIMIT),
        }
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
