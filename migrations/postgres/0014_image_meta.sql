-- archfarm schema, version 14: a job's labels and annotations (--label, --annotation).
-- Identical in sqlite/ and postgres/.
-- jobs.image_meta: JSON {"labels": {...}, "manifest_annotations": {...}, "index_annotations":
-- {...}}; NULL (every job before this version, and jobs without any) means none.

ALTER TABLE jobs ADD COLUMN image_meta TEXT;
