//! Context archives, content-addressed: kept in the database (so every coordinator sharing it can
//! serve them) and cached on this replica's disk under `DATA_DIR/contexts/<hex>.tar.gz`.
//!
//! An upload is streamed to a temporary file while it is hashed and counted, checked, stored in the
//! database and only then renamed into the cache: a wrong digest, an oversized body or a broken
//! archive leaves nothing behind. The check reads the archive within the caps agents unpack it with
//! (see [`check`]), on a blocking thread. A replica that lacks an archive in its cache copies it
//! from the database and checks its digest before serving it.

pub mod check;

use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use archfarm_protocol::limits::Limits;
use archfarm_protocol::Digest;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::store::{Store, StoreError};

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The body hashed to another digest.
    #[error("the uploaded bytes hash to {actual}, not {expected}")]
    DigestMismatch {
        /// Digest in the URL.
        expected: String,
        /// Digest of the body.
        actual: String,
    },
    /// The body passed the size limit.
    #[error("the context is larger than the limit of {limit} bytes (set --max-context-bytes to raise it)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body is not a gzip'd tar archive, or passes one of the caps on its contents.
    #[error(transparent)]
    Refused(#[from] check::CheckError),
    /// The body stream broke off.
    #[error("the upload broke off: {0}")]
    Body(String),
    /// Local I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The copy read back from the database does not hash to its digest.
    #[error("the stored context {digest} is corrupt: it hashes to sha256:{actual}")]
    Corrupt {
        /// The context's digest.
        digest: String,
        /// What the stored bytes hash to.
        actual: String,
    },
}

/// How long a cached archive without a database record is kept: an upload caches its archive a
/// moment before the record is written.
const UNRECORDED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Context archives: the database's copy and this replica's cache of it.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    store: Store,
    limits: Limits,
    /// `--context-cache-max-bytes`: the cache is trimmed to this after every addition.
    max_cache_bytes: u64,
    /// One trim at a time; a trim asked for while one runs is skipped (that one trims enough).
    trimming: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The cache's size as the last trim found it, in bytes.
    cache_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What trimming the cache did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Files deleted.
    pub files: u64,
    /// The cache's size afterwards, in bytes.
    pub bytes: u64,
}

impl BlobStore {
    /// Opens (and creates) the cache directory. Archives cached there by a coordinator from before
    /// contexts were kept in the database are copied into it, so no stored context is lost.
    pub async fn open(dir: PathBuf, store: Store) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&dir)?;
        let blobs = BlobStore {
            dir,
            store,
            limits: Limits::default(),
            max_cache_bytes: u64::MAX,
            trimming: Default::default(),
            cache_bytes: Default::default(),
        };
        for entry in std::fs::read_dir(&blobs.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Uploads cut off by a disconnect or a crash leave their temporary files behind.
            if name.starts_with(".upload-") || name.starts_with(".fetch-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(hex) = name.strip_suffix(".tar.gz") else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            // A copy cut short by a crash is finished: pieces already there are the same bytes.
            if blobs.store.context_exists(digest.as_str()).await?
                && !blobs.store.context_complete(digest.as_str()).await?
            {
                let size = blobs
                    .store
                    .put_context_chunks(digest.as_str(), &entry.path())
                    .await?;
                tracing::info!(context = %digest, size, "cached context copied into the database");
            }
        }
        Ok(blobs)
    }

    /// Checks archives against `limits` rather than the defaults agents use (for tests).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Limits the cache to `bytes` (`--context-cache-max-bytes`).
    pub fn with_cache_limit(mut self, bytes: u64) -> Self {
        self.max_cache_bytes = bytes;
        self
    }

    /// The cache's size as the last trim found it, in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Trims the cache to `--context-cache-max-bytes`: deletes cached archives whose context the
    /// database no longer has (retention deleted it, here or on another replica), then the least
    /// recently used ones no live job needs until the cache fits. Archives of live jobs stay even
    /// past the limit (agents are fetching them; the database has every one anyway). Skipped
    /// when another trim is running.
    pub async fn trim(&self) -> Result<Trimmed, BlobError> {
        let Ok(_one) = self.trimming.try_lock() else {
            return Ok(Trimmed {
                files: 0,
                bytes: self.cache_bytes(),
            });
        };
        let live: std::collections::HashSet<String> =
            self.store.live_contexts().await?.into_iter().collect();
        let mut cached = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".tar.gz") else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            cached.push((used, format!("sha256:{hex}"), entry.path(), meta.len()));
        }
        // Least recently used first (a cache hit sets the file's mtime, see `local`).
        cached.sort();
        let mut total: u64 = cached.iter().map(|c| c.3).sum();
        let mut out = Trimmed::default();
        for (used, digest, path, len) in cached {
            // An upload's archive is cached before its record is written: not gone while young.
            let young = used.elapsed().unwrap_or_default() < UNRECORDED_GRACE;
            let gone =
                !young && !live.contains(&digest) && !self.store.context_exists(&digest).await?;
            let over = total > self.max_cache_bytes && !live.contains(&digest);
            if (gone || over) && std::fs::remove_file(&path).is_ok() {
                total -= len;
                out.files += 1;
                tracing::debug!(context = %digest, bytes = len, gone, "cached context deleted");
            }
        }
        if total > self.max_cache_bytes {
            tracing::warn!(bytes = total, limit = self.max_cache_bytes,
                "the context cache is over --context-cache-max-bytes with archives of live jobs alone");
        }
        out.bytes = total;
        self.cache_bytes
            .store(total, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Deletes this replica's cached copy of an archive whose record retention just deleted;
    /// true when there was one. (Other replicas drop theirs at their next trim.)
    pub fn forget(&self, digest: &str) -> bool {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return false;
        };
        std::fs::remove_file(self.dir.join(format!("{hex}.tar.gz"))).is_ok()
    }

    /// Trims after an archive was added to the cache; a failure is logged, never the caller's.
    async fn trim_after_add(&self) {
        if let Err(e) = self.trim().await {
            tracing::warn!(error = %e, "trimming the context cache failed");
        }
    }

    /// Where this replica caches an archive with this digest.
    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.tar.gz", digest.hex()))
    }

    /// Whether the archive is recorded and all its bytes are stored.
    pub async fn exists(&self, digest: &Digest) -> Result<bool, BlobError> {
        Ok(self.store.context_complete(digest.as_str()).await?)
    }

    /// The archive in this replica's cache, copied there from the database first if need be;
    /// None when the database has no such archive.
    pub async fn local(&self, digest: &Digest) -> Result<Option<PathBuf>, BlobError> {
        let path = self.path(digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            // The file's mtime is its last use, for the cache's least-recently-used trim.
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(Some(path));
        }
        let tmp = self.dir.join(format!(".fetch-{}", uuid::Uuid::new_v4()));
        let result = async {
            let Some(actual) = self.store.copy_context_to(digest.as_str(), &tmp).await? else {
                return Ok(None);
            };
            if actual != digest.hex() {
                return Err(BlobError::Corrupt {
                    digest: digest.to_string(),
                    actual,
                });
            }
            // Two requests fetching at once each rename a whole copy: either wins.
            tokio::fs::rename(&tmp, &path).await?;
            tracing::debug!(context = %digest, "context copied from the database into the cache");
            self.trim_after_add().await;
            Ok(Some(path.clone()))
        }
        .await;
        if !matches!(result, Ok(Some(_))) {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Streams a body to disk, checking size, digest and that it is a readable gzip'd tar.
    /// Returns the size in bytes.
    pub async fn put<S, E>(
        &self,
        digest: &Digest,
        mut body: S,
        limit: u64,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self.dir.join(format!(".upload-{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let actual = Digest::from_sha256_bytes(&hasher.finalize());
            if &actual != digest {
                return Err(BlobError::DigestMismatch {
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            let check = tmp.clone();
            let limits = self.limits;
            let walked =
                tokio::task::spawn_blocking(move || list_entries(&check, &limits, |_, _| false))
                    .await
                    .map_err(|e| BlobError::Body(e.to_string()))??;
            tracing::debug!(context = %digest, entries = walked.entries, bytes = walked.bytes,
                decompressed = walked.decompressed, "context archive checked");
            self.store.put_context_chunks(digest.as_str(), &tmp).await?;
            tokio::fs::rename(&tmp, self.path(digest)).await?;
            self.trim_after_add().await;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// The file at `path` in the archive, read when it is a regular file of at most `max` bytes.
    /// Only that entry's data is decompressed beyond the headers before it.
    pub async fn read_file(
        &self,
        digest: &Digest,
        path: &str,
        max: u64,
    ) -> Result<FileRead, BlobError> {
        let Some(archive) = self.local(digest).await? else {
            return Ok(FileRead::Missing);
        };
        let wanted = normalise(path);
        let limits = self.limits;
        tokio::task::spawn_blocking(move || read_entry(&archive, &limits, &wanted, max))
            .await
            .map_err(|e| BlobError::Body(e.to_string()))?
    }

    /// Whether the archive holds a regular file (or a symlink) at `path`.
    pub async fn contains_file(&self, digest: &Digest, path: &str) -> Result<bool, BlobError> {
        let Some(archive) = self.local(digest).await? else {
            return Ok(false);
        };
        let wanted = normalise(path);
        let limits = self.limits;
        // Archives stored before the caps existed are read within them too.
        let walked = tokio::task::spawn_blocking(move || {
            list_entries(&archive, &limits, |p, kind| {
                (kind.is_file() || kind.is_symlink())
                    && normalise(&String::from_utf8_lossy(p)) == wanted
            })
        })
        .await
        .map_err(|e| BlobError::Body(e.to_string()))??;
        Ok(walked.stopped)
    }
}

/// What [`BlobStore::read_file`] found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    /// No regular file or symlink there.
    Missing,
    /// A regular file, whole.
    Read(Vec<u8>),
    /// A symlink, or a regular file larger than asked for: there, but not read.
    Unread,
}

/// Reads the gzip'd tar `archive` within `limits` up to the entry at `wanted`, whose data it
/// reads when it is a regular file of at most `max` bytes.
fn read_entry(
    archive: &Path,
    limits: &Limits,
    wanted: &str,
    max: u64,
) -> Result<FileRead, BlobError> {
    let file = std::fs::File::open(archive)?;
    let tar = flate2::read::GzDecoder::new(BufReader::new(file));
    use std::io::Read as _;
    let mut found = FileRead::Missing;
    let mut failed = None;
    check::walk_reading(tar, limits, |p, kind, data| {
        if !((kind.is_file() || kind.is_symlink())
            && normalise(&String::from_utf8_lossy(p)) == wanted)
        {
            return false;
        }
        found = FileRead::Unread;
        if kind.is_file() {
            let mut bytes = Vec::new();
            match data.take(max + 1).read_to_end(&mut bytes) {
                Ok(_) if bytes.len() as u64 <= max => found = FileRead::Read(bytes),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        }
        true
    })?;
    match failed {
        Some(e) => Err(BlobError::Body(e.to_string())),
        None => Ok(found),
    }
}

/// Reads every entry of the gzip'd tar `archive` within `limits` (see [`check::walk`]).
fn list_entries(
    archive: &Path,
    limits: &Limits,
    stop: impl FnMut(&[u8], tar::EntryType) -> bool,
) -> Result<check::Walked, BlobError> {
    let file = std::fs::File::open(archive)?;
    let tar = flate2::read::GzDecoder::new(BufReader::new(file));
    Ok(check::walk(tar, limits, stop)?)
}

/// `./a//b` and `a/b` name the same entry.
fn normalise(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, CONTEXT_CHUNK_BYTES};

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, name, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// An archive of three pieces in the database, so copies must join them in order: hashes,
    /// which gzip cannot shrink, a little over 2 MiB of them.
    fn three_piece_archive() -> Vec<u8> {
        let big: Vec<u8> = (0..(CONTEXT_CHUNK_BYTES * 2 / 32 + 1) as u64)
            .flat_map(|i| Sha256::digest(i.to_le_bytes()))
            .collect();
        archive(&[("Dockerfile", b"FROM scratch\n"), ("big", &big)])
    }

    fn digest_of(b: &[u8]) -> Digest {
        Digest::from_sha256_bytes(&Sha256::digest(b))
    }

    fn stream(b: Vec<u8>) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(
            b.chunks(7)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stores_checks_and_finds_files() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _db) = test_store().await;
        let store = BlobStore::open(dir.path().join("c"), db.clone())
            .await
            .unwrap();
        let bytes = archive(&[("./Dockerfile", b"FROM scratch\n"), ("sub/x", b"1")]);
        let d = digest_of(&bytes);
        assert_eq!(
            store.put(&d, stream(bytes.clone()), 1 << 20).await.unwrap(),
            bytes.len() as u64
        );
        // The bytes are in, but the context counts as stored only once its row is written.
        assert!(!store.exists(&d).await.unwrap());
        db.insert_context(d.as_str(), bytes.len() as i64)
            .await
            .unwrap();
        assert!(store.exists(&d).await.unwrap());
        assert!(store.contains_file(&d, "Dockerfile").await.unwrap());
        assert!(store.contains_file(&d, "./sub/x").await.unwrap());
        assert_eq!(
            store.read_file(&d, "./Dockerfile", 64).await.unwrap(),
            FileRead::Read(b"FROM scratch\n".to_vec())
        );
        assert_eq!(
            store.read_file(&d, "Dockerfile", 12).await.unwrap(),
            FileRead::Unread,
            "larger than asked for"
        );
        assert_eq!(
            store.read_file(&d, "Containerfile", 64).await.unwrap(),
            FileRead::Missing
        );
        assert!(!store.contains_file(&d, "Containerfile").await.unwrap());
    }

    #[tokio::test]
    async fn refusals_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _db) = test_store().await;
        let store = BlobStore::open(dir.path().join("c"), db.clone())
            .await
            .unwrap();
        let bytes = archive(&[("Dockerfile", b"FROM scratch\n")]);
        let wrong = digest_of(b"other");
        assert!(matches!(
            store.put(&wrong, stream(bytes.clone()), 1 << 20).await,
            Err(BlobError::DigestMismatch { .. })
        ));
        let d = digest_of(&bytes);
        assert!(matches!(
            store.put(&d, stream(bytes), 10).await,
            Err(BlobError::TooLarge { .. })
        ));
        let garbage = b"not a tarball".to_vec();
        let g = digest_of(&garbage);
        assert!(matches!(
            store.put(&g, stream(garbage), 1 << 20).await,
            Err(BlobError::Refused(check::CheckError::Corrupt(_)))
        ));
        assert_eq!(std::fs::read_dir(dir.path().join("c")).unwrap().count(), 0);
        for refused in [&wrong, &d, &g] {
            assert_eq!(db.context_pieces(refused.as_str()).await.unwrap(), 0);
        }
    }

    /// A gzip'd tar of one GNU long name claiming `claimed` bytes, `present` of them there.
    fn long_name_bomb(claimed: u64, present: usize) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(claimed);
        h.set_cksum();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, h.as_bytes()).unwrap();
        std::io::Write::write_all(&mut gz, &vec![b'a'; present]).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn archives_over_the_caps_are_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _db) = test_store().await;
        let store = BlobStore::open(dir.path().join("c"), db.clone())
            .await
            .unwrap();
        let bomb = long_name_bomb(16 << 20, 1 << 20);
        let d = digest_of(&bomb);
        match store.put(&d, stream(bomb), 1 << 20).await {
            Err(BlobError::Refused(e @ check::CheckError::HeadersTooLarge { .. })) => {
                assert!(e.to_string().contains("16777216"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.exists(&d).await.unwrap());

        let store = store.with_limits(Limits {
            max_bytes: 10,
            max_entries: 10,
        });
        let bytes = archive(&[("Dockerfile", b"FROM scratch\n")]);
        let d = digest_of(&bytes);
        assert!(matches!(
            store.put(&d, stream(bytes), 1 << 20).await,
            Err(BlobError::Refused(check::CheckError::TooLarge {
                limit: 10,
                ..
            }))
        ));
        assert_eq!(std::fs::read_dir(dir.path().join("c")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn finding_a_file_reads_within_the_caps() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _db) = test_store().await;
        let store = BlobStore::open(dir.path().join("c"), db.clone())
            .await
            .unwrap();
        // As if stored before the caps existed: written straight into place.
        let bomb = long_name_bomb(16 << 20, 1 << 20);
        let d = digest_of(&bomb);
        std::fs::write(store.path(&d), bomb).unwrap();
        db.insert_context(d.as_str(), 1).await.unwrap();
        assert!(matches!(
            store.contains_file(&d, "Dockerfile").await,
            Err(BlobError::Refused(
                check::CheckError::HeadersTooLarge { .. }
            ))
        ));
    }

    #[tokio::test]
    async fn another_replica_serves_the_archive_from_the_database() {
        let (db, _db) = test_store().await;
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = BlobStore::open(a_dir.path().into(), db.clone())
            .await
            .unwrap();
        let b = BlobStore::open(b_dir.path().into(), db.clone())
            .await
            .unwrap();
        let bytes = three_piece_archive();
        let d = digest_of(&bytes);
        a.put(&d, stream(bytes.clone()), 1 << 30).await.unwrap();
        db.insert_context(d.as_str(), bytes.len() as i64)
            .await
            .unwrap();
        assert!(db.context_pieces(d.as_str()).await.unwrap() >= 3);
        assert!(b.exists(&d).await.unwrap());
        let path = b
            .local(&d)
            .await
            .unwrap()
            .expect("copied from the database");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(b.contains_file(&d, "big").await.unwrap());
        assert!(b.local(&digest_of(b"none")).await.unwrap().is_none());

        // A piece changed in the database is caught before anything is served.
        let c_dir = tempfile::tempdir().unwrap();
        let c = BlobStore::open(c_dir.path().into(), db.clone())
            .await
            .unwrap();
        sqlx::query("UPDATE context_chunks SET data = $1 WHERE digest = $2 AND seq = 1")
            .bind(vec![0u8; 10])
            .bind(d.as_str())
            .execute(db.pool())
            .await
            .unwrap();
        assert!(matches!(c.local(&d).await, Err(BlobError::Corrupt { .. })));
        assert_eq!(
            std::fs::read_dir(c_dir.path()).unwrap().count(),
            0,
            "no partial copy kept"
        );
    }

    #[tokio::test]
    async fn archives_cached_before_the_database_kept_them_are_copied_in_at_open() {
        let (db, _db) = test_store().await;
        let dir = tempfile::tempdir().unwrap();
        let bytes = three_piece_archive();
        let d = digest_of(&bytes);
        std::fs::write(dir.path().join(format!("{}.tar.gz", d.hex())), &bytes).unwrap();
        db.insert_context(d.as_str(), bytes.len() as i64)
            .await
            .unwrap();
        assert!(!db.context_complete(d.as_str()).await.unwrap());
        BlobStore::open(dir.path().into(), db.clone())
            .await
            .unwrap();
        assert!(db.context_complete(d.as_str()).await.unwrap());

        // A copy cut short (a crash during the start) is finished at the next start.
        sqlx::query("DELETE FROM context_chunks WHERE digest = $1 AND seq > 0")
            .bind(d.as_str())
            .execute(db.pool())
            .await
            .unwrap();
        assert!(!db.context_complete(d.as_str()).await.unwrap());
        BlobStore::open(dir.path().into(), db.clone())
            .await
            .unwrap();
        assert!(db.context_complete(d.as_str()).await.unwrap());

        let other = tempfile::tempdir().unwrap();
        let b = BlobStore::open(other.path().into(), db.clone())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(b.local(&d).await.unwrap().unwrap()).unwrap(),
            bytes
        );
    }
}
