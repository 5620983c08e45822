//! The archfarm benchmark harness: what the coordinator adds on top of the builds themselves.
//!
//! Every part starts real processes (a `docker-registry`, `archfarm-coordinator` on SQLite or
//! PostgreSQL, agents, buildah) through the end-to-end harness, and reports figures; none of them
//! asserts a timing. [`run`] builds the release binaries it runs, then each part in turn.

pub mod args;
pub mod binary_check;
pub mod dispatch;
pub mod emulation;
pub mod farm;
pub mod images;
pub mod machine;
pub mod overhead;
pub mod plot;
pub mod procstat;
pub mod realworld;
pub mod report;
pub mod soak;
pub mod stats;
pub mod stitching;
pub mod swarm;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::args::{Args, Part};
use crate::dispatch::Shape;
use crate::farm::DbKind;
use crate::report::Report;

/// Runs the parts `args` asks for and writes the report files.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args)?;
    let started = std::time::Instant::now();
    build_binaries()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut report = Report::new(machine::Machine::read(), plan.command.clone());
    let registry = archfarm_e2e::Registry::start();
    // On a real farm the registry is another machine. Here it shares two cores with the
    // coordinator, and stitching a backlog's jobs kept it at 90 % of one: at the lowest
    // priority it takes only what the coordinator leaves (stitches then lag, and the report
    // says by how long).
    lower_priority(registry.pid())?;
    if plan.parts.contains(&Part::Dispatch) {
        for db in &plan.databases {
            eprintln!("==> dispatch on {}: {:?}", db.name(), plan.shape);
            let run = dispatch::run(&rt, *db, &args.postgres, registry.host(), plan.shape)
                .with_context(|| format!("dispatch on {}", db.name()))?;
            report.dispatch.push(run);
        }
    }
    if plan.parts.contains(&Part::Stitch) {
        eprintln!("==> stitching: {} samples each way", plan.stitch_samples);
        report.stitch = Some(stitching::run(&rt, registry.host(), plan.stitch_samples)?);
    }
    if plan.parts.contains(&Part::Growth) {
        for &agents in &args.growth {
            let shape = Shape {
                agents,
                ..plan.shape
            };
            // The 1,000-agent SQLite run of the dispatch part is the same measurement.
            if let Some(run) = report
                .dispatch
                .iter()
                .find(|r| r.database == DbKind::Sqlite && r.shape.agents == agents)
            {
                report.growth.push(run.clone());
                continue;
            }
            eprintln!("==> growth: {agents} agents on sqlite");
            report.growth.push(
                dispatch::run(&rt, DbKind::Sqlite, &args.postgres, registry.host(), shape)
                    .with_context(|| format!("growth at {agents} agents"))?,
            );
        }
    }
    if plan.parts.contains(&Part::Overhead) {
        eprintln!(
            "==> end-to-end overhead: {} runs each side",
            args.overhead_runs
        );
        report.overhead = Some(overhead::run(&registry, args.overhead_runs)?);
    }
    if plan.parts.contains(&Part::Emulation) {
        eprintln!("==> the price of emulation");
        report.emulation = Some(emulation::run()?);
    }
    if plan.parts.contains(&Part::Realworld) {
        eprintln!("==> real teams' builds: archfarm with a registry cache against plain buildah");
        report.realworld = Some(realworld::run(&registry, args.realworld_plain_only)?);
    }
    if plan.parts.contains(&Part::BinaryCheck) {
        eprintln!("==> the binary check on a 1 GiB layer against gzip -dc | tar -t");
        let dir = std::env::temp_dir().join("archfarm-bench");
        report.binary_check = Some(binary_check::run(&dir, args.binary_check_runs.max(1))?);
    }
    if plan.parts.contains(&Part::Soak) {
        let shape = soak::SoakShape {
            jobs: args.soak_jobs.max(1),
            wave: args.soak_wave.max(1),
            retention_secs: args.soak_retention_secs.max(1),
            interval_secs: 5,
        };
        for db in &plan.databases {
            eprintln!("==> soak on {}: {shape:?}", db.name());
            let run = soak::run(&rt, *db, &args.postgres, registry.host(), shape)
                .with_context(|| format!("soak on {}", db.name()))?;
            report.soak.push(run);
        }
    }
    report.wall_secs = started.elapsed().as_secs_f64();
    report.write(
        args.json.as_deref(),
        args.markdown.as_deref(),
        plan.plot.as_deref(),
    )?;
    println!("{}", report.summary());
    Ok(())
}

/// What one invocation measures.
#[derive(Debug, Clone)]
struct Plan {
    parts: Vec<Part>,
    databases: Vec<DbKind>,
    shape: Shape,
    stitch_samples: usize,
    plot: Option<PathBuf>,
    command: String,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let parts = if !args.only.is_empty() {
            args.only.clone()
        } else if args.quick {
            vec![Part::Dispatch, Part::Stitch]
        } else {
            vec![
                Part::Dispatch,
                Part::Stitch,
                Part::Growth,
                Part::Overhead,
                Part::Emulation,
            ]
        };
        let databases = if !args.databases.is_empty() {
            args.databases.clone()
        } else if args.quick {
            vec![DbKind::Sqlite]
        } else {
            vec![DbKind::Sqlite, DbKind::Postgres]
        };
        let pick = |given: Option<usize>, full: usize, quick: usize| {
            given.unwrap_or(if args.quick { quick } else { full })
        };
        let shape = Shape {
            agents: pick(args.agents, 1000, 1000),
            queued_builds: pick(args.builds, 10_000, 4_000),
            streaming_builds: pick(args.streaming_builds, 2_000, 800),
            arrival_per_s: args.arrival_rate,
        };
        for (flag, n) in [
            ("--builds", shape.queued_builds),
            ("--streaming-builds", shape.streaming_builds),
        ] {
            if n == 0 || n % 4 != 0 {
                bail!("{flag} {n}: give a positive multiple of 4 (each job has 4 platforms)");
            }
        }
        if shape.agents == 0 || args.growth.contains(&0) {
            bail!("--agents and --growth take positive numbers of agents");
        }
        if !(args.arrival_rate > 0.0 && args.arrival_rate <= 100_000.0) {
            bail!(
                "--arrival-rate {}: give builds per second, above 0 and at most 100000",
                args.arrival_rate
            );
        }
        if args.overhead_runs == 0 {
            bail!("--overhead-runs takes at least 1");
        }
        let plot = args.plot.clone().or_else(|| {
            args.markdown.as_ref().map(|md| {
                md.parent()
                    .unwrap_or_else(|| std::path::Path::new("."))
                    .join("docs/benchmarks/growth.svg")
            })
        });
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        Ok(Plan {
            parts,
            databases,
            shape,
            stitch_samples: pick(args.stitch_samples, 50, 20),
            plot,
            command: format!("cargo run --release -p archfarm-bench -- {command}"),
        })
    }
}

/// Gives a process the lowest CPU priority (nice 19).
fn lower_priority(pid: u32) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("invalid pid")?;
    rustix::process::setpriority_process(Some(pid), 19).with_context(|| {
        format!(
            "cannot lower the priority of process {}",
            pid.as_raw_nonzero()
        )
    })
}

/// Builds the coordinator, agent and CLI binaries next to this one (a release build when this is
/// one) and points the harness at them.
fn build_binaries() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(archfarm_e2e::repo_root()).args([
        "build",
        "--bins",
        "-p",
        "archfarm-coordinator",
        "-p",
        "archfarm-agent",
        "-p",
        "archfarm-cli",
        "-p",
        "archfarm-bench",
    ]);
    if release {
        cmd.arg("--release");
    } else {
        eprintln!(
            "archfarm-bench: warning: a debug build; figures are only meaningful with --release"
        );
    }
    eprintln!("==> building the binaries the benchmarks run");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build of the coordinator, agent and CLI failed ({status})");
    }
    for bin in ["archfarm-coordinator", "archfarm-agent", "archfarm"] {
        if !dir.join(bin).is_file() {
            bail!("{bin} was not built in {}", dir.display());
        }
    }
    // The harness looks its binaries up here; this process has no other threads yet.
    std::env::set_var("ARCHFARM_BIN_DIR", &dir);
    Ok(())
}
