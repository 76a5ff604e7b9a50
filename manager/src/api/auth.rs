//! Who is asking. `/api/v1` takes a console session (`Authorization: Bearer dfs_…` or the
//! `dragonfly_session` cookie set at sign-in); `/oapi/v1` takes a personal access token
//! (`Authorization: Bearer dfp_…`) that must be active, unexpired and carry the route's scope.
//! Missing or invalid credentials are 401; a valid token without the scope is 403, and so is
//! any change (a method other than GET) by a guest, or by a guest's token. Each is a
//! route layer that puts the [`Caller`] in the request, so a route has one handler whichever
//! way it is reached.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;
use crate::auth::{token_hash, PAT_PREFIX};
use crate::store::users::{Role, User};
use crate::store::{now, tokens::Token};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "dragonfly_session";

fn bearer(parts: &Parts) -> Option<String> {
    let h = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A signed-in console user.
pub struct Session {
    /// The user.
    pub user: User,
    /// Hash of the session token (for sign-out).
    pub token_hash: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .or_else(|| cookie(parts, SESSION_COOKIE))
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "sign in first: POST /api/v1/users/signin, then send Authorization: Bearer <token>",
                )
            })?;
        let hash = token_hash(&token);
        let user = s.db.session_user(&hash).await?.ok_or_else(|| {
            ApiError::unauthorized("the session is unknown or expired; sign in again")
        })?;
        Ok(Session {
            user,
            token_hash: hash,
        })
    }
}

/// Checks a personal access token for `scope`.
pub async fn check_pat(parts: &Parts, s: &AppState, scope: &str) -> Result<Token, ApiError> {
    let token = bearer(parts).ok_or_else(|| {
        ApiError::unauthorized("send a personal access token: Authorization: Bearer <token>")
    })?;
    if !token.starts_with(PAT_PREFIX) {
        return Err(ApiError::unauthorized(
            "not a personal access token (they start with dfp_); create one with dfctl token create",
        ));
    }
    let t =
        s.db.token_by_hash(&token_hash(&token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown personal access token"))?;
    if t.state != "active" {
        return Err(ApiError::unauthorized(
            "the personal access token was revoked",
        ));
    }
    if t.expired_at <= now() {
        return Err(ApiError::unauthorized(format!(
            "the personal access token expired at {}",
            t.expired_at
        )));
    }
    if !t.scopes.iter().any(|x| x == scope) {
        return Err(ApiError::forbidden(format!(
            "the personal access token lacks the {scope:?} scope (it has {:?})",
            t.scopes
        )));
    }
    Ok(t)
}

/// Who made a request that passed its route's auth layer: the console user, or the owner of
/// the personal access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user_id: i64,
    /// Their role.
    pub role: Role,
}

/// A guest only reads: anything but GET is a 403 saying so.
fn may(user: &str, role: Role, method: &http::Method) -> Result<(), ApiError> {
    if role == Role::Guest && !matches!(*method, http::Method::GET | http::Method::HEAD) {
        return Err(ApiError::forbidden(format!(
            "user {user:?} has the read-only guest role; ask root to do this"
        )));
    }
    Ok(())
}

/// Route layer of `/api/v1`: a console session is required.
pub async fn require_session(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let session = Session::from_request_parts(&mut parts, &s).await?;
    may(&session.user.name, session.user.role, &parts.method)?;
    req = Request::from_parts(parts, body);
    req.extensions_mut().insert(Caller {
        user_id: session.user.id,
        role: session.user.role,
    });
    Ok(next.run(req).await)
}

/// Route layer of `/oapi/v1`: a personal access token with `scope` is required.
pub async fn require_token(
    State((s, scope)): State<(AppState, &'static str)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let token = check_pat(&parts, &s, scope).await?;
    let owner =
        s.db.user(token.user_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
    may(&owner.name, owner.role, &parts.method)?;
    req = Request::from_parts(parts, body);
    req.extensions_mut().insert(Caller {
        user_id: token.user_id,
        role: owner.role,
    });
    Ok(next.run(req).await)
}
