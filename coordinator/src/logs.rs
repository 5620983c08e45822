//! Build logs, one append-only file per build under `DATA_DIR/logs/<build_id>.log`, capped in size.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

/// The line that ends a log cut at the cap.
pub const TRUNCATION_MARKER: &str =
    "[archfarm] log truncated: the build printed more than the coordinator keeps";

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
    /// truncation marker written once, so a runaway build cannot fill the disk.
    pub async fn append(&self, build: Uuid, lines: &[String]) -> std::io::Result<()> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(build))
            .await?;
        let size = file.metadata().await?.len();
        if size >= self.max_bytes {
            return Ok(());
        }
        let mut out = String::new();
        for line in lines {
            out.push_str(line.trim_end_matches(['\n', '\r']));
            out.push('\n');
        }
        if size + out.len() as u64 > self.max_bytes {
            let keep = (self.max_bytes - size) as usize;
            let mut cut = out.floor_char_boundary_compat(keep);
            cut.push('\n');
            cut.push_str(TRUNCATION_MARKER);
            cut.push('\n');
            // The marker takes the log past the cap, so every later append is dropped.
            out = cut;
        }
        file.write_all(out.as_bytes()).await?;
        Ok(())
    }

    /// The log from byte `offset` to its current end; empty when there is nothing new or no log.
    pub async fn read_from(&self, build: Uuid, offset: u64) -> std::io::Result<Vec<u8>> {
        let mut file = match tokio::fs::File::open(self.path(build)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut out = Vec::new();
        file.read_to_end(&mut out).await?;
        Ok(out)
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
        assert!(logs.read_from(b, 0).await.unwrap().is_empty());
        logs.append(b, &["one".into(), "two\n".into()])
            .await
            .unwrap();
        assert_eq!(logs.read_from(b, 0).await.unwrap(), b"one\ntwo\n");
        assert_eq!(logs.read_from(b, 4).await.unwrap(), b"two\n");
        logs.append(b, &["x".repeat(100)]).await.unwrap();
        logs.append(b, &["after the cap".into()]).await.unwrap();
        let all = String::from_utf8(logs.read_from(b, 0).await.unwrap()).unwrap();
        assert!(all.contains(TRUNCATION_MARKER), "{all}");
        assert!(!all.contains("after the cap"));
        assert_eq!(all.matches(TRUNCATION_MARKER).count(), 1);
    }
}
