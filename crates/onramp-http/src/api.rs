//! The REST management API under `/api/v1`. Bearer API keys; JSON in and out.

use crate::error::ApiError;
use crate::{AppState, SourceAddr};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use onramp_domain::{
    AllowlistEntry, ApiKey, AuditEntry, AuditQuery, CaStatus, CertStatus, Certificate,
    ClaimCertificate, Device, DeviceFilter, DeviceProfile, DeviceStatus, EnrolmentToken,
    LifecycleAction, Outcome, Page, PolicyTarget, ProvisioningTemplateRecord, RegisteredCa, Role,
    StoredPolicy, TemplateKind, TemplateVersion,
};
use onramp_service::{
    Caller, CreatedApiKey, CreatedClaim, CreatedToken, ServiceError, ShadowOp, ShadowTopic,
    TemplateDetail, TemplateSettings, TokenRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

const JSON_LIMIT: usize = 1024 * 1024;
const CSV_LIMIT: usize = 16 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/devices", get(list_devices))
        .route(
            "/api/v1/devices/{thing}",
            get(get_device).patch(patch_device),
        )
        .route("/api/v1/devices/{thing}/suspend", post(suspend_device))
        .route(
            "/api/v1/devices/{thing}/reactivate",
            post(reactivate_device),
        )
        .route(
            "/api/v1/devices/{thing}/decommission",
            post(decommission_device),
        )
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/allowlist", get(list_allowlist).post(allowlist_add))
        .route(
            "/api/v1/allowlist/{serial}",
            axum::routing::delete(allowlist_remove),
        )
        .route(
            "/api/v1/allowlist/import",
            post(allowlist_import).layer(DefaultBodyLimit::max(CSV_LIMIT)),
        )
        .route("/api/v1/certificates", get(list_certificates))
        .route("/api/v1/certificates/{serial}", get(get_certificate))
        .route(
            "/api/v1/certificates/{serial}/revoke",
            post(revoke_certificate),
        )
        .route("/api/v1/ca/chain", get(ca_chain))
        .route("/api/v1/ca/issuing", get(list_issuing_cas))
        .route("/api/v1/ca/rollover", post(roll_over_ca))
        .route("/api/v1/ca/issuing/{id}/retire", post(retire_ca))
        .route("/api/v1/audit", get(query_audit))
        .route("/api/v1/apikeys", get(list_api_keys).post(create_api_key))
        .route(
            "/api/v1/apikeys/{id}",
            axum::routing::delete(revoke_api_key),
        )
        .route(
            "/api/v1/things/{thing}/shadow",
            get(shadow_get).post(shadow_update).delete(shadow_delete),
        )
        .route("/api/v1/things/{thing}/shadows", get(shadow_list))
        .route("/api/v1/shadows/query", get(shadow_query))
        .route("/api/v1/things/{thing}/shadow/history", get(shadow_history))
        .route("/api/v1/policies", get(list_policies))
        .route("/api/v1/policies/{name}", get(get_policy).put(put_policy))
        .route("/api/v1/policies/{name}/attachments", post(attach_policy))
        .route(
            "/api/v1/policies/{name}/attachments/{kind}/{target}",
            axum::routing::delete(detach_policy),
        )
        .route(
            "/api/v1/templates",
            get(list_templates).post(create_template),
        )
        .route(
            "/api/v1/templates/{name}",
            get(get_template).patch(patch_template),
        )
        .route(
            "/api/v1/templates/{name}/versions",
            post(add_template_version),
        )
        .route(
            "/api/v1/templates/{name}/default-version",
            axum::routing::put(set_template_default_version),
        )
        .route("/api/v1/claims", get(list_claims).post(create_claim))
        .route("/api/v1/claims/expiring", get(expiring_claims))
        .route("/api/v1/claims/{serial}/revoke", post(revoke_claim))
        .route("/api/v1/claims/{serial}/rotate", post(rotate_claim))
        .route("/api/v1/cas/registration-code", get(ca_registration_code))
        .route("/api/v1/cas", get(list_cas).post(register_ca))
        .route("/api/v1/cas/{id}", axum::routing::patch(patch_ca))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
}

/// The caller, from `Authorization: Bearer <api key>`.
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let source = parts
            .extensions
            .get::<SourceAddr>()
            .map(|s| s.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError(ServiceError::Unauthorized(
                    "an API key is required: Authorization: Bearer <key>".into(),
                ))
            })?;
        let key = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError(ServiceError::Unauthorized(
                "the Authorization header must be `Bearer <key>`".into(),
            ))
        })?;
        Ok(Authenticated(
            state
                .onramp
                .authenticate_api_key(key.trim(), &source)
                .await?,
        ))
    }
}

/// JSON body whose rejections use the API's error shape.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(ApiError(json_rejection(rejection))),
        }
    }
}

/// Text body whose rejections use the API's error shape.
pub struct TextBody(pub String);

impl<S: Send + Sync> axum::extract::FromRequest<S> for TextBody {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match String::from_request(req, state).await {
            Ok(text) => Ok(TextBody(text)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError(ServiceError::PayloadTooLarge(format!(
                    "the request body exceeds {CSV_LIMIT} bytes"
                ))))
            }
            Err(r) => Err(ApiError(ServiceError::BadRequest(r.body_text()))),
        }
    }
}

/// Query string whose rejections use the API's error shape.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(rejection) => Err(ApiError(ServiceError::BadRequest(format!(
                "invalid query string: {}",
                rejection.body_text()
            )))),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ServiceError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ServiceError::PayloadTooLarge(format!("the request body exceeds {JSON_LIMIT} bytes"))
        }
        _ if is_body_timeout(&r) => {
            ServiceError::Timeout("the request body did not arrive in time".into())
        }
        _ => ServiceError::BadRequest(format!("invalid JSON body: {}", r.body_text())),
    }
}

fn is_body_timeout(r: &JsonRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(e) = source {
        if e.is::<crate::BodyTimeout>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A page of results; pass `next` back as `after` for the following page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The operator's page, refused when the limit is out of range.
pub(crate) fn checked_page(after: Option<String>, limit: Option<u32>) -> Result<Page, ApiError> {
    Page::checked(after, limit).map_err(|e| ApiError(ServiceError::BadRequest(e)))
}

pub(crate) fn listing<T>(items: Vec<T>, page: &Page, key: impl Fn(&T) -> String) -> Listing<T> {
    let next = if items.len() as u32 == page.limit {
        items.last().map(key)
    } else {
        None
    };
    Listing { items, next }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json(),
    )
        .into_response()
}

/// Whom an API key acts as.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `apikey:<id>`.
    pub actor: String,
    pub tenant: String,
    pub role: Role,
}

#[utoipa::path(get, path = "/api/v1/whoami",
    responses((status = 200, body = WhoAmI), (status = 401)), security(("api_key" = [])))]
pub async fn whoami(Authenticated(caller): Authenticated) -> Json<WhoAmI> {
    Json(WhoAmI {
        actor: caller.actor,
        tenant: caller.tenant,
        role: caller.role,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListParams {
    pub status: Option<DeviceStatus>,
    pub device_class: Option<String>,
    pub hardware_revision: Option<String>,
    /// Firmware strictly below this version (2.10.0 > 2.9.0).
    pub firmware_lt: Option<String>,
    /// Firmware at or above this version.
    pub firmware_gte: Option<String>,
    pub firmware_eq: Option<String>,
    /// Thing name after which to continue.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/devices", params(DeviceListParams),
    responses((status = 200, body = ListingDevice), (status = 401), (status = 403)), security(("api_key" = [])))]
pub async fn list_devices(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<DeviceListParams>,
) -> Result<Json<Listing<Device>>, ApiError> {
    let filter = DeviceFilter {
        status: p.status,
        device_class: p.device_class,
        hardware_revision: p.hardware_revision,
        firmware_lt: p.firmware_lt,
        firmware_gte: p.firmware_gte,
        firmware_eq: p.firmware_eq,
    };
    let page = checked_page(p.after, p.limit)?;
    let items = s.onramp.list_devices(&caller, &filter, &page).await?;
    Ok(Json(listing(items, &page, |d| d.thing_name.clone())))
}

#[utoipa::path(get, path = "/api/v1/devices/{thing}", params(("thing" = String, Path)),
    responses((status = 200, body = Device), (status = 404)), security(("api_key" = [])))]
pub async fn get_device(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(s.onramp.get_device(&caller, &thing).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// Merged into the attributes; a `null` value removes the key.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(patch, path = "/api/v1/devices/{thing}", params(("thing" = String, Path)), request_body = DevicePatch,
    responses((status = 200, body = Device), (status = 400), (status = 404)), security(("api_key" = [])))]
pub async fn patch_device(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
    JsonBody(patch): JsonBody<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(
        s.onramp
            .patch_device_attributes(&caller, &thing, &patch.attributes)
            .await?,
    ))
}

async fn lifecycle(
    s: AppState,
    caller: Caller,
    thing: String,
    action: LifecycleAction,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(
        s.onramp
            .change_device_lifecycle(&caller, &thing, action)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/devices/{thing}/suspend", params(("thing" = String, Path)),
    responses((status = 200, body = Device), (status = 409, description = "not allowed from the current state")), security(("api_key" = [])))]
pub async fn suspend_device(
    State(s): State<AppState>,
    Authenticated(c): Authenticated,
    Path(t): Path<String>,
) -> Result<Json<Device>, ApiError> {
    lifecycle(s, c, t, LifecycleAction::Suspend).await
}

#[utoipa::path(post, path = "/api/v1/devices/{thing}/reactivate", params(("thing" = String, Path)),
    responses((status = 200, body = Device), (status = 409)), security(("api_key" = [])))]
pub async fn reactivate_device(
    State(s): State<AppState>,
    Authenticated(c): Authenticated,
    Path(t): Path<String>,
) -> Result<Json<Device>, ApiError> {
    lifecycle(s, c, t, LifecycleAction::Reactivate).await
}

#[utoipa::path(post, path = "/api/v1/devices/{thing}/decommission", params(("thing" = String, Path)),
    responses((status = 200, body = Device, description = "decommissioned; every certificate revoked"), (status = 409)), security(("api_key" = [])))]
pub async fn decommission_device(
    State(s): State<AppState>,
    Authenticated(c): Authenticated,
    Path(t): Path<String>,
) -> Result<Json<Device>, ApiError> {
    lifecycle(s, c, t, LifecycleAction::Decommission).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub serial_number: String,
    pub thing_name: Option<String>,
    pub device_class: Option<String>,
    pub hardware_revision: Option<String>,
    pub firmware_version: Option<String>,
    /// Lifetime in seconds (60 s – 365 days); default 7 days.
    pub ttl_secs: Option<i64>,
}

/// A new enrolment token. `secret` is shown here once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: EnrolmentToken,
    pub secret: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400), (status = 409)), security(("api_key" = [])))]
pub async fn create_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let CreatedToken { token, secret } = s
        .onramp
        .create_token(
            &caller,
            &TokenRequest {
                serial_number: req.serial_number,
                thing_name: req.thing_name,
                profile: DeviceProfile {
                    device_class: req.device_class,
                    hardware_revision: req.hardware_revision,
                    firmware_version: req.firmware_version,
                },
                ttl_secs: req.ttl_secs,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/tokens", params(PageParams),
    responses((status = 200, body = ListingEnrolmentToken)), security(("api_key" = [])))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<PageParams>,
) -> Result<Json<Listing<EnrolmentToken>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    let items = s.onramp.list_tokens(&caller, &page).await?;
    Ok(Json(listing(items, &page, |t| t.id.clone())))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)),
    responses((status = 200, body = EnrolmentToken, description = "revoked"), (status = 404)), security(("api_key" = [])))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<EnrolmentToken>, ApiError> {
    Ok(Json(s.onramp.revoke_token(&caller, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/allowlist", params(PageParams),
    responses((status = 200, body = ListingAllowlistEntry)), security(("api_key" = [])))]
pub async fn list_allowlist(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<PageParams>,
) -> Result<Json<Listing<AllowlistEntry>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    let items = s.onramp.list_allowlist(&caller, &page).await?;
    Ok(Json(listing(items, &page, |e| e.serial_number.clone())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowlistAdd {
    pub serial_numbers: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Added {
    /// Serial numbers that were not on the list before.
    pub added: u64,
}

#[utoipa::path(post, path = "/api/v1/allowlist", request_body = AllowlistAdd,
    responses((status = 200, body = Added), (status = 400)), security(("api_key" = [])))]
pub async fn allowlist_add(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<AllowlistAdd>,
) -> Result<Json<Added>, ApiError> {
    Ok(Json(Added {
        added: s.onramp.allowlist_add(&caller, &req.serial_numbers).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/allowlist/import", request_body(content = String, content_type = "text/csv",
    description = "one serial number per row (first column); an optional `serial_number` header"),
    responses((status = 200, body = Added), (status = 400)), security(("api_key" = [])))]
pub async fn allowlist_import(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    TextBody(body): TextBody,
) -> Result<Json<Added>, ApiError> {
    Ok(Json(Added {
        added: s.onramp.allowlist_import_csv(&caller, &body).await?,
    }))
}

#[utoipa::path(delete, path = "/api/v1/allowlist/{serial}", params(("serial" = String, Path)),
    responses((status = 204), (status = 404)), security(("api_key" = [])))]
pub async fn allowlist_remove(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(serial): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.onramp.allowlist_remove(&caller, &serial).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CertListParams {
    pub thing_name: Option<String>,
    pub status: Option<CertStatus>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/certificates", params(CertListParams),
    responses((status = 200, body = ListingCertificate)), security(("api_key" = [])))]
pub async fn list_certificates(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<CertListParams>,
) -> Result<Json<Listing<Certificate>>, ApiError> {
    let page = checked_page(p.after, p.limit)?;
    let items = s
        .onramp
        .list_certificates(&caller, p.thing_name.as_deref(), p.status, &page)
        .await?;
    Ok(Json(listing(items, &page, |c| c.serial.clone())))
}

#[utoipa::path(get, path = "/api/v1/certificates/{serial}", params(("serial" = String, Path)),
    responses((status = 200, body = Certificate), (status = 404)), security(("api_key" = [])))]
pub async fn get_certificate(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(serial): Path<String>,
) -> Result<Json<Certificate>, ApiError> {
    Ok(Json(s.onramp.get_certificate(&caller, &serial).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
    /// superseded, cessationOfOperation, certificateHold.
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/certificates/{serial}/revoke", params(("serial" = String, Path)), request_body = Revocation,
    responses((status = 200, body = Certificate), (status = 404), (status = 409)), security(("api_key" = [])))]
pub async fn revoke_certificate(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(serial): Path<String>,
    JsonBody(req): JsonBody<Revocation>,
) -> Result<Json<Certificate>, ApiError> {
    let reason = req.reason.unwrap_or_else(|| "unspecified".into());
    Ok(Json(
        s.onramp
            .revoke_certificate(&caller, &serial, &reason)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/ca/chain",
    responses((status = 200, content_type = "application/pem-certificate-chain", body = String,
        description = "issuing CA, then root")))]
pub async fn ca_chain(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        s.onramp.ca().chain_pem(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/ca/issuing",
    responses((status = 200, description = "every issuing CA (active, previous, retired) with the number of active certificates that depend on it")),
    security(("api_key" = [])))]
pub async fn list_issuing_cas(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<onramp_service::IssuingCa>>, ApiError> {
    Ok(Json(s.onramp.list_issuing_cas(&caller).await?))
}

/// How the next issuing CA comes about: `{"kind": "new_issuing"}`,
/// `{"kind": "new_root"}` or `{"kind": "import", "cert_pem": ..., "key_pem": ...}`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Describes the body in the OpenAPI document.
pub struct CaRollover {
    pub kind: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/ca/rollover", request_body = CaRollover,
    responses((status = 200, description = "the new active issuing CA"), (status = 400), (status = 403)),
    security(("api_key" = [])))]
pub async fn roll_over_ca(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<onramp_service::CaRolloverRequest>,
) -> Result<Json<onramp_service::IssuingCa>, ApiError> {
    Ok(Json(s.onramp.roll_over_ca(&caller, req).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaRetire {
    /// Retire even though active certificates still depend on the CA:
    /// those devices can no longer connect.
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(post, path = "/api/v1/ca/issuing/{id}/retire", params(("id" = String, Path, description = "issuing CA id")),
    request_body = CaRetire,
    responses((status = 200, description = "the retired CA"), (status = 404),
        (status = 409, description = "active certificates still depend on it, or it is the active CA")),
    security(("api_key" = [])))]
pub async fn retire_ca(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CaRetire>,
) -> Result<Json<onramp_service::IssuingCa>, ApiError> {
    Ok(Json(s.onramp.retire_ca(&caller, &id, req.force).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub action: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<Outcome>,
    /// Unix seconds.
    pub since: Option<i64>,
    /// Entries older than this id (newest first).
    pub before_id: Option<i64>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditParams),
    responses((status = 200, body = [AuditEntry])), security(("api_key" = [])))]
pub async fn query_audit(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let q = AuditQuery {
        action: p.action,
        target: p.target,
        actor: p.actor,
        outcome: p.outcome,
        since: p.since,
        before_id: p.before_id,
        limit: p.limit.unwrap_or(100),
    };
    Ok(Json(s.onramp.query_audit(&caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/apikeys", responses((status = 200, body = [ApiKey]), (status = 403)), security(("api_key" = [])))]
pub async fn list_api_keys(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ApiKey>>, ApiError> {
    Ok(Json(s.onramp.list_api_keys(&caller).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKey,
    /// Shown once.
    pub secret: String,
}

#[utoipa::path(post, path = "/api/v1/apikeys", request_body = ApiKeyCreate,
    responses((status = 201, body = ApiKeyCreated), (status = 403)), security(("api_key" = [])))]
pub async fn create_api_key(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<ApiKeyCreate>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    let CreatedApiKey { key, secret } = s
        .onramp
        .create_api_key(&caller, &req.name, req.role)
        .await?;
    Ok((StatusCode::CREATED, Json(ApiKeyCreated { key, secret })))
}

#[utoipa::path(delete, path = "/api/v1/apikeys/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 404)), security(("api_key" = [])))]
pub async fn revoke_api_key(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(s.onramp.revoke_api_key(&caller, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/policies", responses((status = 200, body = [StoredPolicy])), security(("api_key" = [])))]
pub async fn list_policies(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<StoredPolicy>>, ApiError> {
    Ok(Json(s.onramp.list_policies(&caller).await?))
}

/// A policy and what it is attached to.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    #[serde(flatten)]
    pub policy: StoredPolicy,
    pub targets: Vec<PolicyTarget>,
}

#[utoipa::path(get, path = "/api/v1/policies/{name}", params(("name" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404)), security(("api_key" = [])))]
pub async fn get_policy(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    let (policy, targets) = s.onramp.get_policy(&caller, &name).await?;
    Ok(Json(PolicyView { policy, targets }))
}

#[utoipa::path(put, path = "/api/v1/policies/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "an AWS IoT policy document (Version, Statement)"),
    responses((status = 200, body = StoredPolicy, description = "created, or a new version stored"), (status = 400)),
    security(("api_key" = [])))]
pub async fn put_policy(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: String,
) -> Result<Json<StoredPolicy>, ApiError> {
    Ok(Json(s.onramp.put_policy(&caller, &name, &body).await?))
}

#[utoipa::path(post, path = "/api/v1/policies/{name}/attachments", params(("name" = String, Path)), request_body = PolicyTarget,
    responses((status = 204), (status = 404)), security(("api_key" = [])))]
pub async fn attach_policy(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    JsonBody(target): JsonBody<PolicyTarget>,
) -> Result<StatusCode, ApiError> {
    s.onramp.attach_policy(&caller, &name, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/policies/{name}/attachments/{kind}/{target}",
    params(("name" = String, Path), ("kind" = String, Path, description = "device or class"), ("target" = String, Path)),
    responses((status = 204), (status = 404)), security(("api_key" = [])))]
pub async fn detach_policy(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((name, kind, target)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = match kind.as_str() {
        "device" => PolicyTarget::Device(target),
        "class" => PolicyTarget::Class(target),
        _ => {
            return Err(ApiError(ServiceError::BadRequest(
                "kind must be device or class".into(),
            )));
        }
    };
    s.onramp.detach_policy(&caller, &name, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- provisioning: templates, claim certificates, registered CAs ----

/// A template body as given: JSON text, or the JSON object itself.
fn template_body(body: serde_json::Value) -> Result<String, ApiError> {
    match body {
        serde_json::Value::String(text) => Ok(text),
        object @ serde_json::Value::Object(_) => Ok(object.to_string()),
        _ => Err(ApiError(ServiceError::BadRequest(
            "body must be a provisioning template: a JSON object, or a string holding one".into(),
        ))),
    }
}

/// For `#[serde(default, deserialize_with = "present")]` on an
/// `Option<Option<T>>`: an absent field stays `None`, an explicit `null`
/// becomes `Some(None)`, a value `Some(Some(v))`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateCreate {
    /// 1 to 36 letters, digits, `_` and `-`.
    pub name: String,
    /// `fleet` (claim certificates, the default) or `jitp` (registered CAs).
    pub kind: Option<TemplateKind>,
    /// The provisioning template (Parameters, Resources): a JSON object, or a string holding one.
    pub body: serde_json::Value,
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Serial numbers allowed to provision; absent or `null`: any serial not denied.
    pub serial_allow: Option<Vec<String>>,
    pub serial_deny: Option<Vec<String>>,
    /// Pre-provisioning webhook (http:// or https://), called before every RegisterThing.
    pub hook_url: Option<String>,
}

/// Settings to change; an absent field is left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePatch {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    /// A list replaces the allow-list; `null` removes it (any serial not denied may provision).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub serial_allow: Option<Option<Vec<String>>>,
    pub serial_deny: Option<Vec<String>>,
    /// A URL sets the pre-provisioning hook; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub hook_url: Option<Option<String>>,
}

impl From<TemplatePatch> for TemplateSettings {
    fn from(p: TemplatePatch) -> Self {
        TemplateSettings {
            description: p.description,
            enabled: p.enabled,
            serial_allow: p.serial_allow,
            serial_deny: p.serial_deny,
            hook_url: p.hook_url,
        }
    }
}

/// A template, the body of its default version, and every version.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub template: ProvisioningTemplateRecord,
    /// The body of the default version.
    pub body: String,
    pub versions: Vec<TemplateVersion>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateVersionCreate {
    /// The new body: a JSON object, or a string holding one.
    pub body: serde_json::Value,
    /// Make the new version the default; default false.
    pub set_default: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultVersion {
    pub version: i64,
}

#[utoipa::path(get, path = "/api/v1/templates",
    responses((status = 200, body = [ProvisioningTemplateRecord]), (status = 401), (status = 403)), security(("api_key" = [])))]
pub async fn list_templates(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ProvisioningTemplateRecord>>, ApiError> {
    Ok(Json(s.onramp.list_templates(&caller).await?))
}

#[utoipa::path(post, path = "/api/v1/templates", request_body = TemplateCreate,
    responses((status = 201, body = ProvisioningTemplateRecord), (status = 400), (status = 403, description = "admin only"),
        (status = 409, description = "a template of that name exists")), security(("api_key" = [])))]
pub async fn create_template(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<TemplateCreate>,
) -> Result<(StatusCode, Json<ProvisioningTemplateRecord>), ApiError> {
    let body = template_body(req.body)?;
    let settings = TemplateSettings {
        description: req.description,
        enabled: req.enabled,
        serial_allow: req.serial_allow.map(Some),
        serial_deny: req.serial_deny,
        hook_url: req.hook_url.map(Some),
    };
    let record = s
        .onramp
        .create_template(
            &caller,
            &req.name,
            req.kind.unwrap_or(TemplateKind::Fleet),
            &body,
            settings,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[utoipa::path(get, path = "/api/v1/templates/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 404)), security(("api_key" = [])))]
pub async fn get_template(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    let TemplateDetail {
        template,
        body,
        versions,
    } = s.onramp.get_template(&caller, &name).await?;
    Ok(Json(TemplateView {
        template,
        body,
        versions,
    }))
}

#[utoipa::path(patch, path = "/api/v1/templates/{name}", params(("name" = String, Path)), request_body = TemplatePatch,
    responses((status = 200, body = ProvisioningTemplateRecord), (status = 400), (status = 403), (status = 404)),
    security(("api_key" = [])))]
pub async fn patch_template(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<TemplatePatch>,
) -> Result<Json<ProvisioningTemplateRecord>, ApiError> {
    Ok(Json(
        s.onramp
            .update_template(&caller, &name, patch.into())
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/templates/{name}/versions", params(("name" = String, Path)),
    request_body = TemplateVersionCreate,
    responses((status = 201, body = ProvisioningTemplateRecord, description = "the template with its new latest version"),
        (status = 400), (status = 403), (status = 404)), security(("api_key" = [])))]
pub async fn add_template_version(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<TemplateVersionCreate>,
) -> Result<(StatusCode, Json<ProvisioningTemplateRecord>), ApiError> {
    let body = template_body(req.body)?;
    let record = s
        .onramp
        .add_template_version(&caller, &name, &body, req.set_default.unwrap_or(false))
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[utoipa::path(put, path = "/api/v1/templates/{name}/default-version", params(("name" = String, Path)),
    request_body = DefaultVersion,
    responses((status = 200, body = ProvisioningTemplateRecord), (status = 403), (status = 404, description = "no such template or version")),
    security(("api_key" = [])))]
pub async fn set_template_default_version(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<DefaultVersion>,
) -> Result<Json<ProvisioningTemplateRecord>, ApiError> {
    Ok(Json(
        s.onramp
            .set_template_default_version(&caller, &name, req.version)
            .await?,
    ))
}

const CLAIM_VALIDITY_DAYS: u32 = 365;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimCreate {
    /// A fleet template.
    pub template: String,
    /// 1 to 3650; default 365.
    pub validity_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRotate {
    /// Validity of the replacement, 1 to 3650; default 365.
    pub validity_days: Option<u32>,
}

/// A new claim certificate. `private_key_pem` is shown here once and never stored.
#[derive(Serialize, ToSchema)]
pub struct ClaimCreated {
    pub claim: ClaimCertificate,
    pub certificate_pem: String,
    /// PKCS#8 PEM; shown once.
    pub private_key_pem: String,
    /// The CA chain devices use to verify the server.
    pub ca_chain_pem: String,
}

/// Never prints the private key.
impl std::fmt::Debug for ClaimCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCreated")
            .field("claim", &self.claim.serial)
            .field("private_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// 201 with the claim; the key must not be cached on the way.
fn claim_created(
    c: CreatedClaim,
) -> (
    StatusCode,
    [(header::HeaderName, &'static str); 1],
    Json<ClaimCreated>,
) {
    let CreatedClaim {
        claim,
        certificate_pem,
        private_key_pem,
        ca_chain_pem,
    } = c;
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(ClaimCreated {
            claim,
            certificate_pem,
            private_key_pem,
            ca_chain_pem,
        }),
    )
}

#[utoipa::path(get, path = "/api/v1/claims",
    responses((status = 200, body = [ClaimCertificate])), security(("api_key" = [])))]
pub async fn list_claims(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ClaimCertificate>>, ApiError> {
    Ok(Json(s.onramp.list_claims(&caller).await?))
}

#[utoipa::path(get, path = "/api/v1/claims/expiring",
    responses((status = 200, body = [ClaimCertificate], description = "active claim certificates inside the expiry warning window; each is audited"),
        (status = 403)), security(("api_key" = [])))]
pub async fn expiring_claims(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<ClaimCertificate>>, ApiError> {
    Ok(Json(s.onramp.check_claim_expiry_as(&caller).await?))
}

#[utoipa::path(post, path = "/api/v1/claims", request_body = ClaimCreate,
    responses((status = 201, body = ClaimCreated), (status = 400, description = "bad validity, or a JITP template"),
        (status = 403), (status = 404, description = "no such template")), security(("api_key" = [])))]
pub async fn create_claim(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<ClaimCreate>,
) -> Result<impl IntoResponse, ApiError> {
    let created = s
        .onramp
        .create_claim(
            &caller,
            &req.template,
            req.validity_days.unwrap_or(CLAIM_VALIDITY_DAYS),
        )
        .await?;
    Ok(claim_created(created))
}

#[utoipa::path(post, path = "/api/v1/claims/{serial}/revoke", params(("serial" = String, Path)),
    responses((status = 204), (status = 403), (status = 404, description = "no such active claim certificate")),
    security(("api_key" = [])))]
pub async fn revoke_claim(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(serial): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.onramp.revoke_claim(&caller, &serial).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/claims/{serial}/rotate", params(("serial" = String, Path)),
    request_body(content = Option<ClaimRotate>, description = "optional; an empty body takes the defaults"),
    responses((status = 201, body = ClaimCreated, description = "the replacement; the old one is revoked with replaced_by set"),
        (status = 400), (status = 403), (status = 404, description = "no such active claim certificate")),
    security(("api_key" = [])))]
pub async fn rotate_claim(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: ClaimRotate = if body.iter().all(u8::is_ascii_whitespace) {
        ClaimRotate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(ServiceError::BadRequest(format!("invalid JSON body: {e}"))))?
    };
    let created = s
        .onramp
        .rotate_claim(
            &caller,
            &serial,
            req.validity_days.unwrap_or(CLAIM_VALIDITY_DAYS),
        )
        .await?;
    Ok(claim_created(created))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationCode {
    /// The common name a verification certificate must carry.
    pub registration_code: String,
}

#[utoipa::path(get, path = "/api/v1/cas/registration-code",
    responses((status = 200, body = RegistrationCode), (status = 403)), security(("api_key" = [])))]
pub async fn ca_registration_code(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<RegistrationCode>, ApiError> {
    Ok(Json(RegistrationCode {
        registration_code: s.onramp.registration_code(&caller)?,
    }))
}

#[utoipa::path(get, path = "/api/v1/cas",
    responses((status = 200, body = [RegisteredCa])), security(("api_key" = [])))]
pub async fn list_cas(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Vec<RegisteredCa>>, ApiError> {
    Ok(Json(s.onramp.list_registered_cas(&caller).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaRegister {
    /// The manufacturer CA certificate (basicConstraints CA:TRUE).
    pub certificate_pem: String,
    /// The JITP template run for its unknown device certificates.
    pub template: Option<String>,
    /// Provision unknown device certificates on first connection; default true (needs a template).
    pub auto_registration: Option<bool>,
    /// Proof of possession: a certificate signed by the CA's key whose
    /// common name is the registration code.
    pub verification_certificate_pem: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/cas", request_body = CaRegister,
    responses((status = 201, body = RegisteredCa), (status = 400), (status = 403),
        (status = 404, description = "no such template"), (status = 409, description = "already registered")),
    security(("api_key" = [])))]
pub async fn register_ca(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonBody(req): JsonBody<CaRegister>,
) -> Result<(StatusCode, Json<RegisteredCa>), ApiError> {
    let ca = s
        .onramp
        .register_ca(
            &caller,
            &req.certificate_pem,
            req.template.as_deref(),
            req.auto_registration.unwrap_or(true),
            req.verification_certificate_pem.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ca)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaPatch {
    /// A revoked CA stays revoked.
    pub status: Option<CaStatus>,
    pub auto_registration: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/cas/{id}", params(("id" = String, Path, description = "SHA-256 of the CA certificate")),
    request_body = CaPatch,
    responses((status = 200, body = RegisteredCa), (status = 400), (status = 403), (status = 404),
        (status = 409, description = "the CA is revoked")), security(("api_key" = [])))]
pub async fn patch_ca(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CaPatch>,
) -> Result<Json<RegisteredCa>, ApiError> {
    Ok(Json(
        s.onramp
            .update_registered_ca(&caller, &id, req.status, req.auto_registration)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShadowParams {
    /// A named shadow; absent for the classic shadow.
    pub name: Option<String>,
    pub limit: Option<u32>,
}

async fn shadow_call(
    s: AppState,
    caller: Caller,
    thing: String,
    name: Option<String>,
    op: ShadowOp,
    body: &[u8],
) -> Response {
    let topic = ShadowTopic {
        thing_name: thing,
        shadow_name: name,
        op,
    };
    match s.onramp.shadow_for_caller(&caller, &topic, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let token = onramp_domain::shadow::client_token_for_reply(body, &Default::default());
            (
                status,
                Json(e.to_reject_json(token.as_deref(), onramp_service::now())),
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/api/v1/things/{thing}/shadow", params(("thing" = String, Path), ShadowParams),
    responses((status = 200, description = "the shadow document with state, metadata, version"), (status = 404)),
    security(("api_key" = [])))]
pub async fn shadow_get(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
    Params(p): Params<ShadowParams>,
) -> Response {
    shadow_call(s, caller, thing, p.name, ShadowOp::Get, b"").await
}

#[utoipa::path(post, path = "/api/v1/things/{thing}/shadow", params(("thing" = String, Path), ShadowParams),
    request_body(content = Object, description = "{\"state\": {\"desired\": {...}}, \"version\"?, \"clientToken\"?}"),
    responses((status = 200, description = "accepted (as /update/accepted)"), (status = 400), (status = 409), (status = 413)),
    security(("api_key" = [])))]
pub async fn shadow_update(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
    Params(p): Params<ShadowParams>,
    body: axum::body::Bytes,
) -> Response {
    shadow_call(s, caller, thing, p.name, ShadowOp::Update, &body).await
}

#[utoipa::path(delete, path = "/api/v1/things/{thing}/shadow", params(("thing" = String, Path), ShadowParams),
    responses((status = 200), (status = 404)), security(("api_key" = [])))]
pub async fn shadow_delete(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
    Params(p): Params<ShadowParams>,
) -> Response {
    shadow_call(s, caller, thing, p.name, ShadowOp::Delete, b"").await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowNames {
    /// Named shadows of the thing.
    pub results: Vec<String>,
    /// Whether the classic (unnamed) shadow exists.
    pub classic: bool,
}

#[utoipa::path(get, path = "/api/v1/things/{thing}/shadows", params(("thing" = String, Path)),
    responses((status = 200, body = ShadowNames)), security(("api_key" = [])))]
pub async fn shadow_list(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
) -> Result<Json<ShadowNames>, ApiError> {
    let names = s.onramp.list_shadows(&caller, &thing).await?;
    Ok(Json(ShadowNames {
        classic: names.iter().any(String::is_empty),
        results: names.into_iter().filter(|n| !n.is_empty()).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/things/{thing}/shadow/history", params(("thing" = String, Path), ShadowParams),
    responses((status = 200, description = "versions, newest first")), security(("api_key" = [])))]
pub async fn shadow_history(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(thing): Path<String>,
    Params(p): Params<ShadowParams>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    Ok(Json(
        s.onramp
            .shadow_history(&caller, &thing, p.name.as_deref(), p.limit.unwrap_or(100))
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShadowQueryParams {
    /// Dot-separated member path inside `reported`, e.g. `firmware` or `sensors.temp`.
    pub path: String,
    /// eq, ne, lt, lte, gt, gte. Strings compare as versions, numbers as numbers.
    pub op: onramp_domain::shadow::Comparison,
    pub value: String,
    /// A named shadow; absent for the classic shadow.
    pub name: Option<String>,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/shadows/query", params(ShadowQueryParams),
    responses((status = 200, description = "matching things: thing_name, value, version")), security(("api_key" = [])))]
pub async fn shadow_query(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Params(p): Params<ShadowQueryParams>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let query =
        onramp_domain::shadow::ReportedQuery::new(&p.path, p.op, &p.value).ok_or_else(|| {
            ApiError(ServiceError::BadRequest(
                "path must be 1 to 8 non-empty members".into(),
            ))
        })?;
    Ok(Json(
        s.onramp
            .query_shadows(
                &caller,
                p.name.as_deref(),
                &query,
                p.after,
                p.limit.unwrap_or(100),
            )
            .await?,
    ))
}

/// Concrete listing types for the OpenAPI document.
pub type ListingDevice = Listing<Device>;
pub type ListingEnrolmentToken = Listing<EnrolmentToken>;
pub type ListingAllowlistEntry = Listing<AllowlistEntry>;
pub type ListingCertificate = Listing<Certificate>;
