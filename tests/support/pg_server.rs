//! A PostgreSQL server of one test's own, which the test may stop and start again: the machine's
//! server on 127.0.0.1:5432 serves every other test at the same time and must keep running.
//! Made with Debian's `initdb` and `pg_ctl` in a scratch directory, run as the `postgres` user
//! (PostgreSQL refuses to run as root), listening on a free loopback port.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use crate::process::{free_port, Scratch};

/// A private PostgreSQL server; stopped (immediately) and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: Scratch,
    bin: PathBuf,
    port: u16,
}

impl PgServer {
    /// Initialises and starts a server on a free loopback port with trust authentication.
    pub fn start() -> PgServer {
        let bin = newest_bin_dir();
        let dir = Scratch::new("postgres");
        // The scratch directory is root's and private; the server runs as `postgres`.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the scratch directory to the postgres user");
        let data = dir.join("data");
        std::fs::create_dir(&data).expect("create the data directory");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path()));
        run(as_postgres(&bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data));
        let server = PgServer {
            dir,
            bin,
            port: free_port(),
        };
        server.start_again();
        server
    }

    /// A URL naming the server's maintenance database, for [`crate::Database::postgres_at`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (`pg_ctl stop -m fast`: clients are disconnected at once) and waits.
    pub fn stop(&self) {
        run(self.pg_ctl().args(["-m", "fast", "-w", "stop"]));
    }

    /// Starts the stopped server again on the same port and data, and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "start"]));
    }

    /// The server's own log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data"));
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
    }
}

/// `program` run as the `postgres` user.
fn as_postgres(program: &std::path::Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

/// The `bin` directory of the newest PostgreSQL Debian installed.
fn newest_bin_dir() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's server is installed (/usr/lib/postgresql); scripts/setup.sh installs it",
        )
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions
        .last()
        .expect("a PostgreSQL version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
