//! Replacing the certificate while the coordinator runs: on SIGHUP, and when the files change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::CertResolver;

/// How often [`watch`] looks at the certificate files' modification times.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

/// Reloads the certificate on SIGHUP and when its files change (checked every `every`), until
/// `stop` is cancelled. A reload that fails is logged as an error and the certificate in use stays;
/// the next change of the files tries again.
pub async fn watch(resolver: Arc<CertResolver>, every: Duration, stop: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP; the TLS certificate is reloaded only when its files change");
            None
        }
    };
    let mut seen = stamps(&resolver);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = next_hangup(&mut hangup) => "SIGHUP",
            _ = tick.tick() => {
                if stamps(&resolver) == seen {
                    continue;
                }
                "the certificate files changed"
            }
        };
        // Taken before reading the files, so a change made while they are read shows at the next
        // poll; a reload that failed is tried again only once the files change again.
        seen = stamps(&resolver);
        let before = resolver.current_fingerprint();
        match resolver.reload() {
            Ok(()) => tracing::info!(
                reason,
                cert = %resolver.cert_path.display(),
                fingerprint = %resolver.current_fingerprint(),
                previous = %before,
                "TLS certificate reloaded"
            ),
            Err(e) => tracing::error!(
                reason,
                error = %e,
                fingerprint = %before,
                "TLS certificate reload failed; still presenting the previous certificate"
            ),
        }
    }
}

async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// What the certificate and key files look like on disk now, to notice a replacement.
fn stamps(resolver: &CertResolver) -> [Option<FileStamp>; 2] {
    [
        FileStamp::of(&resolver.cert_path),
        FileStamp::of(&resolver.key_path),
    ]
}

/// Modification time, size and inode of a file (following symlinks, so a Kubernetes-style swap of
/// a `..data` link counts as a change too).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}
