//! `offload follow`: keep the job's targets in step with their sources after the copy, until
//! stopped or handed over to the final pass; prints what each store applied and its lag.

use tokio_util::sync::CancellationToken;

use super::{inputs, Outcome, Output};
use crate::cli::FollowArgs;
use crate::job::{FollowOptions, FollowUntil, JobFolder};
use crate::settings::Settings;
use crate::ui::print;

pub async fn follow(
    args: FollowArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let follow_inputs = inputs(&args.job);
    let Some(folder) = JobFolder::existing(follow_inputs.job_dir())? else {
        anyhow::bail!(
            "no job in {}: following starts after a copy. Run `offload copy` (or `offload migrate --no-cutover`) first, or point --job at the job folder",
            follow_inputs.job_dir().display()
        );
    };
    let recorded = folder
        .recorded_endpoints()?
        .filter(|_| !follow_inputs.names_endpoints());
    let settings = Settings::resolve(&follow_inputs, recorded.as_ref())?;
    let job = folder.open(settings).await?;
    let options = FollowOptions {
        until: FollowUntil::Stopped,
        poll: args.poll,
    };
    let summary = job.follow(&options, out.reporter(), &cancel).await?;
    out.emit(&summary, || print::follow_summary(&summary));
    if summary.interrupted {
        return Err(crate::core::CoreError::Interrupted.into());
    }
    Ok(Outcome::Clean)
}
