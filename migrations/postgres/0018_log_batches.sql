-- archfarm schema, version 18: the last log batch an agent's lease stored for a build, so that a
-- batch sent again (a retry after a lost answer) or late (after a later one) is not appended
-- twice or out of order. Identical in sqlite/ and postgres/.
-- builds.log_batch_lease: the lease token of that batch; NULL when no numbered batch was stored
-- (every build before this version, and lines from agents that do not number their batches).
-- builds.log_batch_seq: its number; a lease numbers its batches 0, 1, 2, ...

ALTER TABLE builds ADD COLUMN log_batch_lease TEXT;
ALTER TABLE builds ADD COLUMN log_batch_seq BIGINT;
