//! The command line: `onramp serve` and the admin commands. Admin commands
//! act on the local data directory and database as the local operator
//! (audited as `cli:<user>`), or on a running server through its REST API
//! (audited as the API key); see `crate::admin`.

use crate::admin::{Admin, AdminError, ApiClient};
use crate::config::Config;
use crate::credentials::{self, Credentials, RemoteArgs};
use crate::serve::{DataDir, import_ca, open_onramp, serve};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use onramp_domain::{
    CertStatus, DEFAULT_TENANT, DeviceFilter, DeviceProfile, DeviceStatus, LifecycleAction, Page,
    PolicyTarget, Role,
};
use onramp_service::{Caller, TokenRequest};
use serde::Serialize;
use std::path::PathBuf;

// No Debug: the parsed command line holds the API key.
#[derive(Parser)]
#[command(
    name = "onramp",
    version,
    about = "Device provisioning and fleet lifecycle server",
    after_help = "Admin commands act on the local data directory as the local operator, or, \
when a server is given (--server, ONRAMP_SERVER or `onramp login`), on that running server \
through its REST API with an API key. Local-only: serve, init, config check, ca import, \
tenant create, tenant list (and creating the first admin API key, before any key exists). \
With --json, results print as JSON on stdout and errors as \
{\"error\": {\"code\", \"message\"}} on stderr; the exit status is non-zero on error. \
ONRAMP_BACKTRACE=1 adds a backtrace to errors."
)]
pub struct Cli {
    /// TOML configuration file (local mode).
    #[arg(long, global = true, env = "ONRAMP_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (local mode; overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Tenant for admin commands in local mode [default: default]; a remote
    /// server takes the tenant from the API key.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Print JSON instead of a table (errors too, on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Manage this running server through its REST API, e.g. https://onramp.example:8443.
    #[arg(long, global = true, env = "ONRAMP_SERVER")]
    server: Option<String>,
    /// API key for --server (`onramp apikey create` prints one).
    #[arg(long, global = true, env = "ONRAMP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM trust anchor for --server's TLS certificate, as written by `onramp ca export`.
    #[arg(long, global = true, env = "ONRAMP_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Use the local data directory even when a server is configured.
    #[arg(long, global = true, conflicts_with = "server")]
    local: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    pub fn json(&self) -> bool {
        self.json
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load the configuration as `onramp serve` would (defaults, the --config
    /// file, ONRAMP_* variables), refuse unknown keys and unusable listen
    /// addresses, and print the effective settings as JSON (database
    /// password hidden). Touches no data directory.
    Check,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: EST, REST API and health over HTTPS, MQTT, and health,
    /// readiness and metrics on the operations listener. Creates the data
    /// directory, CA and database on first start. Local only.
    Serve,
    /// Create the data directory, CA and database without starting the server. Local only.
    Init,
    /// The configuration. Local only.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check --server and --api-key against the server and store them (and
    /// --ca-file's PEM) in the credentials file, mode 0600.
    Login,
    /// Remove the credentials file written by `onramp login`.
    Logout,
    /// The certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Devices in the registry.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// One-time enrolment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Serial numbers allowed to enrol.
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
    /// Device certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// API keys for the management API.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Tenants. Local only.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// MQTT policies (AWS IoT policy grammar).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Device shadows (the classic one, or a named one with --name).
    #[command(subcommand)]
    Shadow(ShadowCommand),
    /// Query the audit log (newest first).
    Audit(AuditArgs),
    /// Provisioning templates (AWS IoT template grammar).
    #[command(subcommand)]
    Template(crate::cli_provisioning::TemplateCommand),
    /// Jobs: commands and firmware rollouts for devices (AWS IoT Jobs).
    #[command(subcommand)]
    Job(crate::cli_jobs::JobCommand),
    /// Claim certificates for fleet provisioning.
    #[command(subcommand)]
    Claim(crate::cli_provisioning::ClaimCommand),
    /// Signed OTA artifacts: keygen and sign (build machine), upload.
    #[command(subcommand)]
    Artifact(crate::cli_artifacts::ArtifactCommand),
    /// Public keys that sign artifacts.
    #[command(subcommand)]
    Signer(crate::cli_artifacts::SignerCommand),
    /// Webhook subscriptions to outbound events.
    #[command(subcommand)]
    Webhook(crate::cli_events::WebhookCommand),
    /// Outbound events, their deliveries and dead letters.
    #[command(subcommand)]
    Event(crate::cli_events::EventCommand),
    /// Audit checks (Device Defender style): run, findings, suppression.
    #[command(subcommand, name = "audit-checks")]
    AuditChecks(crate::cli_events::AuditCheckCommand),
}

impl Command {
    /// Commands that act on the local data directory only, never through the API.
    fn local_only(&self) -> Option<&'static str> {
        match self {
            Command::Serve => Some("serve"),
            Command::Init => Some("init"),
            Command::Config(ConfigCommand::Check) => Some("config check"),
            Command::Ca(CaCommand::Import { .. }) => Some("ca import"),
            Command::Tenant(TenantCommand::Create { .. }) => Some("tenant create"),
            Command::Tenant(TenantCommand::List) => Some("tenant list"),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Show the issuing and root CA.
    Show,
    /// Write the trust anchors as PEM: every trusted root (during a root
    /// roll, both), or with --chain every trusted issuing CA and its root.
    Export {
        /// Write the issuing CAs and the roots, not the roots alone.
        #[arg(long)]
        chain: bool,
        /// File to write; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Use an existing CA (certificate chain PEM and key PEM) instead of
    /// creating one. Local only.
    Import {
        /// Certificate chain PEM: the issuing CA first, then up to the root.
        #[arg(long)]
        cert: PathBuf,
        /// The issuing CA's private key, PEM.
        #[arg(long)]
        key: PathBuf,
    },
    /// List the issuing CAs (active, previous, retired) with how many active
    /// certificates still depend on each.
    List,
    /// Make a new issuing CA the one that signs; the current one stays
    /// trusted until retired. Without options: a new issuing CA under the
    /// current root.
    Rollover {
        /// Also a new root: both roots are served until the old CA retires.
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        new_root: bool,
        /// Import an external issuing CA instead: its certificate chain PEM
        /// (issuing CA first, optionally up to its root).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The imported issuing CA's private key, PEM.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Stop trusting a previous issuing CA. Refused while active
    /// certificates depend on it, unless --force. Its CRL stays served.
    Retire {
        /// The issuing CA id, as `onramp ca list` shows it.
        id: String,
        /// Retire even though devices still depend on it: they can no longer connect.
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Registered(crate::cli_provisioning::RegisteredCaCommand),
}

/// Paging of a list command, as in the API: pass the printed `next` back as --after.
#[derive(Debug, Args)]
pub(crate) struct PageArgs {
    /// Continue after this key (the `next` of the previous page).
    #[arg(long)]
    after: Option<String>,
    /// Items per page, 1 to 1000.
    #[arg(long, default_value_t = Page::DEFAULT_LIMIT)]
    limit: u32,
}

impl PageArgs {
    pub(crate) fn page(self) -> Result<Page> {
        Page::checked(self.after, Some(self.limit))
            .map_err(|e| AdminError::new("bad_request", e).into())
    }
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// List devices, filtered, in thing-name order.
    List(DeviceListArgs),
    /// Show one device.
    Show {
        /// The device's thing name.
        thing_name: String,
    },
    /// Refuse the device's connections and enrolment until reactivated.
    Suspend {
        /// The device's thing name.
        thing_name: String,
    },
    /// Let a suspended device connect again.
    Reactivate {
        /// The device's thing name.
        thing_name: String,
    },
    /// Retire a device for good and revoke its certificates.
    Decommission {
        /// The device's thing name.
        thing_name: String,
    },
}

#[derive(Debug, Args)]
struct DeviceListArgs {
    /// Only devices in this lifecycle state (pending, active, suspended, decommissioned).
    #[arg(long)]
    status: Option<DeviceStatus>,
    /// Only devices of this device class.
    #[arg(long)]
    class: Option<String>,
    /// Only devices of this hardware revision.
    #[arg(long)]
    hardware_revision: Option<String>,
    /// Only firmware strictly below this version (2.10.0 > 2.9.0).
    #[arg(long)]
    firmware_lt: Option<String>,
    /// Only firmware at or above this version.
    #[arg(long)]
    firmware_gte: Option<String>,
    #[command(flatten)]
    page: PageArgs,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for one serial number; the token is printed once.
    Create {
        /// The serial number the token enrols.
        #[arg(long)]
        serial: String,
        /// Thing name of the device; default: the serial number.
        #[arg(long)]
        thing_name: Option<String>,
        /// Device class recorded at enrolment.
        #[arg(long)]
        class: Option<String>,
        /// Hardware revision recorded at enrolment.
        #[arg(long)]
        hardware_revision: Option<String>,
        /// Firmware version recorded at enrolment.
        #[arg(long)]
        firmware: Option<String>,
        /// Lifetime in seconds, 60 to 31536000 (365 days); default from the configuration.
        #[arg(long, allow_negative_numbers = true)]
        ttl: Option<i64>,
    },
    /// List tokens (never their secrets).
    List(PageArgs),
    /// Revoke an unused token.
    Revoke {
        /// The token id (tok_...).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AllowlistCommand {
    /// Add serial numbers.
    Add {
        /// Serial numbers to add.
        #[arg(required = true)]
        serials: Vec<String>,
    },
    /// Import a CSV file (serial number in the first column).
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Remove a serial number.
    Remove {
        /// The serial number to remove.
        serial: String,
    },
    /// List the serial numbers.
    List(PageArgs),
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// List device certificates.
    List {
        /// Only certificates of this device.
        #[arg(long)]
        thing_name: Option<String>,
        /// Only certificates in this state (active, superseded, revoked, inactive).
        #[arg(long)]
        status: Option<CertStatus>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one certificate.
    Show {
        /// Certificate serial number (hex).
        serial: String,
    },
    /// Revoke a certificate; the device is cut off at once.
    Revoke {
        /// Certificate serial number (hex).
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
        /// superseded, cessationOfOperation, certificateHold.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Rotate certificates in bulk: a job telling each selected device to
    /// ask for a new certificate over MQTT (give exactly one selector).
    Rotate {
        /// One thing.
        #[arg(long)]
        thing_name: Option<String>,
        /// Every active thing of this device class.
        #[arg(long)]
        device_class: Option<String>,
        /// Every member of this thing group.
        #[arg(long)]
        thing_group: Option<String>,
        /// Things whose active certificate this CA issued: a registered CA's
        /// id, or `onramp` for Onramp's own CA.
        #[arg(long)]
        ca: Option<String>,
        /// Things whose active certificate expires within this many days.
        #[arg(long)]
        expiring_within_days: Option<u32>,
        /// The job's id (default `rotate-<unix time>`).
        #[arg(long)]
        job_id: Option<String>,
        /// Paced rollout: at most this many devices a minute.
        #[arg(long)]
        max_per_minute: Option<u32>,
    },
    /// The certificates a thing obtained by rotation: pending, active,
    /// replaced or expired.
    Rotations {
        /// The thing.
        thing_name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key; it is printed once. The first admin key is created locally.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "admin")]
        role: Role,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key.
    Revoke {
        /// The key id (key_...).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Create a policy, or store a new version of it, from a JSON file (`-` for stdin).
    Create {
        /// Policy name.
        name: String,
        /// The policy document (JSON file, or `-` for stdin).
        #[arg(long)]
        document: PathBuf,
    },
    /// Attach to one device (--device) or a device class (--class).
    Attach {
        /// Policy name.
        name: String,
        #[command(flatten)]
        target: PolicyTargetArgs,
    },
    /// Detach from one device (--device) or a device class (--class).
    Detach {
        /// Policy name.
        name: String,
        #[command(flatten)]
        target: PolicyTargetArgs,
    },
    /// Show a policy's document and attachments.
    Show {
        /// Policy name.
        name: String,
    },
    /// List policies.
    List,
}

#[derive(Debug, Subcommand)]
enum ShadowCommand {
    /// Print a shadow document.
    Get {
        /// The device's thing name.
        thing_name: String,
        /// A named shadow; the classic shadow when absent.
        #[arg(long)]
        name: Option<String>,
    },
    /// Apply an update document (`{"state": {"desired": {...}}}`) from a file or `-`.
    /// A running server publishes the resulting delta to the device.
    Update {
        /// The device's thing name.
        thing_name: String,
        /// A named shadow; the classic shadow when absent.
        #[arg(long)]
        name: Option<String>,
        /// The update document (JSON file, or `-` for stdin).
        #[arg(long)]
        document: PathBuf,
    },
    /// Delete a shadow.
    Delete {
        /// The device's thing name.
        thing_name: String,
        /// A named shadow; the classic shadow when absent.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PolicyTargetArgs {
    /// A device, by thing name.
    #[arg(long)]
    device: Option<String>,
    /// Every device of a device class.
    #[arg(long)]
    class: Option<String>,
}

impl PolicyTargetArgs {
    fn target(self) -> PolicyTarget {
        match (self.device, self.class) {
            (Some(d), _) => PolicyTarget::Device(d),
            (None, Some(c)) => PolicyTarget::Class(c),
            (None, None) => PolicyTarget::Device(String::new()),
        }
    }
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant. Local only.
    Create {
        /// Tenant id: letters, digits, `_`, `-`, `:`.
        id: String,
    },
    /// List tenants. Local only.
    List,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Only this action, e.g. device.suspend.
    #[arg(long)]
    action: Option<String>,
    /// Only this target, e.g. device:thing-1.
    #[arg(long)]
    target: Option<String>,
    /// Only this actor, e.g. apikey:key_... or cli:alice.
    #[arg(long)]
    actor: Option<String>,
    /// Entries older than this id (the `next` of the previous page).
    #[arg(long)]
    before_id: Option<i64>,
    /// Entries per page, 1 to 1000.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// rustls warns, in this module, about clients that break RFC 6066's SNI
/// rules, above all for every client that puts an IP address in SNI (mosquitto
/// does whenever it connects to one). Nothing an operator can act on, so it
/// logs errors only, unless RUST_LOG names the module itself.
const RUSTLS_SNI_MODULE: &str = "rustls::msgs::handshake";

/// The log filter: RUST_LOG (or the default), with rustls' SNI warnings quietened.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let mut filter = rust_log
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    if !rust_log.is_some_and(|v| v.contains(RUSTLS_SNI_MODULE))
        && let Ok(directive) = format!("{RUSTLS_SNI_MODULE}=error").parse()
    {
        filter = filter.add_directive(directive);
    }
    filter
}

fn init_logging(cfg: &Config) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let out = Output { json: cli.json };
    match cli.command {
        Command::Login => return login(&cli, &out).await,
        Command::Logout => return logout(&out),
        // Build-machine commands: no server, no data directory.
        Command::Artifact(cmd) if cmd.is_offline() => {
            return crate::cli_artifacts::offline(cmd, &out);
        }
        _ => {}
    }
    let remote_args = RemoteArgs {
        server: cli.server.clone(),
        api_key: cli.api_key.clone(),
        ca_file: cli.ca_file.clone(),
    };
    if let Some(name) = cli.command.local_only() {
        // Bootstrap commands never follow the credentials file; naming a
        // server for them is a mistake worth saying so.
        if cli.server.is_some() {
            return Err(AdminError::new(
                "local_only",
                format!(
                    "`onramp {name}` works on the local data directory only; run it on the server's host without --server or ONRAMP_SERVER"
                ),
            )
            .into());
        }
        return run_local_only(cli).await;
    }
    let remote = if cli.local {
        None
    } else {
        let file = match credentials::path() {
            Ok(p) => Credentials::load(&p)?,
            Err(_) => None,
        };
        credentials::resolve(&remote_args, file)?
    };
    let admin = match remote {
        Some(c) => {
            if cli.tenant.is_some() {
                anyhow::bail!(
                    "--tenant applies to local mode only; {} acts on the API key's tenant",
                    c.server
                );
            }
            Admin::Remote(ApiClient::new(&c.server, &c.api_key, c.ca_pem.as_deref())?)
        }
        None => {
            let cfg = Config::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
            init_logging(&cfg);
            let onramp = open_onramp(&cfg, DataDir::MustExist).await?;
            let tenant = cli.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
            Admin::Local(onramp, Caller::local(tenant))
        }
    };
    admin_command(&admin, &out, cli.command).await
}

/// Serve, init, config check, ca import and the tenant commands: always local.
async fn run_local_only(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    init_logging(&cfg);
    let out = Output { json: cli.json };
    let caller = Caller::local(cli.tenant.as_deref().unwrap_or(DEFAULT_TENANT));
    match cli.command {
        Command::Serve => serve(cfg).await,
        Command::Config(ConfigCommand::Check) => {
            cfg.check_listen_addresses()?;
            println!("{}", serde_json::to_string_pretty(&cfg.shown()?)?);
            Ok(())
        }
        Command::Ca(CaCommand::Import { cert, key }) => {
            import_ca(&cfg, &cert, &key)?;
            out.message(
                &serde_json::json!({"imported": cfg.ca_dir()}),
                &format!("imported the CA into {}", cfg.ca_dir().display()),
            )
        }
        Command::Init => {
            let onramp = open_onramp(&cfg, DataDir::CreateIfMissing).await?;
            let ca = onramp.ca();
            let issuing = ca.issuing_info();
            println!(
                "data directory {} is ready (issuing CA {}, SHA-256 {}; registry on {})",
                cfg.data_dir.display(),
                issuing.subject_dn,
                issuing.fingerprint,
                onramp.backend()
            );
            Ok(())
        }
        Command::Tenant(TenantCommand::Create { id }) => {
            let onramp = open_onramp(&cfg, DataDir::MustExist).await?;
            onramp
                .create_tenant(&caller, &id)
                .await
                .map_err(AdminError::from)?;
            out.message(
                &serde_json::json!({"tenant": id}),
                &format!("created tenant {id}"),
            )
        }
        Command::Tenant(TenantCommand::List) => {
            let onramp = open_onramp(&cfg, DataDir::MustExist).await?;
            let tenants = onramp.list_tenants().await.map_err(AdminError::from)?;
            let rows = tenants.iter().map(|t| vec![t.clone()]).collect();
            out.list(&tenants, None, &["TENANT"], rows)
        }
        _ => anyhow::bail!("not a local-only command"),
    }
}

async fn login(cli: &Cli, out: &Output) -> Result<()> {
    let (Some(server), Some(api_key)) = (&cli.server, &cli.api_key) else {
        anyhow::bail!(
            "`onramp login` needs --server URL and --api-key KEY (or ONRAMP_SERVER and ONRAMP_API_KEY)"
        );
    };
    let ca_pem = credentials::load_ca(cli.ca_file.as_deref())?;
    let api = ApiClient::new(server, api_key, ca_pem.as_deref())?;
    let admin = Admin::Remote(api);
    let me = admin.whoami().await?;
    let path = credentials::path()?;
    Credentials {
        server: server.trim_end_matches('/').to_string(),
        api_key: api_key.clone(),
        ca_pem,
    }
    .save(&path)?;
    out.message(
        &serde_json::json!({
            "server": server, "actor": me.actor, "tenant": me.tenant, "role": me.role,
            "credentials": path,
        }),
        &format!(
            "logged in to {server} as {} (role {}, tenant {}); credentials in {}",
            me.actor,
            me.role,
            me.tenant,
            path.display()
        ),
    )
}

fn logout(out: &Output) -> Result<()> {
    let path = credentials::path()?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    };
    out.message(
        &serde_json::json!({"removed": removed, "credentials": path}),
        &if removed {
            format!("removed {}", path.display())
        } else {
            format!("no credentials file at {}", path.display())
        },
    )
}

async fn admin_command(admin: &Admin, out: &Output, command: Command) -> Result<()> {
    match command {
        Command::Serve
        | Command::Init
        | Command::Config(_)
        | Command::Login
        | Command::Logout
        | Command::Tenant(_)
        | Command::Ca(CaCommand::Import { .. }) => anyhow::bail!("command handled earlier"),
        Command::Artifact(cmd) => crate::cli_artifacts::artifact(admin, out, cmd).await,
        Command::Signer(cmd) => crate::cli_artifacts::signer(admin, out, cmd).await,
        Command::Webhook(cmd) => crate::cli_events::webhook(admin, out, cmd).await,
        Command::Event(cmd) => crate::cli_events::event(admin, out, cmd).await,
        Command::AuditChecks(cmd) => crate::cli_events::audit_checks(admin, out, cmd).await,
        Command::Ca(CaCommand::Show) => {
            let ca = admin.ca().await?;
            let rows = [("issuing", &ca.issuing), ("root", &ca.root)]
                .iter()
                .map(|(role, i)| {
                    vec![
                        role.to_string(),
                        i.subject_dn.clone(),
                        i.serial.clone(),
                        i.fingerprint.clone(),
                        ts(i.not_after),
                    ]
                })
                .collect();
            let (issuing, root) = (&ca.issuing, &ca.root);
            out.table_or_json(
                &serde_json::json!({
                    "issuing": {"subject": issuing.subject_dn, "serial": issuing.serial, "sha256": issuing.fingerprint, "not_after": issuing.not_after},
                    "root": {"subject": root.subject_dn, "serial": root.serial, "sha256": root.fingerprint, "not_after": root.not_after},
                }),
                &["ROLE", "SUBJECT", "SERIAL", "SHA-256", "NOT AFTER"],
                rows,
            )
        }
        Command::Ca(CaCommand::List) => {
            let cas = admin.list_issuing_cas().await?;
            let rows = cas
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.role.clone(),
                        c.active_certificates.to_string(),
                        c.inactive_certificates.to_string(),
                        c.subject.clone(),
                        ts(c.not_after),
                        c.last_expiry.map(ts).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.list(
                &cas,
                None,
                &[
                    "ID",
                    "ROLE",
                    "ACTIVE CERTS",
                    "INACTIVE CERTS",
                    "SUBJECT",
                    "NOT AFTER",
                    "LAST CERT EXPIRES",
                ],
                rows,
            )
        }
        Command::Ca(CaCommand::Rollover {
            new_root,
            cert,
            key,
        }) => {
            let request = match (cert, key) {
                (Some(cert), Some(key)) => onramp_service::CaRolloverRequest::Import {
                    cert_pem: std::fs::read_to_string(&cert)
                        .with_context(|| format!("reading {}", cert.display()))?,
                    key_pem: std::fs::read_to_string(&key)
                        .with_context(|| format!("reading {}", key.display()))?,
                },
                _ if new_root => onramp_service::CaRolloverRequest::NewRoot,
                _ => onramp_service::CaRolloverRequest::NewIssuing,
            };
            let ca = admin.roll_over_ca(request).await?;
            out.message(
                &serde_json::to_value(&ca)?,
                &format!(
                    "issuing CA {} ({}) signs from now on; the previous issuing CA stays trusted until `onramp ca retire`",
                    ca.id, ca.subject
                ),
            )
        }
        Command::Ca(CaCommand::Retire { id, force }) => {
            let ca = admin.retire_ca(&id, force).await?;
            out.message(
                &serde_json::to_value(&ca)?,
                &format!(
                    "retired issuing CA {}: no longer trusted; its CRL stays served at /crl/{}.crl",
                    ca.id, ca.id
                ),
            )
        }
        Command::Ca(CaCommand::Export { chain, out: path }) => {
            let pem = admin.ca_export(chain).await?;
            match path {
                Some(p) => {
                    std::fs::write(&p, pem).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{pem}"),
            }
            Ok(())
        }
        Command::Device(cmd) => device(admin, out, cmd).await,
        Command::Token(cmd) => token(admin, out, cmd).await,
        Command::Allowlist(cmd) => allowlist(admin, out, cmd).await,
        Command::Cert(cmd) => cert(admin, out, cmd).await,
        Command::Apikey(cmd) => apikey(admin, out, cmd).await,
        Command::Policy(cmd) => policy(admin, out, cmd).await,
        Command::Template(cmd) => crate::cli_provisioning::template(admin, out, cmd).await,
        Command::Claim(cmd) => crate::cli_provisioning::claim(admin, out, cmd).await,
        Command::Job(cmd) => crate::cli_jobs::job(admin, out, cmd).await,
        Command::Ca(CaCommand::Registered(cmd)) => {
            crate::cli_provisioning::registered_ca(admin, out, cmd).await
        }
        Command::Shadow(cmd) => shadow(admin, cmd).await,
        Command::Audit(a) => {
            let limit =
                Page::check_limit(a.limit).map_err(|e| AdminError::new("bad_request", e))?;
            let entries = admin
                .query_audit(&onramp_domain::AuditQuery {
                    action: a.action,
                    target: a.target,
                    actor: a.actor,
                    before_id: a.before_id,
                    limit,
                    ..Default::default()
                })
                .await?;
            let next = (entries.len() as u32 == limit)
                .then(|| entries.last().map(|e| e.id.to_string()))
                .flatten();
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        ts(e.at),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.source.clone(),
                        e.outcome.as_str().into(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            out.list_with_hint(
                &entries,
                next,
                "--before-id",
                &[
                    "ID", "AT", "ACTOR", "ACTION", "TARGET", "SOURCE", "OUTCOME", "DETAIL",
                ],
                rows,
            )
        }
    }
}

/// The key of the last item when the page is full: where the next page starts.
pub(crate) fn next_after<T>(
    items: &[T],
    page: &Page,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    if items.len() as u32 == page.limit {
        items.last().map(key)
    } else {
        None
    }
}

async fn device(admin: &Admin, out: &Output, cmd: DeviceCommand) -> Result<()> {
    let one = |d: &onramp_domain::Device| {
        vec![
            d.thing_name.clone(),
            d.serial_number.clone(),
            d.status.to_string(),
            d.device_class.clone().unwrap_or_default(),
            d.hardware_revision.clone().unwrap_or_default(),
            d.firmware_version.clone().unwrap_or_default(),
            d.last_seen_at.map(ts).unwrap_or_default(),
        ]
    };
    const HEAD: [&str; 7] = [
        "THING",
        "SERIAL",
        "STATUS",
        "CLASS",
        "HW REV",
        "FIRMWARE",
        "LAST SEEN",
    ];
    let device = match cmd {
        DeviceCommand::List(a) => {
            let filter = DeviceFilter {
                status: a.status,
                device_class: a.class,
                hardware_revision: a.hardware_revision,
                firmware_lt: a.firmware_lt,
                firmware_gte: a.firmware_gte,
                firmware_eq: None,
            };
            let page = a.page.page()?;
            let devices = admin.list_devices(&filter, &page).await?;
            let next = next_after(&devices, &page, |d| d.thing_name.clone());
            let rows = devices.iter().map(one).collect();
            return out.list(&devices, next, &HEAD, rows);
        }
        DeviceCommand::Show { thing_name } => admin.get_device(&thing_name).await?,
        DeviceCommand::Suspend { thing_name } => {
            admin
                .lifecycle(&thing_name, LifecycleAction::Suspend)
                .await?
        }
        DeviceCommand::Reactivate { thing_name } => {
            admin
                .lifecycle(&thing_name, LifecycleAction::Reactivate)
                .await?
        }
        DeviceCommand::Decommission { thing_name } => {
            admin
                .lifecycle(&thing_name, LifecycleAction::Decommission)
                .await?
        }
    };
    let rows = vec![one(&device)];
    out.table_or_json(&device, &HEAD, rows)
}

async fn token(admin: &Admin, out: &Output, cmd: TokenCommand) -> Result<()> {
    let one = |t: &onramp_domain::EnrolmentToken| {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.used_at.is_some() {
            "used"
        } else if t.expires_at <= onramp_service::now() {
            "expired"
        } else {
            "usable"
        };
        vec![
            t.id.clone(),
            t.serial_number.clone(),
            t.thing_name.clone(),
            state.into(),
            ts(t.expires_at),
        ]
    };
    const HEAD: [&str; 5] = ["ID", "SERIAL", "THING", "STATE", "EXPIRES"];
    match cmd {
        TokenCommand::Create {
            serial,
            thing_name,
            class,
            hardware_revision,
            firmware,
            ttl,
        } => {
            let created = admin
                .create_token(&TokenRequest {
                    serial_number: serial,
                    thing_name,
                    profile: DeviceProfile {
                        device_class: class,
                        hardware_revision,
                        firmware_version: firmware,
                    },
                    ttl_secs: ttl,
                })
                .await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("token id:  {}", created.token.id);
                println!("serial:    {}", created.token.serial_number);
                println!("expires:   {}", ts(created.token.expires_at));
                println!("token:     {}", created.secret);
                println!("(the token is shown once; it enrols this serial number once)");
            }
            Ok(())
        }
        TokenCommand::List(p) => {
            let page = p.page()?;
            let tokens = admin.list_tokens(&page).await?;
            let next = next_after(&tokens, &page, |t| t.id.clone());
            let rows = tokens.iter().map(one).collect();
            out.list(&tokens, next, &HEAD, rows)
        }
        TokenCommand::Revoke { id } => {
            let t = admin.revoke_token(&id).await?;
            let rows = vec![one(&t)];
            out.table_or_json(&t, &HEAD, rows)
        }
    }
}

async fn allowlist(admin: &Admin, out: &Output, cmd: AllowlistCommand) -> Result<()> {
    match cmd {
        AllowlistCommand::Add { serials } => {
            let added = admin.allowlist_add(&serials).await?;
            out.message(&serde_json::json!({"added": added}), &added_text(added))
        }
        AllowlistCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let added = admin.allowlist_import(&text).await?;
            out.message(&serde_json::json!({"added": added}), &added_text(added))
        }
        AllowlistCommand::Remove { serial } => {
            admin.allowlist_remove(&serial).await?;
            out.message(
                &serde_json::json!({"removed": serial}),
                &format!("removed {serial}"),
            )
        }
        AllowlistCommand::List(p) => {
            let page = p.page()?;
            let entries = admin.list_allowlist(&page).await?;
            let next = next_after(&entries, &page, |e| e.serial_number.clone());
            let rows = entries
                .iter()
                .map(|e| vec![e.serial_number.clone(), ts(e.added_at)])
                .collect();
            out.list(&entries, next, &["SERIAL", "ADDED"], rows)
        }
    }
}

async fn cert(admin: &Admin, out: &Output, cmd: CertCommand) -> Result<()> {
    let one = |c: &onramp_domain::Certificate| {
        vec![
            c.serial.clone(),
            c.thing_name.clone(),
            c.status.to_string(),
            ts(c.not_after),
            c.fingerprint.clone(),
        ]
    };
    const HEAD: [&str; 5] = ["SERIAL", "THING", "STATUS", "NOT AFTER", "SHA-256"];
    let c = match cmd {
        CertCommand::List {
            thing_name,
            status,
            page,
        } => {
            let page = page.page()?;
            let certs = admin
                .list_certificates(thing_name.as_deref(), status, &page)
                .await?;
            let next = next_after(&certs, &page, |c| c.serial.clone());
            let rows = certs.iter().map(one).collect();
            return out.list(&certs, next, &HEAD, rows);
        }
        CertCommand::Show { serial } => admin.get_certificate(&serial).await?,
        CertCommand::Revoke { serial, reason } => {
            admin.revoke_certificate(&serial, &reason).await?
        }
        CertCommand::Rotate {
            thing_name,
            device_class,
            thing_group,
            ca,
            expiring_within_days,
            job_id,
            max_per_minute,
        } => {
            let selector = onramp_domain::rotation::RotationSelector::from_parts(
                thing_name,
                device_class,
                thing_group,
                ca,
                expiring_within_days,
            )
            .map_err(anyhow::Error::msg)?;
            let job = admin
                .rotate_certificates(onramp_service::RotateRequest {
                    selector,
                    job_id,
                    maximum_per_minute: max_per_minute,
                })
                .await?;
            let targets = job.targets.to_string();
            let rows = vec![vec![job.job_id.clone(), job.status.clone(), targets]];
            return out.table_or_json(&job, &["JOB", "STATUS", "TARGETS"], rows);
        }
        CertCommand::Rotations { thing_name } => {
            let items = admin.list_rotations(&thing_name).await?;
            let rows = items
                .iter()
                .map(|r| {
                    vec![
                        r.serial.clone(),
                        r.status.clone(),
                        r.kind.as_str().to_string(),
                        r.old_serial.clone(),
                        ts(r.expires_at),
                        r.revoke_old_at.map(ts).unwrap_or_default(),
                    ]
                })
                .collect();
            return out.table_or_json(
                &items,
                &[
                    "SERIAL",
                    "STATUS",
                    "KIND",
                    "REPLACES",
                    "PENDING UNTIL",
                    "OLD REVOKED AT",
                ],
                rows,
            );
        }
    };
    let rows = vec![one(&c)];
    out.table_or_json(&c, &HEAD, rows)
}

async fn apikey(admin: &Admin, out: &Output, cmd: ApiKeyCommand) -> Result<()> {
    let one = |k: &onramp_domain::ApiKey| {
        vec![
            k.id.clone(),
            k.name.clone(),
            k.role.to_string(),
            k.tenant.clone(),
            if k.revoked_at.is_some() {
                "revoked".into()
            } else {
                "active".into()
            },
        ]
    };
    const HEAD: [&str; 5] = ["ID", "NAME", "ROLE", "TENANT", "STATE"];
    match cmd {
        ApiKeyCommand::Create { name, role } => {
            let created = admin.create_api_key(&name, role).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("key id:  {}", created.key.id);
                println!(
                    "role:    {} (tenant {})",
                    created.key.role, created.key.tenant
                );
                println!("api key: {}", created.secret);
                println!("(the key is shown once; send it as `Authorization: Bearer <key>`)");
            }
            Ok(())
        }
        ApiKeyCommand::List => {
            let keys = admin.list_api_keys().await?;
            let rows = keys.iter().map(one).collect();
            out.list(&keys, None, &HEAD, rows)
        }
        ApiKeyCommand::Revoke { id } => {
            let k = admin.revoke_api_key(&id).await?;
            let rows = vec![one(&k)];
            out.table_or_json(&k, &HEAD, rows)
        }
    }
}

async fn policy(admin: &Admin, out: &Output, cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Create { name, document } => {
            let text = if document.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&document)
                    .with_context(|| format!("reading {}", document.display()))?
            };
            let p = admin.put_policy(&name, &text).await?;
            out.message(
                &serde_json::to_value(&p)?,
                &format!("policy {} version {}", p.name, p.version),
            )
        }
        PolicyCommand::Attach { name, target } => {
            let t = target.target();
            admin.attach_policy(&name, &t).await?;
            out.message(
                &serde_json::json!({"attached": name, "to": t}),
                &format!("attached {name} to {} {}", t.kind(), t.name()),
            )
        }
        PolicyCommand::Detach { name, target } => {
            let t = target.target();
            admin.detach_policy(&name, &t).await?;
            out.message(
                &serde_json::json!({"detached": name, "from": t}),
                &format!("detached {name} from {} {}", t.kind(), t.name()),
            )
        }
        PolicyCommand::Show { name } => {
            let (p, targets) = admin.get_policy(&name).await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"policy": p, "targets": targets})
                    )?
                );
            } else {
                println!(
                    "policy {} version {} (updated {})",
                    p.name,
                    p.version,
                    ts(p.updated_at)
                );
                for t in &targets {
                    println!("attached to {} {}", t.kind(), t.name());
                }
                println!("{}", p.document);
            }
            Ok(())
        }
        PolicyCommand::List => {
            let list = admin.list_policies().await?;
            let rows = list
                .iter()
                .map(|p| vec![p.name.clone(), p.version.to_string(), ts(p.updated_at)])
                .collect();
            out.list(&list, None, &["NAME", "VERSION", "UPDATED"], rows)
        }
    }
}

async fn shadow(admin: &Admin, cmd: ShadowCommand) -> Result<()> {
    use onramp_service::{ShadowOp, ShadowTopic};
    let (thing_name, shadow_name, op, body) = match cmd {
        ShadowCommand::Get { thing_name, name } => (thing_name, name, ShadowOp::Get, Vec::new()),
        ShadowCommand::Delete { thing_name, name } => {
            (thing_name, name, ShadowOp::Delete, Vec::new())
        }
        ShadowCommand::Update {
            thing_name,
            name,
            document,
        } => {
            let body = if document.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?.into_bytes()
            } else {
                std::fs::read(&document)
                    .with_context(|| format!("reading {}", document.display()))?
            };
            (thing_name, name, ShadowOp::Update, body)
        }
    };
    let topic = ShadowTopic {
        thing_name,
        shadow_name,
        op,
    };
    let v = admin.shadow(topic, &body).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn table_or_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
        head: &[&str],
        rows: Vec<Vec<String>>,
    ) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
            return Ok(());
        }
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        println!("{}", line(head.iter().map(|h| h.to_string()).collect()));
        for r in rows {
            println!("{}", line(r));
        }
        Ok(())
    }

    /// A list: with --json `{"items": [...], "next": ...}` as the API pages;
    /// as a table, a hint on stderr when there is a next page.
    pub(crate) fn list<T: Serialize>(
        &self,
        items: &[T],
        next: Option<String>,
        head: &[&str],
        rows: Vec<Vec<String>>,
    ) -> Result<()> {
        self.list_with_hint(items, next, "--after", head, rows)
    }

    pub(crate) fn list_with_hint<T: Serialize>(
        &self,
        items: &[T],
        next: Option<String>,
        option: &str,
        head: &[&str],
        rows: Vec<Vec<String>>,
    ) -> Result<()> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"items": items, "next": next}))?
            );
            return Ok(());
        }
        self.table_or_json(items, head, rows)?;
        if let Some(n) = next {
            eprintln!("(more: {option} {n})");
        }
        Ok(())
    }

    pub(crate) fn message(&self, json: &serde_json::Value, text: &str) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(json)?);
        } else {
            println!("{text}");
        }
        Ok(())
    }
}

fn added_text(added: u64) -> String {
    match added {
        1 => "added 1 serial number".into(),
        n => format!("added {n} serial numbers"),
    }
}

/// Unix seconds as RFC 3339 UTC.
pub(crate) fn ts(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every option or argument says what it is for.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "onramp", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk sees nested commands and their options.
        let n = cmd
            .find_subcommand("device")
            .and_then(|d| d.find_subcommand("list"))
            .map(|l| l.get_arguments().count())
            .unwrap_or(0);
        assert!(n >= 7, "device list has {n} arguments");
    }

    #[test]
    fn a_negative_ttl_parses_as_a_value() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "onramp", "token", "create", "--serial", "SN-1", "--ttl", "-5",
        ])
        .unwrap();
        match cli.command {
            super::Command::Token(super::TokenCommand::Create { ttl, .. }) => {
                assert_eq!(ttl, Some(-5))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_only_commands_are_named() {
        use clap::Parser;
        for (args, want) in [
            (vec!["onramp", "serve"], Some("serve")),
            (vec!["onramp", "tenant", "list"], Some("tenant list")),
            (
                vec!["onramp", "ca", "import", "--cert", "a", "--key", "b"],
                Some("ca import"),
            ),
            (vec!["onramp", "device", "list"], None),
            (vec!["onramp", "apikey", "create", "--name", "x"], None),
        ] {
            let cli = super::Cli::try_parse_from(&args).unwrap();
            assert_eq!(cli.command.local_only(), want, "{args:?}");
        }
    }
    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(super::ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::ts(1_790_000_000), "2026-09-21T14:13:20Z");
    }

    #[test]
    fn rustls_sni_warnings_are_quiet_unless_asked_for() {
        let quiet = "rustls::msgs::handshake=error";
        for rust_log in [None, Some("debug,rustls=info"), Some("not a [filter")] {
            let filter = super::log_filter(rust_log).to_string();
            assert!(filter.contains(quiet), "{rust_log:?}: {filter}");
        }
        // Naming the module in RUST_LOG is the way to see them again.
        let filter = super::log_filter(Some("info,rustls::msgs::handshake=debug")).to_string();
        assert!(!filter.contains(quiet), "{filter}");
        assert!(filter.contains("rustls::msgs::handshake=debug"), "{filter}");
    }
}
