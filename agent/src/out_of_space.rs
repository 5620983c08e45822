//! A build that ran out of disk space: not the build's fault, nor this agent's to retry. Its lease
//! goes back to the coordinator (which requeues it without spending an attempt), and the agent
//! takes no builds for a while, showing why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long an agent whose disk filled up during a build takes no builds. The space the build
/// took is freed when it is cleaned up, so the free-space check alone would take the next build
/// (likely the same one, as big) at once; a while keeps the build for another agent and gives an
/// operator time to see why this one is draining. Afterwards the usual `--min-free-disk` check
/// decides.
pub const HOLD: Duration = Duration::from_secs(10 * 60);

/// What the build's error or output says when a write failed for want of space (ENOSPC, as
/// buildah, the kernel's `strerror` and Go's `syscall.ENOSPC` all spell it).
const MARK: &str = "no space left on device";

/// Whether `text` (a line of output, an error) says the disk was full.
pub fn says_out_of_space(text: &str) -> bool {
    text.to_ascii_lowercase().contains(MARK)
}

/// The agent's "disk full" state after a build ran out of space: shared by its builds (which set
/// it) and its lease loop (which reports it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DiskHold(Arc<Mutex<Option<(Instant, String)>>>);

impl DiskHold {
    /// Takes no builds for [`HOLD`] from now, saying `reason`.
    pub fn hold(&self, reason: String) {
        *self.0.lock().expect("disk hold") = Some((Instant::now() + HOLD, reason));
    }

    /// Why the agent takes no builds now, while a hold lasts.
    pub fn reason(&self) -> Option<String> {
        let mut held = self.0.lock().expect("disk hold");
        match &*held {
            Some((until, reason)) if Instant::now() < *until => Some(reason.clone()),
            Some(_) => {
                *held = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_recognised_however_it_is_spelt() {
        assert!(says_out_of_space(
            "Error: committing container for step {Env:[] Command:run}: copying layers: \
             writing blob: write /w/storage/tmp/x: no space left on device"
        ));
        assert!(says_out_of_space(
            "dd: error writing '/big': No space left on device"
        ));
        assert!(!says_out_of_space(
            "Error: building at STEP \"RUN make\": exit status 2"
        ));
        // An I/O error of the agent's own (unpacking the context) says it the same way.
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(says_out_of_space(&enospc.to_string()), "{enospc}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_lasts_its_while_then_lets_go() {
        let hold = DiskHold::default();
        assert_eq!(hold.reason(), None);
        hold.clone()
            .hold("disk full: build b ran out of space".into());
        assert_eq!(
            hold.reason().as_deref(),
            Some("disk full: build b ran out of space")
        );
        tokio::time::advance(HOLD - Duration::from_secs(1)).await;
        assert!(hold.reason().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hold.reason(), None);
    }
}
