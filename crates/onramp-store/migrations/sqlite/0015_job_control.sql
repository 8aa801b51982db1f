-- Operator control of a whole job. `rollout_paused` holds back every
-- release (paced or not) until the job is resumed; `rollout_ended` records
-- that a scheduled job's endTime stopped its rollout, so that neither a
-- release nor a continuous job's new members follow. A SCHEDULED job waits
-- in the status column for its startTime (kept in the job's configuration).
ALTER TABLE jobs ADD COLUMN rollout_paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rollout_ended INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_by_status ON jobs (status);
