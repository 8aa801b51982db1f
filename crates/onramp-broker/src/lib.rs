//! Onramp's MQTT broker core, without I/O.
//!
//! The gateway's network code decodes packets and calls these state machines;
//! they return what to send. Routing a publish to subscribers (with MQTT 5
//! subscription options), a session's QoS 1 and QoS 2 in-flight state, its
//! offline queue, redelivery after reconnect, message expiry, the Will Delay
//! and session expiry, topic aliases and retained messages are all decided
//! here and tested without a socket, on a clock the caller supplies.

mod alias;
mod retained;
mod router;
mod session;
mod size;

pub use alias::{AliasError, AliasUse, InboundAliases, OutboundAliases};
pub use retained::RetainedStore;
pub use router::{
    RetainHandling, Route, SubOptions, SubscriptionTable, send_retained, shrink_when_sparse,
};
pub use session::{
    ClientLimits, Departure, Ended, HeldMessage, Incoming, Outgoing, PubRec, Resumed, Session,
    SessionChange, SessionImage, SessionLimits, Transmit,
};
pub use size::publish_packet_size;

use bytes::Bytes;
use std::sync::Arc;

/// Milliseconds on the broker's monotonic clock. The core never reads a
/// clock itself: callers pass `now`, so tests can run on a simulated one.
pub type Millis = u64;

/// Quality of service levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of a wire value; `None` for anything above 2.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The MQTT 5 properties a message carries from its publisher to its
/// subscribers unchanged (MQTT 5 section 3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// Payload Format Indicator: the payload is UTF-8 text.
    pub payload_utf8: bool,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// User Properties, in the order the publisher sent them.
    pub user_properties: Vec<(String, String)>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        !self.payload_utf8
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }
}

/// A message as routed between sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties; `None` when there are none (always for MQTT 3.1.1).
    pub properties: Option<Arc<Properties>>,
    /// When the message expires (Message Expiry Interval); `None`: never.
    pub expires_at: Option<Millis>,
}

impl Message {
    pub fn new(topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos,
            retain,
            properties: None,
            expires_at: None,
        }
    }

    /// Attaches MQTT 5 properties (none are kept when `properties` is empty).
    pub fn with_properties(mut self, properties: Properties) -> Message {
        self.properties = (!properties.is_empty()).then(|| Arc::new(properties));
        self
    }

    /// Sets the Message Expiry Interval, counted from `now`.
    pub fn with_expiry(mut self, now: Millis, interval_secs: Option<u32>) -> Message {
        self.expires_at = interval_secs.map(|s| now.saturating_add(u64::from(s) * 1000));
        self
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The Message Expiry Interval to send at `now`: what is left of the
    /// publisher's interval, rounded up to whole seconds; `None` when the
    /// message never expires. An expired message is never sent, so a sent
    /// value is at least 1.
    pub fn remaining_expiry_secs(&self, now: Millis) -> Option<u32> {
        let at = self.expires_at?;
        let left = at.saturating_sub(now);
        Some(
            u32::try_from(left.div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1),
        )
    }
}

/// Identifies a session inside one tenant's broker.
pub type SessionId = u64;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The interval sent on delivery is what remains of the publisher's,
        /// never more, and a message is expired exactly when nothing remains.
        #[test]
        fn remaining_expiry_counts_down(start in 0u64..1_000_000, secs in 1u32..100_000, waited in 0u64..200_000_000) {
            let m = Message::new("t", "x", QoS::AtLeastOnce, false).with_expiry(start, Some(secs));
            let now = start + waited;
            let expired = m.is_expired(now);
            prop_assert_eq!(expired, waited >= u64::from(secs) * 1000);
            let left = m.remaining_expiry_secs(now).unwrap_or(0);
            prop_assert!(left <= secs);
            if !expired {
                // Rounded up: the remaining time is within the last second.
                prop_assert!(u64::from(left) * 1000 >= u64::from(secs) * 1000 - waited);
                prop_assert!(u64::from(left - 1) * 1000 < u64::from(secs) * 1000 - waited);
            }
        }
    }

    #[test]
    fn a_message_without_expiry_never_expires() {
        let m = Message::new("t", "x", QoS::AtMostOnce, false).with_expiry(5, None);
        assert!(!m.is_expired(u64::MAX));
        assert_eq!(m.remaining_expiry_secs(u64::MAX), None);
    }

    #[test]
    fn empty_properties_are_not_kept() {
        let m =
            Message::new("t", "x", QoS::AtMostOnce, false).with_properties(Properties::default());
        assert!(m.properties.is_none());
        let m = m.with_properties(Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        });
        assert!(m.properties.is_some());
    }
}
