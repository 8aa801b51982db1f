//! The subscription table: topic filters in a trie by level, so routing a
//! publish costs the depth of its topic, not the number of subscriptions.
//! Each subscription keeps its MQTT 5 options (No Local, Retain As
//! Published, Subscription Identifier).

use crate::{QoS, SessionId};
use std::collections::HashMap;

/// One subscription's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The maximum QoS granted.
    pub qos: QoS,
    /// Messages the subscribing session publishes itself are not sent back.
    pub no_local: bool,
    /// Forward the publisher's RETAIN flag instead of clearing it.
    pub retain_as_published: bool,
    /// The Subscription Identifier from the SUBSCRIBE, if any.
    pub id: Option<u32>,
}

impl From<QoS> for SubOptions {
    fn from(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }
}

/// When retained messages are sent for a new subscription (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: at every SUBSCRIBE.
    OnSubscribe,
    /// 1: only when the subscription did not already exist.
    OnNewSubscription,
    /// 2: never.
    Never,
}

/// Whether a SUBSCRIBE sends the filter's retained messages: per its Retain
/// Handling, whether the session already had this subscription, and never
/// for a shared subscription (MQTT 5 section 4.8.2).
pub fn send_retained(handling: RetainHandling, existed: bool, shared: bool) -> bool {
    !shared
        && match handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscription => !existed,
            RetainHandling::Never => false,
        }
}

#[derive(Debug, Default)]
struct Subscribers {
    direct: HashMap<SessionId, SubOptions>,
    /// `$share/{group}/{filter}`: one member per group gets each message.
    shared: HashMap<Box<str>, SharedGroup>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionId, SubOptions)>,
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

/// A delivery decided by the router: this session gets the message at most
/// at `qos` (the highest of its matching subscriptions, MQTT 5 section
/// 3.3.5; the caller takes the minimum with the message's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub session: SessionId,
    pub qos: QoS,
    /// Some matching subscription asked for the publisher's RETAIN flag.
    pub retain_as_published: bool,
    /// The identifiers of every matching subscription that has one.
    pub subscription_ids: Vec<u32>,
}

impl Route {
    fn new(session: SessionId, o: &SubOptions) -> Route {
        Route {
            session,
            qos: o.qos,
            retain_as_published: o.retain_as_published,
            subscription_ids: o.id.into_iter().collect(),
        }
    }

    fn merge(&mut self, o: &SubOptions) {
        self.qos = self.qos.max(o.qos);
        self.retain_as_published |= o.retain_as_published;
        if let Some(id) = o.id
            && !self.subscription_ids.contains(&id)
        {
            self.subscription_ids.push(id);
        }
    }
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
        options: impl Into<SubOptions>,
    ) {
        let options = options.into();
        let subs = self.subscribers_mut(filter);
        let added = match share_group {
            None => subs.direct.insert(session, options).is_none(),
            Some(g) => {
                let group = subs.shared.entry(Box::from(g)).or_default();
                match group.members.iter_mut().find(|(s, _)| *s == session) {
                    Some(m) => {
                        m.1 = options;
                        false
                    }
                    None => {
                        group.members.push((session, options));
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

    /// Every session that should receive a message on `topic` published by
    /// `publisher` (a session of this table, or `None` for the server). A
    /// session matched by several filters appears once, at the highest QoS,
    /// with every matching subscription's identifier; a No Local
    /// subscription does not match its own session's messages. Each shared
    /// group contributes one member, chosen round-robin.
    pub fn route(&mut self, topic: &str, publisher: Option<SessionId>) -> Vec<Route> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut direct: HashMap<SessionId, Route> = HashMap::new();
        let mut shared: Vec<Route> = Vec::new();
        // Wildcards at the first level never match `$` topics (MQTT 4.7.2).
        let dollar = topic.starts_with('$');
        let mut visit = Visit {
            publisher,
            dollar,
            direct: &mut direct,
            shared: &mut shared,
        };
        collect(&mut self.root, &levels, 0, &mut visit);
        let mut routes: Vec<Route> = direct.into_values().collect();
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

struct Visit<'a> {
    publisher: Option<SessionId>,
    dollar: bool,
    direct: &'a mut HashMap<SessionId, Route>,
    shared: &'a mut Vec<Route>,
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
                    shrink_when_sparse(&mut node.children);
                }
                r
            }
            None => false,
        }
    }
}

/// Gives back most of a map's unused capacity once three quarters of it
/// are unused: a map keeps its largest capacity, so a filter that thousands
/// of sessions once held (or the hub's session table after a connection
/// peak) would keep their slots otherwise. Halves what is unused; amortised,
/// each removal pays for at most a few moves.
pub fn shrink_when_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 256 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

fn remove_from(subs: &mut Subscribers, session: SessionId, share: Option<&str>) -> bool {
    match share {
        None => {
            let removed = subs.direct.remove(&session).is_some();
            shrink_when_sparse(&mut subs.direct);
            removed
        }
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

fn collect(node: &mut Node, levels: &[&str], depth: usize, visit: &mut Visit<'_>) {
    let wildcards_ok = !(visit.dollar && depth == 0);
    if wildcards_ok {
        take(&mut node.multi, visit);
    }
    match levels.split_first() {
        None => take(&mut node.exact, visit),
        Some((level, rest)) => {
            if let Some(child) = node.children.get_mut(*level) {
                collect(child, rest, depth + 1, visit);
            }
            if wildcards_ok && let Some(child) = node.plus.as_deref_mut() {
                collect(child, rest, depth + 1, visit);
            }
        }
    }
}

fn take(subs: &mut Subscribers, visit: &mut Visit<'_>) {
    for (s, o) in &subs.direct {
        if o.no_local && visit.publisher == Some(*s) {
            continue;
        }
        match visit.direct.get_mut(s) {
            Some(r) => r.merge(o),
            None => {
                visit.direct.insert(*s, Route::new(*s, o));
            }
        }
    }
    // Each node is visited at most once per route, so each group picks once.
    for group in subs.shared.values_mut() {
        if group.members.is_empty() {
            continue;
        }
        let i = group.next % group.members.len();
        group.next = group.next.wrapping_add(1);
        let (session, options) = group.members[i];
        visit.shared.push(Route::new(session, &options));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sessions(t: &mut SubscriptionTable, topic: &str) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = t
            .route(topic, None)
            .into_iter()
            .map(|r| r.session)
            .collect();
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
            t.route("a/b", None),
            [Route {
                session: 1,
                qos: QoS::AtLeastOnce,
                retain_as_published: false,
                subscription_ids: vec![],
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
            for r in t.route(&format!("things/d{i}/telemetry"), None) {
                *counts.entry(r.session).or_default() += 1;
            }
        }
        assert_eq!(counts[&10], 10);
        assert_eq!(counts[&11], 10);
        assert_eq!(counts[&12], 10);
        assert_eq!(counts[&20], 30, "a plain subscriber still gets everything");
        assert!(t.unsubscribe(11, "things/+/telemetry", Some("workers")));
        let picked: Vec<_> = (0..4)
            .flat_map(|_| t.route("things/x/telemetry", None))
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

    fn opts(qos: QoS, no_local: bool, rap: bool, id: Option<u32>) -> SubOptions {
        SubOptions {
            qos,
            no_local,
            retain_as_published: rap,
            id,
        }
    }

    #[test]
    fn no_local_skips_only_the_publishers_own_subscription() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "a", None, opts(QoS::AtLeastOnce, true, false, None));
        t.subscribe(2, "a", None, opts(QoS::AtLeastOnce, true, false, None));
        assert_eq!(sessions_from(&mut t, "a", Some(1)), [2]);
        assert_eq!(sessions_from(&mut t, "a", None), [1, 2]);
        // Another filter of the publisher without No Local still matches.
        t.subscribe(1, "#", None, QoS::AtMostOnce);
        let r = t.route("a", Some(1));
        let mine: Vec<_> = r.iter().filter(|r| r.session == 1).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(
            mine[0].qos,
            QoS::AtMostOnce,
            "only the matching subscription counts"
        );
    }

    fn sessions_from(
        t: &mut SubscriptionTable,
        topic: &str,
        from: Option<SessionId>,
    ) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = t
            .route(topic, from)
            .into_iter()
            .map(|r| r.session)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn overlapping_subscriptions_carry_every_identifier() {
        let mut t = SubscriptionTable::new();
        t.subscribe(1, "a/b", None, opts(QoS::AtMostOnce, false, false, Some(2)));
        t.subscribe(1, "a/#", None, opts(QoS::ExactlyOnce, false, true, Some(3)));
        t.subscribe(1, "a/+", None, opts(QoS::AtLeastOnce, false, false, None));
        let r = t.route("a/b", None);
        assert_eq!(r.len(), 1);
        let mut ids = r[0].subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, [2, 3]);
        assert_eq!(r[0].qos, QoS::ExactlyOnce);
        assert!(r[0].retain_as_published);
    }

    #[test]
    fn retain_handling_decides_by_subscription_age() {
        use RetainHandling::*;
        assert!(send_retained(OnSubscribe, false, false));
        assert!(send_retained(OnSubscribe, true, false));
        assert!(send_retained(OnNewSubscription, false, false));
        assert!(!send_retained(OnNewSubscription, true, false));
        assert!(!send_retained(Never, false, false));
        assert!(
            !send_retained(OnSubscribe, false, true),
            "never for shared subscriptions"
        );
    }

    fn qos_strategy() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    proptest! {
        /// [MQTT-3.3.5-1]: with overlapping subscriptions a session gets one
        /// message at the highest QoS among the subscriptions that match
        /// (No Local ones excepted for its own messages), with all their ids.
        #[test]
        fn the_route_takes_the_maximum_granted_qos(
            subs in proptest::collection::vec((proptest::collection::vec(filter_level(), 1..3), any::<bool>(), qos_strategy(), any::<bool>(), proptest::option::of(1u32..1000)), 1..8),
            topic in proptest::collection::vec(level(), 1..4),
            own in any::<bool>(),
        ) {
            let topic = topic.join("/");
            let mut t = SubscriptionTable::new();
            let mut best: Option<QoS> = None;
            let mut ids = Vec::new();
            let publisher = own.then_some(7);
            for (levels, multi, qos, no_local, id) in &subs {
                let mut f = levels.join("/");
                if *multi { f.push_str("/#"); }
                t.unsubscribe(7, &f, None);
                t.subscribe(7, &f, None, opts(*qos, *no_local, false, *id));
            }
            // The table keeps the last options per filter: recompute from it.
            let mut last: HashMap<String, (QoS, bool, Option<u32>)> = HashMap::new();
            for (levels, multi, qos, no_local, id) in &subs {
                let mut f = levels.join("/");
                if *multi { f.push_str("/#"); }
                last.insert(f, (*qos, *no_local, *id));
            }
            for (f, (qos, no_local, id)) in &last {
                if naive_match(f, &topic) && !(*no_local && own) {
                    best = Some(best.map_or(*qos, |b: QoS| b.max(*qos)));
                    if let Some(id) = id && !ids.contains(id) { ids.push(*id); }
                }
            }
            let routes = t.route(&topic, publisher);
            match best {
                None => prop_assert!(routes.is_empty()),
                Some(q) => {
                    prop_assert_eq!(routes.len(), 1);
                    prop_assert_eq!(routes[0].qos, q);
                    let mut got = routes[0].subscription_ids.clone();
                    got.sort();
                    ids.sort();
                    prop_assert_eq!(got, ids);
                }
            }
        }
    }
}
