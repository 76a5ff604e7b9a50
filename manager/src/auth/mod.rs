//! Identity: argon2 password hashes, random session and personal-access tokens (stored only
//! as SHA-256 hashes: they carry 256 random bits, so a fast hash is enough), and the root
//! user created on first start with a configured password or a random one printed once.
//! [`limiter`] bounds sign-in attempts per source and per user; [`hashing`] bounds how many
//! Argon2 hashes run at once.

pub mod hashing;
pub mod limiter;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::store::{Db, StoreError};

/// Prefix of personal access tokens (so leaked ones are easy to spot and scan for).
pub const PAT_PREFIX: &str = "dfp_";
/// Prefix of console session tokens.
pub const SESSION_PREFIX: &str = "dfs_";

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;

/// An argon2id hash of `password` in PHC form. Slow on purpose: call it off the async
/// workers.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// Whether `password` matches `hash` (false for an unreadable hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new random token with `prefix`.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored for a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A random password for the root user.
fn random_password() -> String {
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Creates the `root` user if there are no users yet, with `password` or, without one, a
/// random password that is printed once on stderr. Returns whether it was created.
pub async fn ensure_root(db: &Db, password: Option<&str>) -> Result<bool, StoreError> {
    if db.count_users().await? > 0 {
        return Ok(false);
    }
    let (password, generated) = match password {
        Some(p) => (p.to_owned(), false),
        None => (random_password(), true),
    };
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&p))
            .await
            .expect("hashing task")
    };
    match db
        .create_user("root", &hash, crate::store::users::Role::Root)
        .await
    {
        Ok(_) => {}
        // Another manager on the same database was first.
        Err(StoreError::Conflict(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    if generated {
        eprintln!(
            "dragonfly-manager: created user \"root\" with password {password}\n\
             (shown only now; sign in and keep it, or set auth.root_password / DRAGONFLY_ROOT_PASSWORD before the first start)"
        );
    }
    tracing::info!(user = "root", generated, "root user created");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_tokens_are_random_and_hashed() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        let (a, b) = (new_token(PAT_PREFIX), new_token(PAT_PREFIX));
        assert!(a.starts_with("dfp_") && a.len() > 40 && a != b);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
