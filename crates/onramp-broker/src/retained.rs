//! Retained messages: the last retained message per topic.

use crate::Message;
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
    /// so the store stays independent of filter syntax).
    pub fn matching(&self, matches: impl Fn(&str) -> bool) -> Vec<Message> {
        self.messages
            .values()
            .filter(|m| matches(&m.topic))
            .cloned()
            .collect()
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
        let got = r.matching(|t| t == "a");
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"2");
        assert!(r.set(&Message::new("a", "", QoS::AtMostOnce, true)));
        assert!(!r.set(&Message::new("a", "", QoS::AtMostOnce, true)));
        assert_eq!(r.len(), 1);
    }
}
