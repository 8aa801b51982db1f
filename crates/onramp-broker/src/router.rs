//! The subscription table: topic filters in a trie by level, so routing a
//! publish costs the depth of its topic, not the number of subscriptions.

use crate::{QoS, SessionId};
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Subscribers {
    direct: HashMap<SessionId, QoS>,
    /// `$share/{group}/{filter}`: one member per group gets each message.
    shared: HashMap<Box<str>, SharedGroup>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionId, QoS)>,
    next: usize,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers of a filter ending in `#` at this level.
    multi: Subscribers,
    /// Subscribers of a filter ending exactly at this level.
    exact: Subscribers,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }
}

/// A delivery decided by the router: this session gets the message at this QoS
/// (the subscription's maximum; the caller takes the minimum with the message's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub session: SessionId,
    pub qos: QoS,
}

#[derive(Debug, Default)]
pub struct SubscriptionTable {
    root: Node,
    count: usize,
}

impl SubscriptionTable {
    pub fn new() -> SubscriptionTable {
        SubscriptionTable::default()
    }

    /// Number of (session, filter) subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn subscribers_mut(&mut self, filter: &str) -> &mut Subscribers {
        let mut node = &mut self.root;
        let levels: Vec<&str> = filter.split('/').collect();
        let last = levels.len() - 1;
        for (i, level) in levels.iter().enumerate() {
            if *level == "#" && i == last {
                return &mut node.multi;
            }
            node = if *level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(Box::from(*level)).or_default()
            };
        }
        &mut node.exact
    }

    /// Adds or updates a subscription. `filter` must be a valid topic filter;
    /// `share_group` is the group of a `$share/{group}/{filter}` subscription.
    pub fn subscribe(
        &mut self,
        session: SessionId,
        filter: &str,
        share_group: Option<&str>,
        qos: QoS,
    ) {
        let subs = self.subscribers_mut(filter);
        let added = match share_group {
            None => subs.direct.insert(session, qos).is_none(),
            Some(g) => {
                let group = subs.shared.entry(Box::from(g)).or_default();
                match group.members.iter_mut().find(|(s, _)| *s == session) {
                    Some(m) => {
                        m.1 = qos;
                        false
                    }
                    None => {
                        group.members.push((session, qos));
                        true
                    }
                }
            }
        };
        if added {
            self.count += 1;
        }
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(
        &mut self,
        session: SessionId,
        filter: &str,
        share_group: Option<&str>,
    ) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove(&mut self.root, &levels, session, share_group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Every session that should receive a message on `topic`. A session
    /// matched by several filters appears once, at the highest QoS; each
    /// shared group contributes one member, chosen round-robin.
    pub fn route(&mut self, topic: &str) -> Vec<Route> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut direct: HashMap<SessionId, QoS> = HashMap::new();
        let mut shared: Vec<Route> = Vec::new();
        // Wildcards at the first level never match `$` topics (MQTT 4.7.2).
        let dollar = topic.starts_with('$');
        collect(&mut self.root, &levels, 0, dollar, &mut direct, &mut shared);
        let mut routes: Vec<Route> = direct
            .into_iter()
            .map(|(session, qos)| Route { session, qos })
            .collect();
        routes.extend(shared);
        routes
    }

    /// Drops every subscription of `session`; returns how many there were.
    pub fn remove_session(
        &mut self,
        session: SessionId,
        filters: &[(String, Option<String>)],
    ) -> usize {
        filters
            .iter()
            .filter(|(f, g)| self.unsubscribe(session, f, g.as_deref()))
            .count()
    }
}

fn remove(node: &mut Node, levels: &[&str], session: SessionId, share: Option<&str>) -> bool {
    let (level, rest) = match levels.split_first() {
        Some(x) => x,
        None => return remove_from(&mut node.exact, session, share),
    };
    if *level == "#" && rest.is_empty() {
        return remove_from(&mut node.multi, session, share);
    }
    if *level == "+" {
        match node.plus.as_deref_mut() {
            Some(child) => {
                let r = remove(child, rest, session, share);
                if child.is_empty() {
                    node.plus = None;
                }
                r
            }
            None => false,
        }
    } else {
        match node.children.get_mut(*level) {
            Some(child) => {
                let r = remove(child, rest, session, share);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                r
            }
            None => false,
        }
    }
}

fn remove_from(subs: &mut Subscribers, session: SessionId, share: Option<&str>) -> bool {
    match share {
        None => subs.direct.remove(&session).is_some(),
        Some(g) => {
            let Some(group) = subs.shared.get_mut(g) else {
                return false;
            };
            let before = group.members.len();
            group.members.retain(|(s, _)| *s != session);
            let removed = group.members.len() != before;
            if group.members.is_empty() {
                subs.shared.remove(g);
            }
            removed
        }
    }
}

fn collect(
    node: &mut Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    direct: &mut HashMap<SessionId, QoS>,
    shared: &mut Vec<Route>,
) {
    let wildcards_ok = !(dollar && depth == 0);
    if wildcards_ok {
        take(&mut node.multi, direct, shared);
    }
    match levels.split_first() {
        None => take(&mut node.exact, direct, shared),
        Some((level, rest)) => {
            if let Some(child) = node.children.get_mut(*level) {
                collect(child, rest, depth + 1, dollar, direct, shared);
            }
            if wildcards_ok && let Some(child) = node.plus.as_deref_mut() {
                collect(child, rest, depth + 1, dollar, direct, shared);
            }
        }
    }
}

fn take(subs: &mut Subscribers, direct: &mut HashMap<SessionId, QoS>, shared: &mut Vec<Route>) {
    for (s, q) in &subs.direct {
        let e = direct.entry(*s).or_insert(*q);
        if *q > *e {
            *e = *q;
        }
    }
    // Each node is visited at most once per route, so each group picks once.
    for group in subs.shared.values_mut() {
        if group.members.is_empty() {
            continue;
        }
        let i = group.next % group.members.len();
        group.next = group.next.wrapping_add(1);
        let (session, qos) = group.members[i];
        shared.push(Route { session, qos });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sessions(t: &mut SubscriptionTable, topic: &str) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = t.route(topic).into_iter().map(|r| r.session).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_route_as_the_spec_says() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "things/a/telemetry", None, QoS::AtLeastOnce);
        t.subscribe(2, "things/+/telemetry", None, QoS::AtMostOnce);
        t.subscribe(3, "things/#", None, QoS::AtMostOnce);
        t.subscribe(4, "#", None, QoS::AtMostOnce);
        t.subscribe(5, "things/a", None, QoS::AtMostOnce);
        assert_eq!(sessions(&mut t, "things/a/telemetry"), [1, 2, 3, 4]);
        assert_eq!(
            sessions(&mut t, "things/a"),
            [3, 4, 5],
            "`#` matches its parent level"
        );
        assert_eq!(sessions(&mut t, "other"), [4]);
        assert_eq!(sessions(&mut t, "things/a/telemetry/x"), [3, 4]);
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "#", None, QoS::AtMostOnce);
        t.subscribe(2, "+/events/x", None, QoS::AtMostOnce);
        t.subscribe(3, "$aws/events/#", None, QoS::AtMostOnce);
        t.subscribe(4, "$aws/+/x", None, QoS::AtMostOnce);
        assert_eq!(sessions(&mut t, "$aws/events/x"), [3, 4]);
        assert_eq!(sessions(&mut t, "$aws/y/x"), [4]);
    }

    #[test]
    fn overlapping_filters_deliver_once_at_the_highest_qos() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "a/+", None, QoS::AtMostOnce);
        t.subscribe(1, "a/#", None, QoS::AtLeastOnce);
        assert_eq!(
            t.route("a/b"),
            [Route {
                session: 1,
                qos: QoS::AtLeastOnce
            }]
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_shared_group_spreads_messages_round_robin() {
        let mut t = SubscriptionTable::new();
        for s in [10, 11, 12] {
            t.subscribe(s, "things/+/telemetry", Some("workers"), QoS::AtLeastOnce);
        }
        t.subscribe(20, "things/+/telemetry", None, QoS::AtMostOnce);
        let mut counts: HashMap<SessionId, usize> = HashMap::new();
        for i in 0..30 {
            for r in t.route(&format!("things/d{i}/telemetry")) {
                *counts.entry(r.session).or_default() += 1;
            }
        }
        assert_eq!(counts[&10], 10);
        assert_eq!(counts[&11], 10);
        assert_eq!(counts[&12], 10);
        assert_eq!(counts[&20], 30, "a plain subscriber still gets everything");
        assert!(t.unsubscribe(11, "things/+/telemetry", Some("workers")));
        let picked: Vec<_> = (0..4)
            .flat_map(|_| t.route("things/x/telemetry"))
            .filter(|r| r.session != 20)
            .map(|r| r.session)
            .collect();
        assert!(picked.iter().all(|s| *s == 10 || *s == 12));
    }

    #[test]
    fn unsubscribing_prunes_the_trie() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "a/b/c", None, QoS::AtMostOnce);
        t.subscribe(1, "a/+/#", None, QoS::AtMostOnce);
        assert!(t.unsubscribe(1, "a/b/c", None));
        assert!(!t.unsubscribe(1, "a/b/c", None));
        assert!(t.unsubscribe(1, "a/+/#", None));
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }

    /// The reference semantics the trie must agree with.
    fn naive_match(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        for (i, level) in f.iter().enumerate() {
            if *level == "#" {
                return true;
            }
            match t.get(i) {
                Some(tl) if *level == "+" || level == tl => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")].prop_map(String::from)
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("+"), Just("$x")].prop_map(String::from)
    }

    proptest! {
        #[test]
        fn the_trie_agrees_with_the_spec(
            filters in proptest::collection::vec((proptest::collection::vec(filter_level(), 1..4), any::<bool>()), 1..8),
            topic in proptest::collection::vec(level(), 1..5),
        ) {
            let topic = topic.join("/");
            let mut t = SubscriptionTable::new();
            let mut expected = Vec::new();
            for (i, (levels, multi)) in filters.iter().enumerate() {
                let mut f = levels.join("/");
                if *multi { f.push_str("/#"); }
                t.subscribe(i as u64, &f, None, QoS::AtMostOnce);
                if naive_match(&f, &topic) { expected.push(i as u64); }
            }
            prop_assert_eq!(sessions(&mut t, &topic), expected);
        }
    }
}
