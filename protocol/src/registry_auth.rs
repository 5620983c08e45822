//! Registry credentials: Docker's `config.json` (`{"auths": {HOST: {...}}}`, `credsStore`,
//! `credHelpers`), read by the coordinator, agents and the CLI, and the one credential a lease
//! carries for its job's registry.
//!
//! Parsing is pure: the caller reads the file and passes its name along for error messages, and
//! runs credential helpers itself ([`helper_program`], [`helper_server_url`],
//! [`parse_helper_answer`] say how). No error message and no `Debug` output ever holds a password
//! or token: the file is walked as a JSON value and every message is made here (serde's own
//! messages may quote a value).

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

/// The credentials of a `config.json`, by normalised registry `HOST[:PORT]`, and the credential
/// helpers it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuths {
    by_registry: BTreeMap<String, RegistryCredential>,
    /// `credsStore`: the helper for every registry `credHelpers` does not name.
    creds_store: Option<String>,
    /// `credHelpers`: a helper per registry, by normalised registry.
    cred_helpers: BTreeMap<String, String>,
    /// `auths` entries that could not be used, by normalised registry (or the key as written
    /// when it does not normalise); only [`RegistryAuths::parse_lenient`] keeps them.
    broken: BTreeMap<String, RegistryAuthError>,
    /// `credHelpers` entries that could not be used, likewise.
    broken_helpers: BTreeMap<String, RegistryAuthError>,
}

/// Where the credential for one registry comes from, by Docker's rule: `credHelpers` for the
/// registry, else `credsStore`, else the registry's `auths` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource<'a> {
    /// Run `docker-credential-NAME get` (see [`helper_program`]).
    Helper(&'a str),
    /// The `auths` entry.
    Entry(&'a RegistryCredential),
    /// Nothing: the registry is used anonymously.
    None,
}

impl RegistryAuths {
    /// Parses a Docker `config.json`; `file` names it in errors. Any unusable entry or helper
    /// name fails the whole file (the coordinator's and agents' `--registry-auth`: a mistake
    /// stops the start rather than surfacing at some build).
    pub fn parse(file: &str, text: &str) -> Result<Self, RegistryAuthError> {
        let out = Self::parse_lenient(file, text)?;
        match out
            .broken_helpers
            .values()
            .chain(out.broken.values())
            .next()
        {
            Some(e) => Err(e.clone()),
            None => Ok(out),
        }
    }

    /// Like [`RegistryAuths::parse`], but an unusable entry fails only lookups of its own
    /// registry ([`RegistryAuths::source`]), as Docker reads a pipeline's own config: one odd
    /// entry must not stop a build that pushes elsewhere. The file must still be a JSON object.
    pub fn parse_lenient(file: &str, text: &str) -> Result<Self, RegistryAuthError> {
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
        let entry_err = |key: &str, problem: &str| RegistryAuthError::Entry {
            file: file.to_string(),
            entry: key.chars().take(200).collect(),
            problem: problem.to_string(),
        };
        match top.get("credsStore") {
            None | Some(serde_json::Value::Null) => {}
            // Docker writes `"credsStore": ""` for none.
            Some(serde_json::Value::String(name)) if name.is_empty() => {}
            Some(serde_json::Value::String(name)) => match check_helper_name(name) {
                Ok(()) => out.creds_store = Some(name.clone()),
                Err(p) => return Err(file_err(&format!("\"credsStore\": {p}"))),
            },
            Some(_) => return Err(file_err("\"credsStore\" is not a string")),
        }
        match top.get("credHelpers") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(helpers)) => {
                for (key, name) in helpers {
                    let name = match name {
                        serde_json::Value::String(n) => check_helper_name(n).map(|()| n.clone()),
                        _ => Err("the helper name is not a string".to_string()),
                    };
                    let registry = normalise_registry(key);
                    match (registry, name) {
                        (Ok(registry), Ok(name)) => {
                            out.cred_helpers.insert(registry, name);
                        }
                        (registry, Err(p)) => {
                            let problem = format!("in \"credHelpers\": {p}");
                            let at = registry.unwrap_or_else(|_| key.clone());
                            out.broken_helpers.insert(at, entry_err(key, &problem));
                        }
                        (Err(p), Ok(_)) => {
                            let problem = format!("in \"credHelpers\": {p}");
                            out.broken_helpers
                                .insert(key.clone(), entry_err(key, &problem));
                        }
                    }
                }
            }
            Some(_) => return Err(file_err("\"credHelpers\" is not a JSON object")),
        }
        let auths = match top.get("auths") {
            None | Some(serde_json::Value::Null) => return Ok(out),
            Some(serde_json::Value::Object(a)) => a,
            Some(_) => return Err(file_err("\"auths\" is not a JSON object")),
        };
        // With a helper, `docker login` leaves an empty entry per registry in `auths`: the
        // credential itself is in the helper's store.
        let helpers = out.creds_store.is_some() || !out.cred_helpers.is_empty();
        for (key, entry) in auths {
            let registry = match normalise_registry(key) {
                Ok(r) => r,
                Err(p) => {
                    out.broken.insert(key.clone(), entry_err(key, &p));
                    continue;
                }
            };
            if helpers && entry.as_object().is_some_and(is_empty_entry) {
                continue;
            }
            let credential = match parse_entry(entry) {
                Ok(c) => c,
                Err(p) => {
                    out.broken.insert(registry, entry_err(key, &p));
                    continue;
                }
            };
            if out
                .by_registry
                .insert(registry.clone(), credential)
                .is_some()
            {
                out.broken.insert(
                    registry.clone(),
                    entry_err(
                        key,
                        &format!("a second entry for registry {registry}; keep one"),
                    ),
                );
            }
        }
        Ok(out)
    }

    /// Where the credential for `registry` comes from, by Docker's rule (`credHelpers`, then
    /// `credsStore`, then `auths`); an error when the entry that would answer is unusable.
    pub fn source(&self, registry: &str) -> Result<CredentialSource<'_>, RegistryAuthError> {
        let key = normalise_registry(registry).map_err(|problem| RegistryAuthError::Entry {
            file: String::new(),
            entry: registry.chars().take(200).collect(),
            problem,
        })?;
        if let Some(helper) = self.cred_helpers.get(&key) {
            return Ok(CredentialSource::Helper(helper));
        }
        if let Some(e) = self.broken_helpers.get(&key) {
            return Err(e.clone());
        }
        if let Some(store) = &self.creds_store {
            return Ok(CredentialSource::Helper(store));
        }
        if let Some(e) = self.broken.get(&key) {
            return Err(e.clone());
        }
        Ok(match self.by_registry.get(&key) {
            Some(c) => CredentialSource::Entry(c),
            None => CredentialSource::None,
        })
    }

    /// The registries with a `credHelpers` helper, and the helper's name, sorted.
    pub fn cred_helpers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.cred_helpers
            .iter()
            .map(|(r, h)| (r.as_str(), h.as_str()))
    }

    /// `credsStore`, the helper for every registry `credHelpers` does not name.
    pub fn creds_store(&self) -> Option<&str> {
        self.creds_store.as_deref()
    }

    /// The `auths` entry for `registry` (`HOST[:PORT]` as in image references), if any, whether
    /// or not a helper takes precedence over it (see [`RegistryAuths::source`]). Docker Hub's
    /// names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry.
    pub fn get(&self, registry: &str) -> Option<&RegistryCredential> {
        let key = normalise_registry(registry).ok()?;
        self.by_registry.get(&key)
    }

    /// The registries that have an `auths` entry, normalised, sorted.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    /// How many registries have an `auths` entry.
    pub fn len(&self) -> usize {
        self.by_registry.len()
    }

    /// True when no registry has an `auths` entry and no helper is named.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty() && self.creds_store.is_none() && self.cred_helpers.is_empty()
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

/// An `auths` entry with no credential in it (`{}`, or only `email`/`serveraddress`).
fn is_empty_entry(fields: &serde_json::Map<String, serde_json::Value>) -> bool {
    [
        "auth",
        "username",
        "password",
        "identitytoken",
        "registrytoken",
    ]
    .iter()
    .all(|k| match fields.get(*k) {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(_) => false,
    })
}

/// A helper name is the suffix of a program found in `PATH` (`docker-credential-NAME`): never a
/// path, never empty.
fn check_helper_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err("a helper name is 1 to 64 of A-Z a-z 0-9 - _ . (the program docker-credential-NAME in PATH)".into())
    }
}

/// The program a helper name stands for: `docker-credential-NAME`, looked up in `PATH`.
pub fn helper_program(name: &str) -> String {
    format!("docker-credential-{name}")
}

/// What a helper is asked for (on its stdin, after `get`): the server name `docker login`
/// stored the credential under, which is `https://index.docker.io/v1/` for Docker Hub and the
/// registry's `HOST[:PORT]` otherwise.
pub fn helper_server_url(registry: &str) -> String {
    match normalise_registry(registry) {
        Ok(r) if r == DEFAULT_REGISTRY => "https://index.docker.io/v1/".to_string(),
        Ok(r) => r,
        Err(_) => registry.to_string(),
    }
}

/// The message docker-credential-helpers' stores print (on stdout, exiting 1) when they hold
/// nothing for the server: no credential, not a failure.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// Longest piece of a helper's error message shown.
const MAX_HELPER_MESSAGE: usize = 200;

/// What a credential helper answered to `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperAnswer {
    /// A credential (`Username` `<token>` means `Secret` is an identity token).
    Found(RegistryCredential),
    /// The helper holds nothing for the server.
    NotFound,
}

/// Reads a helper's answer to `get`: its exit status and stdout. On success stdout is
/// `{"ServerURL": …, "Username": …, "Secret": …}`; on failure the helper's protocol puts its
/// error message on stdout. The error returned never quotes a successful answer (it holds the
/// secret), and quotes a failure's message only as one bounded, sanitised line. The helper's
/// stderr is not read here: helpers log what they like there, secrets included.
pub fn parse_helper_answer(success: bool, stdout: &[u8]) -> Result<HelperAnswer, String> {
    let text = String::from_utf8_lossy(stdout);
    if !success {
        let message = text.trim();
        if message == HELPER_NOT_FOUND || message.is_empty() && stdout.is_empty() {
            return Ok(HelperAnswer::NotFound);
        }
        let first = message.lines().next().unwrap_or_default();
        return Err(format!(
            "it failed: {}",
            crate::registry_text::sanitise(first, MAX_HELPER_MESSAGE)
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|_| {
        "its answer is not JSON (expected {\"Username\": …, \"Secret\": …})".to_string()
    })?;
    let field = |name: &str| -> Result<String, String> {
        match value.get(name) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("\"{name}\" in its answer is not a string")),
        }
    };
    let (username, secret) = (field("Username")?, field("Secret")?);
    if secret.is_empty() {
        return Ok(HelperAnswer::NotFound);
    }
    if username == "<token>" {
        return Ok(HelperAnswer::Found(RegistryCredential::IdentityToken(
            Secret::new(secret),
        )));
    }
    if username.is_empty() {
        return Err("its answer has a \"Secret\" but no \"Username\"".into());
    }
    Ok(HelperAnswer::Found(RegistryCredential::Basic {
        username,
        password: Secret::new(secret),
    }))
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
             \"identitytoken\" or \"registrytoken\" (or name a helper in \"credHelpers\")"
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
        assert_eq!(a.creds_store(), None);
        assert_eq!(a.cred_helpers().count(), 0);
        let dbg = format!("{a:?}");
        for secret in ["s3cret", "pa:ss", "refresh-xyz", "bearer-xyz"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("alice"), "user names may show: {dbg}");
    }

    #[test]
    fn empty_files_and_helpers() {
        let a = RegistryAuths::parse("f", r#"{"credsStore": "desktop"}"#).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a.len(), 0);
        assert_eq!(a.creds_store(), Some("desktop"));
        assert_eq!(
            a.source("ghcr.io").unwrap(),
            CredentialSource::Helper("desktop")
        );
        assert!(RegistryAuths::parse("f", "{}").unwrap().is_empty());
        assert!(RegistryAuths::parse("f", r#"{"credsStore": ""}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn helpers_follow_dockers_rule() {
        let text = format!(
            r#"{{"auths": {{
                "ghcr.io": {{}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{}}
            }},
            "credsStore": "pass",
            "credHelpers": {{"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
                             "https://Quay.io": "quay_1.0"}}}}"#,
            b64("ci:pw")
        );
        let a = RegistryAuths::parse("config.json", &text).unwrap();
        assert_eq!(
            a.source("123.dkr.ecr.us-east-1.amazonaws.com").unwrap(),
            CredentialSource::Helper("ecr-login")
        );
        assert_eq!(
            a.source("quay.io").unwrap(),
            CredentialSource::Helper("quay_1.0"),
            "keys are normalised like auths keys"
        );
        // With credsStore, Docker asks the store even where auths has an entry.
        for r in ["ghcr.io", "127.0.0.1:5000", "docker.io", "other.io"] {
            assert_eq!(
                a.source(r).unwrap(),
                CredentialSource::Helper("pass"),
                "{r}"
            );
        }
        assert_eq!(
            a.cred_helpers().collect::<Vec<_>>(),
            [
                ("123.dkr.ecr.us-east-1.amazonaws.com", "ecr-login"),
                ("quay.io", "quay_1.0")
            ]
        );
        // Without credsStore: credHelpers, else auths, else nothing.
        let text = format!(
            r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{}"}}, "ghcr.io": {{}}}},
                "credHelpers": {{"ghcr.io": "gh"}}}}"#,
            b64("ci:pw")
        );
        let a = RegistryAuths::parse("config.json", &text).unwrap();
        assert_eq!(a.source("ghcr.io").unwrap(), CredentialSource::Helper("gh"));
        assert!(matches!(
            a.source("127.0.0.1:5000").unwrap(),
            CredentialSource::Entry(RegistryCredential::Basic { .. })
        ));
        assert_eq!(a.source("other.io").unwrap(), CredentialSource::None);
        assert_eq!(
            helper_server_url("docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(
            helper_server_url("registry-1.docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(helper_server_url("Ghcr.io"), "ghcr.io");
        assert_eq!(helper_server_url("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(helper_program("ecr-login"), "docker-credential-ecr-login");
    }

    #[test]
    fn helper_names_are_never_paths() {
        for bad in ["../../bin/sh", "a/b", "", " x", ".hidden"] {
            let text = serde_json::json!({ "credsStore": bad }).to_string();
            let parsed = RegistryAuths::parse("f", &text);
            if bad.is_empty() {
                assert!(parsed.unwrap().is_empty(), "empty means none");
                continue;
            }
            let e = parsed.unwrap_err().to_string();
            assert!(e.contains("\"credsStore\": a helper name is"), "{bad}: {e}");
            let text = serde_json::json!({ "credHelpers": { "r.io": bad } }).to_string();
            let e = RegistryAuths::parse("f", &text).unwrap_err().to_string();
            assert!(e.contains("entry 'r.io': in \"credHelpers\""), "{bad}: {e}");
        }
    }

    #[test]
    fn lenient_parsing_fails_only_the_broken_registry() {
        let text = format!(
            r#"{{"auths": {{"broken.io": {{"auth": "hunter2!!"}}, "ok.io": {{"auth": "{}"}}}},
                 "credHelpers": {{"bad.io": "a/b"}}}}"#,
            b64("u:p")
        );
        assert!(RegistryAuths::parse("f", &text).is_err(), "strict");
        let a = RegistryAuths::parse_lenient("/home/ci/.docker/config.json", &text).unwrap();
        assert!(matches!(a.source("ok.io"), Ok(CredentialSource::Entry(_))));
        assert_eq!(a.source("else.io").unwrap(), CredentialSource::None);
        let e = a.source("broken.io").unwrap_err().to_string();
        assert!(
            e.contains("/home/ci/.docker/config.json, entry 'broken.io'") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(a
            .source("bad.io")
            .unwrap_err()
            .to_string()
            .contains("credHelpers"));
        // The file's shape is still checked.
        assert!(RegistryAuths::parse_lenient("f", "[]").is_err());
        assert!(RegistryAuths::parse_lenient("f", r#"{"credHelpers": 1}"#).is_err());
    }

    #[test]
    fn helper_answers() {
        let ok = |json: &str| parse_helper_answer(true, json.as_bytes());
        assert_eq!(
            ok(r#"{"ServerURL":"r.io","Username":"ci","Secret":"hunter2"}"#).unwrap(),
            HelperAnswer::Found(RegistryCredential::Basic {
                username: "ci".into(),
                password: Secret::new("hunter2")
            })
        );
        assert_eq!(
            ok(r#"{"Username":"<token>","Secret":"refresh"}"#).unwrap(),
            HelperAnswer::Found(RegistryCredential::IdentityToken(Secret::new("refresh")))
        );
        assert_eq!(
            ok(r#"{"Username":"","Secret":""}"#).unwrap(),
            HelperAnswer::NotFound
        );
        // A broken answer is described, never quoted: it may hold the secret.
        for bad in [
            "hunter2",
            r#"{"Username": 1, "Secret": "hunter2"}"#,
            r#"{"Secret":"hunter2"}"#,
        ] {
            let e = ok(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(
            parse_helper_answer(false, b"credentials not found in native keychain\n").unwrap(),
            HelperAnswer::NotFound
        );
        let e = parse_helper_answer(false, b"\x1b[31merror getting credentials\nsecond line")
            .unwrap_err();
        assert_eq!(e, "it failed: error getting credentials");
        let long = "x".repeat(5000);
        assert!(
            parse_helper_answer(false, long.as_bytes())
                .unwrap_err()
                .len()
                < 250
        );
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
