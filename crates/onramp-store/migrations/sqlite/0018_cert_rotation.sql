-- Certificate rotation that keeps the thing: a device asks for a new
-- certificate with its current one. The new certificate waits here,
-- bound to the thing, until the device first connects with it; it then
-- moves into `certificates` as active and the old one is superseded, to be
-- revoked when the grace period ends. A pending certificate never used, or
-- replaced by a newer request, is recorded in `certificates` as revoked.
CREATE TABLE certificate_rotations (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    old_serial TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rotation', 'renewal_after_expiry')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'replaced', 'expired')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    activated_at INTEGER,
    revoke_old_at INTEGER,
    old_revoked_at INTEGER
);
CREATE INDEX certificate_rotations_by_thing ON certificate_rotations (tenant, thing_name, status);
CREATE INDEX certificate_rotations_by_expiry ON certificate_rotations (status, expires_at);
CREATE INDEX certificate_rotations_by_grace ON certificate_rotations (status, revoke_old_at);

-- A superseded certificate revoked (a rotation's grace period ended) and a
-- certificate recorded already revoked (a pending rotation expired) move the
-- identity-change sequence too, so CRLs are re-signed and connections cut.
CREATE TRIGGER identity_change_certificate_superseded AFTER UPDATE OF status ON certificates
WHEN NEW.status = 'revoked' AND OLD.status = 'superseded'
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name, serial)
    VALUES (NEW.tenant, 'certificate', NEW.thing_name, NEW.serial);
END;

CREATE TRIGGER identity_change_certificate_inserted_revoked AFTER INSERT ON certificates
WHEN NEW.status = 'revoked'
BEGIN
    INSERT INTO identity_changes (tenant, kind, thing_name, serial)
    VALUES (NEW.tenant, 'certificate', NEW.thing_name, NEW.serial);
END;
