//! Device shadow update requests: the payload of `$aws/things/{thing}/shadow/update`
//! (and of `POST /api/v1/things/{thing}/shadow`), parsed and applied the way
//! the shadow service does it, then stored and read back as the registry does.
//!
//! Input: up to two update payloads separated by a NUL byte (which a JSON
//! text cannot hold). The first is applied to a shadow that does not exist
//! yet, the second to the result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::shadow::{
    ShadowDocument, ShadowLimits, UpdateRequest, apply_update, client_token_for_reply,
    nesting_depth, parse_client_token, parse_update_request, state_size,
};
use serde_json::Value;

const NOW: i64 = 1_764_979_200;

/// What the registry stores is what it reads back (the service keeps the
/// document as JSON text and decodes it on every later request).
fn check_stored(doc: &ShadowDocument, limits: &ShadowLimits) {
    let text = serde_json::to_string(doc).expect("a shadow serialises");
    let back: ShadowDocument = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a stored shadow does not read back: {e}\n{text}"));
    assert_eq!(&back, doc, "{text}");
    assert!(
        state_size(doc.state.desired.as_ref(), doc.state.reported.as_ref())
            <= limits.max_state_bytes
    );
    for section in [&doc.state.desired, &doc.state.reported]
        .into_iter()
        .flatten()
    {
        // A section is level 1; nesting_depth counts the section object too.
        assert!(
            nesting_depth(&Value::Object(section.clone())) <= limits.max_depth,
            "too deep: {text}"
        );
    }
}

/// Parses one payload; checks what every refusal and every acceptance promise.
fn parse(bytes: &[u8], limits: &ShadowLimits) -> Option<UpdateRequest> {
    match parse_update_request(bytes, limits) {
        Err(e) => {
            // AWS's codes for a bad update: invalid JSON or request, too large, not UTF-8.
            assert!(matches!(e.code, 400 | 413 | 415), "{e:?}");
            None
        }
        Ok(request) => {
            if let Some(token) = &request.client_token {
                assert!(token.len() <= limits.max_client_token_bytes);
            }
            // The token echoed in replies is the request's own.
            assert_eq!(client_token_for_reply(bytes, limits), request.client_token);
            assert_eq!(
                parse_client_token(bytes, limits).as_ref(),
                Ok(&request.client_token)
            );
            Some(request)
        }
    }
}

fn apply(
    current: Option<&ShadowDocument>,
    request: &UpdateRequest,
    limits: &ShadowLimits,
) -> Option<ShadowDocument> {
    let previous = current.map_or(0, |d| d.version);
    let result = apply_update(current, 0, request, limits, NOW);
    // A pure function of its inputs.
    assert_eq!(result, apply_update(current, 0, request, limits, NOW));
    let outcome = match result {
        Err(e) => {
            if request.version.is_some_and(|v| v != previous) {
                assert_eq!(e.code, 409, "{e:?}");
            } else {
                assert!(matches!(e.code, 400 | 413), "{e:?}");
            }
            return None;
        }
        Ok(outcome) => outcome,
    };
    let doc = outcome.document;
    assert_eq!(doc.version, previous + 1);
    assert_eq!(outcome.accepted["version"], doc.version);
    assert_eq!(outcome.delta.is_some(), doc.delta().is_some());
    check_stored(&doc, limits);
    // Applying the same update again changes nothing but the version.
    let again = UpdateRequest {
        version: request.version.map(|_| doc.version),
        ..request.clone()
    };
    match apply_update(Some(&doc), 0, &again, limits, NOW) {
        Ok(twice) => {
            assert_eq!(twice.document.state, doc.state, "an update is idempotent");
            assert_eq!(twice.document.version, doc.version + 1);
        }
        Err(e) => panic!("the same update applied twice was refused: {e:?}"),
    }
    Some(doc)
}

fuzz_target!(|data: &[u8]| {
    let limits = ShadowLimits::default();
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let current = parse(first, &limits).and_then(|r| apply(None, &r, &limits));
    if let Some(second) = second
        && let Some(request) = parse(second, &limits)
    {
        let _ = apply(current.as_ref(), &request, &limits);
    }
});
