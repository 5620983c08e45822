//! `--progress tty`: one live row per platform under a header row, redrawn in place.
//!
//! The rows are a pure function of the job snapshot, each build's last log line, the time and the
//! width ([`rows`]); [`Screen`] turns successive frames into ANSI escapes (cursor up, clear line).
//! Redrawing in place only works when no row wraps, so every row is cut to the width in display
//! columns, after control characters and escape sequences in log lines are taken out.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use archfarm_protocol::api::{Build, BuildState, Job};
use chrono::{DateTime, Utc};
use unicode_width::UnicodeWidthChar;
use uuid::Uuid;

use crate::follow::{Tracker, View};

/// Shortest time between two redraws (at most five a second).
pub const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// The width assumed when neither the terminal nor `COLUMNS` tells.
pub const DEFAULT_WIDTH: usize = 80;

/// The columns to draw in: the terminal's width when stderr is one, else `COLUMNS`, else
/// [`DEFAULT_WIDTH`].
pub fn width_from(terminal: Option<u16>, columns: Option<&str>) -> usize {
    terminal
        .map(usize::from)
        .filter(|w| *w > 0)
        .or_else(|| {
            columns
                .and_then(|c| c.trim().parse().ok())
                .filter(|w| *w > 0)
        })
        .unwrap_or(DEFAULT_WIDTH)
}

/// [`width_from`] for this process's stderr and environment.
pub fn terminal_width() -> usize {
    let terminal = terminal_size::terminal_size_of(std::io::stderr()).map(|(w, _)| w.0);
    width_from(terminal, std::env::var("COLUMNS").ok().as_deref())
}

/// `42s`, `3m07s`, `1h02m`: short, and of nearly constant width while it counts.
pub fn format_elapsed(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// How long a build has taken: since it was leased (since it was created while it is queued),
/// up to now or, once it ended, to its end.
fn build_elapsed(b: &Build, job: &Job, now: DateTime<Utc>) -> chrono::Duration {
    let start = match b.state {
        BuildState::Queued => b.created_at,
        _ => b.started_at.unwrap_or(b.created_at),
    };
    let end = if b.state.is_terminal() {
        b.finished_at.or(job.finished_at).unwrap_or(now)
    } else {
        now
    };
    end - start
}

/// A log line made safe to draw: escape sequences and control characters out, tabs as spaces,
/// so that what is measured is what the terminal shows.
pub fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI (colours, cursor moves): parameters up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (titles, links): up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Display columns of a sanitized string (wide CJK characters count two, combining marks none).
pub fn display_width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Cuts `s` to at most `width` display columns, ending with `…` when something was cut.
/// Never splits a character.
pub fn fit(s: &str, width: usize) -> String {
    if display_width(s) <= width {
        return s.to_string();
    }
    let budget = width.saturating_sub(1);
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > budget {
            break;
        }
        used += w;
        out.push(c);
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// `s` followed by spaces up to `width` display columns.
fn pad(s: &str, width: usize) -> String {
    format!("{s}{}", " ".repeat(width.saturating_sub(display_width(s))))
}

/// The last text of a build's row: why it waits, else its last log line, else why it ended.
fn tail(b: &Build, last_line: Option<&String>) -> String {
    let waiting = b.waiting.as_deref().filter(|w| !w.is_empty());
    if let (BuildState::Queued, Some(w)) = (b.state, waiting) {
        return format!("waiting: {}", sanitize(w));
    }
    if let Some(l) = last_line
        .map(|l| sanitize(l))
        .filter(|l| !l.trim().is_empty())
    {
        return l.trim_end().to_string();
    }
    match b.error.as_deref() {
        Some(e) if b.state.is_terminal() => sanitize(e),
        _ => String::new(),
    }
}

/// One frame: `job ID  STATE  ELAPSED`, then per build `PLATFORM  STATE  AGENT  MODE  ELAPSED
/// TEXT` in aligned columns, each row at most `width` display columns.
pub fn rows(
    job: &Job,
    last_lines: &HashMap<Uuid, String>,
    now: DateTime<Utc>,
    width: usize,
) -> Vec<String> {
    let job_end = job.finished_at.filter(|_| job.state.is_terminal());
    let header = format!(
        "job {}  {}  {}",
        job.id,
        job.state,
        format_elapsed(job_end.unwrap_or(now) - job.created_at)
    );
    let cells: Vec<[String; 5]> = job
        .builds
        .iter()
        .map(|b| {
            [
                b.platform.to_string(),
                b.state.to_string(),
                sanitize(b.agent.as_deref().filter(|a| !a.is_empty()).unwrap_or("-")),
                b.mode.map_or(String::new(), |m| m.as_str().to_string()),
                format_elapsed(build_elapsed(b, job, now)),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(display_width(cell));
        }
    }
    let mut out = vec![fit(&header, width)];
    for (b, cells) in job.builds.iter().zip(&cells) {
        let [platform, state, agent, mode, elapsed] = cells;
        let mut row = format!(
            "{}  {}  {}  {}  {}{elapsed}",
            pad(platform, widths[0]),
            pad(state, widths[1]),
            pad(agent, widths[2]),
            pad(mode, widths[3]),
            " ".repeat(widths[4] - display_width(elapsed)),
        );
        let text = tail(b, last_lines.get(&b.id));
        if !text.is_empty() {
            row.push_str("  ");
            row.push_str(&text);
        }
        out.push(fit(&row, width));
    }
    out
}

/// What is on the screen, to replace it with the next frame.
#[derive(Debug, Default)]
pub struct Screen {
    /// Lines of the frame on screen; the cursor sits at the start of the line below them.
    lines: usize,
    /// The rows on screen, to skip redrawing an unchanged frame.
    shown: Vec<String>,
    /// When the frame on screen was drawn.
    drawn_at: Option<Instant>,
}

impl Screen {
    /// The escapes and text that replace the frame on screen with `rows`; `None` when the rows
    /// are those on screen, or when the last redraw was less than [`REDRAW_EVERY`] ago and this
    /// one is not `forced` (a later tick draws it).
    pub fn redraw(&mut self, rows: Vec<String>, now: Instant, forced: bool) -> Option<String> {
        if rows == self.shown {
            return None;
        }
        let recent = self
            .drawn_at
            .is_some_and(|t| now.saturating_duration_since(t) < REDRAW_EVERY);
        if recent && !forced {
            return None;
        }
        let mut out = String::new();
        if self.lines > 0 {
            out.push_str(&format!("\x1b[{}A", self.lines));
        }
        for r in &rows {
            out.push_str("\r\x1b[2K");
            out.push_str(r);
            out.push('\n');
        }
        if self.lines > rows.len() {
            // Clear what is left of a taller frame below.
            out.push_str("\x1b[J");
        }
        self.lines = rows.len();
        self.shown = rows;
        self.drawn_at = Some(now);
        Some(out)
    }

    /// The escapes that erase the frame and put the cursor where it began, so that a message can
    /// be printed before the next frame is drawn below it.
    pub fn erase(&mut self) -> String {
        let out = match self.lines {
            0 => String::new(),
            n => format!("\x1b[{n}A\r\x1b[J"),
        };
        self.lines = 0;
        self.shown.clear();
        out
    }
}

/// The live view on stderr.
#[derive(Debug, Default)]
pub struct TtyView {
    screen: Screen,
    job: Option<Job>,
    last_lines: HashMap<Uuid, String>,
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

impl TtyView {
    fn draw(&mut self, forced: bool) {
        let Some(job) = &self.job else { return };
        // One column is left free: some terminals wrap as soon as the last one is written, and an
        // ambiguous-width `…` may take two.
        let width = terminal_width().saturating_sub(1).max(1);
        let rows = rows(job, &self.last_lines, Utc::now(), width);
        if let Some(frame) = self.screen.redraw(rows, Instant::now(), forced) {
            write_stderr(&frame);
        }
    }
}

impl View for TtyView {
    fn wants_log(&self, _: &Build) -> bool {
        true
    }

    fn update(&mut self, job: &Job, lines: &[Vec<String>]) {
        for (b, new) in job.builds.iter().zip(lines) {
            if let Some(l) = new.iter().rev().find(|l| !sanitize(l).trim().is_empty()) {
                self.last_lines.insert(b.id, l.clone());
            }
        }
        self.job = Some(job.clone());
        let ended = job.state.is_terminal();
        self.draw(ended);
        if ended {
            // Under the final frame, as plain mode ends: `[index] pushed sha256:... to TAGS`.
            for line in Tracker::default().job_lines(job) {
                write_stderr(&format!("{line}\n"));
            }
        }
    }

    fn note(&mut self, message: &str) {
        let erase = self.screen.erase();
        write_stderr(&format!("{erase}{message}\n"));
        self.draw(true);
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(REDRAW_EVERY)
    }

    fn tick(&mut self) {
        self.draw(false);
    }
}

#[cfg(test)]
#[path = "tty_tests.rs"]
mod tests;
