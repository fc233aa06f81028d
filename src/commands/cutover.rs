//! `offload cutover`: point Tutor's config.yml at the migrated servers once the job's
//! verification passed for them (the gate is the job layer's), or, without a job and with
//! `--force`, at the servers the target flags name; and print the change and the Tutor commands
//! to run next.

use super::{inputs, Outcome, Output};
use crate::cli::CutoverArgs;
use crate::core::catalog::Catalog;
use crate::job::lock::JobLock;
use crate::job::{check_job_folder, CutoverOutcome};
use crate::settings::Settings;
use crate::ui::print;

pub async fn cutover(args: CutoverArgs, out: Output) -> anyhow::Result<Outcome> {
    let inputs = inputs(&args.job);
    let job_dir = inputs.job_dir();
    check_job_folder(&job_dir)?;
    let done = if Catalog::exists(&job_dir) {
        // Held until the cutover ends; a dry run writes nothing and takes no lock.
        let _lock = (!args.dry_run)
            .then(|| JobLock::acquire(&job_dir))
            .transpose()?;
        let catalog = Catalog::open(&job_dir)?;
        let setup = catalog.setup()?;
        let settings = Settings::resolve(&inputs, Some(&setup.endpoints))?;
        crate::job::cutover(&settings, &catalog, &job_dir, args.dry_run, args.force)?
    } else {
        // No job: the stores named by target flags, for servers filled by other means.
        let settings = Settings::resolve(&inputs, None)?;
        crate::job::cutover_without_job(&settings, args.dry_run, args.force)?
    };
    report_forced(&done);
    if out.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!("{}", print::cutover(&done));
    }
    Ok(Outcome::Clean)
}

/// Warn about each store cut over without a passing verify (`--force`).
pub fn report_forced(done: &CutoverOutcome) {
    for f in &done.forced {
        eprintln!(
            "WARNING: cutting over {} although it is not verified ({}), because --force was given",
            f.store, f.why
        );
    }
}
