//! Persistent MQTT sessions: what a session with a Session Expiry (or an
//! MQTT 3.1.1 cleanSession=0 session) holds, so that it survives a restart.
//! The gateway reports changes as they happen and writes them in groups
//! ([`SessionStore::write_sessions`]: one transaction per group); at start
//! it loads every stored session ([`SessionStore::load_sessions`]).

use crate::Result;
use crate::sql::SqlStore;
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// A message as a session stores it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMqttMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// The MQTT 5 properties as JSON, when there are any.
    pub properties: Option<String>,
    /// When the message expires; None: never.
    pub expires_at_ms: Option<i64>,
}

/// A message held for the client: queued (`packet_id` None) or in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHeldMessage {
    /// Order of acceptance within the session.
    pub seq: i64,
    pub packet_id: Option<u16>,
    /// QoS 2: PUBREC received, PUBREL owed.
    pub released: bool,
    pub message: StoredMqttMessage,
    pub subscription_ids: Vec<u32>,
}

/// A subscription of a stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter as the client sent it (with any `$share/group/`).
    pub key: String,
    pub filter: String,
    pub share_group: Option<String>,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_id: Option<u32>,
}

/// The session's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSessionRecord {
    pub tenant: String,
    pub client_id: String,
    pub thing_name: String,
    pub certificate_serial: String,
    pub expiry_secs: i64,
    /// When its connection ended; None while connected, or when the server
    /// stopped while it was.
    pub disconnected_at_ms: Option<i64>,
    /// The Will Message owed if the connection ends abnormally (while
    /// connected), or the one pending (once disconnected).
    pub will: Option<StoredMqttMessage>,
    pub will_delay_secs: i64,
}

/// A stored session with everything it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub record: StoredSessionRecord,
    pub subscriptions: Vec<StoredSubscription>,
    /// In `seq` order.
    pub messages: Vec<StoredHeldMessage>,
    pub incoming: Vec<u16>,
}

/// One change to the stored sessions; a group of them is written in order,
/// in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWrite {
    /// Creates or replaces the session's record (connected now).
    Open(StoredSessionRecord),
    /// The connection ended: when, the expiry that now applies and the will
    /// pending, if any.
    Closed {
        tenant: String,
        client_id: String,
        disconnected_at_ms: i64,
        expiry_secs: i64,
        will: Option<StoredMqttMessage>,
        will_delay_secs: i64,
    },
    /// The session ended: it and everything it held are removed.
    Delete { tenant: String, client_id: String },
    Subscribe {
        tenant: String,
        client_id: String,
        subscription: StoredSubscription,
    },
    Unsubscribe {
        tenant: String,
        client_id: String,
        key: String,
    },
    /// Creates or replaces a held message.
    Hold {
        tenant: String,
        client_id: String,
        message: StoredHeldMessage,
    },
    Released {
        tenant: String,
        client_id: String,
        seq: i64,
    },
    Forget {
        tenant: String,
        client_id: String,
        seq: i64,
    },
    IncomingAdded {
        tenant: String,
        client_id: String,
        packet_id: u16,
    },
    IncomingRemoved {
        tenant: String,
        client_id: String,
        packet_id: u16,
    },
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Writes the changes in order, all in one transaction.
    async fn write_sessions(&self, writes: &[SessionWrite]) -> Result<()>;
    /// Every stored session with what it holds.
    async fn load_sessions(&self) -> Result<Vec<StoredSession>>;
}

const CHILD_TABLES: [&str; 3] = [
    "mqtt_session_subscriptions",
    "mqtt_session_messages",
    "mqtt_session_incoming",
];

fn ids_text(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn ids_from_text(text: &str) -> Vec<u32> {
    text.split(',').filter_map(|s| s.parse().ok()).collect()
}

async fn write_one(tx: &mut Transaction<'static, Any>, w: &SessionWrite) -> Result<()> {
    match w {
        SessionWrite::Open(r) => {
            let will = r.will.as_ref();
            sqlx::query(
                "INSERT INTO mqtt_sessions (tenant, client_id, thing_name, certificate_serial, \
                 expiry_secs, disconnected_at, will_topic, will_payload, will_qos, will_retain, \
                 will_properties, will_expires_at, will_delay_secs) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (tenant, client_id) DO UPDATE SET thing_name = $3, \
                 certificate_serial = $4, expiry_secs = $5, disconnected_at = $6, \
                 will_topic = $7, will_payload = $8, will_qos = $9, will_retain = $10, \
                 will_properties = $11, will_expires_at = $12, will_delay_secs = $13",
            )
            .bind(&r.tenant)
            .bind(&r.client_id)
            .bind(&r.thing_name)
            .bind(&r.certificate_serial)
            .bind(r.expiry_secs)
            .bind(r.disconnected_at_ms)
            .bind(will.map(|m| m.topic.clone()))
            .bind(will.map(|m| m.payload.clone()))
            .bind(will.map(|m| i64::from(m.qos)))
            .bind(will.map(|m| i64::from(m.retain)))
            .bind(will.and_then(|m| m.properties.clone()))
            .bind(will.and_then(|m| m.expires_at_ms))
            .bind(r.will_delay_secs)
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Closed {
            tenant,
            client_id,
            disconnected_at_ms,
            expiry_secs,
            will,
            will_delay_secs,
        } => {
            let will = will.as_ref();
            sqlx::query(
                "UPDATE mqtt_sessions SET disconnected_at = $1, expiry_secs = $2, \
                 will_topic = $3, will_payload = $4, will_qos = $5, will_retain = $6, \
                 will_properties = $7, will_expires_at = $8, will_delay_secs = $9 \
                 WHERE tenant = $10 AND client_id = $11",
            )
            .bind(*disconnected_at_ms)
            .bind(*expiry_secs)
            .bind(will.map(|m| m.topic.clone()))
            .bind(will.map(|m| m.payload.clone()))
            .bind(will.map(|m| i64::from(m.qos)))
            .bind(will.map(|m| i64::from(m.retain)))
            .bind(will.and_then(|m| m.properties.clone()))
            .bind(will.and_then(|m| m.expires_at_ms))
            .bind(*will_delay_secs)
            .bind(tenant)
            .bind(client_id)
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Delete { tenant, client_id } => {
            for table in ["mqtt_sessions"].iter().chain(CHILD_TABLES.iter()) {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE tenant = $1 AND client_id = $2"
                )))
                .bind(tenant)
                .bind(client_id)
                .execute(&mut **tx)
                .await?;
            }
        }
        SessionWrite::Subscribe {
            tenant,
            client_id,
            subscription: s,
        } => {
            sqlx::query(
                "INSERT INTO mqtt_session_subscriptions (tenant, client_id, key, filter, \
                 share_group, qos, no_local, retain_as_published, subscription_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (tenant, client_id, key) DO UPDATE SET filter = $4, \
                 share_group = $5, qos = $6, no_local = $7, retain_as_published = $8, \
                 subscription_id = $9",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(&s.key)
            .bind(&s.filter)
            .bind(s.share_group.clone())
            .bind(i64::from(s.qos))
            .bind(i64::from(s.no_local))
            .bind(i64::from(s.retain_as_published))
            .bind(s.subscription_id.map(i64::from))
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Unsubscribe {
            tenant,
            client_id,
            key,
        } => {
            sqlx::query(
                "DELETE FROM mqtt_session_subscriptions \
                 WHERE tenant = $1 AND client_id = $2 AND key = $3",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(key)
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Hold {
            tenant,
            client_id,
            message: h,
        } => {
            let m = &h.message;
            sqlx::query(
                "INSERT INTO mqtt_session_messages (tenant, client_id, seq, packet_id, released, \
                 topic, payload, qos, retain, properties, expires_at, subscription_ids) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (tenant, client_id, seq) DO UPDATE SET packet_id = $4, \
                 released = $5, topic = $6, payload = $7, qos = $8, retain = $9, \
                 properties = $10, expires_at = $11, subscription_ids = $12",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(h.seq)
            .bind(h.packet_id.map(i64::from))
            .bind(i64::from(h.released))
            .bind(&m.topic)
            .bind(m.payload.clone())
            .bind(i64::from(m.qos))
            .bind(i64::from(m.retain))
            .bind(m.properties.clone())
            .bind(m.expires_at_ms)
            .bind(ids_text(&h.subscription_ids))
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Released {
            tenant,
            client_id,
            seq,
        } => {
            sqlx::query(
                "UPDATE mqtt_session_messages SET released = 1 \
                 WHERE tenant = $1 AND client_id = $2 AND seq = $3",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(*seq)
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::Forget {
            tenant,
            client_id,
            seq,
        } => {
            sqlx::query(
                "DELETE FROM mqtt_session_messages \
                 WHERE tenant = $1 AND client_id = $2 AND seq = $3",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(*seq)
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::IncomingAdded {
            tenant,
            client_id,
            packet_id,
        } => {
            sqlx::query(
                "INSERT INTO mqtt_session_incoming (tenant, client_id, packet_id) \
                 VALUES ($1, $2, $3) ON CONFLICT (tenant, client_id, packet_id) DO NOTHING",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(i64::from(*packet_id))
            .execute(&mut **tx)
            .await?;
        }
        SessionWrite::IncomingRemoved {
            tenant,
            client_id,
            packet_id,
        } => {
            sqlx::query(
                "DELETE FROM mqtt_session_incoming \
                 WHERE tenant = $1 AND client_id = $2 AND packet_id = $3",
            )
            .bind(tenant)
            .bind(client_id)
            .bind(i64::from(*packet_id))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

fn small<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T> {
    T::try_from(value).map_err(|_| crate::StoreError::Corrupt(format!("{what} {value}")))
}

fn record_from_row(r: &AnyRow) -> Result<StoredSessionRecord> {
    let will_topic: Option<String> = r.try_get("will_topic")?;
    let will = match will_topic {
        Some(topic) => Some(StoredMqttMessage {
            topic,
            payload: r
                .try_get::<Option<Vec<u8>>, _>("will_payload")?
                .unwrap_or_default(),
            qos: small(
                r.try_get::<Option<i64>, _>("will_qos")?.unwrap_or(0),
                "will QoS",
            )?,
            retain: r.try_get::<Option<i64>, _>("will_retain")?.unwrap_or(0) != 0,
            properties: r.try_get("will_properties")?,
            expires_at_ms: r.try_get("will_expires_at")?,
        }),
        None => None,
    };
    Ok(StoredSessionRecord {
        tenant: r.try_get("tenant")?,
        client_id: r.try_get("client_id")?,
        thing_name: r.try_get("thing_name")?,
        certificate_serial: r.try_get("certificate_serial")?,
        expiry_secs: r.try_get("expiry_secs")?,
        disconnected_at_ms: r.try_get("disconnected_at")?,
        will,
        will_delay_secs: r.try_get("will_delay_secs")?,
    })
}

type SessionKey = (String, String);

fn key_of(r: &AnyRow) -> Result<SessionKey> {
    Ok((r.try_get("tenant")?, r.try_get("client_id")?))
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn write_sessions(&self, writes: &[SessionWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for w in writes {
            write_one(&mut tx, w).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_sessions(&self) -> Result<Vec<StoredSession>> {
        let rows = sqlx::query(
            "SELECT tenant, client_id, thing_name, certificate_serial, expiry_secs, \
             disconnected_at, will_topic, will_payload, will_qos, will_retain, will_properties, \
             will_expires_at, will_delay_secs FROM mqtt_sessions ORDER BY tenant, client_id",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut sessions: Vec<StoredSession> = Vec::with_capacity(rows.len());
        let mut index: HashMap<SessionKey, usize> = HashMap::new();
        for r in &rows {
            let record = record_from_row(r)?;
            index.insert(
                (record.tenant.clone(), record.client_id.clone()),
                sessions.len(),
            );
            sessions.push(StoredSession {
                record,
                subscriptions: Vec::new(),
                messages: Vec::new(),
                incoming: Vec::new(),
            });
        }
        let subs = sqlx::query(
            "SELECT tenant, client_id, key, filter, share_group, qos, no_local, \
             retain_as_published, subscription_id FROM mqtt_session_subscriptions \
             ORDER BY tenant, client_id, key",
        )
        .fetch_all(&self.reader)
        .await?;
        for r in &subs {
            let Some(&i) = index.get(&key_of(r)?) else {
                continue;
            };
            sessions[i].subscriptions.push(StoredSubscription {
                key: r.try_get("key")?,
                filter: r.try_get("filter")?,
                share_group: r.try_get("share_group")?,
                qos: small(r.try_get("qos")?, "QoS")?,
                no_local: r.try_get::<i64, _>("no_local")? != 0,
                retain_as_published: r.try_get::<i64, _>("retain_as_published")? != 0,
                subscription_id: r
                    .try_get::<Option<i64>, _>("subscription_id")?
                    .map(|v| small(v, "subscription id"))
                    .transpose()?,
            });
        }
        let messages = sqlx::query(
            "SELECT tenant, client_id, seq, packet_id, released, topic, payload, qos, retain, \
             properties, expires_at, subscription_ids FROM mqtt_session_messages \
             ORDER BY tenant, client_id, seq",
        )
        .fetch_all(&self.reader)
        .await?;
        for r in &messages {
            let Some(&i) = index.get(&key_of(r)?) else {
                continue;
            };
            sessions[i].messages.push(StoredHeldMessage {
                seq: r.try_get("seq")?,
                packet_id: r
                    .try_get::<Option<i64>, _>("packet_id")?
                    .map(|v| small(v, "packet id"))
                    .transpose()?,
                released: r.try_get::<i64, _>("released")? != 0,
                message: StoredMqttMessage {
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    qos: small(r.try_get("qos")?, "QoS")?,
                    retain: r.try_get::<i64, _>("retain")? != 0,
                    properties: r.try_get("properties")?,
                    expires_at_ms: r.try_get("expires_at")?,
                },
                subscription_ids: ids_from_text(&r.try_get::<String, _>("subscription_ids")?),
            });
        }
        let incoming = sqlx::query(
            "SELECT tenant, client_id, packet_id FROM mqtt_session_incoming \
             ORDER BY tenant, client_id, packet_id",
        )
        .fetch_all(&self.reader)
        .await?;
        for r in &incoming {
            let Some(&i) = index.get(&key_of(r)?) else {
                continue;
            };
            sessions[i]
                .incoming
                .push(small(r.try_get("packet_id")?, "packet id")?);
        }
        Ok(sessions)
    }
}
