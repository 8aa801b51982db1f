-- Fleet provisioning by claim and just-in-time provisioning.

-- Certificates gain the 'inactive' status (a template may register a
-- certificate switched off) and the registered CA that issued them. SQLite
-- cannot alter a CHECK constraint, so the table is rebuilt.
CREATE TABLE certificates_v6 (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked', 'inactive')),
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revocation_reason TEXT,
    superseded_by TEXT,
    issuer_ca TEXT,
    FOREIGN KEY (tenant, thing_name) REFERENCES devices (tenant, thing_name)
);
INSERT INTO certificates_v6 (serial, tenant, thing_name, fingerprint, pem, not_before, not_after,
    status, issued_at, revoked_at, revocation_reason, superseded_by)
SELECT serial, tenant, thing_name, fingerprint, pem, not_before, not_after,
    status, issued_at, revoked_at, revocation_reason, superseded_by FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_v6 RENAME TO certificates;
CREATE INDEX certificates_by_thing ON certificates (tenant, thing_name, status);
CREATE INDEX certificates_by_expiry ON certificates (status, not_after);
CREATE INDEX certificates_by_revocation ON certificates (revoked_at);
CREATE INDEX certificates_by_issuer_ca ON certificates (issuer_ca);

ALTER TABLE devices ADD COLUMN thing_groups TEXT NOT NULL DEFAULT '[]';

CREATE TABLE provisioning_templates (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('fleet', 'jitp')),
    description TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL,
    default_version INTEGER NOT NULL,
    latest_version INTEGER NOT NULL,
    serial_allow TEXT,
    serial_deny TEXT NOT NULL DEFAULT '[]',
    hook_url TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE provisioning_template_versions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES provisioning_templates (tenant, name)
);

CREATE TABLE claim_certificates (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    template TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    created_by TEXT NOT NULL,
    replaced_by TEXT
);
CREATE INDEX claim_certificates_by_expiry ON claim_certificates (status, not_after);

-- Certificates handed out by CreateKeysAndCertificate / CreateCertificateFromCsr.
-- They cannot connect until RegisterThing moves them into `certificates`;
-- the row stays until the ownership token expires so that a retried
-- RegisterThing gets the same reply.
CREATE TABLE pending_certificates (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    claim_serial TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    token_expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    registered_at INTEGER,
    request_digest TEXT,
    response TEXT
);
CREATE INDEX pending_certificates_by_expiry ON pending_certificates (token_expires_at);

CREATE TABLE registered_cas (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    pem TEXT NOT NULL,
    subject TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'revoked')),
    auto_registration INTEGER NOT NULL,
    template TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
