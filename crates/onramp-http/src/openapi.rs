//! The OpenAPI document served at `/api/v1/openapi.json`.

use crate::{api, artifacts_api, events_api, jobs_api, rotation_api};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Onramp management API", description = "Devices, enrolment tokens, allow-list, certificates, API keys, policies, provisioning templates, claim certificates, registered CAs, jobs, signed OTA artifacts, outbound events (webhooks), audit checks and the audit log. EST (RFC 7030) lives under /.well-known/est; the CRL under /crl and the OCSP responder (RFC 6960) at /ocsp."),
    paths(
        api::whoami, api::list_devices, api::get_device, api::patch_device, api::suspend_device,
        api::reactivate_device, api::decommission_device, api::create_token, api::list_tokens,
        api::revoke_token, api::list_allowlist, api::allowlist_add, api::allowlist_import,
        api::allowlist_remove, api::list_certificates, api::get_certificate,
        api::revoke_certificate, api::ca_chain, api::list_issuing_cas, api::roll_over_ca, api::retire_ca, api::query_audit, api::list_api_keys,
        api::create_api_key, api::revoke_api_key, api::list_policies, api::get_policy,
        api::put_policy, api::attach_policy, api::detach_policy, api::shadow_get,
        api::shadow_update, api::shadow_delete, api::shadow_list, api::shadow_history,
        api::shadow_query, api::list_templates, api::create_template, api::get_template,
        api::patch_template, api::add_template_version, api::set_template_default_version,
        api::list_claims, api::expiring_claims, api::create_claim, api::revoke_claim, api::rotate_claim,
        api::ca_registration_code, api::list_cas, api::register_ca, api::patch_ca,
        jobs_api::create_job, jobs_api::list_jobs, jobs_api::describe_job, jobs_api::cancel_job, jobs_api::cancel_job_execution,
        jobs_api::pause_job, jobs_api::resume_job, jobs_api::delete_job,
        jobs_api::list_job_executions, jobs_api::thing_jobs,
        rotation_api::rotate_certificates, rotation_api::list_rotations,
        artifacts_api::add_signer, artifacts_api::list_signers, artifacts_api::delete_signer,
        artifacts_api::upload_artifact, artifacts_api::list_artifacts, artifacts_api::get_artifact,
        events_api::create_subscription, events_api::list_subscriptions, events_api::delete_subscription,
        events_api::list_events, events_api::list_deliveries, events_api::replay_delivery,
        events_api::run_audit_checks, events_api::list_findings, events_api::suppress_finding,
        events_api::unsuppress_finding,
    ),
    modifiers(&ApiKeyAuth)
)]
struct ApiDoc;

/// The document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
