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
        "bad_auth_method",
    ] {
        all.push(("onramp_mqtt_connects_total", vec![("outcome", outcome)]));
    }
    for qos in ["0", "1", "2"] {
        all.push(("onramp_mqtt_messages_in_total", vec![("qos", qos)]));
        all.push(("onramp_mqtt_messages_out_total", vec![("qos", qos)]));
    }
    for reason in ["queue_full", "connection_behind", "session_full"] {
        all.push((
            "onramp_mqtt_messages_dropped_total",
            vec![("reason", reason)],
        ));
    }
    for outcome in ["committed", "failed"] {
        all.push((
            "onramp_mqtt_session_store_writes_total",
            vec![("outcome", outcome)],
        ));
    }
    for outcome in ["released", "expired"] {
        all.push((
            "onramp_mqtt_publisher_holds_total",
            vec![("outcome", outcome)],
        ));
    }
    for reason in ["expired", "too_large"] {
        all.push((
            "onramp_mqtt_messages_undeliverable_total",
            vec![("reason", reason)],
        ));
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
        "job-schedules",
        "event-delivery",
        "certificate-expiry",
        "audit-checks",
        "certificate-rotations",
    ] {
        for outcome in ["ok", "failed"] {
            all.push((
                "onramp_scheduler_runs_total",
                vec![("task", task), ("outcome", outcome)],
            ));
        }
    }
    for outcome in ["issued", "refused", "activated", "expired", "old_revoked"] {
        all.push((
            "onramp_certificate_rotations_total",
            vec![("outcome", outcome)],
        ));
    }
    for outcome in ["confirmed", "not_confirmed"] {
        all.push(("onramp_job_confirmations_total", vec![("outcome", outcome)]));
    }
    // Outbound events and audit checks.
    for t in onramp_domain::event::EventType::ALL {
        all.push(("onramp_events_emitted_total", vec![("type", t.as_str())]));
    }
    for outcome in ["delivered", "retry", "dead"] {
        all.push(("onramp_event_deliveries_total", vec![("outcome", outcome)]));
    }
    for check in onramp_domain::audit_check::CheckName::ALL {
        all.push((
            "onramp_audit_findings_total",
            vec![("check", check.as_str())],
        ));
    }
    for name in [
        "onramp_audit_check_runs_total",
        "onramp_connection_attempts_dropped_total",
        "onramp_mqtt_inactive_certificate_attempts_total",
    ] {
        all.push((name, Vec::new()));
    }
    for action in ["job.pause", "job.resume", "job.delete"] {
        all.push(("onramp_job_controls_total", vec![("action", action)]));
    }
    for event in ["start", "end"] {
        all.push(("onramp_job_schedule_events_total", vec![("event", event)]));
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
    for reason in ["start", "change", "refresh"] {
        for outcome in ["ok", "failed"] {
            all.push((
                "onramp_crl_generations_total",
                vec![("reason", reason), ("outcome", outcome)],
            ));
        }
    }
    for status in ["good", "revoked", "unknown", "malformed", "internal_error"] {
        all.push(("onramp_ocsp_responses_total", vec![("status", status)]));
    }
    for outcome in ["success", "failure", "pending", "malformed"] {
        all.push(("onramp_scep_requests_total", vec![("outcome", outcome)]));
    }
    for kind in ["new_issuing", "new_root", "import"] {
        all.push(("onramp_ca_rollovers_total", vec![("kind", kind)]));
    }
    for name in [
        "onramp_crl_downloads_total",
        "onramp_crl_feed_errors_total",
        "onramp_ocsp_signer_renewals_total",
        "onramp_ca_retirements_total",
        "onramp_artifact_download_bytes_total",
        "onramp_artifact_downloads_completed_total",
        "onramp_jobs_created_total",
        "onramp_job_rollout_released_total",
        "onramp_job_aborts_total",
        "onramp_device_requests_invalid_topic_total",
        "onramp_enrolment_replays_total",
        "onramp_mqtt_identity_cuts_total",
        "onramp_mqtt_identity_feed_errors_total",
        "onramp_provisioning_jitp_total",
        "onramp_provisioning_pending_expired_total",
        "onramp_provisioning_replays_total",
        "onramp_certificate_renewals_after_expiry_total",
    ] {
        all.push((name, Vec::new()));
    }
    all
}

/// Gauges set by whoever owns them; created at zero here only when nothing
/// has set them before (the recorder is installed first, so nothing has).
const GAUGES: [&str; 7] = [
    "onramp_crl_age_seconds",
    "onramp_crl_entries",
    "onramp_http_connections",
    "onramp_mqtt_connections",
    "onramp_mqtt_sessions",
    "onramp_claim_certificates_expiring",
    "onramp_certificates_expired_active",
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
    metrics::gauge!("onramp_audit_findings_open", "tenant" => onramp_domain::DEFAULT_TENANT)
        .set(0.0);
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
        "onramp_job_controls_total",
        "Operator actions on whole jobs: rollouts paused and resumed, jobs deleted"
    );
    describe_counter!(
        "onramp_job_schedule_events_total",
        "Scheduled jobs started at their startTime and ended at their endTime"
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
    describe_gauge!(
        "onramp_heap_bytes",
        Unit::Bytes,
        "The allocator's account of the heap: allocated (held by the server), active (in pages \
         holding allocations), resident (physically mapped for the heap), metadata (the allocator's own \
         bookkeeping, part of resident) and retained (returned to the system but kept reserved)"
    );
    describe_counter!(
        "onramp_events_emitted_total",
        "Outbound events stored for delivery, by type"
    );
    describe_counter!(
        "onramp_event_deliveries_total",
        "Webhook delivery attempts: delivered, failed and retried later, or dead-lettered"
    );
    describe_counter!(
        "onramp_audit_check_runs_total",
        "Audit-check runs (scheduled or on demand), per tenant run"
    );
    describe_counter!(
        "onramp_audit_findings_total",
        "Audit findings opened (new, or seen again after being resolved), by check"
    );
    describe_gauge!(
        "onramp_audit_findings_open",
        "Open, unsuppressed audit findings after the tenant's last run"
    );
    describe_gauge!(
        "onramp_certificates_expired_active",
        "Device certificates past notAfter that are still active in the registry (devices that were never renewed)"
    );
    describe_counter!(
        "onramp_mqtt_inactive_certificate_attempts_total",
        "MQTT connections refused because the registered certificate is revoked, superseded or inactive"
    );
    describe_counter!(
        "onramp_connection_attempts_dropped_total",
        "Connection attempts not recorded for the audit checks because the buffer was full"
    );
    describe_counter!(
        "onramp_crl_generations_total",
        "CRLs signed, by what caused them (start, a revocation, the periodic refresh) and outcome"
    );
    describe_gauge!(
        "onramp_crl_age_seconds",
        Unit::Seconds,
        "Seconds since the served CRL's thisUpdate"
    );
    describe_gauge!(
        "onramp_crl_entries",
        "Certificates listed in the served CRL"
    );
    describe_counter!("onramp_crl_downloads_total", "CRL downloads served");
    describe_counter!(
        "onramp_crl_feed_errors_total",
        "Failed CRL upkeep steps (feed read, registry read or signing)"
    );
    describe_counter!(
        "onramp_ocsp_responses_total",
        "OCSP answers by certificate status, and refused requests (malformed, internal_error)"
    );
    describe_counter!(
        "onramp_ocsp_signer_renewals_total",
        "Delegated OCSP signing certificates issued"
    );
    describe_counter!(
        "onramp_ca_rollovers_total",
        "Issuing CA rollovers, by kind (new_issuing, new_root, import)"
    );
    describe_counter!(
        "onramp_scep_requests_total",
        "SCEP PKIOperation requests, by the CertRep status answered (success, failure, pending) or malformed"
    );
    describe_counter!(
        "onramp_ca_retirements_total",
        "Previous issuing CAs retired (no longer trusted)"
    );
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
        "Messages dropped, by reason: a session's queue of QoS 1 and 2 messages was full (queue_full, the oldest is dropped: an offline session's, or a connected one's after its publishers were held for publisher_hold_ms), a persistent session held stored_session_max_messages (session_full, the oldest queued is dropped), or a connection's outgoing channel was full (connection_behind: after the publishers were held for publisher_hold_ms, or at once for a connection that stalled or for server messages; a QoS 0 message is lost, QoS 1 and 2 stay in flight and are sent again on reconnect)"
    );
    describe_counter!(
        "onramp_mqtt_session_store_writes_total",
        "Changes of persistent MQTT sessions written to the store, by outcome (committed; failed: tried again, and the acknowledgements resting on them wait)"
    );
    describe_counter!(
        "onramp_mqtt_publisher_holds_total",
        "Client PUBLISHes held (socket not read, acknowledgement not sent) because a receiving connection was behind, by outcome: released (every receiver took the message) or expired (publisher_hold_ms passed and the drop policy applied)"
    );
    describe_counter!(
        "onramp_mqtt_messages_undeliverable_total",
        "Messages not delivered to a client, by reason: their Message Expiry Interval passed, or larger than the client's Maximum Packet Size"
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
        "onramp_certificate_rotations_total",
        "Certificate rotations over MQTT by outcome: issued, refused, activated (first connection), expired (never used), old_revoked (grace period ended)"
    );
    describe_counter!(
        "onramp_certificate_renewals_after_expiry_total",
        "Certificates renewed over MQTT with a certificate that had expired, within the renewal window"
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

/// Reads the allocator's heap statistics into `onramp_heap_bytes` every
/// `period`, for as long as the server runs: with the process RSS they
/// tell memory the server holds from memory freed but not yet returned.
pub async fn sample_heap(period: std::time::Duration) {
    use tikv_jemalloc_ctl::{epoch, stats};
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The statistics are a snapshot taken when the epoch advances.
        if epoch::advance().is_err() {
            continue;
        }
        let readings = [
            ("allocated", stats::allocated::read()),
            ("active", stats::active::read()),
            ("resident", stats::resident::read()),
            ("retained", stats::retained::read()),
            ("metadata", stats::metadata::read()),
        ];
        for (kind, value) in readings {
            if let Ok(bytes) = value {
                metrics::gauge!("onramp_heap_bytes", "kind" => kind).set(bytes as f64);
            }
        }
    }
}
