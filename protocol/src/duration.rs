//! Human durations for flags and JSON: `90s`, `10m`, `1h30m`, `2h`, `30d`, or plain seconds.

use std::time::Duration;

/// Parses `1h30m`, `10m`, `90s`, `7d`, `45` (seconds). Units: `d`, `h`, `m`, `s`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let err = || {
        format!("'{input}' is not a duration: use e.g. 90s, 10m, 1h30m, 7d or a number of seconds")
    };
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| err())?;
        number.clear();
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !number.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds the way [`parse_duration`] reads them (`1h30m`, `90s` → `1m30s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (input, secs, shown) in [
            ("90s", 90, "1m30s"),
            ("10m", 600, "10m"),
            ("1h30m", 5400, "1h30m"),
            ("45", 45, "45s"),
            ("2h", 7200, "2h"),
            ("7d", 604_800, "168h"),
        ] {
            let d = parse_duration(input).unwrap();
            assert_eq!(d.as_secs(), secs, "{input}");
            assert_eq!(format_duration(d), shown);
        }
        for bad in ["", "10x", "m", "1h30", "-5s", "1.5h", "2w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
