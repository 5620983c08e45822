-- Build secrets (`archfarm build --secret`). Identical in sqlite/ and postgres/.

-- The values, only while their job may still lease a build: deleted in the same transaction that
-- ends the job, and by a sweep that deletes those of any job that is no longer live (see
-- store/secrets.rs). Several replicas share them through this table.
CREATE TABLE job_secrets (
    job_id  TEXT NOT NULL,
    id      TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
);

-- The ids, kept for good so a finished job still shows which secrets it had (a JSON list; NULL
-- when none).
ALTER TABLE jobs ADD COLUMN secret_ids TEXT;
