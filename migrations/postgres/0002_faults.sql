-- archfarm schema, version 2: optional platforms, job time limits and warnings, scheduling decisions,
-- when a build (re)entered the queue, and draining agents. Identical in sqlite/ and postgres/.

ALTER TABLE jobs ADD COLUMN optional_platforms TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN timeout_secs BIGINT NOT NULL DEFAULT 7200;
ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';

ALTER TABLE builds ADD COLUMN optional BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN decision TEXT;
ALTER TABLE builds ADD COLUMN queued_at BIGINT NOT NULL DEFAULT 0;

ALTER TABLE agents ADD COLUMN draining BIGINT NOT NULL DEFAULT 0;
