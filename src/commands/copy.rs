//! `offload copy`: open (or resume) the job, hold writers off when asked, copy, run the delta
//! pass when asked, let writers in again, print the summary.

use tokio_util::sync::CancellationToken;

use super::{if_exists, inputs, open_job, report_thaw_failures, Outcome, Output};
use crate::cli::CopyArgs;
use crate::core::delta::DeltaSummary;
use crate::core::runner::CopySummary;
use crate::job::{CopyOptions, Job, OpenRequest};
use crate::settings::Inputs;
use crate::ui::print;

/// The job's inputs with the copy's own options.
pub fn copy_inputs(args: &CopyArgs) -> Inputs {
    Inputs {
        create_users: args.create_users,
        batch_rows: args.batch_rows,
        ..inputs(&args.job)
    }
}

/// The copy's options for the job layer.
pub fn copy_options(args: &CopyArgs) -> CopyOptions {
    CopyOptions {
        parallel: args.job.parallel.max(1),
        retries: args.retries,
        if_exists: if_exists(args.if_exists),
        chunk_rows: args.chunk_rows,
        stall_timeout: (!args.stall_timeout.is_zero()).then_some(args.stall_timeout),
    }
}

/// Open the job a copy or migrate asks for.
pub async fn open(args: &CopyArgs, out: Output) -> anyhow::Result<Job> {
    let request = OpenRequest {
        resume: args.resume,
        restart: args.restart,
        if_exists: if_exists(args.if_exists),
    };
    open_job(&copy_inputs(args), request, out).await
}

pub async fn copy(
    args: CopyArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let job = open(&args, out).await?;
    let mut notes = Vec::new();
    let frozen = job.freeze_sources(args.freeze_source, &mut notes).await?;
    let result = copy_and_delta(&args, &job, out, &cancel).await;
    report_thaw_failures(&job.thaw_sources(frozen).await);
    let (mut summary, delta) = result?;
    job.catalog.event("info", None, None, "copy finished")?;
    summary.notes.extend(notes);
    let output = CopyOutput { summary, delta };
    out.emit(&output, || {
        let mut text = print::copy_summary(&output.summary, &job.dir);
        if let Some(d) = &output.delta {
            text.push_str(&print::delta_summary(d));
        }
        text
    });
    Ok(Outcome::Clean)
}

/// What `offload copy` reports: the copy, and the delta pass when one ran.
#[derive(serde::Serialize)]
struct CopyOutput {
    #[serde(flatten)]
    summary: CopySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaSummary>,
}

async fn copy_and_delta(
    args: &CopyArgs,
    job: &Job,
    out: Output,
    cancel: &CancellationToken,
) -> anyhow::Result<(CopySummary, Option<DeltaSummary>)> {
    let options = copy_options(args);
    let summary = job.copy(&options, out.reporter(), cancel).await?;
    let delta = if args.delta {
        Some(job.delta(&options, out.reporter(), cancel).await?)
    } else {
        None
    };
    Ok((summary, delta))
}
