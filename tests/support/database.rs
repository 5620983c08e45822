//! The coordinator's database as the tests see it: SQLite in its data directory by default, or a
//! fresh PostgreSQL database when `ARCHFARM_TEST_POSTGRES` names a server (`scripts/test.sh` runs
//! the suite both ways). Read back with independent clients (`psql`, Python's `sqlite3`), never
//! through archfarm.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable with the PostgreSQL server's URL (e.g. `postgres://postgres@127.0.0.1/test`).
pub const POSTGRES_ENV: &str = "ARCHFARM_TEST_POSTGRES";

/// The server the PostgreSQL-only tests use when the environment names none.
/// `scripts/postgres.sh` sets this password on a server it installs; trust authentication (as on
/// the development machines) ignores it.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres:archfarm@127.0.0.1:5432/test";

/// A database made for one test (or shared by the coordinators of one test).
#[derive(Debug)]
pub enum Database {
    /// The SQLite file a coordinator keeps in its data directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database created for the test and dropped with this value.
    Postgres {
        /// Its URL, for `--database`.
        url: String,
        /// The URL of the server's maintenance database, to drop it from.
        admin: String,
        /// Its name.
        name: String,
    },
}

impl Database {
    /// A fresh PostgreSQL database when the environment asks for one; None means SQLite.
    pub fn from_env() -> Option<Database> {
        let admin = std::env::var(POSTGRES_ENV).ok().filter(|s| !s.is_empty())?;
        Some(Database::postgres_on(&admin))
    }

    /// A fresh PostgreSQL database on the environment's server, or on [`DEFAULT_POSTGRES`].
    pub fn postgres() -> Database {
        let admin = std::env::var(POSTGRES_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES.to_string());
        Database::postgres_on(&admin)
    }

    fn postgres_on(admin: &str) -> Database {
        Database::postgres_at(admin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fresh PostgreSQL database on the server at `admin` (a URL naming any database on it).
    pub fn postgres_at(admin: &str) -> Result<Database, String> {
        let name = format!("archfarm_e2e_{}", uuid::Uuid::new_v4().simple());
        try_psql(admin, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(Database::Postgres {
            url: with_database(admin, &name),
            admin: admin.to_string(),
            name,
        })
    }

    /// The `--database` URL.
    pub fn url(&self) -> String {
        match self {
            Database::Sqlite(file) => format!("sqlite://{}?mode=rwc", file.display()),
            Database::Postgres { url, .. } => url.clone(),
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres { .. })
    }

    /// Runs one SQL query and returns its rows, one line each, columns separated by `|`.
    pub fn query(&self, sql: &str) -> String {
        match self {
            Database::Postgres { url, .. } => psql(url, sql),
            Database::Sqlite(file) => sqlite(file, sql),
        }
    }

    /// The first column of the first row of `sql`, as a number.
    pub fn count(&self, sql: &str) -> i64 {
        let out = self.query(sql);
        out.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{sql} gave {out:?}, not a number"))
    }

    /// Where in the database `needle` appears (PostgreSQL: in `pg_dump`'s output); for SQLite the
    /// file is in the data directory, which the callers search as files anyway.
    pub fn containing(&self, needle: &str) -> Vec<String> {
        match self {
            Database::Sqlite(_) => Vec::new(),
            Database::Postgres { url, name, .. } => {
                let out = Command::new("pg_dump")
                    .args(["--data-only", url])
                    .output()
                    .expect("run pg_dump");
                assert!(
                    out.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!out.stdout.is_empty(), "pg_dump printed nothing");
                // Byte columns (log and context pieces) are dumped as hex.
                let hex = hex::encode(needle);
                let found = [needle, hex.as_str()]
                    .iter()
                    .any(|n| out.stdout.windows(n.len()).any(|w| w == n.as_bytes()));
                if found {
                    vec![format!("PostgreSQL database {name}")]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Database::Postgres { admin, name, .. } = self {
            if std::env::var_os("ARCHFARM_E2E_KEEP").is_none() {
                let _ = Command::new("psql")
                    .args([
                        admin.as_str(),
                        "-qAtc",
                        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    ])
                    .output();
            }
        }
    }
}

/// `url` with its database name replaced by `name`, keeping any query string (`?sslmode=…`).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host..].find('/') {
        Some(i) => &base[..host + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// `psql URL -Atc SQL`, panicking with its error when it fails.
fn psql(url: &str, sql: &str) -> String {
    try_psql(url, sql).unwrap_or_else(|e| panic!("{e}"))
}

/// `psql URL -c SQL`: its output, or what it said on failure.
fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("cannot run psql (Debian package postgresql-client): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The same through Python's `sqlite3` module (Debian's python3 has it; no sqlite3 CLI needed).
fn sqlite(file: &Path, sql: &str) -> String {
    let script = "import sqlite3, sys\n\
                  db = sqlite3.connect(sys.argv[1])\n\
                  for row in db.execute(sys.argv[2]):\n    print('|'.join('' if v is None else str(v) for v in row))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .arg(sql)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "sqlite {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
