//! Sign-in, sign-out, the signed-in user, and users (root manages them: root or read-only
//! guest). Sign-in is limited per source address and per
//! user name (429 with `Retry-After` beyond the limits, whatever the password) and its
//! password check takes one of the bounded hashing slots.

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Session, SESSION_COOKIE};
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::auth::hashing::HashError;
use crate::auth::{new_token, token_hash, SESSION_PREFIX};
use crate::listener::Peer;
use crate::store::rfc3339;
use crate::store::users::Role;

/// `POST /api/v1/users/signin` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    name: String,
    password: String,
}

/// The connection's peer address; unspecified when the server gives none (tests calling the
/// router directly).
fn source(info: Option<axum::Extension<ConnectInfo<Peer>>>) -> IpAddr {
    info.map(|i| i.0 .0 .0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Whether `b`'s password is right, within the sign-in limits; the user if it is.
async fn check_password(
    s: &AppState,
    ip: IpAddr,
    b: SignIn,
) -> Result<Option<crate::store::users::User>, ApiError> {
    s.signin_limiter
        .attempt(ip, &b.name, std::time::Instant::now())
        .map_err(|locked| {
            tracing::warn!(source = %ip, reason = %locked, "sign-in refused by the rate limit");
            ApiError::retry(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{locked} (auth.signin_* in the manager config set the limits)"),
                locked.retry_after(),
            )
        })?;
    let found = s.db.user_by_name(&b.name).await?;
    // Verify against a real hash even for unknown users, so timing does not tell which
    // names exist.
    let hash = found.as_ref().map(|(_, h)| h.clone());
    let ok = s
        .hashes
        .verify(b.password, hash)
        .await
        .map_err(|e| match e {
            HashError::Busy => ApiError::retry(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                std::time::Duration::from_secs(2),
            ),
            HashError::Task(_) => {
                ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        })?;
    if ok {
        s.signin_limiter.succeeded(ip, &b.name);
    }
    Ok(found.filter(|_| ok).map(|(u, _)| u))
}

/// The session cookie: `HttpOnly; SameSite=Strict`, and `Secure` when served over TLS.
pub fn session_cookie(s: &AppState, value: &str, max_age: u64) -> String {
    let secure = if s.config.http.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    )
}

/// Checks the password and opens a session: `{"token", "expire"}` and a cookie.
pub async fn signin(
    State(s): State<AppState>,
    info: Option<axum::Extension<ConnectInfo<Peer>>>,
    JsonBody(b): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    let ip = source(info);
    let Some(user) = check_password(&s, ip, b).await? else {
        tracing::info!(source = %ip, "sign-in with a wrong user name or password");
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    let token = new_token(SESSION_PREFIX);
    let expire =
        chrono::Utc::now() + chrono::Duration::hours(i64::from(s.config.auth.session_ttl_hours));
    let expire = rfc3339(expire);
    s.db.create_session(&token_hash(&token), user.id, &expire)
        .await?;
    tracing::info!(user = %user.name, source = %ip, "signed in");
    let cookie = session_cookie(
        &s,
        &token,
        u64::from(s.config.auth.session_ttl_hours) * 3600,
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
    let cookie = session_cookie(&s, "", 0);
    Ok(([(SET_COOKIE, cookie)], Json(json!({}))).into_response())
}

/// The signed-in user.
pub async fn me(session: Session) -> Json<crate::store::users::User> {
    Json(session.user)
}

/// `POST /api/v1/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    password: String,
    #[serde(default = "guest")]
    role: String,
}

fn guest() -> String {
    "guest".into()
}

/// Only root manages users.
fn root_only(session: &Session) -> Result<(), ApiError> {
    if session.user.role != Role::Root {
        return Err(ApiError::forbidden(format!(
            "only a root user manages users; {:?} is a {}",
            session.user.name,
            session.user.role.as_str()
        )));
    }
    Ok(())
}

/// `GET /api/v1/users` (root only).
pub async fn list(
    State(s): State<AppState>,
    session: Session,
) -> Result<Json<Vec<crate::store::users::User>>, ApiError> {
    root_only(&session)?;
    Ok(Json(s.db.users().await?))
}

/// `POST /api/v1/users` (root only): `{name, password, role: root|guest}`.
pub async fn create(
    State(s): State<AppState>,
    session: Session,
    JsonBody(b): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<crate::store::users::User>), ApiError> {
    root_only(&session)?;
    let name_ok = (3..=32).contains(&b.name.len())
        && b.name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if !name_ok {
        return Err(ApiError::bad(
            "name",
            "a user name is 3 to 32 letters, digits, '.', '_' or '-'",
        ));
    }
    if !(8..=128).contains(&b.password.chars().count()) {
        return Err(ApiError::bad(
            "password",
            "a password is 8 to 128 characters",
        ));
    }
    let role = Role::parse(&b.role)
        .ok_or_else(|| ApiError::bad("role", format!("role {:?} is not root or guest", b.role)))?;
    let hash = s.hashes.hash(b.password).await.map_err(|e| {
        ApiError::retry(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            std::time::Duration::from_secs(2),
        )
    })?;
    let user = s.db.create_user(&b.name, &hash, role).await?;
    tracing::info!(user = %user.name, role = role.as_str(), by = %session.user.name, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

/// `DELETE /api/v1/users/{id}` (root only; not yourself).
pub async fn delete(
    State(s): State<AppState>,
    session: Session,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    root_only(&session)?;
    if id == session.user.id {
        return Err(ApiError::bad("id", "you cannot delete yourself"));
    }
    if !s.db.delete_user(id).await? {
        return Err(ApiError::status(
            StatusCode::NOT_FOUND,
            format!("no user {id}"),
        ));
    }
    tracing::info!(user = id, by = %session.user.name, "user deleted");
    Ok(Json(json!({})))
}
