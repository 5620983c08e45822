//! Image references and content digests.
//!
//! The grammar follows the distribution project's reference rules: an optional registry host (it has a
//! `.` or a `:` or is `localhost`), lowercase path components, an optional tag and an optional digest.
//! Like Docker, a name without a registry means `docker.io` and a single component gets `library/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The registry a reference without a host resolves to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Why a reference or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference '{input}': {reason}; expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. localhost:5000/team/app:1.0")]
pub struct ReferenceError {
    /// The string as given.
    pub input: String,
    /// What in particular was wrong with it.
    pub reason: String,
}

/// A parsed image reference such as `localhost:5000/team/app:1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `localhost:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `team/app`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; see the module documentation for the grammar.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty".into()));
        }
        if input.len() > 512 {
            return Err(err("it is longer than 512 characters".into()));
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(format!("it contains the character {c:?}")));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| err(e.reason))?)),
            None => (input, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(err)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                validate_host(first).map_err(err)?;
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DEFAULT_REGISTRY.to_string(), name.to_string()),
            None => (DEFAULT_REGISTRY.to_string(), format!("library/{name}")),
        };
        validate_repository(&repository).map_err(err)?;
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The registry host without its port, for loopback checks.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }
}

/// The host part of `host[:port]`, keeping IPv6 brackets.
pub fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..h.len() + 1]);
    }
    registry.split(':').next().unwrap_or(registry)
}

pub(crate) fn validate_host(host: &str) -> Result<(), String> {
    let (h, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("registry host has an unclosed '['")?;
        if ip.is_empty() || !ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "registry host '{host}' is not a valid IPv6 address"
            ));
        }
        // Only a port may follow the address: `[::1]x` is no host.
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("registry host '{host}' has '{after}' after its IPv6 address")
            })?),
        };
        (ip, port)
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if !host.starts_with('[') {
        let ok = !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!("registry host '{h}' is not a valid host name"));
        }
    }
    if let Some(p) = port {
        if p.is_empty()
            || p.len() > 5
            || !p.chars().all(|c| c.is_ascii_digit())
            || p.parse::<u32>().unwrap_or(0) > 65535
        {
            return Err(format!(
                "registry port '{p}' is not a number from 0 to 65535"
            ));
        }
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is missing".into());
    }
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("the repository has an empty path component".into());
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "repository component '{component}' must be lowercase"
            ));
        }
        if !valid_component(component) {
            return Err(format!(
                "repository component '{component}' may hold only a-z, 0-9 and single '.', '_', '__' or runs of '-' between them"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag '{tag}' must be 1 to 128 of A-Z, a-z, 0-9, '_', '.', '-' and not start with '.' or '-'"
        ))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest; only sha256 is accepted.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let hex = input
            .strip_prefix("sha256:")
            .ok_or_else(|| err("a digest must start with 'sha256:'"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err("a sha256 digest has 64 lowercase hex digits"));
        }
        Ok(Digest(input.to_string()))
    }

    /// Builds a digest from 32 raw sha256 bytes.
    pub fn from_sha256_bytes(bytes: &[u8]) -> Self {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// The whole digest, `sha256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Only the hex part, for file names.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_accepted_references() {
        let table = [
            (
                "localhost:5000/app:1.0",
                "localhost:5000",
                "app",
                Some("1.0"),
            ),
            ("localhost/app", "localhost", "app", None),
            (
                "127.0.0.1:5000/team/app:v1",
                "127.0.0.1:5000",
                "team/app",
                Some("v1"),
            ),
            (
                "registry.example.com/a/b/c:latest",
                "registry.example.com",
                "a/b/c",
                Some("latest"),
            ),
            ("[::1]:5000/app:x", "[::1]:5000", "app", Some("x")),
            ("busybox", "docker.io", "library/busybox", None),
            ("team/app:1", "docker.io", "team/app", Some("1")),
            (
                "localhost:5000/my-app__x.y:TAG_1.-x",
                "localhost:5000",
                "my-app__x.y",
                Some("TAG_1.-x"),
            ),
        ];
        for (input, reg, repo, tag) in table {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
                (reg, repo, tag),
                "{input}"
            );
        }
        let r = ImageRef::parse(&format!("localhost:5000/app@{D}")).unwrap();
        assert_eq!(r.digest.unwrap().as_str(), D);
        assert_eq!(
            ImageRef::parse("localhost:5000/a/b:1").unwrap().to_string(),
            "localhost:5000/a/b:1"
        );
        assert_eq!(ImageRef::parse("[::1]:5000/app").unwrap().host(), "[::1]");
        assert_eq!(
            ImageRef::parse("localhost:5000/app").unwrap().host(),
            "localhost"
        );
    }

    #[test]
    fn rejects_with_reason() {
        let table = [
            ("", "it is empty"),
            (
                "localhost:5000/App:1",
                "repository component 'App' must be lowercase",
            ),
            ("localhost:5000/app:", "tag '' must be"),
            ("localhost:5000/app:-x", "tag '-x' must be"),
            ("localhost:5000/app:a b", "it contains the character ' '"),
            ("localhost:5000/", "the repository name is missing"),
            (
                "localhost:5000//app",
                "the repository has an empty path component",
            ),
            ("localhost:99999/app", "registry port '99999'"),
            ("local_host:5000/app", "registry host 'local_host'"),
            (
                "[::1]x/app",
                "registry host '[::1]x' has 'x' after its IPv6 address",
            ),
            ("[::1]5000/app", "registry host '[::1]5000' has '5000'"),
            ("localhost:5000/a..b", "repository component 'a..b'"),
            ("localhost:5000/app@sha256:abc", "a sha256 digest has 64"),
            (
                "localhost:5000/app@md5:abc",
                "a digest must start with 'sha256:'",
            ),
            ("not a ref!", "it contains the character ' '"),
        ];
        for (input, reason) in table {
            let e = ImageRef::parse(input).expect_err(input);
            assert!(
                e.reason.starts_with(reason),
                "{input:?}: got {:?}",
                e.reason
            );
            assert!(e.to_string().contains("expected [REGISTRY"), "{e}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(Digest::parse(D).unwrap().hex().len(), 64);
        assert!(Digest::parse(
            "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
        )
        .is_err());
        assert_eq!(
            Digest::from_sha256_bytes(&[0xab; 32]).as_str(),
            format!("sha256:{}", "ab".repeat(32))
        );
    }
}
