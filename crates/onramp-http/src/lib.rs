//! Onramp's HTTPS edge: EST (RFC 7030), the REST management API, health,
//! readiness and metrics. Handlers extract, call a service, and map the
//! service's error to a status in one place per protocol; they hold no
//! business rule and no SQL.

mod api;
mod error;
mod est;
mod jobs_api;
mod openapi;
mod ops;
mod server;

pub use openapi::openapi_json;
pub use server::{BodyTimeout, ClientChain, HttpLimits, SourceAddr, serve, tls_config};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use onramp_service::Onramp;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub onramp: Onramp,
    pub metrics: Option<PrometheusHandle>,
}

/// The whole HTTPS application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(est::routes())
        .merge(api::routes())
        .merge(jobs_api::routes())
        .merge(ops::routes())
        .with_state(state)
}
