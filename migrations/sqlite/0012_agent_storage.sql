-- archfarm schema, version 12: each agent's build storage, and why it takes no builds on its own.
-- Identical in sqlite/ and postgres/.
-- agents.storage_driver: overlay or vfs, as the agent registered it; NULL for agents that did not say.
-- agents.storage_used_bytes / storage_limit_bytes: its stores' size and --max-storage, as its last
-- lease call reported them; NULL until it reports.
-- agents.unavailable: why the agent takes no builds now (its disk is full), set and cleared by its
-- own lease calls; NULL when it takes builds.

ALTER TABLE agents ADD COLUMN storage_driver TEXT;
ALTER TABLE agents ADD COLUMN storage_used_bytes BIGINT;
ALTER TABLE agents ADD COLUMN storage_limit_bytes BIGINT;
ALTER TABLE agents ADD COLUMN unavailable TEXT;
