//! `archfarm build --secret`: buildx's syntax, read into values before anything is uploaded.
//!
//! Accepted, as `docker buildx build --secret` takes them (fields in any order, keys in any case):
//! `id=ID,src=FILE` (or `source=FILE`), `id=ID,env=VAR`, `type=file|env` with either, `env=VAR`
//! alone (the id is then VAR), and `id=ID` alone (the variable ID when it is set, else the file
//! ID). A value is read once, here; only the value travels, never the path or variable name.

use std::path::{Path, PathBuf};

use archfarm_protocol::build_secret::{check_all, check_id};
use archfarm_protocol::limits::MAX_SECRET_BYTES;
use archfarm_protocol::{BuildSecret, Secret};

use crate::validate::UsageError;

/// What every refusal of a spec ends with.
const ACCEPTED: &str = "accepted: id=ID,src=FILE | id=ID,env=VAR | env=VAR | id=ID \
                        (optionally with type=file or type=env)";

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file's contents.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
    /// `id=ID` alone: the variable ID when set, else the file ID (buildx's default).
    Either,
}

/// One parsed `--secret` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The id `RUN --mount=type=secret,id=ID` names.
    pub id: String,
    /// Where its value comes from.
    pub source: Source,
}

/// Parses one `--secret` value; the message names what is accepted.
pub fn parse_spec(raw: &str) -> Result<Spec, UsageError> {
    let bad = |why: String| UsageError(format!("invalid --secret '{raw}': {why}; {ACCEPTED}"));
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for field in raw.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(bad(format!("'{field}' is not a key=value pair")));
        };
        let slot = match key.trim().to_ascii_lowercase().as_str() {
            "id" => &mut id,
            "src" | "source" => &mut src,
            "env" => &mut env,
            "type" => &mut kind,
            other => return Err(bad(format!("unknown key '{other}'"))),
        };
        if slot.replace(value.to_string()).is_some() {
            return Err(bad(format!("'{}' is given twice", key.trim())));
        }
    }
    let source = match (kind.as_deref(), src, env) {
        (_, Some(_), Some(_)) => return Err(bad("give src= or env=, not both".into())),
        (Some("file") | None, Some(f), None) => Source::File(PathBuf::from(f)),
        (Some("env") | None, None, Some(v)) => Source::Env(v),
        // buildx: with type=env, src names the variable.
        (Some("env"), Some(v), None) => Source::Env(v),
        (Some("file"), None, Some(_)) => {
            return Err(bad("type=file takes src=FILE, not env=".into()))
        }
        (Some("file"), None, None) => Source::File(PathBuf::from(id.clone().unwrap_or_default())),
        (Some("env"), None, None) => Source::Env(id.clone().unwrap_or_default()),
        (None, None, None) => Source::Either,
        (Some(other), _, _) => return Err(bad(format!("unknown type '{other}' (file or env)"))),
    };
    let id = match (id, &source) {
        (Some(id), _) => id,
        (None, Source::Env(v)) => v.clone(),
        (None, _) => return Err(bad("no id= given".into())),
    };
    check_id(&id).map_err(bad)?;
    if matches!(&source, Source::File(p) if p.as_os_str().is_empty())
        || matches!(&source, Source::Env(v) if v.is_empty())
    {
        return Err(bad("the file or variable name is empty".into()));
    }
    Ok(Spec { id, source })
}

/// Parses every `--secret` and reads each value (`env` looks variables up), checking ids,
/// sizes and count as the coordinator will. A missing file or unset variable is refused here,
/// before anything is uploaded.
pub fn load(
    raw: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<BuildSecret>, UsageError> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let spec = parse_spec(r)?;
        let value = match &spec.source {
            Source::File(path) => read_file(&spec.id, path)?,
            Source::Env(var) => env(var).ok_or_else(|| {
                UsageError(format!(
                    "--secret id={}: the environment variable {var} is not set",
                    spec.id
                ))
            })?,
            Source::Either => match env(&spec.id) {
                Some(v) => v,
                None => read_file(&spec.id, Path::new(&spec.id)).map_err(|_| {
                    UsageError(format!(
                        "--secret id={0}: neither an environment variable {0} nor a file {0} \
                         exists; say where the value is with src=FILE or env=VAR",
                        spec.id
                    ))
                })?,
            },
        };
        out.push(BuildSecret {
            id: spec.id,
            value: Secret::new(value),
        });
    }
    check_all(&out).map_err(|m| UsageError(format!("--secret: {m}")))?;
    Ok(out)
}

/// A secret file's contents: a regular file within the size cap, UTF-8 text.
fn read_file(id: &str, path: &Path) -> Result<String, UsageError> {
    let refuse = |why: String| {
        UsageError(format!(
            "--secret id={id}: cannot use {}: {why}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(refuse(format!(
            "{} bytes; at most {MAX_SECRET_BYTES} (500 KiB) per secret",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
    String::from_utf8(bytes)
        .map_err(|_| refuse("not UTF-8 text; binary secrets are not supported yet".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, source: Source) -> Spec {
        Spec {
            id: id.into(),
            source,
        }
    }

    #[test]
    fn buildx_forms_parse() {
        let file = |p: &str| Source::File(p.into());
        let env = |v: &str| Source::Env(v.into());
        for (raw, want) in [
            ("id=tok,src=/run/t", spec("tok", file("/run/t"))),
            ("src=./t,id=tok", spec("tok", file("./t"))),
            ("ID=tok,Source=t", spec("tok", file("t"))),
            ("type=file,id=tok,src=t", spec("tok", file("t"))),
            ("id=tok,env=TOKEN", spec("tok", env("TOKEN"))),
            ("type=env,id=tok,env=TOKEN", spec("tok", env("TOKEN"))),
            ("type=env,id=tok,src=TOKEN", spec("tok", env("TOKEN"))),
            ("env=API_TOKEN", spec("API_TOKEN", env("API_TOKEN"))),
            ("type=env,id=TOKEN", spec("TOKEN", env("TOKEN"))),
            ("type=file,id=t", spec("t", file("t"))),
            ("id=tok", spec("tok", Source::Either)),
        ] {
            assert_eq!(parse_spec(raw), Ok(want), "{raw}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        for (raw, needle) in [
            ("tok", "'tok' is not a key=value pair"),
            ("id=tok,src=a,env=B", "not both"),
            ("id=tok,type=ssh,src=a", "unknown type 'ssh'"),
            ("id=tok,mode=0400,src=a", "unknown key 'mode'"),
            ("src=a", "no id= given"),
            ("id=a/b,src=a", "A-Z a-z 0-9"),
            ("id=tok,id=other,src=a", "'id' is given twice"),
            ("type=file,id=tok,env=X", "type=file takes src=FILE"),
            ("id=tok,src=", "empty"),
        ] {
            let e = parse_spec(raw).unwrap_err().0;
            assert!(e.contains(needle) && e.contains(ACCEPTED), "{raw}: {e}");
        }
    }

    #[test]
    fn values_come_from_files_and_the_environment_before_any_upload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok.txt");
        std::fs::write(&file, "from-file\n").unwrap();
        let env = |k: &str| (k == "TOKEN" || k == "both").then(|| format!("env-{k}"));
        let raw = vec![
            format!("id=f,src={}", file.display()),
            "id=e,env=TOKEN".to_string(),
            "id=both".to_string(),
        ];
        let got = load(&raw, env).unwrap();
        let values: Vec<(&str, &str)> = got
            .iter()
            .map(|s| (s.id.as_str(), s.value.expose()))
            .collect();
        assert_eq!(
            values,
            [
                ("f", "from-file\n"),
                ("e", "env-TOKEN"),
                ("both", "env-both")
            ]
        );

        let missing = dir.path().join("missing");
        let e = load(&[format!("id=m,src={}", missing.display())], env).unwrap_err();
        assert!(
            e.0.contains("--secret id=m: cannot use") && e.0.contains("missing"),
            "{e}"
        );
        let e = load(&["id=m,env=UNSET".to_string()], env).unwrap_err();
        assert!(e.0.contains("variable UNSET is not set"), "{e}");
        let e = load(&["id=nowhere".to_string()], env).unwrap_err();
        assert!(
            e.0.contains("neither an environment variable nowhere"),
            "{e}"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let e = load(&[format!("id=big,src={}", big.display())], env).unwrap_err();
        assert!(e.0.contains("512001 bytes; at most 512000"), "{e}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe]).unwrap();
        let e = load(&[format!("id=bin,src={}", bin.display())], env).unwrap_err();
        assert!(e.0.contains("not UTF-8"), "{e}");
        let e = load(
            &["id=e,env=TOKEN".to_string(), "id=e,env=both".to_string()],
            env,
        )
        .unwrap_err();
        assert!(
            e.0.contains("'e' is given twice") && !e.0.contains("env-"),
            "{e}"
        );
        let e = load(&[format!("id=d,src={}", dir.path().display())], env).unwrap_err();
        assert!(e.0.contains("not a regular file"), "{e}");
    }
}
