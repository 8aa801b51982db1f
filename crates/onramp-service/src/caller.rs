use crate::{Result, ServiceError};
use onramp_domain::{AuditEntry, Outcome, Permission, Role};

/// Who is asking, for which tenant, from where. Every management call carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
    /// `apikey:<id>` or `cli:<user>`.
    pub actor: String,
    /// Source IP, or `local` for the CLI.
    pub source: String,
}

impl Caller {
    /// The local operator at the CLI: full rights on one tenant.
    pub fn local(tenant: &str) -> Caller {
        let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
        Caller {
            tenant: tenant.to_string(),
            role: Role::Admin,
            actor: format!("cli:{user}"),
            source: "local".into(),
        }
    }

    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "the {} role may not do this",
                self.role
            )))
        }
    }

    pub(crate) fn audit(
        &self,
        action: &str,
        target: String,
        detail: String,
        now: i64,
    ) -> AuditEntry {
        AuditEntry {
            id: 0,
            tenant: self.tenant.clone(),
            actor: self.actor.clone(),
            action: action.to_string(),
            target,
            source: self.source.clone(),
            outcome: Outcome::Success,
            detail,
            at: now,
        }
    }
}
