//! Child processes and scratch directories that clean up after themselves, and polling.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// How long a stopped process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Set to keep scratch directories (logs, storage) after the tests, for a post-mortem.
const KEEP_ENV: &str = "ARCHFARM_E2E_KEEP";

/// Polls `ready` until it returns true; panics naming `what` after `timeout`.
///
/// Starts with short intervals (most things are ready in milliseconds) and backs off to a quarter
/// second, so a slow QEMU build on two cores costs no busy loop.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut interval = Duration::from_millis(10);
    loop {
        if ready() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// A loopback TCP port that was free a moment ago.
///
/// Another process can take it before ours binds it; the helpers that use it retry on
/// "address already in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The directory holding the workspace's binaries (`target/debug`).
///
/// `ARCHFARM_BIN_DIR` overrides it; otherwise it is the grandparent of this test executable
/// (`target/debug/deps/e2e-HASH`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARCHFARM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot find target dir from {}", exe.display()))
}

/// Path of a workspace binary, or a panic that says how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{name} not found at {}: run `cargo test --workspace --no-run` first (scripts/test.sh does)",
            path.display()
        );
    }
    path
}

/// Removes `ARCHFARM_*` variables a developer's shell may carry and keeps loopback off any proxy,
/// so a child sees only what the test gives it.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARCHFARM_") {
            cmd.env_remove(key);
        }
    }
    let no_proxy = match std::env::var("NO_PROXY").or_else(|_| std::env::var("no_proxy")) {
        Ok(v) if !v.is_empty() => format!("{v},127.0.0.1,localhost"),
        _ => "127.0.0.1,localhost".to_string(),
    };
    cmd.env("NO_PROXY", &no_proxy).env("no_proxy", &no_proxy);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("RUST_BACKTRACE", "1");
}

/// A temporary directory removed on drop (kept when `ARCHFARM_E2E_KEEP` is set).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/archfarm-e2e-LABEL-XXXX`.
    pub fn new(label: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("archfarm-e2e-{label}-"))
            .tempdir()
            .expect("create a temporary directory");
        Scratch { path: dir.keep() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV} is set: keeping {}", self.path.display());
            return;
        }
        remove_tree(&self.path);
    }
}

/// Mount points at or below `dir`, deepest last.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort();
    found
}

/// Deletes a scratch tree, but never through a mount point.
///
/// A build chroot killed at the wrong moment could leave /dev or /proc bind-mounted below an
/// agent's work dir; deleting through those would delete the host's files. Unmount first and leave
/// the directory in place if anything stays mounted.
fn remove_tree(dir: &Path) {
    for mount in mounts_below(dir).iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(mount).status();
    }
    if !mounts_below(dir).is_empty() {
        eprintln!(
            "not removing {}: something is still mounted below it",
            dir.display()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("could not remove {}: {e}", dir.display());
        }
    }
}

/// A long-running child process in its own process group, with stdout and stderr in a log file.
///
/// Dropping it stops the whole group (SIGTERM, then SIGKILL after a grace period), and when the
/// test is panicking it first prints the tail of the log, so a failure shows what the process said.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `cmd` with stdin closed and output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Daemon {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        // Its own process group, so stopping it also stops what it started (buildah, QEMU).
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log,
            reaped: None,
        }
    }

    /// Waits until `GET url` answers 200. The daemon is returned as the error when it exits
    /// first, so the caller can show its log.
    pub fn ready_at(
        mut self,
        url: &str,
        what: &str,
        timeout: Duration,
        http: &reqwest::blocking::Client,
    ) -> Result<Daemon, Daemon> {
        let mut exited = false;
        wait_until(timeout, &format!("{what} at {url}"), || {
            if self.exited().is_some() {
                exited = true;
                return true;
            }
            http.get(url)
                .send()
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        });
        if exited {
            Err(self)
        } else {
            Ok(self)
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().expect("try_wait");
        }
        self.reaped
    }

    /// Waits up to `timeout` for the process to exit by itself; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log (reads at most the last 64 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_end(&mut buf);
        }
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log tail if the process has already exited (it was expected to keep running).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early with {status}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(80)
            );
        }
    }

    /// Sends `signal` to the whole process group (the daemon and what it started); a no-op once the
    /// daemon has been reaped (its group id could belong to someone else by then).
    pub fn signal(&mut self, signal: Signal) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id() as i32;
        if let Some(pgid) = Pid::from_raw(pid).filter(|_| pid > 1) {
            let _ = kill_process_group(pgid, signal);
        }
    }

    /// SIGKILLs the whole process group at once (a machine losing power) and reaps the leader.
    pub fn kill(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // Not through signal(): that reaps a leader that has just exited, and the group must be
        // signalled while the unreaped leader still pins its id.
        let pid = self.child.id() as i32;
        if let Some(pgid) = Pid::from_raw(pid).filter(|_| pid > 1) {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
        self.reaped = self.child.wait().ok();
    }

    /// Stops the process group: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        let pid = self.child.id() as i32;
        // Pid 1 would mean "every process": never signal that.
        let Some(pgid) = Pid::from_raw(pid).filter(|_| pid > 1) else {
            return;
        };
        let _ = kill_process_group(pgid, Signal::TERM);
        // A group a test froze with SIGSTOP would never see the SIGTERM otherwise.
        let _ = kill_process_group(pgid, Signal::CONT);
        let start = Instant::now();
        // Check without reaping: while the leader is a zombie its id cannot be reused, so the
        // group SIGKILL below cannot hit a stranger.
        while !is_zombie_or_gone(pid) && start.elapsed() < STOP_GRACE {
            thread::sleep(Duration::from_millis(25));
        }
        if !is_zombie_or_gone(pid) {
            eprintln!(
                "{} did not stop within {STOP_GRACE:?} of SIGTERM; killing it",
                self.name
            );
        }
        // Also reaches children that outlived the leader (a build it was running).
        let _ = kill_process_group(pgid, Signal::KILL);
        self.reaped = self.child.wait().ok();
    }
}

/// What `/proc/PID/stat` says about a process: state, parent and process group.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields follow the parenthesised command name, which may itself hold spaces or ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// A live process found by [`processes_of`].
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
    /// Why it was counted (descendant, process group, path).
    pub why: &'static str,
}

/// Live (non-zombie) processes other than `leader` that belong to it: its descendants, members of
/// its process group (children it started keep the group after it dies), and any process whose
/// command line, root directory or working directory lies under `dir` (a build's chroot).
pub fn processes_of(leader: u32, dir: &Path) -> Vec<ProcessInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut table = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            table.push((pid, stat));
        }
    }
    let parent_of = |pid: u32| table.iter().find(|(p, _)| *p == pid).map(|(_, s)| s.ppid);
    let dir_text = dir.display().to_string();
    let mut found = Vec::new();
    for (pid, stat) in &table {
        if *pid == leader || *pid == me || matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let under = |link: &str| {
            fs::read_link(format!("/proc/{pid}/{link}"))
                .map(|p| p.starts_with(dir))
                .unwrap_or(false)
        };
        let mut ancestor = stat.ppid;
        let mut descendant = false;
        for _ in 0..64 {
            if ancestor == leader {
                descendant = true;
                break;
            }
            match parent_of(ancestor) {
                Some(p) if ancestor > 1 => ancestor = p,
                _ => break,
            }
        }
        let why = if descendant {
            "descendant"
        } else if stat.pgrp == leader {
            "process group"
        } else if cmdline.contains(&dir_text) {
            "command line"
        } else if under("root") || under("cwd") {
            "root or cwd"
        } else {
            continue;
        };
        found.push(ProcessInfo {
            pid: *pid,
            cmdline,
            why,
        });
    }
    found
}

/// The peak resident set size of a live process (`VmHWM` in `/proc/PID/status`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

/// True when `pid` has exited (zombie) or no longer exists.
fn is_zombie_or_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X') | None
        ),
        Err(_) => true,
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(60),
                self.name
            );
        }
        self.stop();
    }
}
