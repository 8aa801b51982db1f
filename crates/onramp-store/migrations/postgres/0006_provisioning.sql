-- Fleet provisioning by claim and just-in-time provisioning.

-- Certificates gain the 'inactive' status and the registered CA that issued them.
ALTER TABLE certificates DROP CONSTRAINT IF EXISTS certificates_status_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_status_check
    CHECK (status IN ('active', 'superseded', 'revoked', 'inactive'));
ALTER TABLE certificates ADD COLUMN issuer_ca TEXT;
CREATE INDEX certificates_by_issuer_ca ON certificates (issuer_ca);

ALTER TABLE devices ADD COLUMN thing_groups TEXT NOT NULL DEFAULT '[]';

CREATE TABLE provisioning_templates (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('fleet', 'jitp')),
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL,
    default_version BIGINT NOT NULL,
    latest_version BIGINT NOT NULL,
    serial_allow TEXT,
    serial_deny TEXT NOT NULL DEFAULT '[]',
    hook_url TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE provisioning_template_versions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version),
    FOREIGN KEY (tenant, name) REFERENCES provisioning_templates (tenant, name)
);

CREATE TABLE claim_certificates (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    template TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    created_by TEXT NOT NULL,
    replaced_by TEXT
);
CREATE INDEX claim_certificates_by_expiry ON claim_certificates (status, not_after);

CREATE TABLE pending_certificates (
    serial TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    claim_serial TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    token_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    registered_at BIGINT,
    request_digest TEXT,
    response TEXT
);
CREATE INDEX pending_certificates_by_expiry ON pending_certificates (token_expires_at);

CREATE TABLE registered_cas (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(id),
    pem TEXT NOT NULL,
    subject TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'revoked')),
    auto_registration BIGINT NOT NULL,
    template TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
