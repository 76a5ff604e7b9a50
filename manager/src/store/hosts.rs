//! Schedulers and seed peers registered over gRPC: one row per address, `active` while they
//! keep alive, `inactive` once silent for three keepalive intervals.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now, rfc3339, Db, StoreError};

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `schedulers`
    Scheduler,
    /// `seed_peers`
    SeedPeer,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Scheduler => "schedulers",
            Kind::SeedPeer => "seed_peers",
        }
    }
}

/// A registered scheduler or seed peer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Member {
    /// Row ID.
    pub id: i64,
    /// Hostname.
    pub hostname: String,
    /// Address.
    pub ip: String,
    /// gRPC port (schedulers) or peer port (seed peers).
    pub port: i64,
    /// IDC.
    pub idc: String,
    /// Location.
    pub location: String,
    /// `active` or `inactive`.
    pub state: String,
    /// Its cluster.
    pub scheduler_cluster_id: i64,
    /// Last registration or keepalive.
    pub last_seen: String,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// What a scheduler or seed peer says about itself when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Hostname.
    pub hostname: String,
    /// Address.
    pub ip: String,
    /// Port.
    pub port: i64,
    /// IDC.
    pub idc: String,
    /// Location.
    pub location: String,
    /// Cluster.
    pub scheduler_cluster_id: i64,
}

fn member(r: &AnyRow) -> Result<Member, StoreError> {
    Ok(Member {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        ip: r.try_get("ip")?,
        port: r.try_get("port")?,
        idc: r.try_get("idc")?,
        location: r.try_get("location")?,
        state: r.try_get("state")?,
        scheduler_cluster_id: r.try_get("scheduler_cluster_id")?,
        last_seen: r.try_get("last_seen")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLUMNS: &str = "id, hostname, ip, port, idc, location, state, scheduler_cluster_id, last_seen, created_at, updated_at";

impl Db {
    /// Registers (or refreshes) a member at its address; it is active from now on.
    pub async fn register(&self, kind: Kind, r: &Registration) -> Result<Member, StoreError> {
        let t = now();
        let row = sqlx::query(&format!(
            "INSERT INTO {table} (hostname, ip, port, idc, location, state, scheduler_cluster_id, last_seen, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $7, $7) \
             ON CONFLICT (ip, port) DO UPDATE SET hostname = $1, idc = $4, location = $5, state = 'active', \
             scheduler_cluster_id = $6, last_seen = $7, updated_at = $7 RETURNING {COLUMNS}",
            table = kind.table()
        ))
        .bind(&r.hostname)
        .bind(&r.ip)
        .bind(r.port)
        .bind(&r.idc)
        .bind(&r.location)
        .bind(r.scheduler_cluster_id)
        .bind(&t)
        .fetch_one(&self.pool)
        .await?;
        member(&row)
    }

    /// Records a keepalive; false if nothing is registered at the address.
    pub async fn keepalive(&self, kind: Kind, ip: &str, port: i64) -> Result<bool, StoreError> {
        let t = now();
        let done = sqlx::query(&format!(
            "UPDATE {} SET state = 'active', last_seen = $1, updated_at = $1 WHERE ip = $2 AND port = $3",
            kind.table()
        ))
        .bind(&t)
        .bind(ip)
        .bind(port)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks members silent for longer than `ttl` inactive; returns how many turned.
    pub async fn expire_members(
        &self,
        kind: Kind,
        ttl: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let cutoff =
            rfc3339(chrono::Utc::now() - chrono::Duration::from_std(ttl).unwrap_or_default());
        let done = sqlx::query(&format!(
            "UPDATE {} SET state = 'inactive', updated_at = $1 WHERE state = 'active' AND last_seen < $2",
            kind.table()
        ))
        .bind(now())
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Members, optionally of one cluster and only active ones.
    pub async fn members(
        &self,
        kind: Kind,
        cluster: Option<i64>,
        active_only: bool,
    ) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {} WHERE ($1 = 0 OR scheduler_cluster_id = $1) AND ($2 = 0 OR state = 'active') ORDER BY id",
            kind.table()
        ))
        .bind(cluster.unwrap_or(0))
        .bind(i64::from(active_only))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member).collect()
    }
}
