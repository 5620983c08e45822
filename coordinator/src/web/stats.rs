//! Native against emulated build times per platform, from history. Pure: the samples come in.

use std::collections::BTreeMap;

use archfarm_protocol::api::BuildMode;

use crate::store::history::BuildSample;

/// One mode's builds of one platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    /// How many builds.
    pub count: usize,
    /// Their median duration in ms, if any.
    pub median_ms: Option<i64>,
}

/// One platform's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The platform, normalised (`linux/arm64`).
    pub platform: String,
    /// Native builds.
    pub native: Side,
    /// Emulated builds.
    pub emulated: Side,
}

impl Comparison {
    /// Emulated median / native median, when both exist and native is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.native.median_ms, self.emulated.median_ms) {
            (Some(n), Some(e)) if n > 0 => Some(e as f64 / n as f64),
            _ => None,
        }
    }

    /// Time the native builds saved against running them emulated at the emulated median:
    /// (emulated median − native median) × native builds. None without both medians.
    pub fn saved_ms(&self) -> Option<i64> {
        let (n, e) = (self.native.median_ms?, self.emulated.median_ms?);
        Some((e - n).saturating_mul(self.native.count as i64))
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        // Halves first, so two huge values cannot overflow.
        values[mid - 1] / 2 + values[mid] / 2 + (values[mid - 1] % 2 + values[mid] % 2) / 2
    })
}

/// Per platform (sorted by name): counts and medians of native and emulated builds.
pub fn compare(samples: &[BuildSample]) -> Vec<Comparison> {
    let mut by: BTreeMap<String, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for s in samples {
        let entry = by.entry(s.platform.to_string()).or_default();
        match s.mode {
            BuildMode::Native => entry.0.push(s.duration_ms),
            BuildMode::Emulated => entry.1.push(s.duration_ms),
        }
    }
    by.into_iter()
        .map(|(platform, (mut native, mut emulated))| Comparison {
            platform,
            native: Side {
                count: native.len(),
                median_ms: median(&mut native),
            },
            emulated: Side {
                count: emulated.len(),
                median_ms: median(&mut emulated),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(platform: &str, mode: BuildMode, secs: i64) -> BuildSample {
        BuildSample {
            platform: platform.parse().unwrap(),
            mode,
            duration_ms: secs * 1000,
        }
    }

    #[test]
    fn medians_of_odd_even_and_empty_sets() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5]), Some(5));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
        assert_eq!(median(&mut [10, 20]), Some(15));
        assert_eq!(median(&mut [i64::MAX, i64::MAX]), Some(i64::MAX));
    }

    #[test]
    fn platforms_compare_native_with_emulated() {
        use BuildMode::{Emulated, Native};
        let samples = [
            s("linux/arm64", Native, 60),
            s("linux/arm64", Native, 80),
            s("linux/arm64", Native, 70),
            s("linux/arm64", Emulated, 300),
            s("linux/arm64", Emulated, 288),
            s("linux/s390x", Emulated, 500),
            s("aarch64", Native, 1000),
        ];
        let c = compare(&samples);
        assert_eq!(c.len(), 2, "aarch64 is arm64: {c:?}");
        let arm = &c[0];
        assert_eq!(arm.platform, "linux/arm64");
        assert_eq!(
            arm.native,
            Side {
                count: 4,
                median_ms: Some(75_000)
            }
        );
        assert_eq!(
            arm.emulated,
            Side {
                count: 2,
                median_ms: Some(294_000)
            }
        );
        assert_eq!(arm.ratio(), Some(294.0 / 75.0));
        assert_eq!(arm.saved_ms(), Some(4 * 219_000));
        let s390x = &c[1];
        assert_eq!((s390x.native.count, s390x.emulated.count), (0, 1));
        assert_eq!((s390x.ratio(), s390x.saved_ms()), (None, None));
    }

    #[test]
    fn a_zero_native_median_gives_no_ratio() {
        let c = compare(&[
            s("linux/amd64", BuildMode::Native, 0),
            s("linux/amd64", BuildMode::Emulated, 3),
        ]);
        assert_eq!(c[0].ratio(), None);
    }
}
