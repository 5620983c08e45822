//! Build logs, one append-only file per build under `DATA_DIR/logs/<build_id>.log`, capped in size.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

pub use archfarm_protocol::events::TRUNCATION_MARKER;

/// The directory of build logs.
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl LogStore {
    /// Opens (and creates) the directory; logs are cut at `max_bytes`.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(LogStore { dir, max_bytes })
    }

    fn path(&self, build: Uuid) -> PathBuf {
        self.dir.join(format!("{build}.log"))
    }

    /// Appends lines, each ended by a newline. Past the cap the rest is dropped and the
    /// truncation marker written once, so a runaway build cannot fill the disk. Returns whether
    /// the log is now cut, i.e. whether later lines will be dropped too.
    pub async fn append(&self, build: Uuid, lines: &[String]) -> std::io::Result<bool> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(build))
            .await?;
        let size = file.metadata().await?.len();
        if size >= self.max_bytes {
            return Ok(true);
        }
        let mut out = String::new();
        for line in lines {
            out.push_str(line.trim_end_matches(['\n', '\r']));
            out.push('\n');
        }
        // `>=`: a batch that lands exactly on the cap is cut too, so a full log always ends with
        // the marker.
        if size + out.len() as u64 >= self.max_bytes {
            let keep = (self.max_bytes - size) as usize;
            let mut cut = out.floor_char_boundary_compat(keep);
            cut.push('\n');
            cut.push_str(TRUNCATION_MARKER);
            cut.push('\n');
            // The marker takes the log past the cap, so every later append is dropped.
            out = cut;
        }
        file.write_all(out.as_bytes()).await?;
        Ok(size + out.len() as u64 >= self.max_bytes)
    }

    /// The log's current size in bytes (0 when there is none yet).
    pub async fn size(&self, build: Uuid) -> std::io::Result<u64> {
        match tokio::fs::metadata(self.path(build)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// At most `max` bytes of the log from byte `offset`; empty when there is nothing new or no
    /// log. Readers take the log in pieces like this so a large log never sits in memory whole.
    pub async fn read_chunk(
        &self,
        build: Uuid,
        offset: u64,
        max: usize,
    ) -> std::io::Result<Vec<u8>> {
        let file = match tokio::fs::File::open(self.path(build)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut out = Vec::with_capacity(max.min(64 * 1024));
        file.take(max as u64).read_to_end(&mut out).await?;
        Ok(out)
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

    #[tokio::test]
    async fn appends_reads_from_offsets_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path().to_path_buf(), 64).unwrap();
        let b = Uuid::new_v4();
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
    async fn reads_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        let b = Uuid::new_v4();
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
}
