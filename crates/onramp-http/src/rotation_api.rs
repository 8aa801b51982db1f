//! Certificate rotation for operators: bulk rotation delivered as a job,
//! and the rotations of one thing (docs/lifecycle.md).

use crate::AppState;
use crate::api::{Authenticated, JsonBody};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use onramp_domain::rotation::RotationSelector;
use onramp_service::{JobDescription, RotateRequest, ServiceError};
use onramp_store::RotationRecord;
use serde::Deserialize;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/certificates/rotate", post(rotate_certificates))
        .route("/api/v1/devices/{thing}/rotations", get(list_rotations))
}

/// Which things to rotate (exactly one of the selectors) and how to pace it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateBody {
    pub thing_name: Option<String>,
    /// Every active thing of this device class (thing type).
    pub device_class: Option<String>,
    /// Every member of this thing group.
    pub thing_group: Option<String>,
    /// Things whose active certificate a registered CA issued (its id), or
    /// `onramp` for Onramp's own CA.
    pub ca: Option<String>,
    /// Things whose active certificate expires within this many days.
    pub expiring_within_days: Option<u32>,
    /// The job's id; default `rotate-<unix time>`.
    pub job_id: Option<String>,
    /// Paced rollout: at most this many things a minute.
    pub maximum_per_minute: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/certificates/rotate", request_body = RotateBody,
    responses((status = 201, description = "The rotation job, as GET /api/v1/jobs/{jobId} shows it"),
        (status = 400), (status = 404), (status = 409)),
    security(("api_key" = [])))]
pub async fn rotate_certificates(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<RotateBody>,
) -> Result<(StatusCode, Json<JobDescription>), ApiError> {
    let selector = RotationSelector::from_parts(
        body.thing_name,
        body.device_class,
        body.thing_group,
        body.ca,
        body.expiring_within_days,
    )
    .map_err(|e| ApiError(ServiceError::BadRequest(e)))?;
    let job = s
        .onramp
        .rotate_certificates(
            &caller,
            RotateRequest {
                selector,
                job_id: body.job_id,
                maximum_per_minute: body.maximum_per_minute,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/devices/{thing}/rotations", params(("thing" = String, Path)),
    responses((status = 200, description = "The thing's rotated certificates: pending, active, replaced or expired")),
    security(("api_key" = [])))]
pub async fn list_rotations(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
) -> Result<Json<Vec<RotationRecord>>, ApiError> {
    Ok(Json(s.onramp.list_rotations(&caller, &thing).await?))
}
