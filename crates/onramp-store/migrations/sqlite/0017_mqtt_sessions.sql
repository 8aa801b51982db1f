-- Persistent MQTT sessions (Session Expiry > 0, or MQTT 3.1.1
-- cleanSession=0), so that they survive a restart: the session, its
-- subscriptions, the messages it holds for its client (queued or in
-- flight), and the inbound QoS 2 packet ids awaiting PUBREL. Times are Unix
-- milliseconds.
CREATE TABLE mqtt_sessions (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    certificate_serial TEXT NOT NULL,
    expiry_secs INTEGER NOT NULL,
    -- NULL while connected (or when the server stopped while it was).
    disconnected_at INTEGER,
    will_topic TEXT,
    will_payload BLOB,
    will_qos INTEGER,
    will_retain INTEGER,
    will_properties TEXT,
    will_expires_at INTEGER,
    will_delay_secs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, client_id)
);
CREATE TABLE mqtt_session_subscriptions (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    key TEXT NOT NULL,
    filter TEXT NOT NULL,
    share_group TEXT,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (tenant, client_id, key)
);
CREATE TABLE mqtt_session_messages (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    -- NULL while queued.
    packet_id INTEGER,
    released INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT,
    expires_at INTEGER,
    subscription_ids TEXT NOT NULL,
    PRIMARY KEY (tenant, client_id, seq)
);
CREATE TABLE mqtt_session_incoming (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (tenant, client_id, packet_id)
);
