//! SCEP (RFC 8894) under `/scep`: GetCACaps, GetCACert (the SCEP RA's
//! certificate with the issuing CA chain) and PKIOperation. A PKCSReq
//! enrols through the same service call as EST `simpleenroll`, with the
//! CSR's serial number and challenge password as the token credential; a
//! RenewalReq, signed with the device's current key and certificate,
//! renews through the same call as `simplereenroll`. Refusals are counted,
//! rate-limited and audited there, as for EST; the device gets a signed
//! CertRep with pkiStatus FAILURE.

use crate::AppState;
use crate::server::SourceAddr;
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use onramp_pki::scep::{
    CA_CAPS, CertRepStatus, FailInfo, MAX_MESSAGE_BYTES, MessageType, csr_credential,
    parse_pki_message,
};
use onramp_service::EnrolCredential;
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/scep", get(scep_get).post(scep_post))
        .route("/scep/pkiclient.exe", get(scep_get).post(scep_post))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
}

#[derive(Debug, Deserialize)]
struct ScepQuery {
    operation: Option<String>,
    message: Option<String>,
}

fn bad(msg: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

async fn scep_get(
    State(state): State<AppState>,
    Extension(source): Extension<SourceAddr>,
    Query(q): Query<ScepQuery>,
) -> Response {
    match q.operation.as_deref() {
        Some("GetCACaps") => ([(header::CONTENT_TYPE, "text/plain")], CA_CAPS).into_response(),
        Some("GetCACert") => {
            let ca = state.onramp.ca();
            let ra = match ca.ensure_scep_ra(onramp_service::now()) {
                Ok((ra, _)) => ra,
                Err(e) => {
                    tracing::error!(error = %e, "SCEP: the RA certificate is not available");
                    return (StatusCode::SERVICE_UNAVAILABLE, "SCEP is not available\n")
                        .into_response();
                }
            };
            let mut certs: Vec<&[u8]> = vec![&ra.cert_der];
            certs.extend(ca.chain_der().iter().map(Vec::as_slice));
            match onramp_pki::certs_only_pkcs7(&certs) {
                Ok(p7) => (
                    [(header::CONTENT_TYPE, "application/x-x509-ca-ra-cert")],
                    p7,
                )
                    .into_response(),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "GetCACert failed\n").into_response(),
            }
        }
        Some("PKIOperation") => {
            use base64::Engine;
            let Some(m) = q.message else {
                return bad("PKIOperation over GET needs message=");
            };
            let Ok(der) = base64::engine::general_purpose::STANDARD.decode(m.trim()) else {
                return bad("message is not base64");
            };
            pki_operation(&state, &source, &der).await
        }
        _ => bad("unknown SCEP operation"),
    }
}

async fn scep_post(
    State(state): State<AppState>,
    Extension(source): Extension<SourceAddr>,
    Query(q): Query<ScepQuery>,
    body: Bytes,
) -> Response {
    if q.operation.as_deref() != Some("PKIOperation") {
        return bad("POST is for operation=PKIOperation");
    }
    pki_operation(&state, &source, &body).await
}

async fn pki_operation(state: &AppState, source: &SourceAddr, der: &[u8]) -> Response {
    let message = match parse_pki_message(der) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "SCEP: not a PKIMessage");
            metrics::counter!("onramp_scep_requests_total", "outcome" => "malformed").increment(1);
            return bad("the body is not a SCEP PKIMessage");
        }
    };
    let ca = state.onramp.ca();
    let ra = match ca.ensure_scep_ra(onramp_service::now()) {
        Ok((ra, _)) => ra,
        Err(e) => {
            tracing::error!(error = %e, "SCEP: the RA certificate is not available");
            return (StatusCode::SERVICE_UNAVAILABLE, "SCEP is not available\n").into_response();
        }
    };
    let source = source.0.ip().to_string();
    let status = answer(state, &ra, &message, &source).await;
    let outcome = match &status {
        CertRepStatus::Success(_) => "success",
        CertRepStatus::Failure(_) => "failure",
        CertRepStatus::Pending => "pending",
    };
    metrics::counter!("onramp_scep_requests_total", "outcome" => outcome).increment(1);
    match ra.cert_rep(&message, &status) {
        Ok(rep) => ([(header::CONTENT_TYPE, "application/x-pki-message")], rep).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "SCEP: the CertRep could not be built");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the reply could not be built\n",
            )
                .into_response()
        }
    }
}

async fn answer(
    state: &AppState,
    ra: &onramp_pki::scep::ScepRa,
    message: &onramp_pki::scep::PkiMessage,
    source: &str,
) -> CertRepStatus {
    if let Err(e) = message.verify() {
        tracing::debug!(error = %e, transaction = %message.transaction_id, "SCEP: the message does not verify");
        return CertRepStatus::Failure(FailInfo::BadMessageCheck);
    }
    // The certificate can only travel encrypted to an RSA key: refuse
    // before anything is issued.
    if !message.signer_key_is_rsa() {
        return CertRepStatus::Failure(FailInfo::BadAlg);
    }
    let renewing = match message.message_type {
        MessageType::PkcsReq => false,
        MessageType::RenewalReq => true,
        // Nothing is ever left pending, so there is nothing to poll for.
        _ => return CertRepStatus::Failure(FailInfo::BadCertId),
    };
    let csr = match ra.open_envelope(&message.content) {
        Ok(csr) => csr,
        Err(e) => {
            tracing::debug!(error = %e, transaction = %message.transaction_id, "SCEP: the envelope does not open");
            return CertRepStatus::Failure(FailInfo::BadMessageCheck);
        }
    };
    let enrolled = if renewing {
        let credential = EnrolCredential::ClientCert {
            chain: vec![message.signer_cert_der.clone()],
        };
        state
            .onramp
            .simple_reenroll(&credential, &csr, source)
            .await
    } else {
        let credential = match csr_credential(&csr) {
            Some((username, token)) => EnrolCredential::Token { username, token },
            None => EnrolCredential::None,
        };
        state.onramp.simple_enroll(&credential, &csr, source).await
    };
    match enrolled {
        Ok(e) => CertRepStatus::Success(e.cert_der),
        Err(e) => {
            tracing::info!(error = %e, transaction = %message.transaction_id, "SCEP request refused");
            CertRepStatus::Failure(FailInfo::BadRequest)
        }
    }
}
