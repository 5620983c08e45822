//! Throw-away databases for tests and benchmarks: an SQLite file in a directory of its own, or,
//! when [`POSTGRES_ENV`] names a PostgreSQL server, a fresh database created on it. Either is
//! removed when the [`ScratchDatabase`] is dropped, so the whole test suite can run on both.

use std::path::PathBuf;

use sqlx::Connection as _;

use super::{StoreError, StoreResult};

/// Environment variable with a PostgreSQL URL (e.g. `postgres://postgres@127.0.0.1:5432/test`)
/// whose server holds the scratch databases; unset means SQLite.
pub const POSTGRES_ENV: &str = "ARCHFARM_TEST_POSTGRES";

/// A database that exists until this is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    url: String,
    place: Place,
}

#[derive(Debug)]
enum Place {
    /// The directory holding the SQLite file.
    Sqlite(PathBuf),
    /// The database `name`, dropped through a connection to `admin_url`.
    Postgres { admin_url: String, name: String },
}

impl ScratchDatabase {
    /// A new, empty database of the kind the environment asks for.
    pub async fn create() -> StoreResult<Self> {
        match std::env::var(POSTGRES_ENV) {
            Ok(admin) if !admin.is_empty() => Self::postgres(&admin).await,
            _ => Self::sqlite(),
        }
    }

    /// A new SQLite database in a directory of its own under the system's temporary directory.
    pub fn sqlite() -> StoreResult<Self> {
        let dir = std::env::temp_dir().join(format!("archfarm-db-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDatabase {
            url: format!("sqlite://{}?mode=rwc", dir.join("archfarm.db").display()),
            place: Place::Sqlite(dir),
        })
    }

    /// A new database on the PostgreSQL server that `admin_url` connects to.
    pub async fn postgres(admin_url: &str) -> StoreResult<Self> {
        let name = format!("archfarm_scratch_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::postgres::PgConnection::connect(admin_url).await?;
        // The name is ours (hex), so it needs no quoting beyond the identifier's own.
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(ScratchDatabase {
            url: with_database(admin_url, &name),
            place: Place::Postgres {
                admin_url: admin_url.to_string(),
                name,
            },
        })
    }

    /// The URL to give `--database` or [`super::Store::connect`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        matches!(self.place, Place::Postgres { .. })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        match &self.place {
            Place::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Place::Postgres { admin_url, name } => {
                // Drop runs inside whatever runtime the test has (often a current-thread one that
                // must not block on itself), so the database is dropped from a thread of its own.
                let (admin_url, name) = (admin_url.clone(), name.clone());
                let done = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let mut conn = sqlx::postgres::PgConnection::connect(&admin_url).await?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await?;
                        conn.close().await?;
                        Ok::<_, StoreError>(())
                    })
                    .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .join();
                if let Ok(Err(e)) = done {
                    eprintln!("scratch database {} was not dropped: {e}", self.url);
                }
            }
        }
    }
}

/// `admin_url` with its database name replaced by `name`, keeping any query string.
pub fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database_name() {
        let cases = [
            ("postgres://u@h:5432/test", "postgres://u@h:5432/x"),
            ("postgres://u@h", "postgres://u@h/x"),
            (
                "postgresql://u:p@h/db?sslmode=disable",
                "postgresql://u:p@h/x?sslmode=disable",
            ),
        ];
        for (admin, want) in cases {
            assert_eq!(with_database(admin, "x"), want, "{admin}");
        }
    }
}
