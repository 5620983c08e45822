//! buildah on its own, with its own storage, as an agent would run it: for tests that build images
//! without archfarm (the harness self-check, a test that plays the agent itself).

use std::path::Path;
use std::process::Command;

use crate::process::{clean_env, Scratch};

/// buildah with vfs storage in a scratch directory; removed on drop.
#[derive(Debug)]
pub struct Buildah {
    storage: Scratch,
}

impl Default for Buildah {
    fn default() -> Self {
        Buildah::new()
    }
}

impl Buildah {
    /// buildah with fresh storage.
    pub fn new() -> Buildah {
        Buildah {
            storage: Scratch::new("buildah"),
        }
    }

    /// Runs `buildah --root .. --runroot .. --storage-driver vfs ARGS`; stdout, or a panic that shows
    /// both outputs.
    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        clean_env(&mut cmd);
        let out = cmd.output().expect("run buildah");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "buildah {} failed ({}):\n{stdout}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Builds `context` for `platform` (chroot isolation) and writes the image to the OCI layout
    /// `layout` under the name `img`, as the agent does before pushing by digest.
    pub fn build_to_layout(&self, platform: &str, context: &Path, layout: &Path) {
        let image = format!("localhost/e2e-{}", uuid::Uuid::new_v4().simple());
        self.run(&[
            "build",
            "--isolation",
            "chroot",
            "--platform",
            platform,
            "-t",
            &image,
            &context.display().to_string(),
        ]);
        self.run(&["push", &image, &format!("oci:{}:img", layout.display())]);
    }
}
