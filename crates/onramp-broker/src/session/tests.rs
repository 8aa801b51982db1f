use super::*;
use proptest::prelude::*;

fn m(n: u32) -> Message {
    Message::new("t", format!("{n}"), QoS::AtLeastOnce, false)
}

fn m2(n: u32) -> Message {
    Message::new("t", format!("{n}"), QoS::ExactlyOnce, false)
}

fn payloads(out: &[Outgoing]) -> Vec<String> {
    out.iter()
        .map(|o| String::from_utf8_lossy(&o.message.payload).to_string())
        .collect()
}

fn publishes(t: &[Transmit]) -> Vec<Outgoing> {
    t.iter()
        .filter_map(|t| match t {
            Transmit::Publish(o) => Some(o.clone()),
            Transmit::Release(_) => None,
        })
        .collect()
}

const KEEP: Option<Millis> = Some(3_600_000);

#[test]
fn qos1_is_redelivered_after_reconnect_with_dup_and_the_same_packet_id() {
    let mut s = Session::new(SessionLimits::default());
    let first = s.deliver(&m(1), QoS::AtLeastOnce, &[], 0).unwrap();
    let second = s.deliver(&m(2), QoS::AtLeastOnce, &[], 0).unwrap();
    assert!(s.on_puback(first.packet_id.unwrap(), 0).is_empty());
    s.on_disconnect(0, KEEP, None);
    assert!(
        s.deliver(&m(3), QoS::AtLeastOnce, &[], 0).is_none(),
        "queued while away"
    );
    assert!(
        s.deliver(
            &Message::new("t", "q0", QoS::AtMostOnce, false),
            QoS::AtLeastOnce,
            &[],
            0
        )
        .is_none(),
        "QoS 0 is not kept"
    );
    let again = publishes(&s.resume(1).unwrap().resend);
    assert_eq!(payloads(&again), ["2", "3"]);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, second.packet_id);
    assert!(!again[1].dup);
}

#[test]
fn the_inflight_window_holds_back_and_releases_in_order() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 2,
        max_queued: 10,
        ..SessionLimits::default()
    });
    let a = s.deliver(&m(1), QoS::AtLeastOnce, &[], 0).unwrap();
    s.deliver(&m(2), QoS::AtLeastOnce, &[], 0).unwrap();
    assert!(s.deliver(&m(3), QoS::AtLeastOnce, &[], 0).is_none());
    assert!(s.deliver(&m(4), QoS::AtLeastOnce, &[], 0).is_none());
    assert_eq!(s.pending(), 4);
    let released = s.on_puback(a.packet_id.unwrap(), 0);
    assert_eq!(payloads(&released), ["3"]);
    assert!(
        s.on_puback(999, 0).is_empty(),
        "an unknown id changes nothing"
    );
}

#[test]
fn the_clients_receive_maximum_caps_the_window() {
    let mut s = Session::new(SessionLimits::default());
    s.set_client(ClientLimits {
        receive_max: 2,
        ..ClientLimits::default()
    });
    assert!(s.deliver(&m(1), QoS::AtLeastOnce, &[], 0).is_some());
    assert!(s.deliver(&m2(2), QoS::ExactlyOnce, &[], 0).is_some());
    assert!(s.deliver(&m(3), QoS::AtLeastOnce, &[], 0).is_none());
}

#[test]
fn the_queue_says_it_is_full_before_anything_would_be_dropped() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 1,
        max_queued: 2,
        ..SessionLimits::default()
    });
    let first = s.deliver(&m(1), QoS::AtLeastOnce, &[], 0).unwrap();
    assert!(!s.queue_full(), "the in-flight window is not the queue");
    s.deliver(&m(2), QoS::AtLeastOnce, &[], 0);
    assert!(!s.queue_full());
    s.deliver(&m(3), QoS::AtLeastOnce, &[], 0);
    assert!(s.queue_full());
    assert_eq!(
        (s.queued(), s.dropped()),
        (2, 0),
        "full, nothing dropped yet"
    );
    assert_eq!(
        payloads(&s.on_puback(first.packet_id.unwrap(), 0)),
        ["2"],
        "an acknowledgement makes room"
    );
    assert!(!s.queue_full());
    assert_eq!(s.queued(), 1);
}

#[test]
fn a_full_queue_drops_the_oldest_and_counts_it() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 1,
        max_queued: 2,
        ..SessionLimits::default()
    });
    s.on_disconnect(0, KEEP, None);
    for n in 1..=4 {
        s.deliver(&m(n), QoS::AtLeastOnce, &[], 0);
    }
    assert_eq!(s.dropped(), 2);
    assert_eq!(payloads(&publishes(&s.resume(0).unwrap().resend)), ["3"]);
}

#[test]
fn delivery_qos_is_the_lower_of_message_and_subscription() {
    let mut s = Session::new(SessionLimits::default());
    let out = s.deliver(&m(1), QoS::AtMostOnce, &[], 0).unwrap();
    assert_eq!(out.message.qos, QoS::AtMostOnce);
    assert_eq!(out.packet_id, None);
    let out = s.deliver(&m2(1), QoS::AtLeastOnce, &[], 0).unwrap();
    assert_eq!(out.message.qos, QoS::AtLeastOnce);
    let out = s.deliver(&m(1), QoS::ExactlyOnce, &[], 0).unwrap();
    assert_eq!(out.message.qos, QoS::AtLeastOnce);
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 3,
        max_queued: 0,
        ..SessionLimits::default()
    });
    s.next_packet_id = u16::MAX;
    let a = s.deliver(&m(1), QoS::AtLeastOnce, &[], 0).unwrap();
    let b = s.deliver(&m(2), QoS::AtLeastOnce, &[], 0).unwrap();
    assert_eq!((a.packet_id, b.packet_id), (Some(u16::MAX), Some(1)));
}

#[test]
fn qos2_outbound_runs_publish_pubrec_pubrel_pubcomp() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 1,
        max_queued: 10,
        ..SessionLimits::default()
    });
    let a = s.deliver(&m2(1), QoS::ExactlyOnce, &[], 0).unwrap();
    let id = a.packet_id.unwrap();
    assert!(s.deliver(&m2(2), QoS::ExactlyOnce, &[], 0).is_none());
    assert!(s.on_puback(id, 0).is_empty(), "a PUBACK does not end QoS 2");
    assert_eq!(s.on_pubrec(id, true, 0), PubRec::Release);
    assert_eq!(s.on_pubrec(id, true, 0), PubRec::Release, "repeated PUBREC");
    assert_eq!(s.on_pubrec(4242, true, 0), PubRec::Unknown);
    // Disconnected after PUBREL: the reconnect sends PUBREL again, not the message.
    s.on_disconnect(0, KEEP, None);
    assert_eq!(s.resume(0).unwrap().resend, [Transmit::Release(id)]);
    let next = s.on_pubcomp(id, 0);
    assert_eq!(payloads(&next), ["2"]);
    assert!(s.on_pubcomp(id, 0).is_empty());
}

#[test]
fn a_refused_pubrec_ends_the_delivery() {
    let mut s = Session::new(SessionLimits::default());
    let a = s.deliver(&m2(1), QoS::ExactlyOnce, &[], 0).unwrap();
    assert_eq!(
        s.on_pubrec(a.packet_id.unwrap(), false, 0),
        PubRec::Done(vec![])
    );
    assert_eq!(s.pending(), 0);
}

#[test]
fn inbound_qos2_suppresses_duplicates_until_pubrel_and_enforces_receive_maximum() {
    let mut s = Session::new(SessionLimits::default());
    assert_eq!(s.on_incoming_qos2(1, 2), Incoming::New);
    assert_eq!(s.on_incoming_qos2(1, 2), Incoming::Duplicate);
    assert_eq!(s.on_incoming_qos2(2, 2), Incoming::New);
    assert_eq!(s.on_incoming_qos2(3, 2), Incoming::OverQuota);
    // Kept across a reconnect of a persistent session.
    s.on_disconnect(0, KEEP, None);
    s.resume(0).unwrap();
    assert_eq!(s.on_incoming_qos2(1, 2), Incoming::Duplicate);
    assert!(s.on_pubrel(1));
    assert!(!s.on_pubrel(1));
    assert_eq!(
        s.on_incoming_qos2(1, 2),
        Incoming::New,
        "a released id is new again"
    );
}

#[test]
fn a_message_larger_than_the_client_accepts_is_dropped_for_it() {
    let mut s = Session::new(SessionLimits::default());
    s.set_client(ClientLimits {
        max_packet_size: Some(64),
        v5: true,
        ..ClientLimits::default()
    });
    let small = Message::new("t", vec![b'.'; 32], QoS::AtLeastOnce, false);
    let big = Message::new("t", vec![b'.'; 64], QoS::AtLeastOnce, false);
    assert!(s.deliver(&small, QoS::AtLeastOnce, &[], 0).is_some());
    assert!(s.deliver(&big, QoS::AtLeastOnce, &[], 0).is_none());
    assert_eq!(s.oversized(), 1);
    assert_eq!(
        s.pending(),
        1,
        "nothing waits for an acknowledgement that cannot come"
    );
}

#[test]
fn an_expired_session_cannot_be_resumed_even_before_a_sweep() {
    let mut s = Session::new(SessionLimits::default());
    s.on_disconnect(1_000, Some(5_000), None);
    assert_eq!(s.next_deadline(), Some(6_000));
    let mut t = Session::new(SessionLimits::default());
    t.on_disconnect(1_000, Some(5_000), None);
    assert!(t.resume(5_999).is_ok());
    assert!(s.resume(6_000).is_err());
}

#[test]
fn a_will_due_at_the_moment_of_reconnect_still_goes_out() {
    let mut s = Session::new(SessionLimits::default());
    assert!(
        s.on_disconnect(10_000, Some(2_000), Some((will(), 1)))
            .is_none()
    );
    // No poll ran between the will falling due and the reconnect.
    let resumed = s.resume(11_000).expect("the session has not expired");
    assert_eq!(resumed.will, Some(will()));
    let mut t = Session::new(SessionLimits::default());
    t.on_disconnect(10_000, Some(2_000), Some((will(), 1)));
    assert_eq!(t.resume(10_999).expect("alive").will, None);
    assert!(
        t.poll(20_000).will.is_none(),
        "a cancelled will stays cancelled"
    );
}

fn will() -> Message {
    Message::new("will", "gone", QoS::AtLeastOnce, false)
}

proptest! {
    /// Will Delay against session end, on a simulated clock: the will goes
    /// out exactly once, at the earlier of the delay and the session's
    /// expiry, unless the client is back before then; the session ends at
    /// its expiry.
    #[test]
    fn the_will_waits_for_the_delay_or_the_session_end(
        delay in 0u32..20,
        keep_secs in 0u64..20,
        back_after in proptest::option::of((0u64..250).prop_map(|t| t * 100)),
    ) {
        let keep = keep_secs * 1000;
        let mut s = Session::new(SessionLimits::default());
        let start = 10_000;
        let now_will = s.on_disconnect(start, Some(keep), Some((will(), delay)));
        let due_at = start + (u64::from(delay) * 1000).min(keep);
        let mut sent_at = now_will.map(|_| start);
        let mut ended_at = None;
        let mut resumed = false;
        let mut t = start;
        while t <= start + 30_000 {
            if let Some(b) = back_after && t == start + b && ended_at.is_none() {
                match s.resume(t) {
                    Ok(r) => {
                        // A will already due when the client is back still goes out.
                        if r.will.is_some() { prop_assert!(sent_at.is_none()); sent_at = Some(t); }
                        resumed = true;
                        break;
                    }
                    Err(e) => {
                        if let Some(_w) = e.will { prop_assert!(sent_at.is_none()); sent_at = Some(t); }
                        ended_at = Some(t);
                        break;
                    }
                }
            }
            let d = s.poll(t);
            if d.will.is_some() {
                prop_assert!(sent_at.is_none(), "the will went out twice");
                sent_at = Some(t);
            }
            if d.ended && ended_at.is_none() {
                ended_at = Some(t);
            }
            t += 100;
        }
        let back_in_time = back_after.is_some_and(|b| start + b < due_at);
        if back_in_time && keep > 0 && delay > 0 {
            prop_assert!(sent_at.is_none(), "a reconnect in time cancels the will");
        } else if !resumed || back_after.is_some_and(|b| start + b >= due_at) {
            // Polled every 100 ms: due exactly at due_at, seen at the first tick after.
            prop_assert!(sent_at.is_some(), "the will was never sent");
            let at = sent_at.unwrap_or(0);
            prop_assert!(at >= due_at && at < due_at + 100, "sent at {} not {}", at, due_at);
        }
        if resumed {
            prop_assert!(back_after.is_some_and(|b| b < keep), "resumed an expired session");
        } else if let Some(e) = ended_at {
            prop_assert!(e >= start + keep);
        }
    }

    /// Message expiry in the offline queue: on reconnect exactly the
    /// messages that have not expired are sent, each with what remains of
    /// its interval.
    #[test]
    fn expired_messages_are_never_delivered(
        expiries in proptest::collection::vec(proptest::option::of(1u32..10), 1..20),
        away_ms in 0u64..12_000,
    ) {
        let mut s = Session::new(SessionLimits::default());
        s.on_disconnect(0, KEEP, None);
        for (i, e) in expiries.iter().enumerate() {
            let msg = m(i as u32).with_expiry(0, *e);
            prop_assert!(s.deliver(&msg, QoS::AtLeastOnce, &[], 0).is_none());
        }
        let out = publishes(&s.resume(away_ms).unwrap().resend);
        let expected: Vec<String> = expiries.iter().enumerate()
            .filter(|(_, e)| e.is_none_or(|e| u64::from(e) * 1000 > away_ms))
            .map(|(i, _)| i.to_string())
            .collect();
        prop_assert_eq!(payloads(&out), expected);
        for o in &out {
            let i: usize = String::from_utf8_lossy(&o.message.payload).parse().unwrap_or(0);
            match expiries[i] {
                None => prop_assert_eq!(o.expiry_secs, None),
                Some(e) => {
                    let left = o.expiry_secs.unwrap_or(0);
                    prop_assert!(left >= 1 && left <= e);
                }
            }
        }
        prop_assert_eq!(s.expired() as usize, expiries.len() - out.len());
    }

    /// QoS 2 towards a client, exactly once across reconnects: a client that
    /// follows the protocol (delivers a packet id's message once, until the
    /// PUBREL releases it) sees every message exactly once and in order,
    /// however often the connection breaks.
    #[test]
    fn qos2_outbound_is_exactly_once_across_reconnects(
        steps in proptest::collection::vec(0u8..6, 1..200),
        window in 1usize..4,
    ) {
        let mut s = Session::new(SessionLimits { max_inflight: window, max_queued: 1000, ..SessionLimits::default() });
        let mut next = 0u32;
        let mut wire: VecDeque<Transmit> = VecDeque::new();
        // Client state: packet ids received and not released.
        let mut client_held: BTreeSet<u16> = BTreeSet::new();
        let mut app: Vec<u32> = Vec::new();
        // Acknowledgements in flight towards the server.
        let mut acks: VecDeque<(bool, u16)> = VecDeque::new(); // (is_pubcomp, id)
        let connected = true;
        let mut now = 0;
        for step in steps {
            now += 10;
            match step {
                0 | 1 => {
                    let msg = m2(next);
                    next += 1;
                    if let Some(o) = s.deliver(&msg, QoS::ExactlyOnce, &[], now) {
                        wire.push_back(Transmit::Publish(o));
                    }
                }
                2 | 3 if connected => {
                    // The client reads one packet.
                    if let Some(p) = wire.pop_front() {
                        match p {
                            Transmit::Publish(o) => {
                                let id = o.packet_id.unwrap_or(0);
                                if client_held.insert(id) {
                                    let n: u32 = String::from_utf8_lossy(&o.message.payload).parse().unwrap_or(u32::MAX);
                                    app.push(n);
                                }
                                acks.push_back((false, id));
                            }
                            Transmit::Release(id) => {
                                client_held.remove(&id);
                                acks.push_back((true, id));
                            }
                        }
                    }
                }
                4 if connected => {
                    // The server reads one acknowledgement.
                    if let Some((comp, id)) = acks.pop_front() {
                        if comp {
                            for o in s.on_pubcomp(id, now) { wire.push_back(Transmit::Publish(o)); }
                        } else {
                            match s.on_pubrec(id, true, now) {
                                PubRec::Release => wire.push_back(Transmit::Release(id)),
                                PubRec::Done(more) => for o in more { wire.push_back(Transmit::Publish(o)); },
                                PubRec::Unknown => {}
                            }
                        }
                    }
                }
                5 => {
                    // The connection breaks: everything in flight is lost.
                    wire.clear();
                    acks.clear();
                    s.on_disconnect(now, KEEP, None);
                    now += 10;
                    wire.extend(s.resume(now).map(|r| r.resend).unwrap_or_default());
                }
                _ => {}
            }
        }
        // Drain: the client and server exchange until quiet.
        for _ in 0..10_000 {
            if let Some(p) = wire.pop_front() {
                match p {
                    Transmit::Publish(o) => {
                        let id = o.packet_id.unwrap_or(0);
                        if client_held.insert(id) {
                            let n: u32 = String::from_utf8_lossy(&o.message.payload).parse().unwrap_or(u32::MAX);
                            app.push(n);
                        }
                        acks.push_back((false, id));
                    }
                    Transmit::Release(id) => {
                        client_held.remove(&id);
                        acks.push_back((true, id));
                    }
                }
            } else if let Some((comp, id)) = acks.pop_front() {
                if comp {
                    for o in s.on_pubcomp(id, now) { wire.push_back(Transmit::Publish(o)); }
                } else if let PubRec::Release = s.on_pubrec(id, true, now) {
                    wire.push_back(Transmit::Release(id));
                }
            } else {
                break;
            }
        }
        prop_assert_eq!(app, (0..next).collect::<Vec<_>>());
        prop_assert_eq!(s.pending(), 0);
    }

    /// QoS 2 from a client: however often a PUBLISH is repeated (DUP after
    /// a reconnect) before its PUBREL, it is routed once.
    #[test]
    fn qos2_inbound_routes_each_message_once(
        sends in proptest::collection::vec((1u16..5, any::<bool>()), 1..100),
    ) {
        let mut s = Session::new(SessionLimits::default());
        let mut routed: BTreeMap<u16, u32> = BTreeMap::new();
        let mut open: BTreeSet<u16> = BTreeSet::new();
        for (id, release) in sends {
            if release {
                prop_assert_eq!(s.on_pubrel(id), open.remove(&id));
            } else {
                match s.on_incoming_qos2(id, 100) {
                    Incoming::New => {
                        prop_assert!(open.insert(id));
                        *routed.entry(id).or_default() += 1;
                    }
                    Incoming::Duplicate => prop_assert!(open.contains(&id)),
                    Incoming::OverQuota => prop_assert!(false),
                }
            }
        }
        prop_assert_eq!(s.incoming(), open.len());
    }

    /// Session expiry is decided at the reconnect itself, on any clock:
    /// before its expiry the session resumes with what it holds, from its
    /// expiry on it cannot, whether or not anything polled it.
    #[test]
    fn session_expiry_is_checked_on_reconnect(
        keep in 1u64..100_000,
        back in 0u64..200_000,
        polled in any::<bool>(),
        queued in 0u32..5,
    ) {
        let mut s = Session::new(SessionLimits::default());
        s.on_disconnect(1_000, Some(keep), None);
        for n in 0..queued {
            s.deliver(&m(n), QoS::AtLeastOnce, &[], 1_000);
        }
        let at = 1_000 + back;
        if polled {
            let d = s.poll(at);
            prop_assert_eq!(d.ended, back >= keep);
        }
        match s.resume(at) {
            Ok(out) => {
                prop_assert!(back < keep, "resumed {} ms after leaving, expiry {} ms", back, keep);
                prop_assert_eq!(publishes(&out.resend).len(), queued as usize);
            }
            Err(_) => prop_assert!(back >= keep, "refused {} ms after leaving, expiry {} ms", back, keep),
        }
    }
}

/// What a store holds after applying a tracked session's changes.
#[derive(Default)]
struct Stored {
    messages: BTreeMap<u64, HeldMessage>,
    incoming: BTreeSet<u16>,
}

impl Stored {
    fn apply(&mut self, changes: Vec<SessionChange>) {
        for c in changes {
            match c {
                SessionChange::Hold(h) => {
                    self.messages.insert(h.seq, h);
                }
                SessionChange::Released { seq } => {
                    if let Some(h) = self.messages.get_mut(&seq) {
                        h.released = true;
                    }
                }
                SessionChange::Forget { seq } => {
                    self.messages.remove(&seq);
                }
                SessionChange::IncomingAdded(id) => {
                    self.incoming.insert(id);
                }
                SessionChange::IncomingRemoved(id) => {
                    self.incoming.remove(&id);
                }
            }
        }
    }

    fn image(&self, expires_at: Millis) -> SessionImage {
        SessionImage {
            messages: self.messages.values().cloned().collect(),
            incoming: self.incoming.iter().copied().collect(),
            will: None,
            expires_at,
        }
    }
}

#[test]
fn a_clean_session_reports_no_changes() {
    let mut s = Session::new(SessionLimits::default());
    s.deliver(&m(1), QoS::AtLeastOnce, &[], 0);
    s.on_incoming_qos2(3, 10);
    assert!(!s.has_changes());
    assert!(s.take_changes().is_empty());
}

#[test]
fn a_stored_session_holds_at_most_max_stored_and_counts_the_drops() {
    let mut s = Session::new(SessionLimits {
        max_inflight: 2,
        max_queued: 100,
        max_stored: 3,
    });
    s.track();
    s.on_disconnect(0, KEEP, None);
    for n in 0..6 {
        s.deliver(&m(n), QoS::AtLeastOnce, &[], 0);
    }
    assert_eq!(s.pending(), 3);
    assert_eq!(s.dropped_stored(), 3);
    assert_eq!(s.dropped(), 0);
    let mut stored = Stored::default();
    stored.apply(s.take_changes());
    assert_eq!(stored.messages.len(), 3, "dropped ones are forgotten");
    let again = publishes(&s.resume(1).unwrap().resend);
    assert_eq!(payloads(&again), ["3", "4"], "the oldest were dropped");
}

/// Transmits with the packet ids of first sends left out: any free id will
/// do for those, while a resend must keep its id.
fn normalised(t: Vec<Transmit>) -> Vec<(String, Option<u16>, bool, Option<u16>)> {
    t.into_iter()
        .map(|t| match t {
            Transmit::Publish(o) => (
                String::from_utf8_lossy(&o.message.payload).to_string(),
                o.packet_id.filter(|_| o.dup),
                o.dup,
                None,
            ),
            Transmit::Release(id) => (String::new(), None, false, Some(id)),
        })
        .collect()
}

proptest! {
    /// A session restored from what its changes wrote resends exactly what
    /// the live session would on a reconnect: the same messages with the
    /// same packet ids and DUP, the same PUBRELs, the same queue, and
    /// answers inbound QoS 2 duplicates the same way.
    #[test]
    fn a_restored_session_resumes_like_the_live_one(
        steps in proptest::collection::vec((0u8..8, 0u16..6), 1..120),
        window in 1usize..4,
        track_at in 0usize..20,
    ) {
        let limits = SessionLimits { max_inflight: window, max_queued: 1000, max_stored: 1000 };
        let mut s = Session::new(limits);
        let mut stored = Stored::default();
        let mut sent: Vec<u16> = Vec::new();
        let mut n = 0u32;
        for (i, (op, arg)) in steps.iter().enumerate() {
            if i == track_at {
                let image = s.track();
                stored.apply(image);
            }
            let now = i as u64;
            match op {
                0 | 1 => {
                    let msg = if *op == 0 { m(n) } else { m2(n) };
                    n += 1;
                    if let Some(o) = s.deliver(&msg, QoS::ExactlyOnce, &[7], now) {
                        sent.extend(o.packet_id);
                    }
                }
                2 => if let Some(id) = sent.get(usize::from(*arg)) {
                    for o in s.on_puback(*id, now) { sent.extend(o.packet_id); }
                },
                3 => if let Some(id) = sent.get(usize::from(*arg))
                    && let PubRec::Done(more) = s.on_pubrec(*id, *arg % 2 == 0, now)
                {
                    for o in more { sent.extend(o.packet_id); }
                },
                4 => if let Some(id) = sent.get(usize::from(*arg)) {
                    for o in s.on_pubcomp(*id, now) { sent.extend(o.packet_id); }
                },
                5 => { s.on_incoming_qos2(*arg + 1, 3); }
                6 => { s.on_pubrel(*arg + 1); }
                _ => {
                    if s.is_connected() {
                        s.on_disconnect(now, KEEP, None);
                    } else if let Ok(r) = s.resume(now) {
                        for t in r.resend {
                            if let Transmit::Publish(o) = t { sent.extend(o.packet_id); }
                        }
                    }
                }
            }
            stored.apply(s.take_changes());
        }
        prop_assume!(s.is_tracked());
        let end = steps.len() as u64 + 1;
        if s.is_connected() {
            s.on_disconnect(end, KEEP, None);
        }
        let mut restored = Session::restore(limits, stored.image(end + 1_000_000));
        stored.apply(s.take_changes());
        let live = normalised(s.resume(end + 1).unwrap().resend);
        let back = normalised(restored.resume(end + 1).unwrap().resend);
        prop_assert_eq!(live, back);
        for id in 1..=6u16 {
            prop_assert_eq!(
                s.on_incoming_qos2(id, 100) == Incoming::Duplicate,
                restored.on_incoming_qos2(id, 100) == Incoming::Duplicate
            );
        }
    }
}
