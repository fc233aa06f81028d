//! `offload migrate`: plan, copy, (delta), verify, reindex and cutover as one resumable job,
//! stopping before cutover when anything differs, with one report for the whole platform.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::MigrateArgs;
use crate::commands::{
    delta_pass, freeze_sources, if_exists, open_job, thaw_sources, JobRequest, Outcome, Output,
};
use crate::core::plan::make_plan;
use crate::core::runner::{RunOptions, Runner};
use crate::core::verify::{verify, UnitVerify, VerifyOptions, VerifyReport};
use crate::settings::Settings;
use crate::ui::html::{self, CrossCheck};
use crate::ui::print;

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
        let search = match settings.meilisearch {
            Some(_) => crate::reindex_cmd::plan_section(&copy.job).await?,
            None => None,
        };
        out.emit(
            &json!({"plan": plan, "meilisearch": search, "runbook": maintenance_runbook()}),
            || {
                let search = search.as_ref().map(crate::reindex_cmd::render_plan);
                format!(
                    "{}{}\n{}",
                    print::plan(&plan),
                    search.unwrap_or_default(),
                    maintenance_runbook()
                )
            },
        );
        if !plan.checks_pass() || !search.as_ref().is_none_or(crate::reindex_cmd::plan_ok) {
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
    let mut notes = Vec::new();
    let frozen = freeze_sources(&job, args.copy.freeze_source, &mut notes).await?;
    let result = run_phases(&args, &job, out, &cancel, &mut notes).await;
    thaw_sources(&catalog, &frozen).await;
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

    let delta_summary = if copy.delta {
        Some(delta_pass(copy, job, reporter.clone(), cancel).await?)
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
        chunk_rows: copy.chunk_rows.max(1),
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

    // Reindex: the search indexes are rebuilt from the migrated data once it is proven equal.
    let copied_now =
        summary.units_copied_now > 0 || delta_summary.as_ref().is_some_and(|d| d.units_changed > 0);
    // [signals] the reindex has no checkpoint: a stop request drops it (indexes are swapped whole).
    let reindexed = tokio::select! {
        r = reindex_phase(job, catalog, report.clean(), copied_now, reporter, notes) => r?,
        _ = cancel.cancelled() => return Err(crate::core::CoreError::Interrupted.into()),
    };
    let reindex_clean = reindexed.as_ref().is_none_or(|r| r.clean());

    let cross = crate::cross_checks::run(&job.settings, reindexed.as_ref()).await;
    let clean = report.clean() && reindex_clean && cross.iter().all(|c| c.ok);
    catalog.phase_done("job", "verify", if clean { "clean" } else { "differs" })?;
    if let Some(path) = &args.report {
        write_report(path, &report, &cross, &job.dir)?;
    }

    if cancel.is_cancelled() {
        // [signals] asked to stop after the verify: config.yml is left alone.
        return Err(crate::core::CoreError::Interrupted.into());
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
        "reindex": reindexed,
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
            text.push_str(&print::delta_summary(d));
        }
        if let Some(r) = &reindexed {
            text.push_str(&crate::reindex_cmd::render(r));
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

/// Rebuild the search indexes when the job has a Meilisearch target and the data verified equal.
/// Skipped, and said so, when an earlier run of the job rebuilt them cleanly and nothing was
/// copied since.
async fn reindex_phase(
    job: &crate::commands::OpenJob,
    catalog: &crate::core::catalog::Catalog,
    data_clean: bool,
    copied_now: bool,
    reporter: Arc<dyn crate::core::progress::Reporter>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<crate::reindex::ReindexReport>> {
    if job.settings.meilisearch.is_none() {
        return Ok(None);
    }
    if !data_clean {
        notes.push("reindex skipped: the data differs, and the indexes are built from it".into());
        return Ok(None);
    }
    let done_before = catalog.phases()?.iter().any(|p| {
        p.store == "meilisearch"
            && p.phase == "reindex"
            && p.done_at.is_some()
            && p.detail.as_deref() == Some("clean")
    });
    if job.resumed && done_before && !copied_now {
        notes.push("reindex skipped: an earlier run rebuilt and verified every index, and nothing was copied since".into());
        return Ok(None);
    }
    crate::core::failpoint::reached("before-reindex");
    catalog.phase_start("meilisearch", "reindex")?;
    let report = crate::reindex_cmd::reindex_in_job(&job.settings, reporter).await?;
    catalog.phase_done(
        "meilisearch",
        "reindex",
        if report.clean() { "clean" } else { "differs" },
    )?;
    Ok(Some(report))
}
