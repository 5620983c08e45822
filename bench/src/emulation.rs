//! The price of emulation: the same CPU-heavy build step natively and under QEMU user-mode
//! emulation (binfmt_misc) for arm64, ppc64le and s390x, with buildah alone.
//!
//! Each platform is built twice from `examples/hello`'s per-architecture busybox: the base image
//! only, and the base plus the CPU-heavy step. The difference is the step's own time, so image
//! commit and set-up, which QEMU barely touches, do not water the ratio down.

use std::time::Instant;

use archfarm_e2e::{BuildContext, Buildah};
use serde::Serialize;

use crate::stats::round;

/// The platforms measured; the first is this machine's own.
pub const PLATFORMS: [&str; 4] = ["linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"];

/// The base image: busybox for the target architecture.
const BASE: &str = "FROM scratch\n\
ARG TARGETARCH\n\
COPY rootfs/${TARGETARCH}/ /\n\
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// The CPU-heavy step: hashing, compression and a shell loop, all in the target's busybox.
pub const WORKLOAD: &str = "dd if=/dev/zero bs=1M count=1536 2>/dev/null | sha256sum \
&& dd if=/dev/zero bs=1M count=256 2>/dev/null | gzip -6 | md5sum \
&& i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done; echo $i";

/// One platform's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EmulatedPlatform {
    /// The platform.
    pub platform: String,
    /// `native` or `qemu`.
    pub mode: String,
    /// The base image's build, seconds.
    pub base_secs: f64,
    /// The base plus the CPU-heavy step, seconds.
    pub heavy_secs: f64,
    /// The step alone (the difference), seconds.
    pub step_secs: f64,
    /// The step's time relative to the native one.
    pub slowdown: f64,
}

/// What the emulation part measured.
#[derive(Debug, Clone, Serialize)]
pub struct EmulationRun {
    /// The shell command of the CPU-heavy step.
    pub workload: String,
    /// Per platform, native first.
    pub platforms: Vec<EmulatedPlatform>,
}

/// Builds each platform's two images, one after the other so that nothing else competes.
pub fn run() -> anyhow::Result<EmulationRun> {
    archfarm_e2e::preflight();
    let context = BuildContext::hello();
    context.write("Dockerfile.base", BASE);
    context.write("Dockerfile.heavy", &format!("{BASE}RUN {WORKLOAD}\n"));
    let mut platforms: Vec<EmulatedPlatform> = Vec::new();
    for platform in PLATFORMS {
        let base_secs = timed_build(&context, platform, "Dockerfile.base")?;
        let heavy_secs = timed_build(&context, platform, "Dockerfile.heavy")?;
        let step_secs = (heavy_secs - base_secs).max(0.0);
        let native = platforms.first().map_or(step_secs, |n| n.step_secs);
        let row = EmulatedPlatform {
            platform: platform.to_string(),
            mode: if platforms.is_empty() {
                "native"
            } else {
                "qemu"
            }
            .to_string(),
            base_secs: round(base_secs, 2),
            heavy_secs: round(heavy_secs, 2),
            step_secs: round(step_secs, 2),
            slowdown: round(step_secs / native.max(1e-3), 1),
        };
        eprintln!(
            "    {platform} ({}): step {:.2} s, {}x native",
            row.mode, row.step_secs, row.slowdown
        );
        platforms.push(row);
    }
    Ok(EmulationRun {
        workload: WORKLOAD.to_string(),
        platforms,
    })
}

/// One `buildah build` in fresh storage, seconds.
fn timed_build(context: &BuildContext, platform: &str, dockerfile: &str) -> anyhow::Result<f64> {
    let buildah = Buildah::new();
    let file = context.path().join(dockerfile);
    let t = Instant::now();
    buildah
        .build(
            platform,
            Some(&file),
            "localhost/bench-emulation",
            context.path(),
        )
        .map_err(anyhow::Error::msg)?;
    Ok(t.elapsed().as_secs_f64())
}
