-- archfarm schema, version 4: join and API tokens created at run time, and revoked agents.
-- Identical in sqlite/ and postgres/. Tokens are stored only as hashes: `token_hash` is the hex
-- sha256 of the token, `cookie_hash` the hex sha256 of the dashboard cookie made from it.

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    scope         TEXT,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    cookie_hash   TEXT,
    hint          TEXT NOT NULL,
    expires_at    BIGINT,
    max_uses      BIGINT,
    uses          BIGINT NOT NULL DEFAULT 0,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX tokens_by_cookie ON tokens (cookie_hash);

ALTER TABLE agents ADD COLUMN revoked_at BIGINT;
