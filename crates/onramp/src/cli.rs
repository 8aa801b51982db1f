//! The command line: `onramp serve` and the admin commands. Admin commands
//! act on the local data directory and database as the local operator, and
//! are audited as `cli:<user>`.

use crate::config::Config;
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

#[derive(Debug, Parser)]
#[command(
    name = "onramp",
    version,
    about = "Device provisioning and fleet lifecycle server"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "ONRAMP_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Tenant for admin commands.
    #[arg(long, global = true, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
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
    /// directory, CA and database on first start.
    Serve,
    /// Create the data directory, CA and database without starting the server.
    Init,
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    /// Tenants.
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
    /// Claim certificates for fleet provisioning.
    #[command(subcommand)]
    Claim(crate::cli_provisioning::ClaimCommand),
    /// Signed OTA artifacts: keygen and sign (build machine), upload.
    #[command(subcommand)]
    Artifact(crate::cli_artifacts::ArtifactCommand),
    /// Public keys that sign artifacts.
    #[command(subcommand)]
    Signer(crate::cli_artifacts::SignerCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Show the issuing and root CA.
    Show,
    /// Write the trust anchor (root, or --chain for issuing + root) as PEM.
    Export {
        #[arg(long)]
        chain: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Use an existing CA (certificate chain PEM and key PEM) instead of creating one.
    Import {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    #[command(flatten)]
    Registered(crate::cli_provisioning::RegisteredCaCommand),
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    List(DeviceListArgs),
    Show {
        thing_name: String,
    },
    Suspend {
        thing_name: String,
    },
    Reactivate {
        thing_name: String,
    },
    /// Retire a device for good and revoke its certificates.
    Decommission {
        thing_name: String,
    },
}

#[derive(Debug, Args)]
struct DeviceListArgs {
    #[arg(long)]
    status: Option<DeviceStatus>,
    #[arg(long)]
    class: Option<String>,
    #[arg(long)]
    hardware_revision: Option<String>,
    #[arg(long)]
    firmware_lt: Option<String>,
    #[arg(long)]
    firmware_gte: Option<String>,
    #[arg(long)]
    after: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for one serial number; the token is printed once.
    Create {
        #[arg(long)]
        serial: String,
        #[arg(long)]
        thing_name: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        hardware_revision: Option<String>,
        #[arg(long)]
        firmware: Option<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<i64>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AllowlistCommand {
    Add {
        #[arg(required = true)]
        serials: Vec<String>,
    },
    /// Import a CSV file (serial number in the first column).
    Import {
        file: PathBuf,
    },
    Remove {
        serial: String,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    List {
        #[arg(long)]
        thing_name: Option<String>,
        #[arg(long)]
        status: Option<CertStatus>,
    },
    Show {
        serial: String,
    },
    Revoke {
        serial: String,
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "admin")]
        role: Role,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Create a policy, or store a new version of it, from a JSON file (`-` for stdin).
    Create {
        name: String,
        #[arg(long)]
        document: PathBuf,
    },
    /// Attach to one device (--device) or a device class (--class).
    Attach {
        name: String,
        #[command(flatten)]
        target: PolicyTargetArgs,
    },
    Detach {
        name: String,
        #[command(flatten)]
        target: PolicyTargetArgs,
    },
    Show {
        name: String,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum ShadowCommand {
    Get {
        thing_name: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Apply an update document (`{"state": {"desired": {...}}}`) from a file or `-`.
    /// A running server publishes the resulting delta to the device.
    Update {
        thing_name: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        document: PathBuf,
    },
    Delete {
        thing_name: String,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PolicyTargetArgs {
    #[arg(long)]
    device: Option<String>,
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
    Create { id: String },
    List,
}

#[derive(Debug, Args)]
struct AuditArgs {
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    target: Option<String>,
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
    let cfg = Config::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    init_logging(&cfg);
    if let Command::Serve = cli.command {
        return serve(cfg).await;
    }
    if let Command::Config(ConfigCommand::Check) = cli.command {
        cfg.check_listen_addresses()?;
        println!("{}", serde_json::to_string_pretty(&cfg.shown()?)?);
        return Ok(());
    }
    if let Command::Ca(CaCommand::Import { cert, key }) = &cli.command {
        import_ca(&cfg, cert, key)?;
        println!("imported the CA into {}", cfg.ca_dir().display());
        return Ok(());
    }
    if matches!(&cli.command, Command::Artifact(c) if c.is_offline())
        && let Command::Artifact(cmd) = cli.command
    {
        return crate::cli_artifacts::offline(cmd, &Output { json: cli.json });
    }
    if let Command::Init = cli.command {
        let onramp = open_onramp(&cfg, DataDir::CreateIfMissing).await?;
        let issuing = onramp.ca().issuing_info();
        println!(
            "data directory {} is ready (issuing CA {}, SHA-256 {}; registry on {})",
            cfg.data_dir.display(),
            issuing.subject_dn,
            issuing.fingerprint,
            onramp.backend()
        );
        return Ok(());
    }
    let onramp = open_onramp(&cfg, DataDir::MustExist).await?;
    let caller = Caller::local(&cli.tenant);
    let out = Output { json: cli.json };
    match cli.command {
        Command::Serve
        | Command::Init
        | Command::Config(_)
        | Command::Ca(CaCommand::Import { .. }) => unreachable_command(),
        Command::Ca(CaCommand::Show) => {
            let ca = onramp.ca();
            let issuing = ca.issuing_info();
            let root = onramp_pki::parse_cert(ca.root_der())?;
            let rows = [("issuing", issuing), ("root", &root)]
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
            out.table_or_json(
                &serde_json::json!({
                    "issuing": {"subject": issuing.subject_dn, "serial": issuing.serial, "sha256": issuing.fingerprint, "not_after": issuing.not_after},
                    "root": {"subject": root.subject_dn, "serial": root.serial, "sha256": root.fingerprint, "not_after": root.not_after},
                    "dir": ca.dir(),
                }),
                &["ROLE", "SUBJECT", "SERIAL", "SHA-256", "NOT AFTER"],
                rows,
            )
        }
        Command::Ca(CaCommand::Export { chain, out: path }) => {
            let pem = if chain {
                onramp.ca().chain_pem()
            } else {
                onramp.ca().root_pem()
            };
            match path {
                Some(p) => {
                    std::fs::write(&p, pem).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{pem}"),
            }
            Ok(())
        }
        Command::Device(cmd) => device(&onramp, &caller, &out, cmd).await,
        Command::Token(cmd) => token(&onramp, &caller, &out, cmd).await,
        Command::Allowlist(cmd) => allowlist(&onramp, &caller, &out, cmd).await,
        Command::Cert(cmd) => cert(&onramp, &caller, &out, cmd).await,
        Command::Apikey(cmd) => apikey(&onramp, &caller, &out, cmd).await,
        Command::Tenant(TenantCommand::Create { id }) => {
            onramp.create_tenant(&caller, &id).await?;
            out.message(
                &serde_json::json!({"tenant": id}),
                &format!("created tenant {id}"),
            )
        }
        Command::Policy(cmd) => policy(&onramp, &caller, &out, cmd).await,
        Command::Template(cmd) => {
            crate::cli_provisioning::template(&onramp, &caller, &out, cmd).await
        }
        Command::Claim(cmd) => crate::cli_provisioning::claim(&onramp, &caller, &out, cmd).await,
        Command::Ca(CaCommand::Registered(cmd)) => {
            crate::cli_provisioning::registered_ca(&onramp, &caller, &out, cmd).await
        }
        Command::Shadow(cmd) => shadow(&onramp, &caller, cmd).await,
        Command::Artifact(cmd) => crate::cli_artifacts::artifact(&onramp, &caller, &out, cmd).await,
        Command::Signer(cmd) => crate::cli_artifacts::signer(&onramp, &caller, &out, cmd).await,
        Command::Tenant(TenantCommand::List) => {
            let tenants = onramp.list_tenants().await?;
            let rows = tenants.iter().map(|t| vec![t.clone()]).collect();
            out.table_or_json(&tenants, &["TENANT"], rows)
        }
        Command::Audit(a) => {
            let entries = onramp
                .query_audit(
                    &caller,
                    &onramp_domain::AuditQuery {
                        action: a.action,
                        target: a.target,
                        limit: a.limit,
                        ..Default::default()
                    },
                )
                .await?;
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
            out.table_or_json(
                &entries,
                &[
                    "ID", "AT", "ACTOR", "ACTION", "TARGET", "SOURCE", "OUTCOME", "DETAIL",
                ],
                rows,
            )
        }
    }
}

fn unreachable_command() -> Result<()> {
    anyhow::bail!("command handled earlier")
}

async fn device(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: DeviceCommand,
) -> Result<()> {
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
            let devices = onramp
                .list_devices(caller, &filter, &Page::new(a.after, Some(a.limit)))
                .await?;
            let rows = devices.iter().map(one).collect();
            return out.table_or_json(&devices, &HEAD, rows);
        }
        DeviceCommand::Show { thing_name } => onramp.get_device(caller, &thing_name).await?,
        DeviceCommand::Suspend { thing_name } => {
            onramp
                .change_device_lifecycle(caller, &thing_name, LifecycleAction::Suspend)
                .await?
        }
        DeviceCommand::Reactivate { thing_name } => {
            onramp
                .change_device_lifecycle(caller, &thing_name, LifecycleAction::Reactivate)
                .await?
        }
        DeviceCommand::Decommission { thing_name } => {
            onramp
                .change_device_lifecycle(caller, &thing_name, LifecycleAction::Decommission)
                .await?
        }
    };
    let rows = vec![one(&device)];
    out.table_or_json(&device, &HEAD, rows)
}

async fn token(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: TokenCommand,
) -> Result<()> {
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
            let created = onramp
                .create_token(
                    caller,
                    &TokenRequest {
                        serial_number: serial,
                        thing_name,
                        profile: DeviceProfile {
                            device_class: class,
                            hardware_revision,
                            firmware_version: firmware,
                        },
                        ttl_secs: ttl,
                    },
                )
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
        TokenCommand::List => {
            let tokens = onramp
                .list_tokens(caller, &Page::new(None, Some(Page::MAX_LIMIT)))
                .await?;
            let rows = tokens.iter().map(one).collect();
            out.table_or_json(&tokens, &HEAD, rows)
        }
        TokenCommand::Revoke { id } => {
            let t = onramp.revoke_token(caller, &id).await?;
            let rows = vec![one(&t)];
            out.table_or_json(&t, &HEAD, rows)
        }
    }
}

async fn allowlist(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: AllowlistCommand,
) -> Result<()> {
    match cmd {
        AllowlistCommand::Add { serials } => {
            let added = onramp.allowlist_add(caller, &serials).await?;
            out.message(
                &serde_json::json!({"added": added}),
                &format!("added {added} serial numbers"),
            )
        }
        AllowlistCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let added = onramp.allowlist_import_csv(caller, &text).await?;
            out.message(
                &serde_json::json!({"added": added}),
                &format!("added {added} serial numbers"),
            )
        }
        AllowlistCommand::Remove { serial } => {
            onramp.allowlist_remove(caller, &serial).await?;
            out.message(
                &serde_json::json!({"removed": serial}),
                &format!("removed {serial}"),
            )
        }
        AllowlistCommand::List => {
            let entries = onramp
                .list_allowlist(caller, &Page::new(None, Some(Page::MAX_LIMIT)))
                .await?;
            let rows = entries
                .iter()
                .map(|e| vec![e.serial_number.clone(), ts(e.added_at)])
                .collect();
            out.table_or_json(&entries, &["SERIAL", "ADDED"], rows)
        }
    }
}

async fn cert(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: CertCommand,
) -> Result<()> {
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
        CertCommand::List { thing_name, status } => {
            let certs = onramp
                .list_certificates(
                    caller,
                    thing_name.as_deref(),
                    status,
                    &Page::new(None, Some(Page::MAX_LIMIT)),
                )
                .await?;
            let rows = certs.iter().map(one).collect();
            return out.table_or_json(&certs, &HEAD, rows);
        }
        CertCommand::Show { serial } => onramp.get_certificate(caller, &serial).await?,
        CertCommand::Revoke { serial, reason } => {
            onramp.revoke_certificate(caller, &serial, &reason).await?
        }
    };
    let rows = vec![one(&c)];
    out.table_or_json(&c, &HEAD, rows)
}

async fn apikey(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: ApiKeyCommand,
) -> Result<()> {
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
            let created = onramp.create_api_key(caller, &name, role).await?;
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
            let keys = onramp.list_api_keys(caller).await?;
            let rows = keys.iter().map(one).collect();
            out.table_or_json(&keys, &HEAD, rows)
        }
        ApiKeyCommand::Revoke { id } => {
            let k = onramp.revoke_api_key(caller, &id).await?;
            let rows = vec![one(&k)];
            out.table_or_json(&k, &HEAD, rows)
        }
    }
}

async fn policy(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    out: &Output,
    cmd: PolicyCommand,
) -> Result<()> {
    match cmd {
        PolicyCommand::Create { name, document } => {
            let text = if document.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&document)
                    .with_context(|| format!("reading {}", document.display()))?
            };
            let p = onramp.put_policy(caller, &name, &text).await?;
            out.message(
                &serde_json::to_value(&p)?,
                &format!("policy {} version {}", p.name, p.version),
            )
        }
        PolicyCommand::Attach { name, target } => {
            let t = target.target();
            onramp.attach_policy(caller, &name, &t).await?;
            out.message(
                &serde_json::json!({"attached": name, "to": t}),
                &format!("attached {name} to {} {}", t.kind(), t.name()),
            )
        }
        PolicyCommand::Detach { name, target } => {
            let t = target.target();
            onramp.detach_policy(caller, &name, &t).await?;
            out.message(
                &serde_json::json!({"detached": name, "from": t}),
                &format!("detached {name} from {} {}", t.kind(), t.name()),
            )
        }
        PolicyCommand::Show { name } => {
            let (p, targets) = onramp.get_policy(caller, &name).await?;
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
            let list = onramp.list_policies(caller).await?;
            let rows = list
                .iter()
                .map(|p| vec![p.name.clone(), p.version.to_string(), ts(p.updated_at)])
                .collect();
            out.table_or_json(&list, &["NAME", "VERSION", "UPDATED"], rows)
        }
    }
}

async fn shadow(
    onramp: &onramp_service::Onramp,
    caller: &Caller,
    cmd: ShadowCommand,
) -> Result<()> {
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
    match onramp.shadow_for_caller(caller, &topic, &body).await {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Err(e) => anyhow::bail!("{} {}", e.code, e.message),
    }
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

    pub(crate) fn message(&self, json: &serde_json::Value, text: &str) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(json)?);
        } else {
            println!("{text}");
        }
        Ok(())
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
