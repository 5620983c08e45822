//! Build contexts: copies of `examples/hello` (with its per-architecture base file systems) and
//! `examples/realworld`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::process::Scratch;

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A build context in a scratch directory; removed on drop.
#[derive(Debug)]
pub struct BuildContext {
    dir: Scratch,
}

impl BuildContext {
    /// A copy of `examples/hello`, rootfs included, so a test may change it freely.
    pub fn hello() -> BuildContext {
        let src = repo_root().join("examples/hello");
        let busybox = src.join("rootfs/amd64/bin/busybox");
        assert!(
            busybox.is_file(),
            "{} is missing: run scripts/setup.sh first",
            busybox.display()
        );
        let dir = Scratch::new("context");
        copy_tree(&src, dir.path());
        BuildContext { dir }
    }

    /// A copy of `examples/realworld` (the team-like multi-stage build), so a test may edit its
    /// `main.c`.
    pub fn realworld() -> BuildContext {
        let dir = Scratch::new("context");
        copy_tree(&repo_root().join("examples/realworld"), dir.path());
        BuildContext { dir }
    }

    /// An empty context directory.
    pub fn empty() -> BuildContext {
        BuildContext {
            dir: Scratch::new("context"),
        }
    }

    /// The context directory, as the CLI's CONTEXT argument.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The context directory as a string, for argument lists.
    pub fn arg(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Writes `source` as `NAME.c` and compiles it with `gcc -static` into `NAME` in the context: a
    /// program a `FROM scratch` step can run (static, so no libc or name service in the image).
    pub fn compile_static(&self, name: &str, source: &str) {
        self.write(&format!("{name}.c"), source);
        let out = std::process::Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(self.dir.join(name))
            .arg(self.dir.join(format!("{name}.c")))
            .output()
            .expect("gcc is needed to build test programs (Debian: apt-get install gcc libc6-dev)");
        assert!(
            out.status.success(),
            "gcc -static {name}.c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes (or replaces) a file in the context.
    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create context subdirectory");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Copies a directory tree, keeping symlinks as symlinks and file modes.
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let entry = entry.expect("directory entry");
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_tree(&from, &to);
        } else if kind.is_symlink() {
            let target = fs::read_link(&from).expect("read_link");
            std::os::unix::fs::symlink(target, &to).expect("symlink");
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
    }
}
