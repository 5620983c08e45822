//! Refuses, before buildah runs, the `RUN --mount` forms that let a step of buildah 1.28 (Debian
//! 12's, the newest packaged for it) reach the host: CVE-2024-1753 (a bind mount `from=` a stage or
//! image follows a symlink in it to the host's `/`), CVE-2024-9675 (a cache mount's `from`/`source`,
//! or its key, leads to host directories), CVE-2024-9407 (`bind-propagation` goes into the mount's
//! options as written) and CVE-2024-11218 (a writable bind mount of the context writes through to
//! the agent's copy, where a later mount follows what the step left there).
//!
//! What stays allowed is an allow-list: `type=secret`, `type=tmpfs`, `type=cache` keyed by `id` or
//! an absolute `target` (no `from`, no `source`, no cache inside another cache) and read-only
//! `type=bind` from the build context (no `from`) whose source does not go through a symlink out
//! of the context. Every other type, option or form is refused with the line and the reason.
//!
//! The Dockerfile is read the way buildkit's parser (which buildah's imagebuilder uses) reads it:
//! instructions in any case, `\` (or the `# escape=` character) continuing lines, comment and
//! empty lines inside continuations dropped, `RUN` flags as quoted words before the command,
//! `ONBUILD RUN`. buildah 1.28 has no heredocs: their bodies are instructions to it, and are
//! checked as such. To stay safe when the escape directive is misread, the file is checked with
//! both escape characters and refused if either reading refuses it.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why a Dockerfile is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The 1-based line where the instruction starts.
    pub line: usize,
    /// What is refused and why.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dockerfile line {}: {}", self.line, self.reason)
    }
}

/// Checks every `RUN --mount` of `dockerfile`; `context` is the unpacked build context, where bind
/// mount sources are resolved.
pub fn check(dockerfile: &str, context: &Path) -> Result<(), Refusal> {
    cache_keys(dockerfile, context).map(drop)
}

/// Checks `dockerfile` as [`check`] does and returns the keys of its `RUN --mount=type=cache`
/// mounts (id, or else target), cleaned as buildah 1.28 names their directories: the agent keeps
/// those directories between builds, and refuses keys that nest with an earlier build's.
pub fn cache_keys(dockerfile: &str, context: &Path) -> Result<Vec<String>, Refusal> {
    let text = dockerfile.strip_prefix('\u{feff}').unwrap_or(dockerfile);
    let escape = escape_directive(text);
    let other = if escape == '\\' { '`' } else { '\\' };
    // Both readings' keys: a key only the other reading sees must be recorded and checked
    // against earlier builds' too, or a misread escape directive would hide a nesting.
    let mut keys = check_with(text, escape, context)?;
    keys.extend(check_with(text, other, context)?);
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn check_with(text: &str, escape: char, context: &Path) -> Result<Vec<String>, Refusal> {
    let mut caches: Vec<(usize, String)> = Vec::new();
    for (line, instruction) in instructions(text, escape) {
        check_instruction(&instruction, line, context, &mut caches)?;
    }
    let mut keys: Vec<String> = caches.into_iter().map(|(_, key)| key).collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The escape character the parser directives at the top of the file set (`\` by default).
fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((name, value)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            break;
        }
        if name.eq_ignore_ascii_case("escape") && value.trim() == "`" {
            return '`';
        }
    }
    '\\'
}

/// The logical instructions of the file with the line each starts on.
fn instructions(text: &str, escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut continued = false;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            // Comments and empty lines neither start an instruction nor end one.
            continue;
        }
        if !continued {
            start = i + 1;
        }
        let end = raw.trim_end();
        if let Some(body) = end.strip_suffix(escape) {
            current.push_str(body);
            continued = true;
        } else {
            current.push_str(raw);
            out.push((start, std::mem::take(&mut current)));
            continued = false;
        }
    }
    if continued {
        out.push((start, current));
    }
    out
}

fn check_instruction(
    instruction: &str,
    line: usize,
    context: &Path,
    caches: &mut Vec<(usize, String)>,
) -> Result<(), Refusal> {
    let text = instruction.trim_start();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if word.eq_ignore_ascii_case("onbuild") {
        return check_instruction(rest, line, context, caches);
    }
    if !word.eq_ignore_ascii_case("run") {
        return Ok(());
    }
    let refuse = |reason: String| Refusal { line, reason };
    for (raw, flag) in flags(rest) {
        // buildah expands build arguments in a flag word and takes quotes and backslashes out
        // of it (again) before it looks at the name, so `--${M}=…` or `--mo\unt=…` become
        // --mount there: nothing of that kind is let through, whatever the name looks like here.
        if raw.contains(['$', '"', '\'', '\\']) {
            return Err(refuse(format!(
                "RUN flag {raw} is refused: buildah 1.28 expands build arguments and removes \
                 quotes and backslashes in a RUN flag before it reads it, so variables, quotes and \
                 backslashes are not allowed in RUN flags; write the flag out"
            )));
        }
        // Only space and tab separate words for buildah; any other blank inside a flag would
        // end a word here and not there.
        if raw.chars().any(char::is_whitespace) {
            return Err(refuse(format!(
                "RUN flag {} is refused: it holds a blank other than a space or a tab",
                raw.escape_default()
            )));
        }
        let Some(name) = flag.strip_prefix("--") else {
            continue;
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name, None),
        };
        if !name.eq_ignore_ascii_case("mount") {
            return Err(refuse(format!(
                "RUN --{name} is refused: buildah 1.28 takes only --mount on RUN"
            )));
        }
        let Some(value) = value else {
            return Err(refuse(format!("RUN --{name} without a value is refused")));
        };
        check_mount(value, context, caches, line).map_err(refuse)?;
    }
    Ok(())
}

/// The flag words before a `RUN` command, each as written and with quotes removed, as buildkit's
/// `extractBuilderFlags` reads them: words are separated by spaces and tabs only.
fn flags(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut words = Vec::new();
    let mut pos = 0;
    loop {
        while pos < chars.len() && is_blank(chars[pos]) {
            pos += 1;
        }
        if pos + 1 >= chars.len() || chars[pos] != '-' || chars[pos + 1] != '-' {
            return words;
        }
        let begin = pos;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while pos < chars.len() {
            let ch = chars[pos];
            pos += 1;
            match quote {
                None if is_blank(ch) => break,
                None if ch == '"' || ch == '\'' => quote = Some(ch),
                None if ch == '\\' => {
                    if pos < chars.len() {
                        word.push(chars[pos]);
                        pos += 1;
                    }
                }
                None => word.push(ch),
                Some(q) if ch == q => quote = None,
                Some(q) if ch == '\\' && q != '\'' => {
                    if pos < chars.len() {
                        word.push(chars[pos]);
                        pos += 1;
                    }
                }
                Some(_) => word.push(ch),
            }
        }
        if word == "--" {
            return words;
        }
        let raw: String = chars[begin..pos].iter().collect();
        words.push((raw.trim_end_matches(is_blank).to_string(), word));
    }
}

/// What separates words in a RUN line for buildah.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

const TARGET: &[&str] = &["target", "dst", "destination"];
const FLAGS: &[&str] = &["ro", "readonly", "nosuid", "nodev", "noexec"];
const BIND: &[&str] = &["source", "src", "bind-nonrecursive", "consistency"];
const CACHE: &[&str] = &["id", "sharing", "mode", "uid", "gid", "rw", "readwrite"];
const SECRET: &[&str] = &["id", "required", "mode", "uid", "gid"];
const TMPFS: &[&str] = &[
    "size",
    "tmpfs-size",
    "mode",
    "tmpfs-mode",
    "rw",
    "readwrite",
    "tmpcopyup",
    "notmpcopyup",
];
/// Options that change how mounts propagate between the step and the host (CVE-2024-9407).
const PROPAGATION: &[&str] = &[
    "shared", "rshared", "private", "rprivate", "slave", "rslave",
];
/// Where buildah 1.28 keeps its cache lock files, inside the cache directory.
const LOCKFILES: &str = "buildah-cache-lockfiles";

/// Checks one `--mount` value; the error is the whole reason, naming the option.
fn check_mount(
    value: &str,
    context: &Path,
    caches: &mut Vec<(usize, String)>,
    line: usize,
) -> Result<(), String> {
    if value.contains('$') {
        return Err(format!(
            "RUN --mount={value} is refused: buildah 1.28 expands build arguments and variables in \
             --mount options after this check could see them; write the value out"
        ));
    }
    if value.contains(['"', '\'', '\\']) {
        return Err(format!(
            "RUN --mount={value} is refused: quotes or backslashes inside a --mount value are not \
             allowed"
        ));
    }
    let options: Vec<(&str, Option<&str>)> = value
        .split(',')
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (t, None),
        })
        .collect();
    let types: Vec<&str> = options
        .iter()
        .filter(|(k, _)| *k == "type")
        .map(|(_, v)| v.unwrap_or(""))
        .collect();
    let kind = match types.as_slice() {
        [] => "bind", // buildah's default, like Docker's
        [one] => one,
        _ => {
            return Err(format!(
                "RUN --mount={value} is refused: it names more than one type"
            ))
        }
    };
    let allowed: &[&[&str]] =
        match kind {
            "bind" => &[TARGET, FLAGS, BIND],
            "cache" => &[TARGET, FLAGS, CACHE],
            "secret" => &[TARGET, SECRET],
            "tmpfs" => &[TARGET, FLAGS, TMPFS],
            "ssh" => return Err(
                "RUN --mount=type=ssh is refused: the farm forwards no SSH agent to builds; use \
                 a build secret (--secret) instead"
                    .into(),
            ),
            other => {
                return Err(format!(
                    "RUN --mount=type={other} is refused: only bind (from the build context, \
                 read-only), cache, secret and tmpfs mounts are allowed"
                ))
            }
        };
    for &(key, v) in &options {
        if key == "type" {
            continue;
        }
        let shown = match v {
            Some(v) => format!("{key}={v}"),
            None => key.to_string(),
        };
        let refuse = |why: &str| format!("RUN --mount=type={kind},{shown} is refused: {why}");
        match key {
            "from" if kind == "bind" => {
                return Err(refuse(&format!(
                    "buildah 1.28 follows symbolic links of a mount source outside the build \
                     (CVE-2024-1753); copy the files with COPY --from={} instead",
                    v.unwrap_or("STAGE")
                )))
            }
            "from" | "source" | "src" if kind == "cache" => {
                return Err(refuse(
                    "buildah 1.28 resolves a cache mount's from and source to directories of \
                     the host (CVE-2024-9675); use a cache keyed by id or target alone, or COPY \
                     --from",
                ))
            }
            "bind-propagation" => {
                return Err(refuse(
                    "buildah 1.28 passes its value into the mount's options unchecked \
                     (CVE-2024-9407); leave it out",
                ))
            }
            k if PROPAGATION.contains(&k) => {
                return Err(refuse(
                    "mount propagation options are not allowed: they tie the step's mounts to \
                     the host's (CVE-2024-9407); leave it out",
                ))
            }
            "z" | "Z" | "U" => {
                return Err(refuse(
                    "it relabels (z, Z) or changes the owner of (U) the mount's source on the \
                     host; leave it out",
                ))
            }
            "rw" | "readwrite" if kind == "bind" => {
                return Err(refuse(
                    "buildah 1.28 writes through to the agent's copy of the build context, where \
                     a later mount follows what the step left there (CVE-2024-11218); mount it \
                     read-only and copy what the step must change",
                ))
            }
            _ => {}
        }
        if !allowed.iter().any(|set| set.contains(&key)) {
            return Err(refuse(&format!(
                "'{key}' is not an option this farm allows on a type={kind} mount"
            )));
        }
        let needs_value = !FLAGS.contains(&key)
            && ![
                "rw",
                "readwrite",
                "bind-nonrecursive",
                "tmpcopyup",
                "notmpcopyup",
                "required",
            ]
            .contains(&key);
        if needs_value && v.is_none() {
            return Err(refuse("the option needs a value"));
        }
    }
    let get = |keys: &[&str]| {
        options
            .iter()
            .rev()
            .find(|(k, _)| keys.contains(k))
            .and_then(|(_, v)| *v)
    };
    match kind {
        "bind" => check_bind_source(get(&["source", "src"]).unwrap_or(""), context)
            .map_err(|why| format!("RUN --mount={value} is refused: {why}")),
        "cache" => {
            let key = match (get(&["id"]).filter(|id| !id.is_empty()), get(TARGET)) {
                (Some(id), _) => id,
                (None, Some(target)) if target.starts_with('/') => target,
                (None, Some(_)) => {
                    return Err(format!(
                        "RUN --mount={value} is refused: a cache with a relative target and no \
                         id lives where WORKDIR says, which cannot be checked; give it an id or \
                         an absolute target"
                    ))
                }
                (None, None) => return Ok(()), // buildah refuses it: no target
            };
            check_cache_key(key, line, caches)
                .map_err(|why| format!("RUN --mount={value} is refused: {why}"))
        }
        _ => Ok(()),
    }
}

/// A cache's directory on the host is `$TMPDIR/buildah-cache/<key>`, its key being its id or
/// target, cleaned. A step can leave symlinks in its cache, and buildah 1.28 follows them to the
/// host when another cache's key goes through that directory; so no cache may lie inside another,
/// or where buildah keeps its lock files, or be the whole cache directory, or leave it with `..`.
/// Across builds the cache directories persist per scope; the agent's storage checks the keys
/// [`cache_keys`] returns against earlier builds' (see `super::storage`).
fn check_cache_key(
    key: &str,
    line: usize,
    caches: &mut Vec<(usize, String)>,
) -> Result<(), String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in key.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(
                    "'..' in a cache key leads outside buildah 1.28's cache directory \
                            (CVE-2024-9675)"
                        .into(),
                )
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() || parts[0] == LOCKFILES {
        return Err(format!(
            "the cache key '{key}' is buildah's whole cache directory or its lock files"
        ));
    }
    let clean = parts.join("/");
    for (other_line, other) in caches.iter() {
        let inside = |a: &str, b: &str| {
            a.len() > b.len() && a.starts_with(b) && a[b.len()..].starts_with('/')
        };
        if inside(&clean, other) || inside(other, &clean) {
            return Err(format!(
                "the cache '{clean}' and the cache '{other}' of line {other_line} nest, and \
                 buildah 1.28 follows symbolic links a step leaves in the outer one to the host \
                 (CVE-2024-9675); give them ids that do not nest"
            ));
        }
    }
    caches.push((line, clean));
    Ok(())
}

/// A bind mount from the context: buildah 1.28 mounts `context/<source cleaned>` and the kernel
/// follows any symlink on the way; refuses a source that a symlink leads out of the context.
/// (The agent's unpacking already refuses such symlinks; this holds even if one slipped in.)
fn check_bind_source(source: &str, context: &Path) -> Result<(), String> {
    let Ok(root) = context.canonicalize() else {
        return Ok(()); // no context to resolve in (unit tests); buildah will fail
    };
    let mut path = PathBuf::from(&root);
    let mut depth = 0usize;
    for c in Path::new(source).components() {
        match c {
            Component::Normal(n) => {
                path.push(n);
                depth += 1;
            }
            Component::ParentDir if depth > 0 => {
                depth -= 1;
                path.pop();
            }
            _ => {}
        }
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Ok(()), // missing: buildah fails on its own
            Ok(m) if m.file_type().is_symlink() => match path.canonicalize() {
                Ok(real) if real.starts_with(&root) => {}
                _ => {
                    return Err(format!(
                        "its source '{source}' goes through a symbolic link that leads out of \
                         the build context, and buildah 1.28 would follow it on the host"
                    ))
                }
            },
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "dockerfile_guard_tests.rs"]
mod tests;
