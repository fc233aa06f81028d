//! Verifying a job: every unit compared by content digests, the outcome recorded per unit and as
//! the job's `verify` phase; a verify that was stopped part way keeps what it already found
//! matching when asked to resume, and a finished one is never trusted again.

use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Job, JobError};
use crate::core::catalog::{PhaseOwner, Verdict};
use crate::core::progress::{Phase, Reporter};
use crate::core::verify::{verify, UnitVerify, VerifyOptions, VerifyReport};
use crate::settings::Settings;

/// What a job's verify found.
#[derive(Debug, Serialize)]
pub struct JobVerify {
    pub report: VerifyReport,
    /// Units compared in this run.
    pub verified_now: usize,
    /// Units an interrupted earlier verify had already found matching, kept.
    pub verified_earlier: usize,
}

impl Job {
    /// Start the job's `verify` phase and compare the units. With `resume_interrupted`, units
    /// an interrupted earlier verify found matching keep that result; otherwise every unit is
    /// compared again. The phase stays open: [`Job::record_verify`] closes it with the verdict,
    /// after whatever else the caller counts in (reindex, cross-store checks).
    pub async fn verify(
        &self,
        options: &VerifyOptions,
        resume_interrupted: bool,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<JobVerify, JobError> {
        let interrupted =
            resume_interrupted && self.catalog.last_verify()? == Some(Verdict::Unfinished);
        let records = self.catalog.units(None)?;
        let (done, todo): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            interrupted && r.verify_state.as_deref() == Some("matched") && r.verify_detail.is_some()
        });
        let already: Vec<UnitVerify> = done
            .iter()
            .filter_map(|r| serde_json::from_str(r.verify_detail.as_deref().unwrap_or("")).ok())
            .collect();
        self.catalog.phase_start(PhaseOwner::Job, Phase::Verify)?;
        let units = todo.into_iter().map(|r| r.unit).collect();
        let mut report = verify(
            &self.stores,
            units,
            options,
            reporter,
            Some(self.catalog.clone()),
            cancel,
        )
        .await?;
        let verified_now = report.units.len();
        let verified_earlier = already.len();
        report.units.extend(already);
        Ok(JobVerify {
            report,
            verified_now,
            verified_earlier,
        })
    }

    /// Close the job's `verify` phase with its verdict; cutover trusts only a clean one.
    pub fn record_verify(&self, clean: bool) -> Result<(), JobError> {
        self.catalog
            .phase_done(PhaseOwner::Job, Phase::Verify, Verdict::of(clean))?;
        Ok(())
    }
}

/// Verify without a job folder: plan the units afresh from the settings and compare them.
pub async fn verify_unplanned(
    settings: &Settings,
    options: &VerifyOptions,
    reporter: Arc<dyn Reporter>,
    cancel: &CancellationToken,
) -> Result<VerifyReport, JobError> {
    super::reach::check(settings).await?;
    let stores = settings.open_stores();
    let mut units = Vec::new();
    for s in &stores {
        units.extend(s.inventory().await?);
    }
    Ok(verify(&stores, units, options, reporter, None, cancel).await?)
}
