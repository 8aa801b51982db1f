//! Revocation status for relying parties: the issuing CA's CRL
//! (`/crl/<issuing CA id>.crl`, `/crl/current.crl`) and the OCSP responder
//! (RFC 6960: `GET /ocsp/{base64 request}`, `POST /ocsp`). No credential is
//! asked for; both are served on the HTTPS listener and, when configured, on
//! the plain-HTTP revocation listener.

use crate::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use onramp_pki::ocsp::{MAX_REQUEST_BYTES, decode_get_request, malformed_request_response};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/crl/{name}", get(crl))
        .route("/ocsp", post(ocsp_post).get(ocsp_get_empty))
        .route("/ocsp/", get(ocsp_get_empty))
        .route("/ocsp/{*request}", get(ocsp_get))
        .layer(DefaultBodyLimit::disable())
}

const PKIX_CRL: &str = "application/pkix-crl";
const OCSP_RESPONSE: &str = "application/ocsp-response";
const OCSP_REQUEST: &str = "application/ocsp-request";

async fn crl(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    // `current.crl` is the active issuing CA's; `<id>.crl` names any
    // issuing CA Onramp keeps, previous and retired ones included.
    let id = match name.strip_suffix(".crl") {
        Some("current") => state.onramp.ca().issuing_ca_id(),
        Some(id) if state.onramp.authorities().by_id(id).is_some() => id.to_string(),
        _ => return (StatusCode::NOT_FOUND, "no such CRL\n").into_response(),
    };
    let Some(current) = state.onramp.crl_of(&id) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the CRL is not available yet\n",
        )
            .into_response();
    };
    metrics::counter!("onramp_crl_downloads_total").increment(1);
    let mut resp = (StatusCode::OK, current.der.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PKIX_CRL));
    // A revocation shows up within seconds: caches must ask again.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", current.number)) {
        h.insert(header::ETAG, v);
    }
    resp
}

fn ocsp_answer(der: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, der).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OCSP_RESPONSE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn malformed() -> Response {
    metrics::counter!("onramp_ocsp_responses_total", "status" => "malformed").increment(1);
    ocsp_answer(malformed_request_response())
}

async fn ocsp_get_empty() -> Response {
    malformed()
}

async fn ocsp_get(State(state): State<AppState>, Path(request): Path<String>) -> Response {
    match decode_get_request(&request) {
        Ok(der) => ocsp_answer(state.onramp.ocsp_response(&der).await),
        Err(_) => malformed(),
    }
}

async fn ocsp_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref().is_some_and(|t| t != OCSP_REQUEST) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an OCSP request is sent as application/ocsp-request\n",
        )
            .into_response();
    }
    match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(der) => ocsp_answer(state.onramp.ocsp_response(&der).await),
        Err(_) => malformed(),
    }
}
