//! A small reader of the Prometheus text exposition format, to check what `GET /metrics` says.
//!
//! It keeps every sample as metric name + labels → value and skips comment lines (`# HELP`,
//! `# TYPE`); that is all a test needs to compare two scrapes.

use std::collections::BTreeMap;

use crate::coordinator::Coordinator;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with any `_bucket`/`_sum`/`_count` suffix.
    pub name: String,
    /// The labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// True when the sample carries every `(name, value)` pair of `wanted` (and maybe others).
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// True when the sample's labels are exactly `wanted`.
    pub fn has_exactly(&self, wanted: &[(&str, &str)]) -> bool {
        self.labels.len() == wanted.len() && self.has_labels(wanted)
    }
}

/// One histogram series: its cumulative buckets, count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, sorted by `le`; the last one is `+Inf` when the series is whole.
    pub buckets: Vec<(f64, f64)>,
    /// `_count`.
    pub count: f64,
    /// `_sum`.
    pub sum: f64,
}

impl Histogram {
    /// Checks the invariants of a histogram: buckets cumulative (never decreasing as `le` grows),
    /// ending with `+Inf` whose count is `_count`.
    pub fn check(&self) -> Result<(), String> {
        let Some(&(last_le, last_count)) = self.buckets.last() else {
            return Err("no buckets".to_string());
        };
        for pair in self.buckets.windows(2) {
            let ((le_a, a), (le_b, b)) = (pair[0], pair[1]);
            if b < a {
                return Err(format!(
                    "bucket le={le_b} holds {b}, fewer than le={le_a} ({a}): buckets must be cumulative"
                ));
            }
        }
        if last_le != f64::INFINITY {
            return Err(format!("the last bucket is le={last_le}, not +Inf"));
        }
        if last_count != self.count {
            return Err(format!(
                "the +Inf bucket holds {last_count} but _count is {}",
                self.count
            ));
        }
        Ok(())
    }
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format; an error names the line that is not a sample.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
            samples.push(sample);
        }
        Ok(Scrape { samples })
    }

    /// Every sample, in the order scraped.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples called `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// True when some sample is called `name` (with any suffix-free labels).
    pub fn has(&self, name: &str) -> bool {
        self.named(name).next().is_some()
    }

    /// The value of the sample called `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.named(name)
            .find(|s| s.has_exactly(labels))
            .map(|s| s.value)
    }

    /// The sum over samples called `name` that carry `labels` (and maybe others); 0 when none do,
    /// which is what a counter that never moved means.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.named(name)
            .filter(|s| s.has_labels(labels))
            .map(|s| s.value)
            .sum()
    }

    /// The histogram `name` (without suffix) whose labels, `le` aside, are exactly `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Histogram> {
        let count = self.value(&format!("{name}_count"), labels)?;
        let sum = self.value(&format!("{name}_sum"), labels)?;
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .named(&bucket_name)
            .filter(|s| s.labels.len() == labels.len() + 1 && s.has_labels(labels))
            .filter_map(|s| Some((parse_value(s.labels.get("le")?).ok()?, s.value)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            count,
            sum,
        })
    }

    /// Every `(metric name, label name, label value)` in the scrape.
    pub fn label_values(&self) -> impl Iterator<Item = (&str, &str, &str)> + '_ {
        self.samples.iter().flat_map(|s| {
            s.labels
                .iter()
                .map(move |(k, v)| (s.name.as_str(), k.as_str(), v.as_str()))
        })
    }
}

/// `GET /metrics` from `coordinator`: asserts 200 and the text format's content type, and parses.
pub fn scrape(coordinator: &Coordinator) -> Scrape {
    let resp = coordinator
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().unwrap_or_default();
    assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
    assert!(
        content_type.starts_with("text/plain"),
        "GET /metrics content type {content_type:?} is not the Prometheus text format"
    );
    Scrape::parse(&body).unwrap_or_else(|e| panic!("GET /metrics: {e}\n{body}"))
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the timestamp".to_string());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `name="value",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".to_string()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key:?} given twice"));
        }
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".to_string());
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP archfarm_jobs_total Jobs that entered a state.
# TYPE archfarm_jobs_total counter
archfarm_jobs_total{state="queued"} 3
archfarm_jobs_total{state="succeeded"} 2

# TYPE archfarm_lease_expiries_total counter
archfarm_lease_expiries_total 0
archfarm_http_requests_total{method="GET",route="/api/v1/jobs/{id}",status="200"} 7 1700000000000
archfarm_odd{path="a \"quoted\" \\ back\nslash",empty="",} 1.5e3
# TYPE archfarm_build_duration_seconds histogram
archfarm_build_duration_seconds_bucket{platform="linux/arm64",mode="emulated",le="1"} 0
archfarm_build_duration_seconds_bucket{platform="linux/arm64",mode="emulated",le="10"} 1
archfarm_build_duration_seconds_bucket{platform="linux/arm64",mode="emulated",le="+Inf"} 2
archfarm_build_duration_seconds_sum{platform="linux/arm64",mode="emulated"} 42.5
archfarm_build_duration_seconds_count{platform="linux/arm64",mode="emulated"} 2
archfarm_build_duration_seconds_bucket{platform="linux/amd64",mode="native",le="+Inf"} 1
archfarm_build_duration_seconds_sum{platform="linux/amd64",mode="native"} 3
archfarm_build_duration_seconds_count{platform="linux/amd64",mode="native"} 1
"#;

    #[test]
    fn reads_samples_labels_and_values() {
        let scrape = Scrape::parse(TEXT).unwrap();
        assert_eq!(scrape.samples().len(), 13);
        assert_eq!(
            scrape.value("archfarm_jobs_total", &[("state", "queued")]),
            Some(3.0)
        );
        assert_eq!(scrape.value("archfarm_jobs_total", &[]), None);
        assert_eq!(scrape.sum("archfarm_jobs_total", &[]), 5.0);
        assert_eq!(
            scrape.sum("archfarm_jobs_total", &[("state", "failed")]),
            0.0
        );
        assert_eq!(
            scrape.value("archfarm_lease_expiries_total", &[]),
            Some(0.0)
        );
        assert_eq!(
            scrape.value(
                "archfarm_http_requests_total",
                &[
                    ("method", "GET"),
                    ("route", "/api/v1/jobs/{id}"),
                    ("status", "200")
                ]
            ),
            Some(7.0)
        );
        let odd = scrape.named("archfarm_odd").next().unwrap();
        assert_eq!(odd.labels["path"], "a \"quoted\" \\ back\nslash");
        assert_eq!(odd.labels["empty"], "");
        assert_eq!(odd.value, 1500.0);
        assert!(scrape.has("archfarm_odd"));
        assert!(!scrape.has("archfarm_missing"));
        assert!(scrape
            .label_values()
            .any(|(m, k, v)| m == "archfarm_http_requests_total"
                && k == "route"
                && v == "/api/v1/jobs/{id}"));
    }

    #[test]
    fn reads_histograms() {
        let scrape = Scrape::parse(TEXT).unwrap();
        let labels = [("platform", "linux/arm64"), ("mode", "emulated")];
        let h = scrape
            .histogram("archfarm_build_duration_seconds", &labels)
            .unwrap();
        assert_eq!(h.count, 2.0);
        assert_eq!(h.sum, 42.5);
        assert_eq!(
            h.buckets,
            vec![(1.0, 0.0), (10.0, 1.0), (f64::INFINITY, 2.0)]
        );
        h.check().unwrap();
        let native = scrape
            .histogram(
                "archfarm_build_duration_seconds",
                &[("platform", "linux/amd64"), ("mode", "native")],
            )
            .unwrap();
        assert_eq!(native.buckets, vec![(f64::INFINITY, 1.0)]);
        assert!(scrape
            .histogram(
                "archfarm_build_duration_seconds",
                &[("platform", "linux/s390x"), ("mode", "native")]
            )
            .is_none());
    }

    #[test]
    fn histogram_check_catches_broken_buckets() {
        let h = |buckets: Vec<(f64, f64)>, count: f64| Histogram {
            buckets,
            count,
            sum: 1.0,
        };
        assert!(h(vec![(1.0, 2.0), (f64::INFINITY, 1.0)], 1.0)
            .check()
            .unwrap_err()
            .contains("cumulative"));
        assert!(h(vec![(1.0, 1.0), (5.0, 1.0)], 1.0)
            .check()
            .unwrap_err()
            .contains("+Inf"));
        assert!(h(vec![(f64::INFINITY, 2.0)], 3.0)
            .check()
            .unwrap_err()
            .contains("_count"));
        assert!(h(vec![], 0.0).check().is_err());
    }

    #[test]
    fn refuses_what_is_not_a_sample() {
        for bad in [
            "archfarm_x",
            "archfarm_x{a=\"1\" 2",
            "archfarm_x{a=1} 2",
            "archfarm_x{a=\"1\",a=\"2\"} 2",
            "archfarm_x{a=\"\\t\"} 2",
            "archfarm_x one",
            "archfarm_x 1 2 3",
            "9archfarm 1",
        ] {
            assert!(Scrape::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let special = Scrape::parse("a +Inf\nb -Inf\nc NaN\n").unwrap();
        assert_eq!(special.value("a", &[]), Some(f64::INFINITY));
        assert_eq!(special.value("b", &[]), Some(f64::NEG_INFINITY));
        assert!(special.value("c", &[]).unwrap().is_nan());
    }
}
