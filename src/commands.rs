//! The commands behind the CLI: each resolves settings, drives the core, prints the outcome.
//! This is the command-line edge, so errors are `anyhow` here and nowhere deeper.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, CopyArgs, IfExistsArg, JobArgs, StatusArgs, VerifyArgs};
use crate::core::catalog::Catalog;
use crate::core::delta::{delta, DeltaSummary};
use crate::core::plan::make_plan;
use crate::core::progress::{Reporter, SilentReporter};
use crate::core::runner::{RunOptions, Runner};
use crate::core::verify::{verify, VerifyOptions};
use crate::core::{CoreError, IfExists, Store};
use crate::job::lock::JobLock;
use crate::settings::{default_job_dir, tutor_root, Inputs, Settings};
use crate::ui::{print, progress};

/// How a successful command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, nothing differs.
    Clean,
    /// Verification found differences.
    Differs,
}

/// Output choices shared by all commands.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub bars: bool,
}

impl Output {
    pub fn reporter(&self) -> Arc<dyn Reporter> {
        if self.bars {
            Arc::new(progress::BarReporter::new())
        } else {
            Arc::new(SilentReporter)
        }
    }

    pub fn emit<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable output")
            );
        } else {
            print!("{}", human());
        }
    }
}

pub async fn run(cli: Cli, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let out = Output {
        json: cli.json,
        bars: progress::bars_wanted(cli.no_progress, cli.json),
    };
    match cli.command {
        Command::Plan(args) => plan(args, out).await,
        Command::Migrate(args) => crate::migrate_cmd::migrate(args, out, cancel).await,
        Command::Copy(args) => copy(args, out, cancel).await,
        Command::Verify(args) => verify_cmd(args, out, cancel).await,
        Command::Status(args) => status(args, out),
        Command::Cutover(args) => crate::cutover_cmd::cutover(args, out.json).await,
        Command::Rollback(args) => crate::cutover_cmd::rollback(args, out.json),
        // [signals] reindex has no checkpoint: a stop request drops it, which is safe since the
        // live indexes are only ever swapped whole.
        Command::Reindex(args) => tokio::select! {
            r = crate::reindex_cmd::reindex(args, out.json, out.bars) => r,
            _ = cancel.cancelled() => Err(CoreError::Interrupted.into()),
        },
    }
}

/// Inputs for `cutover`: the job's own flags, no extra options.
pub fn inputs_for_cutover(args: &JobArgs) -> Inputs {
    inputs(args, false)
}

fn inputs(args: &JobArgs, create_users: bool) -> Inputs {
    inputs_with(args, create_users, None)
}

fn inputs_with(args: &JobArgs, create_users: bool, batch_rows: Option<u64>) -> Inputs {
    Inputs {
        tutor_root: args.tutor_root.clone(),
        job: args.job.clone(),
        stores: args.stores.clone(),
        from_mysql: args.from_mysql.clone(),
        from_mysql_password_file: args.from_mysql_password_file.clone(),
        to_mysql: args.to_mysql.clone(),
        to_mysql_password_file: args.to_mysql_password_file.clone(),
        targets: args.targets.clone(),
        databases: args.databases.clone(),
        exclude: args.exclude.clone(),
        parallel: args.parallel,
        create_users,
        batch_rows,
        split_bytes: args.split_bytes,
        from_redis: args.from_redis.clone(),
        from_redis_password_file: args.from_redis_password_file.clone(),
        to_redis: args.to_redis.clone(),
        to_redis_password_file: args.to_redis_password_file.clone(),
        redis_dbs: args.redis_dbs.clone(),
        redis_typed: args.redis_typed,
        redis_scan: args.redis_scan,
        from_mongodb: args.from_mongodb.clone(),
        from_mongodb_password_file: args.from_mongodb_password_file.clone(),
        to_mongodb: args.to_mongodb.clone(),
        to_mongodb_password_file: args.to_mongodb_password_file.clone(),
        mongodb_databases: args.mongodb_databases.clone(),
        mongodb_exclude: args.mongodb_exclude.clone(),
        mongodb_snapshot: args.mongodb_snapshot,
        from_s3: args.from_s3.clone(),
        to_s3: args.to_s3.clone(),
        s3_region: args.s3_region.clone(),
        s3_addressing: args.s3_addressing.clone(),
        s3_profile: args.s3_profile.clone(),
        buckets: args.buckets.clone(),
        bucket_map: args.bucket_map.clone(),
        create_buckets: args.create_buckets,
        part_size: args.part_size,
        object_transfers: args.object_transfers,
        deep: false,
        mongodb_split_bytes: args.mongodb_split_bytes,
        mongodb_size_timeout: Some(args.mongodb_size_timeout),
        mongodb_read_ahead: Some(args.mongodb_read_ahead),
        to_meilisearch: args.to_meilisearch.clone(),
        to_meilisearch_key_file: args.to_meilisearch_key_file.clone(),
        meilisearch_public_url: args.meilisearch_public_url.clone(),
    }
}

fn job_dir_of(args: &JobArgs) -> std::path::PathBuf {
    args.job
        .clone()
        .unwrap_or_else(|| default_job_dir(&tutor_root(args.tutor_root.as_deref())))
}

/// Whether the flags name any endpoint themselves (otherwise a job's record is used).
fn names_endpoints(args: &JobArgs) -> bool {
    args.to_mysql.is_some()
        || args.targets.is_some()
        || args.from_mysql.is_some()
        || args.to_redis.is_some()
        || args.from_redis.is_some()
        || args.to_mongodb.is_some()
        || args.from_mongodb.is_some()
        || args.to_s3.is_some()
        || args.from_s3.is_some()
        || args.to_meilisearch.is_some()
}

async fn plan(args: JobArgs, out: Output) -> anyhow::Result<Outcome> {
    let meilisearch = crate::reindex_cmd::plan_section(&args).await?;
    let settings = match Settings::resolve(&inputs(&args, false), None) {
        // An Elasticsearch platform with no target yet: the note on what offload does is the plan.
        Err(crate::settings::SettingsError::NothingToDo) if meilisearch.is_some() => None,
        other => Some(other?),
    };
    if let Some(m) = &meilisearch {
        if settings.as_ref().is_none_or(|s| s.stores().is_empty()) {
            out.emit(&serde_json::json!({ "meilisearch": m }), || {
                crate::reindex_cmd::render_plan(m)
            });
            return Ok(if crate::reindex_cmd::plan_ok(m) {
                Outcome::Clean
            } else {
                bail!("the Meilisearch checks failed (see above); fix them before reindexing")
            });
        }
    }
    let settings = settings.expect("settings resolved when a store has a target");
    let stores = settings.stores();
    let plan = make_plan(&stores).await?;
    let mut json = serde_json::to_value(&plan).expect("serializable plan");
    if let Some(m) = &meilisearch {
        json["meilisearch"] = serde_json::to_value(m).expect("serializable plan");
    }
    let runbook = crate::migrate_cmd::maintenance_runbook();
    json["runbook"] = runbook.clone().into();
    out.emit(&json, || {
        let mut text = print::plan(&plan);
        if let Some(m) = &meilisearch {
            text.push_str(&crate::reindex_cmd::render_plan(m));
        }
        text.push('\n');
        text.push_str(&runbook);
        text
    });
    if !plan.checks_pass() {
        bail!("some prerequisite checks failed (see above); fix them before copying");
    }
    Ok(Outcome::Clean)
}

/// How a command wants the job folder: a new job, or the one there.
pub struct JobRequest<'a> {
    pub args: &'a JobArgs,
    pub create_users: bool,
    pub batch_rows: Option<u64>,
    pub resume: bool,
    pub restart: bool,
}

/// A job ready to run: its catalog, stores and settings.
pub struct OpenJob {
    pub dir: std::path::PathBuf,
    pub catalog: Arc<Catalog>,
    pub stores: Vec<Arc<dyn Store>>,
    pub settings: Settings,
    /// Whether this run continues an existing job.
    pub resumed: bool,
    /// [job-lock] This process's hold on the job folder, released when the job is dropped.
    pub lock: JobLock,
}

/// Create the job (after a plan whose checks pass) or reopen it (after the setup guard).
pub async fn open_job(req: JobRequest<'_>, json: bool) -> anyhow::Result<OpenJob> {
    let job_dir = job_dir_of(req.args);
    // [job-lock] A folder that is there is locked before anything in it is touched; a new one
    // just before its catalog is created.
    let lock = job_dir
        .is_dir()
        .then(|| JobLock::acquire(&job_dir))
        .transpose()?;
    if req.restart && Catalog::exists(&job_dir) {
        Catalog::discard(&job_dir)?;
        tracing::warn!(job = %job_dir.display(), "discarded the previous job, as --restart asks");
    }
    let exists = Catalog::exists(&job_dir);
    if exists && !req.resume {
        return Err(CoreError::JobExists {
            job: job_dir.display().to_string(),
        }
        .into());
    }
    if !exists && req.resume {
        return Err(CoreError::NoJob {
            job: job_dir.display().to_string(),
        }
        .into());
    }
    let job_inputs = inputs_with(req.args, req.create_users, req.batch_rows);
    if exists {
        let lock = lock.map_or_else(|| JobLock::acquire(&job_dir), Ok)?; // [job-lock]
        let opened = Catalog::open(&job_dir)?;
        let recorded = opened.setup()?;
        let endpoints = (!names_endpoints(req.args)).then_some(&recorded.endpoints);
        let settings = Settings::resolve(&job_inputs, endpoints)?;
        let stores = settings.stores();
        opened.check_setup(&job_dir, &settings.setup(&stores))?;
        return Ok(OpenJob {
            dir: job_dir,
            catalog: Arc::new(opened),
            stores,
            settings,
            resumed: true,
            lock,
        });
    }
    let settings = Settings::resolve(&job_inputs, None)?;
    let stores = settings.stores();
    let plan = make_plan(&stores).await?;
    if !plan.checks_pass() {
        if !json {
            print!("{}", print::plan(&plan));
        }
        bail!("some prerequisite checks failed (see above); nothing was written. Fix them and run again");
    }
    let lock = lock.map_or_else(|| JobLock::acquire(&job_dir), Ok)?; // [job-lock]
    let created = Catalog::create(&job_dir, &settings.setup(&stores))?;
    for s in &plan.stores {
        created.add_units(&s.units)?;
    }
    Ok(OpenJob {
        dir: job_dir,
        catalog: Arc::new(created),
        stores,
        settings,
        resumed: false,
        lock,
    })
}

pub fn if_exists(arg: IfExistsArg) -> IfExists {
    match arg {
        IfExistsArg::Refuse => IfExists::Refuse,
        IfExistsArg::Skip => IfExists::Skip,
        IfExistsArg::Replace => IfExists::Replace,
    }
}

async fn copy(args: CopyArgs, out: Output, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let job = open_job(
        JobRequest {
            args: &args.job,
            create_users: args.create_users,
            batch_rows: args.batch_rows,
            resume: args.resume,
            restart: args.restart,
        },
        out.json,
    )
    .await?;
    let mut notes = Vec::new();
    let frozen = freeze_sources(&job, args.freeze_source, &mut notes).await?;
    let result = copy_and_delta(&args, &job, out, &cancel).await;
    thaw_sources(&job.catalog, &frozen).await;
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
    summary: crate::core::runner::CopySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaSummary>,
}

async fn copy_and_delta(
    args: &CopyArgs,
    job: &OpenJob,
    out: Output,
    cancel: &CancellationToken,
) -> anyhow::Result<(crate::core::runner::CopySummary, Option<DeltaSummary>)> {
    let runner = Runner {
        catalog: job.catalog.clone(),
        reporter: out.reporter(),
        cancel: cancel.clone(),
        options: RunOptions {
            parallel: args.job.parallel.max(1),
            retries: args.retries,
            if_exists: if_exists(args.if_exists),
        },
    };
    let summary = runner.copy(&job.stores).await?;
    let delta = if args.delta {
        Some(delta_pass(args, job, out.reporter(), cancel).await?)
    } else {
        None
    };
    Ok((summary, delta))
}

/// The delta pass of a job whose copy is complete, recorded as the job's `delta` phase.
pub async fn delta_pass(
    args: &CopyArgs,
    job: &OpenJob,
    reporter: Arc<dyn Reporter>,
    cancel: &CancellationToken,
) -> anyhow::Result<DeltaSummary> {
    job.catalog.phase_start("job", "delta")?;
    let d = delta(
        &job.stores,
        job.catalog.clone(),
        args.chunk_rows,
        args.job.parallel.max(1),
        args.retries,
        reporter,
        cancel,
    )
    .await?;
    job.catalog.phase_done(
        "job",
        "delta",
        &format!("{} unit(s) changed", d.units_changed),
    )?;
    Ok(d)
}

/// Hold the sources' writers off where the server allows it (`freeze`: `--freeze-source`).
/// Returns the stores to thaw; a store that cannot be held off adds a note instead. On an error,
/// what was already frozen is released before returning. Each freeze is recorded in the catalog
/// (phase `freeze`) until released, so a run after a killed one knows whose freeze it finds, and
/// a run without `--freeze-source` says that the source may still be held.
pub async fn freeze_sources(
    job: &OpenJob,
    freeze: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Arc<dyn Store>>> {
    let held: Vec<String> = job
        .catalog
        .phases()?
        .into_iter()
        .filter(|p| p.phase == "freeze" && p.done_at.is_none())
        .map(|p| p.store)
        .collect();
    let mut frozen: Vec<Arc<dyn Store>> = Vec::new();
    for store in &job.stores {
        let earlier = held.iter().any(|s| s == store.kind().as_str());
        if !freeze {
            if earlier {
                tracing::warn!(store = %store.kind(), "an earlier run of this job held the source's writers off and was stopped before letting them in");
                notes.push(format!(
                    "{}: an earlier run of this job held the source's writers off and was stopped before letting them in; run again with --freeze-source to finish and release them, or release them by hand (MySQL: SET GLOBAL read_only = OFF; Redis: CLIENT UNPAUSE, or wait two minutes)",
                    store.kind()
                ));
            }
            continue;
        }
        match store.freeze_source(earlier).await {
            Ok(Some(note)) => {
                job.catalog.phase_start(store.kind().as_str(), "freeze")?;
                notes.push(note);
                frozen.push(store.clone());
            }
            Ok(None) => notes.push(format!(
                "{}: offload cannot hold writers off on this source; stop the platform's writers yourself",
                store.kind()
            )),
            Err(e) => {
                thaw_sources(&job.catalog, &frozen).await;
                return Err(e.into());
            }
        }
    }
    Ok(frozen)
}

/// Release what [`freeze_sources`] held; a failure is reported with what to run by hand.
pub async fn thaw_sources(catalog: &Catalog, stores: &[Arc<dyn Store>]) {
    for s in stores {
        match s.thaw_source().await {
            Ok(()) => {
                let _ = catalog.phase_done(s.kind().as_str(), "freeze", "released");
            }
            Err(e) => {
                tracing::error!(store = %s.kind(), error = %e, "could not let the source's writers in again");
                eprintln!(
                    "ERROR: {e}. The {} source may still refuse writes.",
                    s.kind()
                );
            }
        }
    }
}

async fn verify_cmd(
    args: VerifyArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let job_dir = job_dir_of(&args.job);
    let verify_inputs = Inputs {
        deep: args.deep,
        ..inputs(&args.job, false)
    };
    let mut _lock = None; // [job-lock] held until verify ends
    let (stores, units, catalog) = if Catalog::exists(&job_dir) {
        _lock = Some(JobLock::acquire(&job_dir)?); // [job-lock]
        let catalog = Catalog::open(&job_dir)?;
        let recorded = catalog.setup()?;
        let endpoints = (!names_endpoints(&args.job)).then_some(&recorded.endpoints);
        let settings = Settings::resolve(&verify_inputs, endpoints)?;
        let stores = settings.stores();
        catalog.check_setup(&job_dir, &settings.setup(&stores))?;
        let units = catalog.units(None)?.into_iter().map(|r| r.unit).collect();
        (stores, units, Some(Arc::new(catalog)))
    } else {
        let settings = Settings::resolve(&verify_inputs, None)?;
        let stores = settings.stores();
        let mut units = Vec::new();
        for s in &stores {
            units.extend(s.inventory().await?);
        }
        (stores, units, None)
    };
    let options = VerifyOptions {
        parallel: args.job.parallel.max(1),
        chunk_rows: args.chunk_rows.max(1),
        ..VerifyOptions::default()
    };
    if let Some(c) = &catalog {
        c.phase_start("job", "verify")?;
    }
    let report = verify(
        &stores,
        units,
        &options,
        out.reporter(),
        catalog.clone(),
        &cancel,
    )
    .await?;
    if let Some(c) = &catalog {
        let verdict = if report.clean() { "clean" } else { "differs" };
        c.phase_done("job", "verify", verdict)?;
    }
    out.emit(&report, || print::verify_report(&report));
    if let Some(path) = &args.report {
        crate::migrate_cmd::write_report(path, &report, &[], &job_dir)?;
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

fn status(args: StatusArgs, out: Output) -> anyhow::Result<Outcome> {
    let job_dir = args
        .job
        .clone()
        .unwrap_or_else(|| default_job_dir(&tutor_root(args.tutor_root.as_deref())));
    let catalog = Catalog::open(&job_dir)?;
    let phases = catalog.phases()?;
    let units = catalog.units(None)?;
    let holder = JobLock::holder(&job_dir); // [job-lock] read, never taken
    let value = serde_json::json!({ "job": job_dir.display().to_string(), "holder": holder, "running": holder.is_some(), "phases": phases, "units": units });
    out.emit(&value, || {
        format!(
            "Job {}\n{}",
            job_dir.display(),
            print::status(&phases, &units, holder.as_ref())
        )
    });
    Ok(Outcome::Clean)
}

/// Read a file the user named, with a message that says which flag it came from.
pub fn read_named(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}
