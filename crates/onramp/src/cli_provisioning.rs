//! CLI for fleet provisioning and JITP: `onramp template`, `onramp claim`
//! and the registered-CA commands under `onramp ca`.

use crate::cli::{Output, ts};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use onramp_domain::{CaStatus, TemplateKind};
use onramp_service::{Caller, Onramp, TemplateSettings};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Fleet,
    Jitp,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Create a template (version 1) from a JSON body file.
    Create {
        name: String,
        #[arg(long)]
        body: PathBuf,
        #[arg(long, value_enum, default_value = "fleet")]
        kind: KindArg,
        #[command(flatten)]
        settings: TemplateSettingsArgs,
    },
    List,
    /// Show settings, the default body and the versions.
    Show {
        name: String,
    },
    /// Store a new version of the body.
    Version {
        name: String,
        #[arg(long)]
        body: PathBuf,
        /// Make the new version the default.
        #[arg(long)]
        set_default: bool,
    },
    /// Make an earlier or later version the default.
    SetDefaultVersion {
        name: String,
        version: i64,
    },
    /// Change a template's settings.
    Update {
        name: String,
        #[command(flatten)]
        settings: TemplateSettingsArgs,
        /// Remove the serial allow-list (any serial not denied may provision).
        #[arg(long)]
        clear_allow: bool,
        /// Remove the pre-provisioning hook.
        #[arg(long)]
        clear_hook: bool,
    },
}

#[derive(Debug, Args)]
pub struct TemplateSettingsArgs {
    #[arg(long)]
    description: Option<String>,
    /// Serial numbers allowed to provision (repeat, or a comma-separated list).
    #[arg(long, value_delimiter = ',')]
    allow_serial: Vec<String>,
    /// Serial numbers refused (repeat, or a comma-separated list).
    #[arg(long, value_delimiter = ',')]
    deny_serial: Vec<String>,
    /// Pre-provisioning webhook URL.
    #[arg(long)]
    hook_url: Option<String>,
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    #[arg(long)]
    enable: bool,
}

impl TemplateSettingsArgs {
    fn settings(self) -> TemplateSettings {
        TemplateSettings {
            description: self.description,
            enabled: match (self.enable, self.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            serial_allow: (!self.allow_serial.is_empty()).then_some(Some(self.allow_serial)),
            serial_deny: (!self.deny_serial.is_empty()).then_some(self.deny_serial),
            hook_url: self.hook_url.map(Some),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClaimCommand {
    /// Issue a claim certificate and key for a production batch, bound to one
    /// fleet template; writes claim.pem, claim.key (0600) and ca.pem to --out.
    Create {
        #[arg(long)]
        template: String,
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    List,
    Revoke {
        serial: String,
    },
    /// Issue a replacement bound to the same template and revoke the old one.
    Rotate {
        serial: String,
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Report claim certificates inside the expiry warning window now.
    CheckExpiry,
}

#[derive(Debug, Subcommand)]
pub enum RegisteredCaCommand {
    /// Register a manufacturer CA whose device certificates may connect.
    Register {
        #[arg(long)]
        cert: PathBuf,
        /// The template JITP runs for unknown devices of this CA.
        #[arg(long)]
        template: Option<String>,
        /// Provision unknown devices on their first connection.
        #[arg(long, default_value = "on")]
        auto_registration: OnOff,
        /// Proof of possession: a certificate signed by the CA whose CN is
        /// the tenant's registration code (`onramp ca registration-code`).
        #[arg(long)]
        verification_cert: Option<PathBuf>,
    },
    /// The code a verification certificate's CN must carry.
    RegistrationCode,
    /// Registered manufacturer CAs.
    Registered,
    Activate {
        id: String,
    },
    /// Refuse the CA's devices until activated again.
    Deactivate {
        id: String,
    },
    /// Refuse the CA's devices for good.
    Revoke {
        id: String,
    },
    /// Turn auto-registration on or off.
    AutoRegistration {
        id: String,
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn show_template(out: &Output, t: &onramp_domain::ProvisioningTemplateRecord) -> Result<()> {
    out.message(
        &serde_json::to_value(t)?,
        &format!(
            "template {} ({}), default version {} of {}, {}",
            t.name,
            t.kind.as_str(),
            t.default_version,
            t.latest_version,
            if t.enabled { "enabled" } else { "disabled" }
        ),
    )
}

pub async fn template(
    onramp: &Onramp,
    caller: &Caller,
    out: &Output,
    cmd: TemplateCommand,
) -> Result<()> {
    match cmd {
        TemplateCommand::Create {
            name,
            body,
            kind,
            settings,
        } => {
            let kind = match kind {
                KindArg::Fleet => TemplateKind::Fleet,
                KindArg::Jitp => TemplateKind::Jitp,
            };
            let t = onramp
                .create_template(caller, &name, kind, &read(&body)?, settings.settings())
                .await?;
            show_template(out, &t)
        }
        TemplateCommand::List => {
            let list = onramp.list_templates(caller).await?;
            let rows = list
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.kind.as_str().into(),
                        t.default_version.to_string(),
                        t.latest_version.to_string(),
                        t.enabled.to_string(),
                        t.hook_url.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.table_or_json(
                &list,
                &["NAME", "KIND", "DEFAULT", "LATEST", "ENABLED", "HOOK"],
                rows,
            )
        }
        TemplateCommand::Show { name } => {
            let d = onramp.get_template(caller, &name).await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "template": d.template,
                        "body": d.body,
                        "versions": d.versions,
                    }))?
                );
                return Ok(());
            }
            show_template(out, &d.template)?;
            if let Some(a) = &d.template.serial_allow {
                println!("allow-list: {}", a.join(", "));
            }
            if !d.template.serial_deny.is_empty() {
                println!("deny-list: {}", d.template.serial_deny.join(", "));
            }
            if let Some(h) = &d.template.hook_url {
                println!("pre-provisioning hook: {h}");
            }
            for v in &d.versions {
                println!("version {} created {}", v.version, ts(v.created_at));
            }
            println!("{}", d.body);
            Ok(())
        }
        TemplateCommand::Version {
            name,
            body,
            set_default,
        } => {
            let t = onramp
                .add_template_version(caller, &name, &read(&body)?, set_default)
                .await?;
            show_template(out, &t)
        }
        TemplateCommand::SetDefaultVersion { name, version } => {
            let t = onramp
                .set_template_default_version(caller, &name, version)
                .await?;
            show_template(out, &t)
        }
        TemplateCommand::Update {
            name,
            settings,
            clear_allow,
            clear_hook,
        } => {
            let mut s = settings.settings();
            if clear_allow {
                s.serial_allow = Some(None);
            }
            if clear_hook {
                s.hook_url = Some(None);
            }
            let t = onramp.update_template(caller, &name, s).await?;
            show_template(out, &t)
        }
    }
}

fn write_claim(dir: &Path, created: &onramp_service::CreatedClaim) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("claim.pem"), &created.certificate_pem)?;
    onramp_pki::write_private_file(&dir.join("claim.key"), created.private_key_pem.as_bytes())?;
    std::fs::write(dir.join("ca.pem"), &created.ca_chain_pem)?;
    Ok(())
}

pub async fn claim(
    onramp: &Onramp,
    caller: &Caller,
    out: &Output,
    cmd: ClaimCommand,
) -> Result<()> {
    match cmd {
        ClaimCommand::Create {
            template,
            validity_days,
            out: dir,
        } => {
            let created = onramp
                .create_claim(caller, &template, validity_days)
                .await?;
            write_claim(&dir, &created)?;
            out.message(
                &serde_json::to_value(&created.claim)?,
                &format!(
                    "claim certificate {} for template {} (expires {}) written to {}",
                    created.claim.serial,
                    template,
                    ts(created.claim.not_after),
                    dir.display()
                ),
            )
        }
        ClaimCommand::List => {
            let list = onramp.list_claims(caller).await?;
            let rows = list
                .iter()
                .map(|c| {
                    vec![
                        c.serial.clone(),
                        c.template.clone(),
                        c.status.to_string(),
                        ts(c.not_after),
                        c.replaced_by.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.table_or_json(
                &list,
                &["SERIAL", "TEMPLATE", "STATUS", "NOT AFTER", "REPLACED BY"],
                rows,
            )
        }
        ClaimCommand::Revoke { serial } => {
            onramp.revoke_claim(caller, &serial).await?;
            out.message(
                &serde_json::json!({"revoked": serial}),
                &format!("revoked claim certificate {serial}"),
            )
        }
        ClaimCommand::Rotate {
            serial,
            validity_days,
            out: dir,
        } => {
            let created = onramp.rotate_claim(caller, &serial, validity_days).await?;
            write_claim(&dir, &created)?;
            out.message(
                &serde_json::to_value(&created.claim)?,
                &format!(
                    "claim certificate {serial} replaced by {}, written to {}",
                    created.claim.serial,
                    dir.display()
                ),
            )
        }
        ClaimCommand::CheckExpiry => {
            let list = onramp.check_claim_expiry_as(caller).await?;
            let rows = list
                .iter()
                .map(|c| vec![c.serial.clone(), c.template.clone(), ts(c.not_after)])
                .collect();
            out.table_or_json(&list, &["SERIAL", "TEMPLATE", "NOT AFTER"], rows)
        }
    }
}

pub async fn registered_ca(
    onramp: &Onramp,
    caller: &Caller,
    out: &Output,
    cmd: RegisteredCaCommand,
) -> Result<()> {
    let show = |ca: &onramp_domain::RegisteredCa, verb: &str| {
        out.message(
            &serde_json::to_value(ca)?,
            &format!(
                "{verb} CA {} ({}), status {}, auto-registration {}",
                ca.id,
                ca.subject,
                ca.status.as_str(),
                if ca.auto_registration { "on" } else { "off" }
            ),
        )
    };
    match cmd {
        RegisteredCaCommand::Register {
            cert,
            template,
            auto_registration,
            verification_cert,
        } => {
            let verification = verification_cert.as_deref().map(read).transpose()?;
            let ca = onramp
                .register_ca(
                    caller,
                    &read(&cert)?,
                    template.as_deref(),
                    auto_registration == OnOff::On,
                    verification.as_deref(),
                )
                .await?;
            show(&ca, "registered")
        }
        RegisteredCaCommand::RegistrationCode => {
            let code = onramp.registration_code(caller)?;
            out.message(&serde_json::json!({"registration_code": code}), &code)
        }
        RegisteredCaCommand::Registered => {
            let list = onramp.list_registered_cas(caller).await?;
            let rows = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.subject.clone(),
                        c.status.as_str().into(),
                        c.auto_registration.to_string(),
                        c.template.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.table_or_json(
                &list,
                &["ID", "SUBJECT", "STATUS", "AUTO", "TEMPLATE"],
                rows,
            )
        }
        RegisteredCaCommand::Activate { id } => {
            let ca = onramp
                .update_registered_ca(caller, &id, Some(CaStatus::Active), None)
                .await?;
            show(&ca, "activated")
        }
        RegisteredCaCommand::Deactivate { id } => {
            let ca = onramp
                .update_registered_ca(caller, &id, Some(CaStatus::Inactive), None)
                .await?;
            show(&ca, "deactivated")
        }
        RegisteredCaCommand::Revoke { id } => {
            let ca = onramp
                .update_registered_ca(caller, &id, Some(CaStatus::Revoked), None)
                .await?;
            show(&ca, "revoked")
        }
        RegisteredCaCommand::AutoRegistration { id, state } => {
            let ca = onramp
                .update_registered_ca(caller, &id, None, Some(state == OnOff::On))
                .await?;
            show(&ca, "updated")
        }
    }
}
