//! The reindex phase of a job and its gate: the search indexes are rebuilt from the migrated
//! MySQL and MongoDB only once the data verified equal, and not again when an earlier run rebuilt
//! them cleanly and nothing was copied since.

use std::path::Path;
use std::sync::Arc;

use super::{Job, JobError};
use crate::core::catalog::{Catalog, Verdict};
use crate::core::progress::{Phase, Reporter};
use crate::core::{Side, StoreKind};
use crate::resolve::config_text;
use crate::search::client::MeilisearchClient;
use crate::search::rebuild::RebuildOptions;
use crate::search::source::{MongoSource, SourceReader};
use crate::search::specs::IndexKind;
use crate::search::{self, Mode, ReindexJob, ReindexReport};
use crate::settings::Settings;

/// How the reindex phase of a run went.
#[derive(Debug)]
pub enum ReindexPhase {
    /// The job has no Meilisearch target.
    NotInJob,
    /// Not rebuilt, and why.
    Skipped(String),
    /// Rebuilt, swapped in and checked.
    Rebuilt(Box<ReindexReport>),
}

impl ReindexPhase {
    /// The rebuild's report, when one ran.
    pub fn report(&self) -> Option<&ReindexReport> {
        match self {
            ReindexPhase::Rebuilt(r) => Some(r),
            _ => None,
        }
    }
}

/// The platform's database of a kind, from config.yml or Tutor's default.
fn platform_database(settings: &Settings, key: &str) -> String {
    settings
        .tutor
        .as_ref()
        .and_then(|t| config_text(t, key))
        .unwrap_or_else(|| "openedx".into())
}

/// Where a job reads the source of truth: the migrated MySQL and MongoDB when the job moves them
/// (so the indexes match what the platform uses after cutover).
pub async fn source_of_truth(settings: &Settings) -> Result<SourceReader, JobError> {
    let Some(mysql) = settings.mysql() else {
        return Err(JobError::Refused("the Meilisearch indexes are built from the platform's MySQL, and this job does not migrate it: add mysql to --stores, or run `offload reindex --meilisearch-source source` on its own".into()));
    };
    let database = platform_database(settings, "OPENEDX_MYSQL_DATABASE");
    let mongo = match settings.mongodb() {
        Some(m) => Some(
            MongoSource::connect(
                &m.target,
                Side::Target,
                &platform_database(settings, "MONGODB_DATABASE"),
            )
            .await?,
        ),
        None => None,
    };
    Ok(SourceReader::new(&mysql.target, &database, mongo))
}

impl Job {
    /// Rebuild the search indexes when the job has a Meilisearch target and the data verified
    /// equal (`data_clean`); skipped, and said why, when an earlier run of the job rebuilt them
    /// cleanly and nothing was copied since (`copied_now`).
    pub async fn reindex_phase(
        &self,
        data_clean: bool,
        copied_now: bool,
        reporter: Arc<dyn Reporter>,
    ) -> Result<ReindexPhase, JobError> {
        let Some(m) = &self.settings.meilisearch else {
            return Ok(ReindexPhase::NotInJob);
        };
        if !data_clean {
            return Ok(ReindexPhase::Skipped(
                "reindex skipped: the data differs, and the indexes are built from it".into(),
            ));
        }
        if self.resumed && self.catalog.last_reindex()? == Some(Verdict::Clean) && !copied_now {
            return Ok(ReindexPhase::Skipped("reindex skipped: an earlier run rebuilt and verified every index, and nothing was copied since".into()));
        }
        crate::core::failpoint::reached("before-reindex");
        self.catalog
            .phase_start(StoreKind::Meilisearch, Phase::Reindex)?;
        let target = MeilisearchClient::new(&m.url, m.master_key.clone(), "target")?;
        search::check_target(&target).await?;
        let source = source_of_truth(&self.settings).await?;
        let job = ReindexJob {
            target,
            old: None,
            master_key: m.master_key.clone(),
            prefix: m.prefix.clone(),
            mode: Mode::Rebuild,
            indexes: IndexKind::ALL.to_vec(),
            api_key_uid: m.api_key_uid.clone(),
            options: RebuildOptions::default(),
            now: search::now_micros(),
        };
        let report = search::run(&job, Some(&source), reporter).await?;
        self.catalog.phase_done(
            StoreKind::Meilisearch,
            Phase::Reindex,
            Verdict::of(report.clean()),
        )?;
        Ok(ReindexPhase::Rebuilt(Box::new(report)))
    }
}

/// `offload reindex` on its own: run the rebuild, and record it as the reindex phase of the job in
/// `job_dir` when there is one (so cutover knows the indexes were rebuilt).
pub async fn reindex_alone(
    job_dir: &Path,
    job: &ReindexJob,
    source: Option<&SourceReader>,
    reporter: Arc<dyn Reporter>,
) -> Result<ReindexReport, JobError> {
    // Held until the reindex ends.
    let (_lock, catalog) = if Catalog::exists(job_dir) {
        super::check_job_folder(job_dir)?;
        (
            Some(super::lock::JobLock::acquire(job_dir)?),
            Some(Catalog::open(job_dir)?),
        )
    } else {
        (None, None)
    };
    if let Some(c) = &catalog {
        c.phase_start(StoreKind::Meilisearch, Phase::Reindex)?;
    }
    let report = search::run(job, source, reporter).await?;
    if let Some(c) = &catalog {
        c.phase_done(
            StoreKind::Meilisearch,
            Phase::Reindex,
            Verdict::of(report.clean()),
        )?;
    }
    Ok(report)
}
