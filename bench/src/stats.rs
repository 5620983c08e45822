//! Percentiles and summaries of latency samples.

use serde::Serialize;

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Summary {
    /// The same figures to two decimals, for reports.
    pub fn rounded(self) -> Summary {
        Summary {
            count: self.count,
            p50_ms: round(self.p50_ms, 2),
            p90_ms: round(self.p90_ms, 2),
            p99_ms: round(self.p99_ms, 2),
            max_ms: round(self.max_ms, 2),
            mean_ms: round(self.mean_ms, 2),
        }
    }
}

/// Summarises `samples` (milliseconds); all zero when there are none.
pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Summary {
        count: sorted.len(),
        p50_ms: percentile(&sorted, 0.50),
        p90_ms: percentile(&sorted, 0.90),
        p99_ms: percentile(&sorted, 0.99),
        max_ms: sorted[sorted.len() - 1],
        mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
    }
}

/// The nearest-rank percentile `q` (0..=1) of sorted samples: the smallest sample with at least
/// `q` of all samples at or below it, so p99 of 100 samples is the 99th, not an interpolation.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `samples`; 0 when there are none.
pub fn median(samples: &[f64]) -> f64 {
    summarize(samples).p50_ms
}

/// `x` rounded to `places` decimals, so reports do not show float noise.
pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.mean_ms, 50.5);
    }

    #[test]
    fn small_and_empty_sets() {
        assert_eq!(summarize(&[]), Summary::default());
        let one = summarize(&[7.0]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        // Two samples: the median is the lower one, p99 the upper.
        let two = summarize(&[3.0, 1.0]);
        assert_eq!((two.p50_ms, two.p99_ms), (1.0, 3.0));
        assert_eq!(median(&[5.0, 1.0, 9.0]), 5.0);
    }

    #[test]
    fn rounding() {
        assert_eq!(round(1.23456, 2), 1.23);
        assert_eq!(round(-0.005, 1), -0.0);
    }
}
