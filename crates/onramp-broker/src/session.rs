//! One client's session: QoS 1 in-flight window, offline queue, redelivery.

use crate::{Message, QoS};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Unacknowledged QoS 1 messages towards the client (AWS: 100).
    pub max_inflight: usize,
    /// QoS 1 messages held while the window is full or the client is away.
    pub max_queued: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 100,
            max_queued: 1000,
        }
    }
}

/// A PUBLISH to write to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub message: Message,
    /// Present for QoS 1.
    pub packet_id: Option<u16>,
    /// Set when this is a redelivery of an unacknowledged message.
    pub dup: bool,
}

#[derive(Debug)]
pub struct Session {
    limits: SessionLimits,
    connected: bool,
    inflight: BTreeMap<u16, Message>,
    queue: VecDeque<Message>,
    next_packet_id: u16,
    dropped: u64,
}

impl Session {
    pub fn new(limits: SessionLimits) -> Session {
        Session {
            limits,
            connected: true,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            next_packet_id: 1,
            dropped: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// QoS 1 messages not yet acknowledged plus those waiting.
    pub fn pending(&self) -> usize {
        self.inflight.len() + self.queue.len()
    }

    /// Messages dropped because the queue was full (oldest first).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Offers a routed message at the subscription's QoS. Returns what to send
    /// now, if anything; QoS 1 beyond the window waits in the queue.
    pub fn deliver(&mut self, message: &Message, subscription_qos: QoS) -> Option<Outgoing> {
        let qos = message.qos.min(subscription_qos);
        let mut message = message.clone();
        message.qos = qos;
        match qos {
            QoS::AtMostOnce if self.connected => Some(Outgoing {
                message,
                packet_id: None,
                dup: false,
            }),
            // QoS 0 is not kept for an absent client.
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => {
                if self.connected
                    && self.inflight.len() < self.limits.max_inflight
                    && self.queue.is_empty()
                {
                    Some(self.send_qos1(message))
                } else {
                    self.enqueue(message);
                    None
                }
            }
        }
    }

    fn enqueue(&mut self, message: Message) {
        if self.queue.len() >= self.limits.max_queued {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(message);
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

    fn send_qos1(&mut self, message: Message) -> Outgoing {
        let id = self.allocate_packet_id();
        self.inflight.insert(id, message.clone());
        Outgoing {
            message,
            packet_id: Some(id),
            dup: false,
        }
    }

    /// The client acknowledged `packet_id`; returns queued messages that now fit.
    pub fn on_puback(&mut self, packet_id: u16) -> Vec<Outgoing> {
        if self.inflight.remove(&packet_id).is_none() {
            return Vec::new();
        }
        self.fill_window()
    }

    fn fill_window(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while self.connected && self.inflight.len() < self.limits.max_inflight {
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            out.push(self.send_qos1(m));
        }
        out
    }

    pub fn on_disconnect(&mut self) {
        self.connected = false;
    }

    /// The client is back on a persistent session: unacknowledged messages
    /// are sent again (DUP set, same packet ids, in order), then the queue.
    pub fn on_reconnect(&mut self) -> Vec<Outgoing> {
        self.connected = true;
        let mut out: Vec<Outgoing> = self
            .inflight
            .iter()
            .map(|(id, m)| Outgoing {
                message: m.clone(),
                packet_id: Some(*id),
                dup: true,
            })
            .collect();
        out.extend(self.fill_window());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u32) -> Message {
        Message::new("t", format!("{n}"), QoS::AtLeastOnce, false)
    }

    fn payloads(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| String::from_utf8_lossy(&o.message.payload).to_string())
            .collect()
    }

    #[test]
    fn qos1_is_redelivered_after_reconnect_with_dup_and_the_same_packet_id() {
        let mut s = Session::new(SessionLimits::default());
        let first = s.deliver(&m(1), QoS::AtLeastOnce).unwrap();
        let second = s.deliver(&m(2), QoS::AtLeastOnce).unwrap();
        assert!(s.on_puback(first.packet_id.unwrap()).is_empty());
        s.on_disconnect();
        assert!(
            s.deliver(&m(3), QoS::AtLeastOnce).is_none(),
            "queued while away"
        );
        assert!(
            s.deliver(
                &Message::new("t", "q0", QoS::AtMostOnce, false),
                QoS::AtLeastOnce
            )
            .is_none(),
            "QoS 0 is not kept"
        );
        let again = s.on_reconnect();
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
        });
        let a = s.deliver(&m(1), QoS::AtLeastOnce).unwrap();
        s.deliver(&m(2), QoS::AtLeastOnce).unwrap();
        assert!(s.deliver(&m(3), QoS::AtLeastOnce).is_none());
        assert!(s.deliver(&m(4), QoS::AtLeastOnce).is_none());
        assert_eq!(s.pending(), 4);
        let released = s.on_puback(a.packet_id.unwrap());
        assert_eq!(payloads(&released), ["3"]);
        assert!(s.on_puback(999).is_empty(), "an unknown id changes nothing");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut s = Session::new(SessionLimits {
            max_inflight: 1,
            max_queued: 2,
        });
        s.on_disconnect();
        for n in 1..=4 {
            s.deliver(&m(n), QoS::AtLeastOnce);
        }
        assert_eq!(s.dropped(), 2);
        assert_eq!(payloads(&s.on_reconnect()), ["3"]);
    }

    #[test]
    fn delivery_qos_is_the_lower_of_message_and_subscription() {
        let mut s = Session::new(SessionLimits::default());
        let out = s.deliver(&m(1), QoS::AtMostOnce).unwrap();
        assert_eq!(out.message.qos, QoS::AtMostOnce);
        assert_eq!(out.packet_id, None);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = Session::new(SessionLimits {
            max_inflight: 3,
            max_queued: 0,
        });
        s.next_packet_id = u16::MAX;
        let a = s.deliver(&m(1), QoS::AtLeastOnce).unwrap();
        let b = s.deliver(&m(2), QoS::AtLeastOnce).unwrap();
        assert_eq!((a.packet_id, b.packet_id), (Some(u16::MAX), Some(1)));
    }
}
