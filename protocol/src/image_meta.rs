//! Labels and annotations a job puts on its images, as `docker buildx build --label` and
//! `--annotation` take them: a label goes into each platform's image config; an annotation into
//! each platform's manifest (`manifest:`, also without a type) or the index (`index:`), the one
//! GHCR reads a multi-arch image's description from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most labels plus annotations one job may carry.
pub const MAX_ENTRIES: usize = 64;
/// Longest key or value.
pub const MAX_CHARS: usize = 4096;

/// A job's labels and annotations, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// `--label`: into each platform's image config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `--annotation manifest:` (and untyped): into each platform's manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manifest_annotations: BTreeMap<String, String>,
    /// `--annotation index:`: into the image index the coordinator pushes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub index_annotations: BTreeMap<String, String>,
}

impl ImageMeta {
    /// Whether it holds nothing (so older peers never see the field).
    pub fn is_empty(&self) -> bool {
        *self == ImageMeta::default()
    }

    /// Parses `--label KEY=VALUE` and `--annotation [TYPE:]KEY=VALUE` values; a later value for
    /// the same key wins, as with buildx. Errors name the value and what is accepted.
    pub fn parse(labels: &[String], annotations: &[String]) -> Result<ImageMeta, String> {
        if labels.len() + annotations.len() > MAX_ENTRIES {
            return Err(format!(
                "at most {MAX_ENTRIES} labels and annotations together"
            ));
        }
        let mut meta = ImageMeta::default();
        for raw in labels {
            let (k, v) = key_value(raw, "--label", "KEY=VALUE")?;
            meta.labels.insert(k, v);
        }
        for raw in annotations {
            let (target, rest) = match raw.split_once(':') {
                // A colon inside the key (`org.example:x=1`) is not a type: only these are.
                Some((t, rest)) if is_type(t) => (t, rest),
                _ => ("manifest", raw.as_str()),
            };
            let (k, v) = key_value(rest, "--annotation", "[index:|manifest:]KEY=VALUE")?;
            match target {
                "index" => meta.index_annotations.insert(k, v),
                "manifest" => meta.manifest_annotations.insert(k, v),
                other => {
                    return Err(format!(
                        "--annotation '{raw}': the type '{other}' is not supported; accepted: \
                         index:KEY=VALUE, manifest:KEY=VALUE or KEY=VALUE (the manifest's)"
                    ))
                }
            };
        }
        Ok(meta)
    }
}

/// buildx's annotation types, of which archfarm serves `index` and `manifest`.
fn is_type(t: &str) -> bool {
    let base = t.split('[').next().unwrap_or(t);
    base.split(',').all(|part| {
        matches!(
            part,
            "index" | "manifest" | "index-descriptor" | "manifest-descriptor"
        )
    })
}

fn key_value(raw: &str, flag: &str, form: &str) -> Result<(String, String), String> {
    let Some((k, v)) = raw.split_once('=') else {
        return Err(format!("{flag} '{raw}' is not {form}"));
    };
    let k = k.trim();
    if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{flag} '{raw}': the key must be non-empty, without spaces or control characters"
        ));
    }
    if k.chars().count() > MAX_CHARS || v.chars().count() > MAX_CHARS {
        return Err(format!(
            "{flag} '{k}': key and value must be at most {MAX_CHARS} characters"
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("{flag} '{k}': the value has a control character"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn labels_and_annotations_go_where_buildx_puts_them() {
        let m = ImageMeta::parse(
            &s(&["team=a", "team=b", "empty="]),
            &s(&[
                "index:org.opencontainers.image.description=An app",
                "manifest:org.opencontainers.image.source=https://x/y",
                "org.example.key:with-colon=1",
                "plain=2",
            ]),
        )
        .unwrap();
        assert_eq!(m.labels["team"], "b", "the later value wins");
        assert_eq!(m.labels["empty"], "");
        assert_eq!(
            m.index_annotations["org.opencontainers.image.description"],
            "An app"
        );
        assert_eq!(
            m.manifest_annotations["org.opencontainers.image.source"],
            "https://x/y"
        );
        assert_eq!(m.manifest_annotations["org.example.key:with-colon"], "1");
        assert_eq!(m.manifest_annotations["plain"], "2");
        assert!(ImageMeta::default().is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_what_is_accepted() {
        let e = ImageMeta::parse(&s(&["novalue"]), &[]).unwrap_err();
        assert_eq!(e, "--label 'novalue' is not KEY=VALUE");
        let e = ImageMeta::parse(&[], &s(&["manifest-descriptor:k=v"])).unwrap_err();
        assert!(
            e.contains("the type 'manifest-descriptor' is not supported"),
            "{e}"
        );
        assert!(e.contains("index:KEY=VALUE"), "{e}");
        let e = ImageMeta::parse(&[], &s(&["index[linux/amd64]:k=v"])).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = ImageMeta::parse(&s(&[" =v"]), &[]).unwrap_err();
        assert!(e.contains("the key must be non-empty"), "{e}");
        let e = ImageMeta::parse(&s(&["k=a\nb"]), &[]).unwrap_err();
        assert!(e.contains("control character"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert!(ImageMeta::parse(&many, &[]).is_err());
    }
}
