//! Which platforms this agent offers: natively from the kernel's machine name, under emulation from
//! the QEMU handlers registered in binfmt_misc.

use std::path::{Path, PathBuf};
use std::process::Command;

use archfarm_protocol::Platform;

use crate::config::Emulate;

/// Where the kernel exposes binfmt_misc handlers.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The platforms an agent registers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platforms {
    /// Built on this machine's own hardware.
    pub native: Vec<Platform>,
    /// Built through a QEMU binfmt_misc handler.
    pub emulated: Vec<Platform>,
}

/// Why the platforms could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Neither `/proc/sys/kernel/arch` nor `uname -m` gave an answer.
    #[error("cannot find this machine's architecture (read /proc/sys/kernel/arch, ran uname -m): {0}; pass --platform")]
    NoMachine(String),
    /// The kernel's machine name is not one archfarm builds for.
    #[error("this machine's architecture '{0}' is not one archfarm builds for; pass --platform to say which platform it builds natively")]
    UnknownMachine(String),
    /// `--emulate` named a platform whose QEMU handler is missing or disabled.
    #[error("--emulate {platform}: no enabled binfmt_misc handler {handler} in {dir}; install qemu-user-static and register its handlers, or leave {platform} out")]
    MissingHandler {
        /// The platform asked for.
        platform: Platform,
        /// The handler file that would provide it, e.g. `qemu-aarch64`.
        handler: String,
        /// The binfmt_misc directory looked in.
        dir: PathBuf,
    },
}

/// Works out the platforms to register: `native` replaces detection when non-empty; `emulate` picks the
/// emulated ones among the enabled handlers in `binfmt_dir`. Platforms that are native are never
/// also offered as emulated.
pub fn resolve(
    native: &[Platform],
    emulate: &Emulate,
    binfmt_dir: &Path,
) -> Result<Platforms, DetectError> {
    let native = if native.is_empty() {
        vec![native_platform()?]
    } else {
        dedup(native.to_vec())
    };
    let emulated = match emulate {
        Emulate::None => Vec::new(),
        Emulate::Auto => binfmt_platforms(binfmt_dir),
        Emulate::Only(wanted) => {
            let available = binfmt_platforms(binfmt_dir);
            for p in wanted {
                if !native.contains(p) && !available.contains(p) {
                    return Err(DetectError::MissingHandler {
                        platform: p.clone(),
                        handler: handler_name(p).to_string(),
                        dir: binfmt_dir.to_path_buf(),
                    });
                }
            }
            dedup(wanted.clone())
        }
    };
    let emulated = emulated
        .into_iter()
        .filter(|p| !native.contains(p))
        .collect();
    Ok(Platforms { native, emulated })
}

/// The platform of this machine's kernel.
pub fn native_platform() -> Result<Platform, DetectError> {
    let machine = kernel_machine()?;
    Platform::from_machine(&machine).ok_or(DetectError::UnknownMachine(machine))
}

/// The kernel's machine name (`x86_64`, `aarch64`, ...). `/proc/sys/kernel/arch` avoids a process
/// where the kernel has it (5.x and later); `uname -m` covers the rest.
fn kernel_machine() -> Result<String, DetectError> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/arch") {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let out = Command::new("uname")
        .arg("-m")
        .output()
        .map_err(|e| DetectError::NoMachine(e.to_string()))?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || s.is_empty() {
        return Err(DetectError::NoMachine(format!(
            "uname -m exited with {}",
            out.status
        )));
    }
    Ok(s)
}

/// The machine this agent runs on, for provenance: the kernel's machine name and the CPU's model
/// from `/proc/cpuinfo` (empty where neither is readable: provenance then says so).
pub fn host() -> archfarm_protocol::provenance::AgentHost {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    archfarm_protocol::provenance::AgentHost {
        machine: kernel_machine().unwrap_or_default(),
        cpu_model: cpu_model(&cpuinfo),
    }
}

/// The CPU's model in `/proc/cpuinfo`: x86's `model name`, else what other kernels write
/// (`Hardware` or `Model` on ARM boards, `cpu` on POWER, `machine` on s390x), else the ARM
/// implementer and part numbers.
fn cpu_model(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    };
    for name in ["model name", "Model", "Hardware", "cpu", "machine"] {
        if let Some(v) = field(name) {
            return v;
        }
    }
    match (field("CPU implementer"), field("CPU part")) {
        (Some(i), Some(p)) => format!("CPU implementer {i}, part {p}"),
        _ => String::new(),
    }
}

/// Platforms provided by enabled `qemu-*` handlers in `dir`, in a stable order. Unknown handlers
/// (qemu-mips, qemu-ppc64 big-endian, ...) are ignored.
pub fn binfmt_platforms(dir: &Path) -> Vec<Platform> {
    // A globally disabled binfmt_misc runs no handler at all.
    if first_line(&dir.join("status")).as_deref() == Some("disabled") {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(machine) = name.strip_prefix("qemu-") else {
            continue;
        };
        if first_line(&entry.path()).as_deref() != Some("enabled") {
            continue;
        }
        let Some(p) = Platform::from_machine(machine) else {
            continue;
        };
        // qemu-arm runs both ARMv7 and ARMv6 binaries.
        if p.architecture() == "arm" {
            out.extend(
                ["linux/arm/v7", "linux/arm/v6"].map(|s| Platform::parse(s).expect("valid")),
            );
        } else {
            out.push(p);
        }
    }
    out.sort();
    dedup(out)
}

/// The binfmt_misc handler that runs binaries of `p`, e.g. `qemu-aarch64` for linux/arm64.
pub fn handler_name(p: &Platform) -> &'static str {
    match p.architecture() {
        "amd64" => "qemu-x86_64",
        "arm64" => "qemu-aarch64",
        "arm" => "qemu-arm",
        "386" => "qemu-i386",
        "ppc64le" => "qemu-ppc64le",
        "s390x" => "qemu-s390x",
        "riscv64" => "qemu-riscv64",
        _ => "qemu-unknown",
    }
}

/// `a,b,c` for log lines; `-` when empty.
pub fn join(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "-".into();
    }
    platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn first_line(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().next().map(|l| l.trim().to_string())
}

fn dedup(list: Vec<Platform>) -> Vec<Platform> {
    let mut out: Vec<Platform> = Vec::with_capacity(list.len());
    for p in list {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn names(l: &[Platform]) -> Vec<String> {
        l.iter().map(|p| p.to_string()).collect()
    }

    fn fake_binfmt(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        for (name, state) in entries {
            let body = format!("{state}\ninterpreter /usr/libexec/qemu-binfmt/x\nflags: PF\n");
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    #[test]
    fn enabled_known_handlers_only() {
        let dir = fake_binfmt(&[
            ("qemu-aarch64", "enabled"),
            ("qemu-arm", "enabled"),
            ("qemu-s390x", "disabled"),
            ("qemu-ppc64le", "enabled"),
            ("qemu-ppc64", "enabled"),
            ("qemu-mips", "enabled"),
            ("qemu-riscv64", "enabled"),
            ("qemu-i386", "enabled"),
            ("qemu-x86_64", "enabled"),
            ("python3.11", "enabled"),
        ]);
        let got = names(&binfmt_platforms(dir.path()));
        assert_eq!(
            got,
            [
                "linux/386",
                "linux/amd64",
                "linux/arm/v6",
                "linux/arm/v7",
                "linux/arm64",
                "linux/ppc64le",
                "linux/riscv64"
            ]
        );
    }

    #[test]
    fn globally_disabled_or_missing_dir_means_none() {
        let dir = fake_binfmt(&[("qemu-aarch64", "enabled")]);
        std::fs::write(dir.path().join("status"), "disabled\n").unwrap();
        assert!(binfmt_platforms(dir.path()).is_empty());
        assert!(binfmt_platforms(Path::new("/nonexistent/binfmt")).is_empty());
    }

    #[test]
    fn auto_drops_native_platforms() {
        let dir = fake_binfmt(&[("qemu-aarch64", "enabled"), ("qemu-x86_64", "enabled")]);
        let r = resolve(&[p("linux/amd64")], &Emulate::Auto, dir.path()).unwrap();
        assert_eq!(names(&r.native), ["linux/amd64"]);
        assert_eq!(names(&r.emulated), ["linux/arm64"]);
    }

    #[test]
    fn none_and_explicit_lists() {
        let dir = fake_binfmt(&[("qemu-aarch64", "enabled"), ("qemu-s390x", "disabled")]);
        let r = resolve(&[p("linux/amd64")], &Emulate::None, dir.path()).unwrap();
        assert!(r.emulated.is_empty());
        let r = resolve(
            &[p("linux/amd64")],
            &Emulate::Only(vec![p("linux/arm64")]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(names(&r.emulated), ["linux/arm64"]);
        let e = resolve(
            &[p("linux/amd64")],
            &Emulate::Only(vec![p("linux/arm64"), p("linux/s390x")]),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("qemu-s390x") && e.contains("linux/s390x"), "{e}");
    }

    #[test]
    fn cpu_models_from_each_kernels_cpuinfo() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(cpu_model(x86), "Intel(R) Xeon(R) CPU @ 2.20GHz");
        let graviton =
            "processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";
        assert_eq!(cpu_model(graviton), "CPU implementer 0x41, part 0xd0c");
        let pi =
            "CPU part\t: 0xd08\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(cpu_model(pi), "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(cpu_model(""), "");
        assert!(!host().machine.is_empty());
    }

    #[test]
    fn native_detection_maps_this_kernel() {
        // Whatever this machine is, it must be one archfarm knows (the CI runs on supported hosts).
        let native = native_platform().unwrap();
        assert_eq!(native.os(), "linux");
    }

    #[test]
    fn handler_names_round_trip_through_from_machine() {
        for s in [
            "linux/amd64",
            "linux/arm64",
            "linux/arm/v7",
            "linux/386",
            "linux/ppc64le",
            "linux/s390x",
            "linux/riscv64",
        ] {
            let h = handler_name(&p(s));
            let back = Platform::from_machine(h.strip_prefix("qemu-").unwrap()).unwrap();
            assert_eq!(back, p(s), "{h}");
        }
    }
}
