//! AWS IoT policy documents: parsing an untrusted document (policies come from
//! the API, the CLI and provisioning templates) and evaluating it for every
//! action against a client id, topic and topic filter taken from the input.
//!
//! Input: NUL-separated parts: the policy document, a client id, a topic (also
//! used as a topic filter) and a resource pattern. Missing parts are empty.
//! Besides the algebra of `evaluate`, two differential checks: a plain
//! resource pattern decides like a reference glob matcher, and a value
//! substituted for `${iot:ClientId}` is matched literally, never as a wildcard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::policy::{
    Action, Decision, PolicyContext, PolicyDocument, PolicyLimits, Resource, default_device_policy,
    evaluate,
};

/// `*` is any run of characters, `?` exactly one, anything else itself.
fn reference_glob(pattern: &[char], text: &[char]) -> bool {
    // matched[j]: pattern[..i] matches text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = match p {
                '*' => matched[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && matched[j - 1],
                c => j > 0 && matched[j - 1] && text[j - 1] == c,
            };
        }
        matched = next;
    }
    matched[text.len()]
}

fn single_statement(action: &str, resource: &str) -> Option<PolicyDocument> {
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]
    });
    PolicyDocument::parse(&doc.to_string()).ok()
}

fn combine(a: Decision, b: Decision) -> Decision {
    match (a, b) {
        (Decision::ExplicitDeny, _) | (_, Decision::ExplicitDeny) => Decision::ExplicitDeny,
        (Decision::Allow, _) | (_, Decision::Allow) => Decision::Allow,
        _ => Decision::ImplicitDeny,
    }
}

fn check_algebra(doc: &PolicyDocument, ctx: &PolicyContext, topic: &str) {
    let default = default_device_policy();
    let resources = [
        Resource::Topic(topic),
        Resource::TopicFilter(topic),
        Resource::Client(&ctx.client_id),
    ];
    for action in Action::ALL {
        for resource in &resources {
            let alone = evaluate(std::slice::from_ref(doc), action, resource, ctx);
            let kind_fits = matches!(
                (action, resource),
                (Action::Connect, Resource::Client(_))
                    | (Action::Subscribe, Resource::TopicFilter(_))
                    | (
                        Action::Publish | Action::Receive | Action::RetainPublish,
                        Resource::Topic(_)
                    )
            );
            if !kind_fits {
                assert_eq!(alone, Decision::ImplicitDeny, "{action:?} {resource:?}");
            }
            // A document repeated, or joined by one with no statements, decides the same.
            assert_eq!(
                evaluate(&[doc.clone(), doc.clone()], action, resource, ctx),
                alone
            );
            assert_eq!(
                evaluate(
                    &[PolicyDocument::deny_all(), doc.clone()],
                    action,
                    resource,
                    ctx
                ),
                alone
            );
            // Several policies: any Deny wins, else any Allow, whatever the order.
            let other = evaluate(std::slice::from_ref(&default), action, resource, ctx);
            let both = evaluate(&[doc.clone(), default.clone()], action, resource, ctx);
            assert_eq!(
                evaluate(&[default.clone(), doc.clone()], action, resource, ctx),
                both
            );
            assert_eq!(both, combine(alone, other), "{action:?} {resource:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let document = parts.next().unwrap_or("");
    let client_id = parts.next().unwrap_or("");
    let topic = parts.next().unwrap_or("");
    let pattern = parts.next().unwrap_or("");

    let parsed = PolicyDocument::parse(document);
    assert_eq!(
        parsed,
        PolicyDocument::parse(document),
        "parsing is deterministic"
    );
    if parsed.is_ok() {
        let chars = document.chars().filter(|c| !c.is_whitespace()).count();
        assert!(chars <= PolicyLimits::default().max_document_chars);
    }

    // A device whose client id is its thing name, and one with no thing.
    let attached = PolicyContext {
        client_id: client_id.to_string(),
        thing_name: Some(client_id.to_string()),
        thing_type_name: Some("sensor".into()),
        cert_subject_cn: Some(client_id.to_string()),
        cert_id: Some("0".repeat(64)),
        ..Default::default()
    };
    let bare = PolicyContext {
        client_id: client_id.to_string(),
        ..Default::default()
    };
    if let Ok(doc) = &parsed {
        check_algebra(doc, &attached, topic);
        check_algebra(doc, &bare, topic);
    }

    // A plain pattern (no `arn:`, no variables) is a glob over the topic name.
    if !pattern.starts_with("arn:")
        && !pattern.contains('$')
        && let Some(doc) = single_statement("iot:Publish", pattern)
    {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = topic.chars().collect();
        let want = reference_glob(&p, &t);
        let got = evaluate(&[doc], Action::Publish, &Resource::Topic(topic), &bare);
        assert_eq!(
            got.is_allowed(),
            want,
            "pattern {pattern:?} topic {topic:?}"
        );
    }

    // `${iot:ClientId}` binds to the client id as a literal: a `*` or `?` in it
    // widens nothing.
    if let Some(doc) = single_statement("iot:Publish", "arn:aws:iot:*:*:topic/t/${iot:ClientId}/x")
    {
        let own = format!("t/{client_id}/x");
        assert!(
            evaluate(
                std::slice::from_ref(&doc),
                Action::Publish,
                &Resource::Topic(&own),
                &bare
            )
            .is_allowed()
        );
        let got = evaluate(&[doc], Action::Publish, &Resource::Topic(topic), &bare);
        assert_eq!(
            got.is_allowed(),
            topic == own,
            "client id {client_id:?} topic {topic:?}"
        );
    }
});
