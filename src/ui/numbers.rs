//! Numbers as people read them, shared by the progress bars, the progress lines and `status`:
//! three significant digits, SI prefixes for counts, binary units for sizes, durations in their
//! two largest units.

use std::time::Duration;

/// A number in at most three significant digits, more only where the integer part needs them
/// (`1020`), and no trailing zeros: 0.999 -> `0.999`, 1.5 -> `1.5`, 119.12 -> `119`.
pub(crate) fn significant(value: f64) -> String {
    let v = if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    };
    let decimals = if v < 1.0 {
        3
    } else if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        let kept = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(kept);
    }
    text
}

/// `value` in the largest of `units` (each `base` times the one before) that keeps it at or above
/// one, in three significant digits: (`119`, `k`) for 119124.99.
fn scaled(value: f64, base: f64, units: &[&'static str]) -> (String, &'static str) {
    let mut v = if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    };
    for (i, unit) in units.iter().enumerate() {
        let text = significant(v);
        // Rounding may carry into the next unit: 999.99k is 1M.
        if i + 1 == units.len() || text.parse::<f64>().unwrap_or(0.0) < base {
            return (text, unit);
        }
        v /= base;
    }
    unreachable!("units is not empty")
}

/// A count of records: `999`, `1.23k`, `119k`, `3.4M`.
pub(crate) fn count(n: u64) -> String {
    let (number, unit) = scaled(n as f64, 1000.0, &["", "k", "M", "G", "T"]);
    format!("{number}{unit}")
}

/// A size in binary units: `512 B`, `1.5 KiB`, `42.1 MiB`, `1.2 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    let (number, unit) = scaled(n as f64, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"]);
    format!("{number} {unit}")
}

/// Records per second with their noun: `119k rows/s`, `0.5 keys/s`.
pub(crate) fn rate(per_sec: f64, noun: &str) -> String {
    let (number, unit) = scaled(per_sec, 1000.0, &["", "k", "M", "G", "T"]);
    format!("{number}{unit} {noun}/s")
}

/// Bytes per second: `42.1 MiB/s`.
pub(crate) fn byte_rate(per_sec: f64) -> String {
    let (number, unit) = scaled(per_sec, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"]);
    format!("{number} {unit}/s")
}

/// Records done, of a total when one is known: `1.2M/3.4M rows`, `12.3k documents`.
pub(crate) fn done_of(done: u64, total: Option<u64>, noun: &str) -> String {
    match total {
        Some(total) => format!("{}/{} {noun}", count(done), count(total)),
        None => format!("{} {noun}", count(done)),
    }
}

/// A duration to the second, in its two largest units: `<1s`, `8s`, `1m 05s`, `2h 03m`, `3d 04h`.
pub(crate) fn eta(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "<1s".to_string(),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}
