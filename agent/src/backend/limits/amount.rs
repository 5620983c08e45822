//! Amounts as the limit flags take them: sizes, CPU counts and process counts, each also `none`.

use std::str::FromStr;

/// An amount given on the command line: a number with an optional unit, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// No limit.
    Unlimited,
    /// This many (bytes for sizes, processes for counts, thousandths of a CPU for CPUs).
    Of(u64),
}

impl Amount {
    /// The limit, if any.
    pub fn get(self) -> Option<u64> {
        match self {
            Amount::Unlimited => None,
            Amount::Of(n) => Some(n),
        }
    }
}

/// A size such as `4GiB`, `512M`, `1.5G` or `1048576` (bytes); `K`/`KiB`, `M`/`MiB`, `G`/`GiB` and
/// `T`/`TiB` are all powers of 1024, as in Docker's `--memory`; `none` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub Amount);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Size(Amount::Unlimited));
        }
        let bad = || {
            format!("'{s}' is not a size: use a number with K, M, G or T (powers of 1024, e.g. 4GiB, 512M) or none")
        };
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        let bytes = num * (1u64 << shift) as f64;
        // Far below u64::MAX, where f64 would round a value up past it.
        if !(1.0..=(1u64 << 62) as f64).contains(&bytes) {
            return Err(format!(
                "'{s}' is not a size from 1 byte to 4 EiB: use none for no limit"
            ));
        }
        Ok(Size(Amount::Of(bytes as u64)))
    }
}

/// A CPU count such as `2`, `0.5` or `none`, kept in thousandths of a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub Amount);

impl FromStr for Cpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Cpus(Amount::Unlimited));
        }
        match t.parse::<f64>() {
            Ok(n) if (0.01..=4096.0).contains(&n) => {
                Ok(Cpus(Amount::Of((n * 1000.0).round() as u64)))
            }
            _ => Err(format!(
                "'{s}' is not a CPU count: use a number from 0.01 to 4096 (e.g. 2 or 0.5) or none"
            )),
        }
    }
}

/// A process count such as `4096`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub Amount);

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(Count(Amount::Unlimited));
        }
        match t.parse::<u64>() {
            Ok(n) if n >= 16 => Ok(Count(Amount::Of(n))),
            _ => Err(format!(
                "'{s}' is not a process limit: use a whole number of at least 16 or none"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_dockers_memory_flag() {
        assert_eq!("4GiB".parse::<Size>(), Ok(Size(Amount::Of(4 << 30))));
        assert_eq!("512m".parse::<Size>(), Ok(Size(Amount::Of(512 << 20))));
        assert_eq!("1.5G".parse::<Size>(), Ok(Size(Amount::Of(3 << 29))));
        assert_eq!("1048576".parse::<Size>(), Ok(Size(Amount::Of(1 << 20))));
        assert_eq!("none".parse::<Size>(), Ok(Size(Amount::Unlimited)));
        for bad in ["", "4 parsecs", "G", "-1G", "0", "16777216T"] {
            let e = bad.parse::<Size>().unwrap_err();
            assert!(
                e.contains(&format!("'{bad}'")) && e.contains("none"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn cpus_and_counts_parse_and_name_what_is_accepted() {
        assert_eq!("2".parse::<Cpus>(), Ok(Cpus(Amount::Of(2000))));
        assert_eq!("0.5".parse::<Cpus>(), Ok(Cpus(Amount::Of(500))));
        assert_eq!("1.0009".parse::<Cpus>(), Ok(Cpus(Amount::Of(1001))));
        assert_eq!("none".parse::<Cpus>(), Ok(Cpus(Amount::Unlimited)));
        assert!("0".parse::<Cpus>().unwrap_err().contains("0.01 to 4096"));
        assert_eq!("4096".parse::<Count>(), Ok(Count(Amount::Of(4096))));
        assert!("3".parse::<Count>().unwrap_err().contains("at least 16"));
    }
}
