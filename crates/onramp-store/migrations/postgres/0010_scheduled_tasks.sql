-- Periodic housekeeping shared by every node on one database. A node runs a
-- task only after winning its row: the task must be due (`last_run_at` at
-- least one period ago) and no other node may hold an unexpired lease. A
-- node that dies while running leaves its lease to expire, and another node
-- then takes the task over.
CREATE TABLE scheduled_tasks (
    name TEXT PRIMARY KEY,
    holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_run_at BIGINT NOT NULL DEFAULT 0
);
