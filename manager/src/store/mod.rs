//! The manager's SQL store: one connection pool over SQLite (a file, the default) or
//! PostgreSQL (for several managers), schema from embedded migrations, and one module per
//! table family. Queries are plain SQL that both databases accept (`$N` parameters, RFC 3339
//! text timestamps, JSON in text columns), run through sqlx's `Any` driver.

pub mod clusters;
pub mod hosts;
pub mod image_tags;
pub mod jobs;
pub mod membership;
pub mod tokens;
pub mod users;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No such row.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name or address is taken.
    #[error("{0}")]
    Conflict(String),
    /// A stored value cannot be read back (hand-edited row?).
    #[error("stored {what} is unreadable: {message}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The URL names a database we do not speak.
    #[error("database url {0:?} is neither sqlite:// nor postgres://")]
    Url(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`] with `message`.
    pub(crate) fn conflict_on_unique(e: sqlx::Error, message: impl FnOnce() -> String) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.is_unique_violation() {
                return StoreError::Conflict(message());
            }
        }
        StoreError::Db(e)
    }
}

/// Parses a JSON text column.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    use sqlx::Row;
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: col,
        message: e.to_string(),
    })
}

/// The pool and what it talks to.
#[derive(Clone)]
pub struct Db {
    /// Connections.
    pub pool: AnyPool,
    /// The database kind.
    pub backend: Backend,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Db {
    /// Connects to `url` (`sqlite://PATH` — created if missing — or `postgres://...`) and
    /// brings the schema up to date.
    pub async fn open(url: &str) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = if path.contains("mode=") {
                url.to_owned()
            } else {
                format!("{url}{sep}mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // Concurrent writers wait instead of failing; readers do not block the writer.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let db = Db { pool, backend };
        match backend {
            Backend::Sqlite => SQLITE.run(&db.pool).await?,
            Backend::Postgres => POSTGRES.run(&db.pool).await?,
        }
        Ok(db)
    }
}

/// Now, as stored: RFC 3339 UTC with milliseconds (sorts as text).
pub fn now() -> String {
    rfc3339(chrono::Utc::now())
}

/// `t` as stored.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A stored time, parsed.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
