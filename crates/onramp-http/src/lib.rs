//! Onramp's HTTP edges: on the device-facing HTTPS listener EST (RFC 7030),
//! the REST management API, health and readiness; on the plain-HTTP
//! operations listener health, readiness and Prometheus metrics. The CRL and
//! the OCSP responder are on the HTTPS listener and on the optional
//! plain-HTTP revocation listener. Handlers
//! extract, call a service, and map the service's error to a status in one
//! place per protocol; they hold no business rule and no SQL.

mod api;
mod artifacts_api;
mod error;
mod est;
mod events_api;
mod jobs_api;
mod openapi;
mod ops;
mod revocation;
mod rotation_api;
mod scep;
mod server;

pub use openapi::openapi_json;
pub use ops::serve_ops;
pub use server::{
    BodyTimeout, ClientChain, HttpLimits, SourceAddr, serve, tls_config, tls_config_renewing,
    tls_config_with_roots,
};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use onramp_service::Onramp;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub onramp: Onramp,
    pub metrics: Option<PrometheusHandle>,
}

/// The whole HTTPS application. `/metrics` is on it only when
/// `metrics_on_https`: by default it is served by the operations listener
/// alone, so that the device-facing port does not show fleet figures.
pub fn router(state: AppState, metrics_on_https: bool) -> Router {
    let mut app = Router::new()
        .merge(est::routes())
        .merge(scep::routes())
        .merge(api::routes())
        .merge(jobs_api::routes())
        .merge(artifacts_api::routes())
        .merge(events_api::routes())
        .merge(rotation_api::routes())
        .merge(revocation::routes())
        .merge(ops::health_routes());
    if metrics_on_https {
        app = app.merge(ops::metrics_routes());
    }
    app.with_state(state)
}

/// The plain-HTTP `[pki] listen` application: the CRL, the OCSP responder
/// and SCEP, nothing else. They need no TLS: CRLs and OCSP responses are
/// signed, and SCEP carries its own security in the CMS layer (signed and
/// enveloped PKIMessages, RFC 8894 section 1.2), which is how SCEP clients
/// such as certmonger expect it served.
pub fn revocation_router(state: AppState) -> Router {
    Router::new()
        .merge(revocation::routes())
        .merge(scep::routes())
        .with_state(state)
}

/// The operations application: `/healthz`, `/readyz` and `/metrics`, nothing
/// else (no EST, no API, no OpenAPI document).
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .merge(ops::health_routes())
        .merge(ops::metrics_routes())
        .with_state(state)
}
