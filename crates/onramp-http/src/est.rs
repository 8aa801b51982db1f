//! EST (RFC 7030): cacerts, simpleenroll, simplereenroll, csrattrs.

use crate::error::EstError;
use crate::{AppState, ClientChain, SourceAddr};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use onramp_pki::{base64_mime, certs_only_pkcs7, csr_attributes, decode_base64_lenient};
use onramp_service::{EnrolCredential, Enrolled, ServiceError};

/// A CSR is a few hundred bytes; 64 KiB leaves room for RSA-4096 and attributes.
const EST_BODY_LIMIT: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .route("/.well-known/est/simpleenroll", post(simpleenroll))
        .route("/.well-known/est/simplereenroll", post(simplereenroll))
        .layer(DefaultBodyLimit::max(EST_BODY_LIMIT))
}

fn base64_body(content_type: &'static str, der: &[u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                HeaderValue::from_static("base64"),
            ),
        ],
        base64_mime(der),
    )
        .into_response()
}

async fn cacerts(State(state): State<AppState>) -> Result<Response, EstError> {
    let chain: Vec<&[u8]> = state
        .onramp
        .ca()
        .chain_der()
        .iter()
        .map(Vec::as_slice)
        .collect();
    let p7 = certs_only_pkcs7(&chain).map_err(ServiceError::from)?;
    Ok(base64_body("application/pkcs7-mime", &p7))
}

async fn csrattrs() -> Result<Response, EstError> {
    let der = csr_attributes().map_err(ServiceError::from)?;
    Ok(base64_body("application/csrattrs", &der))
}

async fn simpleenroll(
    State(state): State<AppState>,
    Extension(chain): Extension<ClientChain>,
    Extension(source): Extension<SourceAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, EstError> {
    let credential = credential(&headers, &chain)?;
    let csr = csr_from_body(&headers, &body)?;
    let enrolled = state
        .onramp
        .simple_enroll(&credential, &csr, &source.0.ip().to_string())
        .await?;
    certs_only(&enrolled)
}

async fn simplereenroll(
    State(state): State<AppState>,
    Extension(chain): Extension<ClientChain>,
    Extension(source): Extension<SourceAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, EstError> {
    let credential = if chain.0.is_empty() {
        EnrolCredential::None
    } else {
        EnrolCredential::ClientCert {
            chain: chain.0.to_vec(),
        }
    };
    let csr = csr_from_body(&headers, &body)?;
    let enrolled = state
        .onramp
        .simple_reenroll(&credential, &csr, &source.0.ip().to_string())
        .await?;
    certs_only(&enrolled)
}

fn certs_only(enrolled: &Enrolled) -> Result<Response, EstError> {
    let p7 = certs_only_pkcs7(&[&enrolled.cert_der]).map_err(ServiceError::from)?;
    Ok(base64_body(
        "application/pkcs7-mime; smime-type=certs-only",
        &p7,
    ))
}

/// HTTP Basic (user = serial number, password = token) wins over a client
/// certificate; with neither, the service refuses with 401.
fn credential(headers: &HeaderMap, chain: &ClientChain) -> Result<EnrolCredential, EstError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bad = || {
            EstError(ServiceError::Unauthorized(
                "the Authorization header is not valid HTTP Basic".into(),
            ))
        };
        let text = value.to_str().map_err(|_| bad())?;
        let encoded = text
            .strip_prefix("Basic ")
            .or_else(|| text.strip_prefix("basic "))
            .ok_or_else(bad)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, token) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(EnrolCredential::Token {
            username: username.to_string(),
            token: token.to_string(),
        });
    }
    if !chain.0.is_empty() {
        return Ok(EnrolCredential::ClientCert {
            chain: chain.0.to_vec(),
        });
    }
    Ok(EnrolCredential::None)
}

/// RFC 7030 §4.2.1: `application/pkcs10`, base64-encoded DER.
fn csr_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, EstError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.starts_with("application/pkcs10") {
            return Err(EstError(ServiceError::BadRequest(format!(
                "Content-Type must be application/pkcs10, not `{ct}`"
            ))));
        }
    }
    decode_base64_lenient(body).ok_or_else(|| {
        EstError(ServiceError::BadRequest(
            "the body is not base64-encoded DER (RFC 7030 §4.2.1)".into(),
        ))
    })
}
