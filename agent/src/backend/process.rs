//! Running a builder command with its output streamed line by line, and killing its whole process
//! group on cancellation.

use std::process::Stdio;
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{BackendError, LogSink};

/// How long a cancelled command gets after SIGTERM to clean up before SIGKILL. The RUN steps buildah
/// started die at once from the group's SIGTERM; buildah itself exits within a second or two, after
/// removing its working container (what a SIGKILL leaves is removed when the agent next starts).
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Longest log line kept; the rest is cut so one runaway line cannot exhaust memory downstream.
const MAX_LINE: usize = 16 * 1024;

/// Runs `cmd` (described as `what` in errors), sending each stdout and stderr line to `log`. The
/// command gets its own process group so cancellation reaches the RUN steps it started too.
pub async fn run_logged(
    mut cmd: Command,
    what: &str,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), BackendError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| BackendError::Spawn {
        command: what.to_string(),
        source,
    })?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let outcome = tokio::select! {
        (_, last_err, status) = async { tokio::join!(pump(stdout, log), pump(stderr, log), child.wait()) } => Some((last_err, status)),
        _ = cancel.cancelled() => None,
    };
    let Some((last_line, status)) = outcome else {
        terminate(&mut child, pid).await;
        return Err(BackendError::Cancelled);
    };
    let status = status.map_err(|source| BackendError::Spawn {
        command: what.to_string(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let status = match status.code() {
        Some(c) => format!("status {c}"),
        None => format!("{status}"),
    };
    Err(BackendError::Failed {
        command: what.to_string(),
        status,
        last_line,
    })
}

/// Runs `cmd` quietly, returning its stdout; for housekeeping commands whose output is not build log.
pub async fn run_quiet(mut cmd: Command, what: &str) -> Result<String, BackendError> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|source| BackendError::Spawn {
        command: what.to_string(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(BackendError::Failed {
        command: what.to_string(),
        status: out
            .status
            .code()
            .map_or_else(|| out.status.to_string(), |c| format!("status {c}")),
        last_line: last_non_empty(&stderr),
    })
}

/// SIGTERM to the group, then SIGKILL to the group if it has not exited within the grace period.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>) {
    let group = pid.and_then(|p| Pid::from_raw(p as i32));
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::TERM);
    }
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(g) = group {
            let _ = kill_process_group(g, Signal::KILL);
        }
        let _ = child.kill().await;
    } else if let Some(g) = group {
        // The leader is gone; anything it left in its group goes too.
        let _ = kill_process_group(g, Signal::KILL);
    }
}

/// Forwards lines of `r` to `log`; returns the last non-empty one (for error messages).
async fn pump(r: impl AsyncRead + Unpin, log: &LogSink) -> Option<String> {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    let mut last = None;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return last,
            Ok(_) => {}
        }
        let line = clean_line(&buf);
        if !line.trim().is_empty() {
            last = Some(line.clone());
        }
        log.line(line).await;
    }
}

/// A raw output line as text: newline and carriage returns dropped, invalid UTF-8 replaced, length
/// capped.
pub fn clean_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut s = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]).into_owned();
    // Progress bars redraw with '\r'; keep only the final state.
    if let Some(i) = s.rfind('\r') {
        s.drain(..=i);
    }
    s
}

fn last_non_empty(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn lines_are_cleaned() {
        assert_eq!(clean_line(b"hello\r\n"), "hello");
        assert_eq!(clean_line(b"10%\r50%\r100%\n"), "100%");
        assert_eq!(clean_line(b"bad \xff byte"), "bad \u{fffd} byte");
        assert_eq!(clean_line(&vec![b'x'; MAX_LINE * 2]).len(), MAX_LINE);
    }

    #[tokio::test]
    async fn streams_both_streams_and_reports_last_stderr_line() {
        let (log, mut rx) = LogSink::channel(16);
        let cancel = CancellationToken::new();
        let e = run_logged(
            sh("echo out; echo err >&2; echo 'Error: it broke' >&2; exit 3"),
            "thing",
            &log,
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "thing exited with status 3: Error: it broke");
        drop(log);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines.sort();
        assert_eq!(lines, ["Error: it broke", "err", "out"]);
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // The grandchild ignores nothing special; it must die with its group.
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let (log, _rx) = LogSink::channel(16);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let waiter = tokio::spawn(async move {
            while !pidfile.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            trigger.cancel();
            std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse::<i32>()
                .unwrap()
        });
        let started = std::time::Instant::now();
        let r = run_logged(sh(&script), "sleeper", &log, &cancel).await;
        assert!(matches!(r, Err(BackendError::Cancelled)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        let grandchild = waiter.await.unwrap();
        // Reaped by init (or a zombie at worst); either way not running `sleep` any more.
        let mut gone = false;
        for _ in 0..100 {
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "grandchild {grandchild} survived the cancellation");
    }

    #[tokio::test]
    async fn quiet_returns_stdout() {
        assert_eq!(run_quiet(sh("echo hi"), "echo").await.unwrap(), "hi\n");
        let e = run_quiet(sh("echo nope >&2; exit 1"), "x")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "x exited with status 1: nope");
    }
}
