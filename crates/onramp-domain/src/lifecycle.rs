//! Device lifecycle: pending → active → suspended → decommissioned.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a device is in its life. Decommissioned is terminal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Registered (for example by an enrolment token) but holding no certificate yet.
    Pending,
    /// Holds a certificate and may connect.
    Active,
    /// Temporarily barred: may not connect or enrol until reactivated.
    Suspended,
    /// Retired for good; its certificates are revoked.
    Decommissioned,
}

/// The operations that move a device between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleAction {
    /// A certificate was issued to the device (first enrolment or a new enrolment).
    Activate,
    Suspend,
    Reactivate,
    Decommission,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {from} device cannot be {}", article(*from), participle(*action))]
pub struct TransitionError {
    pub from: DeviceStatus,
    pub action: LifecycleAction,
}

fn article(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Active => "an",
        _ => "a",
    }
}

fn participle(action: LifecycleAction) -> &'static str {
    match action {
        LifecycleAction::Activate => "activated",
        LifecycleAction::Suspend => "suspended",
        LifecycleAction::Reactivate => "reactivated",
        LifecycleAction::Decommission => "decommissioned",
    }
}

impl DeviceStatus {
    pub const ALL: [DeviceStatus; 4] = [
        DeviceStatus::Pending,
        DeviceStatus::Active,
        DeviceStatus::Suspended,
        DeviceStatus::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Suspended => "suspended",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }

    /// The state after `action`, or why it is not allowed.
    ///
    /// Activation of an already active device is allowed: it is a fresh
    /// enrolment (for example after a factory reset) that supersedes the old cert.
    pub fn apply(self, action: LifecycleAction) -> Result<DeviceStatus, TransitionError> {
        use DeviceStatus::*;
        use LifecycleAction::*;
        let next = match (self, action) {
            (Pending | Active, Activate) => Active,
            (Pending | Active, Suspend) => Suspended,
            (Suspended, Reactivate) => Active,
            (Pending | Active | Suspended, Decommission) => Decommissioned,
            _ => return Err(TransitionError { from: self, action }),
        };
        Ok(next)
    }

    /// Whether a device in this state may obtain or renew a certificate.
    pub fn may_enrol(self) -> bool {
        matches!(self, DeviceStatus::Pending | DeviceStatus::Active)
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for LifecycleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LifecycleAction::Activate => "activate",
            LifecycleAction::Suspend => "suspend",
            LifecycleAction::Reactivate => "reactivate",
            LifecycleAction::Decommission => "decommission",
        })
    }
}

impl FromStr for DeviceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeviceStatus::Pending),
            "active" => Ok(DeviceStatus::Active),
            "suspended" => Ok(DeviceStatus::Suspended),
            "decommissioned" => Ok(DeviceStatus::Decommissioned),
            other => Err(format!("unknown device status `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_read_as_english() {
        let e = |from, action| TransitionError { from, action }.to_string();
        assert_eq!(
            e(DeviceStatus::Active, LifecycleAction::Reactivate),
            "an active device cannot be reactivated"
        );
        assert_eq!(
            e(DeviceStatus::Decommissioned, LifecycleAction::Decommission),
            "a decommissioned device cannot be decommissioned"
        );
        assert_eq!(
            e(DeviceStatus::Pending, LifecycleAction::Suspend),
            "a pending device cannot be suspended"
        );
    }

    use super::DeviceStatus::*;
    use super::LifecycleAction::*;
    use super::*;

    #[test]
    fn the_legal_transitions_are_exactly_these() {
        let legal = [
            (Pending, Activate, Active),
            (Active, Activate, Active),
            (Pending, Suspend, Suspended),
            (Active, Suspend, Suspended),
            (Suspended, Reactivate, Active),
            (Pending, Decommission, Decommissioned),
            (Active, Decommission, Decommissioned),
            (Suspended, Decommission, Decommissioned),
        ];
        let actions = [Activate, Suspend, Reactivate, Decommission];
        for from in DeviceStatus::ALL {
            for action in actions {
                let expected = legal
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                assert_eq!(from.apply(action).ok(), expected, "{from} + {action}");
            }
        }
    }

    #[test]
    fn decommissioned_is_terminal() {
        for action in [Activate, Suspend, Reactivate, Decommission] {
            assert!(Decommissioned.apply(action).is_err());
        }
    }

    #[test]
    fn a_suspended_device_cannot_enrol_until_reactivated() {
        assert!(!Suspended.may_enrol());
        assert!(Suspended.apply(Activate).is_err());
        assert!(Suspended.apply(Reactivate).unwrap().may_enrol());
    }

    #[test]
    fn status_names_round_trip() {
        for s in DeviceStatus::ALL {
            assert_eq!(s.as_str().parse::<DeviceStatus>().unwrap(), s);
        }
        assert!("Active".parse::<DeviceStatus>().is_err());
    }
}
