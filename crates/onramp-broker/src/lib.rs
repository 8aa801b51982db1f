//! Onramp's MQTT broker core, without I/O.
//!
//! The gateway's network code decodes packets and calls these state machines;
//! they return what to send. Routing a publish to subscribers, a session's
//! QoS 1 in-flight window and offline queue, redelivery after reconnect and
//! retained messages are all decided here and tested without a socket.

mod retained;
mod router;
mod session;

pub use retained::RetainedStore;
pub use router::{Route, SubscriptionTable};
pub use session::{Outgoing, Session, SessionLimits};

use bytes::Bytes;
use std::sync::Arc;

/// Quality of service levels Onramp delivers. QoS 2 is not supported (as on
/// AWS IoT); the gateway downgrades or refuses it before it reaches the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// A message as routed between sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    pub fn new(topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos,
            retain,
        }
    }
}

/// Identifies a session inside one tenant's broker.
pub type SessionId = u64;
