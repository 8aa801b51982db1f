//! Onramp's use cases. A service method is the one place a use case lives:
//! the HTTP API, EST, the CLI (and later MQTT) all call these, never the
//! store directly. Decisions come from `onramp-domain`; the store and the CA
//! are the only side effects.

mod admin;
mod artifacts;
mod ca_rollover;
mod caller;
mod device;
mod enrolment;
mod error;
mod events;
mod gateway;
mod job_control;
mod jobs;
mod provisioning;
mod ratelimit;
mod refusals;
mod revocation;
mod rollout;
mod rotation;
mod scheduler;
mod shadow;

pub use admin::{CreatedApiKey, CreatedToken, TokenRequest};
pub use artifacts::{Artifact, ArtifactDownload, ArtifactSettings, Signer, UploadArtifact};
pub use ca_rollover::{CaRolloverRequest, IssuingCa};
pub use caller::Caller;
pub use device::{Audience, DeviceReply, MessageSink, RequestOrigin};
pub use enrolment::{BootstrapCa, EnrolCredential, EnrolOperation, Enrolled};
pub use error::ServiceError;
pub use events::{
    AuditFinding, CreatedSubscription, EventDelivery, EventSettings, EventSubscription,
};
pub use gateway::{Authorizer, DeviceIdentity};
pub use jobs::{CreateJob, FailureGroup, JobDescription, JobTargets, MAX_JOB_TARGETS};
pub use onramp_domain::{DeviceRequest, ShadowOp, ShadowTopic};
pub use onramp_store::IdentityChangeCursor;
pub use onramp_store::{
    SessionWrite, StoredHeldMessage, StoredMqttMessage, StoredSession, StoredSessionRecord,
    StoredSubscription,
};
pub use provisioning::{
    ClaimContext, CreatedClaim, ProvisioningReply, ProvisioningSettings, TemplateDetail,
    TemplateSettings,
};
pub use ratelimit::{FailureLimit, FailureLimiter, RateLimit, RateLimiter};
pub use refusals::RefusalAggregator;
pub use revocation::{CurrentCrl, RevocationSettings};
pub use rotation::RotateRequest;
pub use scheduler::ClusterTask;

use onramp_pki::{Authorities, CaKeyAlgorithm, CertificateAuthority, SecretHasher};
use onramp_store::Store;
use std::sync::Arc;

pub type Result<T> = std::result::Result<T, ServiceError>;

/// Tunables of enrolment and the registry.
#[derive(Debug, Clone)]
pub struct Settings {
    pub device_cert_validity_days: u32,
    pub token_ttl_secs: i64,
    /// When on, a serial must be on its tenant's allow-list to enrol.
    pub require_allowlist: bool,
    /// How long after a token enrolment the same request (same token, same
    /// public key) is answered with the same certificate; 0: never.
    pub enrolment_retry_window_secs: i64,
    pub rate_per_source: RateLimit,
    pub rate_per_credential: RateLimit,
    pub bootstrap_cas: Vec<BootstrapCa>,
    /// Devices with no attached policy get Onramp's least-privilege device policy.
    pub default_device_policy: bool,
    pub provisioning: ProvisioningSettings,
    /// Back-off after failed enrolment tokens, per claimed serial number.
    pub failures_per_serial: FailureLimit,
    /// Back-off after failed API keys, per source address.
    pub api_key_failures_per_source: FailureLimit,
    /// Refusals of the same kind within this window share one audit row.
    pub refusal_audit_window_secs: i64,
    /// Jobs requests per thing; beyond it devices get RequestThrottled.
    pub jobs_rate_per_thing: RateLimit,
    /// Seconds over which a rollout's `maximumPerMinute` is counted: 60,
    /// shorter only to watch a paced rollout quickly (tests, rehearsals).
    pub rollout_window_secs: i64,
    /// OTA artifacts: storage, size limit, download URLs and rate.
    pub artifacts: ArtifactSettings,
    /// Outbound events (webhooks) and audit checks.
    pub events: EventSettings,
    /// Key algorithm of the CAs a rollover creates.
    pub ca_key_algorithm: CaKeyAlgorithm,
    /// Certificate rotation: grace period, pending expiry, renewal after expiry.
    pub rotation: onramp_domain::rotation::RotationRules,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            device_cert_validity_days: 365,
            token_ttl_secs: 7 * 86_400,
            require_allowlist: false,
            enrolment_retry_window_secs: 600,
            rate_per_source: RateLimit {
                per_second: 100,
                burst: 200,
            },
            // A device stuck in a retry loop gets a few quick tries, then one
            // every ten seconds: enough to recover, too little to starve others.
            rate_per_credential: RateLimit {
                per_second: 0,
                burst: 5,
            },
            bootstrap_cas: Vec::new(),
            default_device_policy: true,
            provisioning: ProvisioningSettings::default(),
            failures_per_serial: FailureLimit {
                max_failures: 5,
                backoff: std::time::Duration::from_secs(10),
                max_backoff: std::time::Duration::from_secs(600),
            },
            api_key_failures_per_source: FailureLimit {
                max_failures: 10,
                backoff: std::time::Duration::from_secs(10),
                max_backoff: std::time::Duration::from_secs(600),
            },
            refusal_audit_window_secs: 60,
            jobs_rate_per_thing: RateLimit {
                per_second: 20,
                burst: 40,
            },
            rollout_window_secs: onramp_domain::job::ROLLOUT_WINDOW_SECONDS,
            artifacts: ArtifactSettings::default(),
            events: EventSettings::default(),
            ca_key_algorithm: CaKeyAlgorithm::default(),
            rotation: onramp_domain::rotation::RotationRules::default(),
        }
    }
}

/// The services, wired to their store, CA and settings.
#[derive(Clone)]
pub struct Onramp {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// Every issuing CA: the active one signs, the previous ones are still
    /// trusted, the retired ones only sign their CRLs. Replaced whole when a
    /// rollover or retirement is seen on disk.
    authorities: std::sync::RwLock<Arc<Authorities>>,
    /// What the CA directory looked like when `authorities` was loaded.
    ca_marker: std::sync::Mutex<String>,
    /// The base of the CRL and OCSP URLs issued certificates carry.
    revocation_base: std::sync::RwLock<Option<String>>,
    /// The current authorities, for listeners whose trust anchors follow them.
    ca_watch: tokio::sync::watch::Sender<Arc<Authorities>>,
    hasher: SecretHasher,
    settings: Settings,
    source_limiter: RateLimiter,
    credential_limiter: RateLimiter,
    claim_limiter: RateLimiter,
    throttle_audit_limiter: RateLimiter,
    provisioning_source_limiter: RateLimiter,
    serial_failures: FailureLimiter,
    api_key_failures: FailureLimiter,
    refusals: RefusalAggregator,
    /// Parsed provisioning templates by (tenant, name, version).
    #[allow(clippy::type_complexity)]
    parsed_templates: std::sync::Mutex<
        std::collections::HashMap<
            (String, String, i64),
            Arc<onramp_domain::template::ProvisioningTemplate>,
        >,
    >,
    /// Compiled policy sets shared by the connections that hold them (see
    /// `gateway::CompiledPolicies`).
    compiled_policies: std::sync::Mutex<gateway::CompiledPolicies>,
    /// Presence changes waiting to be written (see `device_presence`).
    presence: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<(String, String, bool)>>,
    /// Client for pre-provisioning hooks.
    http: reqwest::Client,
    jobs_limiter: RateLimiter,
    /// Job documents and configurations by (tenant, job id); both immutable.
    #[allow(clippy::type_complexity)]
    job_rules: std::sync::Mutex<std::collections::HashMap<(String, String), Arc<jobs::JobRules>>>,
    /// Where server-originated messages are published; set by the gateway when it starts.
    sink: std::sync::OnceLock<Arc<dyn MessageSink>>,
    /// Names this process as a shadow writer, so it skips its own writes when
    /// watching for changes made elsewhere.
    node_id: String,
    /// Shadow versions whose replies this process published (tenant, thing, shadow).
    published_shadows: std::sync::Mutex<std::collections::HashMap<(String, String, String), i64>>,
    /// Artifact download requests per device.
    download_limiter: RateLimiter,
    /// The HTTPS base URL of artifact download links.
    artifact_base_url: std::sync::OnceLock<String>,
    /// The CRL and the OCSP responder, once `onramp serve` enables them.
    revocation: std::sync::OnceLock<revocation::RevocationState>,
    /// MQTT connection attempts not yet written (for the audit checks).
    attempts: std::sync::Mutex<events::AttemptBuffer>,
}

impl Onramp {
    pub fn new(
        store: Arc<dyn Store>,
        ca: CertificateAuthority,
        hasher: SecretHasher,
        settings: Settings,
    ) -> Onramp {
        Self::with_authorities(store, Authorities::single(ca), hasher, settings)
    }

    /// Like [`Onramp::new`], with every issuing CA of the CA directory.
    pub fn with_authorities(
        store: Arc<dyn Store>,
        authorities: Authorities,
        hasher: SecretHasher,
        settings: Settings,
    ) -> Onramp {
        let marker = Authorities::marker(authorities.active().dir());
        let authorities = Arc::new(authorities);
        let (ca_watch, _) = tokio::sync::watch::channel(authorities.clone());
        // One TLS provider for the whole process (the hook client needs it
        // named); an earlier install by the caller is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Onramp {
            inner: Arc::new(Inner {
                source_limiter: RateLimiter::new(settings.rate_per_source),
                credential_limiter: RateLimiter::new(settings.rate_per_credential),
                presence: std::sync::OnceLock::new(),
                compiled_policies: std::sync::Mutex::default(),
                serial_failures: FailureLimiter::new(settings.failures_per_serial),
                api_key_failures: FailureLimiter::new(settings.api_key_failures_per_source),
                refusals: RefusalAggregator::new(settings.refusal_audit_window_secs),
                parsed_templates: std::sync::Mutex::new(std::collections::HashMap::new()),
                throttle_audit_limiter: RateLimiter::new(RateLimit {
                    per_second: 0,
                    burst: 1,
                }),
                claim_limiter: RateLimiter::new(settings.provisioning.rate_per_claim),
                provisioning_source_limiter: RateLimiter::new(
                    settings.provisioning.rate_per_source,
                ),
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
                sink: std::sync::OnceLock::new(),
                jobs_limiter: RateLimiter::new(settings.jobs_rate_per_thing),
                download_limiter: RateLimiter::new(settings.artifacts.downloads_per_device),
                artifact_base_url: std::sync::OnceLock::new(),
                revocation: std::sync::OnceLock::new(),
                attempts: std::sync::Mutex::new(events::AttemptBuffer::default()),
                job_rules: std::sync::Mutex::new(std::collections::HashMap::new()),
                published_shadows: std::sync::Mutex::new(std::collections::HashMap::new()),
                node_id: uuid::Uuid::new_v4().simple().to_string(),
                store,
                authorities: std::sync::RwLock::new(authorities),
                ca_marker: std::sync::Mutex::new(marker),
                revocation_base: std::sync::RwLock::new(None),
                ca_watch,
                hasher,
                settings,
            }),
        }
    }

    /// The registry's backend, for logs and `onramp init`: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// The active issuing CA: the one that signs new certificates.
    pub fn ca(&self) -> Arc<CertificateAuthority> {
        self.inner.ca()
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Forgets idle rate-limit keys; call periodically.
    pub fn sweep_rate_limits(&self) {
        self.inner.source_limiter.sweep();
        self.inner.credential_limiter.sweep();
        self.inner.claim_limiter.sweep();
        self.inner.throttle_audit_limiter.sweep();
        self.inner.provisioning_source_limiter.sweep();
        self.inner.download_limiter.sweep();
        self.inner.serial_failures.sweep(std::time::Instant::now());
        self.inner.api_key_failures.sweep(std::time::Instant::now());
    }

    /// Readiness: the database accepts writes and the CA key signs.
    pub async fn readiness(&self) -> std::result::Result<(), String> {
        self.inner
            .store
            .probe_writable(now())
            .await
            .map_err(|e| format!("database not writable: {e}"))?;
        self.inner
            .ca()
            .self_check()
            .map_err(|e| format!("CA key unusable: {e}"))?;
        Ok(())
    }

    /// Refreshes the fleet gauges on the metrics recorder.
    pub async fn refresh_fleet_gauges(&self) -> Result<()> {
        let g = self.inner.store.fleet_gauges(now()).await?;
        for (status, n) in g.devices_by_status {
            metrics::gauge!("onramp_devices", "status" => status.as_str()).set(n as f64);
        }
        for (within, n) in [
            ("7d", g.certs_expiring_7d),
            ("14d", g.certs_expiring_14d),
            ("30d", g.certs_expiring_30d),
        ] {
            metrics::gauge!("onramp_certificates_expiring", "within" => within).set(n as f64);
        }
        Ok(())
    }
}

impl Inner {
    fn authorities(&self) -> Arc<Authorities> {
        self.authorities
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn ca(&self) -> Arc<CertificateAuthority> {
        self.authorities().active().clone()
    }
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
