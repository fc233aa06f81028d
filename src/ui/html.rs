//! The verification report as one self-contained HTML page (no scripts, no external files) that an
//! operator can attach to a change ticket.

use std::fmt::Write as _;

use crate::core::verify::{CrossCheck, DiffKind, VerifyReport};

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#17692f}.bad{color:#b00020;font-weight:bold}tr.bad td{background:#fff0f0}\
.verdict{padding:.8em 1em;border-radius:6px;font-size:1.1em}\
.verdict.ok{background:#e7f6ea}.verdict.bad{background:#fde8ea}\
code{font-family:ui-monospace,monospace;font-size:.95em}ul{margin:.2em 0;padding-left:1.2em}";

/// Render the report. `title` names the platform or job; `meta` are extra (label, value) lines.
pub fn render(
    report: &VerifyReport,
    cross: &[CrossCheck],
    title: &str,
    meta: &[(&str, String)],
) -> String {
    let clean = report.clean() && cross.iter().all(|c| c.ok);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>offload verification: {}</title><style>{STYLE}</style></head><body>",
        esc(title)
    );
    let _ = write!(h, "<h1>offload verification report: {}</h1>", esc(title));
    h.push_str("<table>");
    for (label, value) in meta {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(label), esc(value));
    }
    h.push_str("</table>");
    let rows: u64 = report.units.iter().map(|u| u.source_rows).sum();
    if clean {
        let _ = write!(
            h,
            "<p class=\"verdict ok\" id=\"verdict\">Safe to switch: all {} unit(s) match ({rows} rows compared by content digest).</p>",
            report.units.len()
        );
    } else {
        let _ = write!(
            h,
            "<p class=\"verdict bad\" id=\"verdict\">NOT safe to switch: {} of {} unit(s) differ, {} shape difference(s), {} cross-store check(s) failed.</p>",
            report.units_differing(),
            report.units.len(),
            report.shape.len(),
            cross.iter().filter(|c| !c.ok).count()
        );
    }

    let mut stores: Vec<_> = report.units.iter().map(|u| u.store).collect();
    stores.dedup();
    for store in stores {
        let _ = write!(h, "<h2>{}</h2><table><tr><th>unit</th><th>status</th><th>source rows</th><th>target rows</th><th>chunks</th><th>differences</th></tr>", esc(store.as_str()));
        for u in report.units.iter().filter(|u| u.store == store) {
            let (class, status) = if u.matched() {
                ("ok", "matches".to_string())
            } else if let Some(e) = &u.error {
                ("bad", format!("error: {e}"))
            } else {
                ("bad", format!("differs ({} chunk(s))", u.chunks_differ))
            };
            let mut diffs = String::new();
            if !u.differences.is_empty() {
                diffs.push_str("<ul>");
                for d in &u.differences {
                    let kind = match d.kind {
                        DiffKind::Missing => "missing on target",
                        DiffKind::Extra => "extra on target",
                        DiffKind::Differ => "differs",
                    };
                    let what = d.key.as_deref().unwrap_or(&d.range);
                    let _ = write!(
                        diffs,
                        "<li>{kind}: <code>{}</code> <small>({})</small></li>",
                        esc(what),
                        esc(&d.range)
                    );
                }
                if u.unnamed > 0 {
                    let _ = write!(diffs, "<li>and {} more</li>", u.unnamed);
                }
                diffs.push_str("</ul>");
            }
            if !u.kinds.is_empty() {
                let _ = write!(
                    diffs,
                    "<small>by type: {}</small>",
                    esc(&crate::ui::print::kinds_line(&u.kinds))
                );
            }
            let _ = write!(
                h,
                "<tr class=\"{class}\"><td><code>{}</code></td><td class=\"{class}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{diffs}</td></tr>",
                esc(&u.unit),
                esc(&status),
                u.source_rows,
                u.target_rows,
                u.chunks
            );
        }
        h.push_str("</table>");
        let shape: Vec<_> = report.shape.iter().filter(|(s, _)| *s == store).collect();
        if !shape.is_empty() {
            h.push_str("<h3>Schema and options</h3><ul>");
            for (_, d) in shape {
                let _ = write!(
                    h,
                    "<li class=\"bad\"><code>{}.{}</code>: {}</li>",
                    esc(&d.container),
                    esc(&d.object),
                    esc(&d.detail)
                );
            }
            h.push_str("</ul>");
        }
    }
    if !cross.is_empty() {
        h.push_str("<h2>Cross-store checks</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>");
        for c in cross {
            let class = if c.ok { "ok" } else { "bad" };
            let _ = write!(
                h,
                "<tr class=\"{class}\"><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
                esc(&c.name),
                if c.ok { "ok" } else { "FAILED" },
                esc(&c.detail)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// `offload check`'s outcome as one self-contained page: the verdict, then one row per answer.
pub fn render_check(report: &crate::job::check::CheckReport, meta: &[(&str, String)]) -> String {
    use crate::job::check::CheckStatus;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>offload check: {}</title><style>{STYLE}</style></head><body>",
        esc(&report.tutor_root)
    );
    let _ = write!(
        h,
        "<h1>offload check: {}</h1><table>",
        esc(&report.tutor_root)
    );
    for (label, value) in meta {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(label), esc(value));
    }
    h.push_str("</table>");
    if report.working {
        let _ = write!(
            h,
            "<p class=\"verdict ok\" id=\"verdict\">The platform works on its servers: {} check(s) ok, {} warning(s), {} skipped.</p>",
            report.count(CheckStatus::Ok),
            report.count(CheckStatus::Warning),
            report.count(CheckStatus::Skipped)
        );
    } else {
        let _ = write!(
            h,
            "<p class=\"verdict bad\" id=\"verdict\">NOT working: {} check(s) failed.</p>",
            report.count(CheckStatus::Failed)
        );
    }
    h.push_str(
        "<table><tr><th>service</th><th>check</th><th>result</th><th>answer</th><th>next</th></tr>",
    );
    for r in &report.results {
        let class = match r.status {
            CheckStatus::Failed => "bad",
            CheckStatus::Ok => "ok",
            _ => "",
        };
        let _ = write!(
            h,
            "<tr class=\"{class}\"><td>{}</td><td><code>{}</code></td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.service),
            esc(&r.name),
            r.status.label(),
            esc(&r.detail),
            esc(r.fix.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_it_prints() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
