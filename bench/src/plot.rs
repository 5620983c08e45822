//! A small SVG line chart, written by hand: one panel per measure, farm size on a log axis.

use std::fmt::Write as _;

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke colour (CSS).
    pub colour: &'static str,
    /// One y value per x.
    pub values: Vec<f64>,
}

/// One panel: a title, a y-axis unit and its lines, over the shared x values.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Unit of the y axis.
    pub unit: String,
    /// The lines.
    pub series: Vec<Series>,
    /// A goal drawn as a dashed line, if any.
    pub goal: Option<(f64, String)>,
}

const W: f64 = 300.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;

/// Renders the panels side by side over `xs` (positive, drawn on a log scale).
pub fn render(title: &str, x_label: &str, xs: &[f64], panels: &[Panel]) -> String {
    let width = W * panels.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" font-family="sans-serif" font-size="11">"#,
        h = H + 24.0
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, i as f64 * W, 20.0, x_label, xs, panel);
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, ox: f64, oy: f64, x_label: &str, xs: &[f64], panel: &Panel) {
    let (x0, x1) = (ox + LEFT, ox + W - RIGHT);
    let (y0, y1) = (oy + H - BOTTOM, oy + TOP);
    let lx: Vec<f64> = xs.iter().map(|x| x.max(1e-9).log10()).collect();
    let (lmin, lmax) = (
        lx.iter().copied().fold(f64::MAX, f64::min),
        lx.iter().copied().fold(f64::MIN, f64::max),
    );
    let span = (lmax - lmin).max(1e-9);
    let px = |l: f64| x0 + (l - lmin) / span * (x1 - x0);
    let top = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(panel.goal.iter().map(|g| g.0))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let py = |v: f64| y0 - v / top * (y0 - y1);
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        oy + 16.0,
        escape(&panel.title)
    );
    // Axes, y ticks at quarters, x ticks at the measured sizes.
    let _ = write!(
        svg,
        r##"<path d="M{x0} {y1} L{x0} {y0} L{x1} {y0}" fill="none" stroke="#333"/>"##
    );
    for q in 0..=4 {
        let v = top / 1.1 * q as f64 / 4.0;
        let y = py(v);
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            y + 4.0,
            tick(v)
        );
    }
    for (x, l) in xs.iter().zip(&lx) {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(*l),
            y0 + 14.0,
            tick(*x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        (x0 + x1) / 2.0,
        y0 + 30.0,
        escape(x_label),
        ox + 12.0,
        (y0 + y1) / 2.0,
        ox + 12.0,
        (y0 + y1) / 2.0,
        escape(&panel.unit)
    );
    if let Some((goal, label)) = &panel.goal {
        let y = py(*goal);
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#c00" stroke-dasharray="4 3"/><text x="{}" y="{}" text-anchor="end" fill="#c00">{}</text>"##,
            x1,
            y - 3.0,
            escape(label)
        );
    }
    for (n, s) in panel.series.iter().enumerate() {
        let points: Vec<String> = lx
            .iter()
            .zip(&s.values)
            .map(|(l, v)| format!("{:.1},{:.1}", px(*l), py(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            points.join(" "),
            c = s.colour
        );
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#,
                s.colour
            );
        }
        let ly = y1 + 12.0 * n as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            x0 + 6.0,
            ly - 4.0,
            x0 + 20.0,
            ly - 4.0,
            x0 + 24.0,
            ly,
            escape(&s.label),
            c = s.colour
        );
    }
}

/// A tick label: integers plainly, small values with a decimal or two.
fn tick(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_point_and_label() {
        let svg = render(
            "growth <test>",
            "agents",
            &[10.0, 100.0, 1000.0],
            &[Panel {
                title: "latency".into(),
                unit: "ms".into(),
                series: vec![Series {
                    label: "p50".into(),
                    colour: "#06c",
                    values: vec![1.0, 2.0, 4.0],
                }],
                goal: Some((20.0, "goal 20 ms".into())),
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("growth &lt;test&gt;"), "title escaped");
        assert!(svg.contains("goal 20 ms") && svg.contains(">1000<"));
        // The largest value is drawn highest (smallest y), the goal above all of them.
        let ys: Vec<f64> = svg
            .split("cy=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(ys[0] > ys[1] && ys[1] > ys[2], "{ys:?}");
    }
}
