//! What of a registry's own words may be shown: a registry is a server the submitter chose, so
//! its error bodies (and the strings in what it serves) reach build logs, job JSON, the CLI's
//! terminal and the dashboard only as one bounded line without control characters, terminal
//! escape sequences or bidirectional overrides, and an HTML page only by its title.

/// Longest registry message kept, in characters, unless a caller asks for less.
pub const MAX_REGISTRY_MESSAGE: usize = 300;

/// `text` as one line of at most `max` characters (an ellipsis marks a cut): ANSI/terminal escape
/// sequences removed, every other control or bidirectional-formatting character turned into a
/// space, runs of white space collapsed; an HTML page becomes `an HTML page titled '…'`.
pub fn sanitise(text: &str, max: usize) -> String {
    if let Some(page) = html_summary(text) {
        return bound(&page, max);
    }
    bound(&one_line(text), max)
}

/// [`sanitise`] with [`MAX_REGISTRY_MESSAGE`].
pub fn sanitise_message(text: &str) -> String {
    sanitise(text, MAX_REGISTRY_MESSAGE)
}

/// Printable text on one line: escapes dropped, controls made spaces, spaces collapsed.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut chars = text.chars().peekable();
    let mut space = false;
    while let Some(c) = chars.next() {
        if c == '\u{1b}' || c == '\u{9b}' {
            skip_escape(c, &mut chars);
            continue;
        }
        if c.is_control() || c.is_whitespace() || invisible(c) {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        // Nothing past a few times the cap can be shown; stop reading a huge body early.
        if out.len() > 64 * 1024 {
            break;
        }
    }
    out
}

/// Drops the rest of an escape sequence that began with `first` (ESC, or the 8-bit CSI).
fn skip_escape(first: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let kind = if first == '\u{9b}' {
        '['
    } else {
        match chars.next() {
            Some(k) => k,
            None => return,
        }
    };
    match kind {
        // CSI: parameters and intermediates up to a final byte in @..~.
        '[' => {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
        // OSC, DCS, APC, PM, SOS: up to BEL or ST (ESC \).
        ']' | 'P' | '_' | '^' | 'X' => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    break;
                }
            }
        }
        // A two-character escape (ESC c, ESC 7, ...): already consumed.
        _ => {}
    }
}

/// Characters that change how text around them is shown without being seen themselves.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `an HTML page titled '…'` when `text` is an HTML document (a login portal, a proxy's error
/// page), whose markup would otherwise fill the message.
fn html_summary(text: &str) -> Option<String> {
    let head: String = text
        .trim_start()
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    let is_html = ["<!doctype html", "<html", "<head", "<body", "<?xml"]
        .iter()
        .any(|m| head.starts_with(m))
        || (head.starts_with('<') && head.contains("</"));
    if !is_html {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let title = lower.find("<title").and_then(|start| {
        let open_end = start + lower[start..].find('>')? + 1;
        let close = open_end + lower[open_end..].find("</title")?;
        Some(one_line(&text[open_end..close]))
    });
    Some(match title {
        Some(t) if !t.is_empty() => format!("an HTML page titled '{}'", bound(&t, 80)),
        _ => format!("an HTML page ({} bytes)", text.len()),
    })
}

/// At most `max` characters, an ellipsis marking a cut.
fn bound(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_gone() {
        let raw = "denied\u{1b}[31m red\u{1b}[0m\r\n\tnext\u{7}\u{1b}]0;pwned title\u{7} after\u{1b}]8;;http://x\u{1b}\\link";
        assert_eq!(sanitise_message(raw), "denied red next afterlink");
        assert_eq!(sanitise_message("a\u{9b}2Jb\u{0}c"), "ab c");
        assert_eq!(sanitise_message("user\u{202e}gpj.exe"), "user gpj.exe");
        assert_eq!(sanitise_message("  \n "), "");
        assert_eq!(sanitise_message("trailing\u{1b}"), "trailing");
    }

    #[test]
    fn long_bodies_are_cut() {
        let s = sanitise(&"x".repeat(10_000), 50);
        assert_eq!(s.chars().count(), 50);
        assert!(s.ends_with('…'));
        assert_eq!(sanitise("short", 50), "short");
        let huge = sanitise_message(&"word ".repeat(1_000_000));
        assert_eq!(huge.chars().count(), MAX_REGISTRY_MESSAGE);
    }

    #[test]
    fn html_pages_are_named_not_dumped() {
        let page = "<!DOCTYPE html>\n<html><head><title>Sign in \u{1b}[1m- Corp SSO</title></head>\
                    <body><script>alert(1)</script>lots of markup</body></html>";
        assert_eq!(
            sanitise_message(page),
            "an HTML page titled 'Sign in - Corp SSO'"
        );
        let untitled = "<html><body>502 Bad Gateway</body></html>";
        assert_eq!(
            sanitise_message(untitled),
            format!("an HTML page ({} bytes)", untitled.len())
        );
        assert_eq!(
            sanitise_message("<h1>Forbidden</h1>"),
            "an HTML page (18 bytes)"
        );
        // JSON error envelopes and plain text pass through.
        assert_eq!(
            sanitise_message(r#"{"errors":[{"code":"DENIED"}]}"#),
            r#"{"errors":[{"code":"DENIED"}]}"#
        );
        assert_eq!(sanitise_message("a < b"), "a < b");
    }
}
