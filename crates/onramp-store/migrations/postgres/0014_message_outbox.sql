-- Messages one node publishes that devices on every node must receive
-- (job notifications caused by the operator or the scheduler). Each node
-- publishes to its own connections and writes the message here; the other
-- nodes read the table by position, as they read identity_changes: by
-- transaction id with the snapshot's xmin as the floor, so a message whose
-- transaction commits late is still delivered, once.
CREATE TABLE message_outbox (
    seq BIGSERIAL PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::TEXT::BIGINT),
    tenant TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    origin TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX message_outbox_by_txid ON message_outbox (txid);
CREATE INDEX message_outbox_by_age ON message_outbox (created_at);
