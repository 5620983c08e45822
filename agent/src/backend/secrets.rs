//! Build secrets on the agent: one private file per secret, for `buildah build --secret
//! id=ID,src=PATH,type=file`, for the length of one build.
//!
//! The files live in a new directory (mode 0700, each file 0600) beside the context, not in it, so
//! neither `COPY` nor `ADD` can reach them, and a `RUN` step (in its own mount namespace, its root
//! the image being built) sees only what buildah mounts at `/run/secrets/ID`. Values never go on a
//! command line, where `/proc/*/cmdline` would show them: buildah gets paths. `type=file` is
//! explicit because buildah 1.28 otherwise reads the variable named ID from its own environment
//! when one exists (containers/buildah#5282), which would hand the agent's environment to a step.

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use archfarm_protocol::BuildSecret;

/// The secret files of one build, removed with their directory when dropped: when the build
/// ends, fails, is cancelled or panics.
#[derive(Debug)]
pub struct SecretFiles {
    /// None when the build has no secrets: then nothing is written, and nothing can fail.
    dir: Option<PathBuf>,
    /// Each secret's id and file.
    files: Vec<(String, PathBuf)>,
}

impl SecretFiles {
    /// Writes each secret to its own file in a new private directory under `parent`.
    pub fn create(parent: &Path, secrets: &[BuildSecret]) -> io::Result<Self> {
        if secrets.is_empty() {
            return Ok(SecretFiles {
                dir: None,
                files: Vec::new(),
            });
        }
        let dir = parent.join(format!("secrets-{}", uuid::Uuid::new_v4().simple()));
        // buildah splits `--secret` at commas: a path with one would be misread.
        if dir.to_string_lossy().contains(',') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the build directory {} has a comma in its path, which buildah's --secret \
                     cannot take; use a work directory without one",
                    parent.display()
                ),
            ));
        }
        // Not recursive: the directory must be new, so no one else can have opened it.
        DirBuilder::new().mode(0o700).create(&dir)?;
        let mut guard = SecretFiles {
            dir: Some(dir.clone()),
            files: Vec::new(),
        };
        for (i, secret) in secrets.iter().enumerate() {
            // Named by position, not id: the id is checked, but a file name we chose needs no trust.
            let path = dir.join(i.to_string());
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(secret.value.expose().as_bytes())?;
            f.sync_all()?;
            guard.files.push((secret.id.clone(), path));
        }
        Ok(guard)
    }

    /// The `buildah build` options that mount each secret: `--secret id=ID,src=PATH,type=file`.
    pub fn buildah_args(&self) -> Vec<OsString> {
        let mut args = Vec::with_capacity(self.files.len() * 2);
        for (id, path) in &self.files {
            let mut spec = OsString::from(format!("id={id},src="));
            spec.push(path);
            spec.push(",type=file");
            args.extend([OsString::from("--secret"), spec]);
        }
        args
    }
}

impl Drop for SecretFiles {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove build secret files");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use archfarm_protocol::Secret;

    use super::*;

    #[test]
    fn files_are_private_named_by_position_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let secrets = [
            BuildSecret {
                id: "tok".into(),
                value: Secret::new("hunter2"),
            },
            BuildSecret {
                id: "empty".into(),
                value: Secret::new(""),
            },
        ];
        let guard = SecretFiles::create(parent.path(), &secrets).unwrap();
        let args: Vec<String> = guard
            .buildah_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dir = guard.dir.clone().unwrap();
        let d = dir.display();
        assert_eq!(
            args,
            [
                "--secret".to_string(),
                format!("id=tok,src={d}/0,type=file"),
                "--secret".to_string(),
                format!("id=empty,src={d}/1,type=file"),
            ]
        );
        assert!(!args.concat().contains("hunter2"), "paths, never values");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("0")), 0o600);
        assert_eq!(std::fs::read_to_string(dir.join("0")).unwrap(), "hunter2");
        assert_eq!(std::fs::read_to_string(dir.join("1")).unwrap(), "");
        assert!(!format!("{guard:?}").contains("hunter2"));
        drop(guard);
        assert!(!dir.exists(), "removed with its directory");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);

        let comma = parent.path().join("a,b");
        std::fs::create_dir(&comma).unwrap();
        let e = SecretFiles::create(&comma, &secrets).unwrap_err();
        assert!(e.to_string().contains("has a comma"), "{e}");
        let none = SecretFiles::create(&comma, &[]).unwrap();
        assert!(none.buildah_args().is_empty());
        drop(none);
        assert_eq!(
            std::fs::read_dir(&comma).unwrap().count(),
            0,
            "nothing written"
        );
    }
}
