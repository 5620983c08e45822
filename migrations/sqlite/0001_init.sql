-- archfarm schema, version 1. Kept identical in migrations/sqlite and migrations/postgres:
-- only TEXT and BIGINT columns, timestamps as Unix milliseconds, ids as UUID text, lists as JSON text.

CREATE TABLE contexts (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE agents (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    token_hash          TEXT NOT NULL UNIQUE,
    instance_id         TEXT,
    native_platforms    TEXT NOT NULL,
    emulated_platforms  TEXT NOT NULL,
    capacity            BIGINT NOT NULL,
    version             TEXT,
    registered_at       BIGINT NOT NULL,
    last_seen           BIGINT NOT NULL
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    state             TEXT NOT NULL,
    context           TEXT NOT NULL REFERENCES contexts (digest),
    dockerfile        TEXT NOT NULL,
    build_args        TEXT NOT NULL,
    target            TEXT,
    emulation         TEXT NOT NULL,
    tags              TEXT NOT NULL,
    platforms         TEXT NOT NULL,
    registry          TEXT NOT NULL,
    repository        TEXT NOT NULL,
    index_digest      TEXT,
    index_media_type  TEXT,
    error             TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    finished_at       BIGINT
);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE builds (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL REFERENCES jobs (id),
    position          BIGINT NOT NULL,
    platform          TEXT NOT NULL,
    state             TEXT NOT NULL,
    agent_id          TEXT,
    agent_name        TEXT,
    mode              TEXT,
    lease_token       TEXT,
    lease_expires_at  BIGINT,
    digest            TEXT,
    media_type        TEXT,
    size              BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    error             TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);
CREATE INDEX builds_by_state ON builds (state, created_at);
CREATE INDEX builds_by_job ON builds (job_id, position);
CREATE INDEX builds_by_agent ON builds (agent_id, state);
