//! Personal access tokens of the signed-in user: create (the token is in this answer only),
//! list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Session;
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::auth::{new_token, token_hash, PAT_PREFIX};
use crate::store::tokens::{Token, SCOPES};
use crate::store::{parse_time, rfc3339};

/// Longest lifetime of a token.
const MAX_DAYS: i64 = 3650;

/// `POST /api/v1/personal-access-tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default)]
    bio: String,
    scopes: Vec<String>,
    /// RFC 3339 expiry; or
    #[serde(default)]
    expired_at: Option<String>,
    /// days from now (default 365).
    #[serde(default)]
    expires_in_days: Option<i64>,
}

/// Creates a token; the answer carries it once (`token`).
pub async fn create(
    State(s): State<AppState>,
    session: Session,
    JsonBody(b): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = b.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad("name", "name must have 1 to 100 characters"));
    }
    if b.scopes.is_empty() {
        return Err(ApiError::bad(
            "scopes",
            format!("give at least one scope of {SCOPES:?}"),
        ));
    }
    if let Some(bad) = b.scopes.iter().find(|x| !SCOPES.contains(&x.as_str())) {
        return Err(ApiError::bad(
            "scopes",
            format!("unknown scope {bad:?}; scopes are {SCOPES:?}"),
        ));
    }
    let now = chrono::Utc::now();
    let expires = match (&b.expired_at, b.expires_in_days) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "expired_at",
                "give expired_at or expires_in_days, not both",
            ))
        }
        (Some(t), None) => parse_time(t)
            .ok_or_else(|| ApiError::bad("expired_at", "expired_at must be an RFC 3339 time"))?,
        (None, days) => {
            let days = days.unwrap_or(365);
            if !(1..=MAX_DAYS).contains(&days) {
                return Err(ApiError::bad(
                    "expires_in_days",
                    format!("expires_in_days must be 1..={MAX_DAYS}"),
                ));
            }
            now + chrono::Duration::days(days)
        }
    };
    if expires <= now || expires > now + chrono::Duration::days(MAX_DAYS) {
        return Err(ApiError::bad(
            "expired_at",
            "the expiry must be in the future and within 10 years",
        ));
    }
    let mut scopes = b.scopes.clone();
    scopes.sort();
    scopes.dedup();
    let secret = new_token(PAT_PREFIX);
    let t =
        s.db.create_token(
            session.user.id,
            name,
            &b.bio,
            &scopes,
            &rfc3339(expires),
            &token_hash(&secret),
        )
        .await?;
    tracing::info!(user = %session.user.name, token = %t.name, id = t.id, "personal access token created");
    let mut v = serde_json::to_value(&t).expect("token serializes");
    v["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

/// The user's tokens (never their secrets).
pub async fn list(
    State(s): State<AppState>,
    session: Session,
) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(s.db.list_tokens(session.user.id).await?))
}

/// Revokes a token of the user's.
pub async fn revoke(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> Result<Json<Token>, ApiError> {
    let t = s.db.revoke_token(session.user.id, id).await?;
    tracing::info!(user = %session.user.name, id, "personal access token revoked");
    Ok(Json(t))
}
