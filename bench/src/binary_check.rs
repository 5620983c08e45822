//! The binary check's cost (issue 19): the agent's scan of a 1 GiB layer against the plain tool
//! reading the same layer (`gzip -dc LAYER | tar -t`), time and peak memory of each.
//!
//! The layer is a gzip'd tar written here as a stream: mostly random data (so it does not
//! compress away), text files, and the example's busybox for four architectures copied many
//! times (ELF files the scan judges; for linux/amd64 three quarters of them are foreign). The scan
//! runs as `archfarm-scan-layer` (the agent's own code) in a process of its own, and both sides
//! run under GNU time, whose `%M` is the process tree's peak resident memory.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::stats::round;

/// Uncompressed size of the layer.
pub const TAR_BYTES: u64 = 1 << 30;
/// The platform the scan judges the layer for.
const PLATFORM: &str = "linux/amd64";
/// The architectures whose busybox is copied in.
const ARCHES: [&str; 4] = ["amd64", "arm64", "ppc64le", "s390x"];
/// Copies of each busybox.
const COPIES: usize = 25;
/// Small text files (scripts, configuration): entries the scan reads the head of.
const TEXT_FILES: usize = 5000;

/// What the binary-check part measured.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryCheckRun {
    /// The layer's size compressed, bytes.
    pub layer_bytes: u64,
    /// Its size as a tar, bytes.
    pub tar_bytes: u64,
    /// Its entries.
    pub entries: u64,
    /// ELF executables and shared objects judged.
    pub judged: u64,
    /// How many of them are not for [`PLATFORM`].
    pub foreign: u64,
    /// Runs of each side.
    pub runs: usize,
    /// The scan's wall time, median, seconds.
    pub scan_secs: f64,
    /// The scan's peak resident memory, the largest of the runs, MiB.
    pub scan_peak_mib: f64,
    /// `gzip -dc | tar -t`'s wall time, median, seconds.
    pub plain_secs: f64,
    /// Its peak resident memory (the larger of gzip and tar), the largest of the runs, MiB.
    pub plain_peak_mib: f64,
    /// The scan's time over the plain tool's.
    pub ratio: f64,
}

#[derive(Deserialize)]
struct ScanOutput {
    entries: u64,
    tar_bytes: u64,
    judged: u64,
    foreign: u64,
}

/// Writes the layer into `dir`, then times `runs` scans and plain reads, alternating.
pub fn run(dir: &Path, runs: usize) -> anyhow::Result<BinaryCheckRun> {
    let bin_dir = std::env::var_os("ARCHFARM_BIN_DIR")
        .map(PathBuf::from)
        .context("ARCHFARM_BIN_DIR is not set (the binaries are built first)")?;
    let scanner = bin_dir.join("archfarm-scan-layer");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let layer = dir.join("binary-check-layer.tar.gz");
    let t = Instant::now();
    write_layer(&layer)?;
    let layer_bytes = std::fs::metadata(&layer)?.len();
    eprintln!(
        "    layer written: {} MiB compressed, {:.1} s",
        layer_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    // Both sides read it from the page cache.
    std::io::copy(&mut File::open(&layer)?, &mut std::io::sink())?;
    let layer_arg = layer.to_string_lossy().into_owned();
    let (mut scans, mut plains) = (Vec::new(), Vec::new());
    let mut seen = None;
    for i in 0..runs {
        let (secs, peak, out) = timed(
            dir,
            Command::new(&scanner).args([layer_arg.as_str(), PLATFORM]),
        )?;
        let out: ScanOutput = serde_json::from_str(out.trim())
            .with_context(|| format!("archfarm-scan-layer printed {out:?}"))?;
        scans.push((secs, peak));
        seen = Some(out);
        let (psecs, ppeak, _) = timed(
            dir,
            Command::new("sh").args([
                "-c",
                "gzip -dc \"$1\" | tar -t > /dev/null",
                "sh",
                &layer_arg,
            ]),
        )?;
        plains.push((psecs, ppeak));
        eprintln!(
            "    run {}: scan {secs:.2} s, {peak:.1} MiB; gzip -dc | tar -t {psecs:.2} s, {ppeak:.1} MiB",
            i + 1
        );
    }
    let seen = seen.context("no run")?;
    let median = |v: &[(f64, f64)]| {
        let mut s: Vec<f64> = v.iter().map(|x| x.0).collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let peak = |v: &[(f64, f64)]| v.iter().map(|x| x.1).fold(0.0, f64::max);
    let (scan_secs, plain_secs) = (median(&scans), median(&plains));
    let _ = std::fs::remove_file(&layer);
    Ok(BinaryCheckRun {
        layer_bytes,
        tar_bytes: seen.tar_bytes,
        entries: seen.entries,
        judged: seen.judged,
        foreign: seen.foreign,
        runs,
        scan_secs: round(scan_secs, 2),
        scan_peak_mib: round(peak(&scans), 1),
        plain_secs: round(plain_secs, 2),
        plain_peak_mib: round(peak(&plains), 1),
        ratio: round(scan_secs / plain_secs.max(1e-3), 2),
    })
}

/// Runs `cmd` under GNU time: wall seconds, peak resident MiB of its process tree, stdout.
fn timed(dir: &Path, cmd: &mut Command) -> anyhow::Result<(f64, f64, String)> {
    let report = dir.join("time.out");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let t = Instant::now();
    let out = timed
        .output()
        .context("cannot run /usr/bin/time (Debian: apt-get install time)")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kib: f64 = std::fs::read_to_string(&report)?
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("GNU time reported no peak memory")?;
    Ok((
        secs,
        kib / 1024.0,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Random bytes from a xorshift generator: incompressible, and cheap to make.
struct Noise {
    state: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

/// Writes the layer: busybox copies, text files, then random files up to [`TAR_BYTES`].
fn write_layer(path: &Path) -> anyhow::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut written: u64 = 0;
    let rootfs = archfarm_e2e::repo_root().join("examples/hello/rootfs");
    for arch in ARCHES {
        let busybox = std::fs::read(rootfs.join(arch).join("bin/busybox"))
            .with_context(|| format!("the {arch} busybox (run scripts/setup.sh)"))?;
        for i in 0..COPIES {
            written += add(
                &mut tar,
                &format!("opt/{arch}/bin/tool{i}"),
                busybox.len() as u64,
                &mut &busybox[..],
            )?;
        }
    }
    for i in 0..TEXT_FILES {
        let text = format!(
            "#!/bin/sh\n# script {i}\nexec /opt/amd64/bin/tool{} \"$@\"\n",
            i % COPIES
        );
        written += add(
            &mut tar,
            &format!("usr/share/scripts/{}/s{i}.sh", i % 50),
            text.len() as u64,
            &mut text.as_bytes(),
        )?;
    }
    let mut noise = Noise {
        state: 0x9e37_79b9_7f4a_7c15,
    };
    let mut i = 0u64;
    while written + 512 < TAR_BYTES {
        // 16 KiB to 1 MiB, varied so entries are not all alike.
        let size = (16 * 1024 + (i * 104_729) % (1008 * 1024)).min(TAR_BYTES - written - 512);
        written += add(
            &mut tar,
            &format!("var/data/{}/blob{i}", i % 64),
            size,
            &mut noise,
        )?;
        i += 1;
    }
    let gz = tar.into_inner()?;
    gz.finish()?.into_inner()?.sync_all()?;
    Ok(())
}

/// Appends one regular file of `size` bytes from `data`; returns the bytes it takes in the tar.
fn add<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
) -> anyhow::Result<u64> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o755);
    h.set_mtime(0);
    tar.append_data(&mut h, name, data.take(size))?;
    Ok(512 + size.div_ceil(512) * 512)
}

impl BinaryCheckRun {
    /// The Markdown section.
    pub fn markdown(&self) -> String {
        format!(
            "## 7. The binary check\n\n\
             The agent's check of a built image's ELF files (issue 19) on one layer of {} MiB as a tar \
             ({} MiB gzip'd; {} entries: mostly random data, {TEXT_FILES} scripts, and busybox for four \
             architectures copied {COPIES} times each, {} ELF files of which {} are foreign to \
             {PLATFORM}), run as `archfarm-scan-layer` (the agent's code, in a process of its own) \
             against the plain tool reading the same layer, `gzip -dc LAYER | tar -t > /dev/null`. \
             Both read the layer from the page cache; peak memory is GNU time's `%M` (the largest \
             process of the tree); times are the median of {} runs each, alternating.\n\n\
             | | time | throughput (tar) | peak memory |\n|---|---|---|---|\n\
             | the binary check (`archfarm-scan-layer`) | {} s | {:.0} MiB/s | **{} MiB** |\n\
             | `gzip -dc \\| tar -t` | {} s | {:.0} MiB/s | {} MiB |\n\
             | **ratio** | **{}x** | | |\n",
            self.tar_bytes >> 20,
            self.layer_bytes >> 20,
            self.entries,
            self.judged,
            self.foreign,
            self.runs,
            self.scan_secs,
            (self.tar_bytes >> 20) as f64 / self.scan_secs.max(1e-3),
            self.scan_peak_mib,
            self.plain_secs,
            (self.tar_bytes >> 20) as f64 / self.plain_secs.max(1e-3),
            self.plain_peak_mib,
            self.ratio,
        )
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        format!(
            "scan {} s / {} MiB peak vs gzip -dc | tar -t {} s / {} MiB ({}x)",
            self.scan_secs, self.scan_peak_mib, self.plain_secs, self.plain_peak_mib, self.ratio
        )
    }
}
