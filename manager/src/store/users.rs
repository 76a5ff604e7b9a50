//! Users (root or read-only guest) and their console sessions. Passwords are stored as argon2 hashes (see `auth`),
//! session tokens only as SHA-256 hashes.

use serde::Serialize;
use sqlx::Row;

use super::{now, Db, StoreError};

/// What a user may do.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, users included.
    Root,
    /// Read only (the console's lists and job results; no job, cluster or user changes).
    Guest,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Guest => "guest",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "root" => Some(Role::Root),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Row ID.
    pub id: i64,
    /// Sign-in name.
    pub name: String,
    /// Root or guest.
    pub role: Role,
    /// Creation time.
    pub created_at: String,
}

/// The columns a [`User`] is read from.
const COLUMNS: &str = "u.id, u.name, u.role, u.created_at";

fn user(r: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let role: String = r.try_get("role")?;
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        // A role this version does not know reads as the least privileged.
        role: Role::parse(&role).unwrap_or(Role::Guest),
        created_at: r.try_get("created_at")?,
    })
}

impl Db {
    /// Number of users.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Adds a user; a taken name is a conflict.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<User, StoreError> {
        let created_at = now();
        let row = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(&created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, || format!("user {name:?} exists")))?;
        Ok(User {
            id: row.try_get("id")?,
            name: name.to_owned(),
            role,
            created_at,
        })
    }

    /// Every user, by ID.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM users u ORDER BY u.id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user)
            .collect()
    }

    /// The user `id`.
    pub async fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM users u WHERE u.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user)
            .transpose()
    }

    /// Removes user `id` with their sessions and tokens; false if there is none.
    pub async fn delete_user(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["sessions", "personal_access_tokens"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// A user and their password hash, by name.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, u.password_hash FROM users u WHERE u.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((user(&r)?, r.try_get("password_hash")?)))
            .transpose()
    }

    /// Stores a session token's hash for `user_id` until `expires_at`.
    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_at)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The user of an unexpired session.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2"
        ))
        .bind(token_hash)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
