//! `offload migrate`: plan, copy, (delta), verify and cutover as one resumable job, stopping
//! before cutover when anything differs, with one report for the whole platform.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::MigrateArgs;
use crate::commands::{if_exists, open_job, JobRequest, Outcome, Output};
use crate::core::delta::delta;
use crate::core::plan::make_plan;
use crate::core::runner::{RunOptions, Runner};
use crate::core::verify::{verify, UnitVerify, VerifyOptions, VerifyReport};
use crate::core::Store;
use crate::settings::Settings;
use crate::ui::html::{self, CrossCheck};
use crate::ui::print;

/// The steps of a maintenance window, for the plan and `--dry-run`.
pub fn maintenance_runbook() -> String {
    "Maintenance window, step by step:\n\
     1. Copy while the platform runs:        offload migrate --no-cutover (same flags)\n\
     2. Stop the platform's writers:         tutor local stop lms cms lms-worker cms-worker\n\
        (Kubernetes: tutor k8s stop lms cms lms-worker cms-worker)\n\
     3. Let the Celery queues drain, then stop the workers (queued tasks live in Redis DB 0)\n\
     4. Final pass, writers held off:        offload migrate --resume --delta --freeze-source\n\
        (copies only what changed since step 1, verifies everything, then rewrites config.yml)\n\
     5. Start on the new servers:            tutor config save && tutor local start -d\n\
     Roll back at any point before step 5 with: offload rollback\n"
        .to_string()
}

/// Write the HTML report.
pub fn write_report(
    path: &Path,
    report: &VerifyReport,
    cross: &[CrossCheck],
    job_dir: &Path,
) -> anyhow::Result<()> {
    let when = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let page = html::render(
        report,
        cross,
        &job_dir.display().to_string(),
        &[
            ("job folder", job_dir.display().to_string()),
            ("verified at", when),
            ("offload", env!("CARGO_PKG_VERSION").to_string()),
        ],
    );
    std::fs::write(path, page).with_context(|| format!("writing the report {}", path.display()))
}

/// Checks that span stores; each applies only when its stores are part of the job.
pub async fn cross_checks(_settings: &Settings) -> Vec<CrossCheck> {
    Vec::new()
}

pub async fn migrate(
    args: MigrateArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let copy = &args.copy;
    if args.dry_run {
        // Plan and checks only: nothing is written to a server, the Tutor root or a job folder.
        let inputs = crate::commands::inputs_for_cutover(&copy.job);
        let settings = Settings::resolve(&inputs, None)?;
        let plan = make_plan(&settings.stores()).await?;
        out.emit(
            &json!({"plan": plan, "runbook": maintenance_runbook()}),
            || format!("{}\n{}", print::plan(&plan), maintenance_runbook()),
        );
        if !plan.checks_pass() {
            anyhow::bail!("some prerequisite checks failed (see above); fix them before migrating");
        }
        return Ok(Outcome::Clean);
    }

    let job = open_job(
        JobRequest {
            args: &copy.job,
            create_users: copy.create_users,
            batch_rows: copy.batch_rows,
            resume: copy.resume,
            restart: copy.restart,
        },
        out.json,
    )
    .await?;
    let catalog = job.catalog.clone();
    catalog.event("info", None, None, "migrate started")?;

    // Writers are held off for the whole run when asked, and always released.
    let mut frozen: Vec<Arc<dyn Store>> = Vec::new();
    let mut notes = Vec::new();
    if args.freeze_source {
        for store in &job.stores {
            match store.freeze_source().await {
                Ok(Some(note)) => {
                    notes.push(note);
                    frozen.push(store.clone());
                }
                Ok(None) => notes.push(format!(
                    "{}: cannot hold writers off on this server; stop them yourself",
                    store.kind()
                )),
                Err(e) => {
                    thaw(&frozen).await;
                    return Err(e.into());
                }
            }
        }
    }
    let result = run_phases(&args, &job, out, &cancel, &mut notes).await;
    thaw(&frozen).await;
    let _ = catalog.event(
        "info",
        None,
        None,
        &format!(
            "migrate ended: {}",
            if result.is_ok() { "ok" } else { "error" }
        ),
    );
    result
}

async fn thaw(stores: &[Arc<dyn Store>]) {
    for s in stores {
        if let Err(e) = s.thaw_source().await {
            tracing::error!(store = %s.kind(), error = %e, "could not let the source's writers in again; do it by hand (MySQL: SET GLOBAL read_only = OFF)");
            eprintln!("ERROR: {e}. The source may still refuse writes: release it by hand (MySQL: SET GLOBAL read_only = OFF)");
        }
    }
}

async fn run_phases(
    args: &MigrateArgs,
    job: &crate::commands::OpenJob,
    out: Output,
    cancel: &CancellationToken,
    notes: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let copy = &args.copy;
    let catalog = &job.catalog;
    let parallel = copy.job.parallel.max(1);
    let reporter = out.reporter();

    // Copy: units already copied by an earlier run are skipped.
    catalog.phase_start("job", "copy")?;
    let runner = Runner {
        catalog: catalog.clone(),
        reporter: reporter.clone(),
        cancel: cancel.clone(),
        options: RunOptions {
            parallel,
            retries: copy.retries,
            if_exists: if_exists(copy.if_exists),
        },
    };
    let summary = runner.copy(&job.stores).await?;
    catalog.phase_done("job", "copy", "")?;
    notes.extend(summary.notes.iter().cloned());

    let delta_summary = if args.delta {
        catalog.phase_start("job", "delta")?;
        let d = delta(
            &job.stores,
            catalog.clone(),
            args.chunk_rows,
            parallel,
            copy.retries,
            reporter.clone(),
            cancel,
        )
        .await?;
        catalog.phase_done(
            "job",
            "delta",
            &format!("{} unit(s) changed", d.units_changed),
        )?;
        Some(d)
    } else {
        None
    };

    crate::core::failpoint::reached("before-verify");
    // Verify. Only when an earlier run was stopped part way through verifying do units it already
    // found matching keep that result; a finished verify is never trusted again, since either
    // side may have changed since.
    let interrupted_verify = catalog
        .phases()?
        .iter()
        .any(|p| p.store == "job" && p.phase == "verify" && p.done_at.is_none());
    let records = catalog.units(None)?;
    let (done, todo): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
        interrupted_verify
            && r.verify_state.as_deref() == Some("matched")
            && r.verify_detail.is_some()
    });
    let already: Vec<UnitVerify> = done
        .iter()
        .filter_map(|r| serde_json::from_str(r.verify_detail.as_deref().unwrap_or("")).ok())
        .collect();
    catalog.phase_start("job", "verify")?;
    let options = VerifyOptions {
        parallel,
        chunk_rows: args.chunk_rows.max(1),
        ..VerifyOptions::default()
    };
    let units = todo.into_iter().map(|r| r.unit).collect();
    let mut report = verify(
        &job.stores,
        units,
        &options,
        reporter.clone(),
        Some(catalog.clone()),
        cancel,
    )
    .await?;
    let verified_now = report.units.len();
    report.units.extend(already.iter().cloned());
    let cross = cross_checks(&job.settings).await;
    let clean = report.clean() && cross.iter().all(|c| c.ok);
    catalog.phase_done("job", "verify", if clean { "clean" } else { "differs" })?;
    if let Some(path) = &args.report {
        write_report(path, &report, &cross, &job.dir)?;
    }

    let mut cutover = None;
    if clean && !args.no_cutover {
        if job.settings.tutor.is_some() {
            crate::core::failpoint::reached("before-cutover");
            catalog.phase_start("job", "cutover")?;
            cutover = Some(crate::cutover_cmd::run_cutover(
                &job.settings,
                catalog,
                &job.dir,
                false,
                false,
            )?);
        } else {
            notes.push("no config.yml in the Tutor root: nothing to cut over".into());
        }
    }

    let summary_json = json!({
        "job": job.dir,
        "resumed": job.resumed,
        "copy": summary,
        "delta": delta_summary,
        "verify": report,
        "verified_now": verified_now,
        "verified_earlier": already.len(),
        "cross_checks": cross,
        "clean": clean,
        "cutover": cutover.as_ref().map(|c| &c.value),
        "notes": notes,
    });
    out.emit(&summary_json, || {
        let mut text = String::new();
        if job.resumed {
            text.push_str(&format!(
                "Resumed the job in {}: {} unit(s) were already copied and skipped, {} already verified.\n",
                job.dir.display(),
                summary.units_already_done,
                already.len()
            ));
        }
        text.push_str(print::copy_summary(&summary, &job.dir).lines().next().unwrap_or(""));
        text.push('\n');
        for n in notes.iter() {
            text.push_str(&format!("  {n}\n"));
        }
        if let Some(d) = &delta_summary {
            text.push_str(&format!(
                "Delta pass: {} of {} unit(s) had changed; {} key range(s), {} row(s) copied again{}.\n",
                d.units_changed,
                d.units_checked,
                d.chunks_recopied,
                d.rows_recopied,
                if d.changed.is_empty() { String::new() } else { format!(" ({})", d.changed.join(", ")) }
            ));
        }
        for c in &cross {
            text.push_str(&format!("{} {}: {}\n", if c.ok { "ok    " } else { "FAILED" }, c.name, c.detail));
        }
        text.push_str(&print::verify_report(&report));
        if let Some(c) = &cutover {
            text.push_str(&c.text);
        }
        if !clean {
            text.push_str("Stopped before cutover: config.yml is unchanged.\n");
        } else if args.no_cutover {
            text.push_str("Cutover skipped (--no-cutover). When ready: offload cutover (same flags).\n");
        }
        text
    });
    Ok(if clean {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}
