//! `offload status`: the job's phases and per-unit progress from its catalog, and which process
//! holds the job; reads only (never takes the job's lock), so it works while a job runs.

use super::{Outcome, Output};
use crate::cli::StatusArgs;
use crate::core::catalog::Catalog;
use crate::core::StoreKind;
use crate::job::lock::JobLock;
use crate::settings::{default_job_dir, tutor_root};
use crate::ui::{lines, print};

pub fn status(args: StatusArgs, out: Output) -> anyhow::Result<Outcome> {
    let job_dir = args
        .job
        .clone()
        .unwrap_or_else(|| default_job_dir(&tutor_root(args.tutor_root.as_deref())));
    let catalog = Catalog::open(&job_dir)?;
    let phases = catalog.phases()?;
    let units = catalog.units(None)?;
    let holder = JobLock::holder(&job_dir); // read, never taken
    let progress = lines::from_catalog(&phases, &units, holder.is_some());
    let mut follow = Vec::new();
    for kind in StoreKind::ALL {
        if let Some(checkpoint) = catalog.follow_checkpoint(kind)? {
            follow.push((kind, checkpoint));
        }
    }
    let follow_json: Vec<_> = follow
        .iter()
        .map(|(kind, c)| serde_json::json!({"store": kind, "checkpoint": c}))
        .collect();
    let value = serde_json::json!({ "job": job_dir.display().to_string(), "holder": holder, "running": holder.is_some(), "progress": progress, "phases": phases, "units": units, "follow": follow_json });
    out.emit(&value, || {
        let mut text = format!(
            "Job {}\n{}",
            job_dir.display(),
            print::status(&phases, &units, holder.as_ref())
        );
        for (kind, c) in &follow {
            text.push_str(&format!(
                "Following {kind}: {} change(s) applied, lag {} (checkpoint at {})\n",
                c.events,
                print::lag(&c.lag),
                c.at
            ));
        }
        text
    });
    Ok(Outcome::Clean)
}
