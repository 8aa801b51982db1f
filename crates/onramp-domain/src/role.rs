//! Who may do what through the management API.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An API key's role, always scoped to one tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the registry.
    Viewer,
    /// Runs the fleet: devices, tokens, allow-list, revocation, audit.
    Operator,
    /// Everything, including API keys.
    Admin,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadRegistry,
    ManageDevices,
    ManageEnrolment,
    RevokeCertificates,
    ReadAudit,
    ManageApiKeys,
    /// Create, change, attach and detach MQTT policies.
    ManagePolicies,
    /// Provisioning templates and registered manufacturer CAs: both can
    /// create things and policies on their own, so they are an admin's.
    ManageProvisioning,
}

impl Role {
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match permission {
            ReadRegistry => true,
            ManageDevices | ManageEnrolment | RevokeCertificates | ReadAudit => {
                self >= Role::Operator
            }
            ManageApiKeys | ManagePolicies | ManageProvisioning => self == Role::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}` (viewer, operator, admin)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_only_reads() {
        assert!(Role::Viewer.allows(Permission::ReadRegistry));
        for p in [
            Permission::ManageDevices,
            Permission::ManageEnrolment,
            Permission::RevokeCertificates,
            Permission::ReadAudit,
            Permission::ManageApiKeys,
        ] {
            assert!(!Role::Viewer.allows(p), "{p:?}");
        }
    }

    #[test]
    fn only_an_admin_manages_api_keys() {
        assert!(!Role::Operator.allows(Permission::ManageApiKeys));
        assert!(Role::Admin.allows(Permission::ManageApiKeys));
        assert!(Role::Operator.allows(Permission::RevokeCertificates));
    }
}
