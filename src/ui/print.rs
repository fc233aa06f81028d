//! Human-readable text for plans, copy summaries, verification reports and job status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::core::catalog::{PhaseRecord, UnitRecord, UnitState};
use crate::core::delta::DeltaSummary;
use crate::core::plan::Plan;
use crate::core::runner::CopySummary;
use crate::core::verify::{DiffKind, KindCount, VerifyReport};
use crate::job::lock::Holder;
use crate::search::ReindexReport;

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
    for w in &plan.tls_warnings {
        let _ = writeln!(
            out,
            "WARNING: {} {}: certificate not fully verified: {}",
            w.store, w.side, w.detail
        );
    }
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
        "Delta pass: {} of {} unit(s) had changed; {} key range(s) in {} chunk(s), {} record(s) copied again{changed}.\n",
        d.units_changed, d.units_checked, d.ranges_recopied, d.chunks_recopied, d.rows_recopied
    )
}

/// A store's lag in words: `2.1 s, 40 events behind`, or `in step` when nothing is behind.
pub fn lag(l: &crate::core::follow::Lag) -> String {
    let mut parts = Vec::new();
    if let Some(s) = l.seconds {
        parts.push(format!("{s:.1} s"));
    }
    if let Some(b) = l.behind {
        if b == 0 && parts.is_empty() {
            return "in step".into();
        }
        parts.push(format!("{b} {} behind", l.behind_unit));
    }
    if parts.is_empty() {
        "lag unknown".into()
    } else {
        parts.join(", ")
    }
}

/// What `offload follow` (or the final pass's catch-up) did, store by store.
pub fn follow_summary(f: &crate::job::FollowSummary) -> String {
    let mut out = format!("Follow {} after {:.1} s.\n", f.ended, f.seconds);
    for s in &f.followed {
        out.push_str(&format!(
            "  {:<8} {} change(s) in {} transaction(s) this run (started from the {}); {} in all; lag: {}\n",
            s.store.as_str(),
            s.events,
            s.transactions,
            s.started_from,
            s.checkpoint.events,
            lag(&s.checkpoint.lag)
        ));
    }
    for (store, why) in &f.not_followed {
        out.push_str(&format!(
            "  {:<8} not followed: {why}; the final pass copies what changed with the delta pass\n",
            store.as_str()
        ));
    }
    if f.interrupted {
        out.push_str("Stopped; every applied change is checkpointed. `offload follow` continues from here, and `offload migrate --resume --freeze-source` takes over for the final pass.\n");
    }
    out
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

/// The verify report in words, ending with whether it is safe to switch and, when it is not,
/// the command that repairs what was found (for the job in `job`, when there is one).
pub fn verify_report(r: &VerifyReport, job: Option<&Path>) -> String {
    let mut out = String::new();
    if let Some(w) = &r.window {
        let _ = writeln!(
            out,
            "Verified in the window: {} unit(s) at the {} key(s) changed since the full verify of {}, {} unit(s) whole; {} unit(s) unchanged since then were not compared again (`offload verify` compares everything).",
            w.units_by_key, w.keys, w.last_full_verify, w.units_whole, w.units_untouched
        );
    }
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
            "NOT safe to switch: {} of {} unit(s) differ, {} shape difference(s). {}",
            r.units_differing(),
            r.units.len(),
            r.shape.len(),
            repair_advice(r, job)
        );
    }
    out
}

/// The command that repairs what a verify found. Differing records of a job are copied again by
/// the delta pass (`--delta`; `--resume` alone copies nothing when every unit is marked copied,
/// and with `--delta` it first copies the units not copied yet); shape differences, and a
/// verify without a job, need a copy of the units afresh.
fn repair_advice(r: &VerifyReport, job: Option<&Path>) -> String {
    let rows_differ = r.units.iter().any(|u| !u.matched() && u.error.is_none());
    match job {
        Some(job) if rows_differ && r.shape.is_empty() => format!(
            "Copy again what differs, then verify: offload copy --resume --delta --job {}",
            job.display()
        ),
        Some(job) if rows_differ => format!(
            "Copy again what differs (offload copy --resume --delta --job {}); the shape differences need their objects copied afresh (--if-exists replace). Then verify.",
            job.display()
        ),
        Some(_) if r.units.iter().any(|u| u.error.is_some()) => {
            "Fix what stopped the comparison (see ERROR above) and verify again.".to_string()
        }
        _ => "Copy again (offload copy, with --if-exists replace for what the target holds) and verify.".to_string(),
    }
}

/// Seconds between an RFC 3339 time and now.
fn seconds_since(at: &str) -> Option<f64> {
    let then =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time::OffsetDateTime::now_utc() - then).as_seconds_f64())
}

/// Whether a process is working on the job, and when none is but units were left part-way, that
/// the job is stopped and how to go on.
fn job_holder(holder: Option<&Holder>, units: &[UnitRecord]) -> String {
    match holder {
        Some(h) if h.pid == 0 => "Running: an offload process is taking this job just now.".into(),
        Some(h) => format!(
            "Running: offload process {} on {} holds this job (since {}).",
            h.pid, h.host, h.started
        ),
        None => {
            let copying = units
                .iter()
                .filter(|u| u.state == UnitState::Copying)
                .count();
            if copying > 0 {
                format!("Stopped: no process holds this job, and {copying} unit(s) were left part-way. Continue with the same command and --resume (offload copy --resume, or offload migrate --resume).")
            } else {
                "Not running: no process holds this job.".into()
            }
        }
    }
}

/// Progress of the copy, with the average rate since it started and the time left at that rate
/// while a process holds the job (`held`; a stopped job has neither).
fn copy_progress(phases: &[PhaseRecord], units: &[UnitRecord], held: bool) -> String {
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
        .filter(|p| p.phase == "copy" && p.store != "job" && p.done_at.is_none() && held)
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

/// A job's state; `holder`: the process that holds the job now, if any.
pub fn status(phases: &[PhaseRecord], units: &[UnitRecord], holder: Option<&Holder>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", job_holder(holder, units));
    let _ = writeln!(out, "{}", copy_progress(phases, units, holder.is_some()));
    let _ = writeln!(out, "Phases:");
    for p in phases {
        let state = match (&p.started_at, &p.done_at) {
            (_, Some(done)) => format!("done {done}"),
            (Some(start), None) if holder.is_some() => format!("running since {start}"),
            (Some(start), None) => format!("started {start}, not finished"),
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

/// A Meilisearch rebuild's report, for people.
pub fn reindex_report(report: &ReindexReport) -> String {
    let mut out = format!(
        "Meilisearch {} at {}, documents from {}\n",
        report.server_version, report.target, report.source
    );
    for i in &report.indexes {
        out.push_str(&format!(
            "  {:<40} {} {} documents in {} batch(es), {:.1}s; live index holds {}; settings {}; {} sampled document(s) {}\n",
            i.index,
            i.how,
            i.documents,
            i.batches,
            i.seconds,
            i.live_documents,
            if i.settings_differences.is_empty() { "equal" } else { "DIFFER" },
            i.sample_checked,
            if i.document_differences.is_empty() { "equal" } else { "DIFFER" },
        ));
        for d in i.settings_differences.iter().chain(&i.document_differences) {
            out.push_str(&format!("      {d}\n"));
        }
        if i.live_documents != i.documents {
            out.push_str(&format!(
                "      count: {} document(s) built from the source, {} in the live index\n",
                i.documents, i.live_documents
            ));
        }
    }
    if let Some(k) = &report.api_key {
        out.push_str(&format!("  {k}\n"));
    }
    for n in &report.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out.push_str(if report.clean() {
        "Every index was rebuilt, swapped in and verified.\n"
    } else {
        "Some indexes differ from what was sent (see above).\n"
    });
    out
}

/// The Meilisearch part of a plan, for people.
pub fn search_plan(section: &serde_json::Value) -> String {
    let mut out = String::from("Meilisearch (rebuilt by `offload reindex`)\n");
    for c in section["checks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  [{}] {}: {}\n",
            if c["ok"] == true { "ok" } else { "FAIL" },
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    if let Some(p) = section["public_url"].as_str() {
        out.push_str(&format!("  {p}\n"));
    }
    for i in section["indexes"].as_array().into_iter().flatten() {
        let count = match i["documents"].as_u64() {
            Some(n) => format!("{n} documents"),
            None => "counted during reindex".to_string(),
        };
        out.push_str(&format!(
            "  {:<36} {count:<24} from {}\n",
            i["index"].as_str().unwrap_or(""),
            i["from"].as_str().unwrap_or("")
        ));
    }
    if let Some(es) = section["elasticsearch"].as_str() {
        out.push_str(&format!("  note: {es}\n"));
    }
    out
}

/// The Elasticsearch part of a plan (Tutor 18 and older), for people.
pub fn elasticsearch_plan(section: &serde_json::Value) -> String {
    let mut out = String::from("Elasticsearch (rebuilt, not copied)\n");
    if let Some(v) = section["tutor_version"].as_str() {
        out.push_str(&format!(
            "  Tutor {v} (from {}): the platform searches with Elasticsearch\n",
            section["tutor_version_from"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "  indexes: {}\n",
        section["indexes_from"].as_str().unwrap_or("")
    ));
    for i in section["indexes"].as_array().into_iter().flatten() {
        let count = match i["documents"].as_u64() {
            Some(n) => format!("{n} documents"),
            None => String::new(),
        };
        let how = match i["rebuilt_by"].as_str() {
            Some(c) => format!("rebuilt by: {c}"),
            None => "not an Open edX index: not rebuilt".to_string(),
        };
        out.push_str(&format!(
            "  {:<36} {count:<18} {how}\n",
            i["index"].as_str().unwrap_or("")
        ));
    }
    for key in ["what_offload_does", "cutover"] {
        if let Some(text) = section[key].as_str() {
            out.push_str(&format!("  {text}\n"));
        }
    }
    out
}

/// The steps of a maintenance window, for the plan and `--dry-run`.
pub fn maintenance_runbook() -> String {
    "Maintenance window, step by step:\n\
     1. Copy while the platform runs:        offload migrate --no-cutover (same flags)\n\
     2. Stop the web apps (no new tasks):    tutor local stop lms cms\n\
        (Kubernetes: tutor k8s stop lms cms)\n\
     3. Let the workers drain the Celery queues (queued tasks live in Redis DB 0; `offload plan`\n\
        counts them), then stop them:        tutor local stop lms-worker cms-worker\n\
     4. Final pass, writers held off:        offload migrate --resume --delta --freeze-source\n\
        (copies only what changed since step 1, verifies everything, then rewrites config.yml)\n\
     5. Start on the new servers:            tutor config save && tutor local start -d\n\
     6. Check that the platform works there: offload check --lms-url URL --cms-url URL\n\
        (heartbeats, search, a Celery round trip, an object read; cutover's runbook gives the\n\
        exact command, and web worker counts for this host)\n\
     Roll back at any point before step 5 with: offload rollback\n"
        .to_string()
}

/// What a cutover did (or, dry, would do), for people.
pub fn cutover(done: &crate::job::CutoverOutcome) -> String {
    let mut text = match (&done.config, &done.backup) {
        (Some(config), Some(backup)) if !done.dry_run => format!(
            "Rewrote {} (backup: {}).\n{}",
            config.display(),
            backup.display(),
            done.diff
        ),
        _ => format!(
            "Dry run: config.yml would change like this (secrets masked):\n{}",
            done.diff
        ),
    };
    for w in &done.warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    if !done.dry_run {
        text.push_str(&done.runbook);
    }
    text
}

/// What `offload check` found, for people: one line per answer, what to do under each one that
/// failed, and the verdict.
pub fn check_report(report: &crate::job::check::CheckReport) -> String {
    use crate::job::check::CheckStatus;
    let mut out = String::new();
    for r in &report.results {
        let _ = writeln!(
            out,
            "[{:<7}] {:<12} {}: {}",
            r.status.label(),
            r.service,
            r.name,
            r.detail
        );
        if let Some(fix) = &r.fix {
            let _ = writeln!(out, "            next: {fix}");
        }
    }
    let failed = report.count(CheckStatus::Failed);
    let warnings = report.count(CheckStatus::Warning);
    if report.working {
        let _ = writeln!(
            out,
            "The platform works on its servers: {} check(s) ok{}{}.",
            report.count(CheckStatus::Ok),
            if warnings > 0 {
                format!(", {warnings} warning(s)")
            } else {
                String::new()
            },
            match report.count(CheckStatus::Skipped) {
                0 => String::new(),
                n => format!(", {n} skipped"),
            }
        );
    } else {
        let _ = writeln!(
            out,
            "NOT working: {failed} check(s) failed (see `next:` under each). Fix them, then run offload check again; `offload rollback` returns config.yml to the old servers."
        );
    }
    out
}
