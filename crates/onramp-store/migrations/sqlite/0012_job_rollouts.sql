-- Paced rollouts: a job's targets wait here until the rollout releases
-- them. A release writes the executions, marks the targets released and
-- saves the rollout's state in one transaction, so a crash neither loses
-- nor repeats a release, and the pace survives a restart.
CREATE TABLE job_targets (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (tenant, job_id, thing_name)
);
CREATE INDEX job_targets_waiting ON job_targets (tenant, job_id, released_at);
ALTER TABLE jobs ADD COLUMN rollout_state TEXT;
