-- A job's plan (the checked arguments the runner works from) gets a column of its own, so
-- `secrets` holds only credentials. Jobs stored before kept both in `secrets`
-- ({"preheat": ..., "secrets": ...}); split them.
ALTER TABLE jobs ADD COLUMN plan TEXT NOT NULL DEFAULT '{}';
UPDATE jobs
   SET plan = (secrets::jsonb -> 'preheat')::text,
       secrets = (secrets::jsonb -> 'secrets')::text
 WHERE jsonb_typeof(secrets::jsonb -> 'preheat') = 'object';
