//! Onramp's MQTT device gateway: MQTT 3.1.1 and 5.0 over mutual TLS.
//!
//! This crate is the network shell. Routing, sessions and retained messages
//! are decided by `onramp-broker`; who a device is and what its policies
//! allow is decided by `onramp-service` (over `onramp-domain`'s policy
//! engine). Here bytes are read, packets decoded, those decisions called,
//! and the answers written back.

mod connection;
mod counters;
mod cuts;
mod framing;
mod hub;
mod listener;
mod persist;
mod tls;
mod wire;

pub use hub::{DEFAULT_HOLD, Hub};
pub use listener::{Gateway, GatewaySettings, serve, tls_config};
pub use wire::decode_all;
