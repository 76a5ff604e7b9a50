//! Image tags as their last successful preheat resolved them (tag → manifest or index
//! digest): what a peer asks for when it pulls a preheated image by tag while the registry is
//! down. One row per (registry, repository, tag), replaced by every newer preheat.

use sqlx::Row;

use super::{now, Db, StoreError};

/// A tag's resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTag {
    /// `host[:port]` as the manifest URL named it.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// `sha256:…` of the manifest or index.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

impl Db {
    /// Records (or replaces) what `t.tag` names, as found by job `job_id`.
    pub async fn record_image_tag(&self, t: &ImageTag, job_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO image_tags (registry, repository, tag, digest, media_type, job_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (registry, repository, tag) DO UPDATE SET digest = excluded.digest, \
             media_type = excluded.media_type, job_id = excluded.job_id, updated_at = excluded.updated_at",
        )
        .bind(&t.registry)
        .bind(&t.repository)
        .bind(&t.tag)
        .bind(&t.digest)
        .bind(&t.media_type)
        .bind(job_id)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What `registry/repository:tag` named at its last successful preheat, and when.
    pub async fn image_tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(ImageTag, String), StoreError> {
        let row = sqlx::query(
            "SELECT digest, media_type, updated_at FROM image_tags WHERE registry = $1 AND repository = $2 AND tag = $3",
        )
        .bind(registry)
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!("a preheat of {registry}/{repository}:{tag}"))
        })?;
        Ok((
            ImageTag {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                tag: tag.to_owned(),
                digest: row.try_get("digest")?,
                media_type: row.try_get("media_type")?,
            },
            row.try_get("updated_at")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_preheat_replaces_the_tag() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .unwrap();
        let mut t = ImageTag {
            registry: "r:5000".into(),
            repository: "app".into(),
            tag: "v1".into(),
            digest: "sha256:aa".into(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
        };
        assert!(matches!(
            db.image_tag("r:5000", "app", "v1").await,
            Err(StoreError::NotFound(_))
        ));
        db.record_image_tag(&t, 1).await.unwrap();
        t.digest = "sha256:bb".into();
        db.record_image_tag(&t, 2).await.unwrap();
        let (got, _) = db.image_tag("r:5000", "app", "v1").await.unwrap();
        assert_eq!(got, t);
        assert!(db.image_tag("r:5000", "app", "v2").await.is_err());
    }
}
