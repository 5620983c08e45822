-- Names of build arguments whose values are secret (a JSON list; NULL when none): shown as
-- [redacted] in the job and hidden in build logs. Registry credentials are never stored.
ALTER TABLE jobs ADD COLUMN secret_build_args TEXT;
