//! Every metric Onramp exports, described and created at zero when the
//! server starts. A counter exists in the Prometheus text only once it has
//! a value, so without this a dashboard or alert on a rare event (an
//! identity cut, a refused connection) would show "no data" rather than 0
//! until the first one happens.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// `(name, labels)` of every counter series created at zero. Label values
/// are the closed sets the emitting code uses.
fn counters() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let mut all = Vec::new();
    for op in ["simpleenroll", "simplereenroll"] {
        for outcome in [
            "success",
            "denied",
            "invalid",
            "rate_limited",
            "unavailable",
            "error",
        ] {
            all.push((
                "onramp_enrolments_total",
                vec![("operation", op), ("outcome", outcome)],
            ));
        }
    }
    for reason in ["max_connections", "max_connections_per_source"] {
        all.push((
            "onramp_http_connections_refused_total",
            vec![("reason", reason)],
        ));
    }
    for kind in ["handshake", "header", "body", "idle"] {
        all.push(("onramp_http_timeouts_total", vec![("kind", kind)]));
    }
    for reason in ["unauthorized", "locked_out"] {
        all.push(("onramp_api_auth_failures_total", vec![("reason", reason)]));
    }
    for outcome in [
        "accepted",
        "not_authorized",
        "bad_client_id",
        "unavailable",
        "rate_limited",
        "client_id_held",
        "cut_during_admission",
        "not_mqtt",
        "over_capacity",
        "tls_refused",
        "tls_timeout",
    ] {
        all.push(("onramp_mqtt_connects_total", vec![("outcome", outcome)]));
    }
    for qos in ["0", "1"] {
        all.push(("onramp_mqtt_messages_in_total", vec![("qos", qos)]));
        all.push(("onramp_mqtt_messages_out_total", vec![("qos", qos)]));
    }
    for action in [
        "connect",
        "publish",
        "subscribe",
        "receive",
        "retain_publish",
    ] {
        all.push(("onramp_mqtt_policy_denials_total", vec![("action", action)]));
    }
    for op in ["get", "update", "delete"] {
        for outcome in ["accepted", "rejected"] {
            all.push((
                "onramp_shadow_requests_total",
                vec![("op", op), ("outcome", outcome)],
            ));
        }
    }
    for operation in [
        "create_keys_and_certificate",
        "create_certificate_from_csr",
        "register_thing",
    ] {
        for outcome in ["accepted", "rejected"] {
            all.push((
                "onramp_provisioning_requests_total",
                vec![("operation", operation), ("outcome", outcome)],
            ));
        }
    }
    for limit in ["source", "claim"] {
        all.push((
            "onramp_provisioning_throttled_total",
            vec![("limit", limit)],
        ));
    }
    for task in [
        "pending-certificates",
        "claim-expiry",
        "shadow-compaction",
        "identity-change-pruning",
        "job-timeouts",
        "job-rollouts",
        "job-confirmations",
        "job-continuous",
    ] {
        for outcome in ["ok", "failed"] {
            all.push((
                "onramp_scheduler_runs_total",
                vec![("task", task), ("outcome", outcome)],
            ));
        }
    }
    for outcome in ["confirmed", "not_confirmed"] {
        all.push(("onramp_job_confirmations_total", vec![("outcome", outcome)]));
    }
    for op in ["get_pending", "start_next", "describe", "update"] {
        for outcome in ["accepted", "rejected"] {
            all.push((
                "onramp_jobs_requests_total",
                vec![("op", op), ("outcome", outcome)],
            ));
        }
    }
    for status in [
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "TIMED_OUT",
        "REJECTED",
        "REMOVED",
        "CANCELED",
    ] {
        all.push((
            "onramp_job_execution_updates_total",
            vec![("status", status)],
        ));
    }
    for reason in ["rate_limited", "token", "no_job"] {
        all.push((
            "onramp_artifact_downloads_refused_total",
            vec![("reason", reason)],
        ));
    }
    for outcome in ["signed", "unsigned", "bad_signature"] {
        all.push(("onramp_artifact_uploads_total", vec![("outcome", outcome)]));
    }
    for name in [
        "onramp_artifact_download_bytes_total",
        "onramp_artifact_downloads_completed_total",
        "onramp_jobs_created_total",
        "onramp_job_rollout_released_total",
        "onramp_job_aborts_total",
        "onramp_device_requests_invalid_topic_total",
        "onramp_enrolment_replays_total",
        "onramp_mqtt_identity_cuts_total",
        "onramp_mqtt_identity_feed_errors_total",
        "onramp_mqtt_messages_dropped_total",
        "onramp_provisioning_jitp_total",
        "onramp_provisioning_pending_expired_total",
        "onramp_provisioning_replays_total",
    ] {
        all.push((name, Vec::new()));
    }
    all
}

/// Gauges set by whoever owns them; created at zero here only when nothing
/// has set them before (the recorder is installed first, so nothing has).
const GAUGES: [&str; 4] = [
    "onramp_http_connections",
    "onramp_mqtt_connections",
    "onramp_mqtt_sessions",
    "onramp_claim_certificates_expiring",
];

/// Describes every metric and creates each series at zero. Call right after
/// installing the recorder, before any listener runs.
pub fn register() {
    describe();
    for (name, labels) in counters() {
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::counter!(name, labels).absolute(0);
    }
    for name in GAUGES {
        metrics::gauge!(name).set(0.0);
    }
    for within in ["7d", "14d", "30d"] {
        metrics::gauge!("onramp_certificates_expiring", "within" => within).set(0.0);
    }
    // A histogram is exported once it exists, with a zero count.
    for op in ["simpleenroll", "simplereenroll"] {
        let _ = metrics::histogram!("onramp_enrolment_duration_seconds", "operation" => op);
    }
    let _ = metrics::histogram!("onramp_provisioning_hook_seconds");
}

fn describe() {
    describe_counter!(
        "onramp_scheduler_runs_total",
        "Runs of database-wide periodic tasks on this node, by task and outcome"
    );
    describe_counter!(
        "onramp_jobs_requests_total",
        "Jobs requests from devices by operation and outcome"
    );
    describe_counter!(
        "onramp_job_execution_updates_total",
        "Job executions written, by the status they reached"
    );
    describe_counter!("onramp_jobs_created_total", "Jobs created");
    describe_counter!(
        "onramp_artifact_download_bytes_total",
        "Artifact bytes sent to devices"
    );
    describe_counter!(
        "onramp_artifact_downloads_completed_total",
        "Artifact downloads that reached the end of the file"
    );
    describe_counter!(
        "onramp_artifact_downloads_refused_total",
        "Artifact downloads refused, by reason"
    );
    describe_counter!(
        "onramp_artifact_uploads_total",
        "Artifact uploads, by outcome"
    );
    describe_counter!(
        "onramp_job_confirmations_total",
        "Successes settled by the firmware version devices reported: confirmed or not"
    );
    describe_counter!(
        "onramp_job_rollout_released_total",
        "Job executions released by paced rollouts"
    );
    describe_counter!(
        "onramp_job_aborts_total",
        "Jobs aborted by their abort criteria"
    );
    describe_counter!(
        "onramp_device_requests_invalid_topic_total",
        "Requests to a reserved namespace that named no operation"
    );
    describe_counter!(
        "onramp_enrolments_total",
        "EST enrolments by operation and outcome"
    );
    describe_histogram!(
        "onramp_enrolment_duration_seconds",
        Unit::Seconds,
        "Time an EST enrolment took inside the service (credential check, issuance, commit)"
    );
    describe_counter!(
        "onramp_enrolment_replays_total",
        "Enrolment retries answered with the certificate already issued"
    );
    describe_gauge!("onramp_devices", "Devices by lifecycle status");
    describe_gauge!(
        "onramp_certificates_expiring",
        "Active device certificates expiring within 7, 14 or 30 days"
    );
    describe_gauge!(
        "onramp_claim_certificates_expiring",
        "Claim certificates expiring within the warning window"
    );
    describe_gauge!("onramp_http_connections", "Live HTTPS connections");
    describe_counter!(
        "onramp_http_connections_refused_total",
        "HTTPS connections closed before TLS for being over a connection cap"
    );
    describe_counter!(
        "onramp_http_timeouts_total",
        "HTTPS connections or requests ended by a deadline"
    );
    describe_counter!(
        "onramp_api_auth_failures_total",
        "Refused API authentications by reason"
    );
    describe_gauge!("onramp_mqtt_connections", "Live MQTT connections");
    describe_gauge!(
        "onramp_mqtt_sessions",
        "MQTT sessions, connected or persisted"
    );
    describe_counter!(
        "onramp_mqtt_connects_total",
        "MQTT connection attempts by outcome"
    );
    describe_counter!(
        "onramp_mqtt_messages_in_total",
        "PUBLISH packets received from clients"
    );
    describe_counter!(
        "onramp_mqtt_messages_out_total",
        "PUBLISH packets sent to clients"
    );
    describe_counter!(
        "onramp_mqtt_messages_dropped_total",
        "Messages dropped because a session's queue was full"
    );
    describe_counter!(
        "onramp_mqtt_policy_denials_total",
        "MQTT operations a policy denied, by action"
    );
    describe_counter!(
        "onramp_mqtt_identity_cuts_total",
        "Connections closed because their identity was revoked, suspended or deleted"
    );
    describe_counter!(
        "onramp_mqtt_identity_feed_errors_total",
        "Failed reads of the identity-change feed"
    );
    describe_counter!(
        "onramp_shadow_requests_total",
        "Device shadow requests by operation and outcome"
    );
    describe_counter!(
        "onramp_provisioning_requests_total",
        "Fleet provisioning requests by operation and outcome"
    );
    describe_counter!(
        "onramp_provisioning_throttled_total",
        "Fleet provisioning requests refused by a rate limit"
    );
    describe_counter!(
        "onramp_provisioning_replays_total",
        "Provisioning requests answered again from an earlier result"
    );
    describe_counter!(
        "onramp_provisioning_jitp_total",
        "Devices registered just in time on their first connection"
    );
    describe_counter!(
        "onramp_provisioning_pending_expired_total",
        "Provisioned certificates purged unused after their ownership token expired"
    );
    describe_histogram!(
        "onramp_provisioning_hook_seconds",
        Unit::Seconds,
        "Time the pre-provisioning hook took to answer"
    );
}
