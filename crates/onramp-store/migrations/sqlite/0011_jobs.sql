-- Jobs and their executions. An execution is stored as the domain's JSON
-- document beside the columns that queries need (the thing's pending
-- executions, a job's executions by status, overdue timers); `version` is
-- the compare-and-set guard, so concurrent updates of one execution never
-- lose one.
CREATE TABLE jobs (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    description TEXT,
    document TEXT NOT NULL,
    config TEXT NOT NULL,
    targets TEXT NOT NULL,
    target_selection TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (tenant, job_id)
);

CREATE TABLE job_executions (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    execution_number BIGINT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    queued_at BIGINT NOT NULL,
    deadline BIGINT,
    execution TEXT NOT NULL,
    PRIMARY KEY (tenant, job_id, thing_name, execution_number)
);
CREATE INDEX job_executions_by_thing ON job_executions (tenant, thing_name, status);
CREATE INDEX job_executions_by_job ON job_executions (tenant, job_id, status, deadline);
CREATE INDEX job_executions_by_deadline ON job_executions (deadline);
