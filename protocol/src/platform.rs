//! Platforms as `os/architecture[/variant]`, normalised in one place.
//!
//! Every spelling a user, a kernel (`uname -m`) or a Debian architecture name may use is mapped to the
//! OCI image spec's canonical form here, so the scheduler compares like with like: `aarch64` and
//! `linux/arm64/v8` are both `linux/arm64`, `armhf` is `linux/arm/v7`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The canonical platforms archfarm accepts, in the order error messages list them.
pub const ACCEPTED: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

/// Aliases accepted on the way in, listed in error messages.
const ALIASES: &str =
    "aliases: x86_64, x86-64 -> amd64; aarch64, arm64/v8 -> arm64; arm, armhf, armv7l -> arm/v7; \
armel, armv6l -> arm/v6; i386, i686 -> 386; ppc64el -> ppc64le; the os may be left out (linux)";

/// A normalised build platform such as `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Why a platform string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform '{input}': {reason}; accepted: {accepted} ({ALIASES})", accepted = ACCEPTED.join(", "))]
pub struct PlatformError {
    /// The string as given.
    pub input: String,
    /// What in particular was wrong with it.
    pub reason: String,
}

impl Platform {
    /// The operating system, always `linux` today.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The OCI architecture name (`amd64`, `arm64`, `arm`, ...).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The OCI variant (`v7` for `arm/v7`), if the architecture has one.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Parses any accepted spelling and normalises it.
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        let err = |reason: &str| PlatformError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let lowered = input.trim().to_ascii_lowercase();
        if lowered.is_empty() {
            return Err(err("it is empty"));
        }
        let parts: Vec<&str> = lowered.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("it has an empty part"));
        }
        // A bare architecture ("arm64", "arm/v7") means linux, as `docker --platform` does.
        let (os, rest) = if parts[0] == "linux" {
            (parts[0], &parts[1..])
        } else if parts[0] == "windows" || parts[0] == "darwin" || parts[0] == "freebsd" {
            return Err(err("only linux images can be built"));
        } else {
            ("linux", &parts[..])
        };
        let (arch, variant) = match rest {
            [arch] => (*arch, None),
            [arch, variant] => (*arch, Some(*variant)),
            [] => return Err(err("the architecture is missing")),
            _ => return Err(err("too many parts")),
        };
        let (architecture, variant) = normalise_arch(arch, variant).ok_or_else(|| {
            err(&match variant {
                Some(v) => format!("architecture '{arch}' with variant '{v}' is not supported"),
                None => format!("architecture '{arch}' is not supported"),
            })
        })?;
        Ok(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// Maps a kernel machine name (`uname -m`, or a qemu binfmt handler's suffix) to a platform.
    pub fn from_machine(machine: &str) -> Option<Self> {
        Self::parse(machine).ok()
    }

    /// The name of the kernel machine this platform's binaries report under `uname -m`.
    pub fn machine(&self) -> &'static str {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("amd64", _) => "x86_64",
            ("arm64", _) => "aarch64",
            ("arm", Some("v6")) => "armv6l",
            ("arm", _) => "armv7l",
            ("386", _) => "i686",
            ("ppc64le", _) => "ppc64le",
            ("s390x", _) => "s390x",
            ("riscv64", _) => "riscv64",
            _ => "unknown",
        }
    }
}

/// Canonical (architecture, variant) for an accepted spelling, or None.
fn normalise_arch<'a>(
    arch: &'a str,
    variant: Option<&'a str>,
) -> Option<(&'a str, Option<&'a str>)> {
    let out = match (arch, variant) {
        ("amd64" | "x86_64" | "x86-64", None | Some("v1")) => ("amd64", None),
        ("amd64" | "x86_64" | "x86-64", Some(v @ ("v2" | "v3" | "v4"))) => ("amd64", Some(v)),
        ("arm64" | "aarch64", None | Some("v8")) => ("arm64", None),
        ("arm" | "armhf" | "armv7" | "armv7l", None) => ("arm", Some("v7")),
        ("arm", Some(v @ ("v5" | "v6" | "v7"))) => ("arm", Some(v)),
        ("armel" | "armv6" | "armv6l", None) => ("arm", Some("v6")),
        ("386" | "i386" | "i686" | "x86", None) => ("386", None),
        ("ppc64le" | "ppc64el", None) => ("ppc64le", None),
        ("s390x", None) => ("s390x", None),
        ("riscv64", None) => ("riscv64", None),
        _ => return None,
    };
    Some(out)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Platform::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated list (`linux/amd64,linux/arm64`), dropping duplicates but keeping order.
pub fn parse_list(input: &str) -> Result<Vec<Platform>, PlatformError> {
    let mut out: Vec<Platform> = Vec::new();
    for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = Platform::parse(item)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_spellings_normalise() {
        let table = [
            ("linux/amd64", "linux/amd64"),
            ("amd64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("LINUX/AMD64", "linux/amd64"),
            (" linux/amd64 ", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm64", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("armhf", "linux/arm/v7"),
            ("armv7l", "linux/arm/v7"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("armel", "linux/arm/v6"),
            ("armv6l", "linux/arm/v6"),
            ("i386", "linux/386"),
            ("i686", "linux/386"),
            ("linux/386", "linux/386"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("ppc64el", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
        ];
        for (input, want) in table {
            let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), want, "input {input}");
        }
    }

    #[test]
    fn every_accepted_platform_round_trips() {
        for s in ACCEPTED {
            assert_eq!(Platform::parse(s).unwrap().to_string(), *s);
        }
    }

    #[test]
    fn rejects_with_reason_and_accepted_list() {
        let table = [
            ("", "it is empty"),
            ("linux/mips", "architecture 'mips' is not supported"),
            ("windows/amd64", "only linux images can be built"),
            (
                "linux/arm64/v9",
                "architecture 'arm64' with variant 'v9' is not supported",
            ),
            ("linux/", "it has an empty part"),
            ("linux/arm/v7/extra", "too many parts"),
            ("linux", "the architecture is missing"),
            ("s390", "architecture 's390' is not supported"),
        ];
        for (input, reason) in table {
            let e = Platform::parse(input).expect_err(input);
            assert_eq!(e.reason, reason, "input {input:?}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("'{input}'")), "{msg}");
            assert!(
                msg.contains("linux/ppc64le"),
                "message lists accepted platforms: {msg}"
            );
        }
    }

    #[test]
    fn machine_names_map_both_ways() {
        for (m, p) in [
            ("x86_64", "linux/amd64"),
            ("aarch64", "linux/arm64"),
            ("armv7l", "linux/arm/v7"),
            ("ppc64le", "linux/ppc64le"),
            ("s390x", "linux/s390x"),
            ("riscv64", "linux/riscv64"),
        ] {
            let plat = Platform::from_machine(m).unwrap();
            assert_eq!(plat.to_string(), p);
            assert_eq!(plat.machine(), m);
        }
        assert!(Platform::from_machine("mips64").is_none());
    }

    #[test]
    fn list_keeps_order_and_drops_duplicates() {
        let l = parse_list("linux/amd64, aarch64,linux/arm64/v8,,linux/s390x").unwrap();
        let s: Vec<String> = l.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["linux/amd64", "linux/arm64", "linux/s390x"]);
        assert!(parse_list("linux/amd64,linux/sparc").is_err());
    }

    #[test]
    fn serde_normalises() {
        let p: Platform = serde_json::from_str("\"aarch64\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"linux/arm64\"");
        assert!(serde_json::from_str::<Platform>("\"linux/vax\"").is_err());
    }
}
