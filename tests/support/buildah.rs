//! buildah on its own, with its own storage, as an agent would run it: for tests that build images
//! without archfarm (the harness self-check, a test that plays the agent itself).

use std::path::Path;
use std::process::Command;

use crate::process::{clean_env, Scratch};

/// buildah with its storage (vfs unless asked otherwise) in a scratch directory; removed on drop.
#[derive(Debug)]
pub struct Buildah {
    storage: Scratch,
    /// `--storage-driver`.
    driver: &'static str,
}

impl Default for Buildah {
    fn default() -> Self {
        Buildah::new()
    }
}

impl Buildah {
    /// buildah with fresh vfs storage.
    pub fn new() -> Buildah {
        Self::with_driver("vfs")
    }

    /// buildah with fresh storage on `driver` (`overlay`, as a team's own machine has it as root).
    pub fn with_driver(driver: &'static str) -> Buildah {
        Buildah {
            storage: Scratch::new("buildah"),
            driver,
        }
    }

    /// Runs `buildah --root .. --runroot .. --storage-driver DRIVER ARGS`; stdout, or a panic that
    /// shows both outputs.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Buildah::run`], with the failure (command, status, both outputs) as an error.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("runroot"))
            .args(["--storage-driver", self.driver])
            .args(args)
            // Large temporary files stay in this storage's scratch directory, as the agent keeps
            // them on its work disk.
            .env("TMPDIR", self.storage.path());
        clean_env(&mut cmd);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run buildah (scripts/setup.sh installs it): {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "buildah {} failed ({}):\n{stdout}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(stdout)
    }

    /// `buildah build --isolation chroot --platform PLATFORM [-f DOCKERFILE] -t IMAGE CONTEXT`, as
    /// the agent builds.
    pub fn build(
        &self,
        platform: &str,
        dockerfile: Option<&Path>,
        image: &str,
        context: &Path,
    ) -> Result<(), String> {
        let dockerfile = dockerfile.map(|f| f.display().to_string());
        let context = context.display().to_string();
        let mut args = vec!["build", "--isolation", "chroot", "--platform", platform];
        if let Some(file) = &dockerfile {
            args.extend(["-f", file]);
        }
        args.extend(["-t", image, &context]);
        self.try_run(&args).map(drop)
    }

    /// Builds `context` for `platform` (chroot isolation) and writes the image to the OCI layout
    /// `layout` under the name `img`, as the agent does before pushing by digest.
    pub fn build_to_layout(&self, platform: &str, context: &Path, layout: &Path) {
        let image = format!("localhost/e2e-{}", uuid::Uuid::new_v4().simple());
        self.build(platform, None, &image, context)
            .unwrap_or_else(|e| panic!("{e}"));
        self.run(&["push", &image, &format!("oci:{}:img", layout.display())]);
    }
}
