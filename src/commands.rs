//! The commands behind the CLI: each resolves settings, drives the core, prints the outcome.
//! This is the command-line edge, so errors are `anyhow` here and nowhere deeper.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, CopyArgs, IfExistsArg, JobArgs, StatusArgs, VerifyArgs};
use crate::core::catalog::Catalog;
use crate::core::plan::make_plan;
use crate::core::progress::{Reporter, SilentReporter};
use crate::core::runner::{RunOptions, Runner};
use crate::core::verify::{verify, VerifyOptions};
use crate::core::{CoreError, IfExists, Store};
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
struct Output {
    json: bool,
    bars: bool,
}

impl Output {
    fn reporter(&self) -> Arc<dyn Reporter> {
        if self.bars {
            Arc::new(progress::BarReporter::new())
        } else {
            Arc::new(SilentReporter)
        }
    }

    fn emit<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
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
        Command::Copy(args) => copy(args, out, cancel).await,
        Command::Verify(args) => verify_cmd(args, out, cancel).await,
        Command::Status(args) => status(args, out),
        Command::Cutover(args) => crate::cutover_cmd::cutover(args, out.json).await,
        Command::Rollback(args) => crate::cutover_cmd::rollback(args, out.json),
    }
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
        from_mongodb: args.from_mongodb.clone(),
        from_mongodb_password_file: args.from_mongodb_password_file.clone(),
        to_mongodb: args.to_mongodb.clone(),
        to_mongodb_password_file: args.to_mongodb_password_file.clone(),
        mongodb_databases: args.mongodb_databases.clone(),
        mongodb_exclude: args.mongodb_exclude.clone(),
        mongodb_snapshot: args.mongodb_snapshot,
        mongodb_split_bytes: args.mongodb_split_bytes,
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
        || args.to_mongodb.is_some()
        || args.from_mongodb.is_some()
}

async fn plan(args: JobArgs, out: Output) -> anyhow::Result<Outcome> {
    let settings = Settings::resolve(&inputs(&args, false), None)?;
    let stores = settings.stores();
    let plan = make_plan(&stores).await?;
    out.emit(&plan, || print::plan(&plan));
    if !plan.checks_pass() {
        bail!("some prerequisite checks failed (see above); fix them before copying");
    }
    Ok(Outcome::Clean)
}

async fn copy(args: CopyArgs, out: Output, cancel: CancellationToken) -> anyhow::Result<Outcome> {
    let job_dir = job_dir_of(&args.job);
    if args.restart && Catalog::exists(&job_dir) {
        Catalog::discard(&job_dir)?;
        tracing::warn!(job = %job_dir.display(), "discarded the previous job, as --restart asks");
    }
    let exists = Catalog::exists(&job_dir);
    if exists && !args.resume {
        return Err(CoreError::JobExists {
            job: job_dir.display().to_string(),
        }
        .into());
    }
    if !exists && args.resume {
        return Err(CoreError::NoJob {
            job: job_dir.display().to_string(),
        }
        .into());
    }

    let catalog;
    let stores: Vec<Arc<dyn Store>>;
    if exists {
        let opened = Catalog::open(&job_dir)?;
        let recorded = opened.setup()?;
        let endpoints = (!names_endpoints(&args.job)).then_some(&recorded.endpoints);
        let settings = Settings::resolve(
            &inputs_with(&args.job, args.create_users, args.batch_rows),
            endpoints,
        )?;
        stores = settings.stores();
        opened.check_setup(&job_dir, &settings.setup(&stores))?;
        catalog = Arc::new(opened);
    } else {
        let settings = Settings::resolve(
            &inputs_with(&args.job, args.create_users, args.batch_rows),
            None,
        )?;
        stores = settings.stores();
        let plan = make_plan(&stores).await?;
        if !plan.checks_pass() {
            if !out.json {
                print!("{}", print::plan(&plan));
            }
            bail!("some prerequisite checks failed (see above); nothing was written. Fix them and run again");
        }
        let created = Catalog::create(&job_dir, &settings.setup(&stores))?;
        for s in &plan.stores {
            created.add_units(&s.units)?;
        }
        catalog = Arc::new(created);
    }

    let runner = Runner {
        catalog: catalog.clone(),
        reporter: out.reporter(),
        cancel,
        options: RunOptions {
            parallel: args.job.parallel.max(1),
            retries: args.retries,
            if_exists: match args.if_exists {
                IfExistsArg::Refuse => IfExists::Refuse,
                IfExistsArg::Skip => IfExists::Skip,
                IfExistsArg::Replace => IfExists::Replace,
            },
        },
    };
    let summary = runner.copy(&stores).await?;
    catalog.event("info", None, None, "copy finished")?;
    out.emit(&summary, || print::copy_summary(&summary, &job_dir));
    Ok(Outcome::Clean)
}

async fn verify_cmd(
    args: VerifyArgs,
    out: Output,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let job_dir = job_dir_of(&args.job);
    let (stores, units, catalog) = if Catalog::exists(&job_dir) {
        let catalog = Catalog::open(&job_dir)?;
        let recorded = catalog.setup()?;
        let endpoints = (!names_endpoints(&args.job)).then_some(&recorded.endpoints);
        let settings = Settings::resolve(&inputs(&args.job, false), endpoints)?;
        let stores = settings.stores();
        catalog.check_setup(&job_dir, &settings.setup(&stores))?;
        let units = catalog.units(None)?.into_iter().map(|r| r.unit).collect();
        (stores, units, Some(Arc::new(catalog)))
    } else {
        let settings = Settings::resolve(&inputs(&args.job, false), None)?;
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
    let value = serde_json::json!({ "job": job_dir.display().to_string(), "phases": phases, "units": units });
    out.emit(&value, || {
        format!(
            "Job {}\n{}",
            job_dir.display(),
            print::status(&phases, &units)
        )
    });
    Ok(Outcome::Clean)
}

/// Read a file the user named, with a message that says which flag it came from.
pub fn read_named(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}
