//! Where a job may push: repository patterns of limited `submit` tokens
//! (`registry.example.com/team-a/*`) and the registries of the coordinator's `--allowed-registry`.
//!
//! A pattern is `REGISTRY/REPOSITORY-GLOB`. The registry part is a host with an optional port,
//! matched exactly but for case, and never a glob: a token limited to one registry must not
//! reach another whose name happens to match. The first component names a registry as it does
//! in an image reference (it has a `.` or a `:` or is `localhost`); otherwise the pattern is on
//! Docker Hub, and a single component gets `library/`, as `ImageRef::parse` does. Docker Hub's
//! other names (`index.docker.io`, `registry-1.docker.io`) mean `docker.io`.
//!
//! The repository glob has two wildcards, as in `.gitignore`: `*` matches any characters within
//! one path component (no `/`), `**` any characters across components. So `team-a/*` matches
//! `team-a/app` but not `team-a/tools/app`, `team-a/**` matches both, and a pattern without a
//! wildcard matches that one repository. `team-a/**` does not match `team-a` itself.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reference::{validate_host, DEFAULT_REGISTRY};
use crate::ImageRef;

/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 512;
/// Most patterns one token may carry.
pub const MAX_PATTERNS: usize = 32;

/// Names Docker Hub goes by; all mean [`DEFAULT_REGISTRY`].
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A registry as patterns and allow-lists compare it: lowercase, Docker Hub under one name.
pub fn registry_key(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&lower.as_str()) {
        DEFAULT_REGISTRY.to_string()
    } else {
        lower
    }
}

/// Parses a `HOST[:PORT]` registry name (`--allowed-registry`) into its [`registry_key`].
pub fn parse_registry(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.contains('/') || raw.is_empty() {
        return Err(format!(
            "'{raw}' is not a registry: give HOST[:PORT], e.g. registry.example.com or localhost:5000"
        ));
    }
    validate_host(raw)?;
    Ok(registry_key(raw))
}

/// One `REGISTRY/REPOSITORY-GLOB` pattern; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepositoryPattern {
    /// The registry's [`registry_key`].
    registry: String,
    /// The repository glob.
    glob: String,
}

impl RepositoryPattern {
    /// Parses a pattern; the error says what is wrong and what a pattern looks like.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let err = |why: String| {
            format!(
                "repository pattern '{}' {why}; expected REGISTRY/REPOSITORY where REPOSITORY may use \
                 * (within one path component) and ** (across components), e.g. registry.example.com/team-a/*",
                raw.chars().take(80).collect::<String>()
            )
        };
        if raw.is_empty() || raw.len() > MAX_PATTERN_LEN {
            return Err(err(format!("must be 1 to {MAX_PATTERN_LEN} characters")));
        }
        let (registry, glob) = match raw.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                if first.contains('*') {
                    return Err(err(
                        "has a wildcard in its registry, which must be exact".into()
                    ));
                }
                validate_host(first).map_err(err)?;
                (registry_key(first), rest.to_string())
            }
            Some(_) => (DEFAULT_REGISTRY.to_string(), raw.to_string()),
            None => (DEFAULT_REGISTRY.to_string(), format!("library/{raw}")),
        };
        let glob = if registry == DEFAULT_REGISTRY && !glob.contains('/') {
            format!("library/{glob}")
        } else {
            glob
        };
        for component in glob.split('/') {
            if component.is_empty() {
                return Err(err("has an empty path component".into()));
            }
            let ok = component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '*')
            });
            if !ok {
                return Err(err(format!(
                    "has component '{component}', which may hold only a-z 0-9 . _ - and *"
                )));
            }
            if component.contains("***") || (component.contains("**") && component != "**") {
                return Err(err("uses ** other than as a whole path component".into()));
            }
        }
        Ok(RepositoryPattern { registry, glob })
    }

    /// Whether a push to `registry`/`repository` falls within the pattern.
    pub fn matches(&self, registry: &str, repository: &str) -> bool {
        let registry = registry_key(registry);
        if registry != self.registry {
            return false;
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        glob_match(self.glob.as_bytes(), repository.as_bytes())
    }

    /// Whether `image` (its registry and repository) falls within the pattern.
    pub fn matches_ref(&self, image: &ImageRef) -> bool {
        self.matches(&image.registry, &image.repository)
    }
}

/// Whether `name` falls within any of `patterns`; an empty list limits nothing.
pub fn allowed_by(patterns: &[RepositoryPattern], registry: &str, repository: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(registry, repository))
}

/// `*` is any run of bytes but `/`, `**` any run at all. Dynamic programming over (pattern, name)
/// positions, so a pattern full of stars costs O(len × len), never backtracking exponentially.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // matched[j]: the pattern read so far matches name[..j].
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    let mut i = 0;
    while i < pattern.len() {
        let mut next = vec![false; name.len() + 1];
        if pattern[i] == b'*' {
            let across = pattern.get(i + 1) == Some(&b'*');
            // Once a position matches, every later one reachable through the star does too.
            let mut reach = false;
            for j in 0..=name.len() {
                if matched[j] {
                    reach = true;
                }
                next[j] = reach;
                if j < name.len() && name[j] == b'/' && !across {
                    reach = false;
                }
            }
            i += if across { 2 } else { 1 };
        } else {
            for j in 0..name.len() {
                next[j + 1] = matched[j] && name[j] == pattern[i];
            }
            i += 1;
        }
        matched = next;
    }
    matched[name.len()]
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.glob)
    }
}

impl Serialize for RepositoryPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RepositoryPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RepositoryPattern::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RepositoryPattern {
        RepositoryPattern::parse(s).unwrap()
    }

    #[test]
    fn one_star_stays_in_its_component_two_cross() {
        let one = p("registry.example.com/team-a/*");
        assert!(one.matches("registry.example.com", "team-a/app"));
        assert!(!one.matches("registry.example.com", "team-a/tools/app"));
        assert!(!one.matches("registry.example.com", "team-a"));
        assert!(!one.matches("registry.example.com", "team-ab/app"));
        let two = p("registry.example.com/team-a/**");
        assert!(two.matches("registry.example.com", "team-a/app"));
        assert!(two.matches("registry.example.com", "team-a/tools/app"));
        assert!(!two.matches("registry.example.com", "team-b/app"));
        let mid = p("localhost:5000/team-*/app-*");
        assert!(mid.matches("localhost:5000", "team-a/app-web"));
        assert!(!mid.matches("localhost:5000", "team-a/x/app-web"));
        let exact = p("localhost:5000/team/app");
        assert!(exact.matches("localhost:5000", "team/app"));
        assert!(!exact.matches("localhost:5000", "team/app2"));
    }

    #[test]
    fn the_registry_is_exact_but_for_case_and_docker_hub_names() {
        let one = p("Registry.Example.com/team-a/*");
        assert_eq!(one.to_string(), "registry.example.com/team-a/*");
        assert!(one.matches("REGISTRY.example.com", "team-a/app"));
        assert!(!one.matches("registry.example.com:443", "team-a/app"));
        assert!(!one.matches("evil.example.com", "team-a/app"));
        let hub = p("alpine");
        assert_eq!(hub.to_string(), "docker.io/library/alpine");
        assert!(hub.matches("index.docker.io", "library/alpine"));
        assert!(hub.matches("docker.io", "alpine"));
        assert!(p("docker.io/team/*").matches("registry-1.docker.io", "team/app"));
        let image = ImageRef::parse("team/app:1").unwrap();
        assert!(p("team/*").matches_ref(&image));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (raw, needle) in [
            ("reg*.example.com/app", "registry, which must be exact"),
            ("localhost:5000/Team/*", "may hold only"),
            ("localhost:5000//app", "empty path component"),
            ("localhost:5000/a**/b", "whole path component"),
            ("host.com:x/app", "not a number"),
            ("", "1 to 512"),
        ] {
            let e = RepositoryPattern::parse(raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }

    #[test]
    fn many_stars_stay_cheap() {
        let pat = p(&format!("localhost:5000/{}b", "*a".repeat(100)));
        assert!(!pat.matches("localhost:5000", &"a".repeat(250)));
    }

    #[test]
    fn registries_parse_to_their_key() {
        assert_eq!(parse_registry("Localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(parse_registry("index.docker.io").unwrap(), "docker.io");
        assert!(parse_registry("localhost:5000/app").is_err());
        assert!(parse_registry("bad host").is_err());
        assert!(allowed_by(&[], "any", "thing"));
    }
}
