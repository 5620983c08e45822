//! Text for people: sizes, ages, tables, and the `jobs`, `job` and `agents` views.
//!
//! Pure functions returning strings, so the layouts are tested without a coordinator.

use archfarm_protocol::api::{Agent, AgentState, Build, Job};
use archfarm_protocol::Platform;
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
                match a.state {
                    AgentState::Online => "online".into(),
                    AgentState::Offline => "offline".into(),
                },
                platforms(&a.native_platforms),
                platforms(&a.emulated_platforms),
                format!("{}/{}", a.running, a.capacity),
                format!("{} ago", age(a.last_seen, now)),
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
        ],
        &rows,
    )
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
    field("platforms", platforms(&job.platforms));
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
    out.push('\n');
    let rows: Vec<Vec<String>> = job.builds.iter().map(build_row).collect();
    out.push_str(&table(
        &["PLATFORM", "STATE", "AGENT", "MODE", "ATTEMPTS", "DIGEST"],
        &rows,
    ));
    for b in &job.builds {
        if let Some(e) = &b.error {
            out.push_str(&format!("{}: failed: {e}\n", b.platform));
        } else if let Some(w) = b.waiting.as_deref().filter(|w| !w.is_empty()) {
            out.push_str(&format!("{}: waiting: {w}\n", b.platform));
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
    }
}
