//! Revocation for relying parties: the CRL of the issuing CA and the OCSP
//! responder.
//!
//! The CRL is regenerated when the identity-change feed (the sequence that
//! drives the MQTT live cut) shows a change, and again once half of its
//! validity has passed, so it never reaches its nextUpdate. OCSP answers
//! read the registry on every request, so they are current at once.

use crate::{Onramp, Result, now};
use onramp_pki::crl::{CrlRequest, RevokedSerial, crl_info, next_crl_number, reason_code};
use onramp_pki::ocsp::{
    IssuerId, OcspResponder, OcspStatus, internal_error_response, malformed_request_response,
    parse_ocsp_request,
};
use onramp_store::IdentityChangeCursor;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// How the CRL and the OCSP responder behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationSettings {
    /// From a CRL's thisUpdate to its nextUpdate.
    pub crl_validity_secs: i64,
    /// From an OCSP answer's thisUpdate to its nextUpdate.
    pub ocsp_validity_secs: i64,
    /// Lifetime of the delegated OCSP signing certificate; it is renewed
    /// when less than a third is left.
    pub ocsp_signer_validity_days: u32,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        RevocationSettings {
            crl_validity_secs: 86_400,
            ocsp_validity_secs: 3_600,
            ocsp_signer_validity_days: 7,
        }
    }
}

/// The CRL being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentCrl {
    pub der: Vec<u8>,
    pub number: u64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: usize,
}

pub(crate) struct RevocationState {
    settings: RevocationSettings,
    /// The CRL of each issuing CA (active, previous, retired), by CA id.
    crls: RwLock<HashMap<String, Arc<CurrentCrl>>>,
    /// The delegated OCSP signer of each issuing CA, by CA id.
    responders: RwLock<HashMap<String, Arc<OcspResponder>>>,
    /// This node's place in the identity-change feed.
    cursor: tokio::sync::Mutex<Option<IdentityChangeCursor>>,
    /// Serialises regeneration, so numbers and files follow one order.
    regenerating: tokio::sync::Mutex<()>,
    /// A change was read from the feed but no CRL has been signed since:
    /// the next step signs one even if the feed shows nothing new.
    pending: std::sync::atomic::AtomicBool,
    /// When signing last failed: retried after [`RETRY_AFTER_FAILURE`], not on every step.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long after a failed signing the CRL is tried again.
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

impl Onramp {
    /// Starts serving revocation status: takes this node's place at the
    /// head of the identity-change feed, loads or issues the OCSP signer and
    /// signs a first CRL. Call once, before serving CRL or OCSP requests.
    pub async fn enable_revocation(&self, settings: RevocationSettings) -> Result<()> {
        let state = RevocationState {
            settings,
            crls: RwLock::new(HashMap::new()),
            responders: RwLock::new(HashMap::new()),
            cursor: tokio::sync::Mutex::new(None),
            regenerating: tokio::sync::Mutex::new(()),
            pending: std::sync::atomic::AtomicBool::new(false),
            failed_at: std::sync::Mutex::new(None),
        };
        if self.inner.revocation.set(state).is_err() {
            return Ok(());
        }
        let head = self.inner.store.identity_change_head().await?;
        if let Some(state) = self.inner.revocation.get() {
            *state.cursor.lock().await = Some(head);
        }
        self.renew_ocsp_responder_if_due()?;
        // An imported CA whose key usage lacks cRLSign cannot sign a CRL:
        // OCSP still answers, `/crl` says the CRL is unavailable.
        if let Err(e) = self.regenerate_crl("start").await {
            tracing::error!(error = %e, "could not sign a CRL; OCSP still answers");
        }
        Ok(())
    }

    fn revocation(&self) -> Option<&RevocationState> {
        self.inner.revocation.get()
    }

    /// The active issuing CA's CRL, once revocation is enabled.
    pub fn current_crl(&self) -> Option<Arc<CurrentCrl>> {
        self.crl_of(&self.ca().issuing_ca_id())
    }

    /// The CRL of the issuing CA with this id (active, previous or retired).
    pub fn crl_of(&self, ca_id: &str) -> Option<Arc<CurrentCrl>> {
        self.revocation()
            .and_then(|s| s.crls.read().ok().and_then(|c| c.get(ca_id).cloned()))
    }

    /// After the issuing CAs changed: the next upkeep step signs CRLs for
    /// every CA (a new one has none yet) and issues OCSP signers.
    pub(crate) fn authorities_changed(&self) {
        if let Some(state) = self.revocation() {
            state
                .pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// One step of the revocation upkeep (the scheduler runs it about twice
    /// a second): regenerates the CRL when the identity-change feed shows a
    /// change or half its validity has passed, and renews the OCSP signer
    /// when due. Returns whether a CRL was signed.
    pub async fn refresh_revocation(&self) -> Result<bool> {
        let Some(state) = self.revocation() else {
            return Ok(false);
        };
        if let Err(e) = self.reload_authorities_if_changed() {
            tracing::error!(error = %e, "could not load the issuing CAs after a change in the CA directory; the previous ones stay in force");
        }
        self.renew_ocsp_responder_if_due()?;
        let changes = {
            let mut guard = state.cursor.lock().await;
            if guard.is_none() {
                *guard = Some(self.inner.store.identity_change_head().await?);
            }
            let Some(cursor) = guard.as_mut() else {
                return Ok(false);
            };
            // On error the cursor stays: the next step reads the same changes.
            self.inner.store.identity_changes(cursor).await?.len()
        };
        let t = now();
        let current = self.current_crl();
        if let Some(c) = &current {
            metrics::gauge!("onramp_crl_age_seconds").set((t - c.this_update).max(0) as f64);
        }
        use std::sync::atomic::Ordering;
        if changes > 0 {
            state.pending.store(true, Ordering::SeqCst);
        }
        let reason = if state.pending.load(Ordering::SeqCst) {
            "change"
        } else {
            match current {
                None => "start",
                Some(c) if t - c.this_update >= state.settings.crl_validity_secs / 2 => "refresh",
                Some(_) => return Ok(false),
            }
        };
        let backing_off = state
            .failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if backing_off {
            return Ok(false);
        }
        self.regenerate_crl(reason).await?;
        Ok(true)
    }

    /// Signs a new CRL over every revoked, unexpired certificate of the
    /// issuing CA, keeps it in the CA directory and serves it.
    async fn regenerate_crl(&self, reason: &'static str) -> Result<()> {
        let Some(state) = self.revocation() else {
            return Ok(());
        };
        let _one_at_a_time = state.regenerating.lock().await;
        // Cleared before reading the registry: a change read meanwhile sets it again.
        let was_pending = state
            .pending
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let result = self.sign_and_store_crl(state).await;
        if result.is_err() && was_pending {
            state
                .pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Ok(mut f) = state.failed_at.lock() {
            *f = result.is_err().then(std::time::Instant::now);
        }
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("onramp_crl_generations_total", "reason" => reason, "outcome" => outcome)
            .increment(1);
        result
    }

    async fn sign_and_store_crl(&self, state: &RevocationState) -> Result<()> {
        let t = now();
        let revoked: Vec<RevokedSerial> = self
            .inner
            .store
            .revoked_own_certificates(t)
            .await?
            .into_iter()
            .map(|r| RevokedSerial {
                serial: r.serial,
                revoked_at: r.revoked_at,
                reason: r.reason,
            })
            .collect();
        let all = self.authorities();
        let active_id = all.active().issuing_ca_id();
        let mut signed = HashMap::new();
        let mut active_result = Ok(());
        // Every CA signs the same list: serials are random 128-bit numbers
        // unique across Onramp's CAs, so a relying party that checks one
        // CA's certificate against its CRL finds only its own entries there.
        for (_, ca) in all.all() {
            let id = ca.issuing_ca_id();
            let previous = self
                .crl_of(&id)
                .map(|c| c.number)
                .or_else(|| ca.saved_crl().and_then(|d| crl_info(&d).ok()?.crl_number));
            let number = next_crl_number(previous, t.saturating_mul(1000));
            let next_update = t + state.settings.crl_validity_secs.max(60);
            let der = match ca.sign_crl(&CrlRequest {
                revoked: &revoked,
                this_update: t,
                next_update,
                crl_number: number,
            }) {
                Ok(der) => der,
                Err(e) => {
                    if id == active_id {
                        active_result = Err(e.into());
                    } else {
                        tracing::warn!(ca = %id, error = %e, "could not sign this issuing CA's CRL");
                    }
                    continue;
                }
            };
            // Served even if it cannot be kept: the next one is numbered above
            // it from memory, and a restart signs a new one anyway.
            if let Err(e) = ca.save_crl(&der) {
                tracing::warn!(error = %e, "could not keep the CRL in the CA directory");
            }
            signed.insert(
                id,
                Arc::new(CurrentCrl {
                    der,
                    number,
                    this_update: t,
                    next_update,
                    entries: revoked.len(),
                }),
            );
        }
        if let Some(crl) = signed.get(&active_id) {
            metrics::gauge!("onramp_crl_age_seconds").set(0.0);
            metrics::gauge!("onramp_crl_entries").set(crl.entries as f64);
            tracing::info!(
                number = crl.number,
                entries = crl.entries,
                next_update = crl.next_update,
                cas = signed.len(),
                "signed a new CRL"
            );
        }
        if let Ok(mut c) = state.crls.write() {
            // A CA that failed keeps its previous CRL.
            c.retain(|id, _| all.by_id(id).is_some());
            c.extend(signed);
        }
        active_result
    }

    fn renew_ocsp_responder_if_due(&self) -> Result<()> {
        let Some(state) = self.revocation() else {
            return Ok(());
        };
        let t = now();
        let validity = i64::from(state.settings.ocsp_signer_validity_days.max(1)) * 86_400;
        let all = self.authorities();
        let active_id = all.active().issuing_ca_id();
        for (_, ca) in all.all() {
            let id = ca.issuing_ca_id();
            let due = state
                .responders
                .read()
                .ok()
                .map(|r| r.get(&id).is_none_or(|r| r.not_after() - t <= validity / 3))
                .unwrap_or(true);
            if !due {
                continue;
            }
            let (responder, issued) = match ca
                .ensure_ocsp_responder(state.settings.ocsp_signer_validity_days, t)
            {
                Ok(r) => r,
                Err(e) if id != active_id => {
                    tracing::warn!(ca = %id, error = %e, "could not issue this issuing CA's OCSP signer");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if issued {
                tracing::info!(
                    ca = %id,
                    not_after = responder.not_after(),
                    "issued a new OCSP signing certificate"
                );
                metrics::counter!("onramp_ocsp_signer_renewals_total").increment(1);
            }
            if let Ok(mut r) = state.responders.write() {
                r.insert(id, Arc::new(responder));
            }
        }
        if let Ok(mut r) = state.responders.write() {
            r.retain(|id, _| all.by_id(id).is_some());
        }
        Ok(())
    }

    /// Answers one DER OCSP request with a DER OCSP response: a signed
    /// answer per certificate asked about, `malformedRequest` for anything
    /// unparsable, `internalError` when the registry cannot be read.
    pub async fn ocsp_response(&self, request_der: &[u8]) -> Vec<u8> {
        let count = |status: &'static str| {
            metrics::counter!("onramp_ocsp_responses_total", "status" => status).increment(1);
        };
        let Some(state) = self.revocation() else {
            count("internal_error");
            return internal_error_response();
        };
        let request = match parse_ocsp_request(request_der) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                count("malformed");
                return malformed_request_response();
            }
        };
        // The CA the request asks about answers (through its own signer);
        // queries naming another issuer in the same request get `unknown`.
        let all = self.authorities();
        let issuers: Vec<(String, IssuerId)> = all
            .all()
            .filter_map(|(_, ca)| {
                Some((
                    ca.issuing_ca_id(),
                    IssuerId::from_cert(ca.issuing_der()).ok()?,
                ))
            })
            .collect();
        let chosen = request
            .queries
            .iter()
            .find_map(|q| issuers.iter().find(|(_, i)| i.names(q)))
            .or_else(|| issuers.first());
        let responder = chosen.and_then(|(id, _)| {
            state
                .responders
                .read()
                .ok()
                .and_then(|r| r.get(id).cloned())
        });
        let (Some((_, issuer)), Some(responder)) = (chosen, responder) else {
            count("internal_error");
            return internal_error_response();
        };
        let mut statuses = Vec::with_capacity(request.queries.len());
        for q in &request.queries {
            if !issuer.names(q) {
                statuses.push(OcspStatus::Unknown);
                continue;
            }
            match self.certificate_status(&q.serial).await {
                Ok(s) => statuses.push(s),
                Err(e) => {
                    tracing::warn!(error = %e, "OCSP: the registry could not be read");
                    count("internal_error");
                    return internal_error_response();
                }
            }
        }
        let t = now();
        match responder.respond(
            &request,
            &statuses,
            t,
            t + state.settings.ocsp_validity_secs.max(60),
        ) {
            Ok(der) => {
                for s in &statuses {
                    count(s.label());
                }
                der
            }
            Err(e) => {
                tracing::warn!(error = %e, "OCSP: signing the response failed");
                count("internal_error");
                internal_error_response()
            }
        }
    }

    /// The status of a certificate serial of Onramp's own CA.
    async fn certificate_status(&self, serial: &str) -> Result<OcspStatus> {
        let store = &self.inner.store;
        if let Some(c) = store.get_certificate(serial).await? {
            if c.issuer_ca.is_some() {
                // Issued by a registered manufacturer CA, not by this one.
                return Ok(OcspStatus::Unknown);
            }
            return Ok(match (c.status, c.revoked_at) {
                (onramp_domain::CertStatus::Revoked, at) => OcspStatus::Revoked {
                    at: at.unwrap_or(c.issued_at),
                    reason: reason_code(c.revocation_reason.as_deref().unwrap_or("unspecified")),
                },
                _ => OcspStatus::Good,
            });
        }
        if let Some(c) = store.get_claim_certificate(serial).await? {
            return Ok(match (c.status, c.revoked_at) {
                (onramp_domain::CertStatus::Revoked, at) => OcspStatus::Revoked {
                    at: at.unwrap_or(c.created_at),
                    reason: 0,
                },
                _ => OcspStatus::Good,
            });
        }
        Ok(OcspStatus::Unknown)
    }
}
