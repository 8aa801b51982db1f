use onramp_store::StoreError;

/// Service failures, mapped to a protocol's errors in one place per protocol.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong (malformed input, a weak key).
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The registry could not take the change now (a locked database); nothing
    /// was written and the same request may be sent again.
    #[error("the registry is busy; retry in {retry_after_secs} s")]
    Unavailable { retry_after_secs: u64 },
    /// Too many failed credentials for this serial or address lately.
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    TooManyFailures { retry_after_secs: u64 },
    /// The request body is over its limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The stable machine-readable code: the API's `error.code` and the
    /// CLI's `--json` error code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Unauthorized(_) => "unauthorized",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::RateLimited { .. } | ServiceError::TooManyFailures { .. } => {
                "rate_limited"
            }
            ServiceError::Unavailable { .. } => "unavailable",
            ServiceError::PayloadTooLarge(_) => "payload_too_large",
            ServiceError::Timeout(_) => "timeout",
            ServiceError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(format!("{what} not found")),
            StoreError::Conflict(msg) => ServiceError::Conflict(msg),
            StoreError::Transition(t) => ServiceError::Conflict(t.to_string()),
            StoreError::TokenNotUsable => {
                ServiceError::Unauthorized("the enrolment token can no longer be used".into())
            }
            StoreError::CertificateNotActive => {
                ServiceError::Forbidden("the client certificate is no longer active".into())
            }
            StoreError::Busy(detail) => {
                tracing::warn!(error = %detail, "the registry database is busy");
                ServiceError::Unavailable {
                    retry_after_secs: 1,
                }
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<onramp_pki::PkiError> for ServiceError {
    fn from(e: onramp_pki::PkiError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}
