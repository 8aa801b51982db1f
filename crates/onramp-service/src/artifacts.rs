//! Signed OTA artifacts: signers (public keys only), uploads verified
//! against them and stored by SHA-256, per-device download URLs in job
//! documents, and the device's authorised download.

use crate::device::DeviceReply;
use crate::{Caller, Onramp, RateLimit, Result, ServiceError, now};
use base64::Engine;
use onramp_domain::artifact::{self, ResolvedArtifact};
use onramp_domain::{AuditEntry, Outcome, Page, Permission};
use onramp_pki::signing::{self, PublicKey};
use onramp_store::{ArtifactRecord, SignerRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Where artifacts live and how they are served.
#[derive(Debug, Clone)]
pub struct ArtifactSettings {
    /// The data directory's `artifacts/` folder; None: uploads are refused.
    pub dir: Option<PathBuf>,
    /// The largest artifact accepted.
    pub max_upload_bytes: u64,
    /// Lifetime of a download URL handed to a device.
    pub url_ttl_secs: i64,
    /// Download requests per device.
    pub downloads_per_device: RateLimit,
    /// Download bandwidth per request, bytes per second; 0: unpaced.
    pub download_bytes_per_sec: u64,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        ArtifactSettings {
            dir: None,
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            url_ttl_secs: 3600,
            downloads_per_device: RateLimit {
                per_second: 1,
                burst: 10,
            },
            download_bytes_per_sec: 0,
        }
    }
}

/// A signer as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signer {
    pub name: String,
    pub algorithm: String,
    pub public_key_pem: String,
    pub created_at: i64,
    pub created_by: String,
}

impl From<SignerRecord> for Signer {
    fn from(r: SignerRecord) -> Self {
        Signer {
            name: r.name,
            algorithm: r.algorithm,
            public_key_pem: r.public_key_pem,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

/// An artifact as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub sha256: String,
    pub name: String,
    pub size: i64,
    pub signed: bool,
    pub signer: Option<String>,
    pub signature: Option<String>,
    pub created_at: i64,
    pub created_by: String,
}

impl From<ArtifactRecord> for Artifact {
    fn from(r: ArtifactRecord) -> Self {
        Artifact {
            signed: r.signature.is_some(),
            sha256: r.sha256,
            name: r.name,
            size: r.size,
            signer: r.signer,
            signature: r.signature,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

/// What an upload claims about its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadArtifact {
    pub name: String,
    /// The signer whose key made `signature`; both or neither.
    pub signer: Option<String>,
    /// The detached signature, base64.
    pub signature: Option<String>,
}

/// A download the device may make.
#[derive(Debug, Clone)]
pub struct ArtifactDownload {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub thing_name: String,
    /// Bytes per second for this download; 0: unpaced.
    pub bytes_per_sec: u64,
}

/// Removes a temporary file unless it was kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| ServiceError::Internal(format!("{}: {e}", path.display())))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Onramp {
    fn artifact_dir(&self) -> Result<PathBuf> {
        self.inner
            .settings
            .artifacts
            .dir
            .clone()
            .ok_or_else(|| ServiceError::Internal("artifact storage is not configured".into()))
    }

    /// The public HTTPS base URL of download links, e.g.
    /// `https://onramp.example.com:8443`; set once the listener is bound.
    pub fn set_artifact_base_url(&self, url: &str) {
        let _ = self
            .inner
            .artifact_base_url
            .set(url.trim_end_matches('/').to_string());
    }

    fn audit(&self, caller: &Caller, action: &str, target: String, detail: String) -> AuditEntry {
        AuditEntry {
            id: 0,
            tenant: caller.tenant.clone(),
            actor: caller.actor.clone(),
            action: action.into(),
            target,
            source: caller.source.clone(),
            outcome: Outcome::Success,
            detail,
            at: now(),
        }
    }

    /// Removes uploads a previous run left unfinished (`artifacts/tmp/`);
    /// call at start, before the listener accepts uploads. Returns how many.
    pub fn clean_artifact_uploads(&self) -> usize {
        let Some(dir) = self.inner.settings.artifacts.dir.as_ref() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir.join("tmp")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    // ---- signers ----

    /// Registers a signer's public key (Ed25519 or ECDSA P-256 PEM).
    pub async fn add_signer(
        &self,
        caller: &Caller,
        name: &str,
        public_key_pem: &str,
    ) -> Result<Signer> {
        caller.require(Permission::ManageProvisioning)?;
        if !onramp_domain::job::valid_job_id(name) {
            return Err(ServiceError::BadRequest(format!(
                "signer name {name:?} is not 1-64 letters, digits, '-' or '_'"
            )));
        }
        let key = PublicKey::from_pem(public_key_pem)
            .map_err(|e| ServiceError::BadRequest(format!("publicKeyPem: {e}")))?;
        let record = SignerRecord {
            tenant: caller.tenant.clone(),
            name: name.to_string(),
            algorithm: key.algorithm.as_str().to_string(),
            public_key_pem: public_key_pem.trim().to_string() + "\n",
            created_at: now(),
            created_by: caller.actor.clone(),
        };
        let audit = self.audit(
            caller,
            "signer.add",
            format!("signer:{name}"),
            key.algorithm.as_str().to_string(),
        );
        self.inner.store.add_signer(&record, &audit).await?;
        Ok(record.into())
    }

    pub async fn list_signers(&self, caller: &Caller) -> Result<Vec<Signer>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_signers(&caller.tenant)
            .await?
            .into_iter()
            .map(Signer::from)
            .collect())
    }

    /// Removes (revokes) a signer: later uploads naming it are refused.
    /// Artifacts it signed keep their signature.
    pub async fn delete_signer(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Permission::ManageProvisioning)?;
        let audit = self.audit(
            caller,
            "signer.delete",
            format!("signer:{name}"),
            String::new(),
        );
        if !self
            .inner
            .store
            .delete_signer(&caller.tenant, name, &audit)
            .await?
        {
            return Err(ServiceError::NotFound(format!("signer {name}")));
        }
        Ok(())
    }

    // ---- artifacts ----

    /// Stores an artifact streamed from `body`: hashed while written to a
    /// temporary file, refused over the size limit, verified against the
    /// named signer, then kept under its SHA-256. A refusal leaves nothing.
    pub async fn upload_artifact(
        &self,
        caller: &Caller,
        request: UploadArtifact,
        body: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Artifact> {
        caller.require(Permission::ManageDevices)?;
        if !valid_name(&request.name) {
            return Err(ServiceError::BadRequest(
                "name must be 1-255 characters without control characters".into(),
            ));
        }
        let signed = match (&request.signer, &request.signature) {
            (None, None) => None,
            (Some(name), Some(sig)) => {
                let record = self
                    .inner
                    .store
                    .get_signer(&caller.tenant, name)
                    .await?
                    .ok_or_else(|| ServiceError::BadRequest(format!("unknown signer {name}")))?;
                let key = PublicKey::from_pem(&record.public_key_pem)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(sig.trim())
                    .map_err(|_| ServiceError::BadRequest("the signature is not base64".into()))?;
                Some((name.clone(), key, bytes))
            }
            _ => {
                return Err(ServiceError::BadRequest(
                    "give both the signer and the signature, or neither".into(),
                ));
            }
        };
        let dir = self.artifact_dir()?;
        let tmp_dir = dir.join("tmp");
        create_private_dir(&tmp_dir)?;
        let tmp_path = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let mut guard = TempFile(Some(tmp_path.clone()));
        let io = |e: std::io::Error| ServiceError::Internal(format!("writing an artifact: {e}"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .await
            .map_err(io)?;
        let limit = self.inner.settings.artifacts.max_upload_bytes;
        let mut hasher = Sha256Stream::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    ServiceError::Timeout("the artifact did not arrive in time".into())
                } else {
                    ServiceError::BadRequest(format!("reading the artifact: {e}"))
                }
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(ServiceError::PayloadTooLarge(format!(
                    "the artifact exceeds {limit} bytes"
                )));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let digest = hasher.finish();
        let sha256 = hex_lower(&digest);
        let (signer, signature) = match signed {
            None => (None, None),
            Some((name, key, sig)) => {
                let path = tmp_path.clone();
                let digest = digest.clone();
                let sig2 = sig.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    signing::verify_file(&key, &path, &digest, &sig2)
                })
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))??;
                if !ok {
                    metrics::counter!("onramp_artifact_uploads_total", "outcome" => "bad_signature")
                        .increment(1);
                    return Err(ServiceError::BadRequest(format!(
                        "the signature does not verify with signer {name}'s key"
                    )));
                }
                (
                    Some(name),
                    Some(base64::engine::general_purpose::STANDARD.encode(&sig)),
                )
            }
        };
        let final_path = dir.join(&sha256);
        tokio::fs::rename(&tmp_path, &final_path)
            .await
            .map_err(io)?;
        guard.0 = None;
        let record = ArtifactRecord {
            tenant: caller.tenant.clone(),
            sha256: sha256.clone(),
            name: request.name.clone(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            signer: signer.clone(),
            signature,
            created_at: now(),
            created_by: caller.actor.clone(),
        };
        let audit = self.audit(
            caller,
            "artifact.upload",
            format!("artifact:{sha256}"),
            match &signer {
                Some(s) => format!("{} ({size} bytes), signed by {s}", request.name),
                None => format!("{} ({size} bytes), unsigned", request.name),
            },
        );
        let stored = self.inner.store.put_artifact(&record, &audit).await?;
        metrics::counter!("onramp_artifact_uploads_total", "outcome" => if stored.signature.is_some() { "signed" } else { "unsigned" })
            .increment(1);
        Ok(stored.into())
    }

    pub async fn get_artifact(&self, caller: &Caller, sha256: &str) -> Result<Artifact> {
        caller.require(Permission::ReadRegistry)?;
        self.inner
            .store
            .get_artifact(&caller.tenant, sha256)
            .await?
            .map(Artifact::from)
            .ok_or_else(|| ServiceError::NotFound(format!("artifact {sha256}")))
    }

    pub async fn list_artifacts(&self, caller: &Caller, page: &Page) -> Result<Vec<Artifact>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_artifacts(&caller.tenant, page)
            .await?
            .into_iter()
            .map(Artifact::from)
            .collect())
    }

    /// Job creation: every artifact the document refers to must exist, and
    /// be signed when the job requires it.
    pub(crate) async fn check_job_artifacts(
        &self,
        tenant: &str,
        document: &Value,
        config: &Value,
    ) -> Result<()> {
        let require_signed = config
            .get("requireSignedArtifacts")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for sha in artifact::referenced_artifacts(document) {
            let a = self
                .inner
                .store
                .get_artifact(tenant, &sha)
                .await?
                .ok_or_else(|| {
                    ServiceError::BadRequest(format!(
                        "the document refers to unknown artifact {sha}"
                    ))
                })?;
            if require_signed && a.signature.is_none() {
                return Err(ServiceError::BadRequest(format!(
                    "artifact {sha} is unsigned and the job requires signed artifacts"
                )));
            }
        }
        Ok(())
    }

    // ---- devices ----

    /// The download token of one artifact for one thing, valid until `expires_at`.
    fn download_token(&self, tenant: &str, thing: &str, sha256: &str, expires_at: i64) -> String {
        let mac = self
            .inner
            .hasher
            .hash(&artifact::token_message(tenant, thing, sha256, expires_at));
        artifact::format_token(expires_at, &mac)
    }

    /// A document as one thing sees it: artifact placeholders replaced by
    /// its download URLs, digests and signatures.
    pub(crate) async fn resolve_artifacts(
        &self,
        tenant: &str,
        thing: &str,
        document: &Value,
    ) -> Value {
        let shas = artifact::referenced_artifacts(document);
        if shas.is_empty() {
            return document.clone();
        }
        let base = self
            .inner
            .artifact_base_url
            .get()
            .cloned()
            .unwrap_or_default();
        let expires_at = now() + self.inner.settings.artifacts.url_ttl_secs.max(1);
        let mut known = BTreeMap::new();
        for sha in shas {
            match self.inner.store.get_artifact(tenant, &sha).await {
                Ok(Some(a)) => {
                    let token = self.download_token(tenant, thing, &sha, expires_at);
                    known.insert(
                        sha.clone(),
                        ResolvedArtifact {
                            url: artifact::download_url(&base, &sha, &token),
                            sha256: sha.clone(),
                            signature: a.signature.unwrap_or_default(),
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read an artifact for a job document")
                }
            }
        }
        artifact::substitute(document, &|sha| known.get(sha).cloned())
    }

    /// Replies to a thing with artifact placeholders resolved.
    pub(crate) async fn resolve_artifacts_in_replies(
        &self,
        tenant: &str,
        thing: &str,
        mut replies: Vec<DeviceReply>,
    ) -> Vec<DeviceReply> {
        for r in &mut replies {
            if !artifact::mentions_artifacts(&r.payload) {
                continue;
            }
            if let Ok(body) = serde_json::from_slice::<Value>(&r.payload) {
                let resolved = self.resolve_artifacts(tenant, thing, &body).await;
                r.payload = resolved.to_string().into_bytes();
            }
        }
        replies
    }

    /// A device's download of an artifact, by its client certificate: it
    /// must have an execution (neither canceled nor removed) of a job that
    /// refers to the artifact, and a token, when given, must be its own and
    /// unexpired.
    pub async fn authorize_artifact_download(
        &self,
        chain: &[Vec<u8>],
        sha256: &str,
        token: Option<&str>,
    ) -> Result<ArtifactDownload> {
        let device = self.authenticate_device(chain).await?;
        if device.claim.is_some() {
            return Err(ServiceError::Forbidden(
                "a claim certificate cannot download artifacts".into(),
            ));
        }
        let (tenant, thing) = (device.tenant.as_str(), device.thing_name.as_str());
        if let Err(wait) = self
            .inner
            .download_limiter
            .check(&format!("{tenant}/{thing}"))
        {
            metrics::counter!("onramp_artifact_downloads_refused_total", "reason" => "rate_limited")
                .increment(1);
            return Err(ServiceError::RateLimited {
                retry_after_secs: wait,
            });
        }
        if !artifact::valid_sha256(sha256) {
            return Err(ServiceError::NotFound(format!("artifact {sha256}")));
        }
        let record = self
            .inner
            .store
            .get_artifact(tenant, sha256)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("artifact {sha256}")))?;
        if let Some(token) = token {
            let valid = artifact::parse_token(token).is_some_and(|(expires_at, _)| {
                expires_at >= now()
                    && constant_time_eq(
                        self.download_token(tenant, thing, sha256, expires_at)
                            .as_bytes(),
                        token.as_bytes(),
                    )
            });
            if !valid {
                metrics::counter!("onramp_artifact_downloads_refused_total", "reason" => "token")
                    .increment(1);
                return Err(ServiceError::Forbidden(
                    "the download token is expired or not this device's".into(),
                ));
            }
        }
        let mut granted = false;
        for job_id in self
            .inner
            .store
            .jobs_granting_artifact(tenant, thing, sha256)
            .await?
        {
            if let Some(rules) = self.job_rules(tenant, &job_id).await?
                && artifact::referenced_artifacts(&rules.document).contains(sha256)
            {
                granted = true;
                break;
            }
        }
        if !granted {
            metrics::counter!("onramp_artifact_downloads_refused_total", "reason" => "no_job")
                .increment(1);
            return Err(ServiceError::Forbidden(format!(
                "thing {thing} has no job that refers to artifact {sha256}"
            )));
        }
        let path = self.artifact_dir()?.join(sha256);
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| ServiceError::Internal(format!("artifact {sha256}: {e}")))?
            .len();
        if i64::try_from(size).ok() != Some(record.size) {
            return Err(ServiceError::Internal(format!(
                "artifact {sha256} on disk has {size} bytes, the registry {}",
                record.size
            )));
        }
        Ok(ArtifactDownload {
            path,
            size,
            sha256: sha256.to_string(),
            thing_name: thing.to_string(),
            bytes_per_sec: self.inner.settings.artifacts.download_bytes_per_sec,
        })
    }
}

/// SHA-256 over a stream of chunks.
struct Sha256Stream(onramp_pki::Sha256Context);

impl Sha256Stream {
    fn new() -> Self {
        Sha256Stream(onramp_pki::Sha256Context::new())
    }
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self) -> Vec<u8> {
        self.0.finish()
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
