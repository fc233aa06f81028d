//! Human-readable text for plans, copy summaries, verification reports and job status.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::catalog::{PhaseRecord, UnitRecord, UnitState};
use crate::core::delta::DeltaSummary;
use crate::core::plan::Plan;
use crate::core::runner::CopySummary;
use crate::core::verify::{DiffKind, KindCount, VerifyReport};

/// Bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One table's or collection's line of the plan: its units (key ranges) folded together.
#[derive(Default)]
struct ObjectTotals {
    rows: u64,
    bytes: u64,
    parts: usize,
    /// Whether every unit of it was sized.
    sized: bool,
}

pub fn plan(plan: &Plan) -> String {
    let mut out = String::new();
    for s in &plan.stores {
        let (parts, records) = s.store.nouns();
        let _ = writeln!(out, "{}: {} -> {}", s.store, s.source, s.target);
        let _ = writeln!(out, "  source server: {}", s.survey.source_version);
        let _ = writeln!(out, "  target server: {}", s.survey.target_version);
        let _ = writeln!(out, "  checks:");
        for c in &s.survey.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "    [{mark}] {}: {}", c.name, c.detail);
        }
        for n in &s.survey.notes {
            let _ = writeln!(out, "  {n}");
        }
        // Per container, then per object (ranges of one table folded together).
        let mut containers: BTreeMap<&str, BTreeMap<&str, ObjectTotals>> = BTreeMap::new();
        for u in &s.units {
            let e = containers
                .entry(u.container.as_str())
                .or_default()
                .entry(u.object.as_str())
                .or_insert(ObjectTotals {
                    sized: true,
                    ..ObjectTotals::default()
                });
            e.rows += u.est_rows;
            e.bytes += u.est_bytes;
            e.parts += 1;
            e.sized &= u.size_known;
        }
        for (container, objects) in &containers {
            let rows: u64 = objects.values().map(|o| o.rows).sum();
            let size: u64 = objects.values().map(|o| o.bytes).sum();
            let unknown = objects.values().filter(|o| !o.sized).count();
            let _ = writeln!(
                out,
                "  {container}: {} {parts}, ~{rows} {records}, ~{}{}",
                objects.len(),
                bytes(size),
                if unknown > 0 {
                    format!(" and {unknown} not sized")
                } else {
                    String::new()
                }
            );
            for (object, o) in objects {
                if !o.sized {
                    let _ = writeln!(out, "    {object:<48} {:>38}", "not sized");
                    continue;
                }
                let split = if o.parts > 1 {
                    format!(", in {} key ranges", o.parts)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "    {object:<48} ~{:>10} {records}  ~{:>10}{split}",
                    o.rows,
                    bytes(o.bytes)
                );
            }
        }
        let not_sized = s.units.iter().filter(|u| !u.size_known).count();
        let _ = writeln!(
            out,
            "  total: {} units, ~{} {records}, ~{}{}",
            s.units.len(),
            s.total_rows,
            bytes(s.total_bytes),
            if not_sized > 0 {
                format!(", plus {not_sized} unit(s) not sized")
            } else {
                String::new()
            }
        );
        if !s.occupied.is_empty() {
            let _ = writeln!(
                out,
                "  the target already holds data for {} unit(s) ({}{}): copy will refuse unless --if-exists skip|replace",
                s.occupied.len(),
                s.occupied.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if s.occupied.len() > 5 { ", ..." } else { "" }
            );
        }
    }
    if plan.checks_pass() {
        let _ = writeln!(out, "All checks passed. Next: offload copy (same flags).");
    } else {
        let _ = writeln!(out, "Some checks FAILED: fix them before copying.");
    }
    out
}

pub fn copy_summary(s: &CopySummary, job: &std::path::Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Copied {} unit(s) now ({} records, {} of data), {} already done earlier, {} skipped, of {}.",
        s.units_copied_now,
        s.rows,
        bytes(s.bytes),
        s.units_already_done,
        s.units_skipped,
        s.units_total
    );
    for n in &s.notes {
        let _ = writeln!(out, "  {n}");
    }
    let _ = writeln!(out, "Job folder: {}", job.display());
    let _ = writeln!(out, "Next: offload verify --job {}", job.display());
    out
}

/// One line on what the delta pass found and copied again.
pub fn delta_summary(d: &DeltaSummary) -> String {
    let changed = if d.changed.is_empty() {
        String::new()
    } else {
        format!(" ({})", d.changed.join(", "))
    };
    format!(
        "Delta pass: {} of {} unit(s) had changed; {} key range(s), {} record(s) copied again{changed}.\n",
        d.units_changed, d.units_checked, d.chunks_recopied, d.rows_recopied
    )
}

/// Counts by kind, `string 10, hash 2` when both sides agree, `string 10 -> 9` where not.
pub fn kinds_line(kinds: &[KindCount]) -> String {
    kinds
        .iter()
        .map(|k| {
            if k.source == k.target {
                format!("{} {}", k.kind, k.source)
            } else {
                format!("{} {} -> {}", k.kind, k.source, k.target)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn verify_report(r: &VerifyReport) -> String {
    let mut out = String::new();
    for u in &r.units {
        if u.matched() {
            continue;
        }
        if let Some(e) = &u.error {
            let _ = writeln!(out, "ERROR   {} {}: {e}", u.store, u.unit);
            continue;
        }
        let _ = writeln!(
            out,
            "DIFFERS {} {}: source {} {records}, target {} {records}, {} of {} chunk(s) differ",
            u.store,
            u.unit,
            u.source_rows,
            u.target_rows,
            u.chunks_differ,
            u.chunks,
            records = u.store.nouns().1
        );
        for d in &u.differences {
            let kind = match d.kind {
                DiffKind::Missing => "missing on target",
                DiffKind::Extra => "extra on target",
                DiffKind::Differ => "differs",
            };
            match &d.key {
                Some(k) => {
                    let _ = writeln!(out, "          {kind}: {k}  (in {})", d.range);
                }
                None => {
                    let _ = writeln!(out, "          {kind}: {}", d.range);
                }
            }
        }
        if u.unnamed > 0 {
            let _ = writeln!(out, "          ... and {} more", u.unnamed);
        }
        if !u.kinds.is_empty() {
            let _ = writeln!(out, "          by type: {}", kinds_line(&u.kinds));
        }
    }
    for u in r
        .units
        .iter()
        .filter(|u| u.matched() && !u.kinds.is_empty())
    {
        let _ = writeln!(
            out,
            "ok      {} {}: {} {} ({})",
            u.store,
            u.unit,
            u.source_rows,
            u.store.nouns().1,
            kinds_line(&u.kinds)
        );
    }
    for (store, d) in &r.shape {
        let _ = writeln!(
            out,
            "SHAPE   {store} {}.{}: {}",
            d.container, d.object, d.detail
        );
    }
    let rows: u64 = r.units.iter().map(|u| u.source_rows).sum();
    if r.clean() {
        let _ = writeln!(
            out,
            "Verified: all {} unit(s) match ({rows} records compared by content digest). Safe to switch.",
            r.units.len()
        );
    } else {
        let _ = writeln!(
            out,
            "NOT safe to switch: {} of {} unit(s) differ, {} shape difference(s). Copy again (offload copy --resume, or --if-exists replace) and verify.",
            r.units_differing(),
            r.units.len(),
            r.shape.len()
        );
    }
    out
}

/// Seconds between an RFC 3339 time and now.
fn seconds_since(at: &str) -> Option<f64> {
    let then =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time::OffsetDateTime::now_utc() - then).as_seconds_f64())
}

/// Progress of the copy, with the average rate since it started and the time left at that rate.
fn copy_progress(phases: &[PhaseRecord], units: &[UnitRecord]) -> String {
    let done: u64 = units.iter().map(|u| u.rows_done).sum();
    let total: u64 = units.iter().map(|u| u.unit.est_rows.max(u.rows_done)).sum();
    let percent = if total > 0 {
        done as f64 * 100.0 / total as f64
    } else {
        100.0
    };
    let mut line = format!("Copy: {done} of ~{total} records ({percent:.0}%)");
    // A unit not sized counts only what it has copied so far: no share of it is known to be left.
    let unsized_left = units
        .iter()
        .filter(|u| !u.unit.size_known && u.state != UnitState::Copied)
        .count();
    if unsized_left > 0 {
        line.push_str(&format!(
            ", plus whatever remains of {unsized_left} unit(s) not sized"
        ));
    }
    let running = phases
        .iter()
        .filter(|p| p.phase == "copy" && p.store != "job" && p.done_at.is_none())
        .filter_map(|p| p.started_at.as_deref())
        .min();
    if let Some(elapsed) = running.and_then(seconds_since).filter(|s| *s > 0.0) {
        let rate = done as f64 / elapsed;
        line.push_str(&format!(
            ", running for {:.0} s, {rate:.0} records/s on average",
            elapsed
        ));
        if rate > 0.0 && total > done && unsized_left == 0 {
            line.push_str(&format!(
                ", about {:.0} s left",
                (total - done) as f64 / rate
            ));
        }
    }
    line
}

pub fn status(phases: &[PhaseRecord], units: &[UnitRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", copy_progress(phases, units));
    let _ = writeln!(out, "Phases:");
    for p in phases {
        let state = match (&p.started_at, &p.done_at) {
            (_, Some(done)) => format!("done {done}"),
            (Some(start), None) => format!("running since {start}"),
            _ => "pending".into(),
        };
        let _ = writeln!(out, "  {:<8} {:<8} {state}", p.store, p.phase);
    }
    let _ = writeln!(out, "Units:");
    let _ = writeln!(
        out,
        "  {:<8} {:<44} {:<8} {:>12} {:>12} {:>10} {:<8}",
        "store", "unit", "state", "rows", "of ~rows", "size", "verify"
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for u in units {
        *counts
            .entry(format!("{:?}", u.state).to_lowercase())
            .or_default() += 1;
        let _ = writeln!(
            out,
            "  {:<8} {:<44} {:<8} {:>12} {:>12} {:>10} {:<8}",
            u.unit.store.as_str(),
            u.unit.name,
            format!("{:?}", u.state).to_lowercase(),
            u.rows_done,
            if u.unit.size_known {
                u.unit.est_rows.to_string()
            } else {
                "not sized".into()
            },
            bytes(u.bytes_done),
            u.verify_state.as_deref().unwrap_or("-")
        );
        if let Some(e) = &u.last_error {
            let _ = writeln!(
                out,
                "           last error ({} attempt(s)): {e}",
                u.attempts
            );
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(out, "{} unit(s): {}", units.len(), summary.join(", "));
    out
}
