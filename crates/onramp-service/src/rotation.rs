//! Certificate rotation that keeps the thing's identity.
//!
//! A device connected with its own certificate calls
//! `$aws/certificates/create-from-csr/json` or `$aws/certificates/create/json`:
//! the CA issues a certificate for the same thing, recorded as pending
//! rotation. The device's first connection with it activates it (the old one
//! is superseded then, and revoked when the grace period ends); one never
//! used expires. A device whose certificate expired recently may do the same
//! when renewal after expiry is on. Bulk rotation creates a job whose
//! document tells devices to rotate. Rules: `onramp_domain::rotation`.

use crate::{Caller, CreateJob, JobDescription, JobTargets, Onramp, Result, ServiceError, now};
use onramp_domain::provisioning::{
    PayloadFormat, ProvisioningRejection, ProvisioningTopic, parse_create_from_csr_request,
    parse_create_keys_request,
};
use onramp_domain::rotation::{
    Presented, RenewalKind, RotationSelector, check_expiry, check_rotation, old_revoked_at,
    pending_expires_at, requested_thing, rotation_job_document, superseded_in_grace,
};
use onramp_domain::{AuditEntry, CertStatus, Certificate, Outcome, Permission};
use onramp_pki::{parse_csr, random_secret};
use onramp_store::{RotationQuery, RotationRecord, StoreError};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;

/// An operator's bulk rotation.
#[derive(Debug, Clone)]
pub struct RotateRequest {
    pub selector: RotationSelector,
    /// Defaults to `rotate-<time>`.
    pub job_id: Option<String>,
    /// Paces the rollout (the job's `maximumPerMinute`).
    pub maximum_per_minute: Option<u32>,
}

impl Onramp {
    /// Answers create or create-from-csr from a device connected with its
    /// own certificate: a new certificate for the same thing, pending until
    /// the device connects with it. Refusals are AWS-shaped and audited.
    pub(crate) async fn rotation_request(
        &self,
        tenant: &str,
        certificate_id: Option<&str>,
        source: &str,
        topic: &ProvisioningTopic,
        payload: &[u8],
    ) -> crate::ProvisioningReply {
        let operation = topic.operation();
        let result = self
            .rotate_inner(tenant, certificate_id, source, topic, payload)
            .await;
        match result {
            Ok(body) => {
                metrics::counter!("onramp_certificate_rotations_total", "outcome" => "issued")
                    .increment(1);
                crate::ProvisioningReply {
                    topic: topic.accepted(),
                    payload: body,
                    accepted: true,
                }
            }
            Err((r, thing)) => {
                metrics::counter!("onramp_certificate_rotations_total", "outcome" => "refused")
                    .increment(1);
                tracing::info!(%source, operation, code = %r.error_code, reason = %r.error_message, "certificate rotation refused");
                let target = thing
                    .map(|t| format!("device:{t}"))
                    .unwrap_or_else(|| format!("certificate:{}", certificate_id.unwrap_or("-")));
                let key = format!("rotate:{target}:{source}");
                if self.inner.throttle_audit_limiter.check(&key).is_ok()
                    && let Err(e) = self
                        .inner
                        .store
                        .append_audit(&AuditEntry {
                            id: 0,
                            tenant: tenant.to_string(),
                            actor: target.clone(),
                            action: "certificate.rotation_requested".into(),
                            target,
                            source: source.to_string(),
                            outcome: Outcome::Denied,
                            detail: r.error_message.clone(),
                            at: now(),
                        })
                        .await
                {
                    tracing::warn!(error = %e, "could not audit a refused rotation");
                }
                crate::ProvisioningReply {
                    topic: topic.rejected(),
                    payload: r.to_json(),
                    accepted: false,
                }
            }
        }
    }

    /// Audits a claim connection that named a thing to rotate.
    pub(crate) async fn refuse_claim_rotation(&self, origin: &crate::RequestOrigin<'_>, why: &str) {
        let Some(claim) = origin.claim else {
            return;
        };
        metrics::counter!("onramp_certificate_rotations_total", "outcome" => "refused")
            .increment(1);
        let key = format!("rotate:claim:{}:{}", claim.serial, origin.source);
        if self.inner.throttle_audit_limiter.check(&key).is_ok()
            && let Err(e) = self
                .inner
                .store
                .append_audit(&AuditEntry {
                    id: 0,
                    tenant: origin.tenant.to_string(),
                    actor: format!("claim:{}", claim.serial),
                    action: "certificate.rotation_requested".into(),
                    target: format!("claim:{}", claim.serial),
                    source: origin.source.to_string(),
                    outcome: Outcome::Denied,
                    detail: why.to_string(),
                    at: now(),
                })
                .await
        {
            tracing::warn!(error = %e, "could not audit a refused rotation");
        }
    }

    async fn rotate_inner(
        &self,
        tenant: &str,
        certificate_id: Option<&str>,
        source: &str,
        topic: &ProvisioningTopic,
        payload: &[u8],
    ) -> std::result::Result<Vec<u8>, (ProvisioningRejection, Option<String>)> {
        let plain = |r| (r, None);
        if topic.format() == PayloadFormat::Cbor {
            return Err(plain(ProvisioningRejection::invalid_payload(
                "CBOR payloads are not supported; use the json topics",
            )));
        }
        if matches!(topic, ProvisioningTopic::RegisterThing { .. }) {
            return Err(plain(ProvisioningRejection::access_denied(
                "RegisterThing is for claim certificates; a device rotating its certificate needs none",
            )));
        }
        let fingerprint = certificate_id.ok_or_else(|| {
            plain(ProvisioningRejection::access_denied(
                "no certificate on this connection",
            ))
        })?;
        let inner = &self.inner;
        if inner
            .claim_limiter
            .check(&format!("rotate:{fingerprint}"))
            .is_err()
        {
            return Err(plain(ProvisioningRejection::throttled(
                "too many rotation requests for this certificate; retry later",
            )));
        }
        let internal = |e: String| (ProvisioningRejection::internal(e), None);
        let cert = inner
            .store
            .get_certificate_by_fingerprint(fingerprint)
            .await
            .map_err(|e| internal(e.to_string()))?
            .filter(|c| c.tenant == tenant)
            .ok_or_else(|| {
                plain(ProvisioningRejection::access_denied(
                    "the certificate of this connection is not registered",
                ))
            })?;
        let thing = Some(cert.thing_name.clone());
        let in_grace = self
            .in_rotation_grace(&cert)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let device = inner
            .store
            .get_device(&cert.tenant, &cert.thing_name)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let at = now();
        let asked = requested_thing(payload);
        let kind = check_rotation(
            &Presented {
                thing_name: &cert.thing_name,
                status: cert.status,
                not_after: cert.not_after,
                revoked_at: cert.revoked_at,
                device: device.as_ref().map(|d| d.status),
                in_grace,
            },
            asked.as_deref(),
            at,
            &inner.settings.rotation,
        )
        .map_err(|r| {
            (
                ProvisioningRejection::access_denied(r.to_string()),
                thing.clone(),
            )
        })?;
        let serial_number = device
            .as_ref()
            .map(|d| d.serial_number.clone())
            .unwrap_or_default();
        let days = inner.settings.device_cert_validity_days;
        let (issued, key_pem) = match topic {
            ProvisioningTopic::CreateCertificateFromCsr(_) => {
                let pem = parse_create_from_csr_request(payload).map_err(plain)?;
                let der =
                    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
                        plain(ProvisioningRejection::invalid_payload(
                            "certificateSigningRequest is not a PEM certificate request",
                        ))
                    })?;
                let csr = parse_csr(der.as_ref())
                    .map_err(|e| plain(ProvisioningRejection::invalid_payload(e.to_string())))?;
                let issued = inner
                    .ca()
                    .issue_device_cert(&csr, &cert.thing_name, &serial_number, days, at)
                    .map_err(|e| internal(e.to_string()))?;
                (issued, None)
            }
            _ => {
                parse_create_keys_request(payload).map_err(plain)?;
                let (issued, key) = inner
                    .ca()
                    .issue_with_generated_key(&cert.thing_name, days, at)
                    .map_err(|e| internal(e.to_string()))?;
                (issued, Some(key))
            }
        };
        let record = RotationRecord {
            serial: issued.serial.clone(),
            tenant: cert.tenant.clone(),
            thing_name: cert.thing_name.clone(),
            fingerprint: issued.fingerprint.clone(),
            pem: issued.pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            old_serial: cert.serial.clone(),
            kind,
            status: "pending".into(),
            created_at: at,
            expires_at: pending_expires_at(at, &inner.settings.rotation),
            activated_at: None,
            revoke_old_at: None,
            old_revoked_at: None,
        };
        let audit = AuditEntry {
            id: 0,
            tenant: cert.tenant.clone(),
            actor: format!("device:{}", cert.thing_name),
            action: match kind {
                RenewalKind::Rotation => "certificate.rotation_requested",
                RenewalKind::AfterExpiry => "certificate.renewal_after_expiry",
            }
            .into(),
            target: format!("device:{}", cert.thing_name),
            source: source.to_string(),
            outcome: Outcome::Success,
            detail: format!(
                "certificate {} issued for {}, pending until first connection",
                issued.serial, cert.serial
            ),
            at,
        };
        match inner.store.create_rotation(&record, &audit).await {
            Ok(_) => {}
            Err(StoreError::CertificateNotActive) => {
                return Err((
                    ProvisioningRejection::access_denied("the certificate is no longer active"),
                    thing,
                ));
            }
            Err(e) => return Err(internal(e.to_string())),
        }
        if kind == RenewalKind::AfterExpiry {
            metrics::counter!("onramp_certificate_renewals_after_expiry_total").increment(1);
        }
        // The token is not needed (no RegisterThing follows a rotation) but
        // the reply keeps AWS's shape, which SDKs check.
        let token = random_secret("").map_err(|e| internal(e.to_string()))?;
        let mut body = serde_json::json!({
            "certificateId": issued.fingerprint,
            "certificatePem": issued.pem,
            "certificateOwnershipToken": token,
        });
        if let Some(key) = key_pem {
            body["privateKey"] = key.into();
        }
        Ok(body.to_string().into_bytes())
    }

    /// Whether `cert` was superseded by a rotation whose grace period has
    /// not ended: it is then accepted as if active.
    pub(crate) async fn in_rotation_grace(&self, cert: &Certificate) -> Result<bool> {
        let Some(by) = cert
            .superseded_by
            .as_deref()
            .filter(|_| cert.status == CertStatus::Superseded)
        else {
            return Ok(false);
        };
        Ok(self
            .inner
            .store
            .get_rotation(by)
            .await?
            .is_some_and(|r| superseded_in_grace(cert, &r, now())))
    }

    /// The first connection with a pending-rotation certificate: activates
    /// it (the thing's other certificates are superseded) and returns it.
    /// `None` when the certificate is no pending rotation or may not be
    /// activated (expired, device not active).
    pub(crate) async fn activate_rotation_on_connect(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Certificate>> {
        let store = &self.inner.store;
        let Some(r) = store.get_rotation_by_fingerprint(fingerprint).await? else {
            return Ok(None);
        };
        let at = now();
        if r.status != "pending" || r.expires_at <= at {
            return Ok(None);
        }
        let device = store.get_device(&r.tenant, &r.thing_name).await?;
        if device.is_none_or(|d| d.status != onramp_domain::DeviceStatus::Active) {
            return Ok(None);
        }
        let rules = &self.inner.settings.rotation;
        let revoke_at = old_revoked_at(at, rules);
        let audit = AuditEntry {
            id: 0,
            tenant: r.tenant.clone(),
            actor: format!("device:{}", r.thing_name),
            action: "certificate.rotation_activated".into(),
            target: format!("device:{}", r.thing_name),
            source: "mqtt".into(),
            outcome: Outcome::Success,
            detail: format!(
                "certificate {} active; {} superseded, revoked at {revoke_at}",
                r.serial, r.old_serial
            ),
            at,
        };
        match store
            .activate_rotation(&r.serial, at, revoke_at, &audit)
            .await
        {
            Ok(cert) => {
                metrics::counter!("onramp_certificate_rotations_total", "outcome" => "activated")
                    .increment(1);
                tracing::info!(thing = %r.thing_name, serial = %r.serial, "rotated certificate activated by its first connection");
                Ok(Some(cert))
            }
            // Two first connections at once: the other one activated it.
            Err(StoreError::Conflict(_)) => {
                Ok(store.get_certificate_by_fingerprint(fingerprint).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes superseded certificates whose grace period ended and pending
    /// ones never used (the scheduler's `certificate-rotations` task).
    pub async fn sweep_certificate_rotations(&self) -> Result<usize> {
        let sweep = self.inner.store.sweep_rotations(now()).await?;
        if !sweep.expired.is_empty() {
            metrics::counter!("onramp_certificate_rotations_total", "outcome" => "expired")
                .increment(sweep.expired.len() as u64);
        }
        if !sweep.revoked_old.is_empty() {
            metrics::counter!("onramp_certificate_rotations_total", "outcome" => "old_revoked")
                .increment(sweep.revoked_old.len() as u64);
        }
        let n = sweep.expired.len() + sweep.revoked_old.len();
        if n > 0 {
            tracing::info!(
                expired = sweep.expired.len(),
                revoked = sweep.revoked_old.len(),
                "certificate rotations swept"
            );
        }
        Ok(n)
    }

    /// The rotations of one thing, newest last.
    pub async fn list_rotations(
        &self,
        caller: &Caller,
        thing_name: &str,
    ) -> Result<Vec<RotationRecord>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_rotations(&caller.tenant, thing_name)
            .await?)
    }

    /// Whether a certificate that expired at `not_after` may renew now:
    /// `Ok(true)` when it expired within the window, `Ok(false)` when it is
    /// still valid, refused otherwise.
    pub(crate) fn expired_renewal_allowed(&self, not_after: i64) -> Result<bool> {
        match check_expiry(not_after, now(), &self.inner.settings.rotation) {
            Ok(RenewalKind::Rotation) => Ok(false),
            Ok(RenewalKind::AfterExpiry) => Ok(true),
            Err(e) => Err(ServiceError::Forbidden(e.to_string())),
        }
    }

    /// Bulk rotation: a job whose document tells each selected device to
    /// rotate its certificate, with the jobs machinery's pacing and abort.
    pub async fn rotate_certificates(
        &self,
        caller: &Caller,
        request: RotateRequest,
    ) -> Result<JobDescription> {
        caller.require(Permission::ManageDevices)?;
        caller.require(Permission::RevokeCertificates)?;
        let tenant = caller.tenant.as_str();
        let store = &self.inner.store;
        let mut targets = JobTargets::default();
        match &request.selector {
            RotationSelector::Thing(t) => {
                if store.get_device(tenant, t).await?.is_none() {
                    return Err(ServiceError::NotFound(format!("thing `{t}`")));
                }
                targets.things = vec![t.clone()];
            }
            RotationSelector::ThingGroup(g) => targets.thing_groups = vec![g.clone()],
            RotationSelector::DeviceClass(c) => {
                targets.things = store
                    .rotation_candidates(tenant, &RotationQuery::DeviceClass(c.clone()))
                    .await?;
            }
            RotationSelector::Ca(ca) => {
                let issuer = (ca != "onramp").then(|| ca.clone());
                targets.things = store
                    .rotation_candidates(tenant, &RotationQuery::IssuerCa(issuer))
                    .await?;
            }
            RotationSelector::ExpiringWithinDays(d) => {
                let before = now() + i64::from(*d) * 86_400;
                targets.things = store
                    .rotation_candidates(tenant, &RotationQuery::ExpiringBefore(before))
                    .await?;
            }
        }
        if targets.things.is_empty() && targets.thing_groups.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "no thing to rotate: {}",
                request.selector.describe()
            )));
        }
        let job_id = request
            .job_id
            .clone()
            .unwrap_or_else(|| format!("rotate-{}", now()));
        let mut config = serde_json::json!({});
        if let Some(rate) = request.maximum_per_minute {
            config["jobExecutionsRolloutConfig"] = serde_json::json!({"maximumPerMinute": rate});
        }
        let document = rotation_job_document(&request.selector);
        let job = self
            .create_job(
                caller,
                CreateJob {
                    job_id,
                    description: Some(format!(
                        "certificate rotation: {}",
                        request.selector.describe()
                    )),
                    document: document.to_string().into_bytes(),
                    targets,
                    continuous: false,
                    config,
                },
            )
            .await?;
        tracing::info!(job = %job.job_id, selector = %request.selector.describe(), "bulk certificate rotation created");
        Ok(job)
    }
}
