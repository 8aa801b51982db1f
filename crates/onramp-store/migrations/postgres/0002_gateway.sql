-- Device gateway: policies, their attachments, retained messages, connection state.
CREATE TABLE policies (
    tenant TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    document TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- target_kind is 'device' (target = thing name) or 'class' (target = device class).
CREATE TABLE policy_attachments (
    tenant TEXT NOT NULL,
    policy TEXT NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('device', 'class')),
    target TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, policy, target_kind, target),
    FOREIGN KEY (tenant, policy) REFERENCES policies (tenant, name)
);
CREATE INDEX policy_attachments_by_target ON policy_attachments (tenant, target_kind, target);

CREATE TABLE retained_messages (
    tenant TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BYTEA NOT NULL,
    qos BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, topic)
);

ALTER TABLE devices ADD COLUMN connected BIGINT NOT NULL DEFAULT 0;
CREATE INDEX certificates_by_revocation ON certificates (revoked_at);
CREATE INDEX devices_by_update ON devices (updated_at);
