//! `.dockerignore` with Docker's semantics (moby/patternmatcher), so a context packs the same here as
//! with `docker build`.
//!
//! * Lines starting with `#` are comments; surrounding whitespace is trimmed; blank lines are skipped.
//! * Patterns are cleaned like Go's `filepath.Clean` and a leading `/` is dropped: they are always
//!   relative to the context root.
//! * `*` and `?` never cross `/`; `**` matches any number of directories, including none; `[...]`
//!   classes and `\` escapes work as in Go.
//! * `!` makes an exception; patterns are applied in order and the last match wins.
//! * A pattern that matches a directory also matches everything under it.
//!
//! A small matcher of our own rather than globset: Docker's `**` is legal anywhere and `{a,b}` is
//! not special, and those differences would silently change what a context contains.

/// A `.dockerignore` line that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: invalid pattern '{pattern}': {reason}")]
pub struct PatternError {
    /// 1-based line number.
    pub line: usize,
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This exact character.
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` (or `**/`) inside a pattern: nothing, or anything ending in `/`.
    Dirs,
    /// `**` at the end: anything at all.
    Rest,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// One compiled line.
#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern text, without `!`.
    text: String,
    tokens: Vec<Token>,
    /// A `!` line.
    exception: bool,
}

/// The rules of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
}

impl IgnoreRules {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let mut line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let exception = line.starts_with('!');
            if exception {
                line = line[1..].trim();
            }
            if line.is_empty() {
                continue;
            }
            let mut cleaned = clean(line);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let tokens = compile(&cleaned).map_err(|reason| PatternError {
                line: i + 1,
                pattern: raw.trim().to_string(),
                reason,
            })?;
            patterns.push(Pattern {
                text: cleaned,
                tokens,
                exception,
            });
        }
        Ok(IgnoreRules { patterns })
    }

    /// True when the file or directory at `path` (relative, `/`-separated) is left out.
    pub fn is_excluded(&self, path: &str) -> bool {
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut excluded = false;
        for p in &self.patterns {
            // Like moby: an exclusion only matters while not excluded, an exception only after.
            if p.exception != excluded {
                continue;
            }
            let hit =
                matches(&p.tokens, path) || parents.iter().any(|parent| matches(&p.tokens, parent));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether an exception could bring back something under the excluded directory `dir`, so the
    /// walk has to look inside it. Errs on the side of looking.
    pub fn may_include_under(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let lit = literal_prefix(&p.tokens);
            dir_slash.starts_with(&lit) || lit.starts_with(&dir_slash)
        })
    }

    /// True when there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The cleaned patterns, `!` included, for diagnostics.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| format!("{}{}", if p.exception { "!" } else { "" }, p.text))
            .collect()
    }
}

/// The characters a pattern must start with before its first wildcard.
fn literal_prefix(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map_while(|t| match t {
            Token::Lit(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Compiles a cleaned pattern the way moby's patternmatcher turns it into a regular expression.
fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&n) => {
                    tokens.push(Token::Lit(n));
                    i += 1;
                }
                None => tokens.push(Token::Lit('\\')),
            },
            '[' => {
                let (class, next) = compile_class(&chars, i)?;
                tokens.push(class);
                i = next;
            }
            c => tokens.push(Token::Lit(c)),
        }
    }
    Ok(tokens)
}

/// Parses a class starting just after `[`; returns it and the index after `]`.
fn compile_class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    let negated = matches!(chars.get(i), Some('^' | '!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = match chars.get(i) {
            None => return Err("'[' is never closed".into()),
            Some(']') if !first => return Ok((Token::Class { negated, ranges }, i + 1)),
            Some('\\') => {
                i += 1;
                *chars.get(i).ok_or("'[' is never closed")?
            }
            Some(&c) => c,
        };
        first = false;
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|n| *n != ']') {
            let hi = chars[i + 1];
            if hi < c {
                return Err(format!("range '{c}-{hi}' is backwards"));
            }
            ranges.push((c, hi));
            i += 2;
        } else {
            ranges.push((c, c));
        }
    }
}

/// Whether the whole of `text` matches; memoised so `**` and `*` runs stay polynomial.
fn matches(tokens: &[Token], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let width = text.len() + 1;
    let mut memo: Vec<Option<bool>> = vec![None; (tokens.len() + 1) * width];
    match_at(tokens, &text, 0, 0, &mut memo)
}

fn match_at(
    tokens: &[Token],
    text: &[char],
    ti: usize,
    xi: usize,
    memo: &mut [Option<bool>],
) -> bool {
    let key = ti * (text.len() + 1) + xi;
    if let Some(done) = memo[key] {
        return done;
    }
    let result = match tokens.get(ti) {
        None => xi == text.len(),
        Some(Token::Rest) => true,
        Some(Token::Lit(c)) => {
            text.get(xi) == Some(c) && match_at(tokens, text, ti + 1, xi + 1, memo)
        }
        Some(Token::One) => {
            text.get(xi).is_some_and(|c| *c != '/') && match_at(tokens, text, ti + 1, xi + 1, memo)
        }
        Some(Token::Class { negated, ranges }) => {
            text.get(xi)
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated)
                && match_at(tokens, text, ti + 1, xi + 1, memo)
        }
        Some(Token::Star) => {
            match_at(tokens, text, ti + 1, xi, memo)
                || (text.get(xi).is_some_and(|c| *c != '/')
                    && match_at(tokens, text, ti, xi + 1, memo))
        }
        Some(Token::Dirs) => {
            match_at(tokens, text, ti + 1, xi, memo)
                || (xi..text.len())
                    .filter(|&k| text[k] == '/')
                    .any(|k| match_at(tokens, text, ti + 1, k + 1, memo))
        }
    };
    memo[key] = Some(result);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(rules: &str, path: &str) -> bool {
        IgnoreRules::parse(rules).unwrap().is_excluded(path)
    }

    #[test]
    fn table_of_patterns_and_paths() {
        // (rules, path, excluded?)
        let table: &[(&str, &str, bool)] = &[
            ("", "a", false),
            ("# comment\n\n  \n", "# comment", false),
            ("a.txt", "a.txt", true),
            ("a.txt", "dir/a.txt", false),
            ("/a.txt", "a.txt", true),
            ("./a.txt", "a.txt", true),
            ("dir/../a.txt", "a.txt", true),
            ("*.txt", "a.txt", true),
            ("*.txt", "dir/a.txt", false),
            ("*/*.txt", "dir/a.txt", true),
            ("*/*.txt", "dir/sub/a.txt", false),
            ("**/*.txt", "a.txt", true),
            ("**/*.txt", "dir/sub/a.txt", true),
            ("dir/**", "dir/sub/a.txt", true),
            ("dir/**/a.txt", "dir/a.txt", true),
            ("dir/**/a.txt", "dir/x/y/a.txt", true),
            ("dir/**/a.txt", "other/a.txt", false),
            ("a**b", "a/x/b", true),
            ("**", "anything/at/all", true),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("a?b", "a/b", false),
            ("[abc].txt", "b.txt", true),
            ("[^abc].txt", "b.txt", false),
            ("[a-c]x", "cx", true),
            ("[a-c]x", "dx", false),
            ("\\*.txt", "*.txt", true),
            ("\\*.txt", "a.txt", false),
            ("{a,b}", "{a,b}", true),
            ("{a,b}", "a", false),
            // A pattern that matches a directory excludes everything under it.
            ("node_modules", "node_modules/x/y.js", true),
            ("node_modules/", "node_modules/x", true),
            ("/build", "build/out/bin", true),
            ("build", "src/build", false),
            // Exceptions: last match wins.
            ("*.md\n!README.md", "README.md", false),
            ("*.md\n!README.md", "CHANGES.md", true),
            ("*.md\n!README.md\nREADME.md", "README.md", true),
            ("!README.md\n*.md", "README.md", true),
            ("docs\n!docs/keep.txt", "docs/keep.txt", false),
            ("docs\n!docs/keep.txt", "docs/other.txt", true),
            ("docs\n!docs/keep.txt", "docs", true),
            ("**/*.log\n!important/*.log", "important/a.log", false),
            ("**/*.log\n!important/*.log", "x/important/a.log", true),
            ("  spaced.txt  ", "spaced.txt", true),
            ("!  spaced.txt", "spaced.txt", false),
            ("\u{feff}bom.txt", "bom.txt", true),
            ("../outside", "outside", false),
        ];
        for (rules, path, want) in table {
            assert_eq!(
                excluded(rules, path),
                *want,
                "rules {rules:?} path {path:?}"
            );
        }
    }

    #[test]
    fn cleaning_like_go() {
        for (input, want) in [
            ("a//b/./c/", "a/b/c"),
            ("/a/../b", "/b"),
            ("../a", "../a"),
            ("a/..", "."),
            ("/", "/"),
            ("/../x", "/x"),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
        let r = IgnoreRules::parse("/x/\n!/y/./z\n").unwrap();
        assert_eq!(r.patterns(), ["x", "!y/z"]);
    }

    #[test]
    fn descent_into_excluded_dirs() {
        let r = IgnoreRules::parse("vendor\ndocs\n!docs/keep.txt\n!**/*.go").unwrap();
        assert!(r.may_include_under("docs"));
        assert!(
            r.may_include_under("vendor"),
            "**/*.go may match under vendor"
        );
        let r = IgnoreRules::parse("vendor\ndocs\n!docs/keep.txt").unwrap();
        assert!(!r.may_include_under("vendor"));
        assert!(!r.may_include_under("doc"));
        assert!(r.may_include_under("docs"));
    }

    #[test]
    fn bad_patterns_name_the_line() {
        let e = IgnoreRules::parse("ok\n# c\nbad[").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("'[' is never closed"), "{e}");
        assert!(IgnoreRules::parse("[z-a]").is_err());
    }
}
