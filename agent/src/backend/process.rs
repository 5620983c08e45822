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
/// Longest log line kept, in bytes. A line is held in memory until its newline comes, so without a
/// bound a build that prints without newlines (a minified file `cat`ed, a binary on stdout) would
/// grow the agent without limit; 16 KiB keeps any real compiler message whole, and 32 such lines
/// still make one log batch (`logs::MAX_BATCH_BYTES`).
pub const MAX_LINE: usize = 16 * 1024;
/// Ends a line cut at [`MAX_LINE`]; the rest of that line, up to its newline, is dropped.
pub const CUT_MARK: &str = "… [line cut at 16 KiB]";

/// Runs `cmd` (described as `what` in errors), sending each stdout and stderr line to `log`. The
/// command gets its own process group so cancellation reaches the RUN steps it started too.
pub async fn run_logged(
    cmd: Command,
    what: &str,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), BackendError> {
    run_logged_except(cmd, what, log, cancel, &|_| true).await
}

/// [`run_logged`], sending to `log` only the lines `keep` accepts (it sees every line of both
/// streams, and may note what it needs from those it drops). The error's last line is the last
/// non-empty stderr line, kept or not.
pub async fn run_logged_except(
    mut cmd: Command,
    what: &str,
    log: &LogSink,
    cancel: &CancellationToken,
    keep: &(dyn Fn(&str) -> bool + Sync),
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
        (_, last_err, status) = async { tokio::join!(pump(stdout, log, keep), pump(stderr, log, keep), child.wait()) } => Some((last_err, status)),
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

/// Forwards the lines of `r` that `keep` accepts to `log`; returns the last non-empty one (for
/// error messages).
async fn pump(
    r: impl AsyncRead + Unpin,
    log: &LogSink,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Option<String> {
    let mut lines = Lines::new(r);
    let mut last = None;
    while let Some(line) = lines.next().await {
        if !line.trim().is_empty() {
            last = Some(line.clone());
        }
        if keep(&line) {
            log.line(line).await;
        }
    }
    last
}

/// Output split into lines as text, holding at most [`MAX_LINE`] bytes of a line: newline and
/// carriage returns dropped (a progress bar redrawn with `\r` keeps only its final state, and
/// its earlier states are forgotten as they are replaced), invalid UTF-8 replaced, a longer line
/// cut and marked with [`CUT_MARK`].
pub struct Lines<R> {
    reader: BufReader<R>,
    /// The line so far (after its last carriage return).
    line: Vec<u8>,
    /// A carriage return was read last: the next byte other than a newline starts the line over.
    cr: bool,
    /// The line was cut: its rest is dropped up to its newline.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    /// Lines of `r`.
    pub fn new(r: R) -> Self {
        Lines {
            reader: BufReader::new(r),
            line: Vec::new(),
            cr: false,
            skipping: false,
        }
    }

    /// The next line; `None` at the end of the output (or on a read error, which ends it too).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let buf = match self.reader.fill_buf().await {
                Ok(buf) if !buf.is_empty() => buf,
                Ok(_) | Err(_) => return self.last(),
            };
            let mut used = buf.len();
            let mut out = None;
            for (i, &b) in buf.iter().enumerate() {
                match b {
                    b'\n' => {
                        used = i + 1;
                        self.cr = false;
                        if std::mem::take(&mut self.skipping) {
                            continue;
                        }
                        out = Some(self.take(false));
                        break;
                    }
                    _ if self.skipping => {}
                    b'\r' => {
                        if self.cr {
                            self.line.clear();
                        }
                        self.cr = true;
                    }
                    _ => {
                        if std::mem::take(&mut self.cr) {
                            self.line.clear();
                        }
                        self.line.push(b);
                        if self.line.len() >= MAX_LINE {
                            used = i + 1;
                            self.skipping = true;
                            out = Some(self.take(true));
                            break;
                        }
                    }
                }
            }
            self.reader.consume(used);
            if out.is_some() {
                return out;
            }
        }
    }

    /// What is left at the end: a last line without a newline, if there is one.
    fn last(&mut self) -> Option<String> {
        self.cr = false;
        if std::mem::take(&mut self.skipping) || self.line.is_empty() {
            return None;
        }
        Some(self.take(false))
    }

    /// The line so far as text, emptied; `cut` marks it (ending before a character split by the
    /// cut).
    fn take(&mut self, cut: bool) -> String {
        let mut end = self.line.len();
        if cut {
            if let Err(e) = std::str::from_utf8(&self.line) {
                if e.error_len().is_none() {
                    end = e.valid_up_to();
                }
            }
        }
        let mut s = String::from_utf8_lossy(&self.line[..end]).into_owned();
        self.line.clear();
        if cut {
            s.push_str(CUT_MARK);
        }
        s
    }
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

    /// Every line of `bytes`, read in pieces of `piece` bytes.
    async fn lines_of(bytes: &[u8], piece: usize) -> Vec<String> {
        let (mut tx, rx) = tokio::io::duplex(piece);
        let data = bytes.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&data).await.unwrap();
        });
        let mut lines = Lines::new(rx);
        let mut out = Vec::new();
        while let Some(l) = lines.next().await {
            out.push(l);
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn lines_are_cleaned() {
        for piece in [1, 3, 64 * 1024] {
            let got = lines_of(
                b"hello\r\n10%\r50%\r100%\nbad \xff byte\n\na\r\rb\nlast\r",
                piece,
            )
            .await;
            assert_eq!(
                got,
                ["hello", "100%", "bad \u{fffd} byte", "", "b", "last"],
                "read {piece} bytes at a time"
            );
        }
        // A character the cut would split is left out whole.
        let mut long = vec![b'x'; MAX_LINE - 1];
        long.extend("é and more\nnext\n".as_bytes());
        let got = lines_of(&long, 4096).await;
        assert_eq!(got[0], format!("{}{CUT_MARK}", "x".repeat(MAX_LINE - 1)));
        assert_eq!(got[1], "next");
    }

    #[tokio::test]
    async fn megabytes_without_a_newline_are_cut_and_reading_carries_on() {
        // 8 MiB without a newline, then a short line, then 3 MiB more without one at the end.
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'y'; 1 << 20];
            for _ in 0..8 {
                tx.write_all(&chunk).await.unwrap();
            }
            tx.write_all(b"\nafter the long one\n").await.unwrap();
            for _ in 0..3 {
                tx.write_all(&chunk).await.unwrap();
            }
        });
        let mut lines = Lines::new(rx);
        let mut got = Vec::new();
        while let Some(l) = lines.next().await {
            // What the reader holds never passes the bound.
            assert!(
                lines.line.capacity() <= 2 * MAX_LINE,
                "{}",
                lines.line.capacity()
            );
            got.push(l);
        }
        writer.await.unwrap();
        let lengths: Vec<usize> = got.iter().map(String::len).collect();
        let cut = MAX_LINE + CUT_MARK.len();
        assert_eq!(lengths, [cut, "after the long one".len(), cut]);
        assert!(
            got[0].ends_with("y… [line cut at 16 KiB]"),
            "{}",
            &got[0][MAX_LINE - 5..]
        );
        assert_eq!(got[1], "after the long one");
    }

    #[tokio::test]
    async fn a_build_printing_without_newlines_is_logged_in_bounded_lines() {
        let (log, mut rx) = LogSink::channel(16);
        let cancel = CancellationToken::new();
        let reader = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(l) = rx.recv().await {
                lines.push(l);
            }
            lines
        });
        run_logged(
            sh("head -c 5000000 /dev/zero | tr '\\0' z; echo; echo done"),
            "printer",
            &log,
            &cancel,
        )
        .await
        .unwrap();
        drop(log);
        let lines = reader.await.unwrap();
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(
            lengths,
            [MAX_LINE + CUT_MARK.len(), 4],
            "{:?}",
            lines.last()
        );
        assert_eq!(lines[1], "done");
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
