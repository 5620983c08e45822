-- archfarm schema, version 8: the repository patterns a `submit` token's jobs may push to.
-- Identical in sqlite/ and postgres/. A JSON array of `REGISTRY/REPOSITORY` patterns; NULL (every
-- token made before this version) means the token is not limited. (Version 7 is taken by a
-- change being made alongside this one.)

ALTER TABLE tokens ADD COLUMN repositories TEXT;
