//! Registry credentials: Docker's `config.json` (`{"auths": {HOST: {...}}}`), read by the
//! coordinator and agents, and the one credential a lease carries for its job's registry.
//!
//! Parsing is pure: the caller reads the file and passes its name along for error messages. No
//! error message and no `Debug` output ever holds a password or token: the file is walked as a
//! JSON value and every message is made here (serde's own messages may quote a value).

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::reference::DEFAULT_REGISTRY;
use crate::Secret;

/// Docker writes `auth` padded; people who write it by hand often do not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Names Docker Hub goes by in `config.json` keys and image references; all mean [`DEFAULT_REGISTRY`].
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// How to authenticate to one registry. Secrets are [`Secret`]s: `Debug` shows the user name only.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredential {
    /// User name and password (or an access token used as a password), sent as HTTP Basic
    /// authentication or to the registry's token service.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth2 refresh token from `docker login` against some cloud registries (`identitytoken`).
    IdentityToken(Secret),
    /// A bearer token sent as is on every request (`registrytoken`).
    RegistryToken(Secret),
}

impl RegistryCredential {
    /// What kind of credential it is, for logs: `basic`, `identity token` or `registry token`.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryCredential::Basic { .. } => "basic",
            RegistryCredential::IdentityToken(_) => "identity token",
            RegistryCredential::RegistryToken(_) => "registry token",
        }
    }

    /// Every secret string of the credential, so a log line that echoes one can be redacted:
    /// for a password also the base64 `user:password` an `Authorization: Basic` header carries.
    pub fn secrets(&self) -> Vec<Secret> {
        match self {
            RegistryCredential::Basic { username, password } => vec![
                password.clone(),
                Secret::new(BASE64.encode(format!("{username}:{}", password.expose()))),
            ],
            RegistryCredential::IdentityToken(t) | RegistryCredential::RegistryToken(t) => {
                vec![t.clone()]
            }
        }
    }

    /// A Docker/containers `auth.json` holding this credential for `registry` only (for
    /// `buildah --authfile`). Returned as a [`Secret`] because it holds the credential.
    pub fn auth_file_json(&self, registry: &str) -> Secret {
        auth_file_json(&[(registry, self)])
    }

    /// This credential as one `auths` entry.
    fn auth_entry(&self) -> serde_json::Value {
        match self {
            RegistryCredential::Basic { username, password } => serde_json::json!({
                "auth": BASE64.encode(format!("{username}:{}", password.expose())),
            }),
            RegistryCredential::IdentityToken(t) => {
                serde_json::json!({ "identitytoken": t.expose() })
            }
            RegistryCredential::RegistryToken(t) => {
                serde_json::json!({ "registrytoken": t.expose() })
            }
        }
    }
}

/// A containers `auth.json` holding each credential under its key: a registry (`reg.io:5000`,
/// Docker Hub under each of its names) or a registry and repository (`reg.io/team/base`, which
/// buildah prefers over the registry's entry for that repository). The first entry for a key
/// wins. Returned as a [`Secret`] because it holds the credentials.
pub fn auth_file_json(entries: &[(&str, &RegistryCredential)]) -> Secret {
    let mut auths = serde_json::Map::new();
    for (scope, credential) in entries {
        let entry = credential.auth_entry();
        for key in registry_aliases(scope) {
            auths.entry(key).or_insert_with(|| entry.clone());
        }
    }
    Secret::new(serde_json::json!({ "auths": auths }).to_string())
}

/// Docker Hub answers to several names; the others are themselves only.
fn registry_aliases(registry: &str) -> Vec<String> {
    if DOCKER_HUB_ALIASES.contains(&registry) {
        DOCKER_HUB_ALIASES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![registry.to_string()]
    }
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCredential::Basic { username, password } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", password)
                .finish(),
            RegistryCredential::IdentityToken(t) => {
                f.debug_tuple("IdentityToken").field(t).finish()
            }
            RegistryCredential::RegistryToken(t) => {
                f.debug_tuple("RegistryToken").field(t).finish()
            }
        }
    }
}

/// The wire form inside a lease: the same field names as `config.json` entries.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identitytoken: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registrytoken: Option<String>,
}

impl Serialize for RegistryCredential {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut w = Wire {
            username: None,
            password: None,
            identitytoken: None,
            registrytoken: None,
        };
        match self {
            RegistryCredential::Basic { username, password } => {
                w.username = Some(username.clone());
                w.password = Some(password.expose().to_string());
            }
            RegistryCredential::IdentityToken(t) => w.identitytoken = Some(t.expose().to_string()),
            RegistryCredential::RegistryToken(t) => w.registrytoken = Some(t.expose().to_string()),
        }
        w.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RegistryCredential {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        match w {
            Wire {
                username: Some(username),
                password: Some(password),
                identitytoken: None,
                registrytoken: None,
            } => Ok(RegistryCredential::Basic {
                username,
                password: Secret::new(password),
            }),
            Wire {
                identitytoken: Some(t),
                password: None,
                registrytoken: None,
                ..
            } => Ok(RegistryCredential::IdentityToken(Secret::new(t))),
            Wire {
                registrytoken: Some(t),
                password: None,
                identitytoken: None,
                ..
            } => Ok(RegistryCredential::RegistryToken(Secret::new(t))),
            _ => Err(serde::de::Error::custom(
                "a registry credential is username and password, identitytoken, or registrytoken",
            )),
        }
    }
}

/// Why a registry credentials file was refused. Messages name the file and the entry, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryAuthError {
    /// The file is not JSON, or not the expected shape at the top.
    #[error("registry credentials file {file}: {problem}; expected Docker's config.json format {{\"auths\": {{\"HOST[:PORT]\": {{\"auth\": \"BASE64(user:password)\"}}}}}}")]
    File {
        /// The file as named by the caller.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// One entry of `auths` is unusable.
    #[error("registry credentials file {file}, entry '{entry}': {problem}")]
    Entry {
        /// The file as named by the caller.
        file: String,
        /// The entry's key as written in the file.
        entry: String,
        /// What is wrong.
        problem: String,
    },
}

/// The credentials of a `config.json`, by normalised registry `HOST[:PORT]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuths {
    by_registry: BTreeMap<String, RegistryCredential>,
    /// Top-level keys that name credential helpers (`credsStore`, `credHelpers`), which archfarm
    /// does not run; the caller should warn about them.
    pub ignored_helpers: Vec<String>,
}

impl RegistryAuths {
    /// Parses a Docker `config.json`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, RegistryAuthError> {
        let file_err = |problem: &str| RegistryAuthError::File {
            file: file.to_string(),
            problem: problem.to_string(),
        };
        // serde_json's syntax errors give a line and column and never quote the text.
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| file_err(&format!("not valid JSON ({})", syntax_position(&e))))?;
        let serde_json::Value::Object(top) = value else {
            return Err(file_err("the top level is not a JSON object"));
        };
        let mut out = RegistryAuths::default();
        for helper in ["credsStore", "credHelpers"] {
            if top.contains_key(helper) {
                out.ignored_helpers.push(helper.to_string());
            }
        }
        let auths = match top.get("auths") {
            None => return Ok(out),
            Some(serde_json::Value::Object(a)) => a,
            Some(_) => return Err(file_err("\"auths\" is not a JSON object")),
        };
        for (key, entry) in auths {
            let entry_err = |problem: &str| RegistryAuthError::Entry {
                file: file.to_string(),
                entry: key.chars().take(200).collect(),
                problem: problem.to_string(),
            };
            let registry = normalise_registry(key).map_err(|p| entry_err(&p))?;
            let credential = parse_entry(entry).map_err(|p| entry_err(&p))?;
            if out
                .by_registry
                .insert(registry.clone(), credential)
                .is_some()
            {
                return Err(entry_err(&format!(
                    "a second entry for registry {registry}; keep one"
                )));
            }
        }
        Ok(out)
    }

    /// The credential for `registry` (`HOST[:PORT]` as in image references), if any. Docker Hub's
    /// names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry.
    pub fn get(&self, registry: &str) -> Option<&RegistryCredential> {
        let key = normalise_registry(registry).ok()?;
        self.by_registry.get(&key)
    }

    /// The registries that have a credential, normalised, sorted.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    /// How many registries have a credential.
    pub fn len(&self) -> usize {
        self.by_registry.len()
    }

    /// True when no registry has a credential.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }
}

/// `line L column C` of a JSON syntax error, without its message (which could quote text).
fn syntax_position(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "it ends early",
        _ => "syntax error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// `https://index.docker.io/v1/`, `http://reg:5000`, `Reg.Example.com` → `docker.io`, `reg:5000`,
/// `reg.example.com`: the registry part of image references.
pub fn normalise_registry(key: &str) -> Result<String, String> {
    let trimmed = key.trim();
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .unwrap_or(trimmed);
    if rest.contains("://") {
        return Err("only http:// and https:// URLs or a bare HOST[:PORT] are accepted".into());
    }
    let host = rest
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if !ok {
        return Err("the key is not a registry HOST[:PORT] or a URL naming one".into());
    }
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        return Ok(DEFAULT_REGISTRY.to_string());
    }
    Ok(host)
}

fn parse_entry(entry: &serde_json::Value) -> Result<RegistryCredential, String> {
    let serde_json::Value::Object(fields) = entry else {
        return Err("the entry is not a JSON object".into());
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        match fields.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let (auth, username, password) = (text("auth")?, text("username")?, text("password")?);
    let (identity, registry_token) = (text("identitytoken")?, text("registrytoken")?);
    if let Some(token) = identity {
        return Ok(RegistryCredential::IdentityToken(Secret::new(token)));
    }
    if let Some(token) = registry_token {
        return Ok(RegistryCredential::RegistryToken(Secret::new(token)));
    }
    if let Some(auth) = auth {
        let decoded = BASE64
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not base64 (expected base64 of user:password)".to_string())?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "\"auth\" does not decode to UTF-8 text".to_string())?;
        // Passwords may contain ':'; user names may not.
        let Some((user, pass)) = decoded.split_once(':') else {
            return Err("\"auth\" does not decode to user:password (no ':')".into());
        };
        if user.is_empty() || pass.is_empty() {
            return Err("\"auth\" decodes to an empty user name or password".into());
        }
        return Ok(RegistryCredential::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        });
    }
    match (username, password) {
        (Some(u), Some(p)) => Ok(RegistryCredential::Basic {
            username: u.to_string(),
            password: Secret::new(p),
        }),
        (Some(_), None) => Err("\"username\" is given without \"password\"".into()),
        (None, Some(_)) => Err("\"password\" is given without \"username\"".into()),
        (None, None) => Err(
            "no credentials: give \"auth\" (base64 of user:password), \"username\" and \"password\", \
             \"identitytoken\" or \"registrytoken\" (credential helpers are not supported)"
                .into(),
        ),
    }
}

/// Checks that `text` holds at least one PEM `CERTIFICATE` block whose body is base64; returns how
/// many. For CA files given on the command line, so a wrong file fails at start, not at first use.
pub fn count_pem_certificates(text: &str) -> Result<usize, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = after.find(END) else {
            return Err(format!("certificate {} has no {END} line", count + 1));
        };
        let body: String = after[..end].split_whitespace().collect();
        if body.is_empty() || BASE64.decode(&body).is_err() {
            return Err(format!("certificate {} is not valid base64", count + 1));
        }
        count += 1;
        rest = &after[end + END.len()..];
    }
    if count == 0 {
        return Err(format!("no PEM certificate ({BEGIN}) found"));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parses_every_entry_form_and_normalises_keys() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://Reg.Example.com:5000/v2/": {{"username": "bob", "password": "p:w"}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "cloud.example": {{"identitytoken": "refresh-xyz", "auth": "{}"}},
                "tok.example": {{"registrytoken": "bearer-xyz"}}
            }}, "HttpHeaders": {{"User-Agent": "x"}}}}"#,
            b64("alice:s3cret"),
            b64("ci:pa:ss").trim_end_matches('='),
            b64("<token>:")
        );
        let a = RegistryAuths::parse("config.json", &text).unwrap();
        assert_eq!(
            a.registries().collect::<Vec<_>>(),
            [
                "127.0.0.1:5000",
                "cloud.example",
                "docker.io",
                "reg.example.com:5000",
                "tok.example"
            ]
        );
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                a.get(hub),
                Some(&RegistryCredential::Basic {
                    username: "alice".into(),
                    password: Secret::new("s3cret")
                }),
                "{hub}"
            );
        }
        assert_eq!(
            a.get("127.0.0.1:5000"),
            Some(&RegistryCredential::Basic {
                username: "ci".into(),
                password: Secret::new("pa:ss")
            }),
            "unpadded base64; the password keeps its ':'"
        );
        assert_eq!(
            a.get("reg.example.com:5000").unwrap().kind(),
            "basic",
            "lookup by the reference's spelling"
        );
        assert_eq!(
            a.get("cloud.example"),
            Some(&RegistryCredential::IdentityToken(Secret::new(
                "refresh-xyz"
            )))
        );
        assert_eq!(a.get("tok.example").unwrap().kind(), "registry token");
        assert_eq!(
            a.get("127.0.0.1:5001"),
            None,
            "the port is part of the registry"
        );
        assert!(a.ignored_helpers.is_empty());
        let dbg = format!("{a:?}");
        for secret in ["s3cret", "pa:ss", "refresh-xyz", "bearer-xyz"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("alice"), "user names may show: {dbg}");
    }

    #[test]
    fn empty_files_and_helpers() {
        let a = RegistryAuths::parse("f", r#"{"credsStore": "desktop"}"#).unwrap();
        assert!(a.is_empty());
        assert_eq!(a.ignored_helpers, ["credsStore"]);
        assert!(RegistryAuths::parse("f", "{}").unwrap().is_empty());
    }

    #[test]
    fn malformed_files_name_the_file_and_entry_but_never_the_secret() {
        let cases = [
            (
                "not json",
                "/etc/af/config.json: not valid JSON (syntax error at line 1 column 2)",
            ),
            (
                r#"{"auths": {"#,
                "/etc/af/config.json: not valid JSON (it ends early",
            ),
            ("[1]", "the top level is not a JSON object"),
            (
                r#"{"auths": ["hunter2"]}"#,
                "\"auths\" is not a JSON object",
            ),
            (
                r#"{"auths": {"r.io": "hunter2"}}"#,
                "entry 'r.io': the entry is not a JSON object",
            ),
            (
                r#"{"auths": {"r.io": {"auth": "hunter2!!"}}}"#,
                "entry 'r.io': \"auth\" is not base64",
            ),
            (
                r#"{"auths": {"r.io": {"auth": 42}}}"#,
                "entry 'r.io': \"auth\" is not a string",
            ),
            (
                r#"{"auths": {"r.io": {"username": "u"}}}"#,
                "without \"password\"",
            ),
            (
                r#"{"auths": {"r.io": {"password": "hunter2"}}}"#,
                "without \"username\"",
            ),
            (r#"{"auths": {"r.io": {}}}"#, "entry 'r.io': no credentials"),
            (
                r#"{"auths": {"ftp://r.io": {"password": "hunter2"}}}"#,
                "entry 'ftp://r.io': only http://",
            ),
            (
                r#"{"auths": {"r io": {"password": "hunter2"}}}"#,
                "entry 'r io': the key is not a registry",
            ),
            (
                r#"{"auths": {"r.io": {"registrytoken": "hunter2"}, "https://r.io/v2/": {"registrytoken": "hunter2"}}}"#,
                "a second entry for registry r.io",
            ),
        ];
        for (text, needle) in cases {
            let e = RegistryAuths::parse("/etc/af/config.json", text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("/etc/af/config.json"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let no_colon = format!(
            r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
            b64("hunter2")
        );
        let e = RegistryAuths::parse("f", &no_colon)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user:password (no ':')") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn wire_form_round_trips_and_hides_in_debug() {
        for c in [
            RegistryCredential::Basic {
                username: "u".into(),
                password: Secret::new("hunter2"),
            },
            RegistryCredential::IdentityToken(Secret::new("hunter2")),
            RegistryCredential::RegistryToken(Secret::new("hunter2")),
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert!(json.contains("hunter2"), "the wire carries it: {json}");
            assert_eq!(
                serde_json::from_str::<RegistryCredential>(&json).unwrap(),
                c
            );
            assert!(!format!("{c:?}").contains("hunter2"));
            assert_eq!(c.secrets()[0].expose(), "hunter2");
        }
        assert!(serde_json::from_str::<RegistryCredential>(r#"{"username":"u"}"#).is_err());
    }

    #[test]
    fn auth_file_for_buildah() {
        let c = RegistryCredential::Basic {
            username: "ci".into(),
            password: Secret::new("p:w"),
        };
        let json: serde_json::Value =
            serde_json::from_str(c.auth_file_json("reg.io:5000").expose()).unwrap();
        assert_eq!(json["auths"]["reg.io:5000"]["auth"], b64("ci:p:w"));
        assert_eq!(json["auths"].as_object().unwrap().len(), 1);
        let hub: serde_json::Value =
            serde_json::from_str(c.auth_file_json("docker.io").expose()).unwrap();
        assert!(hub["auths"]["index.docker.io"]["auth"].is_string());
        assert_eq!(format!("{:?}", c.auth_file_json("x")), "Secret(***)");
        // The result must round-trip through our own parser.
        let back = RegistryAuths::parse("f", c.auth_file_json("reg.io:5000").expose()).unwrap();
        assert_eq!(back.get("reg.io:5000"), Some(&c));
        // Several entries: the first for a key wins, repositories keep their own entries.
        let token = RegistryCredential::RegistryToken(Secret::new("tok"));
        let json: serde_json::Value = serde_json::from_str(
            auth_file_json(&[
                ("reg.io:5000", &c),
                ("reg.io:5000", &token),
                ("reg.io:5000/team/base", &token),
                ("docker.io/library/golang", &token),
            ])
            .expose(),
        )
        .unwrap();
        let auths = json["auths"].as_object().unwrap();
        assert_eq!(auths.len(), 3, "{auths:?}");
        assert_eq!(auths["reg.io:5000"]["auth"], b64("ci:p:w"));
        assert_eq!(auths["reg.io:5000/team/base"]["registrytoken"], "tok");
        assert_eq!(auths["docker.io/library/golang"]["registrytoken"], "tok");
    }

    #[test]
    fn pem_certificates_are_checked() {
        let pem = "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n";
        assert_eq!(count_pem_certificates(pem), Ok(1));
        assert_eq!(count_pem_certificates(&pem.repeat(2)), Ok(2));
        assert!(count_pem_certificates("hello")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(count_pem_certificates(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"
        )
        .unwrap_err()
        .contains("not valid base64"));
        assert!(
            count_pem_certificates("-----BEGIN CERTIFICATE-----\nTUlJQg==\n")
                .unwrap_err()
                .contains("no -----END")
        );
    }
}
