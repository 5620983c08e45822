-- archfarm schema, version 15: the size of a job's pushed index, for the descriptor
-- `archfarm build --metadata-file` writes (buildx's containerimage.descriptor).
-- Identical in sqlite/ and postgres/. NULL for jobs before this version and unfinished ones.

ALTER TABLE jobs ADD COLUMN index_size BIGINT;
