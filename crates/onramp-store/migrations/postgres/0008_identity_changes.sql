-- Identity changes that must cut live MQTT connections: a certificate
-- revoked or made inactive, a device that left the active state, a claim
-- certificate revoked, a registered CA deactivated or revoked.
--
-- Rows are written by triggers in the transaction that makes the change, so
-- no code path can forget them, and read by position, never by time. On
-- PostgreSQL a sequence number is drawn when a row is written, not when it
-- commits, so `seq` alone can commit out of order. Each row therefore also
-- carries its transaction id: every transaction older than the oldest one
-- still running (the snapshot's xmin) has finished, so a reader that has
-- handled all rows below some xmin never needs to look below it again, and
-- rows above it are handled as they appear and remembered until xmin passes.
CREATE TABLE identity_changes (
    seq BIGSERIAL PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::TEXT::BIGINT),
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('certificate', 'device', 'claim', 'registered_ca')),
    thing_name TEXT,
    serial TEXT,
    ca_id TEXT,
    created_at BIGINT NOT NULL DEFAULT (EXTRACT(EPOCH FROM now())::BIGINT)
);
CREATE INDEX identity_changes_by_txid ON identity_changes (txid);
CREATE INDEX identity_changes_by_age ON identity_changes (created_at);

CREATE FUNCTION identity_change_certificate() RETURNS trigger AS $$
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name, serial)
    VALUES (NEW.tenant, 'certificate', NEW.thing_name, NEW.serial);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER identity_change_certificate AFTER UPDATE OF status ON certificates
FOR EACH ROW WHEN (NEW.status IN ('revoked', 'inactive') AND OLD.status = 'active')
EXECUTE FUNCTION identity_change_certificate();

CREATE FUNCTION identity_change_device() RETURNS trigger AS $$
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name)
    VALUES (NEW.tenant, 'device', NEW.thing_name);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER identity_change_device AFTER UPDATE OF status ON devices
FOR EACH ROW WHEN (NEW.status <> 'active' AND OLD.status <> NEW.status)
EXECUTE FUNCTION identity_change_device();

CREATE FUNCTION identity_change_claim() RETURNS trigger AS $$
BEGIN
    INSERT INTO identity_changes (tenant, kind, serial)
    VALUES (NEW.tenant, 'claim', NEW.serial);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER identity_change_claim AFTER UPDATE OF status ON claim_certificates
FOR EACH ROW WHEN (NEW.status = 'revoked' AND OLD.status <> 'revoked')
EXECUTE FUNCTION identity_change_claim();

CREATE FUNCTION identity_change_registered_ca() RETURNS trigger AS $$
BEGIN
    INSERT INTO identity_changes (tenant, kind, ca_id)
    VALUES (NEW.tenant, 'registered_ca', NEW.id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER identity_change_registered_ca AFTER UPDATE OF status ON registered_cas
FOR EACH ROW WHEN (NEW.status <> 'active' AND OLD.status = 'active')
EXECUTE FUNCTION identity_change_registered_ca();
