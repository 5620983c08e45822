//! Command-line flags.

use std::path::PathBuf;

use clap::Parser;

use crate::farm::DbKind;

/// The default PostgreSQL server (the development machines' and `scripts/postgres.sh`'s).
pub const DEFAULT_POSTGRES: &str = archfarm_e2e::database::DEFAULT_POSTGRES;

/// The benchmarks a run may include.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// End-to-end overhead of a real 4-platform job (buildah, QEMU) against buildah alone.
    Overhead,
    /// Dispatch at scale: protocol-level agents and queued builds, on each `--databases`.
    Dispatch,
    /// Verifying and pushing a 4-platform index against the local registry.
    Stitch,
    /// A CPU-heavy build natively and under QEMU for arm64, ppc64le and s390x.
    Emulation,
    /// Dispatch latency and memory at several farm sizes (`--growth`), on SQLite.
    Growth,
    /// A team-like multi-stage build (examples/realworld) on four platforms: cold, rebuilt, and
    /// rebuilt on fresh agents from the registry cache, against plain buildah (issue 16). Slow
    /// (the emulated cold builds take minutes), so only when named in --only.
    Realworld,
    /// Thousands of jobs through one coordinator with a short retention, on each `--databases`:
    /// the database's and the data directory's size at the start, the peak and the end (issue
    /// 18). Minutes, so only when named in --only.
    Soak,
    /// The agent's binary check on a 1 GiB layer against `gzip -dc | tar -t` (issue 19): time
    /// and peak memory. Writes the layer to the scratch directory first, so only when named in
    /// --only.
    BinaryCheck,
}

/// Measures archfarm's coordinator overhead against the physical limit; prints progress to
/// stderr and a summary to stdout.
#[derive(Debug, Parser)]
#[command(name = "archfarm-bench", version)]
pub struct Args {
    /// A short run (under two minutes once built): dispatch on SQLite and stitching only, at a
    /// smaller scale unless --agents/--builds say otherwise.
    #[arg(long)]
    pub quick: bool,

    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the report as Markdown to FILE (BENCHMARKS.md in the repository).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,

    /// Where the cost-growth plot (SVG) goes; default: beside --markdown as
    /// docs/benchmarks/growth.svg.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Only these parts, comma-separated [default: all but realworld; with --quick:
    /// dispatch,stitch].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART")]
    pub only: Vec<Part>,

    /// Databases for the dispatch part, comma-separated [default: sqlite,postgres; with
    /// --quick: sqlite].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "DB")]
    pub databases: Vec<DbKind>,

    /// PostgreSQL server for the postgres runs: a scratch database is created on it and dropped.
    #[arg(long, env = "ARCHFARM_BENCH_POSTGRES", default_value = DEFAULT_POSTGRES, value_name = "URL")]
    pub postgres: String,

    /// Protocol-level agents in the dispatch part [default: 1000].
    #[arg(long, value_name = "N")]
    pub agents: Option<usize>,

    /// Builds queued before the agents start, a multiple of 4 [default: 10000; with --quick: 4000].
    #[arg(long, value_name = "N")]
    pub builds: Option<usize>,

    /// Builds per second arriving in the streaming phase, while the agents wait.
    #[arg(long, default_value_t = 100.0, value_name = "RATE")]
    pub arrival_rate: f64,

    /// Builds submitted in the streaming phase, a multiple of 4 [default: 2000; with --quick: 800].
    #[arg(long, value_name = "N")]
    pub streaming_builds: Option<usize>,

    /// Farm sizes for the growth part, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,100,1000,5000",
        value_name = "N"
    )]
    pub growth: Vec<usize>,

    /// Stitches measured each way [default: 50; with --quick: 20].
    #[arg(long, value_name = "N")]
    pub stitch_samples: Option<usize>,

    /// The realworld part's plain buildah half only, without archfarm's side (to measure the
    /// floor on a machine or branch where archfarm's side cannot run).
    #[arg(long)]
    pub realworld_plain_only: bool,

    /// Jobs in the soak part (four builds each).
    #[arg(long, default_value_t = 3000, value_name = "N")]
    pub soak_jobs: usize,

    /// Jobs per wave in the soak part.
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub soak_wave: usize,

    /// The coordinator's `--retention` in the soak part, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub soak_retention_secs: u64,

    /// Runs of each side of the binary-check part.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub binary_check_runs: usize,

    /// Runs of each of the end-to-end overhead's two sides (archfarm, buildah alone).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub overhead_runs: usize,
}
