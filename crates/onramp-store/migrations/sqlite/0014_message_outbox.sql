-- Messages one node publishes that devices on every node must receive
-- (job notifications caused by the operator or the scheduler). Writes are
-- serialised on SQLite, so sequence order is commit order.
CREATE TABLE message_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    origin TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX message_outbox_by_age ON message_outbox (created_at);
