//! The jobs part of the REST API: create, list, describe, cancel, pause,
//! resume and delete jobs, and list executions per job and per thing.

use crate::AppState;
use crate::api::{Authenticated, JsonBody, Listing, PageParams, Params, checked_page, listing};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use onramp_domain::job::JobExecution;
use onramp_service::{CreateJob, JobDescription, JobTargets, ServiceError};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs).post(create_job))
        .route(
            "/api/v1/jobs/{job_id}",
            get(describe_job).delete(delete_job),
        )
        .route("/api/v1/jobs/{job_id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{job_id}/pause", post(pause_job))
        .route("/api/v1/jobs/{job_id}/resume", post(resume_job))
        .route(
            "/api/v1/jobs/{job_id}/things/{thing}/cancel",
            post(cancel_job_execution),
        )
        .route("/api/v1/jobs/{job_id}/executions", get(list_job_executions))
        .route("/api/v1/things/{thing}/jobs", get(thing_jobs))
}

/// CreateJob. Besides the fields below, the body may carry the AWS
/// configuration members `timeoutConfig`, `jobExecutionsRetryConfig`,
/// `jobExecutionsRolloutConfig`, `abortConfig` and `schedulingConfig`
/// (`startTime`, `endTime`, `endBehavior`), and Onramp's `successConfirmation`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCreate {
    pub job_id: String,
    pub description: Option<String>,
    /// The job document: a JSON object of at most 32 KB.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    /// Thing names.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Thing groups: their members when the job is created (and later, with
    /// CONTINUOUS selection).
    #[serde(default)]
    pub thing_groups: Vec<String>,
    /// A dynamic group: registry fields, attributes and a condition on
    /// reported shadow state, e.g. `{"hardwareRevision": "b", "firmwareLt": "2.0"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub query: Option<onramp_domain::fleet::FleetQuery>,
    /// `SNAPSHOT` (default) or `CONTINUOUS`.
    #[serde(default)]
    pub target_selection: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobCreate,
    responses((status = 201, description = "The job, with its execution counts"), (status = 400), (status = 404), (status = 409)),
    security(("api_key" = [])))]
pub async fn create_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(body): JsonBody<JobCreate>,
) -> Result<(StatusCode, Json<JobDescription>), ApiError> {
    let document = serde_json::to_vec(&body.document)
        .map_err(|e| ApiError(ServiceError::BadRequest(e.to_string())))?;
    let continuous = match body.target_selection.as_deref() {
        None | Some("SNAPSHOT") => false,
        Some("CONTINUOUS") => true,
        Some(other) => {
            return Err(ApiError(ServiceError::BadRequest(format!(
                "targetSelection must be SNAPSHOT or CONTINUOUS, not {other:?}"
            ))));
        }
    };
    let job = s
        .onramp
        .create_job(
            &caller,
            CreateJob {
                job_id: body.job_id,
                description: body.description,
                document,
                targets: JobTargets {
                    things: body.targets,
                    thing_groups: body.thing_groups,
                    query: body.query,
                },
                continuous,
                config: serde_json::Value::Object(body.config),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/jobs", params(PageParams),
    responses((status = 200, description = "A page of jobs: {items, next}")), security(("api_key" = [])))]
pub async fn list_jobs(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<PageParams>,
) -> Result<Json<Listing<JobDescription>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    let items = s.onramp.list_jobs(&caller, &page).await?;
    Ok(Json(listing(items, &page, |j| j.job_id.clone())))
}

#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", params(("job_id" = String, Path)),
    responses((status = 200, description = "The job, with its execution counts by status"), (status = 404)),
    security(("api_key" = [])))]
pub async fn describe_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
) -> Result<Json<JobDescription>, ApiError> {
    Ok(Json(s.onramp.describe_job(&caller, &job_id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CancelParams {
    /// Also cancel executions already IN_PROGRESS.
    pub force: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/cancel", params(("job_id" = String, Path), CancelParams),
    responses((status = 200, description = "The canceled job"), (status = 404), (status = 409)),
    security(("api_key" = [])))]
pub async fn cancel_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
    Params(p): Params<CancelParams>,
) -> Result<Json<JobDescription>, ApiError> {
    Ok(Json(
        s.onramp
            .cancel_job(&caller, &job_id, p.force.unwrap_or(false))
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/pause", params(("job_id" = String, Path)),
    responses((status = 200, description = "The job, with `rolloutPaused: true`: no execution is released until it is resumed"),
        (status = 404), (status = 409, description = "The job is COMPLETED or CANCELED, or already paused")),
    security(("api_key" = [])))]
pub async fn pause_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
) -> Result<Json<JobDescription>, ApiError> {
    Ok(Json(s.onramp.pause_job(&caller, &job_id).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/resume", params(("job_id" = String, Path)),
    responses((status = 200, description = "The job, its rollout continuing at its configured pace"),
        (status = 404), (status = 409, description = "The job is COMPLETED or CANCELED, or not paused")),
    security(("api_key" = [])))]
pub async fn resume_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
) -> Result<Json<JobDescription>, ApiError> {
    Ok(Json(s.onramp.resume_job(&caller, &job_id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete a job in any status: it is canceled first, its in-progress
    /// executions too.
    pub force: Option<bool>,
}

#[utoipa::path(delete, path = "/api/v1/jobs/{job_id}", params(("job_id" = String, Path), DeleteParams),
    responses((status = 204, description = "The job, its executions and targets are deleted; its id may be used again"),
        (status = 404), (status = 409, description = "The job is neither COMPLETED nor CANCELED, and force was not given")),
    security(("api_key" = [])))]
pub async fn delete_job(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
    Params(p): Params<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    s.onramp
        .delete_job(&caller, &job_id, p.force.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/executions", params(("job_id" = String, Path), PageParams),
    responses((status = 200, description = "A page of executions in thing order: {items, next}"), (status = 404)),
    security(("api_key" = [])))]
pub async fn list_job_executions(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(job_id): Path<String>,
    Params(p): Params<PageParams>,
) -> Result<Json<Listing<JobExecution>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    let items = s
        .onramp
        .list_job_executions(&caller, &job_id, &page)
        .await?;
    Ok(Json(listing(
        items,
        &page,
        onramp_store::execution_cursor_of,
    )))
}

#[utoipa::path(get, path = "/api/v1/things/{thing}/jobs", params(("thing" = String, Path)),
    responses((status = 200, description = "The thing's pending executions"), (status = 404)), security(("api_key" = [])))]
pub async fn thing_jobs(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
) -> Result<Json<Vec<JobExecution>>, ApiError> {
    Ok(Json(
        s.onramp.thing_pending_executions(&caller, &thing).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/things/{thing}/cancel",
    params(("job_id" = String, Path), ("thing" = String, Path), CancelParams),
    responses((status = 200, description = "The canceled execution"), (status = 404), (status = 409)),
    security(("api_key" = [])))]
pub async fn cancel_job_execution(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((job_id, thing)): Path<(String, String)>,
    Params(p): Params<CancelParams>,
) -> Result<Json<JobExecution>, ApiError> {
    Ok(Json(
        s.onramp
            .cancel_job_execution(&caller, &job_id, &thing, p.force.unwrap_or(false))
            .await?,
    ))
}
