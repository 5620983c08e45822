//! Provenance: whether and where a job's SLSA provenance attestations are stored, parsed from
//! buildx's `--provenance` and `--attest type=provenance,…` and archfarm's own `--attest-to`,
//! and the agent's hardware that the attestations name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job's provenance goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AttestTo {
    /// As buildx stores it by default: one attestation manifest per platform inside the index
    /// (platform `unknown/unknown`, annotated `vnd.docker.reference.type=attestation-manifest`).
    #[default]
    Index,
    /// As OCI 1.1 referrers of each platform's manifest (`subject` set), with the tag-schema
    /// fallback (`sha256-<hex>`) for registries without the referrers API; the index holds only
    /// the platforms.
    Referrers,
    /// No provenance (`--provenance=false`).
    None,
}

impl AttestTo {
    /// `index`, `referrers` or `none`, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestTo::Index => "index",
            AttestTo::Referrers => "referrers",
            AttestTo::None => "none",
        }
    }
}

impl fmt::Display for AttestTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttestTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "index" => Ok(AttestTo::Index),
            "referrers" => Ok(AttestTo::Referrers),
            "none" => Ok(AttestTo::None),
            other => Err(format!(
                "'{other}' is not where provenance can go: accepted are index (in the image \
                 index, as buildx stores it), referrers (OCI 1.1 referrers of each platform's \
                 manifest) and none"
            )),
        }
    }
}

impl Serialize for AttestTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AttestTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether buildx's `--provenance VALUE` turns provenance on: `true`/`1`, `false`/`0`, or
/// `mode=min|max[,…]` (on; archfarm's statement is the same in both modes), `disabled=true`
/// (off). Errors name what is accepted.
pub fn parse_provenance_flag(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" | "1" => return Ok(true),
        "false" | "0" => return Ok(false),
        _ => {}
    }
    attest_fields(raw, "--provenance")
}

/// What buildx's `--attest VALUE` says about provenance: `Some(on)` for `type=provenance,…`,
/// `None` for another type archfarm does not make (an SBOM is refused by the caller).
pub fn parse_attest_flag(raw: &str) -> Result<Option<bool>, String> {
    let mut kind = None;
    let mut rest = Vec::new();
    for field in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some(("type", t)) => kind = Some(t.to_string()),
            _ => rest.push(field),
        }
    }
    match kind.as_deref() {
        Some("provenance") => attest_fields(&rest.join(","), "--attest").map(Some),
        Some("sbom") => Err(
            "--attest type=sbom: SBOMs are not made yet; only type=provenance is supported".into(),
        ),
        Some(other) => Err(format!(
            "--attest '{raw}': the type '{other}' is not supported; accepted: type=provenance[,mode=min|max][,disabled=true]"
        )),
        None => Err(format!(
            "--attest '{raw}' names no type; accepted: type=provenance[,mode=min|max][,disabled=true]"
        )),
    }
}

/// The `KEY=VALUE` fields of a provenance attestation: `mode`, `disabled`, and buildx's
/// `builder-id`/`version` taken but ignored (the coordinator names itself).
fn attest_fields(raw: &str, flag: &str) -> Result<bool, String> {
    let mut on = true;
    for field in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some(("mode", "min" | "max")) => {}
            Some(("disabled", v)) => {
                on = !matches!(v, "true" | "1");
            }
            Some(("builder-id" | "version", _)) => {}
            _ => {
                return Err(format!(
                    "{flag} '{raw}': '{field}' is not understood; accepted: true, false, \
                     mode=min, mode=max, disabled=true"
                ))
            }
        }
    }
    Ok(on)
}

/// Longest CPU model name an agent may report.
pub const MAX_CPU_MODEL_CHARS: usize = 200;

/// The machine an agent runs on, as it reports it at registration: what provenance names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHost {
    /// The kernel's machine name (`uname -m`: `x86_64`, `aarch64`, …).
    pub machine: String,
    /// The CPU's model as `/proc/cpuinfo` names it (`model name`, else `Hardware`, `cpu` or
    /// `CPU part`); empty when the kernel says nothing.
    #[serde(default)]
    pub cpu_model: String,
}

impl AgentHost {
    /// The same, cut to sane lengths and without control characters (an agent says what it
    /// likes; the statement is read by people and policy engines).
    pub fn sanitised(&self) -> AgentHost {
        let clean = |s: &str, max: usize| -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(max)
                .collect::<String>()
                .trim()
                .to_string()
        };
        AgentHost {
            machine: clean(&self.machine, 32),
            cpu_model: clean(&self.cpu_model, MAX_CPU_MODEL_CHARS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_provenance_values() {
        assert_eq!(parse_provenance_flag("false"), Ok(false));
        assert_eq!(parse_provenance_flag("0"), Ok(false));
        assert_eq!(parse_provenance_flag("true"), Ok(true));
        assert_eq!(parse_provenance_flag("mode=max"), Ok(true));
        assert_eq!(parse_provenance_flag("mode=min,disabled=true"), Ok(false));
        assert!(parse_provenance_flag("mode=huge").is_err());
        assert_eq!(
            parse_attest_flag("type=provenance,mode=max"),
            Ok(Some(true))
        );
        assert_eq!(
            parse_attest_flag("type=provenance,disabled=true"),
            Ok(Some(false))
        );
        assert!(parse_attest_flag("type=sbom").unwrap_err().contains("SBOM"));
        assert!(parse_attest_flag("mode=max")
            .unwrap_err()
            .contains("no type"));
        assert_eq!("referrers".parse(), Ok(AttestTo::Referrers));
        assert!("elsewhere".parse::<AttestTo>().is_err());
        assert_eq!(
            serde_json::to_string(&AttestTo::Index).unwrap(),
            "\"index\""
        );
    }

    #[test]
    fn agent_hosts_are_cut_and_cleaned() {
        let h = AgentHost {
            machine: "x86_64\u{1b}[31m".into(),
            cpu_model: "x".repeat(500),
        }
        .sanitised();
        assert_eq!(h.machine, "x86_64[31m");
        assert_eq!(h.cpu_model.len(), MAX_CPU_MODEL_CHARS);
    }
}
