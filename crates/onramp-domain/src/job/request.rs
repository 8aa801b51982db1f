//! The payloads of the four device requests, parsed from untrusted bytes.
//!
//! A payload that is not a JSON object is `InvalidJson`; a member of the
//! wrong type or out of range is `InvalidRequest`. Members Onramp does not
//! know are ignored, and a `null` member counts as absent. A payload of only
//! whitespace counts as `{}`, so a bare request works wherever every member
//! is optional.

use super::{JobExecutionStatus, JobRejection, StatusDetails};
use serde_json::{Map, Value};

/// The bounds a Jobs request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRequestLimits {
    /// Raw bytes of a request payload (AWS's MQTT payload maximum).
    pub max_payload_bytes: usize,
    /// UTF-8 bytes of a `clientToken`.
    pub max_client_token_bytes: usize,
    /// Pairs in `statusDetails`.
    pub max_status_details: usize,
    /// Characters of one `statusDetails` key.
    pub max_status_detail_key_chars: usize,
    /// Characters of one `statusDetails` value.
    pub max_status_detail_value_chars: usize,
}

impl Default for JobRequestLimits {
    fn default() -> Self {
        JobRequestLimits {
            max_payload_bytes: 128 * 1024,
            max_client_token_bytes: 64,
            max_status_details: 10,
            // AWS's API reference: keys 1–128 of `[A-Za-z0-9:_-]`, values
            // 1–1024 characters (its 2019 limits table said 128 for both;
            // devices may rely on the larger value).
            max_status_detail_key_chars: 128,
            max_status_detail_value_chars: 1024,
        }
    }
}

/// The longest step timer a device may set: 7 days.
pub const STEP_TIMEOUT_MAX_MINUTES: u32 = 10_080;

/// What a request's `stepTimeoutInMinutes` asks of the step timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepTimeout {
    /// A new timer of this many minutes from now, replacing any other.
    Minutes(u32),
    /// `-1`: no step timer from now on (UpdateJobExecution only).
    Discard,
}

/// GetPendingJobExecutions (`jobs/get`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetPendingRequest {
    pub client_token: Option<String>,
}

/// StartNextPendingJobExecution (`jobs/start-next`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartNextRequest {
    pub status_details: Option<StatusDetails>,
    pub step_timeout: Option<StepTimeout>,
    pub client_token: Option<String>,
}

/// DescribeJobExecution (`jobs/{jobId}/get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeRequest {
    pub execution_number: Option<u64>,
    /// Defaults to true.
    pub include_job_document: bool,
    pub client_token: Option<String>,
}

/// UpdateJobExecution (`jobs/{jobId}/update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    pub status: JobExecutionStatus,
    /// `None` leaves the details as they are.
    pub status_details: Option<StatusDetails>,
    pub expected_version: Option<u64>,
    pub execution_number: Option<u64>,
    /// Defaults to false.
    pub include_job_execution_state: bool,
    /// Defaults to false.
    pub include_job_document: bool,
    pub step_timeout: Option<StepTimeout>,
    pub client_token: Option<String>,
}

impl UpdateRequest {
    /// An update to `status` and nothing else.
    pub fn to(status: JobExecutionStatus) -> UpdateRequest {
        UpdateRequest {
            status,
            status_details: None,
            expected_version: None,
            execution_number: None,
            include_job_execution_state: false,
            include_job_document: false,
            step_timeout: None,
            client_token: None,
        }
    }
}

pub fn parse_get_pending_request(
    bytes: &[u8],
    limits: &JobRequestLimits,
) -> Result<GetPendingRequest, JobRejection> {
    let root = parse_root(bytes, limits)?;
    Ok(GetPendingRequest {
        client_token: client_token_of(&root, limits)?,
    })
}

pub fn parse_start_next_request(
    bytes: &[u8],
    limits: &JobRequestLimits,
) -> Result<StartNextRequest, JobRejection> {
    let root = parse_root(bytes, limits)?;
    let step_timeout = match step_timeout_of(&root)? {
        Some(StepTimeout::Discard) => {
            return Err(JobRejection::invalid_request(
                "stepTimeoutInMinutes must be between 1 and 10080",
            ));
        }
        other => other,
    };
    Ok(StartNextRequest {
        status_details: status_details_of(&root, limits)?,
        step_timeout,
        client_token: client_token_of(&root, limits)?,
    })
}

pub fn parse_describe_request(
    bytes: &[u8],
    limits: &JobRequestLimits,
) -> Result<DescribeRequest, JobRejection> {
    let root = parse_root(bytes, limits)?;
    Ok(DescribeRequest {
        execution_number: execution_number_of(&root)?,
        include_job_document: bool_of(&root, "includeJobDocument")?.unwrap_or(true),
        client_token: client_token_of(&root, limits)?,
    })
}

pub fn parse_update_request(
    bytes: &[u8],
    limits: &JobRequestLimits,
) -> Result<UpdateRequest, JobRejection> {
    let root = parse_root(bytes, limits)?;
    let status = match root.get("status") {
        None | Some(Value::Null) => {
            return Err(JobRejection::invalid_request("status is required"));
        }
        Some(Value::String(s)) => JobExecutionStatus::parse(s).ok_or_else(|| {
            JobRejection::invalid_request(format!("status {s:?} is not a job execution status"))
        })?,
        Some(_) => return Err(JobRejection::invalid_request("status must be a string")),
    };
    let expected_version = match root.get("expectedVersion") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            JobRejection::invalid_request("expectedVersion must be a non-negative integer")
        })?),
    };
    Ok(UpdateRequest {
        status,
        status_details: status_details_of(&root, limits)?,
        expected_version,
        execution_number: execution_number_of(&root)?,
        include_job_execution_state: bool_of(&root, "includeJobExecutionState")?.unwrap_or(false),
        include_job_document: bool_of(&root, "includeJobDocument")?.unwrap_or(false),
        step_timeout: step_timeout_of(&root)?,
        client_token: client_token_of(&root, limits)?,
    })
}

/// The `clientToken` to echo in a rejection of `bytes`, if the payload
/// carried a valid one; the request may be invalid in any other way.
pub fn client_token_for_reply(bytes: &[u8], limits: &JobRequestLimits) -> Option<String> {
    let root = parse_root(bytes, limits).ok()?;
    client_token_of(&root, limits).ok().flatten()
}

fn parse_root(bytes: &[u8], limits: &JobRequestLimits) -> Result<Map<String, Value>, JobRejection> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(JobRejection::invalid_request(
            "the payload exceeds the maximum size allowed",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(root)) => Ok(root),
        Ok(_) => Err(JobRejection::invalid_json(
            "the payload must be a JSON object",
        )),
        Err(e) => Err(JobRejection::invalid_json(format!(
            "the payload is not valid JSON: {e}"
        ))),
    }
}

fn client_token_of(
    root: &Map<String, Value>,
    limits: &JobRequestLimits,
) -> Result<Option<String>, JobRejection> {
    match root.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) if token.len() <= limits.max_client_token_bytes => {
            Ok(Some(token.clone()))
        }
        Some(Value::String(_)) => Err(JobRejection::invalid_request(format!(
            "clientToken must be at most {} bytes",
            limits.max_client_token_bytes
        ))),
        Some(_) => Err(JobRejection::invalid_request(
            "clientToken must be a string",
        )),
    }
}

fn bool_of(root: &Map<String, Value>, name: &str) -> Result<Option<bool>, JobRejection> {
    match root.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(JobRejection::invalid_request(format!(
            "{name} must be a boolean"
        ))),
    }
}

fn execution_number_of(root: &Map<String, Value>) -> Result<Option<u64>, JobRejection> {
    match root.get("executionNumber") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(JobRejection::invalid_request(
                "executionNumber must be a positive integer",
            )),
        },
    }
}

fn step_timeout_of(root: &Map<String, Value>) -> Result<Option<StepTimeout>, JobRejection> {
    let out_of_range =
        || JobRejection::invalid_request("stepTimeoutInMinutes must be -1 or between 1 and 10080");
    match root.get("stepTimeoutInMinutes") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(-1) => Ok(Some(StepTimeout::Discard)),
            Some(n) if (1..=i64::from(STEP_TIMEOUT_MAX_MINUTES)).contains(&n) => {
                let minutes = u32::try_from(n).map_err(|_| out_of_range())?;
                Ok(Some(StepTimeout::Minutes(minutes)))
            }
            _ => Err(out_of_range()),
        },
    }
}

fn status_details_of(
    root: &Map<String, Value>,
    limits: &JobRequestLimits,
) -> Result<Option<StatusDetails>, JobRejection> {
    let map = match root.get("statusDetails") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(JobRejection::invalid_request(
                "statusDetails must be an object of strings",
            ));
        }
    };
    if map.len() > limits.max_status_details {
        return Err(JobRejection::invalid_request(format!(
            "statusDetails may hold at most {} pairs",
            limits.max_status_details
        )));
    }
    let key_max = limits.max_status_detail_key_chars;
    let value_max = limits.max_status_detail_value_chars;
    let mut details = StatusDetails::new();
    for (key, value) in map {
        let key_ok = (1..=key_max).contains(&key.chars().count())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
        if !key_ok {
            return Err(JobRejection::invalid_request(format!(
                "statusDetails keys must be 1 to {key_max} of A-Z, a-z, 0-9, ':', '_' and '-'"
            )));
        }
        let Value::String(value) = value else {
            return Err(JobRejection::invalid_request(format!(
                "statusDetails.{key} must be a string"
            )));
        };
        let value_ok = (1..=value_max).contains(&value.chars().count())
            && !value.chars().any(char::is_control);
        if !value_ok {
            return Err(JobRejection::invalid_request(format!(
                "statusDetails.{key} must be 1 to {value_max} characters, none of them control characters"
            )));
        }
        details.insert(key.clone(), value.clone());
    }
    Ok(Some(details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobErrorCode;
    use proptest::prelude::*;

    fn limits() -> JobRequestLimits {
        JobRequestLimits::default()
    }

    fn code_of<T: std::fmt::Debug>(r: Result<T, JobRejection>) -> JobErrorCode {
        r.expect_err("should be refused").code
    }

    #[test]
    fn empty_payloads_are_allowed_where_every_member_is_optional() {
        assert_eq!(
            parse_get_pending_request(b"", &limits()).unwrap(),
            GetPendingRequest::default()
        );
        assert_eq!(
            parse_start_next_request(b"  ", &limits()).unwrap(),
            StartNextRequest::default()
        );
        let describe = parse_describe_request(b"", &limits()).unwrap();
        assert!(describe.include_job_document, "defaults to true");
        assert_eq!(describe.execution_number, None);
        assert_eq!(
            code_of(parse_update_request(b"", &limits())),
            JobErrorCode::InvalidRequest,
            "status is required"
        );
    }

    #[test]
    fn non_json_and_non_objects_are_invalid_json() {
        for bad in [&b"{"[..], b"[]", b"\"x\"", b"12", b"\xff\xfe", b"{\"a\":}"] {
            assert_eq!(
                code_of(parse_get_pending_request(bad, &limits())),
                JobErrorCode::InvalidJson
            );
            assert_eq!(
                code_of(parse_update_request(bad, &limits())),
                JobErrorCode::InvalidJson
            );
        }
    }

    #[test]
    fn the_client_token_is_read_and_bounded() {
        let r = parse_get_pending_request(br#"{"clientToken":"abc"}"#, &limits()).unwrap();
        assert_eq!(r.client_token.as_deref(), Some("abc"));
        let long = format!(r#"{{"clientToken":"{}"}}"#, "x".repeat(65));
        assert_eq!(
            code_of(parse_get_pending_request(long.as_bytes(), &limits())),
            JobErrorCode::InvalidRequest
        );
        assert_eq!(
            code_of(parse_get_pending_request(
                br#"{"clientToken":5}"#,
                &limits()
            )),
            JobErrorCode::InvalidRequest
        );
        assert_eq!(
            client_token_for_reply(br#"{"clientToken":"t","status":7}"#, &limits()).as_deref(),
            Some("t")
        );
        assert_eq!(client_token_for_reply(b"{", &limits()), None);
    }

    #[test]
    fn a_full_update_is_parsed_with_every_member() {
        let r = parse_update_request(
            br#"{"status":"IN_PROGRESS","statusDetails":{"step":"download"},
                "expectedVersion":3,"executionNumber":2,"includeJobExecutionState":true,
                "includeJobDocument":true,"stepTimeoutInMinutes":15,"clientToken":"c"}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(r.status, JobExecutionStatus::InProgress);
        assert_eq!(
            r.status_details,
            Some(StatusDetails::from([("step".into(), "download".into())]))
        );
        assert_eq!(r.expected_version, Some(3));
        assert_eq!(r.execution_number, Some(2));
        assert!(r.include_job_execution_state && r.include_job_document);
        assert_eq!(r.step_timeout, Some(StepTimeout::Minutes(15)));
        assert_eq!(r.client_token.as_deref(), Some("c"));

        let bare = parse_update_request(br#"{"status":"SUCCEEDED"}"#, &limits()).unwrap();
        assert_eq!(bare, UpdateRequest::to(JobExecutionStatus::Succeeded));
    }

    #[test]
    fn update_members_of_the_wrong_type_or_value_are_invalid_requests() {
        for bad in [
            r#"{"status":"DONE"}"#,
            r#"{"status":1}"#,
            r#"{"status":"SUCCEEDED","expectedVersion":-1}"#,
            r#"{"status":"SUCCEEDED","expectedVersion":"1"}"#,
            r#"{"status":"SUCCEEDED","executionNumber":0}"#,
            r#"{"status":"SUCCEEDED","executionNumber":1.5}"#,
            r#"{"status":"SUCCEEDED","includeJobDocument":"yes"}"#,
            r#"{"status":"SUCCEEDED","includeJobExecutionState":1}"#,
            r#"{"status":"SUCCEEDED","stepTimeoutInMinutes":0}"#,
            r#"{"status":"SUCCEEDED","stepTimeoutInMinutes":10081}"#,
            r#"{"status":"SUCCEEDED","stepTimeoutInMinutes":-2}"#,
            r#"{"status":"SUCCEEDED","stepTimeoutInMinutes":"5"}"#,
            r#"{"status":"SUCCEEDED","statusDetails":[]}"#,
            r#"{"status":"SUCCEEDED","statusDetails":{"a":1}}"#,
            r#"{"status":"SUCCEEDED","statusDetails":{"a":{"b":"c"}}}"#,
            r#"{"status":"SUCCEEDED","statusDetails":{"":"v"}}"#,
            r#"{"status":"SUCCEEDED","statusDetails":{"bad key":"v"}}"#,
            r#"{"status":"SUCCEEDED","statusDetails":{"k":""}}"#,
        ] {
            assert_eq!(
                code_of(parse_update_request(bad.as_bytes(), &limits())),
                JobErrorCode::InvalidRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn status_details_are_bounded_in_pairs_and_characters() {
        let pairs = |n: usize| {
            let map: Map<String, Value> = (0..n)
                .map(|i| (format!("k{i}"), Value::String("v".into())))
                .collect();
            serde_json::to_vec(&serde_json::json!({"status": "IN_PROGRESS", "statusDetails": map}))
                .unwrap()
        };
        assert!(parse_update_request(&pairs(10), &limits()).is_ok());
        assert_eq!(
            code_of(parse_update_request(&pairs(11), &limits())),
            JobErrorCode::InvalidRequest
        );
        let sized = |k: usize, v: usize| {
            format!(
                r#"{{"status":"IN_PROGRESS","statusDetails":{{"{}":"{}"}}}}"#,
                "k".repeat(k),
                "é".repeat(v)
            )
        };
        assert!(parse_update_request(sized(128, 1024).as_bytes(), &limits()).is_ok());
        assert!(parse_update_request(sized(129, 1).as_bytes(), &limits()).is_err());
        assert!(parse_update_request(sized(1, 1025).as_bytes(), &limits()).is_err());
        for bad_key in ["step one", "é", "a/b", "a.b"] {
            let payload =
                serde_json::json!({"status": "IN_PROGRESS", "statusDetails": {bad_key: "v"}});
            assert_eq!(
                code_of(parse_update_request(
                    &serde_json::to_vec(&payload).unwrap(),
                    &limits()
                )),
                JobErrorCode::InvalidRequest,
                "{bad_key}"
            );
        }
        assert!(
            parse_update_request(
                br#"{"status":"IN_PROGRESS","statusDetails":{"ns:step_1-a":"any text, even spaces"}}"#,
                &limits()
            )
            .is_ok()
        );
        assert!(
            parse_update_request(
                br#"{"status":"IN_PROGRESS","statusDetails":{"k":"line\nbreak"}}"#,
                &limits()
            )
            .is_err(),
            "control characters are refused in values"
        );
        let empty =
            parse_update_request(br#"{"status":"IN_PROGRESS","statusDetails":{}}"#, &limits())
                .unwrap();
        assert_eq!(empty.status_details, Some(StatusDetails::new()));
    }

    #[test]
    fn minus_one_discards_the_step_timer_on_update_only() {
        let r = parse_update_request(
            br#"{"status":"IN_PROGRESS","stepTimeoutInMinutes":-1}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(r.step_timeout, Some(StepTimeout::Discard));
        assert_eq!(
            code_of(parse_start_next_request(
                br#"{"stepTimeoutInMinutes":-1}"#,
                &limits()
            )),
            JobErrorCode::InvalidRequest
        );
        let s = parse_start_next_request(
            br#"{"stepTimeoutInMinutes":10080,"statusDetails":{"a":"b"}}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(s.step_timeout, Some(StepTimeout::Minutes(10080)));
        assert_eq!(s.status_details.unwrap()["a"], "b");
    }

    #[test]
    fn describe_reads_execution_number_and_the_document_flag() {
        let r = parse_describe_request(
            br#"{"executionNumber":4,"includeJobDocument":false,"clientToken":"q"}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(r.execution_number, Some(4));
        assert!(!r.include_job_document);
        assert_eq!(r.client_token.as_deref(), Some("q"));
        assert_eq!(
            code_of(parse_describe_request(
                br#"{"executionNumber":"4"}"#,
                &limits()
            )),
            JobErrorCode::InvalidRequest
        );
    }

    #[test]
    fn nulls_count_as_absent_and_unknown_members_are_ignored() {
        let r = parse_update_request(
            br#"{"status":"FAILED","statusDetails":null,"expectedVersion":null,"other":[1]}"#,
            &limits(),
        )
        .unwrap();
        assert_eq!(r, UpdateRequest::to(JobExecutionStatus::Failed));
    }

    #[test]
    fn an_oversized_payload_is_refused_before_it_is_parsed() {
        let small = JobRequestLimits {
            max_payload_bytes: 8,
            ..limits()
        };
        assert_eq!(
            code_of(parse_get_pending_request(b"{        }", &small)),
            JobErrorCode::InvalidRequest
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let l = limits();
            let _ = parse_get_pending_request(&bytes, &l);
            let _ = parse_start_next_request(&bytes, &l);
            let _ = parse_describe_request(&bytes, &l);
            let _ = parse_update_request(&bytes, &l);
            let _ = client_token_for_reply(&bytes, &l);
        }

        #[test]
        fn parsers_never_panic_on_arbitrary_json_members(
            status in "\\PC{0,12}",
            version in any::<i64>(),
            number in any::<i64>(),
            step in any::<i64>(),
            key in "\\PC{0,140}",
            value in "\\PC{0,140}",
        ) {
            let payload = serde_json::json!({
                "status": status, "expectedVersion": version, "executionNumber": number,
                "stepTimeoutInMinutes": step, "statusDetails": {key: value},
            });
            let bytes = serde_json::to_vec(&payload).unwrap();
            let l = limits();
            if let Ok(r) = parse_update_request(&bytes, &l) {
                prop_assert!(matches!(r.step_timeout, Some(StepTimeout::Discard) | Some(StepTimeout::Minutes(1..=10080))));
                prop_assert!(r.execution_number.is_some_and(|n| n >= 1));
            }
            let _ = parse_start_next_request(&bytes, &l);
            let _ = parse_describe_request(&bytes, &l);
        }
    }
}
