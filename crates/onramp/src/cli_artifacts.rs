//! CLI for signed OTA artifacts: `onramp artifact keygen|sign` (build
//! machine, no server and no data directory), `onramp artifact
//! upload|list|show` and `onramp signer add|list|delete` (on the data
//! directory, or on a server through the REST API, printing the same).

use crate::admin::Admin;
use crate::cli::{Output, PageArgs, next_after, ts};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Subcommand, ValueEnum};
use onramp_pki::signing::{SignatureAlgorithm, SigningKey};
use onramp_service::UploadArtifact;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    Ed25519,
    P256,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignatureFormat {
    /// Raw signature bytes (Ed25519: 64 bytes; P-256: DER), as openssl reads them.
    Der,
    /// The same bytes in base64 on one line, as `X-Onramp-Signature` carries them.
    Base64,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Create a signing key (PKCS#8 PEM, mode 0600) and its public key.
    /// Runs on the build machine; needs no server and no data directory.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600); must not exist.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the public key (PEM) to register as a signer.
        #[arg(long)]
        public_out: PathBuf,
        /// The key type.
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: AlgorithmArg,
    },
    /// Write a detached signature of FILE with a PKCS#8 PEM key (Ed25519 or
    /// ECDSA P-256, by the key's type). Needs no server and no data directory.
    Sign {
        /// The artifact to sign.
        file: PathBuf,
        /// The PKCS#8 PEM private key (Ed25519 or ECDSA P-256).
        #[arg(long)]
        key: PathBuf,
        /// Default: FILE.sig.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How to write the signature.
        #[arg(long, value_enum, default_value = "der")]
        format: SignatureFormat,
    },
    /// Store an artifact, verified against a registered signer.
    Upload {
        /// The artifact to upload.
        file: PathBuf,
        /// The detached signature file (raw/DER or base64).
        #[arg(long, requires = "signer")]
        signature: Option<PathBuf>,
        /// The registered signer whose key made the signature.
        #[arg(long, requires = "signature")]
        signer: Option<String>,
        /// Default: the file's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the stored artifacts in SHA-256 order.
    List(PageArgs),
    /// Show one artifact.
    Show {
        /// The artifact's SHA-256 (hex).
        sha256: String,
    },
}

impl ArtifactCommand {
    /// Commands of the build machine, run before any data directory is opened.
    pub fn is_offline(&self) -> bool {
        matches!(
            self,
            ArtifactCommand::Keygen { .. } | ArtifactCommand::Sign { .. }
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum SignerCommand {
    /// Register a signer's public key (PEM, Ed25519 or ECDSA P-256).
    Add {
        /// The signer's name (letters, digits, '-' and '_').
        name: String,
        /// The public key PEM file.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// List the signers.
    List,
    /// Remove a signer: uploads naming it are refused from then on.
    Delete {
        /// The signer's name.
        name: String,
    },
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// `artifact keygen` and `artifact sign`: no server, no data directory.
pub fn offline(cmd: ArtifactCommand, out: &Output) -> Result<()> {
    match cmd {
        ArtifactCommand::Keygen {
            out: key_path,
            public_out,
            algorithm,
        } => {
            let alg = match algorithm {
                AlgorithmArg::Ed25519 => SignatureAlgorithm::Ed25519,
                AlgorithmArg::P256 => SignatureAlgorithm::EcdsaP256,
            };
            let (key, pem) = SigningKey::generate(alg)?;
            write_private(&key_path, pem.as_bytes())?;
            let public = key.public_key_pem()?;
            std::fs::write(&public_out, &public)
                .with_context(|| format!("writing {}", public_out.display()))?;
            out.message(
                &serde_json::json!({"key": key_path, "publicKey": public_out, "algorithm": alg.as_str()}),
                &format!(
                    "wrote the {} signing key to {} (keep it off the server) and its public key to {}",
                    alg.as_str(),
                    key_path.display(),
                    public_out.display()
                ),
            )
        }
        ArtifactCommand::Sign {
            file,
            key,
            out: sig_path,
            format,
        } => {
            onramp_pki::check_key_file(&key)?;
            let key = SigningKey::from_pem(&read_text(&key)?)?;
            let message =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sig = key.sign(&message)?;
            let sig_path = sig_path.unwrap_or_else(|| {
                let mut p = file.clone().into_os_string();
                p.push(".sig");
                PathBuf::from(p)
            });
            let bytes = match format {
                SignatureFormat::Der => sig.clone(),
                SignatureFormat::Base64 => {
                    let mut b = base64::engine::general_purpose::STANDARD
                        .encode(&sig)
                        .into_bytes();
                    b.push(b'\n');
                    b
                }
            };
            std::fs::write(&sig_path, bytes)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            out.message(
                &serde_json::json!({
                    "signature": sig_path,
                    "algorithm": key.algorithm().as_str(),
                    "base64": base64::engine::general_purpose::STANDARD.encode(&sig),
                }),
                &format!(
                    "wrote the {} signature of {} to {}",
                    key.algorithm().as_str(),
                    file.display(),
                    sig_path.display()
                ),
            )
        }
        _ => bail!("this artifact command needs the data directory"),
    }
}

/// A signature file as base64: raw bytes (openssl's form) or base64 text.
fn signature_base64(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    let engine = base64::engine::general_purpose::STANDARD;
    if !trimmed.is_empty() && engine.decode(trimmed).is_ok() && bytes.is_ascii() {
        trimmed.to_string()
    } else {
        engine.encode(bytes)
    }
}

fn artifact_row(a: &onramp_service::Artifact) -> Vec<String> {
    vec![
        a.sha256.clone(),
        a.name.clone(),
        a.size.to_string(),
        a.signer.clone().unwrap_or_else(|| "(unsigned)".into()),
        ts(a.created_at),
    ]
}

const ARTIFACT_HEAD: [&str; 5] = ["SHA-256", "NAME", "SIZE", "SIGNER", "CREATED"];

pub async fn artifact(admin: &Admin, out: &Output, cmd: ArtifactCommand) -> Result<()> {
    match cmd {
        ArtifactCommand::Upload {
            file,
            signature,
            signer,
            name,
        } => {
            let signature = match &signature {
                Some(p) => Some(signature_base64(
                    &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                )),
                None => None,
            };
            let name = name.unwrap_or_else(|| {
                file.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "artifact".into())
            });
            let a = admin
                .upload_artifact(
                    &file,
                    UploadArtifact {
                        name,
                        signer,
                        signature,
                    },
                )
                .await?;
            out.table_or_json(&a, &ARTIFACT_HEAD, vec![artifact_row(&a)])
        }
        ArtifactCommand::List(p) => {
            let page = p.page()?;
            let items = admin.list_artifacts(&page).await?;
            let next = next_after(&items, &page, |a| a.sha256.clone());
            let rows = items.iter().map(artifact_row).collect();
            out.list(&items, next, &ARTIFACT_HEAD, rows)
        }
        ArtifactCommand::Show { sha256 } => {
            let a = admin.get_artifact(&sha256).await?;
            out.table_or_json(&a, &ARTIFACT_HEAD, vec![artifact_row(&a)])
        }
        offline_cmd => offline(offline_cmd, out),
    }
}

pub async fn signer(admin: &Admin, out: &Output, cmd: SignerCommand) -> Result<()> {
    match cmd {
        SignerCommand::Add { name, public_key } => {
            let s = admin.add_signer(&name, &read_text(&public_key)?).await?;
            out.message(
                &serde_json::to_value(&s)?,
                &format!("added signer {} ({})", s.name, s.algorithm),
            )
        }
        SignerCommand::List => {
            let items = admin.list_signers().await?;
            let rows = items
                .iter()
                .map(|s| vec![s.name.clone(), s.algorithm.clone(), ts(s.created_at)])
                .collect();
            out.table_or_json(&items, &["NAME", "ALGORITHM", "CREATED"], rows)
        }
        SignerCommand::Delete { name } => {
            admin.delete_signer(&name).await?;
            out.message(
                &serde_json::json!({"deleted": name}),
                &format!("deleted signer {name}"),
            )
        }
    }
}
