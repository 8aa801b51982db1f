//! One client's session: the QoS 1 and QoS 2 in-flight state in both
//! directions, the offline queue, redelivery after reconnect, message
//! expiry, and what happens while the client is away (the Will Delay and
//! session expiry). Time is the caller's: every method that needs it takes
//! `now`, so tests run on a simulated clock.

use crate::size::publish_packet_size;
use crate::{Message, Millis, QoS};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Unacknowledged QoS 1 and 2 messages towards the client (AWS: 100).
    pub max_inflight: usize,
    /// QoS 1 and 2 messages held while the window is full or the client is away.
    pub max_queued: usize,
    /// Messages (in flight and queued) a stored (persistent) session holds
    /// at most; beyond it the oldest queued one is dropped.
    pub max_stored: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 100,
            max_queued: 1000,
            max_stored: 1000,
        }
    }
}

/// What the connected client accepts, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// MQTT 5 Receive Maximum (65 535 when absent, and for MQTT 3.1.1).
    pub receive_max: u16,
    /// MQTT 5 Maximum Packet Size; nothing larger is ever sent.
    pub max_packet_size: Option<u32>,
    /// The client speaks MQTT 5 (PUBLISH carries properties).
    pub v5: bool,
    /// Onramp may add a Topic Alias to what it sends.
    pub topic_aliases: bool,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            receive_max: u16::MAX,
            max_packet_size: None,
            v5: false,
            topic_aliases: false,
        }
    }
}

/// A PUBLISH to write to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The message at its delivery QoS, with the RETAIN flag to send.
    pub message: Message,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// Set when this is a redelivery of an unacknowledged message.
    pub dup: bool,
    /// Identifiers of the subscriptions that matched.
    pub subscription_ids: Vec<u32>,
    /// The Message Expiry Interval left when it was handed out.
    pub expiry_secs: Option<u32>,
}

/// A packet the session asks to send on a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Publish(Outgoing),
    /// PUBREL for a QoS 2 message the client has already received.
    Release(u16),
}

/// The answer to a PUBREC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubRec {
    /// Send PUBREL for this packet id.
    Release,
    /// The client refused the message (reason ≥ 0x80): it is done; these
    /// queued messages now fit the window.
    Done(Vec<Outgoing>),
    /// No QoS 2 message awaits this id: PUBREL with reason 0x92.
    Unknown,
}

/// What an inbound QoS 2 PUBLISH is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// First time: route it, then PUBREC.
    New,
    /// Already received and not yet released: PUBREC only, do not route again.
    Duplicate,
    /// The client exceeded Onramp's Receive Maximum (DISCONNECT 0x93).
    OverQuota,
}

/// What happened while the client was away, found by [`Session::poll`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Departure {
    /// The Will Message is due now.
    pub will: Option<Message>,
    /// The session expired: discard it.
    pub ended: bool,
}

/// A reconnect found the session expired; its will, if still pending, is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub will: Option<Message>,
}

/// A reconnect picked the session up: what to send again, and a will that
/// fell due before the reconnect and so must still go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub resend: Vec<Transmit>,
    pub will: Option<Message>,
}

/// A message a stored session holds for its client, numbered in the order
/// it was accepted (`seq`): queued (`packet_id` None) or in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    pub seq: u64,
    pub packet_id: Option<u16>,
    /// QoS 2: the client's PUBREC came and PUBREL went; only the packet id
    /// still matters (the message itself is the client's now).
    pub released: bool,
    pub message: Message,
    pub subscription_ids: Vec<u32>,
}

/// A change to what a stored session holds, reported by the session for
/// its caller to write durably. Only a session asked to
/// [`Session::track`] reports changes; a clean session never does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A message held for the client, new or now in flight (replaces the
    /// same `seq`).
    Hold(HeldMessage),
    /// The QoS 2 message `seq` was received by the client: PUBREL is owed.
    Released { seq: u64 },
    /// The message `seq` is done (acknowledged, expired or dropped).
    Forget { seq: u64 },
    /// An inbound QoS 2 packet id was received and PUBREC is to be sent.
    IncomingAdded(u16),
    /// The client released an inbound QoS 2 packet id.
    IncomingRemoved(u16),
}

/// A stored session as loaded after a restart: everything it held, and
/// when its will falls due and it expires, on the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImage {
    pub messages: Vec<HeldMessage>,
    pub incoming: Vec<u16>,
    pub will: Option<(Message, Millis)>,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    seq: u64,
    message: Message,
    subscription_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inflight {
    /// Sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Unacked(Pending),
    /// QoS 2: PUBREL sent, awaiting PUBCOMP (with the message's `seq`).
    Released(u64),
}

#[derive(Debug, Clone)]
struct Away {
    /// The Will Message and when it is due.
    will: Option<(Message, Millis)>,
    expires_at: Millis,
}

#[derive(Debug)]
pub struct Session {
    limits: SessionLimits,
    client: ClientLimits,
    connected: bool,
    inflight: BTreeMap<u16, Inflight>,
    queue: VecDeque<Pending>,
    /// Inbound QoS 2 packet ids received (PUBREC sent) and not yet released.
    incoming: BTreeSet<u16>,
    next_packet_id: u16,
    dropped: u64,
    expired: u64,
    oversized: u64,
    /// Messages dropped because a stored session held `max_stored`.
    dropped_stored: u64,
    away: Option<Away>,
    /// Report changes for durable storage (a persistent session).
    tracked: bool,
    changes: Vec<SessionChange>,
    next_seq: u64,
}

impl Session {
    pub fn new(limits: SessionLimits) -> Session {
        Session {
            limits,
            client: ClientLimits::default(),
            connected: true,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            incoming: BTreeSet::new(),
            next_packet_id: 1,
            dropped: 0,
            expired: 0,
            oversized: 0,
            dropped_stored: 0,
            away: None,
            tracked: false,
            changes: Vec::new(),
            next_seq: 1,
        }
    }

    /// A stored session brought back after a restart: away, holding what
    /// it held, its will and expiry as the image says; it keeps reporting
    /// changes.
    pub fn restore(limits: SessionLimits, image: SessionImage) -> Session {
        let mut s = Session::new(limits);
        s.connected = false;
        s.tracked = true;
        let mut messages = image.messages;
        messages.sort_by_key(|m| m.seq);
        let mut last_id = 0;
        for h in messages {
            s.next_seq = s.next_seq.max(h.seq.saturating_add(1));
            let pending = Pending {
                seq: h.seq,
                message: h.message,
                subscription_ids: h.subscription_ids,
            };
            match h.packet_id {
                Some(id) if id != 0 => {
                    last_id = id;
                    let state = if h.released {
                        Inflight::Released(h.seq)
                    } else {
                        Inflight::Unacked(pending)
                    };
                    s.inflight.insert(id, state);
                }
                _ => s.queue.push_back(pending),
            }
        }
        s.next_packet_id = if last_id == u16::MAX { 1 } else { last_id + 1 };
        s.incoming = image.incoming.into_iter().collect();
        s.away = Some(Away {
            will: image.will,
            expires_at: image.expires_at,
        });
        s
    }

    /// From now on the session reports its changes (see
    /// [`Session::take_changes`]); returns everything it holds now, as the
    /// changes that write it from nothing.
    pub fn track(&mut self) -> Vec<SessionChange> {
        self.tracked = true;
        self.changes.clear();
        let mut image = Vec::new();
        for (id, state) in &self.inflight {
            match state {
                Inflight::Unacked(p) => image.push(SessionChange::Hold(held(p, Some(*id), false))),
                Inflight::Released(seq) => image.push(SessionChange::Hold(HeldMessage {
                    seq: *seq,
                    packet_id: Some(*id),
                    released: true,
                    message: Message::new("", "", QoS::ExactlyOnce, false),
                    subscription_ids: Vec::new(),
                })),
            }
        }
        for p in &self.queue {
            image.push(SessionChange::Hold(held(p, None, false)));
        }
        image.extend(
            self.incoming
                .iter()
                .map(|id| SessionChange::IncomingAdded(*id)),
        );
        image
    }

    /// Stops reporting changes (the session is no longer persistent).
    pub fn untrack(&mut self) {
        self.tracked = false;
        self.changes.clear();
    }

    pub fn is_tracked(&self) -> bool {
        self.tracked
    }

    /// Whether changes wait to be taken.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The changes since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<SessionChange> {
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, change: impl FnOnce() -> SessionChange) {
        if self.tracked {
            self.changes.push(change());
        }
    }

    /// The limits of the client now connected to this session.
    pub fn set_client(&mut self, client: ClientLimits) {
        self.client = client;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// QoS 1 and 2 messages not yet acknowledged plus those waiting.
    pub fn pending(&self) -> usize {
        self.inflight.len() + self.queue.len()
    }

    /// QoS 1 and 2 messages waiting for room in the in-flight window.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many QoS 1 and 2 messages may wait.
    pub fn max_queued(&self) -> usize {
        self.limits.max_queued
    }

    /// Whether the next QoS 1 or 2 message that has to wait would push the
    /// oldest waiting one out (see [`Session::deliver`]). A publisher feeding
    /// a connected session in this state is held back before that happens.
    pub fn queue_full(&self) -> bool {
        self.queue.len() >= self.limits.max_queued
    }

    /// Messages dropped because the queue was full (oldest first).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages dropped because a stored session held its `max_stored`.
    pub fn dropped_stored(&self) -> u64 {
        self.dropped_stored
    }

    /// Messages that expired before they could be sent.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    fn window(&self) -> usize {
        self.limits
            .max_inflight
            .min(usize::from(self.client.receive_max))
            .max(1)
    }

    fn fits(&self, message: &Message, ids: &[u32]) -> bool {
        match self.client.max_packet_size {
            None => true,
            Some(max) => {
                let size =
                    publish_packet_size(message, ids, self.client.v5, self.client.topic_aliases);
                size <= max as usize
            }
        }
    }

    /// Offers a routed message at the subscription's QoS with the matching
    /// subscriptions' identifiers. Returns what to send now, if anything;
    /// QoS 1 and 2 beyond the window wait in the queue. An expired message,
    /// or one larger than the client accepts, is dropped for this client.
    pub fn deliver(
        &mut self,
        message: &Message,
        subscription_qos: QoS,
        subscription_ids: &[u32],
        now: Millis,
    ) -> Option<Outgoing> {
        if message.is_expired(now) {
            self.expired += 1;
            return None;
        }
        let qos = message.qos.min(subscription_qos);
        let mut message = message.clone();
        message.qos = qos;
        if !self.fits(&message, subscription_ids) {
            self.oversized += 1;
            return None;
        }
        let seq = self.next_seq;
        let pending = Pending {
            seq,
            message,
            subscription_ids: subscription_ids.to_vec(),
        };
        match qos {
            QoS::AtMostOnce if self.connected => Some(outgoing(pending, None, false, now)),
            // QoS 0 is not kept for an absent client.
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                self.next_seq += 1;
                if self.connected && self.inflight.len() < self.window() && self.queue.is_empty() {
                    Some(self.send_new(pending, now))
                } else {
                    self.enqueue(pending);
                    None
                }
            }
        }
    }

    fn enqueue(&mut self, pending: Pending) {
        let mut cap = self.limits.max_queued;
        let mut stored_bound = false;
        if self.tracked {
            let room = self.limits.max_stored.saturating_sub(self.inflight.len());
            if room < cap {
                cap = room;
                stored_bound = true;
            }
        }
        let count = |s: &mut Session| {
            if stored_bound {
                s.dropped_stored += 1;
            } else {
                s.dropped += 1;
            }
        };
        while self.queue.len() >= cap {
            match self.queue.pop_front() {
                Some(old) => {
                    count(self);
                    self.record(|| SessionChange::Forget { seq: old.seq });
                }
                None => break,
            }
        }
        if cap == 0 {
            count(self);
            return;
        }
        self.record(|| SessionChange::Hold(held(&pending, None, false)));
        self.queue.push_back(pending);
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    fn send_new(&mut self, pending: Pending, now: Millis) -> Outgoing {
        let id = self.allocate_packet_id();
        let out = outgoing(pending.clone(), Some(id), false, now);
        self.record(|| SessionChange::Hold(held(&pending, Some(id), false)));
        self.inflight.insert(id, Inflight::Unacked(pending));
        out
    }

    /// PUBACK for a QoS 1 message; returns queued messages that now fit.
    pub fn on_puback(&mut self, packet_id: u16, now: Millis) -> Vec<Outgoing> {
        match self.inflight.get(&packet_id) {
            Some(Inflight::Unacked(p)) if p.message.qos == QoS::AtLeastOnce => {
                let seq = p.seq;
                self.inflight.remove(&packet_id);
                self.record(|| SessionChange::Forget { seq });
                self.fill_window(now)
            }
            _ => Vec::new(),
        }
    }

    /// PUBREC for a QoS 2 message; `accepted` is false for a reason code ≥ 0x80.
    pub fn on_pubrec(&mut self, packet_id: u16, accepted: bool, now: Millis) -> PubRec {
        match self.inflight.get(&packet_id) {
            Some(Inflight::Unacked(p)) if p.message.qos == QoS::ExactlyOnce => {
                let seq = p.seq;
                if accepted {
                    self.inflight.insert(packet_id, Inflight::Released(seq));
                    self.record(|| SessionChange::Released { seq });
                    PubRec::Release
                } else {
                    self.inflight.remove(&packet_id);
                    self.record(|| SessionChange::Forget { seq });
                    PubRec::Done(self.fill_window(now))
                }
            }
            // A repeated PUBREC is answered again.
            Some(Inflight::Released(_)) => PubRec::Release,
            _ => PubRec::Unknown,
        }
    }

    /// PUBCOMP ends a QoS 2 delivery; returns queued messages that now fit.
    pub fn on_pubcomp(&mut self, packet_id: u16, now: Millis) -> Vec<Outgoing> {
        match self.inflight.get(&packet_id) {
            Some(Inflight::Released(seq)) => {
                let seq = *seq;
                self.inflight.remove(&packet_id);
                self.record(|| SessionChange::Forget { seq });
                self.fill_window(now)
            }
            _ => Vec::new(),
        }
    }

    /// An inbound QoS 2 PUBLISH with `packet_id`. `receive_max` is the
    /// Receive Maximum Onramp announced: that many may await PUBREL.
    pub fn on_incoming_qos2(&mut self, packet_id: u16, receive_max: usize) -> Incoming {
        if self.incoming.contains(&packet_id) {
            return Incoming::Duplicate;
        }
        if self.incoming.len() >= receive_max {
            return Incoming::OverQuota;
        }
        self.incoming.insert(packet_id);
        self.record(|| SessionChange::IncomingAdded(packet_id));
        Incoming::New
    }

    /// PUBREL from the client: the id may be used for a new message again.
    /// Returns whether it was known (PUBCOMP 0 or 0x92).
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        let found = self.incoming.remove(&packet_id);
        if found {
            self.record(|| SessionChange::IncomingRemoved(packet_id));
        }
        found
    }

    /// Inbound QoS 2 messages awaiting PUBREL.
    pub fn incoming(&self) -> usize {
        self.incoming.len()
    }

    fn fill_window(&mut self, now: Millis) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while self.connected && self.inflight.len() < self.window() {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            if p.message.is_expired(now) {
                self.expired += 1;
                self.record(|| SessionChange::Forget { seq: p.seq });
                continue;
            }
            if !self.fits(&p.message, &p.subscription_ids) {
                self.oversized += 1;
                self.record(|| SessionChange::Forget { seq: p.seq });
                continue;
            }
            out.push(self.send_new(p, now));
        }
        out
    }

    /// The connection ended at `now`. `keep` is how long the session
    /// outlives it (`None` or 0: it ends now). `will` is the Will Message
    /// to publish with its Will Delay Interval in seconds, when the way the
    /// connection ended calls for one. Returns the will when it is due now:
    /// with no delay, or because the session ends now. Otherwise the will
    /// waits for the delay or the session's end, whichever comes first
    /// (see [`Session::poll`]), and a reconnect in time cancels it.
    pub fn on_disconnect(
        &mut self,
        now: Millis,
        keep: Option<Millis>,
        will: Option<(Message, u32)>,
    ) -> Option<Message> {
        self.connected = false;
        let keep = keep.unwrap_or(0);
        if keep == 0 {
            self.away = Some(Away {
                will: None,
                expires_at: now,
            });
            return will.map(|(m, _)| m);
        }
        let mut due = None;
        let will = match will {
            Some((m, 0)) => {
                due = Some(m);
                None
            }
            Some((m, delay)) => {
                let after = (u64::from(delay) * 1000).min(keep);
                Some((m, now.saturating_add(after)))
            }
            None => None,
        };
        self.away = Some(Away {
            will,
            expires_at: now.saturating_add(keep),
        });
        due
    }

    /// The will waiting while away, and when it is due.
    pub fn pending_will(&self) -> Option<(&Message, Millis)> {
        self.away
            .as_ref()
            .and_then(|a| a.will.as_ref())
            .map(|(m, at)| (m, *at))
    }

    /// Drops the messages held for the client (queued, or sent and not yet
    /// acknowledged) on topics `allowed` refuses; returns how many. A
    /// session restored after a restart holds what was routed to it before
    /// the owner's policies were known again.
    pub fn discard_unreceivable(&mut self, allowed: impl Fn(&str) -> bool) -> usize {
        let refused: Vec<(u16, u64)> = self
            .inflight
            .iter()
            .filter_map(|(id, state)| match state {
                Inflight::Unacked(p) if !allowed(&p.message.topic) => Some((*id, p.seq)),
                _ => None,
            })
            .collect();
        let mut n = refused.len();
        for (id, seq) in refused {
            self.inflight.remove(&id);
            self.record(|| SessionChange::Forget { seq });
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in std::mem::take(&mut self.queue) {
            if allowed(&p.message.topic) {
                kept.push_back(p);
            } else {
                n += 1;
                self.record(|| SessionChange::Forget { seq: p.seq });
            }
        }
        self.queue = kept;
        n
    }

    /// While away: a will whose time has come, and whether the session expired.
    pub fn poll(&mut self, now: Millis) -> Departure {
        let mut d = Departure::default();
        if self.connected {
            return d;
        }
        let Some(away) = self.away.as_mut() else {
            return d;
        };
        if away.will.as_ref().is_some_and(|(_, at)| *at <= now) {
            d.will = away.will.take().map(|(m, _)| m);
        }
        if away.expires_at <= now {
            d.ended = true;
            if d.will.is_none() {
                d.will = away.will.take().map(|(m, _)| m);
            }
        }
        d
    }

    /// When [`Session::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.connected {
            return None;
        }
        let away = self.away.as_ref()?;
        Some(match &away.will {
            Some((_, at)) => (*at).min(away.expires_at),
            None => away.expires_at,
        })
    }

    /// The session is discarded before it expired (a clean start replaces
    /// it): a will still waiting is due now, as the session ends.
    pub fn end(&mut self) -> Option<Message> {
        self.away
            .as_mut()
            .and_then(|a| a.will.take())
            .map(|(m, _)| m)
    }

    /// The client is back at `now`. An expired session cannot be resumed
    /// (whatever the sweep has done yet): the caller discards it and
    /// publishes the will returned. Otherwise a waiting will is cancelled
    /// and the session resends, in order: unacknowledged PUBLISHes (DUP set,
    /// same packet ids; those expired meanwhile are dropped), PUBRELs of QoS
    /// 2 messages the client has received, then the queue.
    pub fn resume(&mut self, now: Millis) -> Result<Resumed, Ended> {
        if let Some(away) = &mut self.away
            && away.expires_at <= now
        {
            return Err(Ended {
                will: away.will.take().map(|(m, _)| m),
            });
        }
        // A will whose delay ran out before this reconnect was seen is still
        // owed: the client came back too late to cancel it.
        let due_will = self
            .away
            .take()
            .and_then(|away| away.will)
            .filter(|(_, at)| *at <= now)
            .map(|(m, _)| m);
        self.connected = true;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, state) in &self.inflight {
            match state {
                Inflight::Unacked(p) if p.message.is_expired(now) => gone.push((*id, p.seq)),
                Inflight::Unacked(p) => {
                    out.push(Transmit::Publish(outgoing(p.clone(), Some(*id), true, now)));
                }
                Inflight::Released(_) => out.push(Transmit::Release(*id)),
            }
        }
        for (id, seq) in gone {
            self.inflight.remove(&id);
            self.expired += 1;
            self.record(|| SessionChange::Forget { seq });
        }
        out.extend(self.fill_window(now).into_iter().map(Transmit::Publish));
        Ok(Resumed {
            resend: out,
            will: due_will,
        })
    }
}

fn held(p: &Pending, packet_id: Option<u16>, released: bool) -> HeldMessage {
    HeldMessage {
        seq: p.seq,
        packet_id,
        released,
        message: p.message.clone(),
        subscription_ids: p.subscription_ids.clone(),
    }
}

fn outgoing(p: Pending, packet_id: Option<u16>, dup: bool, now: Millis) -> Outgoing {
    let expiry_secs = p.message.remaining_expiry_secs(now);
    Outgoing {
        message: p.message,
        packet_id,
        dup,
        subscription_ids: p.subscription_ids,
        expiry_secs,
    }
}

#[cfg(test)]
mod tests;
