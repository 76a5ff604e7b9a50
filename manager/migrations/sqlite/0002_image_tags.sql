-- What each image tag named at its last successful preheat (tag -> manifest or index digest),
-- so peers can pull a preheated image by tag while its registry is down.
CREATE TABLE image_tags (
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    job_id BIGINT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (registry, repository, tag)
);
