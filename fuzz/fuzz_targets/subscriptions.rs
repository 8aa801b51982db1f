//! MQTT subscriptions: the SUBSCRIBE topic filter grammar (`parse_subscription`,
//! shared `$share/{group}/{filter}` included), topic name validation, and the
//! broker's subscription trie, which is checked against a plain model that
//! matches every subscription with `filter_matches` one by one.
//!
//! Input: lines. `s<n><filter>` subscribes session n (0-7) with QoS n % 2,
//! `u<n><filter>` unsubscribes it, `p<topic>` publishes; other lines are only
//! parsed as a filter and a topic name.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use onramp_broker::{QoS, SubscriptionTable};
use onramp_domain::topic::{
    Subscription, filter_matches, parse_subscription, validate_topic_filter, validate_topic_name,
};

/// (session, filter, share group) -> QoS
type Model = BTreeMap<(u64, String, Option<String>), QoS>;

fn check_grammar(text: &str) -> Option<Subscription> {
    let parsed = parse_subscription(text);
    if let Ok(sub) = &parsed {
        assert!(validate_topic_filter(&sub.filter).is_ok(), "{text:?}");
        match &sub.share_group {
            None => assert_eq!(sub.filter, text),
            Some(group) => {
                assert!(!group.is_empty() && !group.contains(['+', '#', '/']));
                assert_eq!(format!("$share/{group}/{}", sub.filter), text);
            }
        }
    }
    if validate_topic_name(text).is_ok() {
        // A topic name is a filter that matches itself, and `#` matches any
        // topic not reserved to the server.
        assert!(validate_topic_filter(text).is_ok(), "{text:?}");
        assert!(filter_matches(text, text), "{text:?}");
        assert_eq!(
            filter_matches("#", text),
            !text.starts_with('$'),
            "{text:?}"
        );
    } else {
        assert!(!filter_matches("#", text), "{text:?}");
    }
    parsed.ok()
}

fn check_route(table: &mut SubscriptionTable, model: &Model, topic: &str) {
    let routes = table.route(topic, None);
    // Direct subscribers: once each, at the highest QoS of their matching filters.
    let mut want: BTreeMap<u64, QoS> = BTreeMap::new();
    // Shared groups with a matching filter: one member each.
    let mut groups: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    for ((session, filter, group), qos) in model {
        if !filter_matches(filter, topic) {
            continue;
        }
        match group {
            None => {
                let q = want.entry(*session).or_insert(*qos);
                *q = (*q).max(*qos);
            }
            Some(g) => {
                groups
                    .entry((filter.clone(), g.clone()))
                    .or_default()
                    .insert(*session);
            }
        }
    }
    let direct: BTreeMap<u64, QoS> = routes
        .iter()
        .take(routes.len() - groups.len().min(routes.len()))
        .map(|r| (r.session, r.qos))
        .collect();
    assert_eq!(
        routes.len(),
        want.len() + groups.len(),
        "{topic:?}: {routes:?}"
    );
    assert_eq!(direct, want, "{topic:?}: {routes:?}");
    let shared_sessions: BTreeSet<u64> = groups.values().flatten().copied().collect();
    for r in &routes[want.len()..] {
        assert!(
            shared_sessions.contains(&r.session),
            "{topic:?}: {routes:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut table = SubscriptionTable::new();
    let mut model = Model::new();
    for line in text.split('\n').take(64) {
        let mut chars = line.chars();
        let op = chars.next();
        let session = chars.next().and_then(|c| c.to_digit(8)).map(u64::from);
        match (op, session) {
            (Some('s'), Some(n)) => {
                let filter = &line[2..];
                if let Some(sub) = check_grammar(filter) {
                    let qos = if n % 2 == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    table.subscribe(n, &sub.filter, sub.share_group.as_deref(), qos);
                    model.insert((n, sub.filter, sub.share_group), qos);
                }
            }
            (Some('u'), Some(n)) => {
                let filter = &line[2..];
                if let Some(sub) = check_grammar(filter) {
                    let had = model
                        .remove(&(n, sub.filter.clone(), sub.share_group.clone()))
                        .is_some();
                    assert_eq!(
                        table.unsubscribe(n, &sub.filter, sub.share_group.as_deref()),
                        had,
                        "{filter:?}"
                    );
                }
            }
            (Some('p'), _) => {
                let topic = &line[1..];
                if validate_topic_name(topic).is_ok() {
                    check_route(&mut table, &model, topic);
                }
            }
            _ => {
                check_grammar(line);
            }
        }
        assert_eq!(table.len(), model.len());
    }
});
