-- archfarm schema, version 11: a job's registry caches and cache switches.
-- Identical in sqlite/ and postgres/.
-- jobs.cache: JSON {"to": [CacheRef], "from": [CacheRef], "no_cache": bool, "pull": bool}, the
-- job's --cache-to/--cache-from (or the coordinator's default), --no-cache and --pull; NULL (every
-- job before this version) means none of them.

ALTER TABLE jobs ADD COLUMN cache TEXT;
