//! The admin operations the CLI performs, in one place for both modes: on the
//! local data directory as the local operator, or on a running server through
//! its REST API. Both return the same domain types and the same errors, so a
//! command prints the same way whichever mode it ran in.

use anyhow::{Context, Result};
use onramp_domain::event::Event;
use onramp_domain::job::JobExecution;
use onramp_domain::{
    AllowlistEntry, ApiKey, AuditEntry, AuditQuery, CaStatus, CertStatus, Certificate,
    ClaimCertificate, Device, DeviceFilter, EnrolmentToken, LifecycleAction, Page, PolicyTarget,
    ProvisioningTemplateRecord, RegisteredCa, Role, StoredPolicy, TemplateKind, TemplateVersion,
};
use onramp_service::{Artifact, JobDescription, Signer, UploadArtifact};
use onramp_service::{AuditFinding, CreatedSubscription, EventDelivery, EventSubscription};
use onramp_service::{
    Caller, CreatedApiKey, CreatedClaim, CreatedToken, Onramp, ServiceError, ShadowOp, ShadowTopic,
    TemplateDetail, TemplateSettings, TokenRequest,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An admin failure with the same code and wording in both modes; `code` is
/// the API's `error.code` (`not_found`, `bad_request`, ...), or `connection`
/// when the server cannot be reached, or `local_only` for a command the API
/// does not offer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: String,
    pub message: String,
}

impl AdminError {
    pub fn new(code: &str, message: impl Into<String>) -> AdminError {
        AdminError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> Self {
        AdminError::new(e.code(), e.to_string())
    }
}

fn svc<T>(r: std::result::Result<T, ServiceError>) -> Result<T> {
    r.map_err(|e| AdminError::from(e).into())
}

/// Shadow errors keep AWS IoT's wording on the wire; the CLI words a missing
/// thing the way every other command words a missing device.
fn shadow_error(thing: &str, code: u16, message: &str) -> AdminError {
    let code_name = match code {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        429 => "rate_limited",
        _ => "internal",
    };
    if code == 404 && message == "Thing not found" {
        return AdminError::new(code_name, format!("device `{thing}` not found"));
    }
    AdminError::new(code_name, message)
}

/// The issuing and root CA, as `onramp ca show` prints them.
pub struct CaCerts {
    pub issuing: onramp_pki::CertInfo,
    pub root: onramp_pki::CertInfo,
}

/// Whom the CLI acts as.
#[derive(Debug, Deserialize)]
pub struct Identity {
    pub actor: String,
    pub tenant: String,
    pub role: Role,
}

/// Where admin operations run: the local services as the local operator, or
/// a running server's API with an API key.
pub enum Admin {
    Local(Onramp, Caller),
    Remote(ApiClient),
}

macro_rules! local_or_remote {
    ($self:ident, $local:pat => $l:expr, $remote:pat => $r:expr) => {
        match $self {
            Admin::Local(o, c) => {
                let $local = (o, c);
                svc($l.await)
            }
            Admin::Remote($remote) => $r,
        }
    };
}

fn seg(s: &str) -> String {
    // Path segments are percent-encoded so any name reaches the server intact.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Admin {
    pub async fn whoami(&self) -> Result<Identity> {
        match self {
            Admin::Local(_, c) => Ok(Identity {
                actor: c.actor.clone(),
                tenant: c.tenant.clone(),
                role: c.role,
            }),
            Admin::Remote(api) => api.get("/api/v1/whoami", &[]).await,
        }
    }

    pub async fn ca(&self) -> Result<CaCerts> {
        let chain_pem = match self {
            Admin::Local(o, _) => o.ca().chain_pem(),
            Admin::Remote(api) => api.text("/api/v1/ca/chain").await?,
        };
        let ders = onramp_pki::pem_to_der_chain(&chain_pem)?;
        let (Some(first), Some(last)) = (ders.first(), ders.last()) else {
            anyhow::bail!("the CA chain is empty");
        };
        Ok(CaCerts {
            issuing: onramp_pki::parse_cert(first)?,
            root: onramp_pki::parse_cert(last)?,
        })
    }

    // ---- CA rollover ----

    pub async fn list_issuing_cas(&self) -> Result<Vec<onramp_service::IssuingCa>> {
        local_or_remote!(self,
            (o, c) => o.list_issuing_cas(c),
            api => api.get("/api/v1/ca/issuing", &[]).await)
    }

    pub async fn roll_over_ca(
        &self,
        request: onramp_service::CaRolloverRequest,
    ) -> Result<onramp_service::IssuingCa> {
        match self {
            Admin::Local(o, c) => svc(o.roll_over_ca(c, request).await),
            Admin::Remote(api) => {
                let body = serde_json::to_value(&request)?;
                api.send(
                    reqwest::Method::POST,
                    "/api/v1/ca/rollover",
                    Body::Json(body),
                )
                .await
            }
        }
    }

    pub async fn retire_ca(&self, id: &str, force: bool) -> Result<onramp_service::IssuingCa> {
        local_or_remote!(self,
            (o, c) => o.retire_ca(c, id, force),
            api => api.send(reqwest::Method::POST, &format!("/api/v1/ca/issuing/{}/retire", seg(id)),
                Body::Json(serde_json::json!({"force": force}))).await)
    }

    /// What `onramp ca export` writes: every trusted root, or (`chain`) every
    /// trusted issuing CA with its parents, without repeats; the active CA first.
    pub async fn ca_export(&self, chain: bool) -> Result<String> {
        let chains: Vec<Vec<Vec<u8>>> = match self {
            // Locally the CA directory says it all; no registry scan.
            Admin::Local(o, _) => {
                o.reload_authorities_if_changed()
                    .map_err(AdminError::from)?;
                o.authorities()
                    .trusted()
                    .map(|ca| ca.chain_der().to_vec())
                    .collect()
            }
            Admin::Remote(_) => {
                let mut out = Vec::new();
                for ca in self.list_issuing_cas().await? {
                    if ca.role != "retired" {
                        out.push(onramp_pki::pem_to_der_chain(&ca.chain_pem)?);
                    }
                }
                out
            }
        };
        let mut ders: Vec<Vec<u8>> = Vec::new();
        for mut certs in chains {
            if !chain {
                certs = certs.pop().into_iter().collect();
            }
            for der in certs {
                if !ders.contains(&der) {
                    ders.push(der);
                }
            }
        }
        if ders.is_empty() {
            anyhow::bail!("no trusted CA");
        }
        Ok(ders
            .iter()
            .map(|d| onramp_pki::certificate_pem(d))
            .collect())
    }

    // ---- devices ----

    pub async fn list_devices(&self, filter: &DeviceFilter, page: &Page) -> Result<Vec<Device>> {
        local_or_remote!(self,
        (o, c) => o.list_devices(c, filter, page),
        api => {
            let mut q = page_query(page);
            if let Some(s) = filter.status {
                q.push(("status", s.to_string()));
            }
            for (k, v) in [
                ("device_class", &filter.device_class),
                ("hardware_revision", &filter.hardware_revision),
                ("firmware_lt", &filter.firmware_lt),
                ("firmware_gte", &filter.firmware_gte),
                ("firmware_eq", &filter.firmware_eq),
            ] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            api.get_items("/api/v1/devices", &q).await
        })
    }

    pub async fn get_device(&self, thing: &str) -> Result<Device> {
        local_or_remote!(self,
            (o, c) => o.get_device(c, thing),
            api => api.get(&format!("/api/v1/devices/{}", seg(thing)), &[]).await)
    }

    pub async fn lifecycle(&self, thing: &str, action: LifecycleAction) -> Result<Device> {
        local_or_remote!(self,
            (o, c) => o.change_device_lifecycle(c, thing, action),
            api => api.send(reqwest::Method::POST, &format!("/api/v1/devices/{}/{action}", seg(thing)), Body::None).await)
    }

    // ---- jobs ----

    pub async fn create_job(&self, job: onramp_service::CreateJob) -> Result<JobDescription> {
        match self {
            Admin::Local(o, c) => svc(o.create_job(c, job).await),
            Admin::Remote(api) => {
                let document: Value = serde_json::from_slice(&job.document)
                    .context("the job document is not JSON")?;
                let mut body = json!({
                    "jobId": job.job_id,
                    "document": document,
                    "targets": job.targets.things,
                    "thingGroups": job.targets.thing_groups,
                    "targetSelection": if job.continuous { "CONTINUOUS" } else { "SNAPSHOT" },
                });
                if let Some(d) = &job.description {
                    body["description"] = d.clone().into();
                }
                if let Some(q) = &job.targets.query {
                    body["query"] = serde_json::to_value(q)?;
                }
                if let Some(config) = job.config.as_object() {
                    for (k, v) in config {
                        body[k] = v.clone();
                    }
                }
                api.send(reqwest::Method::POST, "/api/v1/jobs", Body::Json(body))
                    .await
            }
        }
    }

    pub async fn list_jobs(&self, page: &Page) -> Result<Vec<JobDescription>> {
        local_or_remote!(self,
            (o, c) => o.list_jobs(c, page),
            api => api.get_items("/api/v1/jobs", &page_query(page)).await)
    }

    pub async fn describe_job(&self, job_id: &str) -> Result<JobDescription> {
        local_or_remote!(self,
            (o, c) => o.describe_job(c, job_id),
            api => api.get(&format!("/api/v1/jobs/{}", seg(job_id)), &[]).await)
    }

    pub async fn list_job_executions(
        &self,
        job_id: &str,
        page: &Page,
    ) -> Result<Vec<JobExecution>> {
        local_or_remote!(self,
            (o, c) => o.list_job_executions(c, job_id, page),
            api => api.get_items(&format!("/api/v1/jobs/{}/executions", seg(job_id)), &page_query(page)).await)
    }

    pub async fn cancel_job(&self, job_id: &str, force: bool) -> Result<JobDescription> {
        local_or_remote!(self,
            (o, c) => o.cancel_job(c, job_id, force),
            api => api.send(reqwest::Method::POST,
                &format!("/api/v1/jobs/{}/cancel?force={force}", seg(job_id)), Body::None).await)
    }

    pub async fn cancel_job_execution(
        &self,
        job_id: &str,
        thing: &str,
        force: bool,
    ) -> Result<JobExecution> {
        local_or_remote!(self,
            (o, c) => o.cancel_job_execution(c, job_id, thing, force),
            api => api.send(reqwest::Method::POST,
                &format!("/api/v1/jobs/{}/things/{}/cancel?force={force}", seg(job_id), seg(thing)),
                Body::None).await)
    }

    pub async fn pause_job(&self, job_id: &str) -> Result<JobDescription> {
        local_or_remote!(self,
            (o, c) => o.pause_job(c, job_id),
            api => api.send(reqwest::Method::POST,
                &format!("/api/v1/jobs/{}/pause", seg(job_id)), Body::None).await)
    }

    pub async fn resume_job(&self, job_id: &str) -> Result<JobDescription> {
        local_or_remote!(self,
            (o, c) => o.resume_job(c, job_id),
            api => api.send(reqwest::Method::POST,
                &format!("/api/v1/jobs/{}/resume", seg(job_id)), Body::None).await)
    }

    pub async fn delete_job(&self, job_id: &str, force: bool) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.delete_job(c, job_id, force),
            api => api.send_empty(reqwest::Method::DELETE,
                &format!("/api/v1/jobs/{}?force={force}", seg(job_id)), Body::None).await)
    }

    pub async fn thing_jobs(&self, thing: &str) -> Result<Vec<JobExecution>> {
        local_or_remote!(self,
            (o, c) => o.thing_pending_executions(c, thing),
            api => api.get(&format!("/api/v1/things/{}/jobs", seg(thing)), &[]).await)
    }

    // ---- outbound events and audit checks ----

    pub async fn create_event_subscription(
        &self,
        url: &str,
        event_types: &str,
    ) -> Result<CreatedSubscription> {
        local_or_remote!(self,
            (o, c) => o.create_event_subscription(c, url, event_types),
            api => api.send(reqwest::Method::POST, "/api/v1/event-subscriptions", Body::Json(json!({
                "url": url,
                "eventTypes": event_types,
            }))).await)
    }

    pub async fn list_event_subscriptions(&self) -> Result<Vec<EventSubscription>> {
        local_or_remote!(self,
            (o, c) => o.list_event_subscriptions(c),
            api => api.get("/api/v1/event-subscriptions", &[]).await)
    }

    pub async fn delete_event_subscription(&self, id: &str) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.delete_event_subscription(c, id),
            api => api.send_empty(reqwest::Method::DELETE,
                &format!("/api/v1/event-subscriptions/{}", seg(id)), Body::None).await)
    }

    pub async fn list_events(&self, page: &Page) -> Result<Vec<Event>> {
        let mut query = vec![("limit", page.limit.to_string())];
        if let Some(after) = &page.after {
            query.push(("after", after.clone()));
        }
        local_or_remote!(self,
            (o, c) => o.list_events(c, page),
            api => api.get("/api/v1/events", &query).await)
    }

    pub async fn list_event_deliveries(&self, status: Option<&str>) -> Result<Vec<EventDelivery>> {
        let query: Vec<(&str, String)> = status
            .map(|s| vec![("status", s.to_string())])
            .unwrap_or_default();
        local_or_remote!(self,
            (o, c) => o.list_event_deliveries(c, status),
            api => api.get("/api/v1/event-deliveries", &query).await)
    }

    pub async fn replay_event_delivery(&self, event_id: &str, subscription_id: &str) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.replay_event_delivery(c, event_id, subscription_id),
            api => api.send_empty(reqwest::Method::POST,
                &format!("/api/v1/event-deliveries/{}/{}/replay", seg(event_id), seg(subscription_id)),
                Body::None).await)
    }

    pub async fn run_audit_checks(&self, checks: &[String]) -> Result<Vec<AuditFinding>> {
        local_or_remote!(self,
            (o, c) => o.run_audit_checks_as(c, checks),
            api => api.send(reqwest::Method::POST, "/api/v1/audit-checks/run",
                Body::Json(json!({ "checks": checks }))).await)
    }

    pub async fn list_audit_findings(&self, status: Option<&str>) -> Result<Vec<AuditFinding>> {
        let query: Vec<(&str, String)> = status
            .map(|s| vec![("status", s.to_string())])
            .unwrap_or_default();
        local_or_remote!(self,
            (o, c) => o.list_audit_findings(c, status),
            api => api.get("/api/v1/audit-findings", &query).await)
    }

    pub async fn suppress_audit_finding(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<AuditFinding> {
        let path = format!("/api/v1/audit-findings/{}/suppression", seg(id));
        local_or_remote!(self,
        (o, c) => o.suppress_audit_finding(c, id, reason),
        api => match reason {
            Some(r) => api.send(reqwest::Method::POST, &path, Body::Json(json!({"reason": r}))).await,
            None => api.send(reqwest::Method::DELETE, &path, Body::None).await,
        })
    }

    // ---- signers and artifacts ----

    pub async fn add_signer(&self, name: &str, public_key_pem: &str) -> Result<Signer> {
        local_or_remote!(self,
            (o, c) => o.add_signer(c, name, public_key_pem),
            api => api.send(reqwest::Method::POST, "/api/v1/signers", Body::Json(json!({
                "name": name,
                "publicKeyPem": public_key_pem,
            }))).await)
    }

    pub async fn list_signers(&self) -> Result<Vec<Signer>> {
        local_or_remote!(self,
            (o, c) => o.list_signers(c),
            api => api.get("/api/v1/signers", &[]).await)
    }

    pub async fn delete_signer(&self, name: &str) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.delete_signer(c, name),
            api => api.send_empty(reqwest::Method::DELETE,
                &format!("/api/v1/signers/{}", seg(name)), Body::None).await)
    }

    /// Uploads the file at `path`, streamed (never read whole into memory)
    /// to the data directory or to the server.
    pub async fn upload_artifact(
        &self,
        path: &std::path::Path,
        upload: UploadArtifact,
    ) -> Result<Artifact> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        match self {
            Admin::Local(o, c) => svc(o.upload_artifact(c, upload, &mut file).await),
            Admin::Remote(api) => api.upload(file, &upload).await,
        }
    }

    pub async fn list_artifacts(&self, page: &Page) -> Result<Vec<Artifact>> {
        local_or_remote!(self,
            (o, c) => o.list_artifacts(c, page),
            api => api.get_items("/api/v1/artifacts", &page_query(page)).await)
    }

    pub async fn get_artifact(&self, sha256: &str) -> Result<Artifact> {
        local_or_remote!(self,
            (o, c) => o.get_artifact(c, sha256),
            api => api.get(&format!("/api/v1/artifacts/{}", seg(sha256)), &[]).await)
    }

    // ---- tokens ----

    pub async fn create_token(&self, req: &TokenRequest) -> Result<CreatedToken> {
        local_or_remote!(self,
            (o, c) => o.create_token(c, req),
            api => api.send(reqwest::Method::POST, "/api/v1/tokens", Body::Json(json!({
                "serial_number": req.serial_number,
                "thing_name": req.thing_name,
                "device_class": req.profile.device_class,
                "hardware_revision": req.profile.hardware_revision,
                "firmware_version": req.profile.firmware_version,
                "ttl_secs": req.ttl_secs,
            }))).await)
    }

    pub async fn list_tokens(&self, page: &Page) -> Result<Vec<EnrolmentToken>> {
        local_or_remote!(self,
            (o, c) => o.list_tokens(c, page),
            api => api.get_items("/api/v1/tokens", &page_query(page)).await)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<EnrolmentToken> {
        local_or_remote!(self,
            (o, c) => o.revoke_token(c, id),
            api => api.send(reqwest::Method::DELETE, &format!("/api/v1/tokens/{}", seg(id)), Body::None).await)
    }

    // ---- allow-list ----

    pub async fn allowlist_add(&self, serials: &[String]) -> Result<u64> {
        local_or_remote!(self,
            (o, c) => o.allowlist_add(c, serials),
            api => added(api.send(reqwest::Method::POST, "/api/v1/allowlist",
                Body::Json(json!({"serial_numbers": serials}))).await?))
    }

    pub async fn allowlist_import(&self, csv: &str) -> Result<u64> {
        local_or_remote!(self,
            (o, c) => o.allowlist_import_csv(c, csv),
            api => added(api.send(reqwest::Method::POST, "/api/v1/allowlist/import",
                Body::Raw(csv.as_bytes().to_vec(), "text/csv")).await?))
    }

    pub async fn allowlist_remove(&self, serial: &str) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.allowlist_remove(c, serial),
            api => api.send_empty(reqwest::Method::DELETE, &format!("/api/v1/allowlist/{}", seg(serial)), Body::None).await)
    }

    pub async fn list_allowlist(&self, page: &Page) -> Result<Vec<AllowlistEntry>> {
        local_or_remote!(self,
            (o, c) => o.list_allowlist(c, page),
            api => api.get_items("/api/v1/allowlist", &page_query(page)).await)
    }

    // ---- certificates ----

    pub async fn list_certificates(
        &self,
        thing: Option<&str>,
        status: Option<CertStatus>,
        page: &Page,
    ) -> Result<Vec<Certificate>> {
        local_or_remote!(self,
        (o, c) => o.list_certificates(c, thing, status, page),
        api => {
            let mut q = page_query(page);
            if let Some(t) = thing {
                q.push(("thing_name", t.to_string()));
            }
            if let Some(s) = status {
                q.push(("status", s.to_string()));
            }
            api.get_items("/api/v1/certificates", &q).await
        })
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Certificate> {
        local_or_remote!(self,
            (o, c) => o.get_certificate(c, serial),
            api => api.get(&format!("/api/v1/certificates/{}", seg(serial)), &[]).await)
    }

    pub async fn revoke_certificate(&self, serial: &str, reason: &str) -> Result<Certificate> {
        local_or_remote!(self,
            (o, c) => o.revoke_certificate(c, serial, reason),
            api => api.send(reqwest::Method::POST, &format!("/api/v1/certificates/{}/revoke", seg(serial)),
                Body::Json(json!({"reason": reason}))).await)
    }

    /// Bulk rotation, delivered as a job (docs/lifecycle.md).
    pub async fn rotate_certificates(
        &self,
        request: onramp_service::RotateRequest,
    ) -> Result<JobDescription> {
        use onramp_domain::rotation::RotationSelector as S;
        match self {
            Admin::Local(o, c) => svc(o.rotate_certificates(c, request).await),
            Admin::Remote(api) => {
                let mut body = json!({});
                match &request.selector {
                    S::Thing(t) => body["thingName"] = t.clone().into(),
                    S::DeviceClass(d) => body["deviceClass"] = d.clone().into(),
                    S::ThingGroup(g) => body["thingGroup"] = g.clone().into(),
                    S::Ca(ca) => body["ca"] = ca.clone().into(),
                    S::ExpiringWithinDays(d) => body["expiringWithinDays"] = (*d).into(),
                }
                if let Some(id) = &request.job_id {
                    body["jobId"] = id.clone().into();
                }
                if let Some(rate) = request.maximum_per_minute {
                    body["maximumPerMinute"] = rate.into();
                }
                api.send(
                    reqwest::Method::POST,
                    "/api/v1/certificates/rotate",
                    Body::Json(body),
                )
                .await
            }
        }
    }

    pub async fn list_rotations(&self, thing: &str) -> Result<Vec<onramp_store::RotationRecord>> {
        local_or_remote!(self,
            (o, c) => o.list_rotations(c, thing),
            api => api.get(&format!("/api/v1/devices/{}/rotations", seg(thing)), &[]).await)
    }

    // ---- API keys ----

    pub async fn create_api_key(&self, name: &str, role: Role) -> Result<CreatedApiKey> {
        local_or_remote!(self,
            (o, c) => o.create_api_key(c, name, role),
            api => api.send(reqwest::Method::POST, "/api/v1/apikeys",
                Body::Json(json!({"name": name, "role": role}))).await)
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        local_or_remote!(self,
            (o, c) => o.list_api_keys(c),
            api => api.get("/api/v1/apikeys", &[]).await)
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        local_or_remote!(self,
            (o, c) => o.revoke_api_key(c, id),
            api => api.send(reqwest::Method::DELETE, &format!("/api/v1/apikeys/{}", seg(id)), Body::None).await)
    }

    // ---- policies ----

    pub async fn put_policy(&self, name: &str, document: &str) -> Result<StoredPolicy> {
        local_or_remote!(self,
            (o, c) => o.put_policy(c, name, document),
            api => api.send(reqwest::Method::PUT, &format!("/api/v1/policies/{}", seg(name)),
                Body::Raw(document.as_bytes().to_vec(), "application/json")).await)
    }

    pub async fn attach_policy(&self, name: &str, target: &PolicyTarget) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.attach_policy(c, name, target),
            api => api.send_empty(reqwest::Method::POST, &format!("/api/v1/policies/{}/attachments", seg(name)),
                Body::Json(serde_json::to_value(target)?)).await)
    }

    pub async fn detach_policy(&self, name: &str, target: &PolicyTarget) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.detach_policy(c, name, target),
            api => api.send_empty(reqwest::Method::DELETE,
                &format!("/api/v1/policies/{}/attachments/{}/{}", seg(name), target.kind(), seg(target.name())),
                Body::None).await)
    }

    pub async fn get_policy(&self, name: &str) -> Result<(StoredPolicy, Vec<PolicyTarget>)> {
        #[derive(Deserialize)]
        struct View {
            #[serde(flatten)]
            policy: StoredPolicy,
            targets: Vec<PolicyTarget>,
        }
        local_or_remote!(self,
        (o, c) => o.get_policy(c, name),
        api => {
            let v: View = api.get(&format!("/api/v1/policies/{}", seg(name)), &[]).await?;
            Ok((v.policy, v.targets))
        })
    }

    pub async fn list_policies(&self) -> Result<Vec<StoredPolicy>> {
        local_or_remote!(self,
            (o, c) => o.list_policies(c),
            api => api.get("/api/v1/policies", &[]).await)
    }

    // ---- shadows ----

    pub async fn shadow(&self, topic: ShadowTopic, body: &[u8]) -> Result<Value> {
        match self {
            Admin::Local(o, c) => o
                .shadow_for_caller(c, &topic, body)
                .await
                .map_err(|e| shadow_error(&topic.thing_name, e.code, &e.message).into()),
            Admin::Remote(api) => {
                let method = match topic.op {
                    ShadowOp::Get => reqwest::Method::GET,
                    ShadowOp::Update => reqwest::Method::POST,
                    ShadowOp::Delete => reqwest::Method::DELETE,
                };
                let mut path = format!("/api/v1/things/{}/shadow", seg(&topic.thing_name));
                if let Some(n) = &topic.shadow_name {
                    path.push_str(&format!("?name={}", seg(n)));
                }
                let body = match topic.op {
                    // Bytes as given: the server judges the encoding, as locally.
                    ShadowOp::Update => Body::Raw(body.to_vec(), "application/json"),
                    _ => Body::None,
                };
                let (status, text) = api.raw(method, &path, body).await?;
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok(value);
                }
                let message = value["message"].as_str().unwrap_or(text.as_str());
                Err(shadow_error(&topic.thing_name, status.as_u16(), message).into())
            }
        }
    }

    // ---- audit ----

    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        local_or_remote!(self,
        (o, c) => o.query_audit(c, q),
        api => {
            let mut query = vec![("limit", q.limit.to_string())];
            for (k, v) in [("action", &q.action), ("target", &q.target), ("actor", &q.actor)] {
                if let Some(v) = v {
                    query.push((k, v.clone()));
                }
            }
            if let Some(b) = q.before_id {
                query.push(("before_id", b.to_string()));
            }
            api.get("/api/v1/audit", &query).await
        })
    }

    // ---- templates ----

    pub async fn create_template(
        &self,
        name: &str,
        kind: TemplateKind,
        body: &str,
        settings: TemplateSettings,
    ) -> Result<ProvisioningTemplateRecord> {
        local_or_remote!(self,
        (o, c) => o.create_template(c, name, kind, body, settings),
        api => {
            let mut req = settings_json(&settings);
            req.insert("name".into(), json!(name));
            req.insert("kind".into(), json!(kind));
            req.insert("body".into(), json!(body));
            api.send(reqwest::Method::POST, "/api/v1/templates", Body::Json(Value::Object(req))).await
        })
    }

    pub async fn list_templates(&self) -> Result<Vec<ProvisioningTemplateRecord>> {
        local_or_remote!(self,
            (o, c) => o.list_templates(c),
            api => api.get("/api/v1/templates", &[]).await)
    }

    pub async fn get_template(&self, name: &str) -> Result<TemplateDetail> {
        #[derive(Deserialize)]
        struct View {
            template: ProvisioningTemplateRecord,
            body: String,
            versions: Vec<TemplateVersion>,
        }
        local_or_remote!(self,
        (o, c) => o.get_template(c, name),
        api => {
            let v: View = api.get(&format!("/api/v1/templates/{}", seg(name)), &[]).await?;
            Ok(TemplateDetail { template: v.template, body: v.body, versions: v.versions })
        })
    }

    pub async fn add_template_version(
        &self,
        name: &str,
        body: &str,
        set_default: bool,
    ) -> Result<ProvisioningTemplateRecord> {
        local_or_remote!(self,
            (o, c) => o.add_template_version(c, name, body, set_default),
            api => api.send(reqwest::Method::POST, &format!("/api/v1/templates/{}/versions", seg(name)),
                Body::Json(json!({"body": body, "set_default": set_default}))).await)
    }

    pub async fn set_template_default_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<ProvisioningTemplateRecord> {
        local_or_remote!(self,
            (o, c) => o.set_template_default_version(c, name, version),
            api => api.send(reqwest::Method::PUT, &format!("/api/v1/templates/{}/default-version", seg(name)),
                Body::Json(json!({"version": version}))).await)
    }

    pub async fn update_template(
        &self,
        name: &str,
        settings: TemplateSettings,
    ) -> Result<ProvisioningTemplateRecord> {
        local_or_remote!(self,
            (o, c) => o.update_template(c, name, settings),
            api => api.send(reqwest::Method::PATCH, &format!("/api/v1/templates/{}", seg(name)),
                Body::Json(Value::Object(settings_json(&settings)))).await)
    }

    // ---- claim certificates ----

    pub async fn create_claim(&self, template: &str, validity_days: u32) -> Result<CreatedClaim> {
        local_or_remote!(self,
            (o, c) => o.create_claim(c, template, validity_days),
            api => created_claim(api.send(reqwest::Method::POST, "/api/v1/claims",
                Body::Json(json!({"template": template, "validity_days": validity_days}))).await?))
    }

    pub async fn list_claims(&self) -> Result<Vec<ClaimCertificate>> {
        local_or_remote!(self,
            (o, c) => o.list_claims(c),
            api => api.get("/api/v1/claims", &[]).await)
    }

    pub async fn revoke_claim(&self, serial: &str) -> Result<()> {
        local_or_remote!(self,
            (o, c) => o.revoke_claim(c, serial),
            api => api.send_empty(reqwest::Method::POST, &format!("/api/v1/claims/{}/revoke", seg(serial)), Body::None).await)
    }

    pub async fn rotate_claim(&self, serial: &str, validity_days: u32) -> Result<CreatedClaim> {
        local_or_remote!(self,
            (o, c) => o.rotate_claim(c, serial, validity_days),
            api => created_claim(api.send(reqwest::Method::POST, &format!("/api/v1/claims/{}/rotate", seg(serial)),
                Body::Json(json!({"validity_days": validity_days}))).await?))
    }

    pub async fn expiring_claims(&self) -> Result<Vec<ClaimCertificate>> {
        local_or_remote!(self,
            (o, c) => o.check_claim_expiry_as(c),
            api => api.get("/api/v1/claims/expiring", &[]).await)
    }

    // ---- registered CAs ----

    pub async fn register_ca(
        &self,
        cert_pem: &str,
        template: Option<&str>,
        auto_registration: bool,
        verification_pem: Option<&str>,
    ) -> Result<RegisteredCa> {
        local_or_remote!(self,
            (o, c) => o.register_ca(c, cert_pem, template, auto_registration, verification_pem),
            api => api.send(reqwest::Method::POST, "/api/v1/cas", Body::Json(json!({
                "certificate_pem": cert_pem,
                "template": template,
                "auto_registration": auto_registration,
                "verification_certificate_pem": verification_pem,
            }))).await)
    }

    pub async fn registration_code(&self) -> Result<String> {
        #[derive(Deserialize)]
        struct Code {
            registration_code: String,
        }
        match self {
            Admin::Local(o, c) => svc(o.registration_code(c)),
            Admin::Remote(api) => {
                let code: Code = api.get("/api/v1/cas/registration-code", &[]).await?;
                Ok(code.registration_code)
            }
        }
    }

    pub async fn list_registered_cas(&self) -> Result<Vec<RegisteredCa>> {
        local_or_remote!(self,
            (o, c) => o.list_registered_cas(c),
            api => api.get("/api/v1/cas", &[]).await)
    }

    pub async fn update_registered_ca(
        &self,
        id: &str,
        status: Option<CaStatus>,
        auto_registration: Option<bool>,
    ) -> Result<RegisteredCa> {
        local_or_remote!(self,
        (o, c) => o.update_registered_ca(c, id, status, auto_registration),
        api => {
            let mut patch = serde_json::Map::new();
            if let Some(s) = status {
                patch.insert("status".into(), json!(s));
            }
            if let Some(a) = auto_registration {
                patch.insert("auto_registration".into(), json!(a));
            }
            api.send(reqwest::Method::PATCH, &format!("/api/v1/cas/{}", seg(id)), Body::Json(Value::Object(patch))).await
        })
    }
}

fn page_query(page: &Page) -> Vec<(&'static str, String)> {
    let mut q = vec![("limit", page.limit.to_string())];
    if let Some(a) = &page.after {
        q.push(("after", a.clone()));
    }
    q
}

fn added(v: Value) -> Result<u64> {
    v["added"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no `added` count"))
}

fn created_claim(v: Value) -> Result<CreatedClaim> {
    #[derive(Deserialize)]
    struct Created {
        claim: ClaimCertificate,
        certificate_pem: String,
        private_key_pem: String,
        ca_chain_pem: String,
    }
    let c: Created = serde_json::from_value(v).context("the server's claim answer")?;
    Ok(CreatedClaim {
        claim: c.claim,
        certificate_pem: c.certificate_pem,
        private_key_pem: c.private_key_pem,
        ca_chain_pem: c.ca_chain_pem,
    })
}

/// Template settings as the API's create and patch bodies: an absent field is
/// left alone, `null` removes the allow-list or the hook.
fn settings_json(s: &TemplateSettings) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    if let Some(d) = &s.description {
        m.insert("description".into(), json!(d));
    }
    if let Some(e) = s.enabled {
        m.insert("enabled".into(), json!(e));
    }
    if let Some(a) = &s.serial_allow {
        m.insert("serial_allow".into(), json!(a));
    }
    if let Some(d) = &s.serial_deny {
        m.insert("serial_deny".into(), json!(d));
    }
    if let Some(h) = &s.hook_url {
        m.insert("hook_url".into(), json!(h));
    }
    m
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    /// A body with its content type.
    Raw(Vec<u8>, &'static str),
}

/// A client of a running server's `/api/v1`, authenticated with an API key.
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `ca_pem`: the trust anchor the server's certificate chains to (as
    /// written by `onramp ca export`); without it, the public web roots.
    pub fn new(server: &str, key: &str, ca_pem: Option<&str>) -> Result<ApiClient> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("https://") && !base.starts_with("http://") {
            anyhow::bail!(
                "--server must be a URL such as https://onramp.example:8443, not `{server}`"
            );
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .context("the CA file is not a PEM certificate")?;
            if certs.is_empty() {
                anyhow::bail!("the CA file holds no PEM certificate");
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        Ok(ApiClient {
            base,
            key: key.to_string(),
            http: builder.build().context("building the HTTPS client")?,
        })
    }

    /// Sends a request; answers the status and body text, or a connection error.
    async fn raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Body,
    ) -> Result<(reqwest::StatusCode, String)> {
        self.raw_query(method, path_and_query, &[], body).await
    }

    async fn raw_query(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<(reqwest::StatusCode, String)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if !query.is_empty() {
            req = req.query(query);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(b, ct) => req.header(reqwest::header::CONTENT_TYPE, ct).body(b),
        };
        let resp = req.send().await.map_err(|e| self.connection_error(&e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.connection_error(&e))?;
        Ok((status, text))
    }

    fn connection_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !chain.iter().any(|c: &String| c.contains(&text)) {
                chain.push(text);
            }
            source = s.source();
        }
        let detail = chain.join(": ");
        let hint = if detail.contains("certificate") || detail.contains("UnknownIssuer") {
            " (is --ca-file the CA that the server's certificate chains to?)"
        } else {
            ""
        };
        AdminError::new(
            "connection",
            format!("cannot reach {}: {detail}{hint}", self.base),
        )
        .into()
    }

    /// The API's error JSON back into the same error local mode gives.
    fn api_error(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
        #[derive(Deserialize)]
        struct Wrapper {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            message: String,
        }
        match serde_json::from_str::<Wrapper>(text) {
            Ok(w) => AdminError::new(&w.error.code, w.error.message).into(),
            Err(_) => AdminError::new(
                "internal",
                format!("the server answered {status}: {}", text.trim()),
            )
            .into(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<String> {
        let (status, text) = self.raw_query(method, path, query, body).await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(Self::api_error(status, &text))
        }
    }

    fn parse<T: DeserializeOwned>(path: &str, text: &str) -> Result<T> {
        serde_json::from_str(text).with_context(|| format!("the server's answer to {path}"))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let text = self
            .call(reqwest::Method::GET, path, query, Body::None)
            .await?;
        Self::parse(path, &text)
    }

    async fn get_items<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<T>> {
        #[derive(Deserialize)]
        struct Listing<T> {
            items: Vec<T>,
        }
        let l: Listing<T> = self.get(path, query).await?;
        Ok(l.items)
    }

    async fn text(&self, path: &str) -> Result<String> {
        self.call(reqwest::Method::GET, path, &[], Body::None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body,
    ) -> Result<T> {
        let text = self.call(method, path, &[], body).await?;
        Self::parse(path, &text)
    }

    async fn send_empty(&self, method: reqwest::Method, path: &str, body: Body) -> Result<()> {
        self.call(method, path, &[], body).await.map(|_| ())
    }

    /// `POST /api/v1/artifacts`: the file streamed as the body, its length
    /// declared up front, the signature in `X-Onramp-Signature`.
    async fn upload(&self, file: tokio::fs::File, upload: &UploadArtifact) -> Result<Artifact> {
        let path = "/api/v1/artifacts";
        let len = file
            .metadata()
            .await
            .context("reading the artifact's size")?
            .len();
        let mut query = vec![("name", upload.name.clone())];
        if let Some(signer) = &upload.signer {
            query.push(("signer", signer.clone()));
        }
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            // An upload of gigabytes takes as long as it takes.
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .body(reqwest::Body::wrap(FileBody::new(file, len)));
        if let Some(signature) = &upload.signature {
            req = req.header("x-onramp-signature", signature);
        }
        let resp = req.send().await.map_err(|e| self.connection_error(&e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.connection_error(&e))?;
        if !status.is_success() {
            return Err(Self::api_error(status, &text));
        }
        Self::parse(path, &text)
    }
}

/// A file as a streamed request body, read 64 KiB at a time.
struct FileBody {
    file: tokio::fs::File,
    buf: Box<[u8]>,
    left: u64,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            left: len,
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = hyper::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        use std::task::Poll;
        use tokio::io::AsyncRead;
        let this = &mut *self;
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let chunk = read.filled();
                if chunk.is_empty() {
                    // The file shrank after its length was declared.
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the artifact file changed while being uploaded",
                    ))));
                }
                let n = u64::try_from(chunk.len())
                    .unwrap_or(u64::MAX)
                    .min(this.left);
                let n_usize = usize::try_from(n).unwrap_or(chunk.len());
                this.left -= n;
                let data = hyper::body::Bytes::copy_from_slice(&chunk[..n_usize]);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}
