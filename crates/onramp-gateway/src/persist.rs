//! Persistent sessions on the store: the journal of session changes the hub
//! hands over (in the order it made them, under its lock), the writer task
//! that commits them in groups through the service (every change waiting at
//! one moment in one transaction), and the conversions between the broker's
//! values (on its monotonic clock) and the stored records (Unix
//! milliseconds).
//!
//! A change is numbered when handed over; [`Journal::durable`] waits until
//! every change up to a number has committed. A connection waits for it
//! before it acknowledges (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK) what a
//! persistent session's changes record, so what Onramp acknowledged for a
//! persistent session survives a crash. Clean sessions never write here.

use bytes::Bytes;
use onramp_broker::{HeldMessage, Message, Millis, Properties, QoS, SessionChange, SubOptions};
use onramp_service::{
    Onramp, SessionWrite, StoredHeldMessage, StoredMqttMessage, StoredSubscription,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Groups larger than this are split (one transaction each).
const MAX_GROUP: usize = 4096;

type Entry = (Vec<SessionWrite>, u64);

pub(crate) struct Journal {
    tx: mpsc::UnboundedSender<Entry>,
    pub(crate) rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Entry>>>,
    /// The last number handed out.
    enqueued: AtomicU64,
    /// The last number committed.
    committed: watch::Sender<u64>,
}

impl Journal {
    pub(crate) fn new() -> Journal {
        let (tx, rx) = mpsc::unbounded_channel();
        Journal {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            enqueued: AtomicU64::new(0),
            committed: watch::Sender::new(0),
        }
    }

    /// Hands writes over; returns their number. Called under the hub's
    /// lock, so numbers follow the order the changes were made in.
    pub(crate) fn push(&self, writes: Vec<SessionWrite>) -> Option<u64> {
        if writes.is_empty() {
            return None;
        }
        let n = self.enqueued.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tx.send((writes, n)).is_err() {
            tracing::error!("the session writer has stopped: a persistent session change is lost");
        }
        Some(n)
    }

    /// The number of the last writes handed over.
    pub(crate) fn last(&self) -> u64 {
        self.enqueued.load(Ordering::Relaxed)
    }

    /// Waits until the writes numbered `n` (and all before them) committed.
    pub(crate) async fn durable(&self, n: u64) {
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Starts the writer task (once), in the current runtime.
    pub(crate) fn start(self: &Arc<Self>, onramp: Onramp) {
        let Some(rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let journal = self.clone();
        tokio::spawn(async move { journal.run(onramp, rx).await });
    }

    async fn run(&self, onramp: Onramp, mut rx: mpsc::UnboundedReceiver<Entry>) {
        let mut group: Vec<Entry> = Vec::new();
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            let last = group.last().map(|(_, n)| *n).unwrap_or(0);
            let writes: Vec<SessionWrite> = group.drain(..).flat_map(|(w, _)| w).collect();
            let mut backoff = Duration::from_millis(20);
            loop {
                match onramp.write_sessions(&writes).await {
                    Ok(()) => {
                        metrics::counter!("onramp_mqtt_session_store_writes_total", "outcome" => "committed")
                            .increment(writes.len() as u64);
                        break;
                    }
                    Err(e) => {
                        // Nothing acknowledged rests on these yet: they are
                        // tried again (every write is idempotent) and the
                        // acknowledgements wait.
                        metrics::counter!("onramp_mqtt_session_store_writes_total", "outcome" => "failed")
                            .increment(writes.len() as u64);
                        tracing::error!(error = %e, writes = writes.len(), "persistent session changes not written; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            self.committed.send_replace(last);
        }
    }
}

/// Converts between the broker's clock and Unix milliseconds, at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The broker's clock now.
    pub now: Millis,
    /// Unix milliseconds now.
    pub wall: i64,
}

impl Clock {
    pub(crate) fn to_wall(self, at: Millis) -> i64 {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let now = i64::try_from(self.now).unwrap_or(i64::MAX);
        self.wall.saturating_add(at.saturating_sub(now))
    }

    /// A wall time on the broker's clock; one already past is now.
    pub(crate) fn to_broker(self, wall: i64) -> Millis {
        let ahead = u64::try_from(wall.saturating_sub(self.wall)).unwrap_or(0);
        self.now.saturating_add(ahead)
    }
}

pub(crate) fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn properties_json(p: &Properties) -> String {
    serde_json::json!({
        "payloadUtf8": p.payload_utf8,
        "contentType": p.content_type,
        "responseTopic": p.response_topic,
        "correlationData": p.correlation_data.as_ref().map(|b| b.to_vec()),
        "userProperties": p.user_properties,
    })
    .to_string()
}

fn properties_from_json(text: &str) -> Option<Properties> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let string = |key: &str| v.get(key).and_then(|s| s.as_str()).map(str::to_string);
    Some(Properties {
        payload_utf8: v
            .get("payloadUtf8")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        content_type: string("contentType"),
        response_topic: string("responseTopic"),
        correlation_data: v
            .get("correlationData")
            .and_then(|d| serde_json::from_value::<Vec<u8>>(d.clone()).ok())
            .map(Bytes::from),
        user_properties: v
            .get("userProperties")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default(),
    })
}

pub(crate) fn stored_message(m: &Message, clock: Clock) -> StoredMqttMessage {
    StoredMqttMessage {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos.as_u8(),
        retain: m.retain,
        properties: m.properties.as_deref().map(properties_json),
        expires_at_ms: m.expires_at.map(|at| clock.to_wall(at)),
    }
}

pub(crate) fn message_of(s: &StoredMqttMessage, clock: Clock) -> Message {
    let mut m = Message::new(
        &s.topic,
        s.payload.clone(),
        QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
        s.retain,
    );
    if let Some(p) = s.properties.as_deref().and_then(properties_from_json) {
        m = m.with_properties(p);
    }
    m.expires_at = s.expires_at_ms.map(|at| clock.to_broker(at));
    m
}

pub(crate) fn held_of(h: &StoredHeldMessage, clock: Clock) -> HeldMessage {
    HeldMessage {
        seq: u64::try_from(h.seq).unwrap_or(0),
        packet_id: h.packet_id,
        released: h.released,
        message: message_of(&h.message, clock),
        subscription_ids: h.subscription_ids.clone(),
    }
}

pub(crate) fn subscription(
    key: &str,
    filter: &str,
    group: Option<&str>,
    o: SubOptions,
) -> StoredSubscription {
    StoredSubscription {
        key: key.to_string(),
        filter: filter.to_string(),
        share_group: group.map(str::to_string),
        qos: o.qos.as_u8(),
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        subscription_id: o.id,
    }
}

pub(crate) fn options_of(s: &StoredSubscription) -> SubOptions {
    SubOptions {
        qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
        no_local: s.no_local,
        retain_as_published: s.retain_as_published,
        id: s.subscription_id,
    }
}

/// The store write of one session change.
pub(crate) fn write_of(
    tenant: &str,
    client_id: &str,
    change: SessionChange,
    clock: Clock,
) -> SessionWrite {
    let (tenant, client_id) = (tenant.to_string(), client_id.to_string());
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    match change {
        SessionChange::Hold(h) => SessionWrite::Hold {
            tenant,
            client_id,
            message: StoredHeldMessage {
                seq: seq(h.seq),
                packet_id: h.packet_id,
                released: h.released,
                message: stored_message(&h.message, clock),
                subscription_ids: h.subscription_ids,
            },
        },
        SessionChange::Released { seq: s } => SessionWrite::Released {
            tenant,
            client_id,
            seq: seq(s),
        },
        SessionChange::Forget { seq: s } => SessionWrite::Forget {
            tenant,
            client_id,
            seq: seq(s),
        },
        SessionChange::IncomingAdded(packet_id) => SessionWrite::IncomingAdded {
            tenant,
            client_id,
            packet_id,
        },
        SessionChange::IncomingRemoved(packet_id) => SessionWrite::IncomingRemoved {
            tenant,
            client_id,
            packet_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_through_its_stored_form() {
        let clock = Clock {
            now: 5_000,
            wall: 1_800_000_000_000,
        };
        let m = Message::new("a/b", vec![0u8, 1, 255], QoS::ExactlyOnce, true)
            .with_properties(Properties {
                payload_utf8: true,
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            })
            .with_expiry(5_000, Some(30));
        let stored = stored_message(&m, clock);
        assert_eq!(stored.expires_at_ms, Some(1_800_000_030_000));
        // After a restart the broker's clock starts again.
        let later = Clock {
            now: 10,
            wall: 1_800_000_010_000,
        };
        let back = message_of(&stored, later);
        assert_eq!(back.expires_at, Some(20_010));
        assert_eq!(
            Message {
                expires_at: m.expires_at,
                ..back
            },
            m
        );
        // Expired while the server was down: expired now.
        let late = Clock {
            now: 10,
            wall: 1_900_000_000_000,
        };
        assert!(message_of(&stored, late).is_expired(10));
    }
}
