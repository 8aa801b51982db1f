//! Onramp's domain: the rules of device identity and lifecycle, as pure code.
//!
//! Nothing in this crate performs I/O, reads a clock or draws random numbers:
//! callers pass the current time and any randomness in. That keeps every rule
//! here testable exhaustively, without a database, a socket or a CA.

pub mod artifact;
pub mod audit;
pub mod audit_check;
pub mod enrolment;
pub mod event;
pub mod fleet;
pub mod job;
pub mod json;
pub mod lifecycle;
pub mod names;
pub mod policy;
pub mod provisioning;
pub mod registry;
pub mod request;
pub mod role;
pub mod rotation;
pub mod shadow;
pub mod template;
pub mod topic;
pub mod version;

pub use audit::{AuditEntry, Outcome};
pub use enrolment::{
    CertStatus, EnrolmentRetry, KeyKind, KeyRefusal, RetryRefusal, SubjectRefusal, TokenRefusal,
    TokenState, check_key, check_subject,
};
pub use lifecycle::{DeviceStatus, LifecycleAction, TransitionError};
pub use names::{NameError, validate_serial_number, validate_thing_name};
pub use registry::*;
pub use request::{DeviceRequest, JobsOp, JobsTopic, ShadowOp, ShadowTopic};
pub use role::{Permission, Role};
pub use version::{FirmwareVersion, validate_version_bound, version_sort_key};

/// Seconds since the Unix epoch. The domain never reads the clock itself.
pub type UnixTime = i64;
