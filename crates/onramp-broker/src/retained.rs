//! Retained messages: the last retained message per topic.

use crate::{Message, Millis};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: HashMap<Arc<str>, Message>,
}

impl RetainedStore {
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    /// Keeps `message` as the topic's retained message; an empty payload clears it.
    /// Returns whether the store changed.
    pub fn set(&mut self, message: &Message) -> bool {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic).is_some()
        } else {
            self.messages.insert(message.topic.clone(), message.clone());
            true
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Retained messages whose topic matches `matches` (the filter test is the caller's,
    /// so the store stays independent of filter syntax) and which have not
    /// expired at `now`.
    pub fn matching(&self, now: Millis, matches: impl Fn(&str) -> bool) -> Vec<Message> {
        self.messages
            .values()
            .filter(|m| !m.is_expired(now) && matches(&m.topic))
            .cloned()
            .collect()
    }

    /// Forgets retained messages that expired by `now`; returns how many.
    pub fn purge_expired(&mut self, now: Millis) -> usize {
        let before = self.messages.len();
        self.messages.retain(|_, m| !m.is_expired(now));
        before - self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QoS;

    #[test]
    fn the_last_retained_message_wins_and_empty_clears() {
        let mut r = RetainedStore::new();
        assert!(r.set(&Message::new("a", "1", QoS::AtMostOnce, true)));
        r.set(&Message::new("a", "2", QoS::AtMostOnce, true));
        r.set(&Message::new("b", "3", QoS::AtMostOnce, true));
        let got = r.matching(0, |t| t == "a");
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"2");
        assert!(r.set(&Message::new("a", "", QoS::AtMostOnce, true)));
        assert!(!r.set(&Message::new("a", "", QoS::AtMostOnce, true)));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_expired_retained_message_is_never_sent() {
        let mut r = RetainedStore::new();
        r.set(&Message::new("a", "1", QoS::AtLeastOnce, true).with_expiry(1_000, Some(2)));
        r.set(&Message::new("b", "2", QoS::AtLeastOnce, true));
        assert_eq!(r.matching(2_999, |_| true).len(), 2);
        assert_eq!(r.matching(3_000, |_| true).len(), 1);
        assert_eq!(r.purge_expired(3_000), 1);
        assert_eq!(r.len(), 1);
    }
}
