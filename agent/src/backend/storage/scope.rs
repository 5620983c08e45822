//! One scope's directory: a containers-storage of its own for one push target, so no team's build
//! reuses a layer or a cache another team's build left.
//!
//! ```text
//! scopes/<first 16 hex of sha256(scope name)>/
//!     scope       the scope's name (registry/repository), for people looking at the disk
//!     driver      the storage driver the store was created with
//!     last-used   touched whenever a build acquires the scope (its mtime is what LRU reads)
//!     cache-ids   every RUN --mount=type=cache key a build of this scope used, one per line
//!     root/ runroot/   buildah --root and --runroot
//!     cache/      the persistent RUN --mount=type=cache directories ($TMPDIR/buildah-cache)
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::Driver;

/// The directory name of the scope `name`: the first 16 hex digits of its SHA-256, so any
/// registry and repository name makes a short, safe path.
pub fn dir_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A scope's directory and the files in it.
#[derive(Debug, Clone)]
pub struct ScopeDir(pub PathBuf);

impl ScopeDir {
    /// buildah's `--root`.
    pub fn root(&self) -> PathBuf {
        self.0.join("root")
    }

    /// buildah's `--runroot`.
    pub fn runroot(&self) -> PathBuf {
        self.0.join("runroot")
    }

    /// The persistent cache-mount directory.
    pub fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }

    /// Creates the directories and records `name` and `driver` (a new scope), or does nothing.
    pub fn create(&self, name: &str, driver: Driver) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut db = std::fs::DirBuilder::new();
        db.recursive(true).mode(0o700);
        for d in [self.root(), self.runroot(), self.cache()] {
            db.create(d)?;
        }
        if self.driver().is_none() {
            std::fs::write(self.0.join("scope"), format!("{name}\n"))?;
            std::fs::write(self.0.join("driver"), format!("{driver}\n"))?;
        }
        Ok(())
    }

    /// The driver the store was created with; `None` for a scope not (fully) created.
    pub fn driver(&self) -> Option<Driver> {
        let text = std::fs::read_to_string(self.0.join("driver")).ok()?;
        Driver::parse(&text)
    }

    /// The scope's name as recorded, or its directory name.
    pub fn name(&self) -> String {
        std::fs::read_to_string(self.0.join("scope"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| {
                self.0
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into()
            })
    }

    /// Marks the scope used now.
    pub fn touch(&self) -> io::Result<()> {
        let f = std::fs::File::create(self.0.join("last-used"))?;
        f.set_modified(SystemTime::now())
    }

    /// When a build last acquired the scope (its creation when never).
    pub fn last_used(&self) -> SystemTime {
        std::fs::metadata(self.0.join("last-used"))
            .or_else(|_| std::fs::metadata(&self.0))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The cache keys earlier builds of this scope used.
    pub fn cache_ids(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join("cache-ids"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Adds `ids` to the record.
    pub fn record_cache_ids(&self, ids: &[String]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.0.join("cache-ids"))?;
        for id in ids {
            writeln!(f, "{id}")?;
        }
        f.sync_all()
    }
}

/// Checks a build's cache keys against those its scope's earlier builds used: the cache
/// directories persist, so a key inside (or around) a recorded one would let buildah 1.28 follow
/// a symbolic link an earlier build left there to the host (CVE-2024-9675). Equal keys are fine:
/// that is the cache being reused. Returns the keys not yet recorded.
pub fn check_cache_ids(recorded: &[String], wanted: &[String]) -> Result<Vec<String>, String> {
    let mut new = Vec::new();
    for key in wanted {
        if let Some(other) = recorded.iter().find(|r| nest(key, r)) {
            return Err(format!(
                "the cache '{key}' and the cache '{other}' an earlier build of this repository \
                 used on this agent nest, and buildah 1.28 follows symbolic links a step leaves in \
                 the outer one to the host (CVE-2024-9675); give them ids that do not nest"
            ));
        }
        if !recorded.contains(key) && !new.contains(key) {
            new.push(key.clone());
        }
    }
    Ok(new)
}

/// Whether one cleaned cache key lies strictly inside the other.
fn nest(a: &str, b: &str) -> bool {
    let inside =
        |a: &str, b: &str| a.len() > b.len() && a.starts_with(b) && a[b.len()..].starts_with('/');
    inside(a, b) || inside(b, a)
}

/// Removes `dir` and everything below it, after detaching whatever is mounted under it (an
/// overlay store keeps its containers' file systems mounted; a killed agent leaves them).
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    for mount in mounts_under(dir) {
        if let Err(e) = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(mount = %mount.display(), error = %e, "could not unmount a leftover");
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_become_short_stable_directory_names() {
        let a = dir_name("127.0.0.1:5000/team/app");
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, dir_name("127.0.0.1:5000/team/app"));
        assert_ne!(a, dir_name("127.0.0.1:5000/team/other"));
    }

    #[test]
    fn cache_keys_may_repeat_across_builds_but_never_nest() {
        let recorded = vec!["c".to_string(), "go/mod".to_string()];
        let new = check_cache_ids(&recorded, &["c".into(), "apt".into(), "apt".into()]).unwrap();
        assert_eq!(new, ["apt"]);
        let e = check_cache_ids(&recorded, &["c/x".into()]).unwrap_err();
        assert!(
            e.contains("'c/x'") && e.contains("'c'") && e.contains("CVE-2024-9675"),
            "{e}"
        );
        let e = check_cache_ids(&recorded, &["go".into()]).unwrap_err();
        assert!(e.contains("'go'") && e.contains("'go/mod'"), "{e}");
        assert!(check_cache_ids(&recorded, &["cc".into(), "go/modx".into()]).is_ok());
    }

    #[test]
    fn the_record_and_the_driver_live_in_the_scope_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ScopeDir(tmp.path().join("s"));
        assert_eq!(s.driver(), None);
        s.create("r/x", Driver::Overlay).unwrap();
        assert_eq!(s.driver(), Some(Driver::Overlay));
        assert_eq!(s.name(), "r/x");
        s.record_cache_ids(&["a".into(), "b/c".into()]).unwrap();
        s.record_cache_ids(&["d".into()]).unwrap();
        assert_eq!(s.cache_ids(), ["a", "b/c", "d"]);
        remove_tree(&s.0).unwrap();
        assert!(!s.0.exists());
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }
}
