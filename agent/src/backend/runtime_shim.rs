//! The OCI runtime buildah is told to use: this agent's own binary under another name, which
//! tightens each `RUN` step's container spec and then becomes the real runtime (runc).
//!
//! Why: buildah 1.28's `build` refuses `--security-opt no-new-privileges` ("not supported") and
//! has no way to set it for `RUN` steps, yet a step must not gain privileges through a setuid
//! binary or file capabilities. runc reads everything from the bundle's `config.json`, so the shim
//! sets `process.noNewPrivileges` there, and closes the seccomp profile's door to new namespaces
//! ([`harden`]), before `runc create` / `runc run` read it. Every other runc command passes
//! through untouched.
//!
//! The shim is a symbolic link named [`SHIM_NAME`] to the agent's executable, beside a file that
//! names the real runtime ([`CONFIG_SUFFIX`]); `main` checks its own name first
//! ([`run_if_invoked`]), so the shim needs no second binary to install.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The name the agent's executable answers to as an OCI runtime.
pub const SHIM_NAME: &str = "archfarm-oci-runtime";
/// Appended to the shim's path for the file naming the real runtime.
pub const CONFIG_SUFFIX: &str = ".runtime";

/// Places the shim in `dir`: a link named [`SHIM_NAME`] to `agent` (the `archfarm-agent`
/// executable, whose `main` calls [`run_if_invoked`]), and beside it the path of `runtime` (looked
/// up in `PATH` when it has no `/`). Returns the shim's path, the value for `buildah --runtime`.
pub fn install(dir: &Path, runtime: &Path, agent: &Path) -> io::Result<PathBuf> {
    let real = resolve(runtime).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the OCI runtime {} was not found; install it (Debian: apt-get install runc)",
                runtime.display()
            ),
        )
    })?;
    std::fs::create_dir_all(dir)?;
    let shim = dir.join(SHIM_NAME);
    // Replaced every start: the agent's binary may have moved since the last one.
    let _ = std::fs::remove_file(&shim);
    std::os::unix::fs::symlink(agent, &shim)?;
    std::fs::write(config_path(&shim), real.as_os_str().as_encoded_bytes())?;
    Ok(shim)
}

/// When this process was started as the shim, does the shim's work: hardens the spec of a
/// container being created and replaces itself with the real runtime. Returns only on failure (an
/// exit code for `main`), or `None` when the process is the agent itself.
pub fn run_if_invoked() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let argv0 = PathBuf::from(args.next()?);
    if argv0.file_name() != Some(OsStr::new(SHIM_NAME)) {
        return None;
    }
    let args: Vec<OsString> = args.collect();
    let fail = |what: String| {
        eprintln!("{SHIM_NAME}: {what}");
        Some(ExitCode::from(1))
    };
    let real = match std::fs::read(config_path(&argv0)) {
        Ok(bytes) => PathBuf::from(String::from_utf8_lossy(&bytes).trim().to_string()),
        Err(e) => return fail(format!("cannot read which runtime to run: {e}")),
    };
    if let Some(bundle) = bundle_being_created(&args) {
        if let Err(e) = harden_bundle(&bundle) {
            // Never start a step with a spec the agent did not get to tighten.
            return fail(format!(
                "cannot harden {}/config.json: {e}",
                bundle.display()
            ));
        }
    }
    let e = Command::new(&real).args(&args).exec();
    fail(format!("cannot run {}: {e}", real.display()))
}

fn config_path(shim: &Path) -> PathBuf {
    let mut p = shim.as_os_str().to_owned();
    p.push(CONFIG_SUFFIX);
    PathBuf::from(p)
}

/// `runtime` itself when it names a path, else its first match in `PATH`.
fn resolve(runtime: &Path) -> Option<PathBuf> {
    if runtime.components().count() > 1 {
        return runtime.is_file().then(|| runtime.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(runtime))
        .find(|p| p.is_file())
}

/// The bundle of a `create` or `run` command line (`--bundle DIR`, `-b DIR`, `--bundle=DIR`); the
/// bundle defaults to the working directory as in runc. `None` for every other command.
fn bundle_being_created(args: &[OsString]) -> Option<PathBuf> {
    let sub = args.iter().position(|a| a == "create" || a == "run")?;
    let rest = &args[sub + 1..];
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--bundle" || a == "-b" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--bundle=")) {
            return Some(PathBuf::from(v));
        }
    }
    Some(PathBuf::from("."))
}

fn harden_bundle(bundle: &Path) -> io::Result<()> {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    harden(&mut spec).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // The bundle's directory name is unique per step (buildah's `buildahNNN`).
    let leaf = std::fs::canonicalize(bundle)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "step".into());
    nest_cgroup(&mut spec, &leaf);
    std::fs::write(&path, serde_json::to_vec(&spec)?)
}

/// Puts the step in a cgroup of its own below the build's: buildah makes `--cgroup-parent` the
/// step's own cgroup path, and runc removes a container's cgroup when the step ends, which would
/// take the build's cgroup, its limits and its counters with it after the first step. Only paths
/// under the agent's [`super::limits`] parent are touched.
pub fn nest_cgroup(spec: &mut serde_json::Value, leaf: &str) {
    let Some(path) = spec.pointer_mut("/linux/cgroupsPath") else {
        return;
    };
    let nested = path
        .as_str()
        .filter(|p| p.starts_with(super::limits::CGROUP_PARENT_PREFIX))
        .map(|p| format!("{}/{leaf}", p.trim_end_matches('/')));
    if let Some(nested) = nested {
        *path = serde_json::Value::String(nested);
    }
}

/// Namespace flags of `clone(2)`: `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;
/// Syscalls refused outright (EPERM), as Docker's default profile refuses them to a container
/// without `CAP_SYS_ADMIN`: `unshare` makes new namespaces (a user namespace hands a step every
/// capability inside it, and with them much of the kernel to attack); the kernel keyring is not
/// namespaced.
const REFUSED: [&str; 4] = ["unshare", "keyctl", "add_key", "request_key"];
const EPERM: u64 = 1;
const ENOSYS: u64 = 38;

/// What the shim changes in a container's spec: `process.noNewPrivileges`, and a seccomp profile
/// that lets no step make namespaces. buildah's default profile (containers/common) allows
/// `unshare`, `clone` and `clone3` with any flags; a step could then create a user namespace and
/// hold `CAP_SYS_ADMIN` inside it. As in Docker's profile: `clone` only without namespace flags,
/// `clone3` answers ENOSYS (its flags sit behind a pointer seccomp cannot read; libc falls back
/// to `clone`), and [`REFUSED`] answers EPERM. A spec without a seccomp profile is refused.
pub fn harden(spec: &mut serde_json::Value) -> Result<(), &'static str> {
    let process = spec
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .ok_or("the spec has no process")?;
    process.insert("noNewPrivileges".into(), serde_json::Value::Bool(true));
    // No profile (seccomp switched off in containers.conf, say): refuse rather than run a step
    // with every system call open.
    let rules = spec
        .pointer_mut("/linux/seccomp/syscalls")
        .and_then(|r| r.as_array_mut())
        .ok_or("the spec has no seccomp profile, and steps run only under one")?;
    // The rules below replace whatever the profile said about these syscalls: libseccomp refuses
    // two rules for one syscall with different actions.
    let ours: Vec<&str> = REFUSED.iter().copied().chain(["clone", "clone3"]).collect();
    for rule in rules.iter_mut() {
        if let Some(names) = rule.get_mut("names").and_then(|n| n.as_array_mut()) {
            names.retain(|n| !n.as_str().is_some_and(|n| ours.contains(&n)));
        }
    }
    rules.retain(|r| {
        r.get("names")
            .and_then(|n| n.as_array())
            .is_none_or(|n| !n.is_empty())
    });
    // s390x passes clone's flags second.
    let flags_arg = if cfg!(target_arch = "s390x") { 1 } else { 0 };
    rules.push(serde_json::json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": flags_arg, "value": CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    }));
    rules.push(
        serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    );
    rules
        .push(serde_json::json!({"names": REFUSED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn only_create_and_run_touch_a_bundle() {
        assert_eq!(
            bundle_being_created(&args("--root /s/runc create --bundle /b/1 --pid-file p id")),
            Some(PathBuf::from("/b/1"))
        );
        assert_eq!(
            bundle_being_created(&args("run -b /b/2 id")),
            Some(PathBuf::from("/b/2"))
        );
        assert_eq!(
            bundle_being_created(&args("--log x run --bundle=/b/3 id")),
            Some(PathBuf::from("/b/3"))
        );
        assert_eq!(
            bundle_being_created(&args("create id")),
            Some(PathBuf::from("."))
        );
        for other in [
            "--root /s start id",
            "kill --all id KILL",
            "delete --force id",
            "--version",
        ] {
            assert_eq!(bundle_being_created(&args(other)), None, "{other}");
        }
    }

    #[test]
    fn hardening_sets_no_new_privileges_and_keeps_the_rest() {
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/sh"], "noNewPrivileges": false, "cwd": "/"},
            "root": {"path": "/r"},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}}
        });
        harden(&mut spec).unwrap();
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["args"][0], "/bin/sh");
        assert_eq!(spec["root"]["path"], "/r");
        assert!(harden(&mut serde_json::json!({"root": {}})).is_err());
        let mut open = serde_json::json!({"process": {"args": ["/bin/sh"]}, "linux": {}});
        assert!(harden(&mut open)
            .unwrap_err()
            .contains("no seccomp profile"));
    }

    #[test]
    fn a_step_goes_below_the_builds_cgroup_and_no_other() {
        let mut spec = serde_json::json!({"linux": {"cgroupsPath": "/archfarm/b1"}});
        nest_cgroup(&mut spec, "buildah123");
        assert_eq!(spec["linux"]["cgroupsPath"], "/archfarm/b1/buildah123");
        let mut other = serde_json::json!({"linux": {"cgroupsPath": "/system.slice/x"}});
        nest_cgroup(&mut other, "buildah123");
        assert_eq!(other["linux"]["cgroupsPath"], "/system.slice/x");
        let mut none = serde_json::json!({"linux": {}});
        nest_cgroup(&mut none, "buildah123");
        assert!(none["linux"].get("cgroupsPath").is_none());
    }

    #[test]
    fn hardening_lets_no_step_make_namespaces() {
        let mut spec = serde_json::json!({
            "process": {"args": ["/bin/sh"]},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read", "clone", "unshare"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3", "keyctl"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]}}
        });
        harden(&mut spec).unwrap();
        let rules = spec["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        let with = |name: &str| -> Vec<&serde_json::Value> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .collect()
        };
        assert_eq!(with("read")[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(with("bpf")[0]["errnoRet"], 1);
        let clone = with("clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["args"][0]["value"], CLONE_NAMESPACES);
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(with("clone3")[0]["errnoRet"], ENOSYS);
        for refused in ["unshare", "keyctl", "add_key"] {
            let r = with(refused);
            assert_eq!(r.len(), 1, "{refused}: {r:?}");
            assert_eq!(r[0]["action"], "SCMP_ACT_ERRNO");
        }
        // The rule that only held clone3 and keyctl is gone, not left with no names.
        assert!(rules
            .iter()
            .all(|r| !r["names"].as_array().unwrap().is_empty()));
    }

    #[test]
    fn the_shim_names_the_real_runtime_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Path::new("/usr/bin/archfarm-agent");
        let shim = install(dir.path(), Path::new("sh"), agent).unwrap();
        assert_eq!(shim.file_name(), Some(OsStr::new(SHIM_NAME)));
        assert_eq!(std::fs::read_link(&shim).unwrap(), agent);
        let real = std::fs::read_to_string(config_path(&shim)).unwrap();
        assert!(real.ends_with("/sh"), "{real}");
        let e = install(dir.path(), Path::new("no-such-runtime-here"), agent).unwrap_err();
        assert!(e.to_string().contains("apt-get install runc"), "{e}");
    }
}
