//! EST enrolment and re-enrolment (RFC 7030 simpleenroll / simplereenroll).

use crate::{Onramp, Result, ServiceError, now};
use onramp_domain::{
    AuditEntry, DeviceProfile, EnrolmentRetry, Outcome, TokenRefusal, check_subject,
    validate_serial_number,
};
use onramp_pki::{
    CertInfo, VerifiedCsr, fingerprint_sha256, parse_cert, parse_csr, pem_to_der_chain, signed_by,
};
use onramp_store::{EnrolmentCommit, NewCertificate, StoreError, Supersede};
use std::time::Instant;

/// How an enrolling client proved who it is.
#[derive(Debug, Clone)]
pub enum EnrolCredential {
    /// HTTP Basic: the device serial as user name, the one-time token as password.
    Token {
        username: String,
        token: String,
    },
    /// The TLS client certificate chain, leaf first.
    ClientCert {
        chain: Vec<Vec<u8>>,
    },
    None,
}

/// A CA whose certificates may enrol devices of one tenant (factory-installed
/// bootstrap identities).
#[derive(Debug, Clone)]
pub struct BootstrapCa {
    pub der: Vec<u8>,
    pub tenant: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolOperation {
    SimpleEnroll,
    SimpleReenroll,
}

impl EnrolOperation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EnrolOperation::SimpleEnroll => "simpleenroll",
            EnrolOperation::SimpleReenroll => "simplereenroll",
        }
    }
}

/// A successful enrolment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub tenant: String,
    pub thing_name: String,
    pub serial_number: String,
    pub certificate_serial: String,
    pub cert_der: Vec<u8>,
}

/// Who is enrolling, once the credential checked out.
struct Applicant {
    tenant: String,
    serial_number: String,
    thing_name: String,
    token_id: Option<String>,
    /// The certificate being renewed (re-enrolment only).
    renewing: Option<String>,
    actor: String,
    /// The token was already used: only a retry of its own enrolment may pass.
    token_used: bool,
    /// Re-enrolment with a certificate that expired within the renewal window.
    after_expiry: bool,
}

impl Onramp {
    /// RFC 7030 §4.2.1: a new certificate for a device holding a one-time
    /// token or a bootstrap certificate.
    pub async fn simple_enroll(
        &self,
        credential: &EnrolCredential,
        csr_der: &[u8],
        source: &str,
    ) -> Result<Enrolled> {
        self.enrol(EnrolOperation::SimpleEnroll, credential, csr_der, source)
            .await
    }

    /// RFC 7030 §4.2.2: renewal by a device presenting its current certificate.
    pub async fn simple_reenroll(
        &self,
        credential: &EnrolCredential,
        csr_der: &[u8],
        source: &str,
    ) -> Result<Enrolled> {
        self.enrol(EnrolOperation::SimpleReenroll, credential, csr_der, source)
            .await
    }

    async fn enrol(
        &self,
        op: EnrolOperation,
        credential: &EnrolCredential,
        csr_der: &[u8],
        source: &str,
    ) -> Result<Enrolled> {
        let started = Instant::now();
        let mut known: Option<(String, String)> = None;
        let result = self
            .enrol_inner(op, credential, csr_der, source, &mut known)
            .await;
        self.note_serial_outcome(credential, &result);
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => crate::refusals::enrol_outcome(e),
        };
        metrics::counter!("onramp_enrolments_total", "operation" => op.as_str(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("onramp_enrolment_duration_seconds", "operation" => op.as_str())
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            // Aggregated per window (see `refusals`); rate-limited ones and a
            // busy registry only counted.
            self.audit_enrolment_refusal(op, credential, source, known, e)
                .await;
        }
        result
    }

    async fn enrol_inner(
        &self,
        op: EnrolOperation,
        credential: &EnrolCredential,
        csr_der: &[u8],
        source: &str,
        known: &mut Option<(String, String)>,
    ) -> Result<Enrolled> {
        let inner = &self.inner;
        inner
            .source_limiter
            .check(source)
            .map_err(|retry_after_secs| ServiceError::RateLimited { retry_after_secs })?;
        self.check_serial_failures(credential)?;
        let now = now();
        let applicant = match op {
            EnrolOperation::SimpleEnroll => self.applicant_for_enrol(credential, now).await?,
            EnrolOperation::SimpleReenroll => self.applicant_for_reenrol(credential).await?,
        };
        *known = Some((
            applicant.tenant.clone(),
            format!("device:{}", applicant.thing_name),
        ));
        let csr = parse_csr(csr_der).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        check_subject(
            &applicant.serial_number,
            &applicant.thing_name,
            csr.subject_cn.as_deref(),
            csr.subject_serial.as_deref(),
        )
        .map_err(|e| ServiceError::Forbidden(e.to_string()))?;
        if applicant.token_used {
            return self.replay_enrolment(&applicant, &csr, source, now).await;
        }
        if inner.settings.require_allowlist
            && !inner
                .store
                .allowlist_contains(&applicant.tenant, &applicant.serial_number)
                .await?
        {
            return Err(ServiceError::Forbidden(format!(
                "serial number `{}` is not on the allow-list",
                applicant.serial_number
            )));
        }
        if let Some(device) = inner
            .store
            .get_device(&applicant.tenant, &applicant.thing_name)
            .await?
            && !device.status.may_enrol()
        {
            return Err(ServiceError::Forbidden(format!(
                "device `{}` is {}",
                device.thing_name, device.status
            )));
        }
        self.issue_and_commit(op, applicant, &csr, source, now)
            .await
    }

    async fn issue_and_commit(
        &self,
        op: EnrolOperation,
        a: Applicant,
        csr: &VerifiedCsr,
        source: &str,
        now: i64,
    ) -> Result<Enrolled> {
        let inner = &self.inner;
        let issued = inner.ca().issue_device_cert(
            csr,
            &a.thing_name,
            &a.serial_number,
            inner.settings.device_cert_validity_days,
            now,
        )?;
        let commit = EnrolmentCommit {
            tenant: a.tenant.clone(),
            thing_name: a.thing_name.clone(),
            serial_number: a.serial_number.clone(),
            profile: DeviceProfile::default(),
            token_id: a.token_id.clone(),
            public_key_sha256: fingerprint_sha256(&csr.spki_der),
            supersede: match &a.renewing {
                Some(old) => Supersede::Certificate(old.clone()),
                None => Supersede::AllActive,
            },
            certificate: NewCertificate {
                serial: issued.serial.clone(),
                fingerprint: issued.fingerprint.clone(),
                pem: issued.pem.clone(),
                not_before: issued.not_before,
                not_after: issued.not_after,
            },
            audit: AuditEntry {
                id: 0,
                tenant: a.tenant.clone(),
                actor: a.actor.clone(),
                action: if a.after_expiry {
                    format!("est.{}.after_expiry", op.as_str())
                } else {
                    format!("est.{}", op.as_str())
                },
                target: format!("device:{}", a.thing_name),
                source: source.to_string(),
                outcome: Outcome::Success,
                detail: match &a.renewing {
                    Some(old) => format!("certificate {} replaces {old}", issued.serial),
                    None => format!("certificate {}", issued.serial),
                },
                at: now,
            },
            now,
        };
        // Until this commit returns, the certificate exists nowhere but in
        // memory: if the commit fails it is dropped and never handed out.
        match inner.store.commit_enrolment(&commit).await {
            Ok(_) => {}
            // Another request consumed the token first. If it was this same
            // request (a device retrying while its first try was still in
            // flight), it gets that request's certificate.
            Err(StoreError::TokenNotUsable) if a.token_id.is_some() => {
                return self.replay_enrolment(&a, csr, source, now).await;
            }
            Err(e) => {
                return Err(match ServiceError::from(e) {
                    ServiceError::Conflict(msg) => ServiceError::Forbidden(msg),
                    other => other,
                });
            }
        }
        Ok(Enrolled {
            tenant: a.tenant,
            thing_name: a.thing_name,
            serial_number: a.serial_number,
            certificate_serial: issued.serial,
            cert_der: issued.der,
        })
    }

    /// Answers a request whose token is already used: if it repeats the
    /// token's own enrolment (same key, within the window, nothing revoked or
    /// renewed since), with the certificate that enrolment produced, audited
    /// as a replay; otherwise with the refusal a used token always got.
    async fn replay_enrolment(
        &self,
        a: &Applicant,
        csr: &VerifiedCsr,
        source: &str,
        now: i64,
    ) -> Result<Enrolled> {
        let inner = &self.inner;
        let used = TokenRefusal::AlreadyUsed.to_string();
        let Some(token_id) = a.token_id.as_deref() else {
            return Err(ServiceError::Unauthorized(used));
        };
        let Some(record) = inner.store.token_enrolment(token_id).await? else {
            return Err(ServiceError::Unauthorized(used));
        };
        let device = inner.store.get_device(&a.tenant, &a.thing_name).await?;
        let presented = fingerprint_sha256(&csr.spki_der);
        EnrolmentRetry {
            used_at: record.used_at,
            window_secs: inner.settings.enrolment_retry_window_secs,
            recorded_key: &record.public_key_sha256,
            presented_key: &presented,
            certificate: record.certificate.status,
            device: device.map(|d| d.status),
        }
        .check(now)
        .map_err(|r| ServiceError::Unauthorized(format!("{used}; {r}")))?;
        let cert = record.certificate;
        let cert_der = pem_to_der_chain(&cert.pem)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ServiceError::Internal(format!("certificate {} has no PEM", cert.serial))
            })?;
        // Every certificate handed out is audited, a second time included.
        inner
            .store
            .append_audit(&AuditEntry {
                id: 0,
                tenant: a.tenant.clone(),
                actor: a.actor.clone(),
                action: "est.simpleenroll.replay".into(),
                target: format!("device:{}", a.thing_name),
                source: source.to_string(),
                outcome: Outcome::Success,
                detail: format!(
                    "certificate {} sent again: a retry with the same token and key",
                    cert.serial
                ),
                at: now,
            })
            .await?;
        metrics::counter!("onramp_enrolment_replays_total").increment(1);
        Ok(Enrolled {
            tenant: a.tenant.clone(),
            thing_name: a.thing_name.clone(),
            serial_number: a.serial_number.clone(),
            certificate_serial: cert.serial,
            cert_der,
        })
    }

    async fn applicant_for_enrol(
        &self,
        credential: &EnrolCredential,
        now: i64,
    ) -> Result<Applicant> {
        let inner = &self.inner;
        match credential {
            EnrolCredential::Token { username, token } => {
                let hash = inner.hasher.hash(token);
                inner
                    .credential_limiter
                    .check(&format!("token:{hash}"))
                    .map_err(|retry_after_secs| ServiceError::RateLimited { retry_after_secs })?;
                let Some(t) = inner.store.get_token_by_hash(&hash).await? else {
                    return Err(ServiceError::Unauthorized(
                        TokenRefusal::Unknown.to_string(),
                    ));
                };
                if *username != t.serial_number {
                    // Do not reveal which serial the token belongs to.
                    return Err(ServiceError::Unauthorized(
                        "the user name must be the serial number the token was issued for".into(),
                    ));
                }
                // A used token goes on only towards replay_enrolment, which
                // answers nothing but a retry of the token's own enrolment.
                let token_used = match t.state().check(&t.serial_number, now) {
                    Ok(()) => false,
                    Err(TokenRefusal::AlreadyUsed)
                        if inner.settings.enrolment_retry_window_secs > 0 =>
                    {
                        true
                    }
                    Err(r) => return Err(ServiceError::Unauthorized(r.to_string())),
                };
                Ok(Applicant {
                    token_used,
                    tenant: t.tenant,
                    serial_number: t.serial_number,
                    thing_name: t.thing_name,
                    actor: format!("token:{}", t.id),
                    token_id: Some(t.id),
                    renewing: None,
                    after_expiry: false,
                })
            }
            EnrolCredential::ClientCert { chain } => {
                let leaf = chain.first().ok_or_else(no_credential)?;
                let Some(bootstrap) = inner
                    .settings
                    .bootstrap_cas
                    .iter()
                    .find(|b| signed_by(leaf, &b.der))
                else {
                    if inner.authorities().trusted_issuer_of(leaf).is_some() {
                        return Err(ServiceError::Forbidden(
                            "a device certificate renews through /simplereenroll".into(),
                        ));
                    }
                    return Err(ServiceError::Unauthorized(
                        "the client certificate is not from a bootstrap CA".into(),
                    ));
                };
                let info = parse_cert(leaf)?;
                inner
                    .credential_limiter
                    .check(&format!("cert:{}", info.fingerprint))
                    .map_err(|retry_after_secs| ServiceError::RateLimited { retry_after_secs })?;
                // Only re-enrolment may present an expired certificate.
                if info.not_after < now {
                    return Err(ServiceError::Unauthorized(
                        "the bootstrap certificate has expired".into(),
                    ));
                }
                let serial = bootstrap_serial(&info)?;
                let thing_name = match inner
                    .store
                    .get_device_by_serial(&bootstrap.tenant, &serial)
                    .await?
                {
                    Some(d) => d.thing_name,
                    None => serial.clone(),
                };
                Ok(Applicant {
                    tenant: bootstrap.tenant.clone(),
                    serial_number: serial,
                    thing_name,
                    token_id: None,
                    renewing: None,
                    actor: format!("bootstrap:{}", &info.fingerprint[..16]),
                    token_used: false,
                    after_expiry: false,
                })
            }
            EnrolCredential::None => Err(no_credential()),
        }
    }

    async fn applicant_for_reenrol(&self, credential: &EnrolCredential) -> Result<Applicant> {
        let inner = &self.inner;
        let EnrolCredential::ClientCert { chain } = credential else {
            return Err(ServiceError::Unauthorized(
                "re-enrolment needs the device's current certificate as TLS client certificate"
                    .into(),
            ));
        };
        let leaf = chain.first().ok_or_else(no_credential)?;
        if inner.authorities().trusted_issuer_of(leaf).is_none() {
            return Err(ServiceError::Forbidden(
                "the client certificate was not issued by this CA".into(),
            ));
        }
        let info = parse_cert(leaf)?;
        inner
            .credential_limiter
            .check(&format!("cert:{}", info.fingerprint))
            .map_err(|retry_after_secs| ServiceError::RateLimited { retry_after_secs })?;
        let cert = inner
            .store
            .get_certificate(&info.serial)
            .await?
            .filter(|c| c.fingerprint == info.fingerprint)
            .ok_or_else(|| {
                ServiceError::Forbidden("the client certificate is not registered".into())
            })?;
        if cert.status != onramp_domain::CertStatus::Active {
            return Err(ServiceError::Forbidden(format!(
                "the client certificate is {}",
                cert.status
            )));
        }
        let device = inner
            .store
            .get_device(&cert.tenant, &cert.thing_name)
            .await?
            .ok_or_else(|| ServiceError::Forbidden("the device is not registered".into()))?;
        // An expired certificate reaches here only when renewal after expiry
        // is on (the TLS layer refuses it otherwise): within the window, for
        // an active device, never revoked (its status is active).
        let after_expiry = self.expired_renewal_allowed(cert.not_after)?;
        if after_expiry && device.status != onramp_domain::DeviceStatus::Active {
            return Err(ServiceError::Forbidden(format!(
                "device `{}` is {}",
                device.thing_name, device.status
            )));
        }
        Ok(Applicant {
            tenant: device.tenant,
            serial_number: device.serial_number,
            thing_name: device.thing_name.clone(),
            token_id: None,
            renewing: Some(cert.serial),
            actor: format!("device:{}", device.thing_name),
            token_used: false,
            after_expiry,
        })
    }
}

fn no_credential() -> ServiceError {
    ServiceError::Unauthorized(
        "enrolment needs HTTP Basic authentication with an enrolment token, or a bootstrap client certificate"
            .into(),
    )
}

/// The serial number a bootstrap certificate speaks for: its subject
/// serialNumber, else its CN.
fn bootstrap_serial(info: &CertInfo) -> Result<String> {
    let serial = info
        .subject_serial
        .clone()
        .or_else(|| info.subject_cn.clone())
        .ok_or_else(|| {
            ServiceError::Forbidden("the bootstrap certificate names no serial".into())
        })?;
    validate_serial_number(&serial).map_err(|e| ServiceError::Forbidden(e.to_string()))?;
    Ok(serial)
}

pub(crate) fn credential_actor(credential: &EnrolCredential) -> String {
    match credential {
        EnrolCredential::Token { username, .. } => format!("token-holder:{}", sanitize(username)),
        EnrolCredential::ClientCert { chain } => {
            match chain.first().and_then(|c| parse_cert(c).ok()) {
                Some(info) => format!("cert:{}", &info.fingerprint[..16]),
                None => "cert:unparseable".into(),
            }
        }
        EnrolCredential::None => "anonymous".into(),
    }
}

/// Keeps caller-supplied text printable and short before it reaches the log.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}
