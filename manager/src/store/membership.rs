//! Join tokens (a role, the SHA-256 of the secret, an expiry) and the members the CA issued
//! certificates to (the addresses an ID is bound to, and whether it is revoked).

use serde::Serialize;
use sqlx::Row;

use super::{now, Db, StoreError};

/// A join token as listed (never the secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JoinToken {
    /// Row ID.
    pub id: i64,
    /// The role it joins as.
    pub role: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// Creation time.
    pub created_at: String,
}

/// A member the CA issued a certificate to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IssuedMember {
    /// Its role.
    pub role: String,
    /// Its ID.
    pub member_id: String,
    /// The addresses its certificates name (comma-separated, sorted).
    pub ips: String,
    /// When its newest certificate expires.
    pub not_after: String,
    /// When it was revoked; empty if it is not.
    pub revoked_at: String,
}

impl Db {
    /// Stores a join token for `role`.
    pub async fn create_join_token(
        &self,
        role: &str,
        token_hash: &str,
        expires_at: &str,
    ) -> Result<JoinToken, StoreError> {
        let row = sqlx::query(
            "INSERT INTO join_tokens (role, token_hash, expires_at, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, role, expires_at, created_at",
        )
        .bind(role)
        .bind(token_hash)
        .bind(expires_at)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        join_token(&row)
    }

    /// Stores a join token given in the config (`ca.tokens_dir`), or moves its expiry to
    /// `expires_at` if it is stored already.
    pub async fn ensure_join_token(
        &self,
        role: &str,
        token_hash: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (role, token_hash, expires_at, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (token_hash) DO UPDATE SET expires_at = $3",
        )
        .bind(role)
        .bind(token_hash)
        .bind(expires_at)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The hashes of the unexpired join tokens of `role` (at most `limit`).
    pub async fn join_token_hashes(
        &self,
        role: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_hash FROM join_tokens WHERE role = $1 AND expires_at > $2 ORDER BY id LIMIT $3",
        )
        .bind(role)
        .bind(now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("token_hash").map_err(StoreError::from))
            .collect()
    }

    /// Every join token, oldest first.
    pub async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        let rows =
            sqlx::query("SELECT id, role, expires_at, created_at FROM join_tokens ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(join_token).collect()
    }

    /// The role of the unexpired token whose hash is `token_hash`.
    pub async fn join_token_role(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT role FROM join_tokens WHERE token_hash = $1 AND expires_at > $2")
                .bind(token_hash)
                .bind(now())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("role")).transpose()?)
    }

    /// Deletes join token `id`.
    pub async fn delete_join_token(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM join_tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("join token {id}")));
        }
        Ok(())
    }

    /// The member `role`/`id` if the CA issued it a certificate.
    pub async fn issued_member(
        &self,
        role: &str,
        id: &str,
    ) -> Result<Option<IssuedMember>, StoreError> {
        let row = sqlx::query(
            "SELECT role, member_id, ips, not_after, revoked_at FROM issued_members WHERE role = $1 AND member_id = $2",
        )
        .bind(role)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(issued).transpose()
    }

    /// Records that `role`/`id` got a certificate for `ips` valid until `not_after`.
    pub async fn record_issued(
        &self,
        role: &str,
        id: &str,
        ips: &str,
        not_after: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO issued_members (role, member_id, ips, not_after, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (role, member_id) DO UPDATE SET ips = $3, not_after = $4, updated_at = $5",
        )
        .bind(role)
        .bind(id)
        .bind(ips)
        .bind(not_after)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes `role`/`id`: no more certificates for it. NotFound if it never got one.
    pub async fn revoke_member(&self, role: &str, id: &str) -> Result<(), StoreError> {
        let t = now();
        let done = sqlx::query(
            "UPDATE issued_members SET revoked_at = $3, updated_at = $3 WHERE role = $1 AND member_id = $2",
        )
        .bind(role)
        .bind(id)
        .bind(&t)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("issued member {role} {id}")));
        }
        Ok(())
    }

    /// Forgets `role`/`id` (revoked or not): its ID may join again, from any address.
    pub async fn forget_member(&self, role: &str, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM issued_members WHERE role = $1 AND member_id = $2")
            .bind(role)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("issued member {role} {id}")));
        }
        Ok(())
    }

    /// Every member the CA issued to, by role and ID.
    pub async fn issued_members(&self) -> Result<Vec<IssuedMember>, StoreError> {
        let rows = sqlx::query(
            "SELECT role, member_id, ips, not_after, revoked_at FROM issued_members ORDER BY role, member_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(issued).collect()
    }
}

fn join_token(r: &sqlx::any::AnyRow) -> Result<JoinToken, StoreError> {
    Ok(JoinToken {
        id: r.try_get("id")?,
        role: r.try_get("role")?,
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
    })
}

fn issued(r: &sqlx::any::AnyRow) -> Result<IssuedMember, StoreError> {
    Ok(IssuedMember {
        role: r.try_get("role")?,
        member_id: r.try_get("member_id")?,
        ips: r.try_get("ips")?,
        not_after: r.try_get("not_after")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_tokens_expire_and_members_are_bound_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}/m.db", dir.path().display()))
            .await
            .unwrap();
        let later = super::super::rfc3339(chrono::Utc::now() + chrono::Duration::hours(1));
        let earlier = super::super::rfc3339(chrono::Utc::now() - chrono::Duration::hours(1));
        let t = db.create_join_token("peer", "h1", &later).await.unwrap();
        db.create_join_token("seed", "h2", &earlier).await.unwrap();
        assert_eq!(
            db.join_token_role("h1").await.unwrap().as_deref(),
            Some("peer")
        );
        assert_eq!(db.join_token_role("h2").await.unwrap(), None, "expired");
        assert_eq!(db.join_token_role("nope").await.unwrap(), None);
        assert_eq!(db.join_tokens().await.unwrap().len(), 2);
        assert_eq!(
            db.join_token_hashes("peer", 10).await.unwrap(),
            vec!["h1".to_owned()]
        );
        assert!(
            db.join_token_hashes("seed", 10).await.unwrap().is_empty(),
            "expired"
        );
        db.ensure_join_token("seed", "h2", &later).await.unwrap();
        assert_eq!(
            db.join_token_role("h2").await.unwrap().as_deref(),
            Some("seed"),
            "renewed"
        );
        assert_eq!(db.join_tokens().await.unwrap().len(), 2, "not duplicated");
        db.delete_join_token(t.id).await.unwrap();
        assert_eq!(db.join_token_role("h1").await.unwrap(), None, "deleted");
        assert!(db.delete_join_token(t.id).await.is_err());

        assert_eq!(db.issued_member("peer", "n1").await.unwrap(), None);
        db.record_issued("peer", "n1", "10.0.0.1", &later)
            .await
            .unwrap();
        db.record_issued("peer", "n1", "10.0.0.1", &later)
            .await
            .unwrap();
        let m = db.issued_member("peer", "n1").await.unwrap().unwrap();
        assert_eq!((m.ips.as_str(), m.revoked_at.as_str()), ("10.0.0.1", ""));
        db.revoke_member("peer", "n1").await.unwrap();
        assert!(!db
            .issued_member("peer", "n1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_empty());
        assert!(db.revoke_member("peer", "n2").await.is_err());
        db.forget_member("peer", "n1").await.unwrap();
        assert_eq!(db.issued_members().await.unwrap(), vec![]);
    }
}
