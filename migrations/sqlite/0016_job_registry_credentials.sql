-- archfarm schema, version 16: the pipeline's own registry credentials a job sends
-- (`archfarm build` reads them from the pipeline's docker config). Identical in sqlite/ and
-- postgres/.
-- One row per job and registry, sealed with AES-256-GCM under the coordinators' key
-- (--job-credential-key; key_id says which key, never the key), only while the job is live:
-- deleted in the transaction that ends the job and by the sweep that deletes build secrets
-- (see coordinator/src/job_credentials.rs and store/job_credentials.rs).
CREATE TABLE job_registry_credentials (
    job_id    TEXT NOT NULL,
    registry  TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    sealed    TEXT NOT NULL,
    PRIMARY KEY (job_id, registry)
);
