-- archfarm schema, version 6: what several coordinators on one database must share. Identical in
-- sqlite/ and postgres/ but for the byte column type (BLOB here, BYTEA in PostgreSQL).

-- Context archives in pieces of 1 MiB (the last one shorter). A context is whole when its
-- `contexts` row exists and all ceil(size / 1 MiB) pieces do; the row is written after the pieces.
-- The data directory is a cache.
CREATE TABLE context_chunks (
    digest  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (digest, seq)
);

-- Build logs as the batches agents reported them; `builds.log_bytes` is the log's length and the
-- compare-and-set that orders appends.
CREATE TABLE log_chunks (
    build_id      TEXT NOT NULL,
    start_offset  BIGINT NOT NULL,
    end_offset    BIGINT NOT NULL,
    data          BYTEA NOT NULL,
    PRIMARY KEY (build_id, start_offset)
);
CREATE INDEX log_chunks_by_end ON log_chunks (build_id, end_offset);
ALTER TABLE builds ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;

-- Every lease ever granted, with the replica that granted it: the record that shows a build was
-- never held twice at once, and where a build went.
CREATE TABLE leases (
    token       TEXT PRIMARY KEY,
    build_id    TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    agent_name  TEXT NOT NULL,
    mode        TEXT NOT NULL,
    replica     TEXT NOT NULL,
    granted_at  BIGINT NOT NULL
);
CREATE INDEX leases_by_build ON leases (build_id, granted_at);

-- Stitching is leased too: one replica stitches a job, and another takes over only when that
-- lease lapses (its replica died).
ALTER TABLE jobs ADD COLUMN stitch_owner TEXT;
-- Fences one stitching attempt: renewing, letting go and recording the outcome need it.
ALTER TABLE jobs ADD COLUMN stitch_token TEXT;
ALTER TABLE jobs ADD COLUMN stitch_expires_at BIGINT;
ALTER TABLE jobs ADD COLUMN stitch_attempts BIGINT NOT NULL DEFAULT 0;
