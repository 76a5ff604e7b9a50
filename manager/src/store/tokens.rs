//! Personal access tokens: name, scopes (`job`, `cluster`), expiry, state (`active` or
//! `revoked`). The token itself is shown once at creation; only its SHA-256 hash is stored.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_col, now, Db, StoreError};

/// Scopes a token may carry.
pub const SCOPES: &[&str] = &["job", "cluster"];

/// A token as the API shows it (never the secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Token {
    /// Row ID.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Free text.
    pub bio: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `active` or `revoked`.
    pub state: String,
    /// Owner.
    pub user_id: i64,
    /// Expiry (RFC 3339).
    pub expired_at: String,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

fn token(r: &AnyRow) -> Result<Token, StoreError> {
    Ok(Token {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        bio: r.try_get("bio")?,
        scopes: json_col(r, "scopes")?,
        state: r.try_get("state")?,
        user_id: r.try_get("user_id")?,
        expired_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLUMNS: &str = "id, name, bio, scopes, state, user_id, expires_at, created_at, updated_at";

impl Db {
    /// Stores a new active token.
    pub async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        bio: &str,
        scopes: &[String],
        expires_at: &str,
        token_hash: &str,
    ) -> Result<Token, StoreError> {
        let t = now();
        let row = sqlx::query(&format!(
            "INSERT INTO personal_access_tokens (name, bio, token_hash, scopes, user_id, state, expires_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $7) RETURNING {COLUMNS}"
        ))
        .bind(name)
        .bind(bio)
        .bind(token_hash)
        .bind(serde_json::to_string(scopes).expect("scopes serialize"))
        .bind(user_id)
        .bind(expires_at)
        .bind(&t)
        .fetch_one(&self.pool)
        .await?;
        token(&row)
    }

    /// A user's tokens, newest first.
    pub async fn list_tokens(&self, user_id: i64) -> Result<Vec<Token>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM personal_access_tokens WHERE user_id = $1 ORDER BY id DESC"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token).collect()
    }

    /// Revokes one of `user_id`'s tokens.
    pub async fn revoke_token(&self, user_id: i64, id: i64) -> Result<Token, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE personal_access_tokens SET state = 'revoked', updated_at = $1 \
             WHERE id = $2 AND user_id = $3 RETURNING {COLUMNS}"
        ))
        .bind(now())
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(token)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("personal access token {id}")))
    }

    /// The token with this hash, whatever its state.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<Token>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM personal_access_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token).transpose()
    }
}
