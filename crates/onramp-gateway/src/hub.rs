//! The gateway's shared state: one broker per tenant (subscriptions, sessions,
//! retained messages), and the channels to the live connections. Topics never
//! cross tenants: each tenant has its own subscription table.

use crate::wire::CloseReason;
use onramp_broker::{
    Message, Outgoing, QoS, RetainedStore, Session, SessionId, SessionLimits, SubscriptionTable,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Whether the session's owner may receive a message on a topic (`iot:Receive`).
pub type ReceiveCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the hub asks a connection task to do.
#[derive(Debug)]
pub enum ToConnection {
    Deliver(Outgoing),
    Close(CloseReason),
}

struct SessionEntry {
    client_id: String,
    thing_name: String,
    certificate_serial: String,
    session: Session,
    subscriptions: HashMap<String, (String, Option<String>, QoS)>,
    tx: Option<mpsc::Sender<ToConnection>>,
    connection: u64,
    receive: ReceiveCheck,
    /// While disconnected: when the session is discarded.
    expires_at: Option<Instant>,
}

#[derive(Default)]
struct TenantBroker {
    table: SubscriptionTable,
    sessions: HashMap<SessionId, SessionEntry>,
    by_client: HashMap<String, SessionId>,
    retained: RetainedStore,
    presence_version: HashMap<String, u64>,
}

impl TenantBroker {
    fn drop_session(&mut self, id: SessionId) {
        if let Some(entry) = self.sessions.remove(&id) {
            for (_, (filter, group, _)) in entry.subscriptions {
                self.table.unsubscribe(id, &filter, group.as_deref());
            }
            if self.by_client.get(&entry.client_id) == Some(&id) {
                self.by_client.remove(&entry.client_id);
            }
        }
    }
}

pub struct Attached {
    pub session: SessionId,
    pub session_present: bool,
    /// Unacknowledged and queued messages to send first.
    pub resend: Vec<Outgoing>,
    /// Monotonic per client id, for presence events.
    pub presence_version: u64,
}

pub struct Hub {
    tenants: Mutex<HashMap<String, TenantBroker>>,
    next_id: AtomicU64,
    limits: SessionLimits,
    dropped: AtomicU64,
}

impl Hub {
    pub fn new(limits: SessionLimits) -> Hub {
        Hub {
            tenants: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            limits,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantBroker>> {
        // A panic while holding the lock must not take the gateway down with it.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Messages dropped because a connection could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Binds a connection to its client's session, taking it over from an
    /// older connection of the same owner (which is told to close) or
    /// starting afresh.
    ///
    /// A client id is held by the identity (`thing_name`) whose session it
    /// names, live or kept for later: another identity cannot displace that
    /// connection or wipe that session, and gets `None` until the session
    /// has ended or expired. With `exclusive` (a claim certificate, shared by
    /// a whole batch) not even the same identity takes over a live
    /// connection.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &self,
        tenant: &str,
        client_id: &str,
        thing_name: &str,
        certificate_serial: &str,
        clean_start: bool,
        connection: u64,
        tx: mpsc::Sender<ToConnection>,
        receive: ReceiveCheck,
        receive_max: Option<u16>,
        exclusive: bool,
    ) -> Option<Attached> {
        let mut limits = self.limits;
        if let Some(m) = receive_max {
            // The client's Receive Maximum (MQTT 5) caps the in-flight window.
            limits.max_inflight = limits.max_inflight.min(usize::from(m.max(1)));
        }
        let mut tenants = self.lock();
        let broker = tenants.entry(tenant.to_string()).or_default();
        if let Some(entry) = broker
            .by_client
            .get(client_id)
            .and_then(|old| broker.sessions.get(old))
        {
            let other_owner = entry.thing_name != thing_name;
            if other_owner || (exclusive && entry.tx.is_some()) {
                return None;
            }
        }
        let version = {
            let v = broker
                .presence_version
                .entry(client_id.to_string())
                .or_insert(0);
            *v += 1;
            *v
        };
        if let Some(&old) = broker.by_client.get(client_id) {
            if let Some(entry) = broker.sessions.get_mut(&old)
                && let Some(old_tx) = entry.tx.take()
            {
                let _ = old_tx.try_send(ToConnection::Close(CloseReason::SessionTakenOver));
            }
            let same_owner = broker
                .sessions
                .get(&old)
                .is_some_and(|e| e.thing_name == thing_name);
            if clean_start || !same_owner {
                broker.drop_session(old);
            } else if let Some(entry) = broker.sessions.get_mut(&old) {
                entry.tx = Some(tx);
                entry.connection = connection;
                entry.receive = receive;
                entry.expires_at = None;
                entry.certificate_serial = certificate_serial.to_string();
                let resend = entry.session.on_reconnect();
                return Some(Attached {
                    session: old,
                    session_present: true,
                    resend,
                    presence_version: version,
                });
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        broker.sessions.insert(
            id,
            SessionEntry {
                client_id: client_id.to_string(),
                thing_name: thing_name.to_string(),
                certificate_serial: certificate_serial.to_string(),
                session: Session::new(limits),
                subscriptions: HashMap::new(),
                tx: Some(tx),
                connection,
                receive,
                expires_at: None,
            },
        );
        broker.by_client.insert(client_id.to_string(), id);
        Some(Attached {
            session: id,
            session_present: false,
            resend: Vec::new(),
            presence_version: version,
        })
    }

    /// The connection ended. A persistent session is kept for `keep`; a
    /// clean one is dropped. Returns false when a newer connection already
    /// owns the session (a takeover), so the caller publishes no presence event.
    pub fn detach(
        &self,
        tenant: &str,
        session: SessionId,
        connection: u64,
        keep: Option<Duration>,
    ) -> bool {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return false;
        };
        let Some(entry) = broker.sessions.get_mut(&session) else {
            return false;
        };
        if entry.connection != connection {
            return false;
        }
        entry.tx = None;
        entry.session.on_disconnect();
        match keep {
            Some(d) if !d.is_zero() => entry.expires_at = Some(Instant::now() + d),
            _ => broker.drop_session(session),
        }
        true
    }

    /// Adds or replaces the session's subscription `key` (the filter as the
    /// client sent it). A new key beyond `max` subscriptions is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        tenant: &str,
        session: SessionId,
        key: &str,
        filter: &str,
        group: Option<&str>,
        qos: QoS,
        max: usize,
    ) -> bool {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return false;
        };
        let Some(e) = broker.sessions.get_mut(&session) else {
            return false;
        };
        if !e.subscriptions.contains_key(key) && e.subscriptions.len() >= max {
            return false;
        }
        e.subscriptions.insert(
            key.to_string(),
            (filter.to_string(), group.map(str::to_string), qos),
        );
        broker.table.subscribe(session, filter, group, qos);
        true
    }

    pub fn unsubscribe(&self, tenant: &str, session: SessionId, key: &str) -> bool {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return false;
        };
        let Some(e) = broker.sessions.get_mut(&session) else {
            return false;
        };
        let Some((filter, group, _)) = e.subscriptions.remove(key) else {
            return false;
        };
        broker.table.unsubscribe(session, &filter, group.as_deref())
    }

    /// Routes a message to every subscriber allowed to receive it. Returns
    /// how many sessions it was handed to.
    pub fn publish(&self, tenant: &str, message: &Message) -> usize {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return 0;
        };
        let routes = broker.table.route(&message.topic);
        let mut delivered = 0;
        for r in routes {
            let Some(entry) = broker.sessions.get_mut(&r.session) else {
                continue;
            };
            if !(entry.receive)(&message.topic) {
                metrics::counter!("onramp_mqtt_policy_denials_total", "action" => "receive")
                    .increment(1);
                continue;
            }
            let mut copy = message.clone();
            // Retain is cleared on normal delivery (MQTT 3.3.1-9).
            copy.retain = false;
            delivered += 1;
            if let Some(out) = entry.session.deliver(&copy, r.qos) {
                send(entry, out, &self.dropped);
            }
        }
        delivered
    }

    /// Records the PUBACK; returns queued messages that now fit the window.
    pub fn puback(&self, tenant: &str, session: SessionId, packet_id: u16) -> Vec<Outgoing> {
        let mut tenants = self.lock();
        tenants
            .get_mut(tenant)
            .and_then(|b| b.sessions.get_mut(&session))
            .map(|e| e.session.on_puback(packet_id))
            .unwrap_or_default()
    }

    /// Keeps or clears the retained message of its topic; returns whether it changed.
    pub fn set_retained(&self, tenant: &str, message: &Message) -> bool {
        let mut tenants = self.lock();
        tenants
            .entry(tenant.to_string())
            .or_default()
            .retained
            .set(message)
    }

    pub fn retained_matching(&self, tenant: &str, filter: &str) -> Vec<Message> {
        let tenants = self.lock();
        tenants
            .get(tenant)
            .map(|b| {
                b.retained
                    .matching(|t| onramp_domain::topic::filter_matches(filter, t))
            })
            .unwrap_or_default()
    }

    /// Closes the live connections of a thing (all, or those using one certificate).
    pub fn close_identity(
        &self,
        tenant: &str,
        thing_name: &str,
        certificate_serial: Option<&str>,
        why: CloseReason,
    ) -> usize {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return 0;
        };
        let mut closed = 0;
        for e in broker.sessions.values_mut() {
            let matches = e.thing_name == thing_name
                && certificate_serial.is_none_or(|s| s == e.certificate_serial);
            if matches && let Some(tx) = e.tx.take() {
                let _ = tx.try_send(ToConnection::Close(why));
                closed += 1;
            }
        }
        closed
    }

    /// Closes every live connection (server shutdown).
    pub fn close_all(&self, why: CloseReason) {
        let mut tenants = self.lock();
        for broker in tenants.values_mut() {
            for e in broker.sessions.values_mut() {
                if let Some(tx) = e.tx.take() {
                    let _ = tx.try_send(ToConnection::Close(why));
                }
            }
        }
    }

    /// Sends the retained messages matching a new subscription to its session.
    pub fn deliver_retained(
        &self,
        tenant: &str,
        session: SessionId,
        filter: &str,
        qos: QoS,
    ) -> usize {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return 0;
        };
        let messages = broker
            .retained
            .matching(|t| onramp_domain::topic::filter_matches(filter, t));
        let Some(entry) = broker.sessions.get_mut(&session) else {
            return 0;
        };
        let mut n = 0;
        for m in messages {
            if !(entry.receive)(&m.topic) {
                continue;
            }
            n += 1;
            if let Some(out) = entry.session.deliver(&m, qos) {
                send(entry, out, &self.dropped);
            }
        }
        n
    }

    /// Discards persistent sessions whose expiry has passed.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut tenants = self.lock();
        let mut n = 0;
        for broker in tenants.values_mut() {
            let expired: Vec<SessionId> = broker
                .sessions
                .iter()
                .filter(|(_, e)| e.tx.is_none() && e.expires_at.is_some_and(|t| t <= now))
                .map(|(id, _)| *id)
                .collect();
            n += expired.len();
            for id in expired {
                broker.drop_session(id);
            }
        }
        n
    }

    /// Live connections and sessions held, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let tenants = self.lock();
        let sessions: usize = tenants.values().map(|b| b.sessions.len()).sum();
        let connected: usize = tenants
            .values()
            .map(|b| b.sessions.values().filter(|e| e.tx.is_some()).count())
            .sum();
        (connected, sessions)
    }
}

fn send(entry: &mut SessionEntry, out: Outgoing, dropped: &AtomicU64) {
    if let Some(tx) = &entry.tx
        && tx.try_send(ToConnection::Deliver(out)).is_err()
    {
        // The connection is not keeping up. QoS 1 stays in the session's
        // in-flight window and is sent again when the client reconnects.
        dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("onramp_mqtt_messages_dropped_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach_as(
        hub: &Hub,
        client: &str,
        owner: &str,
        clean: bool,
        exclusive: bool,
    ) -> Option<(Attached, mpsc::Receiver<ToConnection>)> {
        let (tx, rx) = mpsc::channel(16);
        let a = hub.attach(
            "t",
            client,
            owner,
            "serial",
            clean,
            hub.next_connection_id(),
            tx,
            Arc::new(|_| true),
            None,
            exclusive,
        )?;
        Some((a, rx))
    }

    fn attach(hub: &Hub, client: &str, clean: bool) -> (Attached, mpsc::Receiver<ToConnection>) {
        attach_as(hub, client, client, clean, false).expect("the owner may take its client id")
    }

    #[test]
    fn another_identity_cannot_take_over_a_live_client_id() {
        let hub = Hub::new(SessionLimits::default());
        let (tx, mut rx) = mpsc::channel(16);
        let connection = hub.next_connection_id();
        let a = hub
            .attach(
                "t",
                "d1",
                "d1",
                "s",
                false,
                connection,
                tx,
                Arc::new(|_| true),
                None,
                false,
            )
            .expect("attached");
        assert!(attach_as(&hub, "d1", "claim:c1", true, true).is_none());
        assert!(attach_as(&hub, "d1", "d2", true, false).is_none());
        assert!(rx.try_recv().is_err(), "the device was not told to close");
        // Its persistent session survives the attempts.
        assert!(hub.detach("t", a.session, connection, Some(Duration::from_secs(60))));
        assert!(
            attach_as(&hub, "d1", "d2", true, false).is_none(),
            "nor may it wipe the session kept for the device"
        );
        let (back, _rx) = attach(&hub, "d1", false);
        assert!(back.session_present);
    }

    #[test]
    fn an_exclusive_identity_never_displaces_a_live_connection_even_its_own() {
        let hub = Hub::new(SessionLimits::default());
        let (_a, mut first) =
            attach_as(&hub, "claim-x", "claim:c1", true, true).expect("a fresh client id");
        assert!(attach_as(&hub, "claim-x", "claim:c1", true, true).is_none());
        assert!(first.try_recv().is_err());
        // A device may still take over its own client id.
        let (_d, mut dev) = attach(&hub, "d1", true);
        assert!(attach_as(&hub, "d1", "d1", true, false).is_some());
        assert!(matches!(
            dev.try_recv(),
            Ok(ToConnection::Close(CloseReason::SessionTakenOver))
        ));
    }

    #[test]
    fn the_subscription_quota_counts_distinct_filters_of_the_session() {
        let hub = Hub::new(SessionLimits::default());
        let (a, _rx) = attach(&hub, "c", false);
        assert!(hub.subscribe("t", a.session, "a/#", "a/#", None, QoS::AtMostOnce, 2));
        assert!(
            hub.subscribe("t", a.session, "a/#", "a/#", None, QoS::AtLeastOnce, 2),
            "a repeat replaces"
        );
        assert!(hub.subscribe("t", a.session, "b", "b", None, QoS::AtMostOnce, 2));
        assert!(!hub.subscribe("t", a.session, "c", "c", None, QoS::AtMostOnce, 2));
        // A resumed persistent session still holds its two.
        let (b, _rx2) = attach(&hub, "c", false);
        assert!(b.session_present);
        assert!(!hub.subscribe("t", b.session, "c", "c", None, QoS::AtMostOnce, 2));
    }

    #[test]
    fn a_takeover_tells_the_old_connection_to_close() {
        let hub = Hub::new(SessionLimits::default());
        let (_a, mut old) = attach(&hub, "c", true);
        let (_b, _new) = attach(&hub, "c", true);
        assert!(matches!(
            old.try_recv(),
            Ok(ToConnection::Close(CloseReason::SessionTakenOver))
        ));
    }

    #[test]
    fn a_message_reaches_only_sessions_allowed_to_receive_it() {
        let hub = Hub::new(SessionLimits::default());
        let (tx1, mut rx1) = mpsc::channel(16);
        let (tx2, mut rx2) = mpsc::channel(16);
        let s1 = hub
            .attach(
                "t",
                "a",
                "a",
                "s",
                true,
                1,
                tx1,
                Arc::new(|_| true),
                None,
                false,
            )
            .map(|a| a.session)
            .expect("attached");
        let s2 = hub
            .attach(
                "t",
                "b",
                "b",
                "s",
                true,
                2,
                tx2,
                Arc::new(|_| false),
                None,
                false,
            )
            .map(|a| a.session)
            .expect("attached");
        hub.subscribe("t", s1, "x", "x", None, QoS::AtMostOnce, 10);
        hub.subscribe("t", s2, "x", "x", None, QoS::AtMostOnce, 10);
        assert_eq!(
            hub.publish("t", &Message::new("x", "hi", QoS::AtMostOnce, false)),
            1
        );
        assert!(rx1.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        // Another tenant's broker sees nothing.
        assert_eq!(
            hub.publish("other", &Message::new("x", "hi", QoS::AtMostOnce, false)),
            0
        );
    }
}
