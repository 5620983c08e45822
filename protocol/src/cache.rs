//! Registry build caches (`--cache-to` / `--cache-from`), written as buildx writes them, and the
//! repository each platform's cache lives in.
//!
//! buildah (the builder agents run) keeps a registry cache as one image per build step, tagged
//! with the step's cache key, in one repository. A multi-node buildx build keeps only the
//! platform that finished last under one cache reference (docker/buildx#1044); archfarm keeps
//! each platform apart instead, in a repository of its own below the one named:
//! `ref=REGISTRY/REPO[:TAG]` caches `linux/arm64` in `REGISTRY/REPO/TAG-linux-arm64` (without a
//! tag, `REGISTRY/REPO/linux-arm64`). So no platform overwrites another, and no cache image ever
//! appears in the repository or under the tags a job pushes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ImageRef, Platform};

/// Why a `--cache-to` / `--cache-from` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache '{input}': {reason}; accepted: type=registry,ref=REGISTRY/REPOSITORY[:TAG][,mode=min|max][,ignore-error=true|false], or REGISTRY/REPOSITORY[:TAG] alone")]
pub struct CacheError {
    /// The value as given.
    pub input: String,
    /// What in particular was wrong with it.
    pub reason: String,
}

/// How much of a build `--cache-to` keeps. buildah writes every step it runs, in every stage,
/// which is buildx's `max`; `min` is accepted for compatibility and behaves the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// buildx's default: the final stage's layers only.
    #[default]
    Min,
    /// Every stage's layers.
    Max,
}

/// One registry cache location, as a job names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRef {
    /// Registry `host[:port]`.
    pub registry: String,
    /// Repository below which each platform's cache repository lives.
    pub repository: String,
    /// The reference's tag, if any: it names the cache among others under the same repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `mode=` (only meaningful for `--cache-to`).
    #[serde(default)]
    pub mode: CacheMode,
}

impl CacheRef {
    /// Parses a buildx cache value: `type=registry,ref=R[,mode=..][,ignore-error=..]`, or `R`
    /// alone. Other cache types (`local`, `gha`, `inline`, `s3`, `azblob`) are refused by name:
    /// archfarm's agents are on other machines than the CLI, so only a registry is shared.
    pub fn parse(input: &str) -> Result<Self, CacheError> {
        let err = |reason: String| CacheError {
            input: input.to_string(),
            reason,
        };
        let input_trimmed = input.trim();
        if input_trimmed.is_empty() {
            return Err(err("it is empty".into()));
        }
        let mut kind = None;
        let mut reference = None;
        let mut mode = CacheMode::Min;
        if !input_trimmed.contains('=') {
            reference = Some(input_trimmed.to_string());
        } else {
            let mut fields = Vec::new();
            for field in input_trimmed.split(',') {
                let Some((key, value)) = field.split_once('=') else {
                    return Err(err(format!("'{field}' is not KEY=VALUE")));
                };
                if key.trim() == "type" {
                    kind = Some(value.trim().to_string());
                }
                fields.push((key, value));
            }
            // The type first: another type's options are refused as that type.
            check_type(kind.as_deref()).map_err(err)?;
            for (key, value) in fields {
                match key.trim() {
                    "type" => {}
                    "ref" => reference = Some(value.trim().to_string()),
                    "mode" => {
                        mode = match value.trim() {
                            "min" => CacheMode::Min,
                            "max" => CacheMode::Max,
                            other => {
                                return Err(err(format!("mode '{other}' is not one of min, max")))
                            }
                        }
                    }
                    // A cache that cannot be read or written never fails an archfarm build, so
                    // buildx's switch for that is accepted either way.
                    "ignore-error" => match value.trim() {
                        "true" | "false" => {}
                        other => {
                            return Err(err(format!("ignore-error '{other}' is not true or false")))
                        }
                    },
                    other => {
                        return Err(err(format!(
                            "the option '{other}' is not supported (supported: type, ref, mode, \
                             ignore-error)"
                        )))
                    }
                }
            }
        }
        let Some(reference) = reference else {
            return Err(err("ref= is missing".into()));
        };
        let parsed = ImageRef::parse(&reference).map_err(|e| err(e.reason))?;
        if parsed.digest.is_some() {
            return Err(err(
                "a cache is named by repository and tag, not by digest".into()
            ));
        }
        if parsed.repository.len() > 200 {
            return Err(err("the repository is longer than 200 characters".into()));
        }
        Ok(CacheRef {
            registry: parsed.registry,
            repository: parsed.repository,
            tag: parsed.tag,
            mode,
        })
    }

    /// The default cache of a job pushing to `registry`/`repository` when the coordinator has
    /// a default cache location `base` (`REGISTRY/PATH`): `REGISTRY/PATH/HOST[-PORT]/REPOSITORY`,
    /// the push registry included so that `a.lan/team/app` and `b.lan/team/app` never share one.
    pub fn default_for(base: &CacheRef, registry: &str, repository: &str) -> CacheRef {
        let host: String = registry
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c == ':' { '-' } else { c })
            .collect();
        CacheRef {
            registry: base.registry.clone(),
            repository: format!("{}/{host}/{repository}", base.repository),
            tag: base.tag.clone(),
            mode: CacheMode::Max,
        }
    }

    /// The repository (without registry) holding `platform`'s cache; see the module docs.
    pub fn platform_repository(&self, platform: &Platform) -> String {
        let mut leaf = String::new();
        if let Some(tag) = &self.tag {
            leaf.push_str(&path_component(tag));
            leaf.push('-');
        }
        leaf.push_str(platform.os());
        leaf.push('-');
        leaf.push_str(platform.architecture());
        if let Some(v) = platform.variant() {
            leaf.push('-');
            leaf.push_str(v);
        }
        format!("{}/{leaf}", self.repository)
    }

    /// `REGISTRY/REPOSITORY` of `platform`'s cache, as buildah's `--cache-to/--cache-from` take it.
    pub fn for_platform(&self, platform: &Platform) -> String {
        format!("{}/{}", self.registry, self.platform_repository(platform))
    }
}

/// What a lease tells the agent about caches: this platform's cache repositories
/// (`REGISTRY/REPOSITORY`, see [`CacheRef::for_platform`]) and the job's switches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCache {
    /// Repositories to write this platform's steps to. One that cannot be written never fails
    /// the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Repositories to reuse steps from, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Run every step again (`--no-cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// Pull base images again even when the agent has them (`--pull`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
}

impl LeaseCache {
    /// Whether it asks for nothing (so older agents never see the field).
    pub fn is_empty(&self) -> bool {
        *self == LeaseCache::default()
    }
}

impl fmt::Display for CacheRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type=registry,ref={}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if self.mode == CacheMode::Max {
            f.write_str(",mode=max")?;
        }
        Ok(())
    }
}

/// Refuses every cache type but `registry`, naming why.
fn check_type(kind: Option<&str>) -> Result<(), String> {
    match kind {
        None | Some("registry") => Ok(()),
        Some(t @ ("local" | "gha" | "inline" | "s3" | "azblob")) => Err(format!(
            "type={t} is not supported: archfarm's agents build on other machines, so only a \
             registry cache is shared; use type=registry"
        )),
        Some(other) => Err(format!("type '{other}' is unknown")),
    }
}

/// A tag as a repository path component: lowercase, and only the separators a path component
/// may have between alphanumerics (a tag may hold `_`, `.`, `-` and capitals anywhere).
fn path_component(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    for c in tag.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("cache");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn buildx_forms_parse() {
        let c = CacheRef::parse("type=registry,ref=ghcr.io/org/app:buildcache,mode=max").unwrap();
        assert_eq!(c.registry, "ghcr.io");
        assert_eq!(c.repository, "org/app");
        assert_eq!(c.tag.as_deref(), Some("buildcache"));
        assert_eq!(c.mode, CacheMode::Max);
        assert_eq!(
            c.to_string(),
            "type=registry,ref=ghcr.io/org/app:buildcache,mode=max"
        );
        let bare = CacheRef::parse("localhost:5000/cache/app").unwrap();
        assert_eq!(bare.registry, "localhost:5000");
        assert_eq!(bare.mode, CacheMode::Min);
        assert_eq!(bare.tag, None);
        let ignore =
            CacheRef::parse("type=registry,ref=localhost:5000/c,ignore-error=true").unwrap();
        assert_eq!(ignore.repository, "c");
        // Round trip through the display form.
        assert_eq!(CacheRef::parse(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn other_types_and_options_are_refused_by_name() {
        let e = CacheRef::parse("type=gha").unwrap_err().to_string();
        assert!(e.contains("type=gha is not supported"), "{e}");
        assert!(e.contains("type=registry,ref="), "{e}");
        let e = CacheRef::parse("type=local,src=/tmp/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("type=local is not supported"), "{e}");
        let e = CacheRef::parse("type=registry,ref=r.io/a,compression=zstd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'compression' is not supported"), "{e}");
        let e = CacheRef::parse("type=registry").unwrap_err().to_string();
        assert!(e.contains("ref= is missing"), "{e}");
        let e = CacheRef::parse("type=registry,ref=r.io/a,mode=all")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 'all' is not one of min, max"), "{e}");
        let e = CacheRef::parse("type=registry,ref=r.io/a@sha256:0000000000000000000000000000000000000000000000000000000000000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not by digest"), "{e}");
        let e = CacheRef::parse("type=registry,ref=UPPER/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid cache 'type=registry,ref=UPPER/x'"),
            "{e}"
        );
        assert!(CacheRef::parse("").is_err());
    }

    #[test]
    fn each_platform_has_its_own_repository() {
        let c = CacheRef::parse("type=registry,ref=r.io/org/app:Build_Cache.1").unwrap();
        assert_eq!(
            c.for_platform(&p("linux/arm64")),
            "r.io/org/app/build-cache-1-linux-arm64"
        );
        assert_eq!(
            c.for_platform(&p("linux/arm/v7")),
            "r.io/org/app/build-cache-1-linux-arm-v7"
        );
        let bare = CacheRef::parse("r.io/cache/realworld").unwrap();
        assert_eq!(
            bare.for_platform(&p("linux/amd64")),
            "r.io/cache/realworld/linux-amd64"
        );
        assert_ne!(
            bare.for_platform(&p("linux/amd64")),
            bare.for_platform(&p("linux/s390x"))
        );
        // Every derived repository parses as a reference again.
        for plat in ["linux/amd64", "linux/arm/v6", "linux/ppc64le"] {
            ImageRef::parse(&c.for_platform(&p(plat))).unwrap();
        }
        assert_eq!(path_component("___"), "cache");
    }

    #[test]
    fn the_default_cache_is_below_the_default_location() {
        let base = CacheRef::parse("127.0.0.1:5000/archfarm-cache").unwrap();
        let c = CacheRef::default_for(&base, "reg.lan:5000", "team/app");
        assert_eq!(
            c.for_platform(&p("linux/arm64")),
            "127.0.0.1:5000/archfarm-cache/reg.lan-5000/team/app/linux-arm64"
        );
        ImageRef::parse(&c.for_platform(&p("linux/arm64"))).unwrap();
        assert_ne!(
            CacheRef::default_for(&base, "other.lan", "team/app").for_platform(&p("linux/arm64")),
            c.for_platform(&p("linux/arm64"))
        );
        assert_eq!(c.mode, CacheMode::Max);
    }
}
