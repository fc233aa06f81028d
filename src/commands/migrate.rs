//! `offload migrate`: the whole job as the runbook runs it: open (or resume) the job, hold
//! writers off when asked, copy, the delta pass, verify, reindex, the cross-store checks, then
//! cut over unless anything differs; one report for the whole platform.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::copy::{copy_options, open};
use super::cutover::report_forced;
use super::verify::{check_output_path, write_report};
use super::{reindex, report_thaw_failures, Outcome, Output};
use crate::cli::MigrateArgs;
use crate::core::plan::make_plan;
use crate::core::verify::VerifyOptions;
use crate::core::StoreKind;
use crate::job::{FollowOptions, FollowUntil, Job, ReindexPhase, VerifyScope};
use crate::search::plan::plan_ok;
use crate::settings::Settings;
use crate::ui::print;

pub async fn migrate(
    args: MigrateArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    if let Some(path) = &args.report {
        check_output_path(path, "--report")?;
    }
    if args.dry_run {
        return dry_run(&args, out).await;
    }
    if args.copy.resume {
        // The final pass takes the job over from a follower still running it.
        let job_dir = super::copy::copy_inputs(&args.copy).job_dir();
        if crate::job::take_over_from_follower(&job_dir, HANDOVER_WAIT).await? {
            eprintln!("The follower of this job checkpointed and handed the job over.");
        }
    }
    let job = open(&args.copy, out).await?;
    job.catalog.event("info", None, None, "migrate started")?;

    // Writers are held off for the whole run when asked, and always released.
    let mut notes = Vec::new();
    let frozen = job
        .freeze_sources(args.copy.freeze_source, &mut notes)
        .await?;
    let result = run_phases(&args, &job, out, &cancel, &mut notes).await;
    report_thaw_failures(&job.thaw_sources(frozen).await);
    let _ = job.catalog.event(
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

/// Longest the final pass waits for a running follower to checkpoint and let go of the job.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a follower of the final pass looks for changes while catching up.
const CATCH_UP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Plan and checks only: nothing is written to a server, the Tutor root or a job folder.
async fn dry_run(args: &MigrateArgs, out: Output) -> anyhow::Result<Outcome> {
    let settings = Settings::resolve(&super::inputs(&args.copy.job), None)?;
    super::check_reachable(&settings).await?;
    let mut plan = make_plan(&settings.open_stores()).await?;
    plan.tls_warnings = settings.tls_warnings();
    let search = match settings.meilisearch {
        Some(_) => reindex::plan_section(&args.copy.job).await?,
        None => None,
    };
    let runbook = print::maintenance_runbook();
    out.emit(
        &json!({"plan": plan, "meilisearch": search, "runbook": runbook}),
        || {
            let search = search.as_ref().map(print::search_plan);
            format!(
                "{}{}\n{}",
                print::plan(&plan),
                search.unwrap_or_default(),
                runbook
            )
        },
    );
    if !plan.checks_pass() || !search.as_ref().is_none_or(plan_ok) {
        anyhow::bail!("some prerequisite checks failed (see above); fix them before migrating");
    }
    Ok(Outcome::Clean)
}

/// The phases in the runbook's order; what differs stops the run before cutover.
async fn run_phases(
    args: &MigrateArgs,
    job: &Job,
    out: Output,
    cancel: &CancellationToken,
    notes: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let copy = &args.copy;
    let reporter = out.reporter();
    let options = copy_options(copy);

    // Copy: units already copied by an earlier run are skipped.
    let summary = job.copy(&options, reporter.clone(), cancel).await?;
    notes.extend(summary.notes.iter().cloned());
    let verify_options = VerifyOptions {
        parallel: options.parallel,
        chunk_rows: copy.chunk_rows.max(1),
        ..VerifyOptions::default()
    };
    if args.follow {
        return copy_verify_follow(job, out, cancel, summary, &verify_options).await;
    }

    // The final pass (a resumed run that holds the sources' writers off): followed stores catch
    // up with their change streams and the others get the delta pass; each such store is then
    // covered, so the verify compares only what changed since the last full verify. A first
    // run that holds writers off from the start needs neither.
    let frozen = copy.freeze_source;
    let mut covered: Vec<StoreKind> = Vec::new();
    let followed = if frozen && copy.resume && !args.no_follow && job.has_follow_positions()? {
        let options = FollowOptions {
            until: FollowUntil::CaughtUp,
            poll: CATCH_UP_POLL,
        };
        let f = job.follow(&options, reporter.clone(), cancel).await?;
        if f.interrupted {
            return Err(crate::core::CoreError::Interrupted.into());
        }
        covered.extend(f.followed.iter().filter(|s| s.caught_up).map(|s| s.store));
        Some(f)
    } else {
        None
    };
    let unfollowed: Vec<StoreKind> = job
        .stores
        .iter()
        .map(|s| s.kind())
        .filter(|k| !covered.contains(k))
        .collect();
    // After a catch-up, the stores without a follower need their delta pass for the same
    // window, asked for or not.
    let delta_summary = if (copy.delta || followed.is_some()) && !unfollowed.is_empty() {
        let d = job
            .delta_of(&unfollowed, &options, reporter.clone(), cancel)
            .await?;
        if frozen {
            covered.extend(unfollowed.iter().copied());
        }
        Some(d)
    } else {
        None
    };

    crate::core::failpoint::reached("before-verify");
    // Verify, keeping what an interrupted earlier verify already found matching.
    let scope = if args.full_verify || covered.is_empty() {
        VerifyScope::Full
    } else {
        VerifyScope::Window { covered }
    };
    let verified = job
        .verify(&verify_options, true, scope, reporter.clone(), cancel)
        .await?;
    let report = &verified.report;

    // Reindex: the search indexes are rebuilt from the migrated data once it is proven equal.
    let copied_now = summary.units_copied_now > 0
        || delta_summary.as_ref().is_some_and(|d| d.units_changed > 0)
        || followed
            .as_ref()
            .is_some_and(|f| f.followed.iter().any(|s| s.events > 0));
    // The reindex has no checkpoint: a stop request drops it (indexes are swapped whole).
    let reindexed = tokio::select! {
        r = job.reindex_phase(report.clean(), copied_now, reporter) => r?,
        _ = cancel.cancelled() => return Err(crate::core::CoreError::Interrupted.into()),
    };
    if let ReindexPhase::Skipped(why) = &reindexed {
        notes.push(why.clone());
    }
    let reindex_clean = reindexed.report().is_none_or(|r| r.clean());

    let cross = job.cross_checks(reindexed.report()).await;
    let clean = report.clean() && reindex_clean && cross.iter().all(|c| c.ok);
    job.record_verify(clean, report)?;
    if let Some(path) = &args.report {
        write_report(path, report, &cross, &job.dir)?;
    }

    if cancel.is_cancelled() {
        // Asked to stop after the verify: config.yml is left alone.
        return Err(crate::core::CoreError::Interrupted.into());
    }
    let mut cutover = None;
    if clean && !args.no_cutover {
        if job.settings.tutor.is_some() {
            crate::core::failpoint::reached("before-cutover");
            job.catalog.phase_start(
                crate::core::catalog::PhaseOwner::Job,
                crate::core::progress::Phase::Cutover,
            )?;
            let done = crate::job::cutover(&job.settings, &job.catalog, &job.dir, false, false)?;
            report_forced(&done);
            cutover = Some(done);
        } else {
            notes.push("no config.yml in the Tutor root: nothing to cut over".into());
        }
    }

    let summary_json = json!({
        "job": job.dir,
        "resumed": job.resumed,
        "copy": summary,
        "delta": delta_summary,
        "follow": followed,
        "verify": report,
        "verified_now": verified.verified_now,
        "verified_earlier": verified.verified_earlier,
        "reindex": reindexed.report(),
        "cross_checks": cross,
        "clean": clean,
        "cutover": cutover,
        "notes": notes,
    });
    out.emit(&summary_json, || {
        let mut text = String::new();
        if job.resumed {
            text.push_str(&format!(
                "Resumed the job in {}: {} unit(s) were already copied and skipped, {} already verified.\n",
                job.dir.display(),
                summary.units_already_done,
                verified.verified_earlier
            ));
        }
        text.push_str(print::copy_summary(&summary, &job.dir).lines().next().unwrap_or(""));
        text.push('\n');
        for n in notes.iter() {
            text.push_str(&format!("  {n}\n"));
        }
        if let Some(f) = &followed {
            text.push_str(&print::follow_summary(f));
        }
        if let Some(d) = &delta_summary {
            text.push_str(&print::delta_summary(d));
        }
        if let Some(r) = reindexed.report() {
            text.push_str(&print::reindex_report(r));
        }
        for c in &cross {
            text.push_str(&format!("{} {}: {}\n", if c.ok { "ok    " } else { "FAILED" }, c.name, c.detail));
        }
        text.push_str(&print::verify_report(report, Some(&job.dir)));
        if let Some(c) = &cutover {
            text.push_str(&print::cutover(c));
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

/// `migrate --follow`: after the copy, a full verify (the baseline the final pass's verify in
/// the window starts from; differences here are rows the platform is still changing, compared
/// again in the window), then follow until stopped or handed over. Never cuts over.
async fn copy_verify_follow(
    job: &Job,
    out: Output,
    cancel: &CancellationToken,
    summary: crate::core::runner::CopySummary,
    verify_options: &VerifyOptions,
) -> anyhow::Result<Outcome> {
    let reporter = out.reporter();
    let verified = job
        .verify(
            verify_options,
            true,
            VerifyScope::Full,
            reporter.clone(),
            cancel,
        )
        .await?;
    job.record_verify(verified.report.clean(), &verified.report)?;
    let options = FollowOptions {
        until: FollowUntil::Stopped,
        poll: std::time::Duration::from_secs(1),
    };
    let followed = job.follow(&options, reporter, cancel).await?;
    let value = json!({
        "job": job.dir,
        "copy": summary,
        "verify": verified.report,
        "follow": followed,
    });
    out.emit(&value, || {
        let mut text = print::copy_summary(&summary, &job.dir);
        text.push_str(&format!(
            "Full verify: {} of {} unit(s) matched{}.\n",
            verified.report.units.len() - verified.report.units_differing(),
            verified.report.units.len(),
            if verified.report.clean() {
                ""
            } else {
                " (units the platform is still changing are compared again in the final pass)"
            }
        ));
        text.push_str(&print::follow_summary(&followed));
        text.push_str(
            "Final pass, when ready: offload migrate --resume --freeze-source (same flags).\n",
        );
        text
    });
    if followed.interrupted {
        return Err(crate::core::CoreError::Interrupted.into());
    }
    Ok(Outcome::Clean)
}
