//! Jobs and device requests: every reserved request topic, the four jobs
//! request payloads a device publishes, and fleet queries (dynamic groups)
//! as an operator sends them. Every parser gets the whole input; the topic
//! parser reads it as lossy UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::DeviceRequest;
use onramp_domain::fleet::FleetQuery;
use onramp_domain::job::{
    JobErrorCode, JobExecution, JobRejection, JobRequestLimits, parse_describe_request,
    parse_get_pending_request, parse_start_next_request, parse_update_request,
};
use onramp_domain::request::is_server_only;

/// A request topic is never a topic only the server publishes to, and its
/// answers are never requests.
fn check_topic(topic: &str) {
    let Some(request) = DeviceRequest::parse(topic) else {
        return;
    };
    assert!(!is_server_only(topic), "{topic} is both a request and server-only");
    assert_eq!(request.topic(), topic);
    for answer in [request.accepted(), request.rejected()] {
        assert!(is_server_only(&answer), "{answer} is not server-only");
        assert_eq!(DeviceRequest::parse(&answer), None, "{answer} parsed as a request");
    }
}

/// A refusal serialises with the wire's field names.
fn check_rejection(r: &JobRejection, limits: &JobRequestLimits) {
    assert!(matches!(
        r.code,
        JobErrorCode::InvalidJson | JobErrorCode::InvalidRequest
    ));
    let v = r.to_reject_json(Some("t"), 1);
    assert_eq!(v["code"], r.code.as_str());
    assert_eq!(v["clientToken"], "t");
    assert!(limits.max_client_token_bytes > 0);
}

fuzz_target!(|data: &[u8]| {
    check_topic(&String::from_utf8_lossy(data));
    let limits = JobRequestLimits::default();
    if let Err(r) = parse_get_pending_request(data, &limits) {
        check_rejection(&r, &limits);
    }
    if let Err(r) = parse_start_next_request(data, &limits) {
        check_rejection(&r, &limits);
    }
    if let Err(r) = parse_describe_request(data, &limits) {
        check_rejection(&r, &limits);
    }
    match parse_update_request(data, &limits) {
        Ok(u) => {
            if let Some(details) = &u.status_details {
                assert!(details.len() <= limits.max_status_details);
            }
            if let Some(t) = &u.client_token {
                assert!(t.len() <= limits.max_client_token_bytes);
            }
        }
        Err(r) => check_rejection(&r, &limits),
    }
    // A fleet query that reads and validates can be evaluated on any thing.
    if let Ok(q) = serde_json::from_slice::<FleetQuery>(data)
        && q.validate().is_ok()
    {
        let e = JobExecution::queued("j", "t", 0);
        let device = onramp_domain::Device {
            tenant: "t".into(),
            thing_name: e.thing_name,
            serial_number: "s".into(),
            device_class: Some("c".into()),
            hardware_revision: Some("h".into()),
            firmware_version: Some("1.0".into()),
            attributes: serde_json::Map::new(),
            thing_groups: vec![],
            status: onramp_domain::DeviceStatus::Active,
            created_at: 0,
            updated_at: 0,
            last_seen_at: None,
        };
        let _ = q.matches(&device, None);
    }
});
