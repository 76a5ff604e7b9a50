//! Scheduler clusters: a name, whether it is the default, the scopes that decide which peers
//! it serves (IDC, location prefix, CIDRs, hostname patterns) and its settings.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_col, now, Db, StoreError};

/// Which peers a cluster serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Scopes {
    /// IDC the peers are in.
    pub idc: String,
    /// `|`-separated location prefix.
    pub location: String,
    /// Peer address ranges, e.g. `10.0.0.0/8`.
    pub cidrs: Vec<String>,
    /// Hostname regular expressions.
    pub hostnames: Vec<String>,
}

/// Cluster settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Preheat jobs accepted per second for this cluster (429 beyond).
    pub job_rate_limit: u32,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig { job_rate_limit: 10 }
    }
}

/// A scheduler cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cluster {
    /// Row ID.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub bio: String,
    /// Serves peers no other cluster's scopes match.
    pub is_default: bool,
    /// Which peers it serves.
    pub scopes: Scopes,
    /// Settings.
    pub config: ClusterConfig,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// Fields of a new or changed cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterFields {
    /// Name.
    pub name: String,
    /// Free text.
    pub bio: String,
    /// Default cluster.
    pub is_default: bool,
    /// Scopes.
    pub scopes: Scopes,
    /// Settings.
    pub config: ClusterConfig,
}

fn cluster(r: &AnyRow) -> Result<Cluster, StoreError> {
    Ok(Cluster {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        bio: r.try_get("bio")?,
        is_default: r.try_get::<i64, _>("is_default")? != 0,
        scopes: json_col(r, "scopes")?,
        config: json_col(r, "config")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLUMNS: &str = "id, name, bio, is_default, scopes, config, created_at, updated_at";

impl Db {
    /// Adds a cluster; a default cluster takes the default from any other.
    pub async fn create_cluster(&self, f: &ClusterFields) -> Result<Cluster, StoreError> {
        let mut tx = self.pool.begin().await?;
        if f.is_default {
            sqlx::query("UPDATE scheduler_clusters SET is_default = 0")
                .execute(&mut *tx)
                .await?;
        }
        let t = now();
        let row = sqlx::query(&format!(
            "INSERT INTO scheduler_clusters (name, bio, is_default, scopes, config, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {COLUMNS}"
        ))
        .bind(&f.name)
        .bind(&f.bio)
        .bind(i64::from(f.is_default))
        .bind(serde_json::to_string(&f.scopes).expect("scopes serialize"))
        .bind(serde_json::to_string(&f.config).expect("config serialize"))
        .bind(&t)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, || format!("cluster {:?} exists", f.name)))?;
        let c = cluster(&row)?;
        tx.commit().await?;
        Ok(c)
    }

    /// Replaces a cluster's fields.
    pub async fn update_cluster(&self, id: i64, f: &ClusterFields) -> Result<Cluster, StoreError> {
        let mut tx = self.pool.begin().await?;
        if f.is_default {
            sqlx::query("UPDATE scheduler_clusters SET is_default = 0 WHERE id <> $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "UPDATE scheduler_clusters SET name = $1, bio = $2, is_default = $3, scopes = $4, config = $5, updated_at = $6 \
             WHERE id = $7 RETURNING {COLUMNS}"
        ))
        .bind(&f.name)
        .bind(&f.bio)
        .bind(i64::from(f.is_default))
        .bind(serde_json::to_string(&f.scopes).expect("scopes serialize"))
        .bind(serde_json::to_string(&f.config).expect("config serialize"))
        .bind(now())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, || format!("cluster {:?} exists", f.name)))?;
        let c = row
            .as_ref()
            .map(cluster)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("cluster {id}")))?;
        tx.commit().await?;
        Ok(c)
    }

    /// One cluster.
    pub async fn cluster(&self, id: i64) -> Result<Cluster, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM scheduler_clusters WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(cluster)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("cluster {id}")))
    }

    /// Every cluster, oldest first.
    pub async fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM scheduler_clusters ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cluster).collect()
    }

    /// Deletes a cluster (its schedulers and seed peers go with it).
    pub async fn delete_cluster(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM scheduler_clusters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("cluster {id}")));
        }
        Ok(())
    }

    /// The default cluster, created (`cluster-1`) if there is none.
    pub async fn default_cluster(&self) -> Result<Cluster, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM scheduler_clusters WHERE is_default = 1 ORDER BY id LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return cluster(&r);
        }
        match self
            .create_cluster(&ClusterFields {
                name: "cluster-1".into(),
                bio: "default cluster".into(),
                is_default: true,
                ..Default::default()
            })
            .await
        {
            Err(StoreError::Conflict(_)) => {
                // Another manager created it meanwhile, or cluster-1 exists without the flag.
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM scheduler_clusters WHERE is_default = 1 OR name = 'cluster-1' ORDER BY is_default DESC, id LIMIT 1"
                ))
                .fetch_one(&self.pool)
                .await?;
                cluster(&row)
            }
            other => other,
        }
    }
}
