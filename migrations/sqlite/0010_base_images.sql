-- archfarm schema, version 10: the base images a job's Dockerfile names.
-- Identical in sqlite/ and postgres/.
-- jobs.base_images: a JSON array of resolved references (docker.io/library/golang:1.22) read from
-- the Dockerfile's FROM, COPY --from and RUN --mount=from= at submission, so a lease carries pull
-- credentials for their registries and no others; NULL when none (or unreadable, and for every
-- job before this version).

ALTER TABLE jobs ADD COLUMN base_images TEXT;
