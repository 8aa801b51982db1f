//! The one place service errors become HTTP responses: JSON for the API,
//! plain text for EST (RFC 7030 §4.2.3).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onramp_service::ServiceError;

fn status_of(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ServiceError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn public_message(e: &ServiceError) -> String {
    match e {
        // Internal details go to the log, not to the client.
        ServiceError::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            "internal error".into()
        }
        other => other.to_string(),
    }
}

/// A management API error: `{"error": {"code": "...", "message": "..."}}`.
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let code = self.0.code();
        let body = serde_json::json!({"error": {"code": code, "message": public_message(&self.0)}});
        let mut resp = (status, axum::Json(body)).into_response();
        decorate(&self.0, &mut resp, "Bearer realm=\"onramp-api\"");
        resp
    }
}

/// An EST error: a readable text reason, with the RFC's status codes.
/// Rate limiting answers 503 with Retry-After (RFC 7030 §4.2.3); a serial
/// locked out after failed tokens answers 429 with Retry-After.
pub struct EstError(pub ServiceError);

impl From<ServiceError> for EstError {
    fn from(e: ServiceError) -> Self {
        EstError(e)
    }
}

impl IntoResponse for EstError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::RateLimited { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Conflict(_) | ServiceError::NotFound(_) => StatusCode::FORBIDDEN,
            other => status_of(other),
        };
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", public_message(&self.0)),
        )
            .into_response();
        decorate(&self.0, &mut resp, "Basic realm=\"onramp-est\"");
        resp
    }
}

fn decorate(e: &ServiceError, resp: &mut Response, challenge: &'static str) {
    match e {
        ServiceError::Unauthorized(_) => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        ServiceError::RateLimited { retry_after_secs }
        | ServiceError::Unavailable { retry_after_secs }
        | ServiceError::TooManyFailures { retry_after_secs } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        _ => {}
    }
}
