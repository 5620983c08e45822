//! Hiding secret values (`--secret-build-arg` values, registry passwords) in log lines and
//! messages before they are stored or shown.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a secret value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Replaces every occurrence of a set of secret strings with [`REDACTED`].
///
/// Works line by line: a value that a build prints split over two lines cannot be matched, so a
/// multi-line value is matched line by line (each of its non-empty lines is a secret of its own).
/// Every non-empty value is redacted, however short; a one-character secret will blank out that
/// character everywhere, which is the price of never showing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Longest first, so a value containing another is hidden whole.
    needles: Vec<String>,
}

impl Redactor {
    /// A redactor for `values`; empty ones are ignored.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles: Vec<String> = values
            .into_iter()
            .flat_map(|v| v.split('\n'))
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    /// The values of the build arguments named in `secret_names`.
    pub fn for_build_args(args: &BTreeMap<String, String>, secret_names: &[String]) -> Self {
        Self::new(
            secret_names
                .iter()
                .filter_map(|n| args.get(n).map(String::as_str)),
        )
    }

    /// Adds more values (e.g. a registry password) to hide.
    pub fn with<'a>(self, more: impl IntoIterator<Item = &'a str>) -> Self {
        let more: Vec<String> = more.into_iter().map(str::to_string).collect();
        Redactor::new(
            self.needles
                .iter()
                .map(String::as_str)
                .chain(more.iter().map(String::as_str)),
        )
    }

    /// True when there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret replaced; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.needles.is_empty() || !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        // One pass, longest match at each position, so a replacement is never matched again.
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some(n) = self.needles.iter().find(|n| rest.starts_with(n.as_str())) {
                out.push_str(REDACTED);
                i += n.len();
            } else {
                let c = rest.chars().next().expect("i is on a char boundary");
                out.push(c);
                i += c.len_utf8();
            }
        }
        Cow::Owned(out)
    }

    /// [`Redactor::redact`] over each string of a list, in place.
    pub fn redact_all(&self, lines: &mut [String]) {
        if self.needles.is_empty() {
            return;
        }
        for line in lines {
            if let Cow::Owned(s) = self.redact(line) {
                *line = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_every_occurrence_longest_first() {
        let r = Redactor::new(["s3cret", "s3cret-and-more", "", "x"]);
        assert_eq!(
            r.redact("token=s3cret-and-more, again s3cret; x marks"),
            "token=[redacted], again [redacted]; [redacted] marks"
        );
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        // A replacement is not matched again ("d" is inside "[redacted]").
        assert_eq!(Redactor::new(["d"]).redact("add"), "a[redacted][redacted]");
        assert_eq!(Redactor::new(["é"]).redact("café ok"), "caf[redacted] ok");
    }

    #[test]
    fn multi_line_values_are_hidden_line_by_line() {
        let r = Redactor::new(["first\r\nsecond\n"]);
        assert_eq!(r.redact("got first"), "got [redacted]");
        assert_eq!(r.redact("then second"), "then [redacted]");
    }

    #[test]
    fn from_build_args() {
        let args: BTreeMap<String, String> = [
            ("TOKEN".to_string(), "tok-123".to_string()),
            ("PLAIN".to_string(), "visible".to_string()),
        ]
        .into();
        let r = Redactor::for_build_args(&args, &["TOKEN".into(), "MISSING".into()]);
        let mut lines = vec!["tok-123 visible".to_string()];
        r.redact_all(&mut lines);
        assert_eq!(lines, ["[redacted] visible"]);
        assert!(Redactor::for_build_args(&args, &[]).is_empty());
        assert_eq!(
            r.with(["visible"]).redact("tok-123 visible"),
            "[redacted] [redacted]"
        );
    }
}
