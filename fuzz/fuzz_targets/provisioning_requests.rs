//! Fleet provisioning by claim: the reserved request topics and the request
//! payloads a device publishes on them (CreateKeysAndCertificate,
//! CreateCertificateFromCsr, RegisterThing), and the pre-provisioning hook's
//! answer. Every parser gets the whole input; the topic parser reads it as
//! lossy UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::provisioning::{
    MAX_CSR_PEM_BYTES, MAX_PARAMETER_BYTES, MAX_PARAMETERS, PayloadFormat, ProvisioningRejection,
    ProvisioningTopic, parse_create_from_csr_request, parse_create_keys_request,
    parse_hook_response, parse_register_thing_request,
};
use serde_json::{Value, json};

/// A topic that parses is exactly the topic Onramp would print for it, and
/// its reply topics are not request topics.
fn check_topic(topic: &str) {
    let Some(parsed) = ProvisioningTopic::parse(topic) else {
        return;
    };
    assert_eq!(parsed.topic(), topic, "topic() of {parsed:?}");
    assert_eq!(
        ProvisioningTopic::parse(&parsed.topic()).as_ref(),
        Some(&parsed)
    );
    assert_eq!(parsed.accepted(), format!("{topic}/accepted"));
    assert_eq!(parsed.rejected(), format!("{topic}/rejected"));
    assert_eq!(ProvisioningTopic::parse(&parsed.accepted()), None);
    assert_eq!(ProvisioningTopic::parse(&parsed.rejected()), None);
    let format = parsed.format();
    assert!(topic.ends_with(&format!("/{}", format.as_str())));
    assert!(matches!(format, PayloadFormat::Json | PayloadFormat::Cbor));
    match &parsed {
        ProvisioningTopic::CreateKeysAndCertificate(_) => {
            assert_eq!(parsed.operation(), "create_keys_and_certificate");
        }
        ProvisioningTopic::CreateCertificateFromCsr(_) => {
            assert_eq!(parsed.operation(), "create_certificate_from_csr");
        }
        ProvisioningTopic::RegisterThing { template, .. } => {
            assert_eq!(parsed.operation(), "register_thing");
            assert!(!template.is_empty());
            assert!(!template.contains('/'), "template {template:?}");
        }
    }
}

/// A refusal goes back to the device as JSON with AWS's three field names,
/// and reads back as the same refusal.
fn check_rejection(rejection: &ProvisioningRejection, codes: &[(u16, &str)]) {
    assert!(
        codes.contains(&(rejection.status_code, rejection.error_code.as_str())),
        "unexpected rejection {rejection:?}"
    );
    assert!(!rejection.error_message.is_empty());
    let bytes = rejection.to_json();
    let value: Value = serde_json::from_slice(&bytes).expect("a rejection serialises to JSON");
    let Value::Object(fields) = &value else {
        panic!("rejection JSON is not an object: {value}");
    };
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["errorCode", "errorMessage", "statusCode"]);
    assert_eq!(value["statusCode"], json!(rejection.status_code));
    assert_eq!(value["errorCode"], json!(rejection.error_code));
    assert_eq!(value["errorMessage"], json!(rejection.error_message));
    let back: ProvisioningRejection = serde_json::from_value(value).expect("reads back");
    assert_eq!(&back, rejection);
}

const INVALID_PAYLOAD: (u16, &str) = (400, "InvalidPayload");
const INVALID_TOKEN: (u16, &str) = (400, "InvalidCertificateOwnershipToken");

fuzz_target!(|data: &[u8]| {
    check_topic(&String::from_utf8_lossy(data));

    // CreateKeysAndCertificate: empty (whitespace only) or a JSON object.
    match parse_create_keys_request(data) {
        Ok(()) => assert!(
            data.iter().all(u8::is_ascii_whitespace)
                || matches!(serde_json::from_slice::<Value>(data), Ok(Value::Object(_)))
        ),
        Err(e) => check_rejection(&e, &[INVALID_PAYLOAD]),
    }

    // CreateCertificateFromCsr: a non-blank PEM string within the limit.
    match parse_create_from_csr_request(data) {
        Ok(csr) => {
            assert!(!csr.trim().is_empty());
            assert!(csr.len() <= MAX_CSR_PEM_BYTES);
        }
        Err(e) => check_rejection(&e, &[INVALID_PAYLOAD]),
    }

    // RegisterThing: a token, and at most MAX_PARAMETERS short string
    // parameters, none of them a certificate built-in.
    match parse_register_thing_request(data) {
        Ok(request) => {
            assert!(!request.ownership_token.is_empty());
            assert!(request.parameters.len() <= MAX_PARAMETERS);
            for (name, value) in &request.parameters {
                assert!(!name.starts_with("AWS::"), "reserved parameter {name:?}");
                assert!(name.len() + value.len() <= MAX_PARAMETER_BYTES);
            }
            // The canonical form of an accepted request is accepted as the same request.
            let canonical = json!({
                "certificateOwnershipToken": request.ownership_token,
                "parameters": request.parameters,
            });
            let again = parse_register_thing_request(canonical.to_string().as_bytes())
                .expect("the canonical form of an accepted request");
            assert_eq!(again, request);
        }
        Err(e) => check_rejection(&e, &[INVALID_PAYLOAD, INVALID_TOKEN]),
    }

    // The hook's answer: anything unreadable is a refusal with a reason.
    match parse_hook_response(data) {
        Ok(decision) => {
            let canonical = json!({
                "allowProvisioning": decision.allow,
                "parameterOverrides": decision.parameter_overrides,
            });
            let again = parse_hook_response(canonical.to_string().as_bytes())
                .expect("the canonical form of a readable answer");
            assert_eq!(again, decision);
        }
        Err(why) => assert!(!why.is_empty()),
    }
});
