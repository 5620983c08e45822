//! Text for people: sizes, ages, tables, and the `jobs`, `job` and `agents` views.
//!
//! Pure functions returning strings, so the layouts are tested without a coordinator.

use archfarm_protocol::api::{Agent, AgentState, Build, BuildState, Job};
use archfarm_protocol::duration::format_duration;
use archfarm_protocol::{Network, Platform};
use chrono::{DateTime, Utc};

/// Writes a result to stdout. A reader that went away (`archfarm jobs | head -1`) is not an error
/// worth a panic, so a broken pipe is ignored.
pub fn stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `12.3 MiB`-style sizes in binary units.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A compact duration since `then`: `42s`, `5m`, `3h`, `2d`.
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Columns separated by two spaces, every column but the last padded to its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn platforms(list: &[Platform]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// `archfarm jobs`.
pub fn jobs_table(jobs: &[Job], now: DateTime<Utc>) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.state.to_string(),
                platforms(&j.platforms),
                j.tags.join(","),
                age(j.created_at, now),
            ]
        })
        .collect();
    table(&["ID", "STATE", "PLATFORMS", "TAGS", "AGE"], &rows)
}

/// `archfarm agents`.
pub fn agents_table(agents: &[Agent], now: DateTime<Utc>) -> String {
    if agents.is_empty() {
        return "no agents registered\n".into();
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                agent_state(a.state).into(),
                platforms(&a.native_platforms),
                platforms(&a.emulated_platforms),
                format!("{}/{}", a.running, a.capacity),
                format!("{} ago", age(a.last_seen, now)),
                a.default_network
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                allowed_networks(&a.allowed_networks),
                a.storage_driver.clone().unwrap_or_else(|| "-".into()),
                a.storage.map_or_else(
                    || "-".into(),
                    |s| format!("{}/{}", human_size(s.used_bytes), human_size(s.limit_bytes)),
                ),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "NATIVE",
            "EMULATED",
            "RUNNING",
            "LAST SEEN",
            "NETWORK",
            "ALLOWS",
            "STORAGE",
            "DISK",
        ],
        &rows,
    ) + &agents_reasons(agents)
}

/// Why agents take no builds on their own account (a full disk), one line each after the table.
fn agents_reasons(agents: &[Agent]) -> String {
    agents
        .iter()
        .filter_map(|a| {
            a.drain_reason
                .as_ref()
                .map(|why| format!("{}: {why}\n", a.name))
        })
        .collect()
}

/// What an agent lets jobs ask for: `host,none`, or `default` for an agent too old to say (it
/// takes only jobs that leave the network to it).
fn allowed_networks(list: &[Network]) -> String {
    if list.is_empty() {
        return "default".into();
    }
    list.iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The lowercase name of an agent state, as the API writes it.
pub fn agent_state(s: AgentState) -> &'static str {
    s.as_str()
}

/// `archfarm agents drain NAME` for a name no agent has.
pub fn unknown_agent(name: &str, agents: &[Agent]) -> String {
    if agents.is_empty() {
        return format!("no agent named '{name}': no agents are registered");
    }
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    format!(
        "no agent named '{name}'; the agents are: {}",
        names.join(", ")
    )
}

/// What `archfarm agents drain NAME` prints once the coordinator answered.
pub fn draining(agent: &Agent) -> String {
    let name = &agent.name;
    if agent.state != AgentState::Draining {
        return format!(
            "agent {name}: drain requested, the coordinator shows it {}\n",
            agent_state(agent.state)
        );
    }
    match agent.running {
        0 => format!(
            "agent {name} is draining: it has no running builds and leaves when it next calls in\n"
        ),
        1 => format!("agent {name} is draining: it finishes its 1 running build and then leaves\n"),
        n => format!(
            "agent {name} is draining: it finishes its {n} running builds and then leaves\n"
        ),
    }
}

fn build_row(b: &Build) -> Vec<String> {
    vec![
        b.platform.to_string(),
        b.state.to_string(),
        or_dash(b.agent.as_deref()),
        b.mode.map_or("-".into(), |m| m.to_string()),
        b.attempts.to_string(),
        or_dash(b.digest.as_deref()),
    ]
}

/// `archfarm job ID`: the job's fields, a table of its builds, then any reasons.
pub fn job_summary(job: &Job, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<11}{value}\n"));
    field("job", job.id.to_string());
    field("state", job.state.to_string());
    field("tags", job.tags.join(", "));
    if job.repositories.len() > 1 {
        // The first is where agents push each platform's image; the index goes to all.
        field("repos", job.repositories.join(", "));
    }
    let required: Vec<Platform> = job
        .platforms
        .iter()
        .filter(|p| !job.optional_platforms.contains(p))
        .cloned()
        .collect();
    field("platforms", platforms(&required));
    if !job.optional_platforms.is_empty() {
        field("optional", platforms(&job.optional_platforms));
    }
    field("context", job.context.to_string());
    field("dockerfile", job.dockerfile.clone());
    if let Some(t) = &job.target {
        field("target", t.clone());
    }
    if !job.build_args.is_empty() {
        let names: Vec<&str> = job.build_args.keys().map(String::as_str).collect();
        field("build args", names.join(", "));
    }
    field("emulation", job.emulation.to_string());
    if let Some(n) = job.network {
        field("network", n.to_string());
    }
    if job.timeout_secs > 0 {
        field(
            "timeout",
            format_duration(std::time::Duration::from_secs(job.timeout_secs)),
        );
    }
    if let Some(who) = &job.submitter {
        field("submitter", who.clone());
    }
    if let Some(test) = &job.smoke_test {
        field(
            "smoke test",
            format!(
                "{} (timeout {})",
                test.display(),
                format_duration(std::time::Duration::from_secs(test.timeout_secs))
            ),
        );
    }
    field(
        "created",
        format!(
            "{} ({} ago)",
            job.created_at.to_rfc3339(),
            age(job.created_at, now)
        ),
    );
    if let Some(f) = job.finished_at {
        field(
            "finished",
            format!("{} (took {})", f.to_rfc3339(), age(job.created_at, f)),
        );
    }
    if let Some(d) = &job.index_digest {
        let mt = job.index_media_type.as_deref().unwrap_or("");
        field("index", format!("{d} {mt}").trim_end().to_string());
    }
    if let Some(e) = &job.error {
        field("error", e.clone());
    }
    for w in &job.warnings {
        field("warning", w.clone());
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = job.builds.iter().map(build_row).collect();
    out.push_str(&table(
        &["PLATFORM", "STATE", "AGENT", "MODE", "ATTEMPTS", "DIGEST"],
        &rows,
    ));
    for b in &job.builds {
        out.push_str(&build_notes(b));
    }
    out
}

/// The lines under the builds table for one build: why it went where it went, and why it
/// failed, was skipped or waits.
fn build_notes(b: &Build) -> String {
    let p = &b.platform;
    let mut out = String::new();
    if let Some(d) = b.decision.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(&format!("{p}: decision: {d}\n"));
    }
    let optional = if b.optional { " (optional)" } else { "" };
    if let Some(e) = b.error.as_deref().filter(|e| !e.is_empty()) {
        let what = match b.state {
            BuildState::Failed => format!("failed{optional}"),
            BuildState::Cancelled if b.optional => "skipped (optional)".into(),
            BuildState::Cancelled => "cancelled".into(),
            // Still running or queued again: the error is an earlier attempt's.
            _ => "earlier attempt ended".into(),
        };
        out.push_str(&format!("{p}: {what}: {e}\n"));
    }
    if !b.state.is_terminal() {
        if let Some(w) = b.waiting.as_deref().filter(|w| !w.is_empty()) {
            out.push_str(&format!("{p}: waiting: {w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12_897_485), "12.3 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn ages() {
        let now = Utc::now();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(125), "2m");
        assert_eq!(ago(7300), "2h");
        assert_eq!(ago(3 * 86400 + 5), "3d");
        assert_eq!(ago(-5), "0s");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER", "C"],
            &[vec!["xxxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A     LONGER  C\nxxxx  y       z\n");
    }

    #[test]
    fn job_views() {
        let job: Job = serde_json::from_value(crate::follow::tests::sample_job_json()).unwrap();
        let now = job.created_at + chrono::Duration::seconds(90);
        let t = jobs_table(std::slice::from_ref(&job), now);
        assert!(t.starts_with("ID "), "{t}");
        assert!(t.contains("linux/amd64,linux/s390x"), "{t}");
        assert!(t.contains("localhost:5000/app:1"), "{t}");
        assert!(t.trim_end().ends_with("1m"), "{t}");
        let s = job_summary(&job, now);
        assert!(s.contains("state      building"), "{s}");
        assert!(s.contains("linux/amd64  building  pi-4"), "{s}");
        assert!(s.contains("linux/s390x: waiting: no online agent"), "{s}");
        assert!(s.contains("timeout    2h\n"), "{s}");
        assert!(!s.contains("optional"), "{s}");
        assert!(!s.contains("decision"), "{s}");
        assert!(
            !s.contains("repos"),
            "one repository says no more than its tags:\n{s}"
        );
        let mut several = job.clone();
        several.repositories = vec!["localhost:5000/app".into(), "ghcr.io/team/app".into()];
        let s = job_summary(&several, now);
        assert!(
            s.contains("repos      localhost:5000/app, ghcr.io/team/app\n"),
            "{s}"
        );
    }

    #[test]
    fn job_view_with_optional_platforms_warnings_and_decisions() {
        let mut job: Job = serde_json::from_value(crate::follow::tests::sample_job_json()).unwrap();
        job.state = archfarm_protocol::api::JobState::Succeeded;
        job.optional_platforms = vec![Platform::parse("s390x").unwrap()];
        job.warnings = vec!["optional platform linux/s390x left out of the index".into()];
        job.timeout_secs = 5400;
        job.emulation = "prefer-native=10m".parse().unwrap();
        job.smoke_test =
            Some(archfarm_protocol::smoke_test::SmokeTest::parse("sh -c 'uname -m'", 90).unwrap());
        let amd = &mut job.builds[0];
        amd.state = BuildState::Succeeded;
        amd.attempts = 2;
        amd.error = Some("box-1 missed 3 heartbeats".into());
        amd.decision = Some("pi-4 is native and was free".into());
        let s390x = &mut job.builds[1];
        s390x.optional = true;
        s390x.state = BuildState::Cancelled;
        s390x.error = Some("no online agent can build linux/s390x".into());
        let s = job_summary(&job, job.created_at);
        for want in [
            "platforms  linux/amd64\n",
            "optional   linux/s390x\n",
            "emulation  prefer-native=10m\n",
            "timeout    1h30m\n",
            "smoke test sh -c 'uname -m' (timeout 1m30s)\n",
            "warning    optional platform linux/s390x left out of the index\n",
            "linux/amd64  succeeded  pi-4   native  2         -\n",
            "linux/amd64: decision: pi-4 is native and was free\n",
            "linux/amd64: earlier attempt ended: box-1 missed 3 heartbeats\n",
            "linux/s390x: skipped (optional): no online agent can build linux/s390x\n",
        ] {
            assert!(s.contains(want), "want {want:?} in:\n{s}");
        }
        assert!(!s.contains("waiting"), "an ended build waits no more:\n{s}");

        job.builds[1].state = BuildState::Failed;
        job.builds[1].error = Some("buildah exited with status 1".into());
        let s = job_summary(&job, job.created_at);
        assert!(
            s.contains("linux/s390x: failed (optional): buildah exited with status 1\n"),
            "{s}"
        );
    }

    fn agent(name: &str, state: AgentState, running: i64) -> Agent {
        Agent {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            native_platforms: vec![Platform::parse("arm64").unwrap()],
            emulated_platforms: vec![],
            capacity: 4,
            running,
            state,
            last_seen: Utc::now(),
            default_network: Some(archfarm_protocol::Network::Host),
            allowed_networks: vec![
                archfarm_protocol::Network::Host,
                archfarm_protocol::Network::None,
            ],
            storage_driver: Some("overlay".into()),
            storage: Some(archfarm_protocol::api::StorageUse {
                used_bytes: 3 << 29,
                limit_bytes: 50 << 30,
            }),
            drain_reason: None,
        }
    }

    #[test]
    fn agents_and_draining() {
        let now = Utc::now();
        let t = agents_table(
            &[
                agent("pi-4", AgentState::Draining, 3),
                agent("pi-5", AgentState::Offline, 0),
            ],
            now,
        );
        assert!(
            t.contains("pi-4  draining  linux/arm64  -         3/4"),
            "{t}"
        );
        assert!(t.contains("pi-5  offline   linux/arm64"), "{t}");
        assert!(
            t.lines()
                .next()
                .unwrap()
                .ends_with("NETWORK  ALLOWS     STORAGE  DISK"),
            "{t}"
        );
        assert!(
            t.contains("  host     host,none  overlay  1.5 GiB/50.0 GiB\n"),
            "{t}"
        );
        let mut old = agent("old", AgentState::Online, 0);
        (old.default_network, old.allowed_networks) = (None, vec![]);
        (old.storage_driver, old.storage) = (None, None);
        let t = agents_table(&[old], now);
        assert!(t.contains("  -        default  -        -\n"), "{t}");
        let mut full = agent("pi-6", AgentState::Draining, 0);
        full.drain_reason = Some("disk full: 100 MiB free".into());
        let t = agents_table(&[full], now);
        assert!(t.ends_with("\npi-6: disk full: 100 MiB free\n"), "{t}");
        assert_eq!(
            draining(&agent("pi-4", AgentState::Draining, 3)),
            "agent pi-4 is draining: it finishes its 3 running builds and then leaves\n"
        );
        assert_eq!(
            draining(&agent("pi-4", AgentState::Draining, 1)),
            "agent pi-4 is draining: it finishes its 1 running build and then leaves\n"
        );
        assert!(draining(&agent("pi-4", AgentState::Draining, 0))
            .starts_with("agent pi-4 is draining: it has no running builds"));
        assert_eq!(
            draining(&agent("pi-4", AgentState::Offline, 0)),
            "agent pi-4: drain requested, the coordinator shows it offline\n"
        );
        let known = [
            agent("pi-4", AgentState::Online, 0),
            agent("nuc", AgentState::Online, 0),
        ];
        assert_eq!(
            unknown_agent("pi", &known),
            "no agent named 'pi'; the agents are: pi-4, nuc"
        );
        assert_eq!(
            unknown_agent("pi", &[]),
            "no agent named 'pi': no agents are registered"
        );
    }
}
