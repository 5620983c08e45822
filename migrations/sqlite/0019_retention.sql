-- archfarm schema, version 19: retention (issue 18). Identical in sqlite/ and postgres/.
-- contexts.last_used_at: when the context was last uploaded, found by a client's HEAD or named by
-- a submitted job (Unix ms); a context no job names and unused for longer than --retention is
-- deleted. Rows from before this version count as used when they were stored.
ALTER TABLE contexts ADD COLUMN last_used_at BIGINT NOT NULL DEFAULT 0;
UPDATE contexts SET last_used_at = created_at;

-- The retention sweep finds ended jobs by when they ended, and whether a job still names a context.
CREATE INDEX jobs_by_finished ON jobs (finished_at);
CREATE INDEX jobs_by_context ON jobs (context);

-- The emulation estimate's history (`recent_durations`, read under the claim lock) walks one
-- repository's newest jobs; without this it scanned every job.
CREATE INDEX jobs_by_repository ON jobs (registry, repository, created_at);
