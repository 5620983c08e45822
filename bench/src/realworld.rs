//! Real teams' builds (issue 16): `examples/realworld` (a Debian bookworm + gcc base per platform
//! behind one index in the local registry, a slow library stage, a one-file app stage) for the
//! four platforms in one run, through archfarm with a registry cache per platform and with plain
//! buildah, `--layers` and without, on the same machine, Dockerfile and base images.
//!
//! Each side builds cold, then again after the same one-line change of `main.c`. archfarm also
//! builds once more after another change on fresh agents (new work dirs) that share only the
//! registry cache. The four platforms build at the same time on both sides (archfarm: a native
//! agent and an emulating one with capacity 3; plain buildah: four builds in four stores), so both
//! share the same two cores and the plain side is the floor archfarm can reach. Every build ends
//! with a push to the registry, and every image is read back (skopeo, umoci) to check the program
//! is for its platform and carries the change, so no figure comes from a build that went wrong.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context as _};
use archfarm_e2e::base_images::push_bookworm_gcc_index;
use archfarm_e2e::realworld::{
    check_program, set_app_version, step_cached, APP_STEP, BASE_REPO_TAG, LIBRARY_STEP,
};
use archfarm_e2e::{
    run_cli, Agent, AgentOptions, BuildContext, Buildah, Coordinator, CoordinatorOptions, Registry,
    CLI_TIMEOUT,
};
use serde::Serialize;

use crate::farm::PLATFORMS;
use crate::stats::round;

/// The storage driver of the plain buildah side: what buildah uses as root on a team's machine.
const PLAIN_DRIVER: &str = "overlay";

/// Seconds per platform, and until the last platform ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// From the first start to the last end, seconds (archfarm: CLI start to exit).
    pub wall_secs: f64,
    /// Each platform's build + push, seconds (archfarm: lease to pushed, from the job record).
    pub by_platform: BTreeMap<String, f64>,
}

impl Timings {
    /// The slowest platform and its time.
    pub fn slowest(&self) -> (String, f64) {
        self.by_platform
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(p, s)| (p.clone(), *s))
            .unwrap_or_default()
    }
}

/// One plain buildah side: cold, then the one-line change, in the same stores.
#[derive(Debug, Clone, Serialize)]
pub struct PlainRun {
    /// `buildah build --layers`?
    pub layers: bool,
    /// The cold build + push.
    pub cold: Timings,
    /// The rebuild + push after the change.
    pub rebuild: Timings,
}

/// One archfarm job of the four platforms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FarmBuild {
    /// Wall time and per-platform times.
    pub timings: Timings,
    /// Per platform: was the library's compile step taken from a cache (its build log)?
    pub library_cached: BTreeMap<String, bool>,
    /// Per platform: was the app's compile step taken from a cache?
    pub app_cached: BTreeMap<String, bool>,
    /// Per platform: the agent that built it.
    pub agents: BTreeMap<String, String>,
}

/// What the realworld part measured.
#[derive(Debug, Clone, Serialize)]
pub struct RealworldRun {
    /// Pushing the base index (four imported mmdebstrap tars), seconds: set-up, not compared.
    pub base_push_secs: f64,
    /// Plain buildah without `--layers`, then with.
    pub plain: Vec<PlainRun>,
    /// Whether archfarm's side ran (`--realworld-plain-only` leaves it out, and the three builds
    /// below empty).
    pub farm_measured: bool,
    /// archfarm, cold.
    pub cold: FarmBuild,
    /// archfarm, after the change, on the same agents.
    pub rebuild: FarmBuild,
    /// archfarm, after another change, on fresh agents with only the registry cache.
    pub fresh: FarmBuild,
}

/// Runs the part against `registry`: the base index, both plain sides, then archfarm unless
/// `plain_only`.
pub fn run(registry: &Registry, plain_only: bool) -> anyhow::Result<RealworldRun> {
    archfarm_e2e::preflight();
    let base = format!("{}/{BASE_REPO_TAG}", registry.host());
    eprintln!("    pushing the base index {base} (mmdebstrap first if the tars are not cached)");
    let t = Instant::now();
    push_bookworm_gcc_index(&Buildah::new(), &PLATFORMS, &base);
    let base_push_secs = round(t.elapsed().as_secs_f64(), 2);
    let mut plain = Vec::new();
    for layers in [false, true] {
        plain.push(plain_side(registry, &base, layers)?);
    }
    let (cold, rebuild, fresh) = if plain_only {
        Default::default()
    } else {
        farm_side(registry, &base)?
    };
    Ok(RealworldRun {
        base_push_secs,
        plain,
        farm_measured: !plain_only,
        cold,
        rebuild,
        fresh,
    })
}

/// Plain buildah: the four platforms at once, each in a store of its own, cold then rebuilt.
fn plain_side(registry: &Registry, base: &str, layers: bool) -> anyhow::Result<PlainRun> {
    let context = BuildContext::realworld();
    let stores: Vec<Buildah> = PLATFORMS
        .iter()
        .map(|_| Buildah::with_driver(PLAIN_DRIVER))
        .collect();
    let side = if layers { "layers" } else { "nolayers" };
    let run = |phase: &str| -> anyhow::Result<Timings> {
        let version = set_app_version(&context, &format!("plain-{side}-{phase}"));
        let timings = plain_builds(registry, base, &context, &stores, layers, phase)?;
        for platform in PLATFORMS {
            let arch = platform.rsplit('/').next().unwrap_or(platform);
            let image = format!("{}/bench/plain-{side}:{phase}-{arch}", registry.host());
            check_program(&image, platform, &version).map_err(anyhow::Error::msg)?;
        }
        eprintln!(
            "    plain buildah {}, {phase}: {:.1} s {:?}",
            if layers {
                "--layers"
            } else {
                "without --layers"
            },
            timings.wall_secs,
            timings.by_platform
        );
        Ok(timings)
    };
    let cold = run("cold")?;
    let rebuild = run("rebuild")?;
    Ok(PlainRun {
        layers,
        cold,
        rebuild,
    })
}

/// The four plain `buildah build` + `buildah push` at the same time, one per store.
fn plain_builds(
    registry: &Registry,
    base: &str,
    context: &BuildContext,
    stores: &[Buildah],
    layers: bool,
    phase: &str,
) -> anyhow::Result<Timings> {
    let side = if layers { "layers" } else { "nolayers" };
    let t = Instant::now();
    let results: Vec<anyhow::Result<(String, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = PLATFORMS
            .iter()
            .zip(stores)
            .map(|(platform, buildah)| {
                let arch = platform.rsplit('/').next().unwrap_or(platform);
                let target = format!("{}/bench/plain-{side}:{phase}-{arch}", registry.host());
                scope.spawn(move || {
                    let t = Instant::now();
                    build_and_push(buildah, platform, base, context, layers, &target)?;
                    Ok((platform.to_string(), round(t.elapsed().as_secs_f64(), 2)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a build thread panicked")))
            })
            .collect()
    });
    let wall_secs = round(t.elapsed().as_secs_f64(), 2);
    Ok(Timings {
        wall_secs,
        by_platform: results.into_iter().collect::<anyhow::Result<_>>()?,
    })
}

/// `buildah build [--layers]` and `buildah push`, as a team runs them by hand: runc isolation (as
/// the agents use) and the base pulled from the plain-HTTP registry.
fn build_and_push(
    buildah: &Buildah,
    platform: &str,
    base: &str,
    context: &BuildContext,
    layers: bool,
    target: &str,
) -> anyhow::Result<()> {
    let image = format!(
        "localhost/bench-realworld-{}",
        uuid::Uuid::new_v4().simple()
    );
    let build_arg = format!("BASE={base}");
    let layers = format!("--layers={layers}");
    let context = context.arg();
    let build = [
        "--cgroup-manager",
        "cgroupfs",
        "build",
        "--isolation",
        "oci",
        "--runtime",
        "runc",
        &layers,
        "--tls-verify=false",
        "--platform",
        platform,
        "--build-arg",
        &build_arg,
        "-t",
        &image,
        &context,
    ];
    buildah.try_run(&build).map_err(anyhow::Error::msg)?;
    let target = format!("docker://{target}");
    buildah
        .try_run(&["push", "--tls-verify=false", &image, &target])
        .map(drop)
        .map_err(anyhow::Error::msg)
}

/// The agents of one generation: a native amd64 one and an emulating one for the other three.
fn start_agents(coordinator: &Coordinator, generation: &str) -> Vec<Agent> {
    vec![
        Agent::start(
            coordinator,
            AgentOptions::new(&format!("native-{generation}"))
                .platform("linux/amd64")
                .emulate("none"),
        ),
        Agent::start(
            coordinator,
            AgentOptions::new(&format!("emulating-{generation}"))
                .capacity(3)
                .emulate("linux/arm64,linux/ppc64le,linux/s390x"),
        ),
    ]
}

/// archfarm: cold and rebuilt on the same agents, then rebuilt on fresh ones.
fn farm_side(registry: &Registry, base: &str) -> anyhow::Result<(FarmBuild, FarmBuild, FarmBuild)> {
    let coordinator = Coordinator::start_with(
        CoordinatorOptions::default()
            .arg("--insecure-registry")
            .arg(registry.host()),
    );
    let context = BuildContext::realworld();
    let mut agents = start_agents(&coordinator, "first");
    let cold = farm_build(&coordinator, registry, base, &context, "cold")?;
    let rebuild = farm_build(&coordinator, registry, base, &context, "rebuild")?;
    for agent in &mut agents {
        agent.stop();
    }
    let _fresh = start_agents(&coordinator, "fresh");
    let fresh = farm_build(&coordinator, registry, base, &context, "fresh")?;
    Ok((cold, rebuild, fresh))
}

/// One `archfarm build` of the four platforms with the registry cache, after setting the app's
/// version to `phase`; its times, what its logs say was cached, and a check of every image.
fn farm_build(
    coordinator: &Coordinator,
    registry: &Registry,
    base: &str,
    context: &BuildContext,
    phase: &str,
) -> anyhow::Result<FarmBuild> {
    let host = registry.host();
    let version = set_app_version(context, &format!("farm-{phase}"));
    let cache = format!("type=registry,ref={host}/cache/realworld");
    let tag = format!("{host}/bench/realworld:{phase}");
    let t = Instant::now();
    let out = run_cli(
        coordinator.url(),
        None,
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            &PLATFORMS.join(","),
            "--build-arg",
            &format!("BASE={base}"),
            "--cache-to",
            &format!("{cache},mode=max"),
            "--cache-from",
            &cache,
            "-t",
            &tag,
            &context.arg(),
        ],
        CLI_TIMEOUT,
    );
    let wall_secs = round(t.elapsed().as_secs_f64(), 2);
    if !out.status.success() {
        bail!(
            "archfarm build ({phase}) failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job = coordinator
        .jobs()
        .into_iter()
        .find(|j| j.tags.contains(&tag))
        .context("the job is not listed")?;
    let mut build = FarmBuild {
        timings: Timings {
            wall_secs,
            by_platform: BTreeMap::new(),
        },
        library_cached: BTreeMap::new(),
        app_cached: BTreeMap::new(),
        agents: BTreeMap::new(),
    };
    for b in &job.builds {
        let platform = b.platform.to_string();
        let (Some(start), Some(end)) = (b.started_at, b.finished_at) else {
            bail!("build {platform} of job {} has no start or end", job.id);
        };
        let secs = (end - start).num_milliseconds() as f64 / 1000.0;
        build.timings.by_platform.insert(platform.clone(), secs);
        let log = coordinator.build_log(b.id);
        let cached = |step| step_cached(&log, step).unwrap_or(false);
        build
            .library_cached
            .insert(platform.clone(), cached(LIBRARY_STEP));
        build.app_cached.insert(platform.clone(), cached(APP_STEP));
        build
            .agents
            .insert(platform.clone(), b.agent.clone().unwrap_or_default());
        let digest = b.digest.as_deref().context("a build without a digest")?;
        check_program(
            &format!("{host}/bench/realworld@{digest}"),
            &platform,
            &version,
        )
        .map_err(anyhow::Error::msg)?;
    }
    eprintln!(
        "    archfarm, {phase}: {wall_secs:.1} s {:?}, library cached {:?}",
        build.timings.by_platform, build.library_cached
    );
    Ok(build)
}

/// The goals, as limits in seconds computed from this run's plain buildah figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// The slowest platform's plain `--layers` rebuild (R), seconds.
    pub plain_rebuild_secs: f64,
    /// The slowest platform's plain cold build, the faster of with and without `--layers` (C).
    pub plain_cold_secs: f64,
    /// A rebuild on the same agents: 1.3 × R + 2 s.
    pub rebuild_secs: f64,
    /// A rebuild on fresh agents: 3 × R + 2 s.
    pub fresh_secs: f64,
    /// A cold build: C + 3 s.
    pub cold_secs: f64,
}

/// One line of the goals table.
#[derive(Debug, Clone, Serialize)]
pub struct GoalRow {
    /// What was measured.
    pub what: String,
    /// The goal's rule, e.g. `≤ 1.3 × R + 2 s`.
    pub rule: &'static str,
    /// The rule's limit for this run, seconds.
    pub limit_secs: f64,
    /// The whole job's wall time, seconds.
    pub secs: f64,
}

impl GoalRow {
    /// Whether the goal was met.
    pub fn met(&self) -> bool {
        self.secs <= self.limit_secs
    }

    /// `met`, or by how much it was missed.
    pub fn verdict(&self) -> String {
        if self.met() {
            "met".to_string()
        } else {
            format!("**not met**: {:.1}x the limit", self.secs / self.limit_secs)
        }
    }
}

impl RealworldRun {
    fn plain_side(&self, layers: bool) -> Option<&PlainRun> {
        self.plain.iter().find(|p| p.layers == layers)
    }

    /// The goals' limits for this run.
    pub fn limits(&self) -> Limits {
        let slowest = |t: Option<&Timings>| t.map_or(f64::NAN, |t| t.slowest().1);
        let r = slowest(self.plain_side(true).map(|p| &p.rebuild));
        let c = slowest(self.plain_side(true).map(|p| &p.cold))
            .min(slowest(self.plain_side(false).map(|p| &p.cold)));
        Limits {
            plain_rebuild_secs: r,
            plain_cold_secs: c,
            rebuild_secs: round(1.3 * r + 2.0, 2),
            fresh_secs: round(3.0 * r + 2.0, 2),
            cold_secs: round(c + 3.0, 2),
        }
    }

    /// The goals table's rows: the whole job's wall time against each limit (none when archfarm's
    /// side did not run).
    pub fn goal_rows(&self) -> Vec<GoalRow> {
        if !self.farm_measured {
            return Vec::new();
        }
        let l = self.limits();
        [
            ("cold", "≤ C + 3 s", l.cold_secs, &self.cold),
            (
                "rebuild, same agents",
                "≤ 1.3 × R + 2 s",
                l.rebuild_secs,
                &self.rebuild,
            ),
            (
                "rebuild, fresh agents",
                "≤ 3 × R + 2 s",
                l.fresh_secs,
                &self.fresh,
            ),
        ]
        .into_iter()
        .map(|(what, rule, limit_secs, build)| GoalRow {
            what: format!("realworld {what}, 4 platforms"),
            rule,
            limit_secs,
            secs: build.timings.wall_secs,
        })
        .collect()
    }

    /// The goals as rows of a `| figure | goal | measured | |` table, one line each.
    pub fn goal_lines(&self) -> String {
        self.goal_rows()
            .iter()
            .map(|g| {
                format!(
                    "| {} | {} = {} s | {} s | {} |\n",
                    g.what,
                    g.rule,
                    g.limit_secs,
                    g.secs,
                    g.verdict()
                )
            })
            .collect()
    }

    /// A line for the terminal summary.
    pub fn summary(&self) -> String {
        let rows: Vec<String> = self
            .goal_rows()
            .iter()
            .map(|g| {
                let verdict = if g.met() { "met" } else { "missed" };
                format!(
                    "{} {} s (goal {} s: {verdict})",
                    g.what, g.secs, g.limit_secs
                )
            })
            .collect();
        rows.join("; ")
    }

    /// The Markdown section.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let l = self.limits();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## 6. Real teams' builds\n\n\
             `examples/realworld` (a Debian bookworm + gcc base per platform behind one index in the local \
             registry; a library stage compiling libmix with `gcc -O2`; an app stage compiling `main.c` \
             against it; a `FROM scratch` final image with the static program) for the four platforms at once. \
             archfarm: a native amd64 agent and an emulating one (QEMU, capacity 3), `--cache-to \
             type=registry,ref=…/cache/realworld,mode=max --cache-from type=registry,ref=…/cache/realworld`. \
             Plain buildah: the same four builds at the same time, each in a store of its own \
             (`{PLAIN_DRIVER}`, runc), `buildah build` + `buildah push`, without and with `--layers`. \
             *Cold* is the first build; *rebuild* follows a one-line change of `main.c` in the same stores or \
             on the same agents; *fresh agents* follows another one-line change on two new agents (new work \
             dirs) that share only the registry cache. Every image was read back (skopeo, umoci): the \
             program is an ELF file for its platform carrying the change. Pushing the base index (set-up, \
             not compared) took {} s.\n\n\
             Seconds per platform are build + push (archfarm: lease to pushed, from the job record); the last \
             row is the whole job (archfarm: CLI start to exit; plain: first start to last push). The \
             ratio in brackets is against plain buildah `--layers` in the same row and phase.\n",
            self.base_push_secs
        );
        let (Some(nolayers), Some(layers)) = (self.plain_side(false), self.plain_side(true)) else {
            return s;
        };
        let _ = writeln!(
            s,
            "| platform | plain cold | plain cold `--layers` | archfarm cold | plain rebuild | plain rebuild `--layers` | archfarm rebuild | archfarm, fresh agents | library step cached: rebuild / fresh agents |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        let ratio = |v: f64, base: f64| {
            if self.farm_measured {
                format!("{v} s ({:.1}x)", v / base.max(1e-3))
            } else {
                "not run".to_string()
            }
        };
        let yes = |m: &BTreeMap<String, bool>, p: &str| match m.get(p) {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        for platform in PLATFORMS {
            let get = |t: &Timings| t.by_platform.get(platform).copied().unwrap_or(f64::NAN);
            let mode = if platform == PLATFORMS[0] {
                "native"
            } else {
                "QEMU"
            };
            let _ = writeln!(
                s,
                "| {platform} ({mode}) | {} s | {} s | {} | {} s | {} s | {} | {} | {} / {} |",
                get(&nolayers.cold),
                get(&layers.cold),
                ratio(get(&self.cold.timings), get(&layers.cold)),
                get(&nolayers.rebuild),
                get(&layers.rebuild),
                ratio(get(&self.rebuild.timings), get(&layers.rebuild)),
                ratio(get(&self.fresh.timings), get(&layers.rebuild)),
                yes(&self.rebuild.library_cached, platform),
                yes(&self.fresh.library_cached, platform),
            );
        }
        let _ = writeln!(
            s,
            "| **whole job** | {} s | {} s | **{}** | {} s | {} s | **{}** | **{}** | |\n",
            nolayers.cold.wall_secs,
            layers.cold.wall_secs,
            ratio(self.cold.timings.wall_secs, layers.cold.wall_secs),
            nolayers.rebuild.wall_secs,
            layers.rebuild.wall_secs,
            ratio(self.rebuild.timings.wall_secs, layers.rebuild.wall_secs),
            ratio(self.fresh.timings.wall_secs, layers.rebuild.wall_secs),
        );
        let _ = writeln!(
            s,
            "Goals (issue 16), with R = the slowest platform's plain `--layers` rebuild ({} s) and C = the \
             slowest platform's plain cold build, the faster of with and without `--layers` ({} s); \
             \"within 3x\" of the fresh-agent goal is read as 3 × R + 2 s:\n\n\
             | figure | goal | archfarm, whole job | |\n|---|---|---|---|",
            l.plain_rebuild_secs, l.plain_cold_secs
        );
        s.push_str(&self.goal_lines());
        let agents = |b: &FarmBuild| {
            b.agents
                .iter()
                .map(|(p, a)| format!("{p} on {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.farm_measured {
            s.push_str("\narchfarm's side was not run (`--realworld-plain-only`).\n\n");
            return s;
        }
        let _ = writeln!(
            s,
            "\nWhere the builds ran: cold {}; rebuild {}; fresh agents {}.\n",
            agents(&self.cold),
            agents(&self.rebuild),
            agents(&self.fresh)
        );
        s
    }
}
