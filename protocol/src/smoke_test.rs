//! `archfarm build --smoke-test 'CMD ARGS…'`: a command run in each platform's built image, on
//! the agent that built it and in the sandbox of its `RUN` steps, before the image is pushed. A
//! non-zero exit fails that platform.
//!
//! The CLI splits the flag's text into words ([`split`]) and the job carries the words, so the
//! coordinator and the agents never parse a command line. The words follow the image's
//! `ENTRYPOINT`, as `docker run IMAGE CMD ARGS` does; an image without one runs them as they are.
//!
//! Splitting follows a POSIX shell's quoting and nothing else: words are separated by blanks,
//! `'…'` keeps everything literally, `"…"` keeps everything but `\` before `\`, `"`, `$`, `` ` ``
//! or a line break, and `\` outside quotes takes the next character literally (a `\` before a line
//! break joins the lines). Nothing expands: no variables, globs or `~`. The shell's operators
//! (`|`, `&`, `;`, `<`, `>`, `(`, `)`, `` ` ``, a line break) are refused outside quotes rather
//! than passed on as words, since no shell runs the command: a pipeline or a list needs one, as
//! in `sh -c 'myapp --version | grep 1.2'`.

use serde::{Deserialize, Serialize};

/// Most words a smoke test may have.
pub const MAX_WORDS: usize = 256;
/// Most bytes all its words may take together.
pub const MAX_BYTES: usize = 8 * 1024;
/// How long a smoke test may run when the job does not say (`--smoke-test-timeout`): five
/// minutes, ample for a `--version` or a short self-test under QEMU.
pub const DEFAULT_TIMEOUT_SECS: u64 = 5 * 60;
/// The longest time limit a job may give its smoke test.
pub const MAX_TIMEOUT_SECS: u64 = 60 * 60;

/// What the splitter accepts, for its error messages.
const ACCEPTED: &str = "words split at blanks, '…' and \"…\" quoting and \\ escapes as in a \
     shell; nothing expands, and pipes, lists and redirections need a shell: sh -c '…'";

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// A job's smoke test, as the job request, the stored job and the lease carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// The command's words, after the image's `ENTRYPOINT` (as `docker run IMAGE CMD ARGS`).
    pub command: Vec<String>,
    /// Seconds it may run before it is stopped and fails its platform (default
    /// [`DEFAULT_TIMEOUT_SECS`], at most [`MAX_TIMEOUT_SECS`]).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl SmokeTest {
    /// The smoke test `--smoke-test LINE` asks for, split ([`split`]) and checked.
    pub fn parse(line: &str, timeout_secs: u64) -> Result<SmokeTest, String> {
        let test = SmokeTest {
            command: split(line)?,
            timeout_secs,
        };
        test.check()?;
        Ok(test)
    }

    /// Checks the words and the time limit: at least one word, the first not empty, at most
    /// [`MAX_WORDS`] words of [`MAX_BYTES`] in all, no NUL byte (it cannot be in an argument), a
    /// limit from one second to [`MAX_TIMEOUT_SECS`].
    pub fn check(&self) -> Result<(), String> {
        match self.command.first() {
            None => return Err(empty()),
            Some(first) if first.is_empty() => {
                return Err("--smoke-test: its first word, the program to run, is empty".to_string())
            }
            Some(_) => {}
        }
        if self.command.len() > MAX_WORDS {
            return Err(format!(
                "--smoke-test has {} words; at most {MAX_WORDS} are accepted",
                self.command.len()
            ));
        }
        let bytes: usize = self.command.iter().map(String::len).sum();
        if bytes > MAX_BYTES {
            return Err(format!(
                "--smoke-test is {bytes} bytes long; at most {MAX_BYTES} are accepted (a longer \
                 check belongs in a script in the image)"
            ));
        }
        if self.command.iter().any(|w| w.contains('\0')) {
            return Err("--smoke-test holds a NUL byte, which no argument can carry".to_string());
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(format!(
                "--smoke-test-timeout must be from 1s to {}, not {}s",
                crate::duration::format_duration(std::time::Duration::from_secs(MAX_TIMEOUT_SECS)),
                self.timeout_secs
            ));
        }
        Ok(())
    }

    /// The command as a shell would take it back (see [`join`]), for messages and logs.
    pub fn display(&self) -> String {
        join(&self.command)
    }
}

fn empty() -> String {
    "--smoke-test is empty: give the command to run in each platform's image, e.g. \
     --smoke-test 'myapp --version'"
        .to_string()
}

/// Splits `line` into words with a shell's quoting rules (see the module's documentation). An
/// unclosed quote, a `\` at the very end, a NUL byte or an operator outside quotes is refused,
/// naming what is wrong and what is accepted.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let refuse = |why: String| {
        Err(format!(
            "--smoke-test {}: {why}; accepted: {ACCEPTED}",
            shown(line)
        ))
    };
    let mut words = Vec::new();
    // The word being read; `None` between words (so `''` makes an empty word, blanks none).
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\0' => return refuse("it holds a NUL byte, which no argument can carry".into()),
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return refuse("a ' quote is not closed".into()),
                        Some('\'') => break,
                        Some('\0') => {
                            return refuse(
                                "it holds a NUL byte, which no argument can carry".into(),
                            )
                        }
                        Some(c) => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return refuse("a \" quote is not closed".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return refuse("a \" quote is not closed".into()),
                            Some('\n') => {}
                            Some(c @ ('\\' | '"' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        Some('\0') => {
                            return refuse(
                                "it holds a NUL byte, which no argument can carry".into(),
                            )
                        }
                        Some(c) => w.push(c),
                    }
                }
            }
            '\\' => match chars.next() {
                None => return refuse("it ends with a \\ that escapes nothing".into()),
                // A line continuation: the two lines are one.
                Some('\n') => {}
                Some('\0') => {
                    return refuse("it holds a NUL byte, which no argument can carry".into())
                }
                Some(c) => word.get_or_insert_with(String::new).push(c),
            },
            '\n' | '\r' => {
                return refuse(
                    "a line break outside quotes would start a second command; join the lines, \
                     or run a shell: sh -c '…'"
                        .into(),
                )
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '`' => {
                return refuse(format!(
                    "'{c}' outside quotes is a shell operator, and no shell runs the command: \
                     run one (sh -c '…'), or quote the '{c}' to pass it as it is"
                ))
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    if words.is_empty() {
        return Err(empty());
    }
    Ok(words)
}

/// `line` for an error message: quoted, cut to its first 80 characters.
fn shown(line: &str) -> String {
    let mut s: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        s.push('…');
    }
    format!("'{}'", s.replace(['\n', '\r'], " "))
}

/// One word as a shell would read it back: as it is when it has nothing a shell treats
/// specially, else in `'…'` (a `'` inside written `'\''`).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The words as one line a shell (and [`split`]) reads back as the same words.
pub fn join(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn words_split_as_a_shell_splits_them() {
        assert_eq!(words("myapp --version"), ["myapp", "--version"]);
        assert_eq!(words("  a \t b  "), ["a", "b"]);
        assert_eq!(
            words(r#"sh -c 'test "$(uname -m)" = x86_64'"#),
            ["sh", "-c", r#"test "$(uname -m)" = x86_64"#]
        );
        assert_eq!(
            words(r#"sh -c "echo \"a\" \$HOME \\ \x""#),
            ["sh", "-c", r#"echo "a" $HOME \ \x"#]
        );
        assert_eq!(words(r"a\ b c\'d \|"), ["a b", "c'd", "|"]);
        // Quotes join with what touches them, and an empty pair is an empty word.
        assert_eq!(words(r#"--name='x y'z "" ''"#), ["--name=x yz", "", ""]);
        // A line break inside quotes stays; a \ before one joins the lines.
        assert_eq!(words("sh -c 'a\nb'"), ["sh", "-c", "a\nb"]);
        assert_eq!(words("myapp \\\n  --version"), ["myapp", "--version"]);
        assert_eq!(words("\"a\\\nb\""), ["ab"]);
        // Nothing expands.
        assert_eq!(words("echo $HOME ~ *.so"), ["echo", "$HOME", "~", "*.so"]);
        assert_eq!(words("'|' \"&&\" ';'"), ["|", "&&", ";"]);
        assert_eq!(words("ünïcødé 'π'"), ["ünïcødé", "π"]);
    }

    #[test]
    fn bad_lines_are_refused_saying_why() {
        for (line, says) in [
            ("", "--smoke-test is empty"),
            ("   \t ", "--smoke-test is empty"),
            ("sh -c 'uname -m", "a ' quote is not closed"),
            ("echo \"hi", "a \" quote is not closed"),
            ("echo \"hi\\", "a \" quote is not closed"),
            ("echo hi\\", "ends with a \\ that escapes nothing"),
            (
                "app --version | grep 1",
                "'|' outside quotes is a shell operator",
            ),
            ("a && b", "'&' outside quotes is a shell operator"),
            ("a; b", "';' outside quotes"),
            ("app > /dev/null", "'>' outside quotes"),
            ("echo `id`", "'`' outside quotes"),
            ("a\nb", "a line break outside quotes"),
            ("a\0b", "NUL byte"),
            ("'a\0b'", "NUL byte"),
        ] {
            let e = split(line).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
            if !says.contains("empty") {
                assert!(e.contains("accepted: words split at blanks"), "{e}");
                assert!(e.starts_with("--smoke-test '"), "{e}");
            }
        }
    }

    #[test]
    fn joined_words_split_back_to_the_same() {
        let cases: Vec<Vec<String>> = vec![
            vec![
                "sh".into(),
                "-c".into(),
                "test \"$(uname -m)\" = x86_64".into(),
            ],
            vec![
                "a b".into(),
                "".into(),
                "it's".into(),
                "x\ny".into(),
                "\\".into(),
            ],
            vec!["/usr/bin/app".into(), "--opt=1,2".into(), "50%".into()],
        ];
        for argv in cases {
            let line = join(&argv);
            assert_eq!(split(&line).unwrap(), argv, "{line}");
        }
        assert_eq!(
            join(&words(r#"sh -c 'uname -m; echo ok'"#)),
            "sh -c 'uname -m; echo ok'"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn checks_bound_what_a_job_carries() {
        let ok = SmokeTest::parse("myapp --version", DEFAULT_TIMEOUT_SECS).unwrap();
        assert_eq!(ok.command, ["myapp", "--version"]);
        assert_eq!(ok.display(), "myapp --version");
        let bad = |command: Vec<String>, timeout_secs: u64| {
            SmokeTest {
                command,
                timeout_secs,
            }
            .check()
            .unwrap_err()
        };
        assert!(bad(vec![], 60).contains("is empty"));
        assert!(bad(vec!["".into(), "x".into()], 60).contains("first word"));
        assert!(bad(vec!["a\0".into()], 60).contains("NUL"));
        let many = vec!["x".to_string(); MAX_WORDS + 1];
        assert!(bad(many, 60).contains("at most 256 are accepted"));
        let long = vec!["x".repeat(MAX_BYTES + 1)];
        assert!(bad(long, 60).contains("8193 bytes long; at most 8192"));
        assert!(bad(vec!["a".into()], 0).contains("from 1s to 1h, not 0s"));
        assert!(bad(vec!["a".into()], MAX_TIMEOUT_SECS + 1).contains("from 1s to 1h"));
        // The JSON a job carries, with the default time limit when it gives none.
        let parsed: SmokeTest = serde_json::from_str(r#"{"command": ["true"]}"#).unwrap();
        assert_eq!(parsed.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert!(serde_json::from_str::<SmokeTest>(r#"{"command": [], "shell": true}"#).is_err());
    }
}
