-- Onramp registry, PostgreSQL dialect. Times are Unix seconds.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
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
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_seen_at BIGINT,
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
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked')),
    issued_at BIGINT NOT NULL,
    revoked_at BIGINT,
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
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT,
    created_by TEXT NOT NULL
);
CREATE INDEX enrolment_tokens_by_tenant ON enrolment_tokens (tenant, created_at);

CREATE TABLE allowlist (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    serial_number TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, serial_number)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, id);

-- The audit log is append-only: the database itself refuses edits.
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE readiness_probe (
    id BIGINT PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
