//! EST (RFC 7030): cacerts, simpleenroll, simplereenroll, csrattrs.

use crate::error::EstError;
use crate::{AppState, ClientChain, SourceAddr};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use onramp_pki::{base64_mime, certs_only_pkcs7, csr_attributes, decode_base64_lenient};
use onramp_service::{EnrolCredential, EnrolOperation, Enrolled, ServiceError};

/// A CSR is a few hundred bytes; 64 KiB leaves room for RSA-4096 and attributes.
const EST_BODY_LIMIT: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .route("/.well-known/est/simpleenroll", post(simpleenroll))
        .route("/.well-known/est/simplereenroll", post(simplereenroll))
        .layer(DefaultBodyLimit::disable())
}

/// Reads the request body up to [`EST_BODY_LIMIT`]; anything larger is a 413.
/// What is left unread is drained by the server before the refusal goes out.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ServiceError> {
    use http_body_util::BodyExt;
    let too_large = || {
        ServiceError::PayloadTooLarge(format!("the request body exceeds {EST_BODY_LIMIT} bytes"))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > EST_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.into_inner().is::<crate::BodyTimeout>() {
                ServiceError::Timeout("the request body did not arrive in time".into())
            } else {
                ServiceError::BadRequest("the request body could not be read".into())
            }
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > EST_BODY_LIMIT {
                return Err(too_large());
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf)
}

/// The CSR of an EST request: Content-Type, size and encoding checked.
async fn read_csr(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ServiceError> {
    check_content_type(headers)?;
    let body = read_body(headers, body).await?;
    decode_base64_lenient(&body).ok_or_else(|| {
        ServiceError::BadRequest("the body is not base64-encoded DER (RFC 7030 §4.2.1)".into())
    })
}

/// A request refused before the enrolment itself is counted and audited
/// like any other refusal.
async fn refused(
    state: &AppState,
    op: EnrolOperation,
    credential: &EnrolCredential,
    source: &str,
    e: ServiceError,
) -> Response {
    let e = state
        .onramp
        .enrolment_refused(op, credential, source, e)
        .await;
    EstError(e).into_response()
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
    // During a CA rollover every trusted issuing CA and its root, so
    // clients trust servers and peers on either side of it.
    let all = state.onramp.authorities().trusted_chains_der();
    let chain: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    let p7 = certs_only_pkcs7(&chain).map_err(ServiceError::from)?;
    // RFC 7030 §4.1.3 names the smime-type; strict EST clients check it.
    Ok(base64_body(
        "application/pkcs7-mime; smime-type=certs-only",
        &p7,
    ))
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
    body: Body,
) -> Result<Response, Response> {
    let op = EnrolOperation::SimpleEnroll;
    let source = source.0.ip().to_string();
    let credential = match credential(&headers, &chain) {
        Ok(c) => c,
        Err(e) => return Err(refused(&state, op, &EnrolCredential::None, &source, e).await),
    };
    let csr = match read_csr(&headers, body).await {
        Ok(csr) => csr,
        Err(e) => return Err(refused(&state, op, &credential, &source, e).await),
    };
    let enrolled = state
        .onramp
        .simple_enroll(&credential, &csr, &source)
        .await
        .map_err(|e| EstError(e).into_response())?;
    certs_only(&enrolled).map_err(IntoResponse::into_response)
}

async fn simplereenroll(
    State(state): State<AppState>,
    Extension(chain): Extension<ClientChain>,
    Extension(source): Extension<SourceAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let op = EnrolOperation::SimpleReenroll;
    let source = source.0.ip().to_string();
    let credential = if chain.0.is_empty() {
        EnrolCredential::None
    } else {
        EnrolCredential::ClientCert {
            chain: chain.0.to_vec(),
        }
    };
    let csr = match read_csr(&headers, body).await {
        Ok(csr) => csr,
        Err(e) => return Err(refused(&state, op, &credential, &source, e).await),
    };
    let enrolled = state
        .onramp
        .simple_reenroll(&credential, &csr, &source)
        .await
        .map_err(|e| EstError(e).into_response())?;
    certs_only(&enrolled).map_err(IntoResponse::into_response)
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
fn credential(headers: &HeaderMap, chain: &ClientChain) -> Result<EnrolCredential, ServiceError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bad = || {
            ServiceError::Unauthorized("the Authorization header is not valid HTTP Basic".into())
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
fn check_content_type(headers: &HeaderMap) -> Result<(), ServiceError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.starts_with("application/pkcs10") {
            return Err(ServiceError::BadRequest(format!(
                "Content-Type must be application/pkcs10, not `{}`",
                ct.chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .take(100)
                    .collect::<String>()
            )));
        }
    }
    Ok(())
}
