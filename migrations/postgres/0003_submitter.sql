-- Who submitted a job, as the client declared it (a CI user, or user@host), for the dashboard.
ALTER TABLE jobs ADD COLUMN submitter TEXT;
