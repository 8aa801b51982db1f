-- The gateway looks for shadows written by other processes or nodes (the
-- CLI, another Onramp node) to publish their deltas; `writer` names the
-- process that wrote the row so a node skips its own writes.
ALTER TABLE shadows ADD COLUMN writer TEXT NOT NULL DEFAULT '';
CREATE INDEX shadows_by_update ON shadows (updated_at);
