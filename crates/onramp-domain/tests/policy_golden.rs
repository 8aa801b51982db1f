//! Policy evaluation against AWS IoT Core's documented behaviour, plus the
//! properties Onramp's authorisation relies on.

use onramp_domain::policy::{
    Action, DEFAULT_DEVICE_POLICY, Decision, PolicyContext, PolicyDocument, PolicyError,
    PolicyLimits, Resource, StatementProblem, default_device_policy, evaluate,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn doc(value: Value) -> PolicyDocument {
    PolicyDocument::parse(&value.to_string()).expect("test policy parses")
}

fn allow(action: &str, resource: Value) -> Value {
    json!({"Effect": "Allow", "Action": action, "Resource": resource})
}

fn deny(action: &str, resource: Value) -> Value {
    json!({"Effect": "Deny", "Action": action, "Resource": resource})
}

fn policy(statements: Vec<Value>) -> PolicyDocument {
    doc(json!({"Version": "2012-10-17", "Statement": statements}))
}

fn client(id: &str) -> PolicyContext {
    PolicyContext {
        client_id: id.into(),
        ..PolicyContext::default()
    }
}

fn thing(name: &str) -> PolicyContext {
    PolicyContext {
        client_id: name.into(),
        thing_name: Some(name.into()),
        ..PolicyContext::default()
    }
}

fn decide(
    p: &PolicyDocument,
    action: Action,
    resource: Resource<'_>,
    ctx: &PolicyContext,
) -> Decision {
    evaluate(std::slice::from_ref(p), action, &resource, ctx)
}

fn parse_err(value: Value) -> PolicyError {
    PolicyDocument::parse(&value.to_string()).expect_err("policy is refused")
}

fn statement_err(index: usize, field: &str, problem: StatementProblem) -> PolicyError {
    PolicyError::Statement {
        index,
        field: field.into(),
        problem,
    }
}

// ---- evaluation ----------------------------------------------------------

#[test]
fn explicit_deny_beats_allow() {
    let p = policy(vec![
        allow("iot:*", json!("*")),
        deny(
            "iot:Publish",
            json!("arn:aws:iot:us-east-1:123456789012:topic/secret/*"),
        ),
    ]);
    let ctx = client("c1");
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("open/x"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("secret/x"), &ctx),
        Decision::ExplicitDeny
    );
    // The Deny names only Publish, so receiving is still allowed.
    assert_eq!(
        decide(&p, Action::Receive, Resource::Topic("secret/x"), &ctx),
        Decision::Allow
    );
}

#[test]
fn a_deny_in_another_policy_still_wins() {
    let grant = policy(vec![allow("iot:*", json!("*"))]);
    let revoke = policy(vec![deny(
        "iot:Connect",
        json!("arn:aws:iot:*:*:client/bad"),
    )]);
    let both = [grant.clone(), revoke];
    assert_eq!(
        evaluate(
            &both,
            Action::Connect,
            &Resource::Client("bad"),
            &client("bad")
        ),
        Decision::ExplicitDeny
    );
    assert_eq!(
        evaluate(
            &both,
            Action::Connect,
            &Resource::Client("good"),
            &client("good")
        ),
        Decision::Allow
    );
    assert_eq!(
        evaluate(
            &[],
            Action::Connect,
            &Resource::Client("good"),
            &client("good")
        ),
        Decision::ImplicitDeny
    );
}

#[test]
fn default_is_deny() {
    let p = policy(vec![allow("iot:Publish", json!("arn:aws:iot:*:*:topic/a"))]);
    let ctx = client("c1");
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("b"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Receive, Resource::Topic("a"), &ctx),
        Decision::ImplicitDeny
    );
    assert!(!Decision::ImplicitDeny.is_allowed());
    assert!(!Decision::ExplicitDeny.is_allowed());
    assert!(Decision::Allow.is_allowed());
}

#[test]
fn client_id_is_substituted() {
    let p = policy(vec![
        allow(
            "iot:Connect",
            json!("arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"),
        ),
        allow(
            "iot:Publish",
            json!("arn:aws:iot:us-east-1:123456789012:topic/clients/${iot:ClientId}/*"),
        ),
    ]);
    let ctx = client("100-234-3456");
    assert_eq!(
        decide(&p, Action::Connect, Resource::Client("100-234-3456"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &p,
            Action::Publish,
            Resource::Topic("clients/100-234-3456/data"),
            &ctx
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &p,
            Action::Publish,
            Resource::Topic("clients/other/data"),
            &ctx
        ),
        Decision::ImplicitDeny
    );
}

#[test]
fn thing_variables_are_substituted() {
    let p = policy(vec![allow(
        "iot:Publish",
        json!([
            "arn:aws:iot:*:*:topic/type/${iot:Connection.Thing.ThingTypeName}/*",
            "arn:aws:iot:*:*:topic/floor/${iot:Connection.Thing.Attributes[floor]}/*",
            "arn:aws:iot:*:*:topic/attached/${iot:Connection.Thing.IsAttached}",
            "arn:aws:iot:*:*:topic/cn/${iot:Certificate.Subject.CommonName}",
            "arn:aws:iot:*:*:topic/cert/${iot:CertificateId}"
        ]),
    )]);
    let ctx = PolicyContext {
        thing_type_name: Some("lamp".into()),
        thing_attributes: BTreeMap::from([("floor".to_string(), "3".to_string())]),
        cert_subject_cn: Some("lamp-7".into()),
        cert_id: Some("ab12".into()),
        ..thing("lamp-7")
    };
    for (topic, expected) in [
        ("type/lamp/on", Decision::Allow),
        ("type/fan/on", Decision::ImplicitDeny),
        ("floor/3/temp", Decision::Allow),
        ("floor/4/temp", Decision::ImplicitDeny),
        ("attached/true", Decision::Allow),
        ("attached/false", Decision::ImplicitDeny),
        ("cn/lamp-7", Decision::Allow),
        ("cert/ab12", Decision::Allow),
        ("cert/ab13", Decision::ImplicitDeny),
    ] {
        assert_eq!(
            decide(&p, Action::Publish, Resource::Topic(topic), &ctx),
            expected,
            "{topic}"
        );
    }
    // Without an attached thing, IsAttached is "false" and the thing variables resolve to nothing.
    let bare = PolicyContext {
        thing_name: None,
        ..ctx.clone()
    };
    assert_eq!(
        decide(
            &p,
            Action::Publish,
            Resource::Topic("attached/false"),
            &bare
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("type/lamp/on"), &bare),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("floor/3/temp"), &bare),
        Decision::ImplicitDeny
    );
}

#[test]
fn thing_variables_need_the_client_id_to_be_the_thing_name() {
    let p = default_device_policy();
    let borrowed = PolicyContext {
        client_id: "someone-else".into(),
        thing_name: Some("lamp-7".into()),
        ..PolicyContext::default()
    };
    assert_eq!(
        decide(
            &p,
            Action::Connect,
            Resource::Client("someone-else"),
            &borrowed
        ),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(
            &p,
            Action::Publish,
            Resource::Topic("things/lamp-7/x"),
            &borrowed
        ),
        Decision::ImplicitDeny
    );
}

#[test]
fn an_unresolved_variable_matches_nothing_for_allow_and_for_deny() {
    let p = policy(vec![
        allow(
            "iot:Publish",
            json!("arn:aws:iot:*:*:topic/floor/${iot:Connection.Thing.Attributes[floor]}/*"),
        ),
        allow("iot:Publish", json!("arn:aws:iot:*:*:topic/open/*")),
        deny(
            "iot:Publish",
            json!("arn:aws:iot:*:*:topic/open/${iot:Connection.Thing.Attributes[banned]}"),
        ),
        deny(
            "iot:Publish",
            json!("arn:aws:iot:*:*:topic/${iot:CertificateId}/*"),
        ),
    ]);
    let ctx = thing("lamp-7"); // no attributes, no certificate id
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("floor//x"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(
            &p,
            Action::Publish,
            Resource::Topic("floor/${iot:Connection.Thing.Attributes[floor]}/x"),
            &ctx
        ),
        Decision::ImplicitDeny
    );
    // The Deny statements cannot resolve either, so they deny nothing.
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("open/x"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("open/"), &ctx),
        Decision::Allow
    );
}

#[test]
fn a_client_id_holding_wildcards_gets_no_wider_access() {
    let p = policy(vec![
        allow(
            "iot:Connect",
            json!("arn:aws:iot:*:*:client/${iot:ClientId}"),
        ),
        allow(
            "iot:Publish",
            json!("arn:aws:iot:*:*:topic/clients/${iot:ClientId}/*"),
        ),
        allow(
            "iot:Subscribe",
            json!("arn:aws:iot:*:*:topicfilter/clients/${iot:ClientId}/*"),
        ),
    ]);
    for id in ["*", "?", "+", "#", "a*", "*/*"] {
        let ctx = client(id);
        assert_eq!(
            decide(&p, Action::Connect, Resource::Client(id), &ctx),
            Decision::Allow,
            "{id}"
        );
        assert_eq!(
            decide(&p, Action::Connect, Resource::Client("victim"), &ctx),
            Decision::ImplicitDeny,
            "{id}"
        );
        let own = format!("clients/{id}/x");
        assert_eq!(
            decide(&p, Action::Publish, Resource::Topic(&own), &ctx),
            Decision::Allow,
            "{id}"
        );
        for other in ["clients/victim/x", "clients/a/x", "clients/ab/x"] {
            assert_eq!(
                decide(&p, Action::Publish, Resource::Topic(other), &ctx),
                Decision::ImplicitDeny,
                "{id} -> {other}"
            );
        }
        for filter in ["clients/victim/#", "clients/+/x", "#"] {
            if filter.starts_with(&format!("clients/{id}/")) {
                continue; // its own namespace, spelled literally; see below
            }
            assert_eq!(
                decide(&p, Action::Subscribe, Resource::TopicFilter(filter), &ctx),
                Decision::ImplicitDeny,
                "{id} -> {filter}"
            );
        }
    }
    // AWS's documented caveat: a client that connects as `+` owns the literal filter
    // `clients/+/...`, which the broker then reads as a wildcard. Policies that put
    // `${iot:ClientId}` in a topic filter must also restrict `iot:Connect`, as the
    // default device policy does by tying the client id to the thing name.
    assert_eq!(
        decide(
            &p,
            Action::Subscribe,
            Resource::TopicFilter("clients/+/x"),
            &client("+")
        ),
        Decision::Allow
    );
    let device = default_device_policy();
    assert_eq!(
        decide(
            &device,
            Action::Connect,
            Resource::Client("+"),
            &client("+")
        ),
        Decision::ImplicitDeny
    );
}

#[test]
fn mqtt_wildcards_are_literal_in_policies() {
    // AWS: `topicfilter/some/+/topic` allows only the literal filter `some/+/topic`.
    let p = policy(vec![allow(
        "iot:Subscribe",
        json!("arn:aws:iot:*:*:topicfilter/some/+/topic"),
    )]);
    let ctx = client("c1");
    assert_eq!(
        decide(
            &p,
            Action::Subscribe,
            Resource::TopicFilter("some/+/topic"),
            &ctx
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &p,
            Action::Subscribe,
            Resource::TopicFilter("some/x/topic"),
            &ctx
        ),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Subscribe, Resource::TopicFilter("some/#"), &ctx),
        Decision::ImplicitDeny
    );
    // `*` in a policy does span levels and MQTT wildcards.
    let q = policy(vec![allow(
        "iot:Subscribe",
        json!("arn:aws:iot:*:*:topicfilter/data/*"),
    )]);
    for filter in ["data/a/b", "data/+/b", "data/#", "data/"] {
        assert_eq!(
            decide(&q, Action::Subscribe, Resource::TopicFilter(filter), &ctx),
            Decision::Allow
        );
    }
    assert_eq!(
        decide(&q, Action::Subscribe, Resource::TopicFilter("#"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&q, Action::Subscribe, Resource::TopicFilter("data"), &ctx),
        Decision::ImplicitDeny
    );
}

#[test]
fn literal_escapes_are_not_wildcards() {
    let p = policy(vec![allow(
        "iot:Publish",
        json!([
            "arn:aws:iot:*:*:topic/a/${*}",
            "arn:aws:iot:*:*:topic/b/$(?)",
            "arn:aws:iot:*:*:topic/c/${$}"
        ]),
    )]);
    let ctx = client("c1");
    for (topic, expected) in [
        ("a/*", Decision::Allow),
        ("a/x", Decision::ImplicitDeny),
        ("b/?", Decision::Allow),
        ("b/x", Decision::ImplicitDeny),
        ("c/$", Decision::Allow),
    ] {
        assert_eq!(
            decide(&p, Action::Publish, Resource::Topic(topic), &ctx),
            expected,
            "{topic}"
        );
    }
}

#[test]
fn arn_and_plain_forms_are_equivalent() {
    let ctx = client("c1");
    let forms = [
        ("arn:aws:iot:us-east-1:123456789012:topic/a/*", "a/*"),
        ("arn:aws:iot:*:*:topic/a/?", "a/?"),
        ("arn:aws:iot:eu-west-1:999999999999:topic/a/b", "a/b"),
    ];
    for (arn, plain) in forms {
        let by_arn = policy(vec![allow("iot:Publish", json!(arn))]);
        let by_plain = policy(vec![allow("iot:Publish", json!(plain))]);
        for topic in ["a/b", "a/bc", "a/", "b/a", "a/b/c"] {
            assert_eq!(
                decide(&by_arn, Action::Publish, Resource::Topic(topic), &ctx),
                decide(&by_plain, Action::Publish, Resource::Topic(topic), &ctx),
                "{arn} vs {plain} on {topic}"
            );
        }
    }
    // The plain form applies to every resource type.
    let plain = policy(vec![allow("iot:*", json!("dev-*"))]);
    assert_eq!(
        decide(&plain, Action::Connect, Resource::Client("dev-1"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &plain,
            Action::Subscribe,
            Resource::TopicFilter("dev-1/#"),
            &ctx
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(&plain, Action::Receive, Resource::Topic("dev-1/x"), &ctx),
        Decision::Allow
    );
}

#[test]
fn arn_resource_types_are_kept_apart() {
    let ctx = client("c1");
    let topics = policy(vec![allow("iot:*", json!("arn:aws:iot:*:*:topic/*"))]);
    assert_eq!(
        decide(&topics, Action::Publish, Resource::Topic("x"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(&topics, Action::Subscribe, Resource::TopicFilter("x"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&topics, Action::Connect, Resource::Client("c1"), &ctx),
        Decision::ImplicitDeny
    );
    // As in AWS, the glob runs over `{type}/{name}`, so `topic*` also covers topic filters.
    let loose = policy(vec![allow("iot:*", json!("arn:aws:iot:*:*:topic*"))]);
    assert_eq!(
        decide(&loose, Action::Subscribe, Resource::TopicFilter("x"), &ctx),
        Decision::Allow
    );
    let everything = policy(vec![allow("iot:*", json!("arn:aws:iot:*:*:*"))]);
    assert_eq!(
        decide(&everything, Action::Connect, Resource::Client("c1"), &ctx),
        Decision::Allow
    );
}

#[test]
fn an_action_with_the_wrong_resource_type_matches_nothing() {
    let p = policy(vec![allow("iot:*", json!("*"))]);
    let ctx = client("c1");
    assert_eq!(
        decide(&p, Action::Publish, Resource::Client("c1"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Subscribe, Resource::Topic("a"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Connect, Resource::TopicFilter("a"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::RetainPublish, Resource::Topic("a"), &ctx),
        Decision::Allow
    );
}

#[test]
fn action_names_are_case_insensitive_globs() {
    let ctx = client("c1");
    let p = policy(vec![allow("IOT:pub*", json!("*"))]);
    assert_eq!(
        decide(&p, Action::Publish, Resource::Topic("a"), &ctx),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, Action::RetainPublish, Resource::Topic("a"), &ctx),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, Action::Receive, Resource::Topic("a"), &ctx),
        Decision::ImplicitDeny
    );
    let q = policy(vec![allow("*", json!("*"))]);
    for action in Action::ALL {
        let resource = match action {
            Action::Connect => Resource::Client("c1"),
            Action::Subscribe => Resource::TopicFilter("a"),
            _ => Resource::Topic("a"),
        };
        assert_eq!(
            decide(&q, action, resource, &ctx),
            Decision::Allow,
            "{}",
            action.as_str()
        );
    }
}

#[test]
fn the_default_device_policy_confines_a_thing_to_its_own_topics() {
    let p = default_device_policy();
    assert_eq!(PolicyDocument::parse(DEFAULT_DEVICE_POLICY), Ok(p.clone()));
    let ctx = thing("lamp-7");
    let allowed = [
        (Action::Connect, Resource::Client("lamp-7")),
        (Action::Publish, Resource::Topic("things/lamp-7/telemetry")),
        (Action::Receive, Resource::Topic("things/lamp-7/commands")),
        (
            Action::RetainPublish,
            Resource::Topic("things/lamp-7/state"),
        ),
        (
            Action::Publish,
            Resource::Topic("$aws/things/lamp-7/shadow/update"),
        ),
        (Action::Subscribe, Resource::TopicFilter("things/lamp-7/#")),
        (
            Action::Subscribe,
            Resource::TopicFilter("$aws/things/lamp-7/shadow/get/+"),
        ),
    ];
    for (action, resource) in allowed {
        assert_eq!(
            decide(&p, action, resource, &ctx),
            Decision::Allow,
            "{action:?} {resource:?}"
        );
    }
    let refused = [
        (Action::Connect, Resource::Client("lamp-8")),
        (Action::Publish, Resource::Topic("things/lamp-8/telemetry")),
        (Action::Publish, Resource::Topic("things/lamp-7")),
        (Action::Publish, Resource::Topic("things/lamp-77/x")),
        (Action::Publish, Resource::Topic("other")),
        (
            Action::Subscribe,
            Resource::TopicFilter("things/+/telemetry"),
        ),
        (Action::Subscribe, Resource::TopicFilter("#")),
        (Action::Subscribe, Resource::TopicFilter("things/other/#")),
        (Action::Subscribe, Resource::TopicFilter("things/#")),
        (
            Action::Subscribe,
            Resource::TopicFilter("$aws/things/+/shadow/#"),
        ),
    ];
    for (action, resource) in refused {
        assert_eq!(
            decide(&p, action, resource, &ctx),
            Decision::ImplicitDeny,
            "{action:?} {resource:?}"
        );
    }
    // A certificate with no thing attached gets nothing from the default policy.
    assert_eq!(
        decide(
            &p,
            Action::Connect,
            Resource::Client("lamp-7"),
            &client("lamp-7")
        ),
        Decision::ImplicitDeny
    );
}

// ---- parsing -------------------------------------------------------------

#[test]
fn statement_may_be_one_object_and_fields_may_be_single_strings() {
    let p = doc(json!({
        "Version": "2012-10-17",
        "Statement": {"Sid": "one", "Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}
    }));
    assert_eq!(
        decide(&p, Action::Connect, Resource::Client("x"), &client("x")),
        Decision::Allow
    );
}

#[test]
fn parse_errors_name_the_statement_and_field() {
    let v = "2012-10-17";
    assert_eq!(
        parse_err(
            json!({"Version": v, "Statement": [allow("iot:*", json!("*")), {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": {}}]})
        ),
        statement_err(1, "Condition", StatementProblem::Unsupported)
    );
    for key in ["NotAction", "NotResource"] {
        let mut s = allow("iot:*", json!("*"));
        s[key] = json!("iot:Publish");
        assert_eq!(
            parse_err(json!({"Version": v, "Statement": [s]})),
            statement_err(0, key, StatementProblem::Unsupported)
        );
    }
    let mut s = allow("iot:*", json!("*"));
    s["Effects"] = json!("Allow");
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": s})),
        statement_err(0, "Effects", StatementProblem::UnknownKey)
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [{"Action": "iot:*", "Resource": "*"}]})),
        statement_err(0, "Effect", StatementProblem::Missing)
    );
    assert_eq!(
        parse_err(
            json!({"Version": v, "Statement": [{"Effect": "allow", "Action": "iot:*", "Resource": "*"}]})
        ),
        statement_err(
            0,
            "Effect",
            StatementProblem::BadEffect {
                found: "\"allow\"".into()
            }
        )
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [{"Effect": "Allow", "Resource": "*"}]})),
        statement_err(0, "Action", StatementProblem::Missing)
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [allow("iot:*", json!([]))]})),
        statement_err(0, "Resource", StatementProblem::Empty)
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [allow("iot:*", json!(["*", 7]))]})),
        statement_err(
            0,
            "Resource[1]",
            StatementProblem::WrongType {
                expected: "a string"
            }
        )
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [allow("iot:*", json!({"a": 1}))]})),
        statement_err(
            0,
            "Resource",
            StatementProblem::WrongType {
                expected: "a string or a non-empty array of strings"
            }
        )
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [
            allow("iot:*", json!("*")),
            allow("iot:*", json!("*")),
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:UpdateThingShadow"], "Resource": "*"}
        ]})),
        statement_err(
            2,
            "Action[1]",
            StatementProblem::NoKnownAction {
                pattern: "iot:UpdateThingShadow".into()
            }
        )
    );
    assert_eq!(
        parse_err(
            json!({"Version": v, "Statement": [allow("iot:*", json!(["*", "topic/${iot:ClientID}/${iot:Nope}"]))]})
        ),
        statement_err(
            0,
            "Resource[1]",
            StatementProblem::UnknownVariable {
                name: "iot:Nope".into()
            }
        )
    );
    assert_eq!(
        parse_err(
            json!({"Version": v, "Statement": [allow("iot:*", json!("arn:aws:iot:*:*:thing/lamp"))]})
        ),
        statement_err(
            0,
            "Resource",
            StatementProblem::UnsupportedResourceType {
                resource: "arn:aws:iot:*:*:thing/lamp".into()
            }
        )
    );
    assert_eq!(
        parse_err(json!({"Version": v, "Statement": [1]})),
        PolicyError::StatementNotAnObject { index: 0 }
    );
}

#[test]
fn parse_errors_at_the_top_level() {
    assert!(matches!(
        PolicyDocument::parse("{"),
        Err(PolicyError::Json(_))
    ));
    assert_eq!(PolicyDocument::parse("[]"), Err(PolicyError::NotAnObject));
    assert_eq!(
        parse_err(json!({"Version": "2012-10-17", "Statement": [], "Id": "x"})),
        PolicyError::UnknownKey("Id".into())
    );
    assert_eq!(
        parse_err(json!({"Statement": [allow("iot:*", json!("*"))]})),
        PolicyError::MissingVersion
    );
    assert_eq!(
        parse_err(json!({"Version": "2008-10-17", "Statement": [allow("iot:*", json!("*"))]})),
        PolicyError::UnsupportedVersion("\"2008-10-17\"".into())
    );
    assert_eq!(
        parse_err(json!({"Version": "2012-10-17"})),
        PolicyError::MissingStatement
    );
    assert_eq!(
        parse_err(json!({"Version": "2012-10-17", "Statement": []})),
        PolicyError::BadStatementList
    );
    assert_eq!(
        parse_err(json!({"Version": "2012-10-17", "Statement": "x"})),
        PolicyError::BadStatementList
    );
}

#[test]
fn error_messages_read_precisely() {
    let e = parse_err(json!({"Version": "2012-10-17", "Statement": [
        allow("iot:*", json!("*")),
        allow("iot:Get*", json!("*"))
    ]}));
    assert_eq!(
        e.to_string(),
        "Statement[1].Action: `iot:Get*` matches none of the actions Onramp evaluates \
         (iot:Connect, iot:Publish, iot:Subscribe, iot:Receive, iot:RetainPublish)"
    );
    let e = parse_err(
        json!({"Version": "2012-10-17", "Statement": [allow("iot:*", json!("a/${iot:Who}"))]}),
    );
    assert_eq!(
        e.to_string(),
        "Statement[0].Resource: `${iot:Who}` is not a policy variable Onramp supports"
    );
    let e = parse_err(
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]}),
    );
    assert_eq!(
        e.to_string(),
        "Statement[0].Condition: is not supported by Onramp; write the statement without it"
    );
}

#[test]
fn limits_are_parameters_with_aws_defaults() {
    assert_eq!(PolicyLimits::default().max_document_chars, 2048);
    let pad = |n: usize| {
        // `{"Version":"2012-10-17","Statement":[...]}` around a resource of `n` characters.
        let base =
            json!({"Version": "2012-10-17", "Statement": [allow("iot:*", json!(""))]}).to_string();
        let fill = "x".repeat(n);
        base.replace(r#""Resource":"""#, &format!(r#""Resource":"{fill}""#))
    };
    let base_len = pad(0).len();
    let at_limit = pad(2048 - base_len);
    // Whitespace does not count towards the limit.
    let spaced = at_limit.replace(',', " ,\n\t ");
    assert!(PolicyDocument::parse(&at_limit).is_ok());
    assert!(PolicyDocument::parse(&spaced).is_ok());
    assert_eq!(
        PolicyDocument::parse(&pad(2049 - base_len)),
        Err(PolicyError::TooLong {
            chars: 2049,
            max: 2048
        })
    );
    let roomy = PolicyLimits {
        max_document_chars: 10_000,
        ..PolicyLimits::default()
    };
    assert!(PolicyDocument::parse_with_limits(&pad(5000), &roomy).is_ok());

    let many = json!({"Version": "2012-10-17", "Statement": vec![allow("iot:*", json!("*")); 3]})
        .to_string();
    let two = PolicyLimits {
        max_statements: 2,
        ..PolicyLimits::default()
    };
    assert_eq!(
        PolicyDocument::parse_with_limits(&many, &two),
        Err(PolicyError::TooManyStatements { count: 3, max: 2 })
    );
    let wide =
        json!({"Version": "2012-10-17", "Statement": [allow("iot:*", json!(["a", "b", "c"]))]})
            .to_string();
    let narrow = PolicyLimits {
        max_values_per_field: 2,
        ..PolicyLimits::default()
    };
    assert_eq!(
        PolicyDocument::parse_with_limits(&wide, &narrow),
        Err(PolicyError::Statement {
            index: 0,
            field: "Resource".into(),
            problem: StatementProblem::TooManyValues { count: 3, max: 2 }
        })
    );
}

// ---- properties ----------------------------------------------------------

fn thing_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9:_-]{1,32}"
}

fn request_for(action: Action, name: &str) -> Resource<'_> {
    match action {
        Action::Connect => Resource::Client(name),
        Action::Subscribe => Resource::TopicFilter(name),
        _ => Resource::Topic(name),
    }
}

const ACTIONS: [&str; 9] = [
    "iot:Connect",
    "iot:Publish",
    "iot:Subscribe",
    "iot:Receive",
    "iot:RetainPublish",
    "iot:*",
    "*",
    "iot:Pub*",
    "iot:?eceive",
];

const RESOURCES: [&str; 12] = [
    "*",
    "arn:aws:iot:*:*:topic/a/*",
    "arn:aws:iot:us-east-1:1:topicfilter/a/+",
    "a/*",
    "a/?",
    "b",
    "arn:aws:iot:*:*:client/${iot:ClientId}",
    "arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingName}/*",
    "${iot:Connection.Thing.Attributes[k]}/*",
    "arn:aws:iot:*:*:topic*",
    "arn:aws:iot:*:*:topicfilter/*",
    "${iot:ClientId}",
];

const NAMES: [&str; 10] = [
    "a", "a/b", "a/+", "a/#", "c1", "c1/x", "b", "x/y", "*", "t1/z",
];

fn statement() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::sample::subsequence(ACTIONS.to_vec(), 1..4),
        prop::sample::subsequence(RESOURCES.to_vec(), 1..4),
    )
        .prop_map(|(is_allow, actions, resources)| {
            json!({
                "Effect": if is_allow { "Allow" } else { "Deny" },
                "Action": actions,
                "Resource": resources,
            })
        })
}

fn context() -> impl Strategy<Value = PolicyContext> {
    (
        prop::sample::select(vec!["c1", "*", "a", "t1"]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["a", "b", "*"])),
    )
        .prop_map(|(id, attached, attr)| PolicyContext {
            client_id: id.into(),
            thing_name: attached.then(|| id.to_string()),
            thing_attributes: attr
                .map(|v| BTreeMap::from([("k".to_string(), v.to_string())]))
                .unwrap_or_default(),
            ..PolicyContext::default()
        })
}

fn policies_of(statements: &[Value]) -> Vec<PolicyDocument> {
    if statements.is_empty() {
        return Vec::new();
    }
    vec![policy(statements.to_vec())]
}

proptest! {
    #[test]
    fn a_thing_stays_inside_its_own_namespace(
        a in thing_name(),
        b in thing_name(),
        tail in "[a-z0-9/+#]{0,12}",
        wild in prop::sample::select(vec!["+", "#", "+/telemetry", "+/#"]),
    ) {
        prop_assume!(a != b);
        let p = default_device_policy();
        let ctx = thing(&a);
        let own = format!("things/{a}/x");
        prop_assert_eq!(decide(&p, Action::Connect, Resource::Client(&a), &ctx), Decision::Allow);
        prop_assert_eq!(decide(&p, Action::Publish, Resource::Topic(&own), &ctx), Decision::Allow);
        prop_assert_ne!(decide(&p, Action::Connect, Resource::Client(&b), &ctx), Decision::Allow);
        for prefix in ["things", "$aws/things"] {
            let other = format!("{prefix}/{b}/{tail}");
            for action in [Action::Publish, Action::Receive, Action::RetainPublish] {
                prop_assert_ne!(decide(&p, action, Resource::Topic(&other), &ctx), Decision::Allow);
            }
            prop_assert_ne!(decide(&p, Action::Subscribe, Resource::TopicFilter(&other), &ctx), Decision::Allow);
            let wide = format!("{prefix}/{wild}");
            prop_assert_ne!(decide(&p, Action::Subscribe, Resource::TopicFilter(&wide), &ctx), Decision::Allow);
        }
    }

    #[test]
    fn adding_a_deny_never_grants_and_adding_an_allow_never_lifts_a_deny(
        base in prop::collection::vec(statement(), 0..5),
        extra in statement(),
        ctx in context(),
        action in prop::sample::select(Action::ALL.to_vec()),
        name in prop::sample::select(NAMES.to_vec()),
        separate in any::<bool>(),
    ) {
        let resource = request_for(action, name);
        let before = evaluate(&policies_of(&base), action, &resource, &ctx);
        let after_policies = if separate {
            let mut ps = policies_of(&base);
            ps.push(policy(vec![extra.clone()]));
            ps
        } else {
            let mut statements = base.clone();
            statements.push(extra.clone());
            policies_of(&statements)
        };
        let after = evaluate(&after_policies, action, &resource, &ctx);
        if extra["Effect"] == "Deny" {
            prop_assert!(after != Decision::Allow || before == Decision::Allow);
            prop_assert!(before != Decision::ExplicitDeny || after == Decision::ExplicitDeny);
        } else {
            prop_assert!(before != Decision::ExplicitDeny || after == Decision::ExplicitDeny);
            prop_assert!(before != Decision::Allow || after == Decision::Allow);
        }
    }

    #[test]
    fn evaluation_never_panics(
        name in "\\PC{0,40}|[a/+#*?${}\0]{0,20}",
        id in "\\PC{0,12}|[*?${}]{0,6}",
        base in prop::collection::vec(statement(), 1..4),
    ) {
        let ps = [default_device_policy(), policy(base)];
        let ctx = PolicyContext { thing_name: Some(id.clone()), ..client(&id) };
        for action in Action::ALL {
            for resource in [Resource::Topic(&name), Resource::TopicFilter(&name), Resource::Client(&name)] {
                let _ = evaluate(&ps, action, &resource, &ctx);
            }
        }
    }

    #[test]
    fn parsing_never_panics(text in "\\PC{0,80}|[{}\\[\\]\":,a-zA-Z*?$ ]{0,80}") {
        let _ = PolicyDocument::parse(&text);
    }
}

/// Both jobs clients of the AWS IoT Device SDK work under the default
/// policy: the V2 client subscribes to `.../get/+` and `.../update/+`, the
/// older one to the exact `/accepted` and `/rejected` topics; both publish
/// requests (also for `$next`) and receive `notify` and `notify-next`. None
/// of it reaches another thing's jobs.
#[test]
fn the_default_policy_allows_a_thing_its_own_jobs_topics_and_no_others() {
    let p = default_device_policy();
    let me = thing("pump-1");
    let base = "$aws/things/pump-1/jobs";
    for filter in [
        "get/+",
        "start-next/+",
        "$next/get/+",
        "job-1/get/+",
        "job-1/update/+",
        "get/accepted",
        "get/rejected",
        "start-next/accepted",
        "$next/get/accepted",
        "job-1/update/accepted",
        "job-1/update/rejected",
        "notify",
        "notify-next",
    ] {
        let filter = format!("{base}/{filter}");
        assert_eq!(
            decide(&p, Action::Subscribe, Resource::TopicFilter(&filter), &me),
            Decision::Allow,
            "subscribe {filter}"
        );
        assert_eq!(
            decide(&p, Action::Receive, Resource::Topic(&filter), &me),
            Decision::Allow,
            "receive {filter}"
        );
    }
    for topic in [
        "get",
        "start-next",
        "$next/get",
        "job-1/get",
        "job-1/update",
    ] {
        let topic = format!("{base}/{topic}");
        assert_eq!(
            decide(&p, Action::Publish, Resource::Topic(&topic), &me),
            Decision::Allow,
            "publish {topic}"
        );
    }
    for (action, resource) in [
        (
            Action::Subscribe,
            Resource::TopicFilter("$aws/things/pump-2/jobs/notify-next"),
        ),
        (
            Action::Subscribe,
            Resource::TopicFilter("$aws/things/+/jobs/notify"),
        ),
        (
            Action::Publish,
            Resource::Topic("$aws/things/pump-2/jobs/get"),
        ),
        (
            Action::Receive,
            Resource::Topic("$aws/things/pump-2/jobs/notify"),
        ),
    ] {
        assert_eq!(
            decide(&p, action, resource, &me),
            Decision::ImplicitDeny,
            "{resource:?}"
        );
    }
}
