-- Signed OTA artifacts. Only public keys are stored: the signing keys stay
-- on the build machine. Artifacts are named by the SHA-256 of their bytes;
-- the bytes themselves live in the data directory's artifacts/ folder.
CREATE TABLE artifact_signers (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE artifacts (
    tenant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    signer TEXT,
    signature TEXT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, sha256)
);
