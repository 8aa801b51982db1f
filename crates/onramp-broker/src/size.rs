//! The encoded size of a PUBLISH, so that a message larger than a client's
//! Maximum Packet Size is never sent to it (MQTT 5 section 3.1.2.11.4).

use crate::Message;

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Bytes of the whole PUBLISH packet (fixed header included) for `message`
/// sent with its topic name in full. With `v5`, its properties count: those
/// the message carries, the Message Expiry Interval when it has one, the
/// Subscription Identifiers, and a Topic Alias when `alias` (which never
/// makes the packet larger than this).
pub fn publish_packet_size(
    message: &Message,
    subscription_ids: &[u32],
    v5: bool,
    alias: bool,
) -> usize {
    let mut remaining = 2 + message.topic.len() + message.payload.len();
    if message.qos != crate::QoS::AtMostOnce {
        remaining += 2;
    }
    if v5 {
        let mut props = 0;
        if let Some(p) = &message.properties {
            if p.payload_utf8 {
                props += 2;
            }
            if let Some(t) = &p.content_type {
                props += 3 + t.len();
            }
            if let Some(t) = &p.response_topic {
                props += 3 + t.len();
            }
            if let Some(d) = &p.correlation_data {
                props += 3 + d.len();
            }
            for (k, v) in &p.user_properties {
                props += 5 + k.len() + v.len();
            }
        }
        if message.expires_at.is_some() {
            props += 5;
        }
        if alias {
            props += 3;
        }
        for id in subscription_ids {
            props += 1 + varint_len(*id as usize);
        }
        remaining += varint_len(props) + props;
    }
    1 + varint_len(remaining) + remaining
}
