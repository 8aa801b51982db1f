//! Configuration: defaults, then an optional TOML file, then `ONRAMP_*`
//! environment variables (`ONRAMP_DATA_DIR`, `ONRAMP_DATABASE_URL`,
//! `ONRAMP_HTTP__LISTEN`, `ONRAMP_ENROLMENT__REQUIRE_ALLOWLIST`, ...).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the CA, keys and (by default) the SQLite database live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data directory.
    pub database_url: Option<String>,
    pub http: HttpConfig,
    pub ops: OpsConfig,
    pub ca: CaConfig,
    pub pki: PkiConfig,
    pub enrolment: EnrolmentConfig,
    pub mqtt: MqttConfig,
    pub provisioning: ProvisioningConfig,
    pub artifacts: ArtifactsConfig,
    pub jobs: JobsConfig,
    pub events: EventsConfig,
    pub log: LogConfig,
}

/// Outbound events (webhooks) and audit checks (docs/events.md, docs/audit-checks.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Delay after a delivery's first failure; it doubles after each failure.
    pub retry_initial_secs: i64,
    /// No retry waits longer than this.
    pub retry_max_secs: i64,
    /// Failed attempts after which a delivery goes to the dead-letter list.
    pub max_attempts: u32,
    /// Time allowed for one delivery.
    pub timeout_secs: u64,
    /// Seconds between scheduled runs of the audit checks; 0: on demand only.
    pub audit_interval_secs: i64,
    /// Audit: a device certificate expiring within this many days is a finding.
    pub device_cert_expiry_days: i64,
    /// Audit: the same for CA certificates.
    pub ca_expiry_days: i64,
    /// Audit: an active device never connected this long after registration.
    pub never_seen_days: i64,
    /// Audit: a claim certificate valid for longer than this.
    pub claim_max_validity_days: i64,
    /// Audit: connection attempts older than this are not looked at.
    pub connection_lookback_secs: i64,
}

/// Jobs (docs/jobs.md, docs/rollouts.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// The window, in seconds, over which a rollout's `maximumPerMinute` is
    /// counted: 60. A shorter one lets a test or a rehearsal watch a paced
    /// rollout through several windows quickly; production keeps 60.
    pub rollout_window_secs: i64,
}

/// Signed OTA artifacts (docs/artifacts.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Base of the download URLs put in job documents, such as
    /// `https://onramp.example.com:8443`; empty: `https://` + the first of
    /// `http.hosts` + the HTTPS port.
    pub public_url: String,
    /// The largest artifact accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Lifetime of a download URL in a job document.
    pub url_ttl_secs: i64,
    /// Download requests per device.
    pub downloads_per_device: RateConfig,
    /// Bandwidth of one download, bytes per second; 0: unpaced.
    pub download_bytes_per_sec: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Lifetime of a certificate ownership token (AWS: one hour).
    pub ownership_token_ttl_secs: i64,
    /// Provisioning operations per claim certificate.
    pub rate_per_claim: RateConfig,
    /// Provisioning operations per source address.
    pub rate_per_source: RateConfig,
    /// Time the pre-provisioning hook has to answer; it fails closed.
    pub hook_timeout_secs: u64,
    /// Claim certificates expiring within this window are reported daily.
    pub claim_expiry_warning_days: i64,
    /// Refuse a JITP device's first connection after registering it, as AWS IoT does.
    pub jitp_drop_first_connection: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub enabled: bool,
    pub listen: String,
    pub max_connections: usize,
    pub require_client_id_match: bool,
    /// Devices without an attached policy get the built-in least-privilege one.
    pub default_device_policy: bool,
    pub max_payload_bytes: usize,
    pub max_subscriptions: usize,
    pub max_inflight: usize,
    pub max_queued: usize,
    pub session_expiry_default_secs: u64,
    /// Time allowed for the TLS handshake, and then for CONNECT.
    pub handshake_timeout_secs: u64,
    pub rate_per_source: RateConfig,
    pub rate_per_identity: RateConfig,
    /// CONNECTs with one claim certificate, which a whole batch shares.
    pub claim_rate_per_certificate: RateConfig,
    /// CONNECTs with any claim certificate from one source address.
    pub claim_rate_per_source: RateConfig,
    /// Refuse QoS 2 as AWS IoT does.
    pub aws_strict: bool,
    /// Largest MQTT keep-alive accepted, in seconds.
    pub max_keep_alive_secs: u16,
    /// Messages (in flight and queued) one persistent session keeps in the
    /// store; beyond it the oldest queued one is dropped.
    pub stored_session_max_messages: usize,
    /// How long a publisher is held while a receiving connection is behind,
    /// in milliseconds, before the drop policy applies; 0 drops at once.
    pub publisher_hold_ms: u64,
}

/// The operations listener: plain HTTP, for probes and Prometheus.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// `host:port`; empty or `off` disables the listener.
    pub listen: String,
}

impl OpsConfig {
    /// The address to bind, or `None` when the listener is disabled.
    pub fn listen_addr(&self) -> Option<&str> {
        let listen = self.listen.trim();
        (!listen.is_empty() && !listen.eq_ignore_ascii_case("off")).then_some(listen)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Also serve `/metrics` on the HTTPS listener (unauthenticated).
    pub metrics: bool,
    /// Names and addresses in the server certificate.
    pub hosts: Vec<String>,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Time allowed for a request head (and, on HTTP/1.1, between requests).
    pub header_read_timeout_secs: u64,
    /// Time allowed for a request body, from its head.
    pub body_read_timeout_secs: u64,
    /// Time allowed for the body of an artifact upload (`POST /api/v1/artifacts`).
    pub upload_body_read_timeout_secs: u64,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout_secs: u64,
    /// Live HTTPS connections, in total and per client IP address.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Largest request head in bytes (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: u32,
    /// HTTP/2 PING interval; an unanswered PING closes the connection.
    pub h2_keep_alive_interval_secs: u64,
    /// Unread body bytes of a refused request read and discarded before the
    /// refusal is sent; beyond, the connection is closed.
    pub max_discard_bytes: u64,
    /// Back-off after failed API keys, per client IP address.
    pub api_key_failures_per_source: FailureConfig,
    /// Refusals (EST, API authentication) of one kind, target and source
    /// within this window are written as one audit row with a count.
    pub refusal_audit_window_secs: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailureConfig {
    /// Failures in a row before the back-off starts; 0 disables it.
    pub max_failures: u32,
    /// First back-off; each further failure doubles it.
    pub backoff_secs: u64,
    /// Longest back-off; failures older than this are forgotten.
    pub max_backoff_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// ecdsa-p256 (default), ecdsa-p384 or rsa-3072; used when the CA is created.
    pub key_algorithm: String,
    pub organization: String,
}

/// Revocation for relying parties: the CRL and the OCSP responder
/// (docs/revocation.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// Base of the CRL distribution point and OCSP URLs put in issued
    /// certificates, such as `http://pki.example.com`; empty: the plain-HTTP
    /// revocation listener when `listen` is set, else the HTTPS listener,
    /// with the first of `http.hosts`.
    pub public_url: String,
    /// A plain-HTTP listener serving only the CRL and OCSP, such as
    /// `0.0.0.0:8080`; empty or "off": none (both stay on the HTTPS listener).
    pub listen: String,
    /// From a CRL's thisUpdate to its nextUpdate; a new CRL is signed after
    /// half of it at the latest.
    pub crl_validity_secs: i64,
    /// From an OCSP answer's thisUpdate to its nextUpdate.
    pub ocsp_validity_secs: i64,
    /// Lifetime of the delegated OCSP signing certificate, renewed when a
    /// third of it is left.
    pub ocsp_signer_validity_days: u32,
    /// Certificate rotation (docs/lifecycle.md): how long after a rotated
    /// certificate's first connection the old one is revoked.
    pub rotation_grace_secs: i64,
    /// How long a rotated certificate may wait for its first connection
    /// before it is revoked unused.
    pub rotation_pending_ttl_secs: i64,
    /// A device whose certificate expired at most this many days ago may
    /// still renew it (EST simplereenroll, MQTT rotation); 0: off.
    pub renew_expired_within_days: u32,
    /// The same window in seconds, for windows shorter than a day; when
    /// not 0 it is used instead of `renew_expired_within_days`.
    pub renew_expired_within_secs: i64,
}

impl PkiConfig {
    /// The plain-HTTP revocation listener's address, or `None` when off.
    pub fn listen_addr(&self) -> Option<&str> {
        let listen = self.listen.trim();
        (!listen.is_empty() && !listen.eq_ignore_ascii_case("off")).then_some(listen)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapCaConfig {
    /// PEM file of a CA whose certificates may enrol (factory identities).
    pub cert: PathBuf,
    pub tenant: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentConfig {
    pub device_cert_validity_days: u32,
    pub token_ttl_secs: i64,
    pub require_allowlist: bool,
    /// How long after a token enrolment the same request (same token, same
    /// public key) gets the same certificate again, for a device whose
    /// response was lost; 0 turns retries off.
    pub retry_window_secs: i64,
    pub rate_per_source: RateConfig,
    pub rate_per_credential: RateConfig,
    /// Back-off after failed enrolment tokens, per claimed serial number.
    pub failures_per_serial: FailureConfig,
    pub bootstrap_cas: Vec<BootstrapCaConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
}

const DEFAULTS: &str = r#"
data_dir = "./onramp-data"

[http]
listen = "0.0.0.0:8443"
metrics = false
hosts = ["localhost", "127.0.0.1", "::1"]
handshake_timeout_secs = 10
header_read_timeout_secs = 10
body_read_timeout_secs = 30
upload_body_read_timeout_secs = 3600
idle_timeout_secs = 60
max_connections = 10000
max_connections_per_source = 256
h2_max_concurrent_streams = 32
max_header_bytes = 65536
h2_keep_alive_interval_secs = 30
max_discard_bytes = 16777216
api_key_failures_per_source = { max_failures = 10, backoff_secs = 10, max_backoff_secs = 600 }
refusal_audit_window_secs = 60

[ops]
listen = "127.0.0.1:9464"

[ca]
key_algorithm = "ecdsa-p256"
organization = "Onramp"

[pki]
public_url = ""
listen = ""
crl_validity_secs = 86400
ocsp_validity_secs = 3600
ocsp_signer_validity_days = 7
rotation_grace_secs = 86400
rotation_pending_ttl_secs = 604800
renew_expired_within_days = 0
renew_expired_within_secs = 0

[enrolment]
device_cert_validity_days = 365
token_ttl_secs = 604800
require_allowlist = false
retry_window_secs = 600
rate_per_source = { per_second = 100, burst = 200 }
rate_per_credential = { per_second = 0, burst = 5 }
failures_per_serial = { max_failures = 5, backoff_secs = 10, max_backoff_secs = 600 }
bootstrap_cas = []

[mqtt]
enabled = true
listen = "0.0.0.0:8883"
max_connections = 500000
require_client_id_match = true
default_device_policy = true
max_payload_bytes = 131072
max_subscriptions = 50
max_inflight = 100
max_queued = 1000
session_expiry_default_secs = 3600
handshake_timeout_secs = 10
rate_per_source = { per_second = 500, burst = 1000 }
rate_per_identity = { per_second = 1, burst = 5 }
claim_rate_per_certificate = { per_second = 200, burst = 1000 }
claim_rate_per_source = { per_second = 50, burst = 200 }
aws_strict = false
max_keep_alive_secs = 1200
stored_session_max_messages = 1000
publisher_hold_ms = 2000

[provisioning]
ownership_token_ttl_secs = 3600
rate_per_claim = { per_second = 200, burst = 1000 }
rate_per_source = { per_second = 50, burst = 200 }
hook_timeout_secs = 5
claim_expiry_warning_days = 30
jitp_drop_first_connection = false

[artifacts]
public_url = ""
max_upload_bytes = 2147483648
url_ttl_secs = 3600
downloads_per_device = { per_second = 1, burst = 10 }
download_bytes_per_sec = 0

[jobs]
rollout_window_secs = 60

[events]
retry_initial_secs = 10
retry_max_secs = 3600
max_attempts = 12
timeout_secs = 10
audit_interval_secs = 86400
device_cert_expiry_days = 30
ca_expiry_days = 90
never_seen_days = 30
claim_max_validity_days = 365
connection_lookback_secs = 86400

[log]
format = "text"
"#;

impl Config {
    pub fn load(file: Option<&Path>, data_dir_flag: Option<&Path>) -> Result<Config> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        // Only variables that name a setting are read: ONRAMP_CONFIG names the
        // file itself, and a stray ONRAMP_SOMETHING of a user's shell must not
        // stop the server. The settings are the top-level keys of DEFAULTS.
        let defaults = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .context("built-in defaults")?
            .try_deserialize::<std::collections::HashMap<String, config::Value>>()
            .context("built-in defaults")?;
        // `database_url` has no default, so it is named here explicitly.
        let known: Vec<String> = defaults
            .iter()
            .map(|(key, value)| match value.kind {
                config::ValueKind::Table(_) => format!("{}__", key.to_ascii_uppercase()),
                _ => key.to_ascii_uppercase(),
            })
            .chain(std::iter::once("DATABASE_URL".to_string()))
            .collect();
        let env: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                k.strip_prefix("ONRAMP_").is_some_and(|rest| {
                    known
                        .iter()
                        .any(|s| rest == s || (s.ends_with("__") && rest.starts_with(s.as_str())))
                })
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("ONRAMP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let mut cfg: Config = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        if let Some(dir) = data_dir_flag {
            cfg.data_dir = dir.to_path_buf();
        }
        Ok(cfg)
    }

    /// The effective settings as JSON, with any password in the database URL
    /// replaced by `***`, for `onramp config check`.
    pub fn shown(&self) -> Result<serde_json::Value> {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.as_deref().map(redact_url);
        serde_json::to_value(&shown).context("showing the configuration")
    }

    /// Refuses listen addresses that cannot be bound as written, so that a
    /// typo is reported by `onramp config check` and not at the first start.
    pub fn check_listen_addresses(&self) -> Result<()> {
        use std::net::ToSocketAddrs;
        let mut listeners = vec![("http.listen", self.http.listen.as_str())];
        if self.mqtt.enabled {
            listeners.push(("mqtt.listen", self.mqtt.listen.as_str()));
        }
        if let Some(ops) = self.ops.listen_addr() {
            listeners.push(("ops.listen", ops));
        }
        for (setting, addr) in listeners {
            addr.to_socket_addrs()
                .with_context(|| format!("{setting} = {addr:?} is not a host:port address"))?;
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("onramp.db").display()))
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// Where uploaded artifacts are kept (0700), by SHA-256.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    pub fn hmac_key_path(&self) -> PathBuf {
        self.data_dir.join("secrets").join("hmac.key")
    }

    /// The data directory as the operator should see it in a message.
    fn data_dir_shown(&self) -> String {
        match std::path::absolute(&self.data_dir) {
            Ok(abs) if abs != self.data_dir => {
                format!("{} ({})", self.data_dir.display(), abs.display())
            }
            _ => self.data_dir.display().to_string(),
        }
    }

    /// Creates the data directory (mode 0700) if it does not exist yet.
    pub fn create_data_dir(&self) -> Result<()> {
        if self.data_dir.exists() {
            return Ok(());
        }
        if let Some(parent) = self.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        create_private_dir(&self.data_dir)
    }

    /// Refuses to go on unless the data directory holds a CA and the
    /// hashing key, as `onramp serve` or `onramp init` leave it.
    pub fn require_initialised(&self) -> Result<()> {
        let fix = "Admin commands act on the server's data directory: pass `--data-dir DIR` \
                   or set ONRAMP_DATA_DIR (or `data_dir` in the --config file). \
                   Only `onramp serve` and `onramp init` create a new one. To manage a \
                   running server instead, give --server URL and --api-key KEY (or run `onramp login`).";
        if !self.data_dir.is_dir() {
            bail!(
                "the data directory {} does not exist. {fix}",
                self.data_dir_shown()
            );
        }
        if !onramp_pki::CertificateAuthority::exists(&self.ca_dir()) {
            bail!(
                "the data directory {} holds no CA ({} is missing or incomplete). {fix}",
                self.data_dir_shown(),
                self.ca_dir().display()
            );
        }
        if !self.hmac_key_path().exists() {
            bail!(
                "the data directory {} holds no {}. {fix}",
                self.data_dir_shown(),
                self.hmac_key_path().display()
            );
        }
        Ok(())
    }

    /// Refuses a data directory, or a directory of keys in it, that belongs to
    /// another user or that others may write to: whoever can write there can
    /// swap the CA key or the registry.
    pub fn check_data_dir(&self) -> Result<()> {
        onramp_pki::check_private_dir(&self.data_dir)?;
        for dir in [self.ca_dir(), self.tls_dir(), self.data_dir.join("secrets")] {
            if dir.exists() {
                onramp_pki::check_private_dir(&dir)?;
            }
        }
        Ok(())
    }
}

/// A database URL with its password (`user:PASSWORD@` or `password=`)
/// replaced by `***`.
fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

/// Creates one directory readable by its owner only (parents must exist).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

impl FailureConfig {
    pub fn limit(&self) -> onramp_service::FailureLimit {
        onramp_service::FailureLimit {
            max_failures: self.max_failures,
            backoff: std::time::Duration::from_secs(self.backoff_secs.max(1)),
            max_backoff: std::time::Duration::from_secs(
                self.max_backoff_secs.max(self.backoff_secs.max(1)),
            ),
        }
    }
}

impl HttpConfig {
    /// The HTTPS edge's limits; zero durations and caps are raised to one.
    pub fn limits(&self) -> onramp_http::HttpLimits {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        onramp_http::HttpLimits {
            handshake_timeout: secs(self.handshake_timeout_secs),
            header_read_timeout: secs(self.header_read_timeout_secs),
            body_read_timeout: secs(self.body_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            max_connections: self.max_connections.max(1),
            max_connections_per_source: self.max_connections_per_source.max(1),
            h2_max_concurrent_streams: self.h2_max_concurrent_streams.max(1),
            max_header_bytes: self.max_header_bytes.max(8192),
            h2_keep_alive_interval: secs(self.h2_keep_alive_interval_secs),
            max_discard_bytes: self.max_discard_bytes,
            upload_body_read_timeout: secs(self.upload_body_read_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DEFAULTS;

    #[test]
    fn database_passwords_are_hidden_when_shown() {
        use super::redact_url;
        assert_eq!(
            redact_url("postgres://onramp:s3cr@t@db:5432/onramp"),
            "postgres://onramp:***@db:5432/onramp"
        );
        assert_eq!(
            redact_url("postgres://onramp@db/onramp?sslmode=require&password=hunter2"),
            "postgres://onramp@db/onramp?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/onramp/onramp.db"),
            "sqlite:///var/lib/onramp/onramp.db"
        );
    }

    #[test]
    fn the_ops_listener_is_off_when_empty_or_off() {
        let ops = |listen: &str| super::OpsConfig {
            listen: listen.into(),
        };
        assert_eq!(ops("127.0.0.1:9464").listen_addr(), Some("127.0.0.1:9464"));
        assert_eq!(ops("").listen_addr(), None);
        assert_eq!(ops(" OFF ").listen_addr(), None);
    }
    use serde_json::Value;
    use std::collections::BTreeMap;

    const REFERENCE: &str = include_str!("../../../docs/configuration.md");

    /// Settings without a default, which the reference shows commented out.
    const WITHOUT_DEFAULT: [&str; 1] = ["database_url"];

    /// The settings reference: the first TOML block of docs/configuration.md.
    fn reference_block() -> &'static str {
        let start = REFERENCE
            .find("```toml\n")
            .expect("docs/configuration.md has a ```toml block")
            + "```toml\n".len();
        let len = REFERENCE[start..]
            .find("```")
            .expect("the ```toml block is closed");
        &REFERENCE[start..start + len]
    }

    fn parse(toml: &str) -> Value {
        config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("valid TOML")
    }

    /// Every setting by its dotted name (`data_dir`, `mqtt.listen`), with its
    /// value. Tables at the top level are sections; values inside a section
    /// (such as `{ per_second, burst }`) are one setting.
    fn settings(root: &Value) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (key, value) in root.as_object().expect("a TOML document is a table") {
            match value.as_object() {
                Some(section) => {
                    for (inner, v) in section {
                        out.insert(format!("{key}.{inner}"), v.clone());
                    }
                }
                None => {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        out
    }

    #[test]
    fn every_setting_is_in_the_configuration_reference_with_its_default() {
        let defaults = settings(&parse(DEFAULTS));
        let documented = settings(&parse(reference_block()));
        let missing: Vec<&String> = defaults
            .keys()
            .filter(|k| !documented.contains_key(*k))
            .collect();
        let wrong: Vec<String> = defaults
            .iter()
            .filter_map(|(k, v)| {
                let d = documented.get(k)?;
                (d != v).then(|| format!("{k}: documented {d}, default {v}"))
            })
            .collect();
        let unknown: Vec<&String> = documented
            .keys()
            .filter(|k| !defaults.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty() && wrong.is_empty() && unknown.is_empty(),
            "docs/configuration.md's settings block disagrees with the built-in defaults\n\
             not documented (add `key = default` under its [section]): {missing:?}\n\
             documented with another value: {wrong:?}\n\
             documented but not a setting: {unknown:?}"
        );
        // The control: the walk sees the sections, not just the top level.
        assert!(defaults.contains_key("mqtt.require_client_id_match"));
        assert!(defaults.len() > 30, "{}", defaults.len());
    }

    #[test]
    fn settings_without_a_default_are_in_the_reference_commented_out() {
        let block = reference_block();
        for key in WITHOUT_DEFAULT {
            assert!(
                block.lines().any(|l| l.starts_with(&format!("# {key} = "))),
                "docs/configuration.md does not show `# {key} = ...`"
            );
            // It is a real setting: the configuration accepts it.
            let with = format!("{key} = \"sqlite://x.db\"\n{DEFAULTS}");
            let cfg: Result<super::Config, _> = config::Config::builder()
                .add_source(config::File::from_str(&with, config::FileFormat::Toml))
                .build()
                .and_then(|c| c.try_deserialize());
            assert!(cfg.is_ok(), "{key}: {:?}", cfg.err());
        }
    }

    #[test]
    fn the_data_directory_table_lists_every_file_the_server_writes_there() {
        // Every name the server's own code joins to the data directory is an
        // entry of it.
        let sources = [include_str!("serve.rs"), include_str!("config.rs")];
        let needle = "data_dir.join(\"";
        let mut names = Vec::new();
        for source in sources {
            for (at, _) in source.match_indices(needle) {
                let rest = &source[at + needle.len()..];
                if let Some(end) = rest.find('"') {
                    names.push(&rest[..end]);
                }
            }
        }
        assert!(names.contains(&"mqtt.addr"), "{names:?}");
        let table = REFERENCE
            .split("## The data directory")
            .nth(1)
            .expect("docs/configuration.md has a data directory section");
        let undocumented: Vec<&&str> = names
            .iter()
            .filter(|n| !table.contains(&format!("`{n}`")) && !table.contains(&format!("`{n}/")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in the data directory table of docs/configuration.md: {undocumented:?}"
        );
    }
}
