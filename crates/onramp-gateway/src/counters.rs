//! Metric handles of the message path, registered once: looking a series up
//! by name and labels on every message cost more than routing it.

use metrics::Counter;
use onramp_broker::QoS;
use std::sync::LazyLock;

pub(crate) struct Counters {
    messages_in: [Counter; 3],
    messages_out: [Counter; 3],
    pub(crate) dropped_queue_full: Counter,
    pub(crate) dropped_connection_behind: Counter,
    pub(crate) undeliverable_expired: Counter,
    pub(crate) undeliverable_too_large: Counter,
    /// A publisher held until the receiving connection had room.
    pub(crate) held_released: Counter,
    /// A publisher held for the whole hold limit; the message was then
    /// handled by the drop policy.
    pub(crate) held_expired: Counter,
}

impl Counters {
    pub(crate) fn messages_in(&self, qos: QoS) -> &Counter {
        &self.messages_in[qos as usize]
    }

    pub(crate) fn messages_out(&self, qos: QoS) -> &Counter {
        &self.messages_out[qos as usize]
    }
}

/// Created on first use, which is after the server installed its recorder.
pub(crate) static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let by_qos = |name: &'static str| ["0", "1", "2"].map(|q| metrics::counter!(name, "qos" => q));
    Counters {
        messages_in: by_qos("onramp_mqtt_messages_in_total"),
        messages_out: by_qos("onramp_mqtt_messages_out_total"),
        dropped_queue_full: metrics::counter!("onramp_mqtt_messages_dropped_total", "reason" => "queue_full"),
        dropped_connection_behind: metrics::counter!("onramp_mqtt_messages_dropped_total", "reason" => "connection_behind"),
        undeliverable_expired: metrics::counter!("onramp_mqtt_messages_undeliverable_total", "reason" => "expired"),
        undeliverable_too_large: metrics::counter!("onramp_mqtt_messages_undeliverable_total", "reason" => "too_large"),
        held_released: metrics::counter!("onramp_mqtt_publisher_holds_total", "outcome" => "released"),
        held_expired: metrics::counter!("onramp_mqtt_publisher_holds_total", "outcome" => "expired"),
    }
});
