-- archfarm schema, version 13: which agent last built each repository and platform, so that the
-- scheduler can prefer the agent whose layer cache is warm. Identical in sqlite/ and postgres/.
-- One row per (registry, repository, platform), replaced by every successful build of it (in the
-- statement's transaction); rows older than the scheduler's recency window are deleted.
CREATE TABLE warm_agents (
    registry    TEXT NOT NULL,
    repository  TEXT NOT NULL,
    platform    TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    built_at    BIGINT NOT NULL,
    PRIMARY KEY (registry, repository, platform)
);
CREATE INDEX warm_agents_by_age ON warm_agents (built_at);
