//! Pure formatting for the dashboard: durations, ages, UTC times, timeline geometry, and the
//! sign-in page's return path. `web/static/dashboard.js` mirrors `duration`, `age` and the
//! timeline so live updates look like the server's render.

use chrono::{SecondsFormat, TimeZone, Utc};

/// A duration for people: `0.8s`, `42s`, `3m 05s`, `2h 07m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// How long ago `then` was at `now`: `just now`, `42s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
pub fn age(now: i64, then: i64) -> String {
    let s = (now - then) / 1000;
    match s {
        ..5 => "just now".to_string(),
        5..60 => format!("{s}s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A timestamp in UTC for people: `2025-06-01 12:03:04 UTC`.
pub fn utc(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => String::new(),
    }
}

/// A timestamp as RFC 3339, for `<time datetime>` and the live script.
pub fn iso(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::new(),
    }
}

/// A percentage for an SVG coordinate (the timeline's viewBox is 100 wide).
pub fn pct(v: f64) -> String {
    format!("{v:.2}")
}

/// The time axis every platform row of one job shares, in Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The job's submission.
    pub start: i64,
    /// Its end, or now while it runs.
    pub end: i64,
}

impl Span {
    /// From the job's creation to its end (or `now` while it runs), stretched to cover every
    /// build's finish so no bar runs off the axis.
    pub fn of_job(
        created: i64,
        finished: Option<i64>,
        build_ends: impl IntoIterator<Item = i64>,
        now: i64,
    ) -> Span {
        let end = build_ends
            .into_iter()
            .fold(finished.unwrap_or(now), i64::max);
        Span {
            start: created,
            end: end.max(created + 1),
        }
    }

    /// Where `t` falls on the axis, 0 to 100.
    pub fn at(&self, t: i64) -> f64 {
        let f = (t - self.start) as f64 / (self.end - self.start) as f64;
        (f * 100.0).clamp(0.0, 100.0)
    }

    /// The axis's length.
    pub fn len_ms(&self) -> i64 {
        self.end - self.start
    }
}

/// One platform's row of the timeline, as (left, width) pairs in percent of the [`Span`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Waiting for an agent: creation to lease (or to the end, if never leased).
    pub queued: (f64, f64),
    /// Leased: lease to finish, or to now while building.
    pub building: Option<(f64, f64)>,
    /// The finish, if any.
    pub marker: Option<f64>,
}

/// The bar of a build created at `created`, leased at `started`, finished at `finished`.
pub fn bar(
    span: &Span,
    created: i64,
    started: Option<i64>,
    finished: Option<i64>,
    now: i64,
) -> Bar {
    let seg = |from: i64, to: i64| {
        let (a, b) = (span.at(from), span.at(to));
        (a, (b - a).max(0.0))
    };
    let open_end = finished.unwrap_or(now).min(span.end);
    Bar {
        queued: seg(created, started.unwrap_or(open_end)),
        building: started.map(|s| seg(s, open_end)),
        marker: finished.map(|f| span.at(f)),
    }
}

/// "emulated is 4.2× slower" from emulated time / native time.
pub fn slowdown(ratio: f64) -> String {
    if !ratio.is_finite() || ratio <= 0.0 {
        String::new()
    } else if (0.95..1.05).contains(&ratio) {
        "about the same".to_string()
    } else if ratio > 1.0 {
        format!("emulated is {ratio:.1}× slower")
    } else {
        format!("emulated is {:.1}× faster", 1.0 / ratio)
    }
}

/// Where to go after signing in: a path on this site, or `/` for anything else, so the sign-in
/// form cannot be used to send people to another site.
pub fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok {
        next
    } else {
        "/"
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An agent's storage as the agents page shows it: `overlay, 1.2 GiB of 50.0 GiB` (the
/// dashboard's script writes the same).
pub fn storage(driver: Option<&str>, usage: Option<archfarm_protocol::api::StorageUse>) -> String {
    let mut parts: Vec<String> = driver.map(str::to_string).into_iter().collect();
    if let Some(u) = usage {
        parts.push(format!(
            "{} of {}",
            bytes(u.used_bytes),
            bytes(u.limit_bytes)
        ));
    }
    parts.join(", ")
}

/// `12.3 MiB`-style sizes in binary units.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut v, mut u) = (n as f64 / 1024.0, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_reads_driver_and_use() {
        let u = archfarm_protocol::api::StorageUse {
            used_bytes: 1536 << 20,
            limit_bytes: 50 << 30,
        };
        assert_eq!(
            storage(Some("overlay"), Some(u)),
            "overlay, 1.5 GiB of 50.0 GiB"
        );
        assert_eq!(storage(None, None), "");
        assert_eq!(storage(Some("vfs"), None), "vfs");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(-5), "0.0s");
        assert_eq!(duration(840), "0.8s");
        assert_eq!(duration(9_940), "9.9s");
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(2 * 3_600_000 + 7 * 60_000 + 59_000), "2h 07m");
    }

    #[test]
    fn ages_are_relative_and_never_in_the_future() {
        let now = 1_000_000_000;
        assert_eq!(age(now, now + 30_000), "just now");
        assert_eq!(age(now, now - 3_000), "just now");
        assert_eq!(age(now, now - 42_000), "42s ago");
        assert_eq!(age(now, now - 3 * 60_000 - 59_000), "3 min ago");
        assert_eq!(age(now, now - 5 * 3_600_000), "5 h ago");
        assert_eq!(age(now, now - 50 * 3_600_000), "2 d ago");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn timeline_rows_share_the_jobs_axis() {
        // Job from t=1000 to t=11000; a build queued 2 s, built 5 s, finished at t=8000.
        let span = Span::of_job(1_000, Some(11_000), [8_000], 99_999);
        assert_eq!(span.len_ms(), 10_000);
        let b = bar(&span, 1_000, Some(3_000), Some(8_000), 99_999);
        assert_eq!(b.queued, (0.0, 20.0));
        assert_eq!(b.building, Some((20.0, 50.0)));
        assert_eq!(b.marker, Some(70.0));
        // Never leased and cancelled at the end: all queue, marker at the end.
        let b = bar(&span, 1_000, None, Some(11_000), 99_999);
        assert_eq!(
            (b.queued, b.building, b.marker),
            ((0.0, 100.0), None, Some(100.0))
        );
    }

    #[test]
    fn a_running_job_reaches_up_to_now() {
        let span = Span::of_job(0, None, [], 4_000);
        let b = bar(&span, 0, Some(1_000), None, 4_000);
        assert_eq!(b.queued, (0.0, 25.0));
        assert_eq!(b.building, Some((25.0, 75.0)));
        assert_eq!(b.marker, None);
        // A build that finished after the job's recorded end still fits on the axis.
        let span = Span::of_job(0, Some(1_000), [2_000], 9_000);
        assert_eq!(span.end, 2_000);
        // A zero-length job does not divide by zero.
        assert_eq!(Span::of_job(5, Some(5), [], 5).at(5), 0.0);
    }

    #[test]
    fn slowdowns_read_both_ways() {
        assert_eq!(slowdown(4.2), "emulated is 4.2× slower");
        assert_eq!(slowdown(0.5), "emulated is 2.0× faster");
        assert_eq!(slowdown(1.01), "about the same");
        assert_eq!(slowdown(f64::NAN), "");
    }

    #[test]
    fn sign_in_returns_only_to_this_site() {
        assert_eq!(safe_next("/jobs/abc?x=1"), "/jobs/abc?x=1");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/a\nb"), "/");
        assert_eq!(url_encode("/jobs/a b?x=1&y"), "/jobs/a%20b%3Fx%3D1%26y");
    }
}
