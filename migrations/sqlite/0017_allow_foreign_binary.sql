-- archfarm schema, version 17: the paths a job allows to hold binaries for another architecture
-- (--allow-foreign-binary GLOB), which agents leave out of the binary check.
-- Identical in sqlite/ and postgres/.
-- jobs.allow_foreign_binary: JSON list of globs; NULL (every job before this version, and jobs
-- without any) means none: every ELF executable and shared object is checked.

ALTER TABLE jobs ADD COLUMN allow_foreign_binary TEXT;
