-- Onramp registry, SQLite dialect. Times are Unix seconds.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
INSERT INTO tenants (id, created_at) VALUES ('default', 0);

CREATE TABLE devices (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    thing_name TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    device_class TEXT,
    hardware_revision TEXT,
    firmware_version TEXT,
    firmware_key TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'suspended', 'decommissioned')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    PRIMARY KEY (tenant, thing_name),
    UNIQUE (tenant, serial_number)
);
CREATE INDEX devices_by_status ON devices (tenant, status, thing_name);
CREATE INDEX devices_by_firmware ON devices (tenant, firmware_key);

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked')),
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revocation_reason TEXT,
    superseded_by TEXT,
    FOREIGN KEY (tenant, thing_name) REFERENCES devices (tenant, thing_name)
);
CREATE INDEX certificates_by_thing ON certificates (tenant, thing_name);
CREATE INDEX certificates_by_expiry ON certificates (status, not_after);

CREATE TABLE enrolment_tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    token_hash TEXT NOT NULL UNIQUE,
    serial_number TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT NOT NULL
);
CREATE INDEX enrolment_tokens_by_tenant ON enrolment_tokens (tenant, created_at);

CREATE TABLE allowlist (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    serial_number TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, serial_number)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, id);

-- The audit log is append-only: the database itself refuses edits.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TABLE readiness_probe (
    id INTEGER PRIMARY KEY,
    checked_at INTEGER NOT NULL
);
