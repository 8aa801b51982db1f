//! Onramp's registry storage.
//!
//! One interface, [`Store`], with two backends selected by URL: SQLite (the
//! embedded default) and PostgreSQL (production, several nodes). Every
//! registry change is written in the same transaction as its audit entry, and
//! an enrolment (token use, device state, superseded and new certificate) is
//! one transaction: the registry never records a certificate that was not
//! issued, and a certificate is only handed out once it is recorded.
//!
//! The store knows nothing of HTTP, MQTT or certificates' bytes beyond storing them.

mod artifacts;
mod events;
mod job_control;
mod jobs;
mod provisioning;
mod rotation;
mod sessions;
mod sql;
pub mod testing;

pub use artifacts::{ArtifactRecord, ArtifactStore, SignerRecord};
pub use events::{
    DeliveryOutcome, DeliveryRecord, DueDelivery, EventStore, FindingRecord, SubscriptionRecord,
};
pub use job_control::{JobControl, JobControlStore, ScheduledJob};
pub use jobs::{ExecutionWrite, JobRecord, JobStore, execution_cursor_of};
pub use provisioning::{
    OwnershipClaim, PolicyToAttach, ProvisioningStore, RegistrationCommit, RegistrationOutcome,
};
pub use rotation::{RotationQuery, RotationRecord, RotationStore, RotationSweep};
pub use sessions::{
    SessionStore, SessionWrite, StoredHeldMessage, StoredMqttMessage, StoredSession,
    StoredSessionRecord, StoredSubscription,
};

use async_trait::async_trait;
use onramp_domain::{
    AllowlistEntry, ApiKey, AuditEntry, AuditQuery, CertStatus, Certificate, Device, DeviceFilter,
    DeviceProfile, DeviceStatus, EnrolmentToken, FleetGauges, LifecycleAction, Page, PolicyTarget,
    RetainedRecord, RevokedIdentity, Role, StoredPolicy, TransitionError, UnixTime,
};
use std::sync::Arc;

pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the enrolment token can no longer be used")]
    TokenNotUsable,
    #[error("the certificate being renewed is no longer active")]
    CertificateNotActive,
    /// The database stayed locked (SQLite) or the transaction lost to a
    /// concurrent one (PostgreSQL) past the wait: nothing was written, and the
    /// same call may simply be tried again.
    #[error("the database is busy: {0}")]
    Busy(String),
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database file: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write shared a transaction with others that did not commit:
    /// nothing of it was written.
    #[error("the write transaction did not commit: {0}")]
    Uncommitted(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_busy(&e) {
            StoreError::Busy(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

/// Whether an error means "try again later" rather than "this is broken":
/// SQLITE_BUSY / SQLITE_LOCKED (any extended code), a PostgreSQL
/// serialization failure, deadlock or lock timeout, or no pool connection
/// free within the acquire timeout.
fn is_busy(e: &sqlx::Error) -> bool {
    use sqlx::error::DatabaseError as _;
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => {
            if let Some(s) = d.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                let primary = s
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                matches!(primary, Some(5 | 6))
            } else if let Some(p) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                matches!(p.code(), "40001" | "40P01" | "55P03")
            } else {
                false
            }
        }
        _ => false,
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a reader of the identity-change feed stands; see
/// [`Store::identity_changes`]. Each gateway node keeps its own.
#[derive(Debug, Clone, Default)]
/// A reader's place in a feed read by position: the identity-change feed,
/// and the message outbox.
pub struct IdentityChangeCursor {
    /// SQLite: the last sequence number handled (sequence order is commit
    /// order there, as write transactions run one at a time).
    pub(crate) seq: i64,
    /// PostgreSQL: every row written by a transaction older than this one
    /// has been handled.
    pub(crate) txid_floor: i64,
    /// PostgreSQL: rows at or above the floor already handled, by sequence
    /// number, with their transaction id so they are forgotten once the
    /// floor passes them.
    pub(crate) seen: std::collections::HashMap<i64, i64>,
}

/// A certificate Onramp's own CA issued (device or claim), as a CA
/// rollover needs it: to learn which issuing CA signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCertificate {
    pub serial: String,
    pub pem: String,
    /// `active`, `superseded` or `revoked`.
    pub status: String,
    pub not_after: UnixTime,
    /// `device` or `claim`.
    pub kind: &'static str,
}

/// A revoked certificate as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub revoked_at: UnixTime,
    /// The registry's reason name (`keyCompromise`, ...); `unspecified` when none was given.
    pub reason: String,
}

/// A certificate to record, as issued by the CA.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub serial: String,
    pub fingerprint: String,
    pub pem: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
}

/// Which existing certificates a new one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supersede {
    /// A fresh enrolment: every active certificate of the device.
    AllActive,
    /// A re-enrolment: exactly this one, which must still be active.
    Certificate(String),
}

/// Everything an enrolment writes, committed as one transaction.
#[derive(Debug, Clone)]
pub struct EnrolmentCommit {
    pub tenant: String,
    pub thing_name: String,
    pub serial_number: String,
    /// Used when the device does not exist yet.
    pub profile: DeviceProfile,
    /// The token to consume; it must still be unused, unrevoked and unexpired.
    pub token_id: Option<String>,
    /// SHA-256 (hex) of the certified SubjectPublicKeyInfo; recorded with the
    /// token so that a retry of this enrolment can be recognised.
    pub public_key_sha256: String,
    pub supersede: Supersede,
    pub certificate: NewCertificate,
    pub audit: AuditEntry,
    pub now: UnixTime,
}

/// What a consumed enrolment token produced.
#[derive(Debug, Clone)]
pub struct TokenEnrolment {
    pub used_at: UnixTime,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo the certificate was issued for.
    pub public_key_sha256: String,
    pub certificate: Certificate,
}

/// A shadow as stored: its document (None when deleted) and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShadow {
    pub document: Option<String>,
    pub version: i64,
    pub updated_at: UnixTime,
}

/// A shadow write seen by the change watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowChange {
    pub tenant: String,
    pub thing_name: String,
    pub shadow_name: String,
    pub shadow: StoredShadow,
}

/// A message for MQTT subscribers on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub tenant: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The answer to [`Store::claim_task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskClaim {
    /// This holder runs the task now.
    Won,
    /// Not due, or another holder has it: ask again at this time.
    NotBefore(UnixTime),
}

/// A new enrolment token (its hash; the token itself is never stored).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub tenant: String,
    pub token_hash: String,
    pub serial_number: String,
    pub thing_name: String,
    pub profile: DeviceProfile,
    pub expires_at: UnixTime,
    pub created_by: String,
}

#[async_trait]
pub trait Store:
    ProvisioningStore
    + JobStore
    + JobControlStore
    + ArtifactStore
    + EventStore
    + SessionStore
    + RotationStore
    + Send
    + Sync
    + 'static
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    // Tenants.
    async fn create_tenant(&self, id: &str, audit: &AuditEntry, now: UnixTime) -> Result<()>;
    async fn list_tenants(&self) -> Result<Vec<String>>;

    // Devices.
    async fn get_device(&self, tenant: &str, thing_name: &str) -> Result<Option<Device>>;
    async fn get_device_by_serial(&self, tenant: &str, serial: &str) -> Result<Option<Device>>;
    async fn list_devices(
        &self,
        tenant: &str,
        filter: &DeviceFilter,
        page: &Page,
    ) -> Result<Vec<Device>>;
    /// Applies a lifecycle action; decommissioning also revokes every
    /// certificate of the device. Returns the device after the change.
    async fn transition_device(
        &self,
        tenant: &str,
        thing_name: &str,
        action: LifecycleAction,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Device>;
    /// Merges `patch` into the attributes; a `null` value removes the key.
    async fn patch_device_attributes(
        &self,
        tenant: &str,
        thing_name: &str,
        patch: &serde_json::Map<String, serde_json::Value>,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Device>;

    // Enrolment.
    async fn commit_enrolment(&self, commit: &EnrolmentCommit) -> Result<Certificate>;

    // Certificates.
    async fn get_certificate(&self, serial: &str) -> Result<Option<Certificate>>;
    async fn list_certificates(
        &self,
        tenant: &str,
        thing_name: Option<&str>,
        status: Option<CertStatus>,
        page: &Page,
    ) -> Result<Vec<Certificate>>;
    async fn revoke_certificate(
        &self,
        tenant: &str,
        serial: &str,
        reason: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<Certificate>;
    /// Every revoked certificate of Onramp's own CA, device and claim
    /// certificates of every tenant, that has not expired at `now`: what the
    /// CRL lists. Ordered by serial.
    async fn revoked_own_certificates(&self, now: UnixTime) -> Result<Vec<RevokedEntry>>;
    /// Every device and claim certificate of Onramp's own CAs, of every
    /// tenant and status, that has not expired at `now`: what still depends
    /// on an issuing CA. Ordered by serial.
    async fn unexpired_own_certificates(&self, now: UnixTime) -> Result<Vec<OwnCertificate>>;

    // Enrolment tokens.
    /// Records the token and, if the device is unknown, registers it as pending.
    async fn create_token(
        &self,
        token: &NewToken,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<EnrolmentToken>;
    async fn get_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrolmentToken>>;
    /// The certificate a consumed token produced and the key it certifies;
    /// None for an unused token or one used before this was recorded.
    async fn token_enrolment(&self, token_id: &str) -> Result<Option<TokenEnrolment>>;
    async fn list_tokens(&self, tenant: &str, page: &Page) -> Result<Vec<EnrolmentToken>>;
    async fn revoke_token(
        &self,
        tenant: &str,
        id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<EnrolmentToken>;

    // Allow-list.
    /// Adds serials (existing ones are kept); returns how many were new.
    async fn allowlist_add(
        &self,
        tenant: &str,
        serials: &[String],
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<u64>;
    async fn allowlist_remove(&self, tenant: &str, serial: &str, audit: &AuditEntry) -> Result<()>;
    async fn allowlist_contains(&self, tenant: &str, serial: &str) -> Result<bool>;
    async fn list_allowlist(&self, tenant: &str, page: &Page) -> Result<Vec<AllowlistEntry>>;

    // API keys.
    async fn create_api_key(&self, key: &ApiKey, key_hash: &str, audit: &AuditEntry) -> Result<()>;
    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>>;
    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>>;
    async fn revoke_api_key(
        &self,
        tenant: &str,
        id: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<ApiKey>;

    // Policies.
    /// Creates the policy, or stores a new version of it.
    async fn put_policy(
        &self,
        tenant: &str,
        name: &str,
        document: &str,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<StoredPolicy>;
    async fn get_policy(&self, tenant: &str, name: &str) -> Result<Option<StoredPolicy>>;
    async fn list_policies(&self, tenant: &str) -> Result<Vec<StoredPolicy>>;
    async fn attach_policy(
        &self,
        tenant: &str,
        name: &str,
        target: &PolicyTarget,
        audit: &AuditEntry,
        now: UnixTime,
    ) -> Result<()>;
    async fn detach_policy(
        &self,
        tenant: &str,
        name: &str,
        target: &PolicyTarget,
        audit: &AuditEntry,
    ) -> Result<()>;
    async fn policy_targets(&self, tenant: &str, name: &str) -> Result<Vec<PolicyTarget>>;
    /// Policies that apply to a device: attached to it or to its class.
    async fn policies_for_device(
        &self,
        tenant: &str,
        thing_name: &str,
        device_class: Option<&str>,
    ) -> Result<Vec<StoredPolicy>>;

    // Gateway state.
    async fn set_device_connected(
        &self,
        tenant: &str,
        thing_name: &str,
        connected: bool,
        now: UnixTime,
    ) -> Result<()>;
    /// Many presence changes in one statement: `(tenant, thing name, connected)`.
    async fn set_devices_connected(
        &self,
        updates: &[(String, String, bool)],
        now: UnixTime,
    ) -> Result<()>;
    async fn put_retained(&self, record: &RetainedRecord, now: UnixTime) -> Result<()>;
    async fn delete_retained(&self, tenant: &str, topic: &str) -> Result<()>;
    async fn load_retained(&self) -> Result<Vec<RetainedRecord>>;
    /// A cursor at the head of the identity-change feed: changes committed
    /// from now on are returned by [`Store::identity_changes`], earlier ones
    /// never are.
    async fn identity_change_head(&self) -> Result<IdentityChangeCursor>;
    /// Identities that must be cut (a certificate revoked or made inactive, a
    /// device no longer active, a claim revoked, a registered CA's active
    /// certificates after the CA was deactivated) that committed since the
    /// cursor, each exactly once, however late its transaction committed. The
    /// cursor advances only when the call succeeds.
    async fn identity_changes(
        &self,
        cursor: &mut IdentityChangeCursor,
    ) -> Result<Vec<RevokedIdentity>>;
    /// Forgets identity changes recorded before `before`; readers are seconds
    /// behind, never days. Returns how many were removed.
    async fn prune_identity_changes(&self, before: UnixTime) -> Result<u64>;

    // Messages for the connections of every node.
    /// Records messages this node (`origin`) published, for the other nodes.
    async fn append_outbox(
        &self,
        messages: &[OutboxMessage],
        origin: &str,
        now: UnixTime,
    ) -> Result<()>;
    /// Where a node starts reading the outbox: after everything committed now.
    async fn outbox_head(&self) -> Result<IdentityChangeCursor>;
    /// Messages committed since the cursor, each once however late its
    /// transaction committed, with the node that wrote each. The cursor
    /// advances only when the call succeeds.
    async fn outbox_messages(
        &self,
        cursor: &mut IdentityChangeCursor,
    ) -> Result<Vec<(OutboxMessage, String)>>;
    /// Forgets outbox messages written before `before`.
    async fn prune_outbox(&self, before: UnixTime) -> Result<u64>;

    // Periodic tasks shared by the nodes of one database.
    /// Takes the task for `holder` if it is due (last run at least
    /// `period_secs` ago) and no other holder's lease is unexpired; the lease
    /// then lasts `lease_secs`. Returns the claim, or when to ask again.
    async fn claim_task(
        &self,
        name: &str,
        holder: &str,
        now: UnixTime,
        period_secs: i64,
        lease_secs: i64,
    ) -> Result<TaskClaim>;
    /// Records a run that `holder` finished at `now` and releases the lease.
    /// False when the lease had passed to another holder meanwhile.
    async fn finish_task(&self, name: &str, holder: &str, now: UnixTime) -> Result<bool>;

    // Shadows.
    /// The stored shadow (its JSON document, or None when deleted) and its version.
    async fn get_shadow(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
    ) -> Result<Option<StoredShadow>>;
    /// Writes a shadow if its stored version is still `expected_version`
    /// (None: no row yet); records the version in the history. Returns false
    /// when another writer got there first.
    #[allow(clippy::too_many_arguments)]
    async fn put_shadow(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
        expected_version: Option<i64>,
        write: &StoredShadow,
        writer: &str,
        now: UnixTime,
    ) -> Result<bool>;
    /// Names of the thing's existing (not deleted) shadows; "" is the classic one.
    async fn list_shadows(&self, tenant: &str, thing_name: &str) -> Result<Vec<String>>;
    /// Recent versions of a shadow, newest first.
    async fn shadow_history(
        &self,
        tenant: &str,
        thing_name: &str,
        shadow_name: &str,
        limit: u32,
    ) -> Result<Vec<StoredShadow>>;
    /// Existing shadows of one name across a tenant's things, by thing name after `after`.
    async fn list_shadow_documents(
        &self,
        tenant: &str,
        shadow_name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredShadow)>>;
    /// Shadows written at or after `since` by a writer other than `except_writer`.
    async fn shadows_updated_since(
        &self,
        since: UnixTime,
        except_writer: &str,
    ) -> Result<Vec<ShadowChange>>;
    /// Drops history older than `before` beyond the newest `keep` versions of each shadow.
    async fn compact_shadow_history(&self, before: UnixTime, keep: i64) -> Result<u64>;

    // Audit and operations.
    /// Appends an entry that records no other change (typically a refusal).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    async fn query_audit(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    async fn fleet_gauges(&self, now: UnixTime) -> Result<FleetGauges>;
    /// Writes to the database to prove it is writable.
    async fn probe_writable(&self, now: UnixTime) -> Result<()>;
}

/// Opens the store at `url` (`sqlite://…` or `postgres://…`) and runs its migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::open(url).await?))
}

/// Roles are stored by name.
pub(crate) fn parse_role(s: &str) -> Result<Role> {
    s.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn parse_status(s: &str) -> Result<DeviceStatus> {
    s.parse().map_err(StoreError::Corrupt)
}
