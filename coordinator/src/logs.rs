//! Build logs, kept in the database (so every coordinator sharing it can serve them) as the
//! batches agents report, capped in size per build.

use std::path::Path;

use uuid::Uuid;

use crate::store::{LogBatch, Store, StoreError};

pub use archfarm_protocol::events::TRUNCATION_MARKER;

/// Size of the pieces an old log file is copied into the database in.
const IMPORT_PIECE_BYTES: usize = 64 * 1024;

/// Build logs: appends under a per-build compare-and-set on the log's length, reads by byte range.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Store,
    max_bytes: u64,
}

impl LogStore {
    /// Logs in `store`, cut at `max_bytes`.
    pub fn new(store: Store, max_bytes: u64) -> Self {
        LogStore { store, max_bytes }
    }

    /// Copies log files that a coordinator from before logs were kept in the database left in
    /// `dir` (`<build_id>.log`) into it, then removes them. Returns how many were copied.
    pub async fn import_files(&self, dir: &Path) -> std::io::Result<usize> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(0);
        };
        let mut copied = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(build) = name
                .strip_suffix(".log")
                .and_then(|b| b.parse::<Uuid>().ok())
            else {
                continue;
            };
            let bytes = tokio::fs::read(entry.path()).await?;
            // Only into an empty log, all in one transaction: an import cut short left nothing.
            // Pieces the size agents report keep every read of the log small.
            if !bytes.is_empty()
                && self
                    .store
                    .import_log(build, &bytes, IMPORT_PIECE_BYTES)
                    .await
                    .map_err(io)?
            {
                copied += 1;
            }
            tokio::fs::remove_file(entry.path()).await?;
        }
        Ok(copied)
    }

    /// Appends lines, each ended by a newline. Past the cap the rest is dropped and the
    /// truncation marker written once, so a runaway build cannot fill the disk. Returns whether
    /// the log is now cut, i.e. whether later lines will be dropped too.
    pub async fn append(&self, build: Uuid, lines: &[String]) -> std::io::Result<bool> {
        self.append_batch(build, None, lines).await
    }

    /// [`LogStore::append`] for an agent's batch: a numbered one (`batch`) is stored only when
    /// it is past the last one its lease stored, so a retry after a lost answer, or a batch that
    /// arrives after a later one, is dropped (and answered as if stored: the lines are there, or
    /// later ones are).
    pub async fn append_batch(
        &self,
        build: Uuid,
        batch: Option<LogBatch>,
        lines: &[String],
    ) -> std::io::Result<bool> {
        let mut joined = String::new();
        for line in lines {
            joined.push_str(line.trim_end_matches(['\n', '\r']));
            joined.push('\n');
        }
        loop {
            let Some(position) = self.store.log_position(build).await.map_err(io)? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no build {build} to log for"),
                ));
            };
            let size = position.bytes;
            if size >= self.max_bytes {
                return Ok(true);
            }
            if batch.is_some_and(|b| b.is_stale(position.last_batch)) {
                tracing::debug!(build.id = %build, batch = ?batch, last = ?position.last_batch, "log batch already stored or out of order; dropped");
                return Ok(false);
            }
            let mut out = joined.clone();
            // `>=`: a batch that lands exactly on the cap is cut too, so a full log always ends
            // with the marker.
            if size + out.len() as u64 >= self.max_bytes {
                let keep = (self.max_bytes - size) as usize;
                let mut cut = out.floor_char_boundary_compat(keep);
                cut.push('\n');
                cut.push_str(TRUNCATION_MARKER);
                cut.push('\n');
                // The marker takes the log past the cap, so every later append is dropped.
                out = cut;
            }
            // Lost the compare-and-set to a concurrent append (another report of the same build,
            // perhaps on another replica): read the new length and place the lines after it.
            if self
                .store
                .append_log_at(build, size, out.as_bytes(), batch)
                .await
                .map_err(io)?
            {
                return Ok(size + out.len() as u64 >= self.max_bytes);
            }
        }
    }

    /// The log's current size in bytes (0 when there is none yet).
    pub async fn size(&self, build: Uuid) -> std::io::Result<u64> {
        Ok(self.store.log_size(build).await.map_err(io)?.unwrap_or(0))
    }

    /// At most `max` bytes of the log from byte `offset`; empty when there is nothing new or no
    /// log. Readers take the log in pieces like this so a large log never sits in memory whole.
    pub async fn read_chunk(
        &self,
        build: Uuid,
        offset: u64,
        max: usize,
    ) -> std::io::Result<Vec<u8>> {
        self.store
            .log_bytes_between(build, offset, offset.saturating_add(max as u64))
            .await
            .map_err(io)
    }

    /// The whole lines among at most `max` bytes from `offset`, the offset after the last of
    /// them, and whether the read filled `max` (so more may be waiting). A line still being
    /// written (no newline yet) is left for the next call, unless it alone fills `max`: then it is
    /// cut there, at a character boundary, so a reader never stalls.
    pub async fn read_lines(
        &self,
        build: Uuid,
        offset: u64,
        max: usize,
    ) -> std::io::Result<(Vec<String>, u64, bool)> {
        let bytes = self.read_chunk(build, offset, max).await?;
        let full = bytes.len() >= max;
        let whole = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if full => match std::str::from_utf8(&bytes) {
                // Cut inside a character: stop before it; the next read starts with it whole.
                Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                _ => bytes.len(),
            },
            None => 0,
        };
        let lines = String::from_utf8_lossy(&bytes[..whole])
            .lines()
            .map(str::to_string)
            .collect();
        Ok((lines, offset + whole as u64, full))
    }
}

/// Log callers speak `std::io`; the database's failures travel inside it, with their message.
fn io(e: StoreError) -> std::io::Error {
    std::io::Error::other(e)
}

/// `str::floor_char_boundary` is not stable; this is the same for our use.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> String;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, index: usize) -> String {
        let mut i = index.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        self[..i].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{insert_test_job, test_store};

    /// A log store capped at `max` bytes and a build to log for.
    async fn setup(max: u64) -> (LogStore, Uuid, crate::store::scratch::ScratchDatabase) {
        let (store, db) = test_store().await;
        let job = insert_test_job(&store, "app", &["linux/amd64"]).await;
        let build = store.builds_of_job(job).await.unwrap()[0].id;
        (LogStore::new(store, max), build, db)
    }

    #[tokio::test]
    async fn appends_reads_from_offsets_and_caps() {
        let (logs, b, _db) = setup(64).await;
        assert!(logs.read_chunk(b, 0, 1024).await.unwrap().is_empty());
        let cut = logs
            .append(b, &["one".into(), "two\n".into()])
            .await
            .unwrap();
        assert!(!cut);
        assert_eq!(logs.read_chunk(b, 0, 1024).await.unwrap(), b"one\ntwo\n");
        assert_eq!(logs.read_chunk(b, 4, 1024).await.unwrap(), b"two\n");
        assert_eq!(logs.read_chunk(b, 0, 5).await.unwrap(), b"one\nt");
        assert!(logs.append(b, &["x".repeat(100)]).await.unwrap());
        assert!(logs.append(b, &["after the cap".into()]).await.unwrap());
        let all = String::from_utf8(logs.read_chunk(b, 0, 1024).await.unwrap()).unwrap();
        assert!(all.contains(TRUNCATION_MARKER), "{all}");
        assert!(!all.contains("after the cap"));
        assert_eq!(all.matches(TRUNCATION_MARKER).count(), 1);
    }

    #[tokio::test]
    async fn a_batch_sent_again_or_late_is_stored_once_in_order() {
        let (logs, b, _db) = setup(1 << 20).await;
        let lease = Uuid::new_v4();
        let batch = |seq| Some(LogBatch { lease, seq });
        let lines = |s: &str| vec![format!("{s} 1"), format!("{s} 2")];
        logs.append(b, &["[archfarm] attempt 1".into()])
            .await
            .unwrap();
        logs.append_batch(b, batch(0), &lines("zero"))
            .await
            .unwrap();
        // The answer was lost: the agent sends the same batch again.
        logs.append_batch(b, batch(0), &lines("zero"))
            .await
            .unwrap();
        logs.append_batch(b, batch(1), &lines("one")).await.unwrap();
        // The coordinator's own lines in between change nothing.
        logs.append(b, &["[archfarm] note".into()]).await.unwrap();
        logs.append_batch(b, batch(1), &lines("one")).await.unwrap();
        // Batch 2 was given up on; 3 arrives, then 2 late, then 0 again: only 3 is new.
        logs.append_batch(b, batch(3), &lines("three"))
            .await
            .unwrap();
        logs.append_batch(b, batch(2), &lines("two")).await.unwrap();
        logs.append_batch(b, batch(0), &lines("zero"))
            .await
            .unwrap();
        // The build retried under a new lease numbers its batches from 0 again.
        let again = Some(LogBatch {
            lease: Uuid::new_v4(),
            seq: 0,
        });
        logs.append_batch(b, again, &lines("retry")).await.unwrap();
        logs.append_batch(b, again, &lines("retry")).await.unwrap();
        // Unnumbered batches (older agents) are stored as they come.
        logs.append_batch(b, None, &["old".into()]).await.unwrap();
        logs.append_batch(b, None, &["old".into()]).await.unwrap();
        let all = String::from_utf8(logs.read_chunk(b, 0, 1 << 20).await.unwrap()).unwrap();
        assert_eq!(
            all.lines().collect::<Vec<_>>(),
            [
                "[archfarm] attempt 1",
                "zero 1",
                "zero 2",
                "one 1",
                "one 2",
                "[archfarm] note",
                "three 1",
                "three 2",
                "retry 1",
                "retry 2",
                "old",
                "old"
            ]
        );
        assert_eq!(logs.size(b).await.unwrap(), all.len() as u64);
    }

    #[tokio::test]
    async fn the_same_batch_sent_at_once_from_two_places_is_stored_once() {
        let (logs, b, _db) = setup(1 << 20).await;
        let lease = Uuid::new_v4();
        // The retry overtakes the first send still in flight (two replicas, or one slow answer).
        let sends: Vec<_> = (0..8)
            .map(|_| {
                let logs = logs.clone();
                tokio::spawn(async move {
                    let batch = Some(LogBatch { lease, seq: 0 });
                    logs.append_batch(b, batch, &["once".into()]).await.unwrap();
                })
            })
            .collect();
        for s in sends {
            s.await.unwrap();
        }
        assert_eq!(logs.read_chunk(b, 0, 1024).await.unwrap(), b"once\n");
    }

    #[tokio::test]
    async fn reads_whole_lines_only() {
        let (logs, b, _db) = setup(1 << 20).await;
        logs.append(b, &["alpha".into(), "beta".into()])
            .await
            .unwrap();
        // "alpha\nbe": only the whole line comes back, and the offset stops after it.
        let (lines, next, full) = logs.read_lines(b, 0, 8).await.unwrap();
        assert_eq!((lines, next, full), (vec!["alpha".to_string()], 6, true));
        let (lines, next, full) = logs.read_lines(b, next, 8).await.unwrap();
        assert_eq!((lines, next, full), (vec!["beta".to_string()], 11, false));
        let (lines, next, _) = logs.read_lines(b, next, 8).await.unwrap();
        assert_eq!((lines.len(), next), (0, 11));
        // A line longer than the window is cut rather than waited on forever.
        logs.append(b, &["z".repeat(20)]).await.unwrap();
        let (lines, next, full) = logs.read_lines(b, 11, 8).await.unwrap();
        assert_eq!((lines, next, full), (vec!["z".repeat(8)], 19, true));
        // ... and never inside a character: "ééé" is 6 bytes, a 5-byte window takes two.
        logs.append(b, &["ééé".into()]).await.unwrap();
        let (_, start, _) = logs.read_lines(b, 19, 64).await.unwrap();
        let at = start - 7; // "ééé\n" is 7 bytes
        let (lines, next, _) = logs.read_lines(b, at, 5).await.unwrap();
        assert_eq!((lines, next), (vec!["éé".to_string()], at + 4));
    }

    #[tokio::test]
    async fn concurrent_appends_never_overlap_and_old_files_are_imported() {
        let (logs, b, _db) = setup(1 << 20).await;
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let logs = logs.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        logs.append(b, &[format!("w{w} line {i}")]).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let all = String::from_utf8(logs.read_chunk(b, 0, 1 << 20).await.unwrap()).unwrap();
        assert_eq!(all.lines().count(), 160, "{all}");
        for w in 0..8 {
            let mine: Vec<&str> = all
                .lines()
                .filter(|l| l.starts_with(&format!("w{w} ")))
                .collect();
            let want: Vec<String> = (0..20).map(|i| format!("w{w} line {i}")).collect();
            assert_eq!(mine, want, "each writer's lines whole and in order");
        }
        assert_eq!(logs.size(b).await.unwrap(), all.len() as u64);

        let dir = tempfile::tempdir().unwrap();
        let (logs2, b2, _db2) = setup(1 << 20).await;
        std::fs::write(dir.path().join(format!("{b2}.log")), "from a file\n").unwrap();
        std::fs::write(dir.path().join("not-a-log.txt"), "x").unwrap();
        assert_eq!(logs2.import_files(dir.path()).await.unwrap(), 1);
        assert_eq!(
            logs2.read_chunk(b2, 0, 100).await.unwrap(),
            b"from a file\n"
        );
        assert!(!dir.path().join(format!("{b2}.log")).exists());
        assert!(
            logs.append(Uuid::new_v4(), &["x".into()]).await.is_err(),
            "no such build"
        );
    }
}
