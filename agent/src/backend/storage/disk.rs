//! The file system under the work directory: its size (for the default `--max-storage`) and
//! whether it has room for another build.

use std::path::Path;

use crate::backend::limits::human;

/// The share of the work directory's file system the storage may fill by default, in percent.
pub const DEFAULT_SHARE_PERCENT: u64 = 50;
/// Free space a build needs at least (unless `--min-free-disk` says otherwise): 1 GiB, or 5% of
/// the file system where that is less (a small SD card).
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

/// Size and free space of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Its size.
    pub total: u64,
    /// What an unprivileged user may still write (root may write a little more).
    pub free: u64,
}

/// The file system holding `dir`.
pub fn space(dir: &Path) -> std::io::Result<Space> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(Space {
        total: st.f_blocks.saturating_mul(st.f_frsize),
        free: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// The default storage limit: [`DEFAULT_SHARE_PERCENT`] of the file system.
pub fn default_max(space: Space) -> u64 {
    space.total / 100 * DEFAULT_SHARE_PERCENT
}

/// The default free space below which the agent takes no builds.
pub fn default_min_free(space: Space) -> u64 {
    DEFAULT_MIN_FREE.min(space.total / 20)
}

/// Why the file system is too full for a build, if it is.
pub fn too_full(space: Space, min_free: u64, dir: &Path) -> Option<String> {
    (space.free < min_free).then(|| {
        format!(
            "disk full: {} free on the file system of {} (of {}), a build needs {}",
            human(space.free),
            dir.display(),
            human(space.total),
            human(min_free)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_file_system() {
        let big = Space {
            total: 200 << 30,
            free: 10 << 30,
        };
        assert_eq!(default_max(big), 100 << 30);
        assert_eq!(default_min_free(big), 1 << 30);
        let sd = Space {
            total: 8 << 30,
            free: 300 << 20,
        };
        assert_eq!(default_min_free(sd), (8 << 30) / 20);
        let why = too_full(sd, default_min_free(sd), Path::new("/w")).unwrap();
        assert!(why.starts_with("disk full: 300.0 MiB free"), "{why}");
        assert_eq!(too_full(big, default_min_free(big), Path::new("/w")), None);
        assert!(space(Path::new("/")).unwrap().total > 0);
    }
}
