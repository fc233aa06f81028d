//! Verifying a job: every unit compared by content digests, the outcome recorded per unit and as
//! the job's `verify` phase; a verify that was stopped part way keeps what it already found
//! matching when asked to resume, and a finished one is never trusted again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Job, JobError};
use crate::core::catalog::{PhaseOwner, Verdict};
use crate::core::progress::{Phase, Reporter};
use crate::core::verify::{verify, UnitVerify, VerifyOptions, VerifyReport, WindowScope};
use crate::core::StoreKind;
use crate::settings::Settings;

/// How much a job's verify compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyScope {
    /// Every unit, chunk by chunk: what runs while the platform still runs, and what
    /// `offload verify` always does.
    Full,
    /// The verify in the maintenance window, after a clean full verify: for the `covered`
    /// stores, only what followers and delta passes wrote since (the keys a follower touched,
    /// the units a delta pass copied again); every unit of the other stores. A store is covered
    /// when this run holds its writers off and its follower caught up or its delta pass ran, so
    /// every change since the full verify is recorded as touched. Falls back to a full verify
    /// when there is no clean full verify to rely on.
    Window { covered: Vec<StoreKind> },
}

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
        scope: VerifyScope,
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<JobVerify, JobError> {
        if let VerifyScope::Window { covered } = &scope {
            if let Some(at) = self.catalog.last_full_verify()? {
                return self
                    .verify_window(options, at, covered, reporter, cancel)
                    .await;
            }
        }
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

    /// Compare only what changed since the clean full verify that finished at `at`.
    async fn verify_window(
        &self,
        options: &VerifyOptions,
        at: String,
        covered: &[StoreKind],
        reporter: Arc<dyn Reporter>,
        cancel: &CancellationToken,
    ) -> Result<JobVerify, JobError> {
        let mut keys = HashMap::new();
        let mut whole = HashSet::new();
        let mut scope = WindowScope {
            last_full_verify: at,
            ..WindowScope::default()
        };
        let records = self.catalog.units(None)?;
        for store in &self.stores {
            let kind = store.kind();
            if !covered.contains(&kind) {
                whole.extend(
                    records
                        .iter()
                        .filter(|r| r.unit.store == kind)
                        .map(|r| (kind, r.unit.name.clone())),
                );
                continue;
            }
            for (unit, touched) in self.catalog.touched(kind)? {
                match touched {
                    Some(k) => {
                        scope.keys += k.len() as u64;
                        keys.insert((kind, unit), k);
                    }
                    None => {
                        whole.insert((kind, unit));
                    }
                }
            }
        }
        let all_units: Vec<_> = records.iter().map(|r| r.unit.clone()).collect();
        let (units, untouched): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            let id = (r.unit.store, r.unit.name.clone());
            keys.contains_key(&id) || whole.contains(&id)
        });
        scope.units_by_key = keys.len();
        scope.units_whole = whole.len();
        scope.units_untouched = untouched.len();
        self.catalog.phase_start(PhaseOwner::Job, Phase::Verify)?;
        let options = VerifyOptions {
            keys: Arc::new(keys),
            ..options.clone()
        };
        let units = units.into_iter().map(|r| r.unit).collect();
        let mut report = verify(
            &self.stores,
            units,
            &options,
            reporter,
            Some(self.catalog.clone()),
            cancel,
        )
        .await?;
        // Shape (schema, indexes, options) is cheap to read and no touched key reveals a change
        // of it: compared for every unit of the job, as a full verify does.
        report.shape.clear();
        for store in &self.stores {
            let mine: Vec<_> = all_units
                .iter()
                .filter(|u| u.store == store.kind())
                .cloned()
                .collect();
            for d in store.compare_shape(&mine).await? {
                report.shape.push((store.kind(), d));
            }
        }
        report.window = Some(scope);
        Ok(JobVerify {
            verified_now: report.units.len(),
            verified_earlier: 0,
            report,
        })
    }

    /// Close the job's `verify` phase with its verdict; cutover trusts only a clean one. A full
    /// verify also becomes the baseline of later verifies in the window (what differed then is
    /// compared again there); a clean verify in the window leaves nothing touched to check.
    pub fn record_verify(&self, clean: bool, report: &VerifyReport) -> Result<(), JobError> {
        self.catalog
            .phase_done(PhaseOwner::Job, Phase::Verify, Verdict::of(clean))?;
        match report.window {
            None => {
                let differing: Vec<_> = report
                    .units
                    .iter()
                    .filter(|u| !u.matched())
                    .map(|u| (u.store, u.unit.clone()))
                    .collect();
                self.catalog.record_full_verify(&differing)?;
            }
            Some(_) if report.clean() => {
                for store in &self.stores {
                    self.catalog.clear_touched(store.kind())?;
                }
            }
            Some(_) => {}
        }
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
