//! Outbound events (webhook subscriptions, events, deliveries and dead
//! letters) and audit checks (runs, findings, suppression) in the REST API.

use crate::AppState;
use crate::api::{Authenticated, JsonBody, Params, checked_page};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use onramp_domain::event::Event;
use onramp_service::{AuditFinding, CreatedSubscription, EventDelivery, EventSubscription};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/event-subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/api/v1/event-subscriptions/{id}",
            delete(delete_subscription),
        )
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/event-deliveries", get(list_deliveries))
        .route(
            "/api/v1/event-deliveries/{event_id}/{subscription_id}/replay",
            post(replay_delivery),
        )
        .route("/api/v1/audit-checks/run", post(run_audit_checks))
        .route("/api/v1/audit-findings", get(list_findings))
        .route(
            "/api/v1/audit-findings/{id}/suppression",
            post(suppress_finding).delete(unsuppress_finding),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionCreate {
    /// Where events are POSTed (http or https).
    pub url: String,
    /// `*` or a comma-separated list of event types (`certificate.expiring`, ...).
    #[serde(default = "all_types")]
    pub event_types: String,
}

fn all_types() -> String {
    "*".into()
}

#[utoipa::path(post, path = "/api/v1/event-subscriptions", request_body = SubscriptionCreate,
    responses((status = 201, description = "The subscription and its signing secret, shown only here"),
        (status = 400), (status = 403)),
    security(("api_key" = [])))]
pub async fn create_subscription(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<SubscriptionCreate>,
) -> Result<(StatusCode, Json<CreatedSubscription>), ApiError> {
    let created = s
        .onramp
        .create_event_subscription(&caller, &body.url, &body.event_types)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/event-subscriptions",
    responses((status = 200, description = "The tenant's subscriptions (no secrets)")),
    security(("api_key" = [])))]
pub async fn list_subscriptions(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<EventSubscription>>, ApiError> {
    Ok(Json(s.onramp.list_event_subscriptions(&caller).await?))
}

#[utoipa::path(delete, path = "/api/v1/event-subscriptions/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted, with its undelivered deliveries"), (status = 404)),
    security(("api_key" = [])))]
pub async fn delete_subscription(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.onramp.delete_event_subscription(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPage {
    /// The last event id of the previous page.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/events", params(EventPage),
    responses((status = 200, description = "The tenant's events, oldest first")),
    security(("api_key" = [])))]
pub async fn list_events(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<EventPage>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    Ok(Json(s.onramp.list_events(&caller, &page).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// `pending`, `delivered` or `dead` (the dead letters).
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/event-deliveries", params(DeliveryFilter),
    responses((status = 200, description = "Deliveries, latest first"), (status = 400)),
    security(("api_key" = [])))]
pub async fn list_deliveries(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<DeliveryFilter>,
) -> Result<Json<Vec<EventDelivery>>, ApiError> {
    Ok(Json(
        s.onramp
            .list_event_deliveries(&caller, p.status.as_deref())
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/event-deliveries/{event_id}/{subscription_id}/replay",
    params(("event_id" = String, Path), ("subscription_id" = String, Path)),
    responses((status = 202, description = "Queued for delivery again"), (status = 404)),
    security(("api_key" = [])))]
pub async fn replay_delivery(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((event_id, subscription_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.onramp
        .replay_event_delivery(&caller, &event_id, &subscription_id)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AuditRun {
    /// Check names to run; empty or absent: all.
    #[serde(default)]
    pub checks: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/audit-checks/run", request_body = AuditRun,
    responses((status = 200, description = "The open findings after the run"), (status = 400)),
    security(("api_key" = [])))]
pub async fn run_audit_checks(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<AuditRun>,
) -> Result<Json<Vec<AuditFinding>>, ApiError> {
    Ok(Json(
        s.onramp.run_audit_checks_as(&caller, &body.checks).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FindingFilter {
    /// `open` or `resolved`; absent: both.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit-findings", params(FindingFilter),
    responses((status = 200, description = "Findings by check and resource"), (status = 400)),
    security(("api_key" = [])))]
pub async fn list_findings(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<FindingFilter>,
) -> Result<Json<Vec<AuditFinding>>, ApiError> {
    Ok(Json(
        s.onramp
            .list_audit_findings(&caller, p.status.as_deref())
            .await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Suppression {
    /// Why the finding is accepted (kept with it and in the audit log).
    pub reason: String,
}

#[utoipa::path(post, path = "/api/v1/audit-findings/{id}/suppression", params(("id" = String, Path)),
    request_body = Suppression,
    responses((status = 200, description = "The finding, suppressed"), (status = 400), (status = 404)),
    security(("api_key" = [])))]
pub async fn suppress_finding(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Suppression>,
) -> Result<Json<AuditFinding>, ApiError> {
    Ok(Json(
        s.onramp
            .suppress_audit_finding(&caller, &id, Some(&body.reason))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/audit-findings/{id}/suppression", params(("id" = String, Path)),
    responses((status = 200, description = "The finding, no longer suppressed"), (status = 404)),
    security(("api_key" = [])))]
pub async fn unsuppress_finding(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<AuditFinding>, ApiError> {
    Ok(Json(
        s.onramp.suppress_audit_finding(&caller, &id, None).await?,
    ))
}
