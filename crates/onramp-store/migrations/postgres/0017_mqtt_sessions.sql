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
    expiry_secs BIGINT NOT NULL,
    -- NULL while connected (or when the server stopped while it was).
    disconnected_at BIGINT,
    will_topic TEXT,
    will_payload BYTEA,
    will_qos BIGINT,
    will_retain BIGINT,
    will_properties TEXT,
    will_expires_at BIGINT,
    will_delay_secs BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, client_id)
);
CREATE TABLE mqtt_session_subscriptions (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    key TEXT NOT NULL,
    filter TEXT NOT NULL,
    share_group TEXT,
    qos BIGINT NOT NULL,
    no_local BIGINT NOT NULL,
    retain_as_published BIGINT NOT NULL,
    subscription_id BIGINT,
    PRIMARY KEY (tenant, client_id, key)
);
CREATE TABLE mqtt_session_messages (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- NULL while queued.
    packet_id BIGINT,
    released BIGINT NOT NULL,
    topic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    qos BIGINT NOT NULL,
    retain BIGINT NOT NULL,
    properties TEXT,
    expires_at BIGINT,
    subscription_ids TEXT NOT NULL,
    PRIMARY KEY (tenant, client_id, seq)
);
CREATE TABLE mqtt_session_incoming (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    packet_id BIGINT NOT NULL,
    PRIMARY KEY (tenant, client_id, packet_id)
);
