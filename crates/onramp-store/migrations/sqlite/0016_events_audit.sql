-- Outbound events (webhooks) and audit checks.
--
-- Webhook subscriptions: a tenant's receiver URL and the event types it
-- wants. The signing secret is derived from the server's hashing key and
-- `secret_salt`, so the database never holds it.
CREATE TABLE event_subscriptions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    secret_salt TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX event_subscriptions_by_tenant ON event_subscriptions (tenant);

-- The outbox: an event is stored, with one delivery row per matching
-- subscription, in one transaction; the delivery task sends them later, so
-- a restart loses nothing.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant, id);

-- Events that must happen once (a certificate's 30-day warning, its
-- expiry): the key is taken in the event's transaction.
CREATE TABLE event_once (
    once_key TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Status: pending (to send at next_attempt_at), delivered, dead (retries
-- exhausted; an operator may replay it).
CREATE TABLE event_deliveries (
    event_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, subscription_id)
);
CREATE INDEX event_deliveries_due ON event_deliveries (status, next_attempt_at);
CREATE INDEX event_deliveries_by_tenant ON event_deliveries (tenant, status);

-- Audit-check findings, one per check and resource; a finding no longer
-- seen by its check is resolved, and opens again if seen again.
CREATE TABLE audit_findings (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    check_name TEXT NOT NULL,
    resource TEXT NOT NULL,
    severity TEXT NOT NULL,
    detail TEXT NOT NULL,
    status TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    suppressed_reason TEXT,
    suppressed_by TEXT,
    suppressed_at BIGINT,
    UNIQUE (tenant, check_name, resource)
);

-- MQTT connection attempts per certificate, client id and source address,
-- counted (refused: the certificate was not active), for the checks on
-- revoked certificates still trying, shared keys and conflicting client ids.
CREATE TABLE connection_attempts (
    tenant TEXT NOT NULL,
    serial TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    client_id TEXT NOT NULL,
    source TEXT NOT NULL,
    refused BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (serial, client_id, source, refused)
);
CREATE INDEX connection_attempts_by_tenant ON connection_attempts (tenant, last_at);
