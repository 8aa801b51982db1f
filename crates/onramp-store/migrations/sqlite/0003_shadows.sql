-- Device shadows. A deleted shadow keeps its row (document NULL) so that its
-- version numbering continues when it is created again.
CREATE TABLE shadows (
    tenant TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    document TEXT,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, thing_name, shadow_name)
);

CREATE TABLE shadow_history (
    tenant TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    document TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (tenant, thing_name, shadow_name, version)
);
CREATE INDEX shadow_history_by_time ON shadow_history (at);
