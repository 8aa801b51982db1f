-- A device's policies are looked up on every connection. With the policy in
-- the index, the lookup by target is covering and the planner takes it
-- instead of scanning all of a tenant's attachments.
DROP INDEX policy_attachments_by_target;
CREATE INDEX policy_attachments_by_target ON policy_attachments (tenant, target_kind, target, policy);
