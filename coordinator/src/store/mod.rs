//! Database access. One `AnyPool` serves SQLite (the default) and PostgreSQL with the same SQL:
//! the schema uses only TEXT and BIGINT, timestamps are Unix milliseconds, and every state change
//! that two callers could race on is a single compare-and-set `UPDATE ... WHERE state = ...`.

mod agents;
mod builds;
mod chunks;
mod contexts;
pub mod history;
mod job_credentials;
mod jobs;
pub mod lifecycle;
mod retention;
pub mod scratch;
mod secrets;
mod stitching;
mod tag_heads;
mod tokens;
mod warm;

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

pub use agents::{AgentNetworks, AgentRow, Registered};
pub use builds::{BuildRow, LeaseCheck, QueuedBuild, RunningBuild};
pub use chunks::{LogBatch, LogPosition, CONTEXT_CHUNK_BYTES};
pub use jobs::{JobCache, JobRow, NewJob};
pub use lifecycle::Stopped;
pub use retention::Deleted;
pub use tag_heads::{TagClaim, TagMover};
pub use tokens::{NewToken, Refusal};
pub use warm::WarmAgent;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// Failures talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a query.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not parse (a bug or a hand-edited database).
    #[error("corrupt stored value in {column}: {value:?}")]
    Corrupt {
        /// Column holding the value.
        column: &'static str,
        /// The value.
        value: String,
    },
    /// Reading or writing a local file on the way to or from the database failed.
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    /// The URL names a database archfarm does not support (only its scheme is kept: a URL can hold a password).
    #[error("unsupported database URL scheme '{0}': use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which database server a store speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file: one coordinator.
    Sqlite,
    /// A PostgreSQL server: one or several coordinators.
    Postgres,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Test-only interleavings of racing callers (see [`lifecycle::Hooks`]).
    #[cfg(test)]
    pub(crate) hooks: lifecycle::Hooks,
}

impl Store {
    /// Connects, applies the migrations for the URL's backend, and returns a ready store.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        if !sqlite && !postgres {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::UnsupportedUrl(
                scheme.chars().take(32).collect(),
            ));
        }
        // SQLite allows one writer at a time, and a writer that finds the lock taken sleeps in
        // SQLite's busy handler (1 ms, then 2, 5, 10…) instead of queueing: with four connections,
        // lease traffic spent most of its time asleep there (archfarm-bench: 2.3 ms per
        // `UPDATE agents`, 126 dispatches/s). One connection queues every statement in the pool
        // instead, without sleeping; statements take tens of microseconds.
        let max = if sqlite { 1 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Deleted rows (build secrets above all) are overwritten with zeros, not
                        // left readable in free pages of the file. Per connection, hence here.
                        sqlx::query("PRAGMA secure_delete = ON")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if sqlite {
            // WAL lets readers (dashboards, CLI polling) proceed while a lease is being written.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
        } else {
            POSTGRES_MIGRATIONS.run(&pool).await?;
        }
        let backend = if sqlite {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        Ok(Store {
            pool,
            backend,
            #[cfg(test)]
            hooks: Default::default(),
        })
    }

    /// The database server behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that may write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so concurrent writers queue on the busy timeout: a deferred
    /// transaction that reads and then writes fails at once with SQLITE_BUSY_SNAPSHOT (517)
    /// whenever another connection committed in between, which 32 agents registering at the
    /// same time made happen every time.
    pub async fn begin(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The pool, for callers that need a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// One round trip to the database, to learn whether it answers.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, the timestamp format of every column.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Converts a stored millisecond timestamp.
pub fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Reads a column that must parse with `FromStr`.
fn parse_col<T: FromStr>(row: &AnyRow, column: &'static str) -> StoreResult<T> {
    let value: String = row.try_get(column)?;
    value
        .parse()
        .map_err(|_| StoreError::Corrupt { column, value })
}

/// Reads a nullable column that must parse with `FromStr`.
fn parse_opt_col<T: FromStr>(row: &AnyRow, column: &'static str) -> StoreResult<Option<T>> {
    let value: Option<String> = row.try_get(column)?;
    value
        .map(|v| {
            v.parse()
                .map_err(|_| StoreError::Corrupt { column, value: v })
        })
        .transpose()
}

/// Reads a JSON text column.
fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &'static str) -> StoreResult<T> {
    let value: String = row.try_get(column)?;
    serde_json::from_str(&value).map_err(|_| StoreError::Corrupt { column, value })
}

/// A store for a unit test: SQLite in a temporary directory, or a fresh PostgreSQL database when
/// `ARCHFARM_TEST_POSTGRES` names a server (see [`scratch`]); dropped with the returned guard.
#[cfg(test)]
pub(crate) async fn test_store() -> (Store, scratch::ScratchDatabase) {
    let db = scratch::ScratchDatabase::create().await.unwrap();
    (Store::connect(db.url()).await.unwrap(), db)
}

/// Stores a job for `platforms` tagged `localhost:5000/REPO:1`, with its context; returns its id.
#[cfg(test)]
pub(crate) async fn insert_test_job(
    store: &Store,
    repository: &str,
    platforms: &[&str],
) -> uuid::Uuid {
    let digest = archfarm_protocol::Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
    store.insert_context(digest.as_str(), 1).await.unwrap();
    store
        .insert_job(&NewJob {
            context: digest,
            dockerfile: "Dockerfile".into(),
            build_args: Default::default(),
            target: None,
            emulation: archfarm_protocol::api::EmulationPolicy::Fallback,
            tags: vec![format!("localhost:5000/{repository}:1")],
            platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
            registry: "localhost:5000".into(),
            repository: repository.into(),
            optional_platforms: vec![],
            timeout_secs: 7200,
            submitter: None,
            secret_build_args: vec![],
            secrets: vec![],
            network: None,
            base_images: vec![],
            cache: Default::default(),
            image_meta: Default::default(),
            allow_foreign_binary: Vec::new(),
            attest_to: Default::default(),
            smoke_test: None,
        })
        .await
        .unwrap()
}

/// A nullable JSON list column: NULL (or a row from before the column) reads as empty.
fn json_list<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> StoreResult<Vec<T>> {
    match row.try_get::<Option<String>, _>(column)? {
        None => Ok(Vec::new()),
        Some(value) => {
            serde_json::from_str(&value).map_err(|_| StoreError::Corrupt { column, value })
        }
    }
}

/// The nullable JSON form of a list: NULL when it is empty.
fn to_json_list<T: serde::Serialize>(items: &[T]) -> Option<String> {
    (!items.is_empty()).then(|| serde_json::to_string(items).expect("a list of names serialises"))
}
