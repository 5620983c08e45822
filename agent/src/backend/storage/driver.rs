//! Which containers-storage driver the agent's stores use: overlay where the kernel allows it
//! (layers shared, not copied), vfs (a full copy of the file system per layer) only as a fallback.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::process::Command;

use crate::backend::process::run_quiet;

/// A storage driver the agent's stores are created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The kernel's overlay file system: each layer holds only its changes.
    Overlay,
    /// A full copy of the file system per layer: works everywhere, slowly and at a cost in disk.
    Vfs,
}

impl Driver {
    /// The name buildah's `--storage-driver` takes, and the API and `archfarm agents` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }

    /// The driver a scope recorded in its `driver` file, if any.
    pub fn parse(s: &str) -> Option<Driver> {
        match s.trim() {
            "overlay" => Some(Driver::Overlay),
            "vfs" => Some(Driver::Vfs),
            _ => None,
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The driver asked for on the command line (`--storage-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// overlay when a probe at start shows it works here, else vfs with a warning; the default.
    Auto,
    /// This driver or nothing: the agent does not start when it does not work.
    Only(Driver),
}

impl FromStr for DriverChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DriverChoice::Auto),
            "overlay" | "overlay2" => Ok(DriverChoice::Only(Driver::Overlay)),
            "vfs" => Ok(DriverChoice::Only(Driver::Vfs)),
            other => Err(format!(
                "'{other}' is not a storage driver: accepted are auto (overlay where it works, \
                 else vfs; the default), overlay and vfs"
            )),
        }
    }
}

impl fmt::Display for DriverChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverChoice::Auto => f.write_str("auto"),
            DriverChoice::Only(d) => d.fmt(f),
        }
    }
}

/// Whether buildah can open an overlay store in `dir` (created, then removed): containers-storage
/// mounts a test overlay when it sets the driver up, so `buildah info` fails where the kernel or
/// the file system under `dir` refuses overlay. `Err` says why, in buildah's words.
pub async fn probe_overlay(program: &Path, dir: &Path) -> Result<(), String> {
    let _ = super::scope::remove_tree(dir);
    let (root, runroot): (PathBuf, PathBuf) = (dir.join("root"), dir.join("runroot"));
    let mut info = Command::new(program);
    info.arg("--root")
        .arg(&root)
        .arg("--runroot")
        .arg(&runroot)
        .args(["--storage-driver", "overlay", "info"]);
    let result = run_quiet(info, "buildah --storage-driver overlay info").await;
    let _ = super::scope::remove_tree(dir);
    result.map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_name_what_is_accepted() {
        assert_eq!("auto".parse(), Ok(DriverChoice::Auto));
        assert_eq!("Overlay".parse(), Ok(DriverChoice::Only(Driver::Overlay)));
        assert_eq!("vfs".parse(), Ok(DriverChoice::Only(Driver::Vfs)));
        let e = "btrfs".parse::<DriverChoice>().unwrap_err();
        assert!(e.contains("'btrfs'") && e.contains("overlay"), "{e}");
        assert_eq!(Driver::parse("vfs\n"), Some(Driver::Vfs));
        assert_eq!(Driver::parse(""), None);
    }
}
