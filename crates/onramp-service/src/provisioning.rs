//! Fleet provisioning by claim and just-in-time provisioning.
//!
//! Management: provisioning templates (named, versioned), claim
//! certificates, registered manufacturer CAs. Devices: the three MQTT
//! operations of fleet provisioning (CreateKeysAndCertificate,
//! CreateCertificateFromCsr, RegisterThing) and JITP on first connection.
//! Decisions come from `onramp_domain::{provisioning, template}`; the CA
//! signs; the store commits each registration as one transaction.

use crate::{Caller, DeviceIdentity, Onramp, Result, ServiceError, now};
use onramp_domain::policy::PolicyDocument;
use onramp_domain::provisioning::{
    HookDecision, HookRequest, PayloadFormat, ProvisioningRejection, ProvisioningTopic,
    check_serial, parse_create_from_csr_request, parse_create_keys_request, parse_hook_response,
    parse_register_thing_request, validate_template_name,
};
use onramp_domain::template::{
    PlannedCertStatus, PolicyPlan, ProvisioningPlan, ProvisioningTemplate, evaluate,
};
use onramp_domain::{
    AuditEntry, CaStatus, CertStatus, ClaimCertificate, Outcome, PendingCertificate, Permission,
    ProvisioningTemplateRecord, RegisteredCa, TemplateKind, TemplateVersion,
};
use onramp_pki::{fingerprint_sha256, parse_csr, random_secret, signed_by};
use onramp_store::{
    NewCertificate, OwnershipClaim, PolicyToAttach, RegistrationCommit, RegistrationOutcome,
    StoreError,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::time::Duration;

/// Tunables of provisioning.
#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    /// Lifetime of a certificate ownership token (AWS: one hour).
    pub ownership_token_ttl_secs: i64,
    /// Provisioning operations per claim certificate (a production batch shares one).
    pub rate_per_claim: crate::RateLimit,
    /// Provisioning operations per source address.
    pub rate_per_source: crate::RateLimit,
    /// The pre-provisioning hook must answer within this time, or the device is refused.
    pub hook_timeout: Duration,
    /// Claim certificates expiring within this many days are reported.
    pub claim_expiry_warning_days: i64,
    /// Refuse the first connection of a JITP device after registering it, as
    /// AWS IoT does; by default the first connection is accepted.
    pub jitp_drop_first_connection: bool,
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        ProvisioningSettings {
            ownership_token_ttl_secs: 3600,
            rate_per_claim: crate::RateLimit {
                per_second: 200,
                burst: 1000,
            },
            rate_per_source: crate::RateLimit {
                per_second: 50,
                burst: 200,
            },
            hook_timeout: Duration::from_secs(5),
            claim_expiry_warning_days: 30,
            jitp_drop_first_connection: false,
        }
    }
}

/// The connection a provisioning request arrived on.
#[derive(Debug, Clone)]
pub struct ClaimContext {
    pub serial: String,
    pub certificate_id: String,
    pub template: String,
}

/// Settings of a template that are not its body.
#[derive(Debug, Clone, Default)]
pub struct TemplateSettings {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// `Some(None)` removes the allow-list.
    pub serial_allow: Option<Option<Vec<String>>>,
    pub serial_deny: Option<Vec<String>>,
    /// `Some(None)` removes the hook.
    pub hook_url: Option<Option<String>>,
}

/// A template with its default body and every version.
#[derive(Debug, Clone)]
pub struct TemplateDetail {
    pub template: ProvisioningTemplateRecord,
    pub body: String,
    pub versions: Vec<TemplateVersion>,
}

/// A new claim certificate: the key is shown once and never stored.
#[derive(Debug, Clone)]
pub struct CreatedClaim {
    pub claim: ClaimCertificate,
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// The CA chain devices use to verify the server.
    pub ca_chain_pem: String,
}

/// The reply to one provisioning request, for the same connection only.
#[derive(Debug, Clone)]
pub struct ProvisioningReply {
    pub topic: String,
    pub payload: Vec<u8>,
    pub accepted: bool,
}

fn hook_url_ok(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048
}

fn template_arn(tenant: &str, name: &str) -> String {
    format!("arn:aws:iot:onramp:{tenant}:provisioningtemplate/{name}")
}

fn reject(topic: &ProvisioningTopic, r: &ProvisioningRejection) -> ProvisioningReply {
    ProvisioningReply {
        topic: topic.rejected(),
        payload: r.to_json(),
        accepted: false,
    }
}

impl Onramp {
    // ---- templates ----

    pub async fn create_template(
        &self,
        caller: &Caller,
        name: &str,
        kind: TemplateKind,
        body: &str,
        settings: TemplateSettings,
    ) -> Result<ProvisioningTemplateRecord> {
        caller.require(Permission::ManageProvisioning)?;
        validate_template_name(name).map_err(ServiceError::BadRequest)?;
        check_template_body(body)?;
        let now = now();
        let mut t = ProvisioningTemplateRecord {
            tenant: caller.tenant.clone(),
            name: name.to_string(),
            kind,
            description: String::new(),
            enabled: true,
            default_version: 1,
            latest_version: 1,
            serial_allow: None,
            serial_deny: Vec::new(),
            hook_url: None,
            created_at: now,
            updated_at: now,
        };
        apply_settings(&mut t, settings)?;
        let audit = caller.audit(
            "template.create",
            format!("template:{name}"),
            format!("kind {}", kind.as_str()),
            now,
        );
        self.inner.store.create_template(&t, body, &audit).await?;
        Ok(t)
    }

    pub async fn add_template_version(
        &self,
        caller: &Caller,
        name: &str,
        body: &str,
        set_default: bool,
    ) -> Result<ProvisioningTemplateRecord> {
        caller.require(Permission::ManageProvisioning)?;
        check_template_body(body)?;
        let now = now();
        let audit = caller.audit(
            "template.version",
            format!("template:{name}"),
            format!("set_default {set_default}"),
            now,
        );
        Ok(self
            .inner
            .store
            .add_template_version(&caller.tenant, name, body, set_default, &audit, now)
            .await?)
    }

    pub async fn set_template_default_version(
        &self,
        caller: &Caller,
        name: &str,
        version: i64,
    ) -> Result<ProvisioningTemplateRecord> {
        caller.require(Permission::ManageProvisioning)?;
        let now = now();
        let audit = caller.audit(
            "template.set_default_version",
            format!("template:{name}"),
            format!("version {version}"),
            now,
        );
        Ok(self
            .inner
            .store
            .set_template_default_version(&caller.tenant, name, version, &audit, now)
            .await?)
    }

    pub async fn update_template(
        &self,
        caller: &Caller,
        name: &str,
        settings: TemplateSettings,
    ) -> Result<ProvisioningTemplateRecord> {
        caller.require(Permission::ManageProvisioning)?;
        let mut t = self
            .inner
            .store
            .get_template(&caller.tenant, name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("template `{name}` not found")))?;
        apply_settings(&mut t, settings)?;
        t.updated_at = now();
        let audit = caller.audit(
            "template.update",
            format!("template:{name}"),
            format!(
                "enabled {} allow {} deny {} hook {}",
                t.enabled,
                t.serial_allow.as_ref().map_or(0, Vec::len),
                t.serial_deny.len(),
                t.hook_url.is_some()
            ),
            t.updated_at,
        );
        self.inner
            .store
            .update_template_settings(&t, &audit)
            .await?;
        Ok(t)
    }

    pub async fn get_template(&self, caller: &Caller, name: &str) -> Result<TemplateDetail> {
        caller.require(Permission::ReadRegistry)?;
        let store = &self.inner.store;
        let template = store
            .get_template(&caller.tenant, name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("template `{name}` not found")))?;
        let versions = store.list_template_versions(&caller.tenant, name).await?;
        let body = versions
            .iter()
            .find(|v| v.version == template.default_version)
            .map(|v| v.body.clone())
            .unwrap_or_default();
        Ok(TemplateDetail {
            template,
            body,
            versions,
        })
    }

    pub async fn list_templates(&self, caller: &Caller) -> Result<Vec<ProvisioningTemplateRecord>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self.inner.store.list_templates(&caller.tenant).await?)
    }

    // ---- claim certificates ----

    pub async fn create_claim(
        &self,
        caller: &Caller,
        template: &str,
        validity_days: u32,
    ) -> Result<CreatedClaim> {
        caller.require(Permission::ManageEnrolment)?;
        if !(1..=3650).contains(&validity_days) {
            return Err(ServiceError::BadRequest(
                "claim certificate validity is 1 to 3650 days".into(),
            ));
        }
        let t = self
            .inner
            .store
            .get_template(&caller.tenant, template)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("template `{template}` not found")))?;
        if t.kind != TemplateKind::Fleet {
            return Err(ServiceError::BadRequest(format!(
                "template `{template}` is a JITP template; claim certificates need a fleet template"
            )));
        }
        let now = now();
        let (issued, key_pem) = self.inner.ca().issue_with_generated_key(
            &format!("onramp-claim-{template}"),
            validity_days,
            now,
        )?;
        let claim = ClaimCertificate {
            serial: issued.serial.clone(),
            tenant: caller.tenant.clone(),
            template: template.to_string(),
            certificate_id: issued.fingerprint.clone(),
            pem: issued.pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            status: CertStatus::Active,
            created_at: now,
            revoked_at: None,
            created_by: caller.actor.clone(),
            replaced_by: None,
        };
        let audit = caller.audit(
            "claim.create",
            format!("claim:{}", claim.serial),
            format!("template {template}, {validity_days} days"),
            now,
        );
        self.inner
            .store
            .create_claim_certificate(&claim, &audit)
            .await?;
        Ok(CreatedClaim {
            claim,
            certificate_pem: issued.pem,
            private_key_pem: key_pem,
            ca_chain_pem: self.inner.ca().chain_pem(),
        })
    }

    pub async fn list_claims(&self, caller: &Caller) -> Result<Vec<ClaimCertificate>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_claim_certificates(&caller.tenant)
            .await?)
    }

    pub async fn revoke_claim(&self, caller: &Caller, serial: &str) -> Result<()> {
        caller.require(Permission::RevokeCertificates)?;
        let now = now();
        let audit = caller.audit(
            "claim.revoke",
            format!("claim:{serial}"),
            String::new(),
            now,
        );
        Ok(self
            .inner
            .store
            .revoke_claim_certificate(&caller.tenant, serial, None, &audit, now)
            .await?)
    }

    /// Issues a replacement bound to the same template, then revokes the old one.
    pub async fn rotate_claim(
        &self,
        caller: &Caller,
        serial: &str,
        validity_days: u32,
    ) -> Result<CreatedClaim> {
        caller.require(Permission::ManageEnrolment)?;
        caller.require(Permission::RevokeCertificates)?;
        let old = self
            .inner
            .store
            .get_claim_certificate(serial)
            .await?
            .filter(|c| c.tenant == caller.tenant && c.status == CertStatus::Active)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("active claim certificate `{serial}` not found"))
            })?;
        let created = self
            .create_claim(caller, &old.template, validity_days)
            .await?;
        let now = now();
        let audit = caller.audit(
            "claim.rotate",
            format!("claim:{serial}"),
            format!("replaced by {}", created.claim.serial),
            now,
        );
        self.inner
            .store
            .revoke_claim_certificate(
                &caller.tenant,
                serial,
                Some(&created.claim.serial),
                &audit,
                now,
            )
            .await?;
        Ok(created)
    }

    /// Reports active claim certificates that expire within the warning
    /// window: an audit event, a gauge and a log line each. Returns them.
    /// This is the server's daily check, audited as `system`.
    pub async fn check_claim_expiry(&self) -> Result<Vec<ClaimCertificate>> {
        self.report_expiring_claims("system", "maintenance").await
    }

    /// The same check run on request (`onramp claim check-expiry`): its audit
    /// events name the caller, not `system`.
    pub async fn check_claim_expiry_as(&self, caller: &Caller) -> Result<Vec<ClaimCertificate>> {
        caller.require(Permission::ManageProvisioning)?;
        self.report_expiring_claims(&caller.actor, &caller.source)
            .await
    }

    async fn report_expiring_claims(
        &self,
        actor: &str,
        source: &str,
    ) -> Result<Vec<ClaimCertificate>> {
        let now = now();
        let window = self.inner.settings.provisioning.claim_expiry_warning_days * 86_400;
        let expiring = self
            .inner
            .store
            .claim_certificates_expiring(now + window)
            .await?;
        metrics::gauge!("onramp_claim_certificates_expiring").set(expiring.len() as f64);
        for c in &expiring {
            let days = (c.not_after - now).max(0) / 86_400;
            tracing::warn!(
                tenant = %c.tenant, claim = %c.serial, template = %c.template, days_left = days,
                "claim_certificate_expiring: rotate it before factory enrolments fail"
            );
            let entry = AuditEntry {
                id: 0,
                tenant: c.tenant.clone(),
                actor: actor.into(),
                action: "claim_certificate_expiring".into(),
                target: format!("claim:{}", c.serial),
                source: source.into(),
                outcome: Outcome::Success,
                detail: format!(
                    "template {}, expires at {} ({days} days)",
                    c.template, c.not_after
                ),
                at: now,
            };
            self.inner.store.append_audit(&entry).await?;
            self.emit_claim_expiring(c).await?;
        }
        Ok(expiring)
    }

    /// Revokes and purges pending certificates whose ownership token expired unused.
    pub async fn purge_expired_pending_certificates(&self) -> Result<usize> {
        let purged = self.inner.store.purge_expired_pending(now()).await?;
        if !purged.is_empty() {
            metrics::counter!("onramp_provisioning_pending_expired_total")
                .increment(purged.len() as u64);
            tracing::info!(
                count = purged.len(),
                "pending certificates expired unused and were purged"
            );
        }
        Ok(purged.len())
    }

    // ---- registered CAs ----

    /// The code a verification certificate's CN must carry to prove
    /// possession of a CA key for this tenant.
    pub fn registration_code(&self, caller: &Caller) -> Result<String> {
        caller.require(Permission::ManageProvisioning)?;
        let digest = self
            .inner
            .hasher
            .hash(&format!("ca-registration:{}", caller.tenant));
        Ok(digest.chars().take(32).collect())
    }

    pub async fn register_ca(
        &self,
        caller: &Caller,
        ca_pem: &str,
        template: Option<&str>,
        auto_registration: bool,
        verification_pem: Option<&str>,
    ) -> Result<RegisteredCa> {
        caller.require(Permission::ManageProvisioning)?;
        let info = onramp_pki::parse_ca_certificate(ca_pem)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        if let Some(v) = verification_pem {
            let code = self.registration_code(caller)?;
            onramp_pki::verification_certificate_ok(v, &info.der, &code)
                .map_err(|e| ServiceError::BadRequest(format!("verification certificate: {e}")))?;
        }
        if let Some(name) = template {
            let t = self
                .inner
                .store
                .get_template(&caller.tenant, name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("template `{name}` not found")))?;
            if t.kind != TemplateKind::Jitp {
                return Err(ServiceError::BadRequest(format!(
                    "template `{name}` is a fleet template; a CA needs a JITP template (--kind jitp)"
                )));
            }
        }
        if auto_registration && template.is_none() {
            return Err(ServiceError::BadRequest(
                "auto-registration needs a template".into(),
            ));
        }
        let now = now();
        if info.not_after <= now {
            return Err(ServiceError::BadRequest(
                "the CA certificate has expired".into(),
            ));
        }
        let ca = RegisteredCa {
            id: info.id.clone(),
            tenant: caller.tenant.clone(),
            pem: info.pem.clone(),
            subject: info.subject_dn.clone(),
            not_after: info.not_after,
            status: CaStatus::Active,
            auto_registration,
            template: template.map(str::to_string),
            created_at: now,
            updated_at: now,
        };
        let audit = caller.audit(
            "ca.register",
            format!("ca:{}", ca.id),
            format!(
                "subject {}; template {}; auto-registration {}; proof of possession {}",
                ca.subject,
                template.unwrap_or("-"),
                auto_registration,
                verification_pem.is_some()
            ),
            now,
        );
        self.inner.store.register_ca(&ca, &audit).await?;
        Ok(ca)
    }

    pub async fn list_registered_cas(&self, caller: &Caller) -> Result<Vec<RegisteredCa>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_registered_cas(Some(&caller.tenant))
            .await?)
    }

    /// Changes a registered CA's status or auto-registration. A revoked CA
    /// stays revoked.
    pub async fn update_registered_ca(
        &self,
        caller: &Caller,
        id: &str,
        status: Option<CaStatus>,
        auto_registration: Option<bool>,
    ) -> Result<RegisteredCa> {
        caller.require(Permission::ManageProvisioning)?;
        let mut ca = self
            .inner
            .store
            .get_registered_ca(id)
            .await?
            .filter(|c| c.tenant == caller.tenant)
            .ok_or_else(|| ServiceError::NotFound(format!("registered CA `{id}` not found")))?;
        if ca.status == CaStatus::Revoked && status != Some(CaStatus::Revoked) {
            return Err(ServiceError::Conflict(
                "a revoked CA cannot be changed".into(),
            ));
        }
        if let Some(s) = status {
            ca.status = s;
        }
        if let Some(a) = auto_registration {
            if a && ca.template.is_none() {
                return Err(ServiceError::BadRequest(
                    "auto-registration needs a template".into(),
                ));
            }
            ca.auto_registration = a;
        }
        ca.updated_at = now();
        let audit = caller.audit(
            "ca.update",
            format!("ca:{id}"),
            format!(
                "status {}; auto-registration {}",
                ca.status.as_str(),
                ca.auto_registration
            ),
            ca.updated_at,
        );
        self.inner.store.update_registered_ca(&ca, &audit).await?;
        Ok(ca)
    }

    /// DER of every active registered CA, for the TLS layer's trust anchors.
    pub async fn active_registered_ca_ders(&self) -> Result<Vec<Vec<u8>>> {
        let cas = self.inner.store.list_registered_cas(None).await?;
        let mut ders = Vec::new();
        for ca in cas.iter().filter(|c| c.status == CaStatus::Active) {
            match onramp_pki::parse_ca_certificate(&ca.pem) {
                Ok(info) => ders.push(info.der),
                Err(e) => {
                    tracing::error!(ca = %ca.id, error = %e, "registered CA no longer parses")
                }
            }
        }
        Ok(ders)
    }

    // ---- device side: fleet provisioning over MQTT ----

    /// Answers one provisioning request from a claim-certificate connection.
    pub async fn provisioning_request(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        client_id: &str,
        source: &str,
        topic: &ProvisioningTopic,
        payload: &[u8],
    ) -> ProvisioningReply {
        let operation = topic.operation();
        let result = if topic.format() == PayloadFormat::Cbor {
            Err(ProvisioningRejection::invalid_payload(
                "CBOR payloads are not supported; use the json topics",
            ))
        } else {
            match self
                .provisioning_rate(claim, tenant, source, operation)
                .await
            {
                Err(r) => Err(r),
                Ok(()) => match topic {
                    ProvisioningTopic::CreateKeysAndCertificate(_) => {
                        self.create_keys_and_certificate(claim, tenant, payload)
                            .await
                    }
                    ProvisioningTopic::CreateCertificateFromCsr(_) => {
                        self.create_certificate_from_csr(claim, tenant, payload)
                            .await
                    }
                    ProvisioningTopic::RegisterThing { template, .. } => {
                        self.register_thing(claim, tenant, client_id, source, template, payload)
                            .await
                    }
                },
            }
        };
        match result {
            Ok(body) => {
                metrics::counter!("onramp_provisioning_requests_total", "operation" => operation, "outcome" => "accepted").increment(1);
                ProvisioningReply {
                    topic: topic.accepted(),
                    payload: body,
                    accepted: true,
                }
            }
            Err(r) => {
                metrics::counter!("onramp_provisioning_requests_total", "operation" => operation, "outcome" => "rejected").increment(1);
                tracing::info!(claim = %claim.serial, %source, operation, code = %r.error_code, reason = %r.error_message, "provisioning request rejected");
                reject(topic, &r)
            }
        }
    }

    async fn provisioning_rate(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        source: &str,
        operation: &str,
    ) -> std::result::Result<(), ProvisioningRejection> {
        let inner = &self.inner;
        let which = if inner.claim_limiter.check(&claim.serial).is_err() {
            "claim certificate"
        } else if inner.provisioning_source_limiter.check(source).is_err() {
            "source address"
        } else {
            return Ok(());
        };
        metrics::counter!("onramp_provisioning_throttled_total", "limit" => if which == "source address" { "source" } else { "claim" }).increment(1);
        let entry = AuditEntry {
            id: 0,
            tenant: tenant.to_string(),
            actor: format!("claim:{}", claim.serial),
            action: format!("provisioning.{operation}"),
            target: format!("claim:{}", claim.serial),
            source: source.to_string(),
            outcome: Outcome::Denied,
            detail: format!("rate limit per {which} exceeded"),
            at: now(),
        };
        // At most one audit entry per key every ten seconds: a flood of
        // refused requests must not become a flood of writes.
        let key = format!(
            "{which}:{}",
            if which == "source address" {
                source
            } else {
                &claim.serial
            }
        );
        if inner.throttle_audit_limiter.check(&key).is_ok()
            && let Err(e) = inner.store.append_audit(&entry).await
        {
            tracing::warn!(error = %e, "could not audit a throttled provisioning request");
        }
        Err(ProvisioningRejection::throttled(format!(
            "too many provisioning requests for this {which}; retry later"
        )))
    }

    async fn issue_pending(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        issued: onramp_pki::IssuedCert,
    ) -> std::result::Result<(onramp_pki::IssuedCert, String), ProvisioningRejection> {
        let token =
            random_secret("").map_err(|e| ProvisioningRejection::internal(e.to_string()))?;
        let now = now();
        let pending = PendingCertificate {
            serial: issued.serial.clone(),
            tenant: tenant.to_string(),
            certificate_id: issued.fingerprint.clone(),
            pem: issued.pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            claim_serial: claim.serial.clone(),
            token_expires_at: now + self.inner.settings.provisioning.ownership_token_ttl_secs,
            created_at: now,
            registered_at: None,
            request_digest: None,
            response: None,
        };
        self.inner
            .store
            .create_pending_certificate(&pending, &self.inner.hasher.hash(&token))
            .await
            .map_err(|e| ProvisioningRejection::internal(e.to_string()))?;
        Ok((issued, token))
    }

    async fn create_keys_and_certificate(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        payload: &[u8],
    ) -> std::result::Result<Vec<u8>, ProvisioningRejection> {
        parse_create_keys_request(payload)?;
        let (issued, key_pem) = self
            .inner
            .ca()
            .issue_with_generated_key(
                "Onramp provisioned device",
                self.inner.settings.device_cert_validity_days,
                now(),
            )
            .map_err(|e| ProvisioningRejection::internal(e.to_string()))?;
        let (issued, token) = self.issue_pending(claim, tenant, issued).await?;
        Ok(serde_json::json!({
            "certificateId": issued.fingerprint,
            "certificatePem": issued.pem,
            "privateKey": key_pem,
            "certificateOwnershipToken": token,
        })
        .to_string()
        .into_bytes())
    }

    async fn create_certificate_from_csr(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        payload: &[u8],
    ) -> std::result::Result<Vec<u8>, ProvisioningRejection> {
        let pem = parse_create_from_csr_request(payload)?;
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            ProvisioningRejection::invalid_payload(
                "certificateSigningRequest is not a PEM certificate request",
            )
        })?;
        let csr = parse_csr(der.as_ref())
            .map_err(|e| ProvisioningRejection::invalid_payload(e.to_string()))?;
        let issued = self
            .inner
            .ca()
            .issue_for_csr(
                &csr,
                "Onramp provisioned device",
                self.inner.settings.device_cert_validity_days,
                now(),
            )
            .map_err(|e| ProvisioningRejection::internal(e.to_string()))?;
        let (issued, token) = self.issue_pending(claim, tenant, issued).await?;
        Ok(serde_json::json!({
            "certificateOwnershipToken": token,
            "certificateId": issued.fingerprint,
            "certificatePem": issued.pem,
        })
        .to_string()
        .into_bytes())
    }

    /// The template record and its parsed default body, or why not.
    async fn usable_template(
        &self,
        tenant: &str,
        name: &str,
    ) -> std::result::Result<
        (
            ProvisioningTemplateRecord,
            std::sync::Arc<ProvisioningTemplate>,
        ),
        ProvisioningRejection,
    > {
        let store = &self.inner.store;
        let internal = |e: StoreError| ProvisioningRejection::internal(e.to_string());
        let t = store
            .get_template(tenant, name)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ProvisioningRejection::not_found(format!("template `{name}` does not exist"))
            })?;
        if !t.enabled {
            return Err(ProvisioningRejection::access_denied(format!(
                "template `{name}` is disabled"
            )));
        }
        // Template versions never change, so a parsed body is kept by version.
        let key = (tenant.to_string(), name.to_string(), t.default_version);
        let cached = self
            .inner
            .parsed_templates
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned());
        let parsed = match cached {
            Some(p) => p,
            None => {
                let version = store
                    .get_template_version(tenant, name, t.default_version)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| ProvisioningRejection::internal("template version missing"))?;
                let parsed = std::sync::Arc::new(
                    ProvisioningTemplate::parse(&version.body).map_err(|e| {
                        ProvisioningRejection::internal(format!(
                            "stored template no longer parses: {e}"
                        ))
                    })?,
                );
                if let Ok(mut c) = self.inner.parsed_templates.lock() {
                    if c.len() > 1024 {
                        c.clear();
                    }
                    c.insert(key, parsed.clone());
                }
                parsed
            }
        };
        Ok((t, parsed))
    }

    async fn register_thing(
        &self,
        claim: &ClaimContext,
        tenant: &str,
        client_id: &str,
        source: &str,
        template_name: &str,
        payload: &[u8],
    ) -> std::result::Result<Vec<u8>, ProvisioningRejection> {
        let request = parse_register_thing_request(payload)?;
        if template_name != claim.template {
            return Err(ProvisioningRejection::access_denied(format!(
                "this claim certificate provisions through template `{}` only",
                claim.template
            )));
        }
        let store = &self.inner.store;
        let token_hash = self.inner.hasher.hash(&request.ownership_token);
        let pending = store
            .get_pending_by_token(&token_hash)
            .await
            .map_err(|e| ProvisioningRejection::internal(e.to_string()))?
            .ok_or_else(|| {
                ProvisioningRejection::invalid_token("the certificate ownership token is not valid")
            })?;
        let now = now();
        if pending.tenant != tenant || pending.claim_serial != claim.serial {
            return Err(ProvisioningRejection::invalid_token(
                "the certificate ownership token was issued to another claim certificate",
            ));
        }
        if pending.token_expires_at <= now {
            return Err(ProvisioningRejection::invalid_token(
                "the certificate ownership token has expired",
            ));
        }
        let digest = self.inner.hasher.hash(&format!(
            "{template_name}\n{}",
            serde_json::to_string(&request.parameters).unwrap_or_default()
        ));
        if pending.registered_at.is_some() {
            // A retry after a lost reply gets the same answer; anything else is a reuse.
            return match (&pending.request_digest, &pending.response) {
                (Some(d), Some(r)) if *d == digest => {
                    metrics::counter!("onramp_provisioning_replays_total").increment(1);
                    Ok(r.clone().into_bytes())
                }
                _ => Err(ProvisioningRejection::invalid_token(
                    "the certificate ownership token has already been used",
                )),
            };
        }
        let (record, template) = self.usable_template(tenant, template_name).await?;
        let mut parameters = request.parameters.clone();
        if let Some(url) = &record.hook_url {
            let decision = self
                .pre_provisioning_hook(url, tenant, claim, &pending, client_id, &parameters)
                .await;
            match decision {
                Ok(d) if d.allow => parameters.extend(d.parameter_overrides),
                Ok(_) => {
                    self.audit_refusal(tenant, claim, source, "the pre-provisioning hook refused")
                        .await;
                    return Err(ProvisioningRejection::access_denied(
                        "the pre-provisioning hook refused provisioning",
                    ));
                }
                Err(why) => {
                    self.audit_refusal(tenant, claim, source, &why).await;
                    return Err(ProvisioningRejection::access_denied(format!(
                        "the pre-provisioning hook failed: {why}"
                    )));
                }
            }
        }
        let serial = parameters.get("SerialNumber").cloned();
        let checked_serial = serial.clone().unwrap_or_default();
        if record.serial_allow.is_some() || !record.serial_deny.is_empty() {
            if serial.is_none() {
                return Err(ProvisioningRejection::access_denied(
                    "this template checks serial numbers: the SerialNumber parameter is required",
                ));
            }
            if let Err(e) = check_serial(
                record.serial_allow.as_deref(),
                &record.serial_deny,
                &checked_serial,
            ) {
                self.audit_refusal(tenant, claim, source, &e.to_string())
                    .await;
                return Err(ProvisioningRejection::access_denied(e.to_string()));
            }
        }
        parameters.insert(
            "AWS::IoT::Certificate::Id".into(),
            pending.certificate_id.clone(),
        );
        let plan = evaluate(&template, &parameters)
            .map_err(|e| ProvisioningRejection::invalid_payload(format!("template: {e}")))?;
        let commit_plan = self.plan_commit(tenant, &record.name, &plan, &pending.certificate_id)?;
        let thing_name = commit_plan.thing.thing_name.clone();
        let response = serde_json::json!({
            "deviceConfiguration": plan.device_configuration,
            "thingName": thing_name,
        })
        .to_string();
        let commit = RegistrationCommit {
            tenant: tenant.to_string(),
            serial_number: serial.unwrap_or_else(|| thing_name.clone()),
            thing: commit_plan.thing,
            certificate: NewCertificate {
                serial: pending.serial.clone(),
                fingerprint: pending.certificate_id.clone(),
                pem: pending.pem.clone(),
                not_before: pending.not_before,
                not_after: pending.not_after,
            },
            certificate_status: commit_plan.status,
            issuer_ca: None,
            ownership: Some(OwnershipClaim {
                token_hash,
                request_digest: digest,
                response: response.clone(),
            }),
            policies: commit_plan.policies,
            audit: AuditEntry {
                id: 0,
                tenant: tenant.to_string(),
                actor: format!("claim:{}", claim.serial),
                action: "provisioning.register_thing".into(),
                target: format!("device:{thing_name}"),
                source: source.to_string(),
                outcome: Outcome::Success,
                detail: format!(
                    "template {} v{}; certificate {}",
                    record.name, record.default_version, pending.serial
                ),
                at: now,
            },
            now,
        };
        match store.commit_registration(&commit).await {
            Ok(RegistrationOutcome::Replayed(r)) => Ok(r.into_bytes()),
            Ok(_) => Ok(response.into_bytes()),
            Err(e) => Err(store_rejection(e)),
        }
    }

    async fn audit_refusal(&self, tenant: &str, claim: &ClaimContext, source: &str, why: &str) {
        let entry = AuditEntry {
            id: 0,
            tenant: tenant.to_string(),
            actor: format!("claim:{}", claim.serial),
            action: "provisioning.register_thing".into(),
            target: format!("template:{}", claim.template),
            source: source.to_string(),
            outcome: Outcome::Denied,
            detail: why.to_string(),
            at: now(),
        };
        if let Err(e) = self.inner.store.append_audit(&entry).await {
            tracing::warn!(error = %e, "could not audit a provisioning refusal");
        }
    }

    /// Calls the pre-provisioning hook; any failure or a late answer refuses.
    async fn pre_provisioning_hook(
        &self,
        url: &str,
        tenant: &str,
        claim: &ClaimContext,
        pending: &PendingCertificate,
        client_id: &str,
        parameters: &BTreeMap<String, String>,
    ) -> std::result::Result<HookDecision, String> {
        let request = HookRequest {
            claim_certificate_id: claim.certificate_id.clone(),
            certificate_id: pending.certificate_id.clone(),
            certificate_pem: pending.pem.clone(),
            template_arn: template_arn(tenant, &claim.template),
            client_id: client_id.to_string(),
            parameters: parameters.clone(),
        };
        let timeout = self.inner.settings.provisioning.hook_timeout;
        let call = async {
            let response = self
                .inner
                .http
                .post(url)
                .json(&request)
                .send()
                .await
                .map_err(|e| format!("request failed: {}", e.without_url()))?;
            if !response.status().is_success() {
                return Err(format!("it answered HTTP {}", response.status().as_u16()));
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("reading the answer: {}", e.without_url()))?;
            parse_hook_response(&body)
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
        };
        metrics::histogram!("onramp_provisioning_hook_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Turns an evaluated template into what the store commits.
    fn plan_commit(
        &self,
        tenant: &str,
        template: &str,
        plan: &ProvisioningPlan,
        certificate_id: &str,
    ) -> std::result::Result<CommitPlan, ProvisioningRejection> {
        let _ = tenant;
        let thing = plan.thing.clone().ok_or_else(|| {
            ProvisioningRejection::invalid_payload("the template has no AWS::IoT::Thing resource")
        })?;
        onramp_domain::validate_thing_name(&thing.thing_name).map_err(|e| {
            ProvisioningRejection::invalid_payload(format!("template: thing name: {e}"))
        })?;
        let status = match &plan.certificate {
            Some(c) if c.certificate_id != certificate_id => {
                return Err(ProvisioningRejection::invalid_payload(
                    "template: CertificateId must be the certificate being registered \
                     ({\"Ref\": \"AWS::IoT::Certificate::Id\"})",
                ));
            }
            Some(c) if c.status == PlannedCertStatus::Inactive => CertStatus::Inactive,
            _ => CertStatus::Active,
        };
        let mut policies = Vec::new();
        for p in &plan.policies {
            match p {
                PolicyPlan::Named(name) => policies.push(PolicyToAttach {
                    name: name.clone(),
                    document: None,
                }),
                PolicyPlan::Document { name, document } => {
                    PolicyDocument::parse(document).map_err(|e| {
                        ProvisioningRejection::invalid_payload(format!(
                            "template: policy document: {e}"
                        ))
                    })?;
                    let name = name.clone().unwrap_or_else(|| {
                        let hash = fingerprint_sha256(document.as_bytes());
                        format!("{template}-{}", &hash[..16])
                    });
                    policies.push(PolicyToAttach {
                        name,
                        document: Some(document.clone()),
                    });
                }
            }
        }
        Ok(CommitPlan {
            thing,
            status,
            policies,
        })
    }

    // ---- device side: just-in-time provisioning ----

    /// Identifies a connection whose certificate is not a registered device
    /// certificate: a claim certificate, or a certificate of a registered CA
    /// (provisioned now when its CA allows auto-registration). `Ok(None)`:
    /// neither.
    pub(crate) async fn authenticate_unregistered(
        &self,
        chain: &[Vec<u8>],
        leaf: &[u8],
        info: &onramp_pki::CertInfo,
    ) -> Result<Option<UnregisteredOutcome>> {
        let store = &self.inner.store;
        if let Some(claim) = store
            .get_claim_certificate(&info.serial)
            .await?
            .filter(|c| c.certificate_id == info.fingerprint)
        {
            if claim.status != CertStatus::Active {
                return Err(ServiceError::Forbidden(
                    "the claim certificate is revoked".into(),
                ));
            }
            if claim.not_after <= now() {
                return Err(ServiceError::Forbidden(
                    "the claim certificate has expired".into(),
                ));
            }
            return Ok(Some(UnregisteredOutcome::Claim(Box::new(claim))));
        }
        let mut cas = store.list_registered_cas(None).await?;
        // Two registrations may share a key (a re-issued CA certificate):
        // an active one decides before an inactive or revoked one.
        cas.sort_by_key(|c| c.status != CaStatus::Active);
        let issuer = cas.into_iter().find(|ca| {
            onramp_pki::parse_ca_certificate(&ca.pem)
                .map(|i| signed_by(leaf, &i.der))
                .unwrap_or(false)
        });
        let Some(ca) = issuer else {
            let _ = chain;
            return Ok(None);
        };
        if ca.status != CaStatus::Active {
            return Err(ServiceError::Forbidden(format!(
                "the issuing CA is {}",
                ca.status.as_str()
            )));
        }
        let template_name = match (&ca.template, ca.auto_registration) {
            (Some(t), true) => t.clone(),
            _ => {
                return Err(ServiceError::Forbidden(
                    "the certificate is not registered and its CA does not auto-register".into(),
                ));
            }
        };
        self.just_in_time_provision(&ca, &template_name, leaf, info)
            .await?;
        Ok(Some(UnregisteredOutcome::JustProvisioned))
    }

    async fn just_in_time_provision(
        &self,
        ca: &RegisteredCa,
        template_name: &str,
        leaf: &[u8],
        info: &onramp_pki::CertInfo,
    ) -> Result<()> {
        let (record, template) = self
            .usable_template(&ca.tenant, template_name)
            .await
            .map_err(|r| ServiceError::Forbidden(format!("JITP: {}", r.error_message)))?;
        let parameters = onramp_pki::subject_parameters(leaf)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let plan = evaluate(&template, &parameters).map_err(|e| {
            tracing::warn!(ca = %ca.id, error = %e, "JITP template failed for a device certificate");
            ServiceError::Forbidden(format!("JITP template: {e}"))
        })?;
        let commit_plan = self
            .plan_commit(&ca.tenant, &record.name, &plan, &info.fingerprint)
            .map_err(|r| ServiceError::Forbidden(format!("JITP: {}", r.error_message)))?;
        let thing_name = commit_plan.thing.thing_name.clone();
        let serial = parameters
            .get("AWS::IoT::Certificate::SerialNumber")
            .cloned()
            .unwrap_or_else(|| thing_name.clone());
        let now = now();
        let pem = onramp_pki::certificate_pem(leaf);
        let commit = RegistrationCommit {
            tenant: ca.tenant.clone(),
            serial_number: serial,
            thing: commit_plan.thing,
            // Foreign serials may collide across CAs; the fingerprint cannot.
            certificate: NewCertificate {
                serial: info.fingerprint.clone(),
                fingerprint: info.fingerprint.clone(),
                pem,
                not_before: info.not_before,
                not_after: info.not_after,
            },
            certificate_status: commit_plan.status,
            issuer_ca: Some(ca.id.clone()),
            ownership: None,
            policies: commit_plan.policies,
            audit: AuditEntry {
                id: 0,
                tenant: ca.tenant.clone(),
                actor: format!("ca:{}", ca.id),
                action: "provisioning.jitp".into(),
                target: format!("device:{thing_name}"),
                source: "mqtt".into(),
                outcome: Outcome::Success,
                detail: format!("template {} v{}", record.name, record.default_version),
                at: now,
            },
            now,
        };
        match self.inner.store.commit_registration(&commit).await {
            Ok(_) => {}
            // Two first connections at once: the other one registered it.
            Err(StoreError::Conflict(msg)) if msg == "certificate already registered" => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("onramp_provisioning_jitp_total").increment(1);
        tracing::info!(ca = %ca.id, thing = %thing_name, "device provisioned just in time");
        if let Some(sink) = self.inner.sink.get() {
            let event = serde_json::json!({
                "certificateId": info.fingerprint,
                "caCertificateId": ca.id,
                "timestamp": now,
                "certificateStatus": if commit.certificate_status == CertStatus::Active { "ACTIVE" } else { "INACTIVE" },
                "awsAccountId": ca.tenant,
                "certificateRegistrationTimestamp": now.to_string(),
            });
            sink.publish(
                &ca.tenant,
                &format!("$aws/events/certificates/registered/{}", ca.id),
                event.to_string().into_bytes(),
            );
        }
        if self.inner.settings.provisioning.jitp_drop_first_connection {
            return Err(ServiceError::Unauthorized(
                "the certificate was registered just now; connect again".into(),
            ));
        }
        Ok(())
    }

    /// The identity of a claim-certificate connection.
    pub(crate) fn claim_identity(
        &self,
        claim: ClaimCertificate,
        subject_cn: Option<String>,
    ) -> DeviceIdentity {
        let policy = onramp_domain::provisioning::claim_policy(&claim.template);
        DeviceIdentity {
            tenant: claim.tenant.clone(),
            thing_name: format!(
                "{}{}",
                onramp_domain::provisioning::CLAIM_IDENTITY_PREFIX,
                claim.serial
            ),
            device_class: None,
            certificate_serial: claim.serial.clone(),
            certificate_id: claim.certificate_id.clone(),
            subject_cn,
            attributes: BTreeMap::new(),
            policies: std::sync::Arc::new(vec![policy]),
            claim: Some(ClaimContext {
                serial: claim.serial,
                certificate_id: claim.certificate_id,
                template: claim.template,
            }),
        }
    }
}

pub(crate) enum UnregisteredOutcome {
    Claim(Box<ClaimCertificate>),
    /// Registered just now by JITP: authenticate again.
    JustProvisioned,
}

struct CommitPlan {
    thing: onramp_domain::template::ThingPlan,
    status: CertStatus,
    policies: Vec<PolicyToAttach>,
}

fn store_rejection(e: StoreError) -> ProvisioningRejection {
    match e {
        StoreError::TokenNotUsable => ProvisioningRejection::invalid_token(
            "the certificate ownership token is expired or already used",
        ),
        StoreError::Conflict(msg) => ProvisioningRejection::conflict(msg),
        StoreError::NotFound(what) => ProvisioningRejection::not_found(format!("{what} not found")),
        StoreError::Transition(t) => ProvisioningRejection::access_denied(t.to_string()),
        other => ProvisioningRejection::internal(other.to_string()),
    }
}

fn check_template_body(body: &str) -> Result<()> {
    ProvisioningTemplate::parse(body)
        .map(|_| ())
        .map_err(|e| ServiceError::BadRequest(format!("template: {e}")))
}

fn apply_settings(t: &mut ProvisioningTemplateRecord, s: TemplateSettings) -> Result<()> {
    if let Some(d) = s.description {
        if d.len() > 500 {
            return Err(ServiceError::BadRequest(
                "a description is at most 500 characters".into(),
            ));
        }
        t.description = d;
    }
    if let Some(e) = s.enabled {
        t.enabled = e;
    }
    if let Some(a) = s.serial_allow {
        t.serial_allow = a;
    }
    if let Some(d) = s.serial_deny {
        t.serial_deny = d;
    }
    if let Some(h) = s.hook_url {
        if let Some(url) = &h
            && !hook_url_ok(url)
        {
            return Err(ServiceError::BadRequest(
                "the hook URL must be http:// or https://".into(),
            ));
        }
        t.hook_url = h;
    }
    for serial in t.serial_allow.iter().flatten().chain(&t.serial_deny) {
        onramp_domain::validate_serial_number(serial)
            .map_err(|e| ServiceError::BadRequest(format!("serial `{serial}`: {e}")))?;
    }
    Ok(())
}
