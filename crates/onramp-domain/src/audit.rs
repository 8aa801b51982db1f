//! The audit log's vocabulary: who did what to which target, from where, and how it ended.

use crate::UnixTime;
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "success" => Some(Outcome::Success),
            "denied" => Some(Outcome::Denied),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One line of the append-only audit log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub tenant: String,
    /// `apikey:<id>`, `cli:<user>`, `device:<thing>`, `token:<id>`, `system`.
    pub actor: String,
    /// Dotted verb such as `device.suspend` or `est.simpleenroll`.
    pub action: String,
    /// What was acted on, such as `device:pump-7` or `certificate:<serial>`.
    pub target: String,
    /// Source address (IP) or `local` for the CLI.
    pub source: String,
    pub outcome: Outcome,
    /// Readable detail: the refusal reason, the new status. Never a secret.
    pub detail: String,
    pub at: UnixTime,
}
