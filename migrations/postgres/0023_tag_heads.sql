-- archfarm schema, version 23: tags only move forward (issue 18). Identical in sqlite/ and
-- postgres/.
--
-- A registry has no compare-and-set on tags, so the order of tag moves is kept here: one row per
-- tag stitching has moved (`registry/repository:tag`), with the job whose index it last got and
-- that job's order key (its created_at, ties broken by its id), and a short push lease that the
-- stitching attempt moving the tag holds (its stitch token) while it checks and pushes. A job
-- never moves a tag whose head is a newer job.
CREATE TABLE tag_heads (
    tag               TEXT PRIMARY KEY,
    head_job          TEXT,
    head_created_at   BIGINT,
    head_digest       TEXT,
    moved_at          BIGINT,
    lease_token       TEXT,
    lease_job         TEXT,
    lease_expires_at  BIGINT
);

-- When the job entered `stitching` (Unix ms), for the overall stitching deadline; it stays the
-- same when another replica takes the stitching over. NULL for jobs from before this version.
ALTER TABLE jobs ADD COLUMN stitch_started_at BIGINT;
