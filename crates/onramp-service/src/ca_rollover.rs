//! CA rollover with overlapping trust: a new issuing CA (or a new root, or
//! an imported external issuing CA) becomes the one that signs, while the
//! previous ones stay trusted until they are retired. Retiring a CA is
//! refused while active certificates still depend on it, unless forced.
//!
//! The CA directory is the source of truth: a rollover made by the CLI on
//! this machine is seen by the running server within a second
//! ([`Onramp::reload_authorities_if_changed`], run by the revocation
//! upkeep), which then swaps its trust anchors without a restart.

use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::{DEFAULT_TENANT, Permission};
use onramp_pki::authorities::{self, Rollover};
use onramp_pki::{Authorities, CaRole, RevocationUrls, certificate_pem};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One issuing CA as `onramp ca list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuingCa {
    /// First 16 hex digits of the SHA-256 fingerprint of its certificate;
    /// also the name of its CRL (`/crl/<id>.crl`).
    pub id: String,
    /// `active` (signs new certificates), `previous` (still trusted) or
    /// `retired` (not trusted; its CRL is still served).
    pub role: String,
    pub subject: String,
    pub root_subject: String,
    pub not_after: i64,
    /// Active device and claim certificates it signed: what still depends on it.
    pub active_certificates: u64,
    /// Its superseded and revoked certificates that have not expired yet.
    pub inactive_certificates: u64,
    /// When the last of its unexpired certificates expires: until then its
    /// CRL is worth serving.
    pub last_expiry: Option<i64>,
    /// Its certificate followed by its parents up to its root (PEM).
    pub chain_pem: String,
}

/// How the next issuing CA comes about.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaRolloverRequest {
    /// A new issuing CA signed by the current root.
    NewIssuing,
    /// A new root and a new issuing CA under it; both roots are served.
    NewRoot,
    /// An external issuing CA: its certificate (optionally followed by its
    /// parents up to a root) and its private key, both PEM.
    Import { cert_pem: String, key_pem: String },
}

impl std::fmt::Debug for CaRolloverRequest {
    /// Never shows an imported private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaRolloverRequest::NewIssuing => f.write_str("NewIssuing"),
            CaRolloverRequest::NewRoot => f.write_str("NewRoot"),
            CaRolloverRequest::Import { .. } => f.write_str("Import { .. }"),
        }
    }
}

fn require_ca_admin(caller: &Caller) -> Result<()> {
    caller.require(Permission::ManageProvisioning)?;
    if caller.tenant != DEFAULT_TENANT {
        return Err(ServiceError::Forbidden(
            "the CA serves every tenant: only an admin of the default tenant may change it".into(),
        ));
    }
    Ok(())
}

impl Onramp {
    /// Every issuing CA: active, previous and retired.
    pub fn authorities(&self) -> Arc<Authorities> {
        self.inner.authorities()
    }

    /// Follows the authorities: a new value after every rollover or retirement.
    pub fn watch_authorities(&self) -> tokio::sync::watch::Receiver<Arc<Authorities>> {
        self.inner.ca_watch.subscribe()
    }

    /// Sets the base of the CRL and OCSP URLs that certificates issued from
    /// now on carry (`<base>/crl/<issuing CA id>.crl`, `<base>/ocsp`); kept
    /// for the CA a rollover makes active.
    pub fn set_revocation_base(&self, base: &str) -> Result<()> {
        let ca = self.ca();
        let urls = RevocationUrls::under(base, &ca.issuing_ca_id())?;
        ca.set_revocation_urls(urls);
        if let Ok(mut b) = self.inner.revocation_base.write() {
            *b = Some(base.to_string());
        }
        Ok(())
    }

    /// Reloads the issuing CAs when the CA directory changed (a rollover or
    /// retirement, here or by the CLI). Returns whether it did.
    pub fn reload_authorities_if_changed(&self) -> Result<bool> {
        let dir = self.ca().dir().to_path_buf();
        let marker = Authorities::marker(&dir);
        {
            let seen = self
                .inner
                .ca_marker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == marker {
                return Ok(false);
            }
        }
        self.reload_authorities()?;
        Ok(true)
    }

    fn reload_authorities(&self) -> Result<()> {
        let dir = self.ca().dir().to_path_buf();
        let loaded = Authorities::load(&dir)?;
        let base = self
            .inner
            .revocation_base
            .read()
            .ok()
            .and_then(|b| b.clone());
        if let Some(base) = base {
            let urls = RevocationUrls::under(&base, &loaded.active().issuing_ca_id())?;
            loaded.active().set_revocation_urls(urls);
        }
        let loaded = Arc::new(loaded);
        *self
            .inner
            .authorities
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded.clone();
        *self
            .inner
            .ca_marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Authorities::marker(&dir);
        tracing::info!(
            active = %loaded.active().issuing_ca_id(),
            trusted = loaded.trusted().count(),
            retired = loaded.all().filter(|(r, _)| *r == CaRole::Retired).count(),
            "loaded the issuing CAs"
        );
        self.inner.ca_watch.send_replace(loaded);
        self.authorities_changed();
        Ok(())
    }

    /// Every issuing CA with how many certificates depend on it.
    pub async fn list_issuing_cas(&self, caller: &Caller) -> Result<Vec<IssuingCa>> {
        caller.require(Permission::ReadRegistry)?;
        self.reload_authorities_if_changed()?;
        let all = self.authorities();
        let certs = self.inner.store.unexpired_own_certificates(now()).await?;
        // (active, inactive, last expiry) per CA id.
        let mut counts: HashMap<String, (u64, u64, Option<i64>)> = HashMap::new();
        for c in &certs {
            let Some(der) = onramp_pki::pem_to_der_chain(&c.pem)
                .ok()
                .and_then(|d| d.into_iter().next())
            else {
                continue;
            };
            let Some((_, ca)) = all.issuer_of(&der) else {
                continue;
            };
            let e = counts.entry(ca.issuing_ca_id()).or_default();
            if c.status == "active" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
            e.2 = Some(e.2.map_or(c.not_after, |t| t.max(c.not_after)));
        }
        Ok(all
            .all()
            .map(|(role, ca)| {
                let id = ca.issuing_ca_id();
                let (active, inactive, last) = counts.get(&id).copied().unwrap_or_default();
                let root_subject = onramp_pki::parse_cert(ca.root_der())
                    .map(|i| i.subject_dn)
                    .unwrap_or_default();
                IssuingCa {
                    role: role.as_str().to_string(),
                    subject: ca.issuing_info().subject_dn.clone(),
                    root_subject,
                    not_after: authorities::not_after(ca),
                    active_certificates: active,
                    inactive_certificates: inactive,
                    last_expiry: last,
                    chain_pem: ca.chain_der().iter().map(|d| certificate_pem(d)).collect(),
                    id,
                }
            })
            .collect())
    }

    /// Makes a new issuing CA the active one; the current one stays trusted
    /// (`previous`) until retired. Returns the new CA.
    pub async fn roll_over_ca(
        &self,
        caller: &Caller,
        request: CaRolloverRequest,
    ) -> Result<IssuingCa> {
        require_ca_admin(caller)?;
        self.reload_authorities_if_changed()?;
        let dir = self.ca().dir().to_path_buf();
        let old_id = self.ca().issuing_ca_id();
        let alg = self.inner.settings.ca_key_algorithm;
        let kind = match &request {
            CaRolloverRequest::NewIssuing => "new_issuing",
            CaRolloverRequest::NewRoot => "new_root",
            CaRolloverRequest::Import { .. } => "import",
        };
        let new_id = tokio::task::spawn_blocking(move || {
            let how = match &request {
                CaRolloverRequest::NewIssuing => Rollover::NewIssuing { alg },
                CaRolloverRequest::NewRoot => Rollover::NewRoot { alg },
                CaRolloverRequest::Import { cert_pem, key_pem } => {
                    Rollover::Import { cert_pem, key_pem }
                }
            };
            authorities::roll_over(&dir, how, now())
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("rollover task: {e}")))?
        .map_err(|e| match e {
            onramp_pki::PkiError::Invalid(m) => ServiceError::BadRequest(m),
            other => ServiceError::from(other),
        })?;
        self.reload_authorities()?;
        self.inner
            .store
            .append_audit(&caller.audit(
                "ca.rollover",
                new_id.clone(),
                format!("{kind}; previous issuing CA {old_id} stays trusted"),
                now(),
            ))
            .await?;
        metrics::counter!("onramp_ca_rollovers_total", "kind" => kind).increment(1);
        tracing::info!(new = %new_id, previous = %old_id, kind, "CA rollover: a new issuing CA signs from now on");
        self.list_issuing_cas(caller)
            .await?
            .into_iter()
            .find(|c| c.id == new_id)
            .ok_or_else(|| ServiceError::Internal("the new CA did not load".into()))
    }

    /// Stops trusting a previous issuing CA. Refused while active
    /// certificates depend on it, unless `force`. Its CRL stays served.
    pub async fn retire_ca(&self, caller: &Caller, id: &str, force: bool) -> Result<IssuingCa> {
        require_ca_admin(caller)?;
        let listed = self.list_issuing_cas(caller).await?;
        let Some(ca) = listed.iter().find(|c| c.id == id) else {
            return Err(ServiceError::NotFound(format!("no issuing CA {id}")));
        };
        match ca.role.as_str() {
            "active" => {
                return Err(ServiceError::Conflict(format!(
                    "issuing CA {id} is the active one: roll over first"
                )));
            }
            "retired" => return Ok(ca.clone()),
            _ => {}
        }
        if ca.active_certificates > 0 && !force {
            return Err(ServiceError::Conflict(format!(
                "{} active certificate(s) still depend on issuing CA {id}: let them renew \
                 (EST simplereenroll moves them to the active CA), or retire with --force \
                 and they can no longer connect",
                ca.active_certificates
            )));
        }
        let dir = self.ca().dir().to_path_buf();
        let owned = id.to_string();
        tokio::task::spawn_blocking(move || authorities::retire(&dir, &owned))
            .await
            .map_err(|e| ServiceError::Internal(format!("retire task: {e}")))??;
        self.reload_authorities()?;
        self.inner
            .store
            .append_audit(&caller.audit(
                "ca.retire",
                id.to_string(),
                format!(
                    "{} active certificate(s) depended on it{}",
                    ca.active_certificates,
                    if force { "; forced" } else { "" }
                ),
                now(),
            ))
            .await?;
        metrics::counter!("onramp_ca_retirements_total").increment(1);
        tracing::info!(
            id,
            forced = force,
            dependants = ca.active_certificates,
            "retired an issuing CA"
        );
        self.list_issuing_cas(caller)
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ServiceError::Internal("the retired CA did not load".into()))
    }
}
