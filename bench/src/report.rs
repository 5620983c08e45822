//! The results: JSON (headline figures at the top level, every detail below), a Markdown report
//! with the goals, and the growth plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::binary_check::BinaryCheckRun;
use crate::dispatch::DispatchRun;
use crate::emulation::EmulationRun;
use crate::farm::DbKind;
use crate::machine::Machine;
use crate::overhead::OverheadRun;
use crate::plot::{self, Panel, Series};
use crate::realworld::RealworldRun;
use crate::soak::SoakRun;
use crate::stats::round;
use crate::stitching::StitchRun;

/// The issue's goals for this 2-core machine.
pub mod goals {
    /// End-to-end overhead, seconds.
    pub const OVERHEAD_SECS: f64 = 1.0;
    /// End-to-end overhead as a share of a one-minute build, percent.
    pub const OVERHEAD_PERCENT_OF_MINUTE: f64 = 2.0;
    /// Dispatch latency p50, ms.
    pub const DISPATCH_P50_MS: f64 = 20.0;
    /// Dispatch latency p99, ms.
    pub const DISPATCH_P99_MS: f64 = 200.0;
    /// Dispatches per second.
    pub const DISPATCHES_PER_S: f64 = 500.0;
    /// Coordinator peak RSS, MiB.
    pub const RSS_MB: f64 = 200.0;
    /// Stitching p50, ms.
    pub const STITCH_P50_MS: f64 = 100.0;
}

/// Hand-written analysis appended to the Markdown report (profiles, what dominates, fixes).
const ANALYSIS: &str = "bench/analysis.md";

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine and code.
    pub machine: Machine,
    /// The command that produced it.
    pub command: String,
    /// Seconds the whole run took.
    pub wall_secs: f64,
    /// Dispatch runs, one per database.
    pub dispatch: Vec<DispatchRun>,
    /// Stitching.
    pub stitch: Option<StitchRun>,
    /// Dispatch runs at several farm sizes, on SQLite.
    pub growth: Vec<DispatchRun>,
    /// End-to-end overhead.
    pub overhead: Option<OverheadRun>,
    /// The price of emulation.
    pub emulation: Option<EmulationRun>,
    /// Real teams' builds: archfarm's caches against plain buildah.
    pub realworld: Option<RealworldRun>,
    /// The binary check's cost on a 1 GiB layer.
    pub binary_check: Option<BinaryCheckRun>,
    /// Soak runs: what the coordinator keeps under a short retention, per database.
    pub soak: Vec<SoakRun>,
}

/// The headline figures, flat, for scripts and dashboards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Headline {
    /// Protocol-level agents in the first dispatch run.
    pub agents: Option<usize>,
    /// Builds queued before its backlog phase.
    pub queued_builds: Option<usize>,
    /// Its database.
    pub database: Option<DbKind>,
    /// Build queued (agents waiting) to lease in hand, p50, ms (streaming phase).
    pub dispatch_p50_ms: Option<f64>,
    /// The same, p99.
    pub dispatch_p99_ms: Option<f64>,
    /// Leases per second while draining the backlog.
    pub dispatches_per_s: Option<f64>,
    /// Lease-call latency while draining the backlog (every agent asking at once), p50, ms.
    pub backlog_lease_p50_ms: Option<f64>,
    /// The same, p99.
    pub backlog_lease_p99_ms: Option<f64>,
    /// Coordinator peak RSS over the run, MiB.
    pub rss_mb: Option<f64>,
    /// Coordinator CPU while draining the backlog, % of one core.
    pub coordinator_cpu_percent: Option<f64>,
    /// Verify and push of a 4-platform index, p50, ms (direct call).
    pub stitch_p50_ms: Option<f64>,
    /// The same through a coordinator (last build reported to index pushed), p50, ms.
    pub stitch_via_coordinator_p50_ms: Option<f64>,
    /// End-to-end overhead of a real 4-platform job, seconds.
    pub overhead_secs: Option<f64>,
    /// That as a share of a one-minute build, percent.
    pub overhead_percent_of_one_minute: Option<f64>,
}

impl Report {
    /// An empty report for this machine and command.
    pub fn new(machine: Machine, command: String) -> Report {
        Report {
            machine,
            command,
            wall_secs: 0.0,
            dispatch: Vec::new(),
            stitch: None,
            growth: Vec::new(),
            overhead: None,
            emulation: None,
            realworld: None,
            binary_check: None,
            soak: Vec::new(),
        }
    }

    /// The headline figures.
    pub fn headline(&self) -> Headline {
        let d = self.dispatch.first().or(self.growth.first());
        Headline {
            agents: d.map(|d| d.shape.agents),
            queued_builds: d.map(|d| d.shape.queued_builds),
            database: d.map(|d| d.database),
            dispatch_p50_ms: d.map(|d| d.streaming.latency.p50_ms),
            dispatch_p99_ms: d.map(|d| d.streaming.latency.p99_ms),
            dispatches_per_s: d.map(|d| d.backlog.dispatches_per_s),
            backlog_lease_p50_ms: d.map(|d| d.backlog.latency.p50_ms),
            backlog_lease_p99_ms: d.map(|d| d.backlog.latency.p99_ms),
            rss_mb: d.map(|d| d.coordinator_peak_rss_mb),
            coordinator_cpu_percent: d.map(|d| d.backlog.coordinator_cpu_percent),
            stitch_p50_ms: self.stitch.as_ref().map(|s| s.direct.p50_ms),
            stitch_via_coordinator_p50_ms: self.stitch.as_ref().map(|s| s.via_coordinator.p50_ms),
            overhead_secs: self.overhead.as_ref().map(|o| o.overhead_secs),
            overhead_percent_of_one_minute: self
                .overhead
                .as_ref()
                .map(|o| o.overhead_percent_of_one_minute),
        }
    }

    /// Writes the JSON, the Markdown and the plot where asked.
    pub fn write(
        &self,
        json: Option<&Path>,
        markdown: Option<&Path>,
        plot: Option<&Path>,
    ) -> anyhow::Result<()> {
        if let Some(path) = json {
            let mut value = serde_json::to_value(self.headline())?;
            let details = serde_json::to_value(self)?;
            if let (Some(out), Some(details)) = (value.as_object_mut(), details.as_object()) {
                out.extend(details.clone());
            }
            write_file(path, &serde_json::to_string_pretty(&value)?)?;
        }
        let plot_written = match plot {
            Some(path) if self.growth.len() >= 2 => {
                write_file(path, &self.growth_svg())?;
                Some(path)
            }
            _ => None,
        };
        if let Some(path) = markdown {
            let link = plot_written.map(|p| relative_to(p, path));
            let analysis = std::fs::read_to_string(archfarm_e2e::repo_root().join(ANALYSIS)).ok();
            write_file(path, &self.markdown(link.as_deref(), analysis.as_deref()))?;
        }
        Ok(())
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let h = self.headline();
        let mut out = String::from("archfarm-bench results\n");
        let f = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v} {unit}"));
        let _ = writeln!(
            out,
            "  dispatch ({} agents, {} queued builds, {}): p50 {} p99 {}, {}, peak RSS {}",
            h.agents.unwrap_or(0),
            h.queued_builds.unwrap_or(0),
            h.database.map_or("-", |d| d.name()),
            f(h.dispatch_p50_ms, "ms"),
            f(h.dispatch_p99_ms, "ms"),
            f(h.dispatches_per_s, "dispatches/s"),
            f(h.rss_mb, "MiB"),
        );
        let _ = writeln!(
            out,
            "  stitching: p50 {} (through the coordinator {})",
            f(h.stitch_p50_ms, "ms"),
            f(h.stitch_via_coordinator_p50_ms, "ms")
        );
        if let Some(o) = &self.overhead {
            let _ = writeln!(
                out,
                "  end-to-end overhead: {} s ({} % of the direct build, {} % of a one-minute build)",
                o.overhead_secs, o.overhead_percent, o.overhead_percent_of_one_minute
            );
        }
        if let Some(e) = &self.emulation {
            let ratios: Vec<String> = e
                .platforms
                .iter()
                .skip(1)
                .map(|p| format!("{} {}x", p.platform, p.slowdown))
                .collect();
            let _ = writeln!(out, "  emulation: {}", ratios.join(", "));
        }
        if let Some(b) = &self.binary_check {
            let _ = writeln!(out, "  binary check: {}", b.summary());
        }
        for r in &self.soak {
            let _ = writeln!(
                out,
                "  soak on {}: database {} bytes at start, {} at peak, {} at end",
                r.database.name(),
                r.start.database_bytes,
                r.peak.database_bytes,
                r.end.database_bytes
            );
        }
        if let Some(r) = &self.realworld {
            let _ = writeln!(out, "  realworld: {}", r.summary());
        }
        let _ = write!(out, "  ({:.0} s in all)", self.wall_secs);
        out
    }

    fn growth_svg(&self) -> String {
        let xs: Vec<f64> = self.growth.iter().map(|g| g.shape.agents as f64).collect();
        let col = |f: &dyn Fn(&DispatchRun) -> f64| self.growth.iter().map(f).collect::<Vec<_>>();
        plot::render(
            "archfarm coordinator: cost growth with farm size (SQLite)",
            "agents",
            &xs,
            &[
                Panel {
                    title: "dispatch latency, build queued to lease".into(),
                    unit: "ms".into(),
                    series: vec![
                        Series {
                            label: "p50".into(),
                            colour: "#1f77b4",
                            values: col(&|g| g.streaming.latency.p50_ms),
                        },
                        Series {
                            label: "p99".into(),
                            colour: "#ff7f0e",
                            values: col(&|g| g.streaming.latency.p99_ms),
                        },
                    ],
                    goal: Some((goals::DISPATCH_P99_MS, "p99 goal".into())),
                },
                Panel {
                    title: "backlog drain".into(),
                    unit: "dispatches/s".into(),
                    series: vec![Series {
                        label: "leases per second".into(),
                        colour: "#2ca02c",
                        values: col(&|g| g.backlog.dispatches_per_s),
                    }],
                    goal: Some((goals::DISPATCHES_PER_S, "goal".into())),
                },
                Panel {
                    title: "coordinator memory".into(),
                    unit: "peak RSS, MiB".into(),
                    series: vec![Series {
                        label: "peak RSS".into(),
                        colour: "#9467bd",
                        values: col(&|g| g.coordinator_peak_rss_mb),
                    }],
                    goal: Some((goals::RSS_MB, "goal".into())),
                },
            ],
        )
    }

    /// The Markdown report.
    pub fn markdown(&self, plot: Option<&str>, analysis: Option<&str>) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Benchmarks\n\n\
             What the coordinator adds on top of the builds themselves, measured by `archfarm-bench` \
             (`bench/`). Every figure below comes from one run of:\n\n\
             ```\n{}\n```\n\n\
             This file is written by that command (the JSON beside it has every figure); the analysis \
             at the end is kept in `{ANALYSIS}`. Benchmarks report, they never fail on a figure.\n",
            self.command
        );
        let _ = writeln!(
            s,
            "## Machine\n\n| | |\n|---|---|\n| CPU | {} ({} cores available) |\n| memory | {} GiB |\n\
             | system | {}, {} |\n| code | `{}`, {} |\n| tools | {}; {}; {} |\n| date | {} |\n| whole run | {:.0} s |\n",
            m.cpu, m.cores, m.memory_gib, m.os, m.kernel, m.commit, m.rustc, m.buildah, m.qemu,
            m.postgres_client, m.date, self.wall_secs
        );
        self.goals_table(&mut s);
        self.overhead_section(&mut s);
        self.dispatch_section(&mut s);
        self.stitch_section(&mut s);
        self.emulation_section(&mut s);
        self.growth_section(&mut s, plot);
        if let Some(r) = &self.realworld {
            s.push_str(&r.markdown());
        }
        if let Some(b) = &self.binary_check {
            s.push_str(&b.markdown());
        }
        s.push_str(&crate::soak::markdown(&self.soak));
        if let Some(a) = analysis {
            let _ = writeln!(s, "{}", a.trim_end());
        }
        s
    }

    fn goals_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Against the goals\n\n| figure | goal | measured | |\n|---|---|---|---|"
        );
        let row = |s: &mut String,
                   name: &str,
                   goal: &str,
                   value: Option<f64>,
                   unit: &str,
                   met: &dyn Fn(f64) -> bool,
                   miss: &dyn Fn(f64) -> String| {
            if let Some(v) = value {
                let verdict = if met(v) {
                    "met".to_string()
                } else {
                    format!("**missed**: {}", miss(v))
                };
                let _ = writeln!(s, "| {name} | {goal} | {v} {unit} | {verdict} |");
            }
        };
        let times = |goal: f64| move |v: f64| format!("{:.1}x the goal", v / goal);
        if let Some(o) = &self.overhead {
            row(
                s,
                "end-to-end overhead, 4 platforms",
                "< 1 s",
                Some(o.overhead_secs),
                "s",
                &|v| v < goals::OVERHEAD_SECS,
                &|v| format!("by {:.2} s", v - goals::OVERHEAD_SECS),
            );
            row(
                s,
                "the same, share of a one-minute build",
                "< 2 %",
                Some(o.overhead_percent_of_one_minute),
                "%",
                &|v| v < goals::OVERHEAD_PERCENT_OF_MINUTE,
                &|v| format!("by {:.1} points", v - goals::OVERHEAD_PERCENT_OF_MINUTE),
            );
        }
        for d in &self.dispatch {
            let db = d.database.name();
            let n = d.shape.agents;
            row(
                s,
                &format!("dispatch p50, {n} agents, {db}"),
                "≤ 20 ms",
                Some(d.streaming.latency.p50_ms),
                "ms",
                &|v| v <= goals::DISPATCH_P50_MS,
                &times(goals::DISPATCH_P50_MS),
            );
            row(
                s,
                &format!("dispatch p99, {n} agents, {db}"),
                "≤ 200 ms",
                Some(d.streaming.latency.p99_ms),
                "ms",
                &|v| v <= goals::DISPATCH_P99_MS,
                &times(goals::DISPATCH_P99_MS),
            );
            row(
                s,
                &format!("dispatches per second, {db}"),
                "≥ 500",
                Some(d.backlog.dispatches_per_s),
                "/s",
                &|v| v >= goals::DISPATCHES_PER_S,
                &|v| format!("{:.0} % of the goal", 100.0 * v / goals::DISPATCHES_PER_S),
            );
            row(
                s,
                &format!("coordinator peak RSS, {db}"),
                "≤ 200 MB",
                Some(d.coordinator_peak_rss_mb),
                "MiB",
                &|v| v <= goals::RSS_MB,
                &times(goals::RSS_MB),
            );
        }
        if let Some(st) = &self.stitch {
            row(
                s,
                "stitching p50 (verify + push)",
                "≤ 100 ms",
                Some(st.direct.p50_ms),
                "ms",
                &|v| v <= goals::STITCH_P50_MS,
                &times(goals::STITCH_P50_MS),
            );
        }
        if let Some(r) = &self.realworld {
            s.push_str(&r.goal_lines());
        }
        s.push('\n');
    }

    fn overhead_section(&self, s: &mut String) {
        let Some(o) = &self.overhead else { return };
        let _ = writeln!(
            s,
            "## 1. End-to-end overhead\n\n\
             `archfarm build --platform linux/amd64,linux/arm64,linux/ppc64le,linux/s390x` of `{}` through a \
             coordinator on SQLite, a native agent and an emulating one (QEMU, capacity 3), against the same \
             four `buildah build` + `buildah push` run directly and concurrently, alternating, {} runs each. \
             Both sides share the same two cores, so the direct side is the floor the job can reach.\n\n\
             | | seconds (each run) | median |\n|---|---|---|\n\
             | `archfarm build`, CLI start to exit | {:?} | {} |\n\
             | buildah alone, 4 platforms at once, until the last pushed | {:?} | {} |\n\
             | **overhead** | | **{} s** ({} % of the direct time; {} % of a one-minute build) |\n\
             | slowest platform ({}) alone, nothing else running | | {} |\n",
            o.context, o.runs, o.job_secs, round(crate::stats::median(&o.job_secs), 2), o.direct_secs,
            round(crate::stats::median(&o.direct_secs), 2), o.overhead_secs, o.overhead_percent,
            o.overhead_percent_of_one_minute, o.slowest_platform, o.slowest_alone_secs
        );
        let _ = writeln!(
            s,
            "Direct build + push per platform (median): {}.\n",
            o.direct_by_platform_secs
                .iter()
                .map(|(p, v)| format!("{p} {v} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "Where a job's time went (medians, from the job's own timestamps):\n\n| phase | seconds |\n|---|---|");
        for (k, v) in &o.job_phases_secs {
            let _ = writeln!(
                s,
                "| {} | {v} |",
                k.split_once(' ').map_or(k.as_str(), |(_, r)| r)
            );
        }
        s.push('\n');
    }

    fn dispatch_section(&self, s: &mut String) {
        if self.dispatch.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## 2. Dispatch at scale\n\n\
             Protocol-level agents (`bench/src/swarm.rs`: register, long-poll `lease`, report `complete` at \
             once, over the real HTTP API, all in the benchmark's process) against one coordinator process. \
             Agents are spread evenly over the four platforms, capacity 1 each. Latency is measured from the \
             later of *build queued* (the database's `queued_at`) and *agent asking* to *lease in the agent's \
             hands*.\n\n\
             - **Backlog**: every build is queued first, then all agents start. This gives the most dispatches \
             per second. Each agent is always inside a lease call, so a call's latency is agents ÷ rate \
             (Little's law): it measures the queue of agents, not the dispatch path.\n\
             - **Streaming**: the agents wait in long polls while jobs arrive at a steady rate; *queued to \
             lease* is the dispatch latency a pipeline sees. These are the p50/p99 held against the goals.\n\n\
             | database | agents | queued builds | register | submit | backlog: dispatches/s | backlog: lease call p50 / p99 | streaming: offered | streaming: queued → lease p50 / p90 / p99 / max | coordinator CPU (backlog / streaming) | agents' CPU (backlog) | peak RSS | jobs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for d in &self.dispatch {
            dispatch_row(s, d);
        }
        let _ = writeln!(
            s,
            "\nCPU is % of one core (the machine has {}); the benchmark's own clients share the same cores. \
             *Submit* is `POST /api/v1/jobs`, 8 at a time, 4 builds each. *Jobs* is their final states: every \
             job is also stitched into the local registry while the agents drain.\n",
            self.machine.cores
        );
    }

    fn stitch_section(&self, s: &mut String) {
        let Some(st) = &self.stitch else { return };
        let _ = writeln!(
            s,
            "## 3. Stitching\n\n\
             Four per-platform manifests read back and checked (digest, size, the config's platform) and one \
             OCI index pushed, against the local `docker-registry`.\n\n\
             | | samples | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n\
             | `stitch()` called directly (verify + push) | {} | {} ms | {} ms | {} ms | {} ms |\n\
             | through a quiet coordinator: last build reported → index pushed (database, whole ms) | {} | {} ms | {} ms | {} ms | {} ms |\n\
             | a 4-platform job of instant builds, submit → index pushed (client) | {} | {} ms | {} ms | {} ms | {} ms |\n",
            st.direct.count, st.direct.p50_ms, st.direct.p90_ms, st.direct.p99_ms, st.direct.max_ms,
            st.via_coordinator.count, st.via_coordinator.p50_ms, st.via_coordinator.p90_ms, st.via_coordinator.p99_ms, st.via_coordinator.max_ms,
            st.job_round_trip.count, st.job_round_trip.p50_ms, st.job_round_trip.p90_ms, st.job_round_trip.p99_ms, st.job_round_trip.max_ms,
        );
    }

    fn emulation_section(&self, s: &mut String) {
        let Some(e) = &self.emulation else { return };
        let _ = writeln!(
            s,
            "## 4. The price of emulation\n\n\
             One CPU-heavy `RUN` step in each architecture's busybox, built by buildah natively and under QEMU \
             user-mode emulation (binfmt_misc), one build at a time. The step's time is the build with it minus \
             the build without it.\n\n```\n{}\n```\n\n\
             | platform | mode | base build | with the step | the step | slower than native |\n|---|---|---|---|---|---|",
            e.workload
        );
        for p in &e.platforms {
            let _ = writeln!(
                s,
                "| {} | {} | {} s | {} s | {} s | {}x |",
                p.platform, p.mode, p.base_secs, p.heavy_secs, p.step_secs, p.slowdown
            );
        }
        s.push('\n');
    }

    fn growth_section(&self, s: &mut String, plot: Option<&str>) {
        if self.growth.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## 5. Cost growth\n\n\
             The dispatch run on SQLite at several farm sizes (the same queued builds and streaming rate).\n\n\
             | database | agents | queued builds | register | submit | backlog: dispatches/s | backlog: lease call p50 / p99 | streaming: offered | streaming: queued → lease p50 / p90 / p99 / max | coordinator CPU (backlog / streaming) | agents' CPU (backlog) | peak RSS | jobs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for d in &self.growth {
            dispatch_row(s, d);
        }
        if let Some(p) = plot {
            let _ = writeln!(s, "\n![cost growth]({p})\n\n[The plot as SVG]({p}).");
        }
        s.push('\n');
    }
}

fn dispatch_row(s: &mut String, d: &DispatchRun) {
    let b = &d.backlog;
    let st = &d.streaming.latency;
    let mut jobs: Vec<String> = d
        .job_states
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    jobs.sort();
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} s | {} s | **{}** | {} / {} ms | {}/s | **{} / {} / {} / {} ms** | {} % / {} % | {} % | **{} MiB** | {} |",
        d.database.name(),
        d.shape.agents,
        d.shape.queued_builds,
        d.register_secs,
        b.submit_secs,
        b.dispatches_per_s,
        b.latency.p50_ms,
        b.latency.p99_ms,
        d.shape.arrival_per_s,
        st.p50_ms,
        st.p90_ms,
        st.p99_ms,
        st.max_ms,
        b.coordinator_cpu_percent,
        d.streaming.coordinator_cpu_percent,
        b.agents_cpu_percent,
        d.coordinator_peak_rss_mb,
        jobs.join(", ")
    );
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("    wrote {}", path.display());
    Ok(())
}

/// `target` as a link from the directory of `from` (both as given, no file system access).
fn relative_to(target: &Path, from: &Path) -> String {
    let base = from.parent().unwrap_or(Path::new(""));
    target
        .strip_prefix(base)
        .unwrap_or(target)
        .display()
        .to_string()
}
