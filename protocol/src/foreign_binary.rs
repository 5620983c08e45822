//! `--allow-foreign-binary GLOB`: paths in a job's images whose ELF files are not checked against
//! the platform (QEMU helpers, a cross toolchain's target libraries and the like). The CLI and the
//! coordinator refuse a bad glob with the same message; the agent matches with the same code.
//!
//! A glob names absolute paths in the image's file system: `*` and `?` match within one path
//! component, `**` (a whole component) matches any number of components, `[abc]`, `[a-z]` and
//! `[!x]` match one character of a set, and `\` takes the next character literally. A small
//! matcher of our own rather than a regex engine: the rules are few and have to be the same on
//! every side.

/// Most `--allow-foreign-binary` globs one job may carry.
pub const MAX_GLOBS: usize = 64;
/// Longest glob, in bytes.
pub const MAX_GLOB_BYTES: usize = 1024;

/// What a glob may look like, for error messages.
const ACCEPTED: &str = "an absolute path in the image, where * and ? match within one path \
     component, ** any number of components, [a-z] one character of a set, e.g. \
     '/usr/bin/qemu-*-static' or '/usr/aarch64-linux-gnu/**'";

/// One piece of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A literal character.
    Char(char),
    /// `?`: one character other than `/`.
    Any,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**/` (or a trailing `/**`): any number of whole components.
    Components,
    /// `[...]`: one character (not `/`) in, or with `negated` not in, the ranges.
    Class {
        /// Inclusive ranges; a single character is `(c, c)`.
        ranges: Vec<(char, char)>,
        /// `[!...]` or `[^...]`.
        negated: bool,
    },
}

/// A job's globs, checked and compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedPaths {
    globs: Vec<Vec<Token>>,
}

impl AllowedPaths {
    /// Checks and compiles `globs`; the error names the glob, what is wrong and what is accepted.
    pub fn parse(globs: &[String]) -> Result<AllowedPaths, String> {
        if globs.len() > MAX_GLOBS {
            return Err(format!(
                "at most {MAX_GLOBS} --allow-foreign-binary globs, {} given",
                globs.len()
            ));
        }
        let globs = globs
            .iter()
            .map(|g| compile(g).map_err(|why| format!("--allow-foreign-binary '{g}': {why}")))
            .collect::<Result<_, _>>()?;
        Ok(AllowedPaths { globs })
    }

    /// How many globs there are.
    pub fn len(&self) -> usize {
        self.globs.len()
    }

    /// Whether no glob was given.
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// Whether `path` (absolute, e.g. `/usr/bin/qemu-aarch64-static`) matches one of the globs.
    pub fn allows(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        self.globs.iter().any(|g| matches(g, &text))
    }
}

fn compile(glob: &str) -> Result<Vec<Token>, String> {
    if glob.len() > MAX_GLOB_BYTES {
        return Err(format!("longer than {MAX_GLOB_BYTES} bytes"));
    }
    if !glob.starts_with('/') {
        return Err(format!("not absolute; accepted: {ACCEPTED}"));
    }
    if glob.len() > 1 && glob.ends_with('/') {
        return Err(format!(
            "ends with '/', so it names no file; for everything below a directory use \
             '{}**'",
            glob
        ));
    }
    if glob.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let chars: Vec<char> = glob.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                // `**` stands for whole components only: `/a/**/b`, `/a/**`.
                let starts = i > 0 && chars[i - 1] == '/';
                let next = chars.get(i + 2);
                if !starts || !matches!(next, None | Some('/')) {
                    return Err(format!(
                        "'**' must be a whole path component (as in /a/**/b or /a/**); \
                         accepted: {ACCEPTED}"
                    ));
                }
                out.push(Token::Components);
                // `/a/**` matches everything below /a; `/a/**/b` swallows the slash after it.
                i += if next.is_some() { 3 } else { 2 };
            }
            '*' => {
                out.push(Token::Star);
                i += 1;
            }
            '?' => {
                out.push(Token::Any);
                i += 1;
            }
            '\\' => {
                let c = chars
                    .get(i + 1)
                    .ok_or_else(|| "ends with a lone '\\'".to_string())?;
                out.push(Token::Char(*c));
                i += 2;
            }
            '[' => {
                let (token, used) = class(&chars[i..])?;
                out.push(token);
                i += used;
            }
            c => {
                out.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Parses `[...]` at the start of `chars`; returns it and how many characters it took.
fn class(chars: &[char]) -> Result<(Token, usize), String> {
    let mut i = 1;
    let negated = matches!(chars.get(1), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars
            .get(i)
            .ok_or_else(|| format!("an unclosed '['; accepted: {ACCEPTED}"))?;
        if c == ']' && !first {
            return Ok((Token::Class { ranges, negated }, i + 1));
        }
        first = false;
        if c == '/' {
            return Err("a '[...]' set cannot hold '/'".into());
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
            let end = chars[i + 2];
            if end < c {
                return Err(format!("the range {c}-{end} in '[...]' is backwards"));
            }
            ranges.push((c, end));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// Backtracking match of `glob` against all of `text`. Only the latest `*` and the latest `**`
/// are ever resumed (a `*` cannot cross a `/`, so when it runs into one the `**` before it
/// takes one more component instead), which keeps the work within the glob's length times the
/// path's.
fn matches(glob: &[Token], text: &[char]) -> bool {
    let (mut g, mut t) = (0, 0);
    // Where to resume: the wildcard's token index and the text position it would swallow from.
    let mut star: Option<(usize, usize)> = None;
    let mut components: Option<(usize, usize)> = None;
    while t < text.len() || g < glob.len() {
        if let Some(token) = glob.get(g) {
            let c = text.get(t).copied();
            let step = match token {
                Token::Star => {
                    star = Some((g, t));
                    g += 1;
                    continue;
                }
                Token::Components => {
                    components = Some((g, t));
                    star = None;
                    g += 1;
                    continue;
                }
                Token::Char(want) => c == Some(*want),
                Token::Any => c.is_some_and(|c| c != '/'),
                Token::Class { ranges, negated } => c.is_some_and(|c| {
                    c != '/' && ranges.iter().any(|&(a, b)| (a..=b).contains(&c)) != *negated
                }),
            };
            if step {
                (g, t) = (g + 1, t + 1);
                continue;
            }
        }
        // No match here: the latest `*` swallows one more character of its component...
        if let Some((sg, st)) = star {
            if st < text.len() && text[st] != '/' {
                star = Some((sg, st + 1));
                (g, t) = (sg + 1, st + 1);
                continue;
            }
            star = None;
        }
        // ... or else the latest `**` one more whole component.
        let Some((cg, ct)) = components else {
            return false;
        };
        let next = if cg + 1 == glob.len() {
            // A trailing `/**` takes all that is left.
            text.len()
        } else {
            match text[ct..].iter().position(|&c| c == '/') {
                Some(p) => ct + p + 1,
                None => return false,
            }
        };
        if next == ct {
            return false;
        }
        components = Some((cg, next));
        (g, t) = (cg + 1, next);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(glob: &str) -> AllowedPaths {
        AllowedPaths::parse(&[glob.to_string()]).unwrap_or_else(|e| panic!("{glob}: {e}"))
    }

    #[test]
    fn star_and_question_mark_stay_within_a_component() {
        let a = allowed("/usr/bin/qemu-*-static");
        assert!(a.allows("/usr/bin/qemu-aarch64-static"));
        assert!(!a.allows("/usr/bin/qemu-aarch64"));
        assert!(!a.allows("/usr/bin/qemu-x/y-static"));
        let a = allowed("/usr/local/bin/hello");
        assert!(a.allows("/usr/local/bin/hello"));
        assert!(!a.allows("/usr/local/bin/hello2"));
        assert!(!a.allows("/usr/local/bin/hell"));
        let a = allowed("/bin/?s");
        assert!(a.allows("/bin/ls") && !a.allows("/bin/lss") && !a.allows("/bin//s"));
        let a = allowed("/opt/*");
        assert!(a.allows("/opt/x") && !a.allows("/opt/x/y"));
    }

    #[test]
    fn double_star_spans_components() {
        let a = allowed("/usr/aarch64-linux-gnu/**");
        assert!(a.allows("/usr/aarch64-linux-gnu/lib/libc.so.6"));
        assert!(a.allows("/usr/aarch64-linux-gnu/x"));
        assert!(!a.allows("/usr/aarch64-linux-gnu"));
        assert!(!a.allows("/usr/aarch64-linux-gnux/lib"));
        let a = allowed("/opt/**/lib*.so");
        assert!(a.allows("/opt/libx.so"));
        assert!(a.allows("/opt/a/b/c/libx.so"));
        assert!(!a.allows("/opt/a/b/c/x.so"));
        assert!(!a.allows("/optx/libx.so"));
        let a = allowed("/**");
        assert!(a.allows("/anything/at/all"));
    }

    #[test]
    fn sets_and_escapes() {
        let a = allowed("/lib/ld-[a-z]*.so.[!0]");
        assert!(a.allows("/lib/ld-linux.so.2"));
        assert!(!a.allows("/lib/ld-linux.so.0"));
        assert!(!a.allows("/lib/ld-Linux.so.2"));
        let a = allowed("/a/\\*");
        assert!(a.allows("/a/*") && !a.allows("/a/b"));
        let a = allowed("/a/[]x]");
        assert!(a.allows("/a/]") && a.allows("/a/x"));
    }

    #[test]
    fn bad_globs_say_what_is_accepted() {
        for (glob, says) in [
            ("usr/bin/x", "not absolute; accepted: an absolute path"),
            ("", "not absolute"),
            ("/usr/lib/", "use '/usr/lib/**'"),
            ("/a/**b", "'**' must be a whole path component"),
            ("/a/b**", "'**' must be a whole path component"),
            ("/a/[bc", "an unclosed '['"),
            ("/a/[z-a]", "backwards"),
            ("/a/[b/c]", "cannot hold '/'"),
            ("/a\\", "lone '\\'"),
            ("/a\nb", "control character"),
        ] {
            let e = AllowedPaths::parse(&[glob.to_string()]).unwrap_err();
            assert!(e.contains(says), "{glob:?}: {e}");
            assert!(e.starts_with("--allow-foreign-binary '"), "{e}");
        }
        let long = format!("/{}", "a".repeat(MAX_GLOB_BYTES));
        assert!(AllowedPaths::parse(&[long])
            .unwrap_err()
            .contains("longer than"));
        let many = vec!["/a".to_string(); MAX_GLOBS + 1];
        assert!(AllowedPaths::parse(&many)
            .unwrap_err()
            .contains("at most 64"));
        assert!(AllowedPaths::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn matching_a_long_path_stays_quick() {
        // A path of many components against several wildcards: backtracking is bounded.
        let a = allowed("/**/*a*a*a*a*b");
        let path = format!("/{}", "a/".repeat(1000) + &"a".repeat(3000));
        assert!(!a.allows(&path));
    }
}
