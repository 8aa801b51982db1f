-- Identity changes that must cut live MQTT connections: a certificate
-- revoked or made inactive, a device that left the active state, a claim
-- certificate revoked, a registered CA deactivated or revoked.
--
-- Rows are written by triggers in the transaction that makes the change, so
-- no code path can forget them, and read by sequence number, never by time.
-- SQLite runs one write transaction at a time (across processes too), so
-- `seq` grows in commit order: a reader that remembers the last `seq` it
-- handled sees every change exactly once, however late it committed.
CREATE TABLE identity_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('certificate', 'device', 'claim', 'registered_ca')),
    thing_name TEXT,
    serial TEXT,
    ca_id TEXT,
    created_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);

CREATE TRIGGER identity_change_certificate AFTER UPDATE OF status ON certificates
WHEN NEW.status IN ('revoked', 'inactive') AND OLD.status = 'active'
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name, serial)
    VALUES (NEW.tenant, 'certificate', NEW.thing_name, NEW.serial);
END;

CREATE TRIGGER identity_change_device AFTER UPDATE OF status ON devices
WHEN NEW.status <> 'active' AND OLD.status <> NEW.status
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name)
    VALUES (NEW.tenant, 'device', NEW.thing_name);
END;

CREATE TRIGGER identity_change_claim AFTER UPDATE OF status ON claim_certificates
WHEN NEW.status = 'revoked' AND OLD.status <> 'revoked'
BEGIN
    INSERT INTO identity_changes (tenant, kind, serial)
    VALUES (NEW.tenant, 'claim', NEW.serial);
END;

CREATE TRIGGER identity_change_registered_ca AFTER UPDATE OF status ON registered_cas
WHEN NEW.status <> 'active' AND OLD.status = 'active'
BEGIN
    INSERT INTO identity_changes (tenant, kind, ca_id)
    VALUES (NEW.tenant, 'registered_ca', NEW.id);
END;

CREATE INDEX identity_changes_by_age ON identity_changes (created_at);
