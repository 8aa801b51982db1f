//! Fleet provisioning by claim, as pure rules: the reserved topics and their
//! replies, request payloads, the claim certificate's policy, who may
//! provision, and the pre-provisioning hook's answer.

use crate::policy::PolicyDocument;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A claim connection's identity in the gateway is this prefix and the
/// claim certificate's serial: never a valid thing name (`$` and `/`).
pub const CLAIM_IDENTITY_PREFIX: &str = "$claim/";

/// Payload encoding named by the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Json,
    Cbor,
}

impl PayloadFormat {
    fn parse(s: &str) -> Option<PayloadFormat> {
        match s {
            "json" => Some(PayloadFormat::Json),
            "cbor" => Some(PayloadFormat::Cbor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Cbor => "cbor",
        }
    }
}

/// A fleet-provisioning request recognised from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisioningTopic {
    /// `$aws/certificates/create/{fmt}`: CreateKeysAndCertificate.
    CreateKeysAndCertificate(PayloadFormat),
    /// `$aws/certificates/create-from-csr/{fmt}`.
    CreateCertificateFromCsr(PayloadFormat),
    /// `$aws/provisioning-templates/{template}/provision/{fmt}`: RegisterThing.
    RegisterThing {
        template: String,
        format: PayloadFormat,
    },
}

impl ProvisioningTopic {
    pub fn parse(topic: &str) -> Option<ProvisioningTopic> {
        let rest = topic.strip_prefix("$aws/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["certificates", "create", fmt] => Some(ProvisioningTopic::CreateKeysAndCertificate(
                PayloadFormat::parse(fmt)?,
            )),
            ["certificates", "create-from-csr", fmt] => Some(
                ProvisioningTopic::CreateCertificateFromCsr(PayloadFormat::parse(fmt)?),
            ),
            ["provisioning-templates", template, "provision", fmt] if !template.is_empty() => {
                Some(ProvisioningTopic::RegisterThing {
                    template: (*template).to_string(),
                    format: PayloadFormat::parse(fmt)?,
                })
            }
            _ => None,
        }
    }

    pub fn format(&self) -> PayloadFormat {
        match self {
            ProvisioningTopic::CreateKeysAndCertificate(f)
            | ProvisioningTopic::CreateCertificateFromCsr(f) => *f,
            ProvisioningTopic::RegisterThing { format, .. } => *format,
        }
    }

    /// The request topic itself.
    pub fn topic(&self) -> String {
        match self {
            ProvisioningTopic::CreateKeysAndCertificate(f) => {
                format!("$aws/certificates/create/{}", f.as_str())
            }
            ProvisioningTopic::CreateCertificateFromCsr(f) => {
                format!("$aws/certificates/create-from-csr/{}", f.as_str())
            }
            ProvisioningTopic::RegisterThing { template, format } => format!(
                "$aws/provisioning-templates/{template}/provision/{}",
                format.as_str()
            ),
        }
    }

    pub fn accepted(&self) -> String {
        format!("{}/accepted", self.topic())
    }

    pub fn rejected(&self) -> String {
        format!("{}/rejected", self.topic())
    }

    /// The operation's name in metrics and the audit log.
    pub fn operation(&self) -> &'static str {
        match self {
            ProvisioningTopic::CreateKeysAndCertificate(_) => "create_keys_and_certificate",
            ProvisioningTopic::CreateCertificateFromCsr(_) => "create_certificate_from_csr",
            ProvisioningTopic::RegisterThing { .. } => "register_thing",
        }
    }
}

/// The error reply on a `/rejected` topic, with AWS's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{status_code} {error_code}: {error_message}")]
pub struct ProvisioningRejection {
    pub status_code: u16,
    pub error_code: String,
    pub error_message: String,
}

impl ProvisioningRejection {
    pub fn new(status_code: u16, error_code: &str, message: impl Into<String>) -> Self {
        ProvisioningRejection {
            status_code,
            error_code: error_code.to_string(),
            error_message: message.into(),
        }
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidPayload", message)
    }

    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidCertificateOwnershipToken", message)
    }

    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(403, "AccessDenied", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFound", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "ResourceConflictsException", message)
    }

    pub fn throttled(message: impl Into<String>) -> Self {
        Self::new(429, "Throttling", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Limits on request payloads (AWS: 128 KiB per MQTT message).
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
pub const MAX_PARAMETERS: usize = 64;
pub const MAX_PARAMETER_BYTES: usize = 2048;

/// CreateKeysAndCertificate accepts an empty payload or `{}` (the SDKs send `{}`).
pub fn parse_create_keys_request(payload: &[u8]) -> Result<(), ProvisioningRejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(ProvisioningRejection::invalid_payload(
            "the request must be empty or a JSON object",
        )),
        Err(e) => Err(ProvisioningRejection::invalid_payload(format!(
            "the request is not valid JSON: {e}"
        ))),
    }
}

/// CreateCertificateFromCsr: `{"certificateSigningRequest": "<PEM>"}`.
pub fn parse_create_from_csr_request(payload: &[u8]) -> Result<String, ProvisioningRejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Request {
        certificate_signing_request: Option<String>,
    }
    let request: Request = serde_json::from_slice(payload).map_err(|e| {
        ProvisioningRejection::invalid_payload(format!("the request is not valid JSON: {e}"))
    })?;
    let csr = request.certificate_signing_request.unwrap_or_default();
    if csr.trim().is_empty() {
        return Err(ProvisioningRejection::invalid_payload(
            "certificateSigningRequest is required",
        ));
    }
    if csr.len() > MAX_CSR_PEM_BYTES {
        return Err(ProvisioningRejection::invalid_payload(format!(
            "certificateSigningRequest is longer than {MAX_CSR_PEM_BYTES} bytes"
        )));
    }
    Ok(csr)
}

/// A RegisterThing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterThingRequest {
    pub ownership_token: String,
    pub parameters: BTreeMap<String, String>,
}

pub fn parse_register_thing_request(
    payload: &[u8],
) -> Result<RegisterThingRequest, ProvisioningRejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Request {
        certificate_ownership_token: Option<String>,
        parameters: Option<BTreeMap<String, serde_json::Value>>,
    }
    let request: Request = serde_json::from_slice(payload).map_err(|e| {
        ProvisioningRejection::invalid_payload(format!("the request is not valid JSON: {e}"))
    })?;
    let token = request.certificate_ownership_token.unwrap_or_default();
    if token.is_empty() {
        return Err(ProvisioningRejection::invalid_token(
            "certificateOwnershipToken cannot be empty",
        ));
    }
    let raw = request.parameters.unwrap_or_default();
    if raw.len() > MAX_PARAMETERS {
        return Err(ProvisioningRejection::invalid_payload(format!(
            "at most {MAX_PARAMETERS} parameters are allowed"
        )));
    }
    let mut parameters = BTreeMap::new();
    for (k, v) in raw {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ProvisioningRejection::invalid_payload(format!(
                    "parameter `{k}` must be a string"
                )));
            }
        };
        if k.len() + text.len() > MAX_PARAMETER_BYTES {
            return Err(ProvisioningRejection::invalid_payload(format!(
                "parameter `{k}` is too long"
            )));
        }
        // Built-in parameters come from the certificate, never from the device.
        if k.starts_with("AWS::") {
            return Err(ProvisioningRejection::invalid_payload(format!(
                "parameter `{k}` is reserved"
            )));
        }
        parameters.insert(k, text);
    }
    Ok(RegisterThingRequest {
        ownership_token: token,
        parameters,
    })
}

/// The policy attached to every claim certificate: connect, and the two
/// provisioning APIs for its one template, nothing else.
pub fn claim_policy(template: &str) -> PolicyDocument {
    let text = claim_policy_text(template);
    // The text is built from constants and a validated template name.
    PolicyDocument::parse(&text).unwrap_or_else(|_| PolicyDocument::deny_all())
}

pub fn claim_policy_text(template: &str) -> String {
    let topics = [
        "$aws/certificates/create/*".to_string(),
        "$aws/certificates/create-from-csr/*".to_string(),
        format!("$aws/provisioning-templates/{template}/provision/*"),
    ];
    let topic = |kind: &str| -> Vec<String> {
        topics
            .iter()
            .map(|t| format!("arn:aws:iot:*:*:{kind}/{t}"))
            .collect()
    };
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:*:*:client/*"]},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": topic("topic")},
            {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": topic("topicfilter")}
        ]
    })
    .to_string()
}

/// Why a serial may not provision through a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialRefusal {
    #[error("serial `{0}` is not on the template's allow-list")]
    NotAllowed(String),
    #[error("serial `{0}` is on the template's deny-list")]
    Denied(String),
}

/// The deny-list wins; an allow-list, when set, must name the serial.
pub fn check_serial(
    allow: Option<&[String]>,
    deny: &[String],
    serial: &str,
) -> Result<(), SerialRefusal> {
    if deny.iter().any(|d| d == serial) {
        return Err(SerialRefusal::Denied(serial.to_string()));
    }
    match allow {
        Some(list) if !list.iter().any(|a| a == serial) => {
            Err(SerialRefusal::NotAllowed(serial.to_string()))
        }
        _ => Ok(()),
    }
}

/// What the pre-provisioning hook is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    pub claim_certificate_id: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    pub template_arn: String,
    pub client_id: String,
    pub parameters: BTreeMap<String, String>,
}

/// The hook's answer: provision or not, and parameter values that win over
/// the device's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDecision {
    pub allow: bool,
    pub parameter_overrides: BTreeMap<String, String>,
}

/// Reads the hook's answer; anything unreadable counts as a refusal.
pub fn parse_hook_response(body: &[u8]) -> Result<HookDecision, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        allow_provisioning: Option<bool>,
        parameter_overrides: Option<BTreeMap<String, serde_json::Value>>,
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("the hook's answer is not JSON: {e}"))?;
    let allow = a
        .allow_provisioning
        .ok_or("the hook's answer has no allowProvisioning")?;
    let mut overrides = BTreeMap::new();
    for (k, v) in a.parameter_overrides.unwrap_or_default() {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(format!("parameter override `{k}` is not a string")),
        };
        overrides.insert(k, text);
    }
    Ok(HookDecision {
        allow,
        parameter_overrides: overrides,
    })
}

/// A template name: 1 to 36 of letters, digits, `_` and `-` (AWS's rule).
pub fn validate_template_name(name: &str) -> Result<(), String> {
    if (1..=36).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err("a template name is 1 to 36 of letters, digits, `_` and `-`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, PolicyContext, Resource, evaluate};

    #[test]
    fn topics_parse_and_reply_where_aws_does() {
        let t = ProvisioningTopic::parse("$aws/certificates/create/json").unwrap();
        assert_eq!(
            t,
            ProvisioningTopic::CreateKeysAndCertificate(PayloadFormat::Json)
        );
        assert_eq!(t.accepted(), "$aws/certificates/create/json/accepted");
        let t = ProvisioningTopic::parse("$aws/certificates/create-from-csr/cbor").unwrap();
        assert_eq!(
            t.rejected(),
            "$aws/certificates/create-from-csr/cbor/rejected"
        );
        let t =
            ProvisioningTopic::parse("$aws/provisioning-templates/fab-1/provision/json").unwrap();
        assert_eq!(
            t,
            ProvisioningTopic::RegisterThing {
                template: "fab-1".into(),
                format: PayloadFormat::Json
            }
        );
        assert_eq!(
            t.accepted(),
            "$aws/provisioning-templates/fab-1/provision/json/accepted"
        );
        for other in [
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create/xml",
            "$aws/provisioning-templates//provision/json",
            "$aws/things/x/shadow/get",
            "certificates/create/json",
        ] {
            assert_eq!(ProvisioningTopic::parse(other), None, "{other}");
        }
    }

    #[test]
    fn create_keys_accepts_empty_and_empty_object_only() {
        assert!(parse_create_keys_request(b"").is_ok());
        assert!(parse_create_keys_request(b"{}").is_ok());
        assert!(parse_create_keys_request(b" \n").is_ok());
        assert_eq!(
            parse_create_keys_request(b"[1]").unwrap_err().error_code,
            "InvalidPayload"
        );
        assert!(parse_create_keys_request(b"{").is_err());
    }

    #[test]
    fn register_thing_requests_are_checked() {
        let r = parse_register_thing_request(
            br#"{"certificateOwnershipToken":"t","parameters":{"SerialNumber":"A1","n":3}}"#,
        )
        .unwrap();
        assert_eq!(r.ownership_token, "t");
        assert_eq!(r.parameters["SerialNumber"], "A1");
        assert_eq!(r.parameters["n"], "3");
        let e = parse_register_thing_request(br#"{"parameters":{}}"#).unwrap_err();
        assert_eq!(e.status_code, 400);
        assert_eq!(e.error_code, "InvalidCertificateOwnershipToken");
        let e = parse_register_thing_request(
            br#"{"certificateOwnershipToken":"t","parameters":{"AWS::IoT::Certificate::Id":"x"}}"#,
        )
        .unwrap_err();
        assert!(e.error_message.contains("reserved"));
        assert!(
            parse_register_thing_request(
                br#"{"certificateOwnershipToken":"t","parameters":{"a":{"b":1}}}"#
            )
            .is_err()
        );
        assert!(parse_register_thing_request(b"not json").is_err());
    }

    #[test]
    fn the_claim_policy_allows_provisioning_of_its_template_only() {
        let doc = claim_policy("fab-1");
        let ctx = PolicyContext {
            client_id: "anything".into(),
            ..PolicyContext::default()
        };
        let allows =
            |a, r: Resource<'_>| evaluate(std::slice::from_ref(&doc), a, &r, &ctx).is_allowed();
        assert!(allows(Action::Connect, Resource::Client("anything")));
        for t in [
            "$aws/certificates/create/json",
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create-from-csr/json",
            "$aws/provisioning-templates/fab-1/provision/json",
            "$aws/provisioning-templates/fab-1/provision/json/rejected",
        ] {
            assert!(allows(Action::Publish, Resource::Topic(t)), "{t}");
            assert!(allows(Action::Receive, Resource::Topic(t)), "{t}");
        }
        assert!(allows(
            Action::Subscribe,
            Resource::TopicFilter("$aws/certificates/create/json/accepted")
        ));
        for t in [
            "$aws/provisioning-templates/other/provision/json",
            "$aws/things/x/shadow/update",
            "device/x/telemetry",
            "$aws/events/presence/connected/x",
        ] {
            assert!(!allows(Action::Publish, Resource::Topic(t)), "{t}");
            assert!(!allows(Action::Subscribe, Resource::TopicFilter(t)), "{t}");
        }
        assert!(!allows(Action::Subscribe, Resource::TopicFilter("#")));
        assert!(!allows(
            Action::RetainPublish,
            Resource::Topic("$aws/certificates/create/json")
        ));
    }

    #[test]
    fn deny_list_wins_and_allow_list_must_name_the_serial() {
        let allow = vec!["A".to_string(), "B".to_string()];
        let deny = vec!["B".to_string()];
        assert!(check_serial(Some(&allow), &deny, "A").is_ok());
        assert_eq!(
            check_serial(Some(&allow), &deny, "B"),
            Err(SerialRefusal::Denied("B".into()))
        );
        assert_eq!(
            check_serial(Some(&allow), &deny, "C"),
            Err(SerialRefusal::NotAllowed("C".into()))
        );
        assert!(check_serial(None, &deny, "C").is_ok());
        assert!(check_serial(None, &deny, "B").is_err());
    }

    #[test]
    fn hook_answers_are_read_strictly() {
        let d = parse_hook_response(
            br#"{"allowProvisioning":true,"parameterOverrides":{"Region":"eu"}}"#,
        )
        .unwrap();
        assert!(d.allow);
        assert_eq!(d.parameter_overrides["Region"], "eu");
        assert!(
            !parse_hook_response(br#"{"allowProvisioning":false}"#)
                .unwrap()
                .allow
        );
        assert!(parse_hook_response(br#"{}"#).is_err());
        assert!(parse_hook_response(b"<html>").is_err());
    }

    #[test]
    fn rejections_use_aws_field_names() {
        let j: serde_json::Value =
            serde_json::from_slice(&ProvisioningRejection::invalid_token("expired").to_json())
                .unwrap();
        assert_eq!(j["statusCode"], 400);
        assert_eq!(j["errorCode"], "InvalidCertificateOwnershipToken");
        assert_eq!(j["errorMessage"], "expired");
    }

    #[test]
    fn template_names_follow_aws() {
        assert!(validate_template_name("fab_1-x").is_ok());
        assert!(validate_template_name("").is_err());
        assert!(validate_template_name(&"a".repeat(37)).is_err());
        assert!(validate_template_name("a/b").is_err());
        assert!(validate_template_name("a+b").is_err());
    }
}
