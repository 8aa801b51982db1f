//! CLI for fleet provisioning and JITP: `onramp template`, `onramp claim`
//! and the registered-CA commands under `onramp ca`.

use crate::admin::Admin;
use crate::cli::{Output, ts};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use onramp_domain::{CaStatus, TemplateKind};
use onramp_service::TemplateSettings;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Fleet provisioning by claim certificate.
    Fleet,
    /// Just-in-time provisioning for devices of a registered CA.
    Jitp,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Create a template (version 1) from a JSON body file.
    Create {
        /// Template name: 1 to 36 letters, digits, `_` and `-`.
        name: String,
        /// The template body (Parameters, Resources) as a JSON file.
        #[arg(long)]
        body: PathBuf,
        /// What the template provisions through.
        #[arg(long, value_enum, default_value = "fleet")]
        kind: KindArg,
        #[command(flatten)]
        settings: TemplateSettingsArgs,
    },
    /// List templates.
    List,
    /// Show settings, the default body and the versions.
    Show {
        /// Template name.
        name: String,
    },
    /// Store a new version of the body.
    Version {
        /// Template name.
        name: String,
        /// The new body as a JSON file.
        #[arg(long)]
        body: PathBuf,
        /// Make the new version the default.
        #[arg(long)]
        set_default: bool,
    },
    /// Make an earlier or later version the default.
    SetDefaultVersion {
        /// Template name.
        name: String,
        /// The version to make the default.
        version: i64,
    },
    /// Change a template's settings.
    Update {
        /// Template name.
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
    /// A description for operators.
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
    /// Refuse provisioning through this template.
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    /// Allow provisioning through this template again.
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
        /// The fleet template the claim may provision through.
        #[arg(long)]
        template: String,
        /// Validity in days, 1 to 3650.
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        /// Directory to write claim.pem, claim.key and ca.pem into.
        #[arg(long)]
        out: PathBuf,
    },
    /// List claim certificates.
    List,
    /// Revoke a claim certificate.
    Revoke {
        /// Claim certificate serial number (hex).
        serial: String,
    },
    /// Issue a replacement bound to the same template and revoke the old one.
    Rotate {
        /// Serial number (hex) of the claim certificate to replace.
        serial: String,
        /// Validity of the replacement in days, 1 to 3650.
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        /// Directory to write claim.pem, claim.key and ca.pem into.
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
        /// The manufacturer CA certificate, PEM.
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
    /// Accept the CA's devices again.
    Activate {
        /// The CA's id (SHA-256 of its certificate).
        id: String,
    },
    /// Refuse the CA's devices until activated again.
    Deactivate {
        /// The CA's id (SHA-256 of its certificate).
        id: String,
    },
    /// Refuse the CA's devices for good.
    Revoke {
        /// The CA's id (SHA-256 of its certificate).
        id: String,
    },
    /// Turn auto-registration on or off.
    AutoRegistration {
        /// The CA's id (SHA-256 of its certificate).
        id: String,
        /// on or off.
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Turned on.
    On,
    /// Turned off.
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

pub async fn template(admin: &Admin, out: &Output, cmd: TemplateCommand) -> Result<()> {
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
            let t = admin
                .create_template(&name, kind, &read(&body)?, settings.settings())
                .await?;
            show_template(out, &t)
        }
        TemplateCommand::List => {
            let list = admin.list_templates().await?;
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
            out.list(
                &list,
                None,
                &["NAME", "KIND", "DEFAULT", "LATEST", "ENABLED", "HOOK"],
                rows,
            )
        }
        TemplateCommand::Show { name } => {
            let d = admin.get_template(&name).await?;
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
            let t = admin
                .add_template_version(&name, &read(&body)?, set_default)
                .await?;
            show_template(out, &t)
        }
        TemplateCommand::SetDefaultVersion { name, version } => {
            let t = admin.set_template_default_version(&name, version).await?;
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
            let t = admin.update_template(&name, s).await?;
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

pub async fn claim(admin: &Admin, out: &Output, cmd: ClaimCommand) -> Result<()> {
    match cmd {
        ClaimCommand::Create {
            template,
            validity_days,
            out: dir,
        } => {
            let created = admin.create_claim(&template, validity_days).await?;
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
            let list = admin.list_claims().await?;
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
            out.list(
                &list,
                None,
                &["SERIAL", "TEMPLATE", "STATUS", "NOT AFTER", "REPLACED BY"],
                rows,
            )
        }
        ClaimCommand::Revoke { serial } => {
            admin.revoke_claim(&serial).await?;
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
            let created = admin.rotate_claim(&serial, validity_days).await?;
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
            let list = admin.expiring_claims().await?;
            let rows = list
                .iter()
                .map(|c| vec![c.serial.clone(), c.template.clone(), ts(c.not_after)])
                .collect();
            out.list(&list, None, &["SERIAL", "TEMPLATE", "NOT AFTER"], rows)
        }
    }
}

pub async fn registered_ca(admin: &Admin, out: &Output, cmd: RegisteredCaCommand) -> Result<()> {
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
            let ca = admin
                .register_ca(
                    &read(&cert)?,
                    template.as_deref(),
                    auto_registration == OnOff::On,
                    verification.as_deref(),
                )
                .await?;
            show(&ca, "registered")
        }
        RegisteredCaCommand::RegistrationCode => {
            let code = admin.registration_code().await?;
            out.message(&serde_json::json!({"registration_code": code}), &code)
        }
        RegisteredCaCommand::Registered => {
            let list = admin.list_registered_cas().await?;
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
            out.list(
                &list,
                None,
                &["ID", "SUBJECT", "STATUS", "AUTO", "TEMPLATE"],
                rows,
            )
        }
        RegisteredCaCommand::Activate { id } => {
            let ca = admin
                .update_registered_ca(&id, Some(CaStatus::Active), None)
                .await?;
            show(&ca, "activated")
        }
        RegisteredCaCommand::Deactivate { id } => {
            let ca = admin
                .update_registered_ca(&id, Some(CaStatus::Inactive), None)
                .await?;
            show(&ca, "deactivated")
        }
        RegisteredCaCommand::Revoke { id } => {
            let ca = admin
                .update_registered_ca(&id, Some(CaStatus::Revoked), None)
                .await?;
            show(&ca, "revoked")
        }
        RegisteredCaCommand::AutoRegistration { id, state } => {
            let ca = admin
                .update_registered_ca(&id, None, Some(state == OnOff::On))
                .await?;
            show(&ca, "updated")
        }
    }
}
