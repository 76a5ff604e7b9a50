//! Sign-in, sign-out and the signed-in user.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Session, SESSION_COOKIE};
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::auth::{new_token, token_hash, verify_password, SESSION_PREFIX};
use crate::store::rfc3339;

/// `POST /api/v1/users/signin` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    name: String,
    password: String,
}

/// Checks the password and opens a session: `{"token", "expire"}` and a cookie.
pub async fn signin(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    let found = s.db.user_by_name(&b.name).await?;
    // Verify against a real hash even for unknown users, so timing does not tell which
    // names exist.
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = match &found {
        Some((_, h)) => h.clone(),
        None => DUMMY
            .get_or_init(|| crate::auth::hash_password("no such user"))
            .clone(),
    };
    let password = b.password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some((user, _)) = found.filter(|_| ok) else {
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    let token = new_token(SESSION_PREFIX);
    let expire =
        chrono::Utc::now() + chrono::Duration::hours(i64::from(s.config.auth.session_ttl_hours));
    let expire = rfc3339(expire);
    s.db.create_session(&token_hash(&token), user.id, &expire)
        .await?;
    tracing::info!(user = %user.name, "signed in");
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        u64::from(s.config.auth.session_ttl_hours) * 3600
    );
    Ok((
        [(SET_COOKIE, cookie)],
        Json(json!({"token": token, "expire": expire})),
    )
        .into_response())
}

/// Ends the session.
pub async fn signout(State(s): State<AppState>, session: Session) -> Result<Response, ApiError> {
    s.db.delete_session(&session.token_hash).await?;
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Max-Age=0");
    Ok(([(SET_COOKIE, cookie)], Json(json!({}))).into_response())
}

/// The signed-in user.
pub async fn me(session: Session) -> Json<crate::store::users::User> {
    Json(session.user)
}
