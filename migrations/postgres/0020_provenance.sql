-- archfarm schema, version 20: provenance (issue 19). Identical in sqlite/ and postgres/.
-- agents.host: JSON {"machine": "x86_64", "cpu_model": "..."} the agent reported at
--   registration; NULL for agents from before this version.
-- builds.builder_host: the building agent's host, copied when the build completes, so the
--   provenance names the machine that built it even after the agent is forgotten or moves.
-- jobs.attest_to: where the job's provenance goes, 'index', 'referrers' or 'none'; NULL (jobs
--   from before this version) means none, so they stitch as they would have.
-- jobs.provenance: JSON list of the in-toto statements pushed with the index, set when the job
--   succeeds; NULL when none were made.

ALTER TABLE agents ADD COLUMN host TEXT;
ALTER TABLE builds ADD COLUMN builder_host TEXT;
ALTER TABLE jobs ADD COLUMN attest_to TEXT;
ALTER TABLE jobs ADD COLUMN provenance TEXT;
