//! The gateway's shared state: one broker per tenant (subscriptions, sessions,
//! retained messages), and the channels to the live connections. Topics never
//! cross tenants: each tenant has its own subscription table.

use crate::counters::COUNTERS;
use crate::persist::{self, Clock, Journal};
use crate::wire::CloseReason;
use onramp_broker::{
    ClientLimits, Incoming, Message, Millis, Outgoing, PubRec, QoS, RetainedStore, Session,
    SessionId, SessionImage, SessionLimits, SubOptions, SubscriptionTable, Transmit,
};
use onramp_service::{SessionWrite, StoredSession, StoredSessionRecord};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

/// Whether the session's owner may receive a message on a topic (`iot:Receive`).
pub type ReceiveCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the hub asks a connection task to do.
#[derive(Debug)]
pub enum ToConnection {
    /// Boxed: a channel's first block of 32 slots is allocated with it, for
    /// every connection, so the slot is kept to a pointer's size.
    Deliver(Box<Outgoing>),
    Close(CloseReason),
}

struct SessionEntry {
    client_id: String,
    thing_name: String,
    certificate_serial: String,
    session: Session,
    subscriptions: HashMap<String, (String, Option<String>, SubOptions)>,
    tx: Option<mpsc::Sender<ToConnection>>,
    connection: u64,
    receive: ReceiveCheck,
    /// Restored after a restart and not yet reconnected: what it holds was
    /// routed without its owner's policies, checked again on the reconnect.
    restored: bool,
    /// Publishers held until the session's queue has room, in the order
    /// they came: the room goes to the first of them, never to a newcomer.
    line: Arc<Mutex<Line>>,
    /// A publisher was held for this connection for the whole hold limit:
    /// until it has caught up (half its channel and queue free), messages
    /// for it follow the drop policy at once instead of holding publishers.
    stalled: bool,
}

impl SessionEntry {
    /// Whether publishers feeding this session are held when it is behind:
    /// it has a live connection that has not stalled.
    fn holds(&mut self) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        if self.stalled
            && tx.capacity() * 2 >= tx.max_capacity()
            && self.session.queued() * 2 <= self.session.max_queued()
        {
            self.stalled = false;
        }
        !self.stalled
    }

    fn line(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes as many publishers at the head of the line as the queue has
    /// room for, or all of them when publishers are no longer held for it.
    fn wake_line(&mut self) {
        let room = if self.holds() {
            self.session
                .max_queued()
                .saturating_sub(self.session.queued())
        } else {
            usize::MAX
        };
        for (_, wake) in self.line().waiting.iter().take(room) {
            wake.notify_one();
        }
    }
}

/// Publishers waiting for room in one session's queue.
#[derive(Default)]
struct Line {
    waiting: VecDeque<(u64, Arc<Notify>)>,
    next_ticket: u64,
}

impl Line {
    fn join(line: &Arc<Mutex<Line>>) -> InLine {
        let wake = Arc::new(Notify::new());
        let mut l = line.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = l.next_ticket;
        l.next_ticket += 1;
        l.waiting.push_back((ticket, wake.clone()));
        InLine {
            line: line.clone(),
            ticket,
            wake,
        }
    }

    fn position(&self, ticket: u64) -> Option<usize> {
        self.waiting.iter().position(|(t, _)| *t == ticket)
    }

    fn leave(&mut self, ticket: u64) {
        if let Some(i) = self.position(ticket) {
            self.waiting.remove(i);
        }
    }
}

/// Deliveries a publisher could not hand over at once because the receiving
/// connection was behind. The publisher settles them (see [`Hub::settle`])
/// before it acknowledges its PUBLISH or reads its next packet.
#[derive(Default)]
pub struct Backlog {
    /// The connection's outgoing channel was full.
    channels: Vec<(SessionId, mpsc::Sender<ToConnection>, ToConnection)>,
    /// The session's queue of QoS 1 and 2 messages was full.
    queues: Vec<QueueWait>,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.queues.is_empty()
    }
}

struct QueueWait {
    session: SessionId,
    in_line: InLine,
    message: Message,
    qos: QoS,
    subscription_ids: Vec<u32>,
}

/// One publisher's place in a session's line; it leaves the line when
/// dropped, however its wait ends.
struct InLine {
    line: Arc<Mutex<Line>>,
    ticket: u64,
    wake: Arc<Notify>,
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leave(self.ticket);
    }
}

enum Retry {
    /// The queue is still full.
    Full,
    /// Delivered into the session, with what could not be written yet.
    Done(Option<(mpsc::Sender<ToConnection>, ToConnection)>),
}

#[derive(Default)]
struct TenantBroker {
    table: SubscriptionTable,
    sessions: HashMap<SessionId, SessionEntry>,
    by_client: HashMap<String, SessionId>,
    retained: RetainedStore,
    /// Stored sessions whose changes wait to be handed to the journal.
    dirty: Vec<SessionId>,
    /// Writes of stored sessions waiting to be handed to the journal.
    writes: Vec<SessionWrite>,
}

impl TenantBroker {
    fn drop_session(&mut self, id: SessionId) {
        if let Some(entry) = self.sessions.remove(&id) {
            if entry.session.is_tracked() {
                self.writes.push(SessionWrite::Delete {
                    tenant: String::new(),
                    client_id: entry.client_id.clone(),
                });
            }
            for (filter, group, _) in entry.subscriptions.values() {
                self.table.unsubscribe(id, filter, group.as_deref());
            }
            if self.by_client.get(&entry.client_id) == Some(&id) {
                self.by_client.remove(&entry.client_id);
            }
            // Gone: everyone in its line goes on.
            for (_, wake) in entry.line().waiting.iter() {
                wake.notify_one();
            }
            onramp_broker::shrink_when_sparse(&mut self.sessions);
            onramp_broker::shrink_when_sparse(&mut self.by_client);
        }
    }

    /// Routes `message` from `publisher` to every subscriber allowed to
    /// receive it. With `backlog`, a delivery to a live connection that is
    /// behind (its channel or its queue full) is put there for the publisher
    /// to wait on, instead of being dropped.
    fn publish(
        &mut self,
        message: &Message,
        publisher: Option<SessionId>,
        now: Millis,
        dropped: &AtomicU64,
        mut backlog: Option<&mut Backlog>,
    ) -> usize {
        let routes = self.table.route(&message.topic, publisher);
        let mut delivered = 0;
        for r in routes {
            let Some(entry) = self.sessions.get_mut(&r.session) else {
                continue;
            };
            // A denial is counted by the check itself.
            if !(entry.receive)(&message.topic) {
                continue;
            }
            let mut copy = message.clone();
            // Retain is cleared on normal delivery (MQTT 3.3.1-9) unless the
            // subscription asked for it as published (MQTT 5).
            copy.retain = message.retain && r.retain_as_published;
            delivered += 1;
            // Never held for itself: its own queue drains only as it reads
            // its socket, which a held publisher does not.
            let hold = backlog.is_some() && Some(r.session) != publisher && entry.holds();
            if hold
                && copy.qos.min(r.qos) != QoS::AtMostOnce
                && (entry.session.queue_full() || !entry.line().waiting.is_empty())
                && let Some(b) = backlog.as_deref_mut()
            {
                b.queues.push(QueueWait {
                    session: r.session,
                    in_line: Line::join(&entry.line),
                    message: copy,
                    qos: r.qos,
                    subscription_ids: r.subscription_ids,
                });
                continue;
            }
            let out = counted(&mut entry.session, |s| {
                s.deliver(&copy, r.qos, &r.subscription_ids, now)
            });
            if entry.session.has_changes() {
                self.dirty.push(r.session);
            }
            if let Some(out) = out {
                let held = send(entry, out, dropped, hold);
                if let (Some(item), Some(b)) = (held, backlog.as_deref_mut())
                    && let Some(tx) = &entry.tx
                {
                    b.channels.push((r.session, tx.clone(), item));
                }
            }
        }
        delivered
    }
}

pub struct Attached {
    pub session: SessionId,
    pub session_present: bool,
    /// Unacknowledged and queued messages, and PUBRELs, to send first.
    pub resend: Vec<Transmit>,
    /// Monotonic per client id, for presence events.
    pub presence_version: u64,
    /// Wills of sessions this connection ended (an expired session it
    /// found, or one its clean start discarded), for the caller to publish.
    pub wills: Vec<Message>,
}

pub struct Hub {
    tenants: Mutex<HashMap<String, TenantBroker>>,
    next_id: AtomicU64,
    limits: SessionLimits,
    /// How long a publisher is held for a receiving connection that is behind.
    hold: Duration,
    dropped: AtomicU64,
    epoch: Instant,
    /// The earliest time a disconnected session has something due.
    next_deadline: AtomicU64,
    /// The last presence version handed out; see [`Hub::next_presence_version`].
    presence_clock: AtomicU64,
    /// Changes of persistent sessions, on their way to the store.
    journal: Arc<Journal>,
}

impl Hub {
    pub fn new(limits: SessionLimits) -> Hub {
        Hub::with_hold(limits, DEFAULT_HOLD)
    }

    /// A hub whose publishers are held at most `hold` for a receiving
    /// connection that is behind (zero: never held, the drop policy applies
    /// at once).
    pub fn with_hold(limits: SessionLimits, hold: Duration) -> Hub {
        Hub {
            tenants: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            limits,
            hold,
            dropped: AtomicU64::new(0),
            epoch: Instant::now(),
            next_deadline: AtomicU64::new(u64::MAX),
            presence_clock: AtomicU64::new(0),
            journal: Arc::new(Journal::new()),
        }
    }

    /// Starts writing persistent sessions' changes through the service.
    pub(crate) fn start_journal(&self, onramp: onramp_service::Onramp) {
        self.journal.start(onramp);
    }

    /// The number of the last persistent-session writes handed over; see
    /// [`Hub::durable`].
    pub fn last_write(&self) -> u64 {
        self.journal.last()
    }

    /// Waits until the persistent-session writes numbered `n` and before
    /// have committed.
    pub async fn durable(&self, n: u64) {
        if n > 0 {
            self.journal.durable(n).await;
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            now: self.now(),
            wall: persist::wall_now_ms(),
        }
    }

    /// Hands the tenant's waiting writes and the changes of its dirty
    /// sessions (and of `also`) to the journal, in order. Cheap when there
    /// are none: clean sessions never have any.
    fn flush(
        &self,
        tenant: &str,
        broker: &mut TenantBroker,
        also: Option<SessionId>,
    ) -> Option<u64> {
        let also = also.filter(|id| {
            broker
                .sessions
                .get(id)
                .is_some_and(|e| e.session.has_changes())
        });
        if broker.dirty.is_empty() && broker.writes.is_empty() && also.is_none() {
            return None;
        }
        let clock = self.clock();
        let mut writes = std::mem::take(&mut broker.writes);
        for w in &mut writes {
            if let SessionWrite::Delete { tenant: t, .. } = w
                && t.is_empty()
            {
                *t = tenant.to_string();
            }
        }
        let mut ids = std::mem::take(&mut broker.dirty);
        ids.extend(also);
        for id in ids {
            if let Some(e) = broker.sessions.get_mut(&id) {
                for c in e.session.take_changes() {
                    writes.push(persist::write_of(tenant, &e.client_id, c, clock));
                }
            }
        }
        self.journal.push(writes)
    }

    /// Makes the session of `connection` persistent (stored, with `expiry`
    /// and the will owed if the connection is lost) or, with `expiry`
    /// None, no longer stored. Returns the number of the writes to wait for.
    pub fn set_persistence(
        &self,
        tenant: &str,
        session: SessionId,
        connection: u64,
        expiry: Option<Duration>,
        will: Option<(Message, u32)>,
    ) -> Option<u64> {
        let clock = self.clock();
        let mut tenants = self.lock();
        let broker = tenants.get_mut(tenant)?;
        let e = broker.sessions.get_mut(&session)?;
        if e.connection != connection {
            return None;
        }
        let key = |e: &SessionEntry| (tenant.to_string(), e.client_id.clone());
        match expiry {
            Some(expiry) => {
                let (t, c) = key(e);
                let mut writes = Vec::new();
                let image = (!e.session.is_tracked()).then(|| e.session.track());
                if image.is_some() {
                    writes.push(SessionWrite::Delete {
                        tenant: t.clone(),
                        client_id: c.clone(),
                    });
                }
                let (will, will_delay) = match &will {
                    Some((m, d)) => (Some(persist::stored_message(m, clock)), i64::from(*d)),
                    None => (None, 0),
                };
                writes.push(SessionWrite::Open(StoredSessionRecord {
                    tenant: t.clone(),
                    client_id: c.clone(),
                    thing_name: e.thing_name.clone(),
                    certificate_serial: e.certificate_serial.clone(),
                    expiry_secs: i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX),
                    disconnected_at_ms: None,
                    will,
                    will_delay_secs: will_delay,
                }));
                if let Some(image) = image {
                    for (k, (filter, group, o)) in &e.subscriptions {
                        writes.push(SessionWrite::Subscribe {
                            tenant: t.clone(),
                            client_id: c.clone(),
                            subscription: persist::subscription(k, filter, group.as_deref(), *o),
                        });
                    }
                    for change in image {
                        writes.push(persist::write_of(&t, &c, change, clock));
                    }
                }
                broker.writes.extend(writes);
            }
            None if e.session.is_tracked() => {
                e.session.untrack();
                let (tenant, client_id) = key(e);
                broker
                    .writes
                    .push(SessionWrite::Delete { tenant, client_id });
            }
            None => {}
        }
        self.flush(tenant, broker, Some(session))
    }

    /// Brings back the stored persistent sessions after a restart, before
    /// any connection is accepted. A session that expired while the server
    /// was down is dropped; the wills owed by those are returned, by tenant,
    /// for the caller to publish once every session is back. A session
    /// whose connection was lost with the server counts as disconnected
    /// now, and its will (after its delay) is owed.
    pub fn restore(&self, sessions: Vec<StoredSession>) -> Vec<(String, Message)> {
        let clock = self.clock();
        let wall = clock.wall;
        let mut tenants = self.lock();
        let mut wills = Vec::new();
        let mut next = u64::MAX;
        for s in sessions {
            let r = s.record;
            let broker = tenants.entry(r.tenant.clone()).or_default();
            let left = r.disconnected_at_ms.unwrap_or(wall);
            let expiry_ms = r.expiry_secs.max(0).saturating_mul(1000);
            let expires = left.saturating_add(expiry_ms);
            let will = r.will.as_ref().map(|w| {
                let delay = r.will_delay_secs.max(0).saturating_mul(1000).min(expiry_ms);
                (persist::message_of(w, clock), left.saturating_add(delay))
            });
            if expires <= wall || broker.by_client.contains_key(&r.client_id) {
                wills.extend(will.map(|(m, _)| (r.tenant.clone(), m)));
                broker.writes.push(SessionWrite::Delete {
                    tenant: r.tenant.clone(),
                    client_id: r.client_id.clone(),
                });
                continue;
            }
            if r.disconnected_at_ms.is_none() {
                broker.writes.push(SessionWrite::Closed {
                    tenant: r.tenant.clone(),
                    client_id: r.client_id.clone(),
                    disconnected_at_ms: wall,
                    expiry_secs: r.expiry_secs,
                    will: r.will.clone(),
                    will_delay_secs: r.will_delay_secs,
                });
            }
            let image = SessionImage {
                messages: s
                    .messages
                    .iter()
                    .map(|h| persist::held_of(h, clock))
                    .collect(),
                incoming: s.incoming,
                will: will.map(|(m, at)| (m, clock.to_broker(at))),
                expires_at: clock.to_broker(expires),
            };
            let session = Session::restore(self.limits, image);
            if let Some(at) = session.next_deadline() {
                next = next.min(at);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut subscriptions = HashMap::new();
            for sub in &s.subscriptions {
                let options = persist::options_of(sub);
                broker
                    .table
                    .subscribe(id, &sub.filter, sub.share_group.as_deref(), options);
                subscriptions.insert(
                    sub.key.clone(),
                    (sub.filter.clone(), sub.share_group.clone(), options),
                );
            }
            broker.by_client.insert(r.client_id.clone(), id);
            broker.sessions.insert(
                id,
                SessionEntry {
                    client_id: r.client_id,
                    thing_name: r.thing_name,
                    certificate_serial: r.certificate_serial,
                    session,
                    subscriptions,
                    tx: None,
                    connection: 0,
                    receive: Arc::new(|_| true),
                    restored: true,
                    line: Arc::default(),
                    stalled: false,
                },
            );
        }
        for (tenant, broker) in tenants.iter_mut() {
            self.flush(tenant, broker, None);
        }
        self.next_deadline.fetch_min(next, Ordering::Relaxed);
        wills
    }

    /// The `versionNumber` of a connection's presence events: it must grow
    /// with each connection of a client id. One counter for all client ids,
    /// kept at or above the wall clock in microseconds, does that without
    /// remembering anything per client id (a map of every id ever seen
    /// would grow without bound under churn and random claim client ids),
    /// and keeps growing across restarts and between nodes as far as their
    /// clocks agree.
    fn next_presence_version(&self) -> u64 {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let previous = self
            .presence_clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(next_version(v, clock))
            })
            .unwrap_or_else(|v| v);
        next_version(previous, clock)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantBroker>> {
        // A panic while holding the lock must not take the gateway down with it.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now on the broker's clock.
    pub fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
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
    /// starting afresh. A session kept for a client that is found expired
    /// is discarded here, whether or not the sweep has run.
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
        client: ClientLimits,
        exclusive: bool,
    ) -> Option<Attached> {
        let now = self.now();
        let mut tenants = self.lock();
        let broker = tenants.entry(tenant.to_string()).or_default();
        let mut wills = Vec::new();
        // An expired session is gone, whoever owned it.
        if let Some(&old) = broker.by_client.get(client_id)
            && let Some(entry) = broker.sessions.get_mut(&old)
            && entry.tx.is_none()
            && entry.session.next_deadline().is_some()
        {
            let d = entry.session.poll(now);
            wills.extend(d.will);
            if d.ended {
                broker.drop_session(old);
            }
        }
        if let Some(entry) = broker
            .by_client
            .get(client_id)
            .and_then(|old| broker.sessions.get(old))
        {
            let other_owner = entry.thing_name != thing_name;
            if other_owner || (exclusive && entry.tx.is_some()) {
                self.flush(tenant, broker, None);
                drop(tenants);
                self.publish_wills(tenant, &wills);
                return None;
            }
        }
        let version = self.next_presence_version();
        if let Some(&old) = broker.by_client.get(client_id) {
            if let Some(entry) = broker.sessions.get_mut(&old)
                && let Some(old_tx) = entry.tx.take()
            {
                let _ = old_tx.try_send(ToConnection::Close(CloseReason::SessionTakenOver));
                entry.wake_line();
            }
            if clean_start {
                if let Some(entry) = broker.sessions.get_mut(&old) {
                    wills.extend(entry.session.end());
                }
                broker.drop_session(old);
            } else if let Some(entry) = broker.sessions.get_mut(&old) {
                entry.session.set_client(client);
                if entry.restored {
                    entry.restored = false;
                    let refused = entry.session.discard_unreceivable(|t| receive(t));
                    if refused > 0 {
                        metrics::counter!("onramp_mqtt_policy_denials_total", "action" => "receive")
                            .increment(refused as u64);
                    }
                }
                match counted(&mut entry.session, |s| s.resume(now)) {
                    Ok(resumed) => {
                        wills.extend(resumed.will);
                        let resend = resumed.resend;
                        entry.tx = Some(tx);
                        entry.stalled = false;
                        entry.connection = connection;
                        entry.receive = receive;
                        entry.certificate_serial = certificate_serial.to_string();
                        self.flush(tenant, broker, Some(old));
                        return Some(Attached {
                            session: old,
                            session_present: true,
                            resend,
                            presence_version: version,
                            wills,
                        });
                    }
                    Err(ended) => {
                        wills.extend(ended.will);
                        broker.drop_session(old);
                    }
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(self.limits);
        session.set_client(client);
        broker.sessions.insert(
            id,
            SessionEntry {
                client_id: client_id.to_string(),
                thing_name: thing_name.to_string(),
                certificate_serial: certificate_serial.to_string(),
                session,
                subscriptions: HashMap::new(),
                tx: Some(tx),
                connection,
                receive,
                restored: false,
                line: Arc::default(),
                stalled: false,
            },
        );
        broker.by_client.insert(client_id.to_string(), id);
        self.flush(tenant, broker, None);
        Some(Attached {
            session: id,
            session_present: false,
            resend: Vec::new(),
            presence_version: version,
            wills,
        })
    }

    fn publish_wills(&self, tenant: &str, wills: &[Message]) {
        for w in wills {
            if w.retain {
                self.set_retained(tenant, w);
            }
            self.publish(tenant, w, None);
        }
    }

    /// The connection ended. A persistent session is kept for `keep`; a
    /// clean one is dropped. `will` is the Will Message and its delay, when
    /// the way the connection ended calls for it. Returns `None` when a
    /// newer connection already owns the session (a takeover), so the
    /// caller publishes no presence event; otherwise the will to publish
    /// now, if it is due now (a delayed one waits in the session).
    pub fn detach(
        &self,
        tenant: &str,
        session: SessionId,
        connection: u64,
        keep: Option<Duration>,
        will: Option<(Message, u32)>,
    ) -> Option<Option<Message>> {
        let now = self.now();
        let mut tenants = self.lock();
        let broker = tenants.get_mut(tenant)?;
        let entry = broker.sessions.get_mut(&session)?;
        if entry.connection != connection {
            return None;
        }
        entry.tx = None;
        entry.wake_line();
        let keep_ms = keep.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let due = entry.session.on_disconnect(now, keep_ms, will);
        match entry.session.next_deadline() {
            Some(at) if keep_ms.is_some_and(|k| k > 0) => {
                self.next_deadline.fetch_min(at, Ordering::Relaxed);
                if entry.session.is_tracked() {
                    let clock = Clock {
                        now,
                        wall: persist::wall_now_ms(),
                    };
                    let (will, will_delay_secs) = match entry.session.pending_will() {
                        Some((m, at)) => (
                            Some(persist::stored_message(m, clock)),
                            i64::try_from(at.saturating_sub(now).div_ceil(1000)).unwrap_or(0),
                        ),
                        None => (None, 0),
                    };
                    broker.writes.push(SessionWrite::Closed {
                        tenant: tenant.to_string(),
                        client_id: entry.client_id.clone(),
                        disconnected_at_ms: clock.wall,
                        expiry_secs: keep
                            .map(|k| i64::try_from(k.as_secs()).unwrap_or(i64::MAX))
                            .unwrap_or(0),
                        will,
                        will_delay_secs,
                    });
                }
            }
            _ => broker.drop_session(session),
        }
        self.flush(tenant, broker, Some(session));
        Some(due)
    }

    /// Adds or replaces the session's subscription `key` (the filter as the
    /// client sent it). A new key beyond `max` subscriptions is refused
    /// (`None`); otherwise returns whether the subscription already existed.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        tenant: &str,
        session: SessionId,
        key: &str,
        filter: &str,
        group: Option<&str>,
        options: SubOptions,
        max: usize,
    ) -> Option<bool> {
        let mut tenants = self.lock();
        let broker = tenants.get_mut(tenant)?;
        let e = broker.sessions.get_mut(&session)?;
        let existed = e.subscriptions.contains_key(key);
        if !existed && e.subscriptions.len() >= max {
            return None;
        }
        e.subscriptions.insert(
            key.to_string(),
            (filter.to_string(), group.map(str::to_string), options),
        );
        if e.session.is_tracked() {
            let subscription = persist::subscription(key, filter, group, options);
            let client_id = e.client_id.clone();
            broker.writes.push(SessionWrite::Subscribe {
                tenant: tenant.to_string(),
                client_id,
                subscription,
            });
        }
        broker.table.subscribe(session, filter, group, options);
        self.flush(tenant, broker, None);
        Some(existed)
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
        if e.session.is_tracked() {
            let client_id = e.client_id.clone();
            broker.writes.push(SessionWrite::Unsubscribe {
                tenant: tenant.to_string(),
                client_id,
                key: key.to_string(),
            });
            self.flush(tenant, broker, None);
        }
        broker.table.unsubscribe(session, &filter, group.as_deref())
    }

    /// Routes a message from `publisher` (`None`: the server) to every
    /// subscriber allowed to receive it. Returns how many sessions it was
    /// handed to.
    pub fn publish(&self, tenant: &str, message: &Message, publisher: Option<SessionId>) -> usize {
        self.publish_durable(tenant, message, publisher).0
    }

    /// [`Hub::publish`], also returning the number of the writes of the
    /// persistent sessions it reached, to wait for (see [`Hub::durable`])
    /// before acknowledging the message.
    pub fn publish_durable(
        &self,
        tenant: &str,
        message: &Message,
        publisher: Option<SessionId>,
    ) -> (usize, Option<u64>) {
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return (0, None);
        };
        let n = broker.publish(message, publisher, now, &self.dropped, None);
        (n, self.flush(tenant, broker, None))
    }

    /// Routes a client's message like [`Hub::publish`], but hands back the
    /// deliveries to connections that are behind, for the publisher to
    /// [`settle`](Hub::settle) before it takes its next message.
    pub fn publish_held(
        &self,
        tenant: &str,
        message: &Message,
        publisher: SessionId,
    ) -> (usize, Backlog, Option<u64>) {
        let mut backlog = Backlog::default();
        if self.hold.is_zero() {
            let (n, written) = self.publish_durable(tenant, message, Some(publisher));
            return (n, backlog, written);
        }
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return (0, backlog, None);
        };
        let n = broker.publish(
            message,
            Some(publisher),
            now,
            &self.dropped,
            Some(&mut backlog),
        );
        let written = self.flush(tenant, broker, None);
        (n, backlog, written)
    }

    /// Waits, up to the hold limit, until every delivery of `backlog` is
    /// handed over. A delivery still waiting then follows the drop policy
    /// (counted), and its connection is marked stalled so that publishers
    /// are not held for it again until it has caught up.
    pub async fn settle(&self, tenant: &str, backlog: Backlog) {
        let until = tokio::time::Instant::now() + self.hold;
        let mut expired = false;
        for (session, tx, item) in backlog.channels {
            expired |= !self.hand_over(tenant, session, tx, item, until).await;
        }
        for wait in backlog.queues {
            loop {
                match self.retry(tenant, &wait, false) {
                    Retry::Done(None) => break,
                    Retry::Done(Some((tx, item))) => {
                        expired |= !self.hand_over(tenant, wait.session, tx, item, until).await;
                        break;
                    }
                    Retry::Full => {}
                }
                // Woken (a permit is kept if that came first) when the
                // queue has room for it, or publishers are no longer held.
                let wake = wait.in_line.wake.clone();
                if tokio::time::timeout_at(until, wake.notified())
                    .await
                    .is_err()
                {
                    expired = true;
                    self.mark_stalled(tenant, wait.session);
                    if let Retry::Done(Some((_, item))) = self.retry(tenant, &wait, true) {
                        self.drop_behind(item);
                    }
                    break;
                }
            }
        }
        if expired {
            COUNTERS.held_expired.increment(1);
        } else {
            COUNTERS.held_released.increment(1);
        }
    }

    /// Writes `item` to a full channel once it has room; returns false when
    /// the hold limit passed first (the item is then dropped and counted).
    async fn hand_over(
        &self,
        tenant: &str,
        session: SessionId,
        tx: mpsc::Sender<ToConnection>,
        item: ToConnection,
        until: tokio::time::Instant,
    ) -> bool {
        match tokio::time::timeout_at(until, tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(item);
                true
            }
            // The connection is gone: as for any connection lost with
            // messages on their way (QoS 1 and 2 stay in the session).
            Ok(Err(_)) => {
                self.drop_behind(item);
                true
            }
            Err(_) => {
                self.mark_stalled(tenant, session);
                self.drop_behind(item);
                false
            }
        }
    }

    fn drop_behind(&self, item: ToConnection) {
        if let ToConnection::Deliver(_) = item {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            COUNTERS.dropped_connection_behind.increment(1);
        }
    }

    fn mark_stalled(&self, tenant: &str, session: SessionId) {
        let mut tenants = self.lock();
        if let Some(e) = tenants
            .get_mut(tenant)
            .and_then(|b| b.sessions.get_mut(&session))
        {
            e.stalled = true;
        }
    }

    /// Offers a held message to its session again; with `force` (the hold
    /// limit passed) it is delivered even into a full queue, whose oldest
    /// message is then dropped and counted.
    fn retry(&self, tenant: &str, wait: &QueueWait, force: bool) -> Retry {
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return Retry::Done(None);
        };
        let Some(entry) = broker.sessions.get_mut(&wait.session) else {
            return Retry::Done(None);
        };
        let hold = !force && entry.holds();
        if hold {
            // Its turn comes when the queue has room for everyone ahead of
            // it in the line, and for it.
            let room = entry
                .session
                .max_queued()
                .saturating_sub(entry.session.queued());
            let mut line = entry.line();
            match line.position(wait.in_line.ticket) {
                Some(at) if at < room => line.leave(wait.in_line.ticket),
                _ => return Retry::Full,
            }
        } else {
            entry.line().leave(wait.in_line.ticket);
        }
        let out = counted(&mut entry.session, |s| {
            s.deliver(&wait.message, wait.qos, &wait.subscription_ids, now)
        });
        let Some(out) = out else {
            return Retry::Done(None);
        };
        let held = send(entry, out, &self.dropped, hold);
        let retried = match (held, &entry.tx) {
            (Some(item), Some(tx)) => Retry::Done(Some((tx.clone(), item))),
            _ => Retry::Done(None),
        };
        // A persistent session's new message goes to the store like any
        // other; the publisher waits for it before its acknowledgement.
        self.flush(tenant, broker, Some(wait.session));
        retried
    }

    fn with_session<T: Default>(
        &self,
        tenant: &str,
        session: SessionId,
        f: impl FnOnce(&mut Session, Millis) -> T,
    ) -> T {
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return T::default();
        };
        let out = broker
            .sessions
            .get_mut(&session)
            .map(|e| {
                let queued = e.session.queued();
                let out = counted(&mut e.session, |s| f(s, now));
                if e.session.queued() < queued {
                    e.wake_line();
                }
                out
            })
            .unwrap_or_default();
        self.flush(tenant, broker, Some(session));
        out
    }

    /// Records the PUBACK; returns queued messages that now fit the window.
    pub fn puback(&self, tenant: &str, session: SessionId, packet_id: u16) -> Vec<Outgoing> {
        self.with_session(tenant, session, |s, now| s.on_puback(packet_id, now))
    }

    /// Records a PUBREC (QoS 2 towards the client).
    pub fn pubrec(
        &self,
        tenant: &str,
        session: SessionId,
        packet_id: u16,
        accepted: bool,
    ) -> PubRec {
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return PubRec::Unknown;
        };
        let out = broker
            .sessions
            .get_mut(&session)
            .map(|e| {
                let queued = e.session.queued();
                let out = counted(&mut e.session, |s| s.on_pubrec(packet_id, accepted, now));
                if e.session.queued() < queued {
                    e.wake_line();
                }
                out
            })
            .unwrap_or(PubRec::Unknown);
        self.flush(tenant, broker, Some(session));
        out
    }

    /// Records a PUBCOMP; returns queued messages that now fit the window.
    pub fn pubcomp(&self, tenant: &str, session: SessionId, packet_id: u16) -> Vec<Outgoing> {
        self.with_session(tenant, session, |s, now| s.on_pubcomp(packet_id, now))
    }

    /// An inbound QoS 2 PUBLISH: new, a duplicate, or over Onramp's Receive Maximum.
    pub fn incoming_qos2(
        &self,
        tenant: &str,
        session: SessionId,
        packet_id: u16,
        receive_max: usize,
    ) -> Incoming {
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return Incoming::OverQuota;
        };
        let out = broker
            .sessions
            .get_mut(&session)
            .map(|e| e.session.on_incoming_qos2(packet_id, receive_max))
            .unwrap_or(Incoming::OverQuota);
        self.flush(tenant, broker, Some(session));
        out
    }

    /// A PUBREL; returns whether the packet id was awaiting it.
    pub fn pubrel(&self, tenant: &str, session: SessionId, packet_id: u16) -> bool {
        self.with_session(tenant, session, |s, _| s.on_pubrel(packet_id))
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
        let now = self.now();
        let tenants = self.lock();
        tenants
            .get(tenant)
            .map(|b| {
                b.retained
                    .matching(now, |t| onramp_domain::topic::filter_matches(filter, t))
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
                e.wake_line();
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
                    e.wake_line();
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
        options: SubOptions,
    ) -> usize {
        let now = self.now();
        let mut tenants = self.lock();
        let Some(broker) = tenants.get_mut(tenant) else {
            return 0;
        };
        let messages = broker
            .retained
            .matching(now, |t| onramp_domain::topic::filter_matches(filter, t));
        let Some(entry) = broker.sessions.get_mut(&session) else {
            return 0;
        };
        let ids: Vec<u32> = options.id.into_iter().collect();
        let mut n = 0;
        for m in messages {
            if !(entry.receive)(&m.topic) {
                continue;
            }
            n += 1;
            let out = counted(&mut entry.session, |s| {
                s.deliver(&m, options.qos, &ids, now)
            });
            if let Some(out) = out {
                send(entry, out, &self.dropped, false);
            }
        }
        self.flush(tenant, broker, Some(session));
        n
    }

    /// Publishes the wills whose Will Delay has passed and discards the
    /// persistent sessions that expired, then forgets expired retained
    /// messages. Cheap when nothing is due. Returns the wills published,
    /// by tenant, so that retained ones can be persisted.
    pub fn sweep_expired(&self) -> Vec<(String, Message)> {
        let now = self.now();
        if self.next_deadline.load(Ordering::Relaxed) > now {
            return Vec::new();
        }
        self.next_deadline.store(u64::MAX, Ordering::Relaxed);
        let mut tenants = self.lock();
        let mut wills = Vec::new();
        let mut next = u64::MAX;
        for (tenant, broker) in tenants.iter_mut() {
            let mut ended = Vec::new();
            let mut due = Vec::new();
            for (id, e) in broker.sessions.iter_mut() {
                if e.tx.is_some() {
                    continue;
                }
                let d = e.session.poll(now);
                due.extend(d.will);
                if d.ended {
                    ended.push(*id);
                } else if let Some(at) = e.session.next_deadline() {
                    next = next.min(at);
                }
            }
            for id in ended {
                broker.drop_session(id);
            }
            for w in due {
                if w.retain {
                    broker.retained.set(&w);
                }
                broker.publish(&w, None, now, &self.dropped, None);
                wills.push((tenant.clone(), w));
            }
            self.flush(tenant, broker, None);
            broker.retained.purge_expired(now);
        }
        self.next_deadline.fetch_min(next, Ordering::Relaxed);
        wills
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

/// The version after `previous` with the wall clock at `clock`: one more,
/// or the clock if it is ahead.
fn next_version(previous: u64, clock: u64) -> u64 {
    previous.saturating_add(1).max(clock)
}

/// Runs `f` on a session and counts the messages it found expired or too
/// large for the client meanwhile (`onramp_mqtt_messages_undeliverable_total`)
/// and those its full queue dropped (`onramp_mqtt_messages_dropped_total`).
fn counted<T>(session: &mut Session, f: impl FnOnce(&mut Session) -> T) -> T {
    let (expired, oversized, queue_full, session_full) = (
        session.expired(),
        session.oversized(),
        session.dropped(),
        session.dropped_stored(),
    );
    let out = f(session);
    let expired = session.expired() - expired;
    let oversized = session.oversized() - oversized;
    let queue_full = session.dropped() - queue_full;
    let session_full = session.dropped_stored() - session_full;
    if session_full > 0 {
        metrics::counter!("onramp_mqtt_messages_dropped_total", "reason" => "session_full")
            .increment(session_full);
    }
    if queue_full > 0 {
        COUNTERS.dropped_queue_full.increment(queue_full);
    }
    if expired > 0 {
        COUNTERS.undeliverable_expired.increment(expired);
    }
    if oversized > 0 {
        COUNTERS.undeliverable_too_large.increment(oversized);
    }
    out
}

/// Hands a delivery to the session's connection. When its channel is full,
/// the delivery is returned if `hold` (for the publisher to wait on);
/// otherwise it is dropped and counted: QoS 1 and 2 stay in the session's
/// in-flight window and are sent again when the client reconnects.
fn send(
    entry: &mut SessionEntry,
    out: Outgoing,
    dropped: &AtomicU64,
    hold: bool,
) -> Option<ToConnection> {
    let tx = entry.tx.as_ref()?;
    match tx.try_send(ToConnection::Deliver(Box::new(out))) {
        Ok(()) => None,
        Err(TrySendError::Full(item)) if hold => Some(item),
        Err(_) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            COUNTERS.dropped_connection_behind.increment(1);
            None
        }
    }
}

/// How long a publisher is held by default for a connection that is behind.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_broker::QoS;

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
            ClientLimits::default(),
            exclusive,
        )?;
        Some((a, rx))
    }

    fn attach(hub: &Hub, client: &str, clean: bool) -> (Attached, mpsc::Receiver<ToConnection>) {
        attach_as(hub, client, client, clean, false).expect("the owner may take its client id")
    }

    #[test]
    fn presence_versions_grow_per_client_id_and_nothing_stays_per_ended_id() {
        let hub = Hub::new(SessionLimits::default());
        let mut last = 0;
        for i in 0..1000 {
            let client = format!("churn-{i}");
            let connection = hub.next_connection_id();
            let (tx, _rx) = mpsc::channel(1);
            let a = hub
                .attach(
                    "t",
                    &client,
                    &client,
                    "s",
                    true,
                    connection,
                    tx,
                    Arc::new(|_| true),
                    ClientLimits::default(),
                    false,
                )
                .expect("attached");
            assert!(
                a.presence_version > last,
                "{} after {last}",
                a.presence_version
            );
            last = a.presence_version;
            hub.detach("t", a.session, connection, None, None);
        }
        let tenants = hub.lock();
        let broker = &tenants["t"];
        assert!(broker.sessions.is_empty());
        assert!(broker.by_client.is_empty());
    }

    /// Everything handed to the journal so far.
    fn journal(hub: &Hub) -> Vec<SessionWrite> {
        let mut rx = hub.journal.rx.lock().unwrap();
        let rx = rx.as_mut().expect("no writer took the journal");
        let mut out = Vec::new();
        while let Ok((w, _)) = rx.try_recv() {
            out.extend(w);
        }
        out
    }

    #[test]
    fn only_persistent_sessions_write_and_they_write_what_they_hold() {
        let hub = Hub::new(SessionLimits::default());
        let (clean, _rx) = attach(&hub, "clean", true);
        hub.subscribe(
            "t",
            clean.session,
            "x",
            "x",
            None,
            QoS::AtLeastOnce.into(),
            10,
        );
        for _ in 0..10 {
            let (_, written) =
                hub.publish_durable("t", &Message::new("x", "m", QoS::AtLeastOnce, false), None);
            assert_eq!(written, None);
        }
        hub.puback("t", clean.session, 1);
        assert_eq!(hub.last_write(), 0, "a clean session writes nothing");

        let (tx, _rx2) = mpsc::channel(16);
        let conn = hub.next_connection_id();
        let p = hub
            .attach(
                "t",
                "keep",
                "keep",
                "s",
                false,
                conn,
                tx,
                Arc::new(|_| true),
                ClientLimits::default(),
                false,
            )
            .expect("attached");
        let opened = hub.set_persistence("t", p.session, conn, Some(Duration::from_secs(60)), None);
        assert!(opened.is_some());
        hub.subscribe("t", p.session, "x", "x", None, QoS::AtLeastOnce.into(), 10);
        let (_, written) =
            hub.publish_durable("t", &Message::new("x", "m", QoS::AtLeastOnce, false), None);
        assert!(
            written > opened,
            "the delivery to the persistent session is written"
        );
        hub.detach("t", p.session, conn, Some(Duration::from_secs(60)), None);
        let writes = journal(&hub);
        let kinds: Vec<&str> = writes
            .iter()
            .map(|w| match w {
                SessionWrite::Open(_) => "open",
                SessionWrite::Closed { .. } => "closed",
                SessionWrite::Delete { .. } => "delete",
                SessionWrite::Subscribe { .. } => "subscribe",
                SessionWrite::Unsubscribe { .. } => "unsubscribe",
                SessionWrite::Hold { .. } => "hold",
                SessionWrite::Released { .. } => "released",
                SessionWrite::Forget { .. } => "forget",
                SessionWrite::IncomingAdded { .. } => "in",
                SessionWrite::IncomingRemoved { .. } => "out",
            })
            .collect();
        assert_eq!(kinds, ["delete", "open", "subscribe", "hold", "closed"]);
        assert!(
            writes
                .iter()
                .all(|w| !matches!(w, SessionWrite::Hold { client_id, .. } if client_id != "keep"))
        );
        // A clean start ends it in the store too.
        let (_again, _rx3) = attach(&hub, "keep", true);
        assert!(matches!(
            journal(&hub).as_slice(),
            [SessionWrite::Delete { tenant, client_id }] if tenant == "t" && client_id == "keep"
        ));
    }

    #[test]
    fn a_presence_version_follows_the_clock_and_never_goes_back() {
        assert_eq!(next_version(5, 3), 6);
        assert_eq!(next_version(5, 100), 100);
        assert_eq!(next_version(u64::MAX, 0), u64::MAX);
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
                ClientLimits::default(),
                false,
            )
            .expect("attached");
        assert!(attach_as(&hub, "d1", "claim:c1", true, true).is_none());
        assert!(attach_as(&hub, "d1", "d2", true, false).is_none());
        assert!(rx.try_recv().is_err(), "the device was not told to close");
        // Its persistent session survives the attempts.
        assert!(
            hub.detach(
                "t",
                a.session,
                connection,
                Some(Duration::from_secs(60)),
                None
            )
            .is_some()
        );
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
        assert!(
            hub.subscribe(
                "t",
                a.session,
                "a/#",
                "a/#",
                None,
                QoS::AtMostOnce.into(),
                2
            )
            .is_some()
        );
        assert!(
            hub.subscribe(
                "t",
                a.session,
                "a/#",
                "a/#",
                None,
                QoS::AtLeastOnce.into(),
                2
            )
            .is_some(),
            "a repeat replaces"
        );
        assert!(
            hub.subscribe("t", a.session, "b", "b", None, QoS::AtMostOnce.into(), 2)
                .is_some()
        );
        assert!(
            hub.subscribe("t", a.session, "c", "c", None, QoS::AtMostOnce.into(), 2)
                .is_none()
        );
        // A resumed persistent session still holds its two.
        let (b, _rx2) = attach(&hub, "c", false);
        assert!(b.session_present);
        assert!(
            hub.subscribe("t", b.session, "c", "c", None, QoS::AtMostOnce.into(), 2)
                .is_none()
        );
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
                ClientLimits::default(),
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
                ClientLimits::default(),
                false,
            )
            .map(|a| a.session)
            .expect("attached");
        hub.subscribe("t", s1, "x", "x", None, QoS::AtMostOnce.into(), 10);
        hub.subscribe("t", s2, "x", "x", None, QoS::AtMostOnce.into(), 10);
        assert_eq!(
            hub.publish("t", &Message::new("x", "hi", QoS::AtMostOnce, false), None),
            1
        );
        assert!(rx1.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        // Another tenant's broker sees nothing.
        assert_eq!(
            hub.publish(
                "other",
                &Message::new("x", "hi", QoS::AtMostOnce, false),
                None
            ),
            0
        );
    }

    fn delivered(rx: &mut mpsc::Receiver<ToConnection>) -> Vec<Outgoing> {
        let mut v = Vec::new();
        while let Ok(ToConnection::Deliver(o)) = rx.try_recv() {
            v.push(*o);
        }
        v
    }

    #[test]
    fn subscription_options_shape_each_delivery() {
        let hub = Hub::new(SessionLimits::default());
        let (a, mut rx_a) = attach(&hub, "a", true);
        let (b, mut rx_b) = attach(&hub, "b", true);
        let opts = |no_local, rap, id| SubOptions {
            qos: QoS::ExactlyOnce,
            no_local,
            retain_as_published: rap,
            id,
        };
        hub.subscribe(
            "t",
            a.session,
            "x",
            "x",
            None,
            opts(true, true, Some(9)),
            10,
        );
        hub.subscribe("t", b.session, "x", "x", None, opts(false, false, None), 10);
        let m = Message::new("x", "hi", QoS::ExactlyOnce, true);
        assert_eq!(hub.publish("t", &m, Some(a.session)), 1, "No Local");
        assert!(delivered(&mut rx_a).is_empty());
        let at_b = delivered(&mut rx_b);
        assert_eq!(at_b.len(), 1);
        assert!(
            !at_b[0].message.retain,
            "RETAIN cleared without Retain As Published"
        );
        assert_eq!(at_b[0].message.qos, QoS::ExactlyOnce);
        assert_eq!(hub.publish("t", &m, Some(b.session)), 2);
        let at_a = delivered(&mut rx_a);
        assert!(at_a[0].message.retain, "Retain As Published");
        assert_eq!(at_a[0].subscription_ids, [9]);
    }

    /// A subscriber on `x` with an outgoing channel of `capacity`, and a
    /// publisher, on a hub that holds publishers up to `hold`.
    fn held_pair(
        limits: SessionLimits,
        hold: Duration,
        capacity: usize,
        qos: QoS,
    ) -> (Arc<Hub>, SessionId, SessionId, mpsc::Receiver<ToConnection>) {
        let hub = Arc::new(Hub::with_hold(limits, hold));
        let (tx, rx) = mpsc::channel(capacity);
        let sub = hub
            .attach(
                "t",
                "sub",
                "sub",
                "s",
                true,
                hub.next_connection_id(),
                tx,
                Arc::new(|_| true),
                ClientLimits::default(),
                false,
            )
            .expect("attached")
            .session;
        hub.subscribe("t", sub, "x", "x", None, qos.into(), 10);
        let (publisher, _rx) = attach(&hub, "pub", true);
        (hub, sub, publisher.session, rx)
    }

    fn msg(n: u32, qos: QoS) -> Message {
        Message::new("x", format!("{n}"), qos, false)
    }

    #[tokio::test]
    async fn a_publisher_is_held_until_a_full_connection_has_room_and_nothing_is_dropped() {
        let (hub, _, publisher, mut rx) = held_pair(
            SessionLimits::default(),
            Duration::from_secs(10),
            1,
            QoS::AtMostOnce,
        );
        let (n, backlog, _) = hub.publish_held("t", &msg(1, QoS::AtMostOnce), publisher);
        assert!(n == 1 && backlog.is_empty());
        let (_, backlog, _) = hub.publish_held("t", &msg(2, QoS::AtMostOnce), publisher);
        assert!(
            !backlog.is_empty(),
            "the channel is full: the publisher waits"
        );
        let settling = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.settle("t", backlog).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !settling.is_finished(),
            "held while the connection is behind"
        );
        assert_eq!(payloads(&delivered(&mut rx)), ["1"]);
        tokio::time::timeout(Duration::from_secs(5), settling)
            .await
            .expect("released once the connection took a message")
            .expect("settled");
        assert_eq!(payloads(&delivered(&mut rx)), ["2"]);
        assert_eq!(hub.dropped(), 0);
    }

    #[tokio::test]
    async fn past_the_hold_limit_the_drop_policy_applies_and_a_stalled_connection_holds_no_one() {
        let (hub, _, publisher, mut rx) = held_pair(
            SessionLimits::default(),
            Duration::from_millis(100),
            1,
            QoS::AtMostOnce,
        );
        hub.publish_held("t", &msg(1, QoS::AtMostOnce), publisher);
        let (_, backlog, _) = hub.publish_held("t", &msg(2, QoS::AtMostOnce), publisher);
        let started = Instant::now();
        hub.settle("t", backlog).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(hub.dropped(), 1, "dropped and counted after the hold");
        // The connection stalled: the next message is dropped at once.
        let (_, backlog, _) = hub.publish_held("t", &msg(3, QoS::AtMostOnce), publisher);
        assert!(backlog.is_empty());
        assert_eq!(hub.dropped(), 2);
        // Once it has caught up, publishers are held for it again.
        assert_eq!(payloads(&delivered(&mut rx)), ["1"]);
        hub.publish_held("t", &msg(4, QoS::AtMostOnce), publisher);
        let (_, backlog, _) = hub.publish_held("t", &msg(5, QoS::AtMostOnce), publisher);
        assert!(!backlog.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_publisher_instead_of_dropping_an_acknowledged_message() {
        let limits = SessionLimits {
            max_inflight: 1,
            max_queued: 1,
            ..SessionLimits::default()
        };
        let (hub, sub, publisher, mut rx) =
            held_pair(limits, Duration::from_secs(10), 16, QoS::AtLeastOnce);
        for n in 1..=2 {
            let (_, backlog, _) = hub.publish_held("t", &msg(n, QoS::AtLeastOnce), publisher);
            assert!(backlog.is_empty(), "in flight, then queued");
        }
        let (_, backlog, _) = hub.publish_held("t", &msg(3, QoS::AtLeastOnce), publisher);
        assert!(!backlog.is_empty(), "the queue is full");
        let settling = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.settle("t", backlog).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!settling.is_finished());
        let first = delivered(&mut rx);
        assert_eq!(payloads(&first), ["1"]);
        let more = hub.puback("t", sub, first[0].packet_id.expect("QoS 1"));
        assert_eq!(payloads(&more), ["2"], "the queue moves into the window");
        tokio::time::timeout(Duration::from_secs(5), settling)
            .await
            .expect("released once the queue had room")
            .expect("settled");
        let more = hub.puback("t", sub, more[0].packet_id.expect("QoS 1"));
        assert_eq!(
            payloads(&more),
            ["3"],
            "the held message was queued, not lost"
        );
        let tenants = hub.lock();
        assert_eq!(tenants["t"].sessions[&sub].session.dropped(), 0);
    }

    #[tokio::test]
    async fn room_in_a_queue_goes_to_the_publishers_in_line_not_to_a_newcomer() {
        let limits = SessionLimits {
            max_inflight: 1,
            max_queued: 1,
            ..SessionLimits::default()
        };
        let (hub, sub, publisher, mut rx) =
            held_pair(limits, Duration::from_secs(10), 16, QoS::AtLeastOnce);
        for n in 1..=2 {
            hub.publish_held("t", &msg(n, QoS::AtLeastOnce), publisher);
        }
        let (_, first, _) = hub.publish_held("t", &msg(3, QoS::AtLeastOnce), publisher);
        let in_line = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.settle("t", first).await })
        };
        tokio::task::yield_now().await;
        let one = delivered(&mut rx);
        let two = hub.puback("t", sub, one[0].packet_id.expect("QoS 1"));
        assert_eq!(payloads(&two), ["2"]);
        // The queue has room now, but a publisher is in line for it.
        let (_, newcomer, _) = hub.publish_held("t", &msg(4, QoS::AtLeastOnce), publisher);
        assert!(!newcomer.is_empty(), "the newcomer waits behind the line");
        tokio::time::timeout(Duration::from_secs(5), in_line)
            .await
            .expect("the first in line got the room")
            .expect("settled");
        let behind = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.settle("t", newcomer).await })
        };
        let three = hub.puback("t", sub, two[0].packet_id.expect("QoS 1"));
        assert_eq!(payloads(&three), ["3"], "in the order the publishers came");
        tokio::time::timeout(Duration::from_secs(5), behind)
            .await
            .expect("then the newcomer")
            .expect("settled");
        let four = hub.puback("t", sub, three[0].packet_id.expect("QoS 1"));
        assert_eq!(payloads(&four), ["4"]);
        assert_eq!(hub.dropped(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_that_goes_away_releases_its_held_publishers() {
        let limits = SessionLimits {
            max_inflight: 1,
            max_queued: 1,
            ..SessionLimits::default()
        };
        let (hub, sub, publisher, _rx) =
            held_pair(limits, Duration::from_secs(30), 16, QoS::AtLeastOnce);
        for n in 1..=2 {
            hub.publish_held("t", &msg(n, QoS::AtLeastOnce), publisher);
        }
        let (_, backlog, _) = hub.publish_held("t", &msg(3, QoS::AtLeastOnce), publisher);
        let settling = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.settle("t", backlog).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let connection = hub.lock()["t"].sessions[&sub].connection;
        hub.detach("t", sub, connection, Some(Duration::from_secs(60)), None);
        tokio::time::timeout(Duration::from_secs(5), settling)
            .await
            .expect("a held publisher is let go when its subscriber leaves")
            .expect("settled");
    }

    fn payloads(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| String::from_utf8_lossy(&o.message.payload).to_string())
            .collect()
    }

    #[test]
    fn a_delayed_will_waits_in_the_hub_and_a_reconnect_cancels_it() {
        let hub = Hub::new(SessionLimits::default());
        let (w, mut rx_w) = attach(&hub, "watcher", true);
        hub.subscribe(
            "t",
            w.session,
            "will",
            "will",
            None,
            QoS::AtLeastOnce.into(),
            10,
        );
        let (tx, _rx) = mpsc::channel(16);
        let conn = hub.next_connection_id();
        let a = hub
            .attach(
                "t",
                "dev",
                "dev",
                "s",
                true,
                conn,
                tx,
                Arc::new(|_| true),
                ClientLimits::default(),
                false,
            )
            .expect("attached");
        let will = Message::new("will", "gone", QoS::AtLeastOnce, false);
        let due = hub.detach(
            "t",
            a.session,
            conn,
            Some(Duration::from_secs(60)),
            Some((will.clone(), 30)),
        );
        assert_eq!(due, Some(None), "a delayed will is not due at once");
        assert!(hub.sweep_expired().is_empty());
        let (back, _rx2) = attach(&hub, "dev", false);
        assert!(back.session_present);
        assert!(back.wills.is_empty(), "the reconnect cancels the will");
        assert!(delivered(&mut rx_w).is_empty());
        // Without a delay the will is due at once.
        let (tx, _rx3) = mpsc::channel(16);
        let conn = hub.next_connection_id();
        let c = hub
            .attach(
                "t",
                "dev2",
                "dev2",
                "s",
                true,
                conn,
                tx,
                Arc::new(|_| true),
                ClientLimits::default(),
                false,
            )
            .expect("attached");
        let due = hub.detach("t", c.session, conn, None, Some((will.clone(), 30)));
        assert_eq!(
            due,
            Some(Some(will)),
            "the session ends now, so the will is due"
        );
    }
}
