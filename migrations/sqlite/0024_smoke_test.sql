-- archfarm schema, version 24 (numbered after 23, which landed first): a job's smoke test (archfarm build --smoke-test, issue 19).
-- Identical in sqlite/ and postgres/.
-- jobs.smoke_test: JSON {"command": ["sh", "-c", "..."], "timeout_secs": 300}, the command each
-- platform's built image runs on its agent before the push; NULL (every job before this version,
-- and jobs without one) means none.

ALTER TABLE jobs ADD COLUMN smoke_test TEXT;
