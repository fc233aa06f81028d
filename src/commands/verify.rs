//! `offload verify`: compare source and target by content, for the job in the job folder (and
//! record the outcome there) or, without one, for the units planned afresh from the flags.

use std::path::Path;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use super::{inputs, Outcome, Output};
use crate::cli::VerifyArgs;
use crate::core::verify::{CrossCheck, VerifyOptions, VerifyReport};
use crate::job::{verify_unplanned, JobFolder, VerifyScope};
use crate::settings::{Inputs, Settings};
use crate::ui::{html, print};

pub async fn verify(
    args: VerifyArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let verify_inputs = Inputs {
        deep: args.deep,
        ..inputs(&args.job)
    };
    if let Some(path) = &args.report {
        check_output_path(path, "--report")?;
    }
    let job_dir = verify_inputs.job_dir();
    let options = VerifyOptions {
        parallel: args.job.parallel.max(1),
        chunk_rows: args.chunk_rows.max(1),
        ..VerifyOptions::default()
    };
    let mut planned = false;
    let report = match JobFolder::existing(job_dir.clone())? {
        Some(folder) => {
            let recorded = folder
                .recorded_endpoints()?
                .filter(|_| !verify_inputs.names_endpoints());
            let settings = Settings::resolve(&verify_inputs, recorded.as_ref())?;
            let job = folder.open(settings).await?;
            planned = true;
            let verified = job
                .verify(&options, false, VerifyScope::Full, out.reporter(), &cancel)
                .await?;
            job.record_verify(verified.report.clean(), &verified.report)?;
            verified.report
        }
        None => {
            let settings = Settings::resolve(&verify_inputs, None)?;
            verify_unplanned(&settings, &options, out.reporter(), &cancel).await?
        }
    };
    let job = planned.then_some(job_dir.as_path());
    out.emit(&report, || print::verify_report(&report, job));
    if let Some(path) = &args.report {
        write_report(path, &report, &[], &job_dir)?;
    }
    if report.had_errors()
        && report
            .units
            .iter()
            .all(|u| u.error.is_some() || u.matched())
        && report.shape.is_empty()
    {
        let first = report
            .units
            .iter()
            .find_map(|u| u.error.clone())
            .unwrap_or_default();
        bail!("verification could not finish: {first}");
    }
    Ok(if report.clean() {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}

/// Refuse an output file that could not be written, before any work: its folder must exist and
/// be writable, and the path must not be a folder.
pub fn check_output_path(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {} is a folder: give the path of the file to write, e.g. {}",
            path.display(),
            path.join("report.html").display()
        );
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist; create it, or choose another path. Nothing was done",
            path.display(),
            folder.display()
        );
    }
    // Opening for append creates nothing that was not asked for, and does not change an
    // existing file; a new file made here is removed again.
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| {
            format!(
                "{flag} {} cannot be written; choose a writable path. Nothing was done",
                path.display()
            )
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
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
