-- A job's plan (the checked arguments the runner works from) gets a column of its own, so
-- `secrets` holds only credentials. Jobs stored before kept both in `secrets`
-- ({"preheat": ..., "secrets": ...}); split them.
ALTER TABLE jobs ADD COLUMN plan TEXT NOT NULL DEFAULT '{}';
UPDATE jobs
   SET plan = json_extract(secrets, '$.preheat'),
       secrets = json_extract(secrets, '$.secrets')
 WHERE json_valid(secrets) AND json_type(secrets, '$.preheat') = 'object';
