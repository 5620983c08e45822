//! The base images a Dockerfile names, read at job submission so that a lease can carry pull
//! credentials for their registries and no others.
//!
//! Images are named by `FROM`, `COPY --from=IMAGE` and `RUN --mount=...,from=IMAGE`. Build
//! arguments are expanded as Docker expands them in `FROM`: from the global `ARG`s (those before
//! the first `FROM`), whose defaults the job's build arguments override, and the target platform
//! arguments (`TARGETARCH` ...) of each of the job's platforms. Stage names and `scratch` are left
//! out; short names resolve as Docker resolves them (`golang:1.22` is
//! `docker.io/library/golang:1.22`). This is not a full Dockerfile parser: it reads what names an
//! image and skips the rest, heredoc bodies included.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use archfarm_protocol::{ImageRef, Platform};

/// Largest Dockerfile read for base images; a larger one gets no pull credentials.
pub const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;

/// Most distinct base images kept for one job.
pub const MAX_BASE_IMAGES: usize = 64;

/// Why the base images could not be read: the line and what was wrong, without quoting values
/// of build arguments (which may be secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BaseImageError {
    /// 1-based line of the instruction.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// The distinct base images of `dockerfile` for any of `platforms`, in the order first named.
pub fn base_images(
    dockerfile: &str,
    build_args: &BTreeMap<String, String>,
    platforms: &[Platform],
) -> Result<Vec<ImageRef>, BaseImageError> {
    let instructions = instructions(dockerfile);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for platform in platforms {
        for image in for_platform(&instructions, build_args, platform)? {
            if seen.insert(image.to_string()) {
                if out.len() == MAX_BASE_IMAGES {
                    return Err(BaseImageError {
                        line: 0,
                        message: format!("more than {MAX_BASE_IMAGES} base images"),
                    });
                }
                out.push(image);
            }
        }
    }
    Ok(out)
}

/// One instruction: its 1-based first line, keyword (upper case) and the rest of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instruction {
    line: usize,
    keyword: String,
    rest: String,
}

fn for_platform(
    instructions: &[Instruction],
    build_args: &BTreeMap<String, String>,
    platform: &Platform,
) -> Result<Vec<ImageRef>, BaseImageError> {
    let mut args: HashMap<String, String> = HashMap::new();
    let p = platform.to_string();
    let mut parts = p.splitn(3, '/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    args.insert("TARGETPLATFORM".into(), p.clone());
    args.insert("TARGETOS".into(), os.unwrap_or_default().into());
    args.insert("TARGETARCH".into(), arch.unwrap_or_default().into());
    args.insert("TARGETVARIANT".into(), variant.unwrap_or_default().into());
    let mut stages: BTreeSet<String> = BTreeSet::new();
    let mut images = Vec::new();
    let mut in_stage = false;
    for ins in instructions {
        let err = |message: String| BaseImageError {
            line: ins.line,
            message,
        };
        match ins.keyword.as_str() {
            "ARG" if !in_stage => {
                for word in words(&ins.rest) {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (n.to_string(), Some(unquote(d))),
                        None => (word.clone(), None),
                    };
                    let value = match (build_args.get(&name), default) {
                        (Some(v), _) => v.clone(),
                        (None, Some(d)) => expand(&d, &args).map_err(&err)?,
                        (None, None) => continue,
                    };
                    args.insert(name, value);
                }
            }
            "FROM" => {
                in_stage = true;
                let words: Vec<String> = words(&ins.rest)
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some(image) = words.first() else {
                    return Err(err("FROM names no image".into()));
                };
                images.extend(image_named(image, &args, &stages, ins.line)?);
                if let (Some(as_), Some(name)) = (words.get(1), words.get(2)) {
                    if as_.eq_ignore_ascii_case("as") {
                        stages.insert(name.to_ascii_lowercase());
                    }
                }
            }
            "COPY" => {
                for flag in flags(&ins.rest) {
                    if let Some(from) = flag.strip_prefix("--from=") {
                        // `--from=0` names a stage by its index.
                        if !from.chars().all(|c| c.is_ascii_digit()) {
                            images.extend(image_named(&unquote(from), &args, &stages, ins.line)?);
                        }
                    }
                }
            }
            "RUN" => {
                for flag in flags(&ins.rest) {
                    let Some(mount) = flag.strip_prefix("--mount=") else {
                        continue;
                    };
                    for field in mount.split(',') {
                        if let Some(from) = field.strip_prefix("from=") {
                            if !from.chars().all(|c| c.is_ascii_digit()) {
                                images.extend(image_named(
                                    &unquote(from),
                                    &args,
                                    &stages,
                                    ins.line,
                                )?);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(images)
}

/// The image `raw` names once expanded; None for a stage name or `scratch`.
fn image_named(
    raw: &str,
    args: &HashMap<String, String>,
    stages: &BTreeSet<String>,
    line: usize,
) -> Result<Option<ImageRef>, BaseImageError> {
    let err = |message: String| BaseImageError { line, message };
    let expanded = expand(raw, args).map_err(err)?;
    let lower = expanded.to_ascii_lowercase();
    if lower == "scratch" || stages.contains(&lower) {
        return Ok(None);
    }
    if expanded.is_empty() {
        return Err(err(format!("'{raw}' expands to nothing")));
    }
    ImageRef::parse(&expanded)
        .map(Some)
        .map_err(|e| err(format!("'{raw}' is not an image reference: {}", e.reason)))
}

/// The leading `--flag` words of an instruction.
fn flags(rest: &str) -> Vec<String> {
    words(rest)
        .into_iter()
        .take_while(|w| w.starts_with("--"))
        .collect()
}

/// Whitespace-separated words; quotes group (and are kept, see [`unquote`]).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A value without the quotes around it.
fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}`; an unset name is
/// empty, as in Docker. The error never quotes a value.
fn expand(s: &str, args: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut inner = String::new();
            loop {
                match chars.next() {
                    Some('}') => break,
                    Some(c) => inner.push(c),
                    None => return Err(format!("'${{{inner}' is not closed with '}}'")),
                }
            }
            let (name, op) = match inner.find(':') {
                Some(i) => (&inner[..i], Some(&inner[i..])),
                None => (inner.as_str(), None),
            };
            let value = args.get(name).filter(|v| !v.is_empty());
            match op {
                None => out.push_str(value.map_or("", String::as_str)),
                Some(op) if op.starts_with(":-") => match value {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&expand(&op[2..], args)?),
                },
                Some(op) if op.starts_with(":+") => {
                    if value.is_some() {
                        out.push_str(&expand(&op[2..], args)?);
                    }
                }
                Some(_) => {
                    return Err(format!(
                        "'${{{name}:...}}' uses a modifier other than :- and :+"
                    ))
                }
            }
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else if let Some(v) = args.get(&name) {
                out.push_str(v);
            }
        }
    }
    Ok(out)
}

/// The Dockerfile's instructions, with continuation lines joined, comments and blank lines
/// dropped, and heredoc bodies skipped.
fn instructions(text: &str) -> Vec<Instruction> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: comments of the form `# key=value` at the very top.
    while let Some(line) = lines.get(i) {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = directive.split_once('=') else {
            break;
        };
        if key.trim().eq_ignore_ascii_case("escape") {
            escape = value.trim().chars().next().unwrap_or('\\');
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let first = i;
        let trimmed = lines[i].trim();
        i += 1;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut joined = String::new();
        let mut line = trimmed.to_string();
        loop {
            match line.trim_end().strip_suffix(escape) {
                Some(head) => {
                    joined.push_str(head);
                    joined.push(' ');
                    // The next line that is neither blank nor a comment continues this one.
                    loop {
                        match lines.get(i) {
                            None => {
                                line = String::new();
                                break;
                            }
                            Some(next) => {
                                i += 1;
                                let t = next.trim();
                                if !(t.is_empty() || t.starts_with('#')) {
                                    line = t.to_string();
                                    break;
                                }
                            }
                        }
                    }
                    if line.is_empty() {
                        break;
                    }
                }
                None => {
                    joined.push_str(&line);
                    break;
                }
            }
        }
        let (keyword, rest) = match joined.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim().to_string()),
            None => (joined.to_ascii_uppercase(), String::new()),
        };
        for terminator in heredoc_terminators(&keyword, &rest) {
            while let Some(body) = lines.get(i) {
                i += 1;
                if body.trim() == terminator {
                    break;
                }
            }
        }
        out.push(Instruction {
            line: first + 1,
            keyword,
            rest,
        });
    }
    out
}

/// The words ending the heredocs (`<<EOF`, `<<-"EOF"`) an instruction opens, in order.
fn heredoc_terminators(keyword: &str, rest: &str) -> Vec<String> {
    if !matches!(keyword, "RUN" | "COPY" | "ADD") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut s = rest;
    while let Some(at) = s.find("<<") {
        s = &s[at + 2..];
        let word = s.strip_prefix('-').unwrap_or(s);
        let word = word.trim_start_matches(['"', '\'']);
        let end = word
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(word.len());
        if end > 0 {
            out.push(word[..end].to_string());
        }
    }
    out
}

#[cfg(test)]
#[path = "base_images_tests.rs"]
mod tests;
