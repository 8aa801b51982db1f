//! Fleet queries: which things a dynamic group holds. A query combines the
//! registry's fields (status, class, hardware revision, firmware version
//! compared as versions, attributes) with a condition on reported shadow
//! state; every part given must hold.

use crate::shadow::{Comparison, ReportedQuery, ShadowDocument};
use crate::version::version_sort_key;
use crate::{Device, DeviceStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A condition on the classic shadow's reported state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedCondition {
    /// Dot-separated member path inside `reported`, e.g. `firmware` or `hw.rev`.
    pub path: String,
    pub op: Comparison,
    pub value: String,
}

/// A dynamic group's definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_revision: Option<String>,
    /// Firmware strictly below this version (2.10.0 > 2.9.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_lt: Option<String>,
    /// Firmware at or above this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_gte: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_eq: Option<String>,
    /// Attributes that must have exactly these string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<ReportedCondition>,
}

/// Why a fleet query cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetQueryError {
    #[error("the query names no condition; target things or groups instead")]
    Empty,
    #[error("{field}: {value:?} is not a version")]
    NotAVersion { field: &'static str, value: String },
    #[error("reported.path {0:?} is not a member path of at most 8 parts")]
    BadPath(String),
}

fn is_version(v: &str) -> bool {
    v.chars().next().is_some_and(|c| c.is_ascii_digit())
}

impl FleetQuery {
    pub fn validate(&self) -> Result<(), FleetQueryError> {
        if *self == FleetQuery::default() {
            return Err(FleetQueryError::Empty);
        }
        for (field, v) in [
            ("firmwareLt", &self.firmware_lt),
            ("firmwareGte", &self.firmware_gte),
            ("firmwareEq", &self.firmware_eq),
        ] {
            if let Some(v) = v
                && !is_version(v)
            {
                return Err(FleetQueryError::NotAVersion {
                    field,
                    value: v.clone(),
                });
            }
        }
        if let Some(r) = &self.reported {
            ReportedQuery::new(&r.path, r.op, &r.value)
                .ok_or_else(|| FleetQueryError::BadPath(r.path.clone()))?;
        }
        Ok(())
    }

    /// Whether the query needs the thing's shadow to decide.
    pub fn needs_shadow(&self) -> bool {
        self.reported.is_some()
    }

    /// Whether a thing belongs to the group. `shadow` is its classic
    /// shadow; a query on reported state never matches a thing without one.
    pub fn matches(&self, device: &Device, shadow: Option<&ShadowDocument>) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        if self.status.is_some_and(|s| s != device.status)
            || !eq(&self.device_class, &device.device_class)
            || !eq(&self.hardware_revision, &device.hardware_revision)
        {
            return false;
        }
        let firmware = device.firmware_version.as_deref().map(version_sort_key);
        let compare = |want: &Option<String>, ok: fn(std::cmp::Ordering) -> bool| match want {
            None => true,
            Some(w) => firmware
                .as_ref()
                .is_some_and(|f| ok(f.cmp(&version_sort_key(w)))),
        };
        if !compare(&self.firmware_lt, std::cmp::Ordering::is_lt)
            || !compare(&self.firmware_gte, std::cmp::Ordering::is_ge)
            || !compare(&self.firmware_eq, std::cmp::Ordering::is_eq)
        {
            return false;
        }
        if !self
            .attributes
            .iter()
            .all(|(k, v)| device.attributes.get(k).and_then(|a| a.as_str()) == Some(v.as_str()))
        {
            return false;
        }
        match &self.reported {
            None => true,
            Some(r) => match (ReportedQuery::new(&r.path, r.op, &r.value), shadow) {
                (Some(q), Some(doc)) => q.matches(doc),
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(fw: &str, hw: &str) -> Device {
        Device {
            tenant: "t".into(),
            thing_name: "d".into(),
            serial_number: "s".into(),
            device_class: Some("sensor".into()),
            hardware_revision: Some(hw.into()),
            firmware_version: Some(fw.into()),
            attributes: json!({"site": "north", "n": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            thing_groups: vec![],
            status: DeviceStatus::Active,
            created_at: 0,
            updated_at: 0,
            last_seen_at: None,
        }
    }

    fn query(v: serde_json::Value) -> FleetQuery {
        let q: FleetQuery = serde_json::from_value(v).unwrap();
        q.validate().unwrap();
        q
    }

    #[test]
    fn firmware_compares_as_versions() {
        let q = query(json!({"firmwareLt": "2.10.0"}));
        assert!(q.matches(&device("2.9.1", "a"), None));
        assert!(!q.matches(&device("2.10.0", "a"), None));
        let q = query(json!({"firmwareGte": "2.10", "firmwareLt": "3"}));
        assert!(q.matches(&device("2.10.0", "a"), None));
        assert!(!q.matches(&device("2.9.9", "a"), None));
    }

    #[test]
    fn every_condition_must_hold() {
        let q = query(json!({"hardwareRevision": "b", "deviceClass": "sensor",
            "attributes": {"site": "north"}, "status": "active"}));
        assert!(q.matches(&device("1", "b"), None));
        assert!(!q.matches(&device("1", "a"), None));
        let q = query(json!({"attributes": {"site": "south"}}));
        assert!(!q.matches(&device("1", "b"), None));
        // Non-string attributes never equal a string condition.
        let q = query(json!({"attributes": {"n": "3"}}));
        assert!(!q.matches(&device("1", "b"), None));
    }

    #[test]
    fn reported_state_needs_a_shadow() {
        let q = query(json!({"reported": {"path": "battery", "op": "lt", "value": "20"}}));
        assert!(q.needs_shadow());
        assert!(!q.matches(&device("1", "a"), None));
        let doc: ShadowDocument = serde_json::from_value(json!({
            "state": {"reported": {"battery": 12}}, "metadata": {}, "version": 1, "timestamp": 1
        }))
        .unwrap();
        assert!(q.matches(&device("1", "a"), Some(&doc)));
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        assert_eq!(
            FleetQuery::default().validate(),
            Err(FleetQueryError::Empty)
        );
        let q: FleetQuery = serde_json::from_value(json!({"firmwareLt": "bogus"})).unwrap();
        assert!(matches!(
            q.validate(),
            Err(FleetQueryError::NotAVersion { .. })
        ));
        let q: FleetQuery =
            serde_json::from_value(json!({"reported": {"path": "a..b", "op": "eq", "value": "1"}}))
                .unwrap();
        assert!(matches!(q.validate(), Err(FleetQueryError::BadPath(_))));
        assert!(serde_json::from_value::<FleetQuery>(json!({"colour": "red"})).is_err());
    }
}
