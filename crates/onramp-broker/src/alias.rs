//! MQTT 5 topic aliases: those Onramp assigns towards a client (so a topic
//! is sent once per connection, then only its two-byte alias), and those a
//! client assigns towards Onramp. Both live for one network connection.

use std::collections::HashMap;
use std::sync::Arc;

/// How to send a topic to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// Send the topic name, no alias.
    None,
    /// Send the topic name and this alias, which binds them.
    Set(u16),
    /// Send an empty topic name and this alias.
    Use(u16),
}

/// Aliases Onramp assigns on one connection, up to the client's Topic Alias
/// Maximum. Once all are taken, further topics go out by name.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

impl OutboundAliases {
    /// `max` is the client's Topic Alias Maximum (0: the client takes none).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            max,
            by_topic: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    pub fn assign(&mut self, topic: &Arc<str>) -> AliasUse {
        if let Some(a) = self.by_topic.get(topic) {
            return AliasUse::Use(*a);
        }
        let taken = self.by_topic.len();
        if self.max == 0 || topic.is_empty() || taken >= usize::from(self.max) {
            return AliasUse::None;
        }
        // Aliases 1..=max, handed out in order and never rebound.
        let alias = u16::try_from(taken + 1).unwrap_or(u16::MAX);
        self.by_topic.insert(topic.clone(), alias);
        AliasUse::Set(alias)
    }
}

/// Why a client's PUBLISH topic could not be resolved (DISCONNECT 0x94).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// Alias 0 or above the Topic Alias Maximum Onramp announced.
    OutOfRange,
    /// An empty topic with an alias the client never bound.
    Unknown,
}

/// Aliases a client binds on one connection, up to Onramp's Topic Alias Maximum.
#[derive(Debug, Default)]
pub struct InboundAliases {
    max: u16,
    topics: HashMap<u16, String>,
}

impl InboundAliases {
    pub fn new(max: u16) -> InboundAliases {
        InboundAliases {
            max,
            topics: HashMap::new(),
        }
    }

    /// The topic a PUBLISH is for. A non-empty topic with an alias (re)binds
    /// the alias; an empty one uses it. Without an alias the topic is as sent.
    pub fn resolve(&mut self, topic: &str, alias: Option<u16>) -> Result<String, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic.to_string());
        };
        if alias == 0 || alias > self.max {
            return Err(AliasError::OutOfRange);
        }
        if topic.is_empty() {
            return self.topics.get(&alias).cloned().ok_or(AliasError::Unknown);
        }
        self.topics.insert(alias, topic.to_string());
        Ok(topic.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the sequence of topics, a client that applies the
        /// aliases as MQTT 5 says always reads back the topic sent, and no
        /// alias exceeds its maximum.
        #[test]
        fn outbound_aliases_always_decode_to_the_topic(
            max in 0u16..4,
            topics in proptest::collection::vec(prop_oneof![Just("a"), Just("b/c"), Just("d"), Just("e"), Just("f")], 0..40),
        ) {
            let mut out = OutboundAliases::new(max);
            let mut client = InboundAliases::new(max);
            for t in topics {
                let topic: Arc<str> = Arc::from(t);
                let got = match out.assign(&topic) {
                    AliasUse::None => client.resolve(t, None),
                    AliasUse::Set(a) => { prop_assert!(a >= 1 && a <= max); client.resolve(t, Some(a)) }
                    AliasUse::Use(a) => { prop_assert!(a >= 1 && a <= max); client.resolve("", Some(a)) }
                };
                prop_assert_eq!(got.as_deref(), Ok(t));
            }
        }
    }

    #[test]
    fn the_first_use_sets_then_later_ones_use() {
        let mut out = OutboundAliases::new(1);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert_eq!(out.assign(&a), AliasUse::Set(1));
        assert_eq!(out.assign(&a), AliasUse::Use(1));
        assert_eq!(out.assign(&b), AliasUse::None, "all aliases taken");
        assert_eq!(OutboundAliases::new(0).assign(&a), AliasUse::None);
    }

    #[test]
    fn inbound_aliases_refuse_what_mqtt5_forbids() {
        let mut i = InboundAliases::new(2);
        assert_eq!(i.resolve("x", Some(0)), Err(AliasError::OutOfRange));
        assert_eq!(i.resolve("x", Some(3)), Err(AliasError::OutOfRange));
        assert_eq!(i.resolve("", Some(1)), Err(AliasError::Unknown));
        assert_eq!(i.resolve("x", Some(1)).as_deref(), Ok("x"));
        assert_eq!(i.resolve("", Some(1)).as_deref(), Ok("x"));
        assert_eq!(i.resolve("y", Some(1)).as_deref(), Ok("y"), "rebinding");
        assert_eq!(i.resolve("", Some(1)).as_deref(), Ok("y"));
        assert_eq!(
            InboundAliases::new(0).resolve("x", Some(1)),
            Err(AliasError::OutOfRange)
        );
    }
}
