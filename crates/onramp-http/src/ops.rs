//! Liveness, readiness and Prometheus metrics, and the plain-HTTP
//! operations listener that serves them to probes and scrapers.

use crate::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Probes and scrapers need few connections; more are closed at once.
const OPS_MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this; an idle keep-alive connection
/// is closed after it too.
const OPS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection gets to finish its request at shutdown.
const OPS_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub fn metrics_routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Serves `app` over plain HTTP/1.1 on `listener` until `shutdown` resolves.
/// Meant for a loopback or cluster-internal address: there is no TLS and no
/// authentication, only a connection cap and a header deadline.
pub async fn serve_ops(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(OPS_MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "ops accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%addr, "ops connection refused: too many open");
            continue;
        };
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // Handlers that rate-limit or audit by source (SCEP) read it.
                req.extensions_mut().insert(crate::server::SourceAddr(addr));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(OPS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let stopping = async {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%addr, error = %e, "ops connection ended with an error");
                    }
                    return;
                }
                () = stopping => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(OPS_SHUTDOWN_GRACE, conn).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.onramp.readiness().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(
                serde_json::json!({"status": "ready", "database": "writable", "ca": "loaded"}),
            ),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Err(e) = state.onramp.refresh_fleet_gauges().await {
        tracing::warn!(error = %e, "fleet gauges not refreshed");
    }
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled\n").into_response(),
    }
}
