//! The commands behind the CLI, one thin file each: parse → resolve settings → call the job
//! layer → print. This is the command-line edge, so errors are `anyhow` here and nowhere deeper;
//! only these files and `ui` print.

mod check;
mod copy;
mod cutover;
mod follow;
mod migrate;
mod plan;
mod reindex;
mod rollback;
mod status;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, IfExistsArg, JobArgs, LogFormat};
use crate::core::progress::{Reporter, SilentReporter};
use crate::core::IfExists;
use crate::job::{JobError, JobFolder, OpenRequest};
use crate::settings::{Inputs, Settings};
use crate::stores::StoreArgs;
use crate::ui::lines::{LineFormat, LineReporter};
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
    /// Progress bars on standard error (a terminal that did not ask for none).
    pub bars: bool,
    /// Progress lines on standard error otherwise: their format and interval (`None`: none).
    pub lines: Option<(LineFormat, Duration)>,
}

impl Output {
    /// What the command line asks for; bars and lines never both.
    pub fn of(cli: &Cli) -> Output {
        let bars = progress::bars_wanted(cli.no_progress, cli.json);
        let format = if cli.json || cli.log_format == LogFormat::Json {
            LineFormat::Json
        } else {
            LineFormat::Text
        };
        let lines = (!bars && !cli.quiet && cli.progress_interval > 0)
            .then(|| (format, Duration::from_secs(cli.progress_interval)));
        Output {
            json: cli.json,
            bars,
            lines,
        }
    }

    pub fn reporter(&self) -> Arc<dyn Reporter> {
        match (self.bars, self.lines) {
            (true, _) => Arc::new(progress::BarReporter::new()),
            (false, Some((format, interval))) => Arc::new(LineReporter::new(format, interval)),
            (false, None) => Arc::new(SilentReporter),
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
    let out = Output::of(&cli);
    match cli.command {
        Command::Plan(args) => plan::plan(args, out).await,
        // A check writes nothing but its own short-lived Celery reply queue, which it removes.
        Command::Check(args) => tokio::select! {
            r = check::check(args, out) => r,
            _ = cancel.cancelled() => Err(crate::core::CoreError::Interrupted.into()),
        },
        Command::Migrate(args) => migrate::migrate(args, out, cancel).await,
        Command::Copy(args) => copy::copy(args, out, cancel).await,
        Command::Verify(args) => verify::verify(args, out, cancel).await,
        Command::Follow(args) => follow::follow(args, out, cancel).await,
        Command::Status(args) => status::status(args, out),
        Command::Cutover(args) => cutover::cutover(args, out).await,
        Command::Rollback(args) => rollback::rollback(args, out),
        // A reindex has no checkpoint: a stop request drops it, which is safe since the live
        // indexes are only ever swapped whole.
        Command::Reindex(args) => tokio::select! {
            r = reindex::reindex(args, out) => r,
            _ = cancel.cancelled() => Err(crate::core::CoreError::Interrupted.into()),
        },
    }
}

/// Whether an error stopped a command because the operator interrupted it (exit code 130).
pub fn interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::core::CoreError>(),
        Some(crate::core::CoreError::Interrupted)
    ) || e
        .downcast_ref::<JobError>()
        .is_some_and(JobError::is_interrupted)
}

/// What settings are resolved from, as the job's flags give it.
pub fn inputs(args: &JobArgs) -> Inputs {
    Inputs {
        tutor_root: args.tutor_root.clone(),
        job: args.job.clone(),
        stores: args.stores.clone(),
        targets: args.targets.clone(),
        parallel: args.parallel,
        batch_rows: None,
        create_users: false,
        deep: false,
        store_args: StoreArgs {
            mysql: args.mysql.clone(),
            mongodb: args.mongodb.clone(),
            redis: args.redis.clone(),
            objects: args.objects.clone(),
        },
        search: args.search.clone(),
        elasticsearch: args.elasticsearch.clone(),
    }
}

pub fn if_exists(arg: IfExistsArg) -> IfExists {
    match arg {
        IfExistsArg::Refuse => IfExists::Refuse,
        IfExistsArg::Skip => IfExists::Skip,
        IfExistsArg::Replace => IfExists::Replace,
    }
}

/// Claim the job folder as asked, resolve the settings (from the flags, else from what the job
/// recorded) and open the job. A new job whose plan fails prints the plan and writes nothing; a
/// server this machine cannot reach is named, with the Tutor commands that run the same command
/// where it is.
async fn open_job(
    inputs: &Inputs,
    request: OpenRequest,
    out: Output,
) -> anyhow::Result<crate::job::Job> {
    let folder = JobFolder::claim(inputs.job_dir(), request)?;
    let recorded = folder
        .recorded_endpoints()?
        .filter(|_| !inputs.names_endpoints());
    let settings = Settings::resolve(inputs, recorded.as_ref())?;
    match folder.open(settings).await {
        Err(JobError::PlanFailed(plan)) => {
            if !out.json {
                print!("{}", print::plan(&plan));
            }
            Err(JobError::PlanFailed(plan).into())
        }
        Err(e @ JobError::Unreachable(_)) => {
            print_tutor_commands();
            Err(e.into())
        }
        other => Ok(other?),
    }
}

/// Refuse settings naming a server this machine cannot reach, and print the Tutor commands that
/// run this same command where those servers are (the job layer's error says which they are).
pub async fn check_reachable(settings: &Settings) -> anyhow::Result<()> {
    match crate::job::reach::check(settings).await {
        Err(e @ JobError::Unreachable(_)) => {
            print_tutor_commands();
            Err(e.into())
        }
        other => Ok(other?),
    }
}

/// This command's arguments as Tutor's plugin would run them inside the platform's network:
/// the same flags, less `--tutor-root` and `--job` (the plugin mounts both).
fn print_tutor_commands() {
    let mut args = Vec::new();
    let mut skip_value = false;
    for a in std::env::args().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--tutor-root" || a == "--job" {
            skip_value = true;
            continue;
        }
        if a.starts_with("--tutor-root=") || a.starts_with("--job=") {
            continue;
        }
        args.push(shell_word(&a));
    }
    let args = args.join(" ");
    eprintln!("To run this where Tutor's servers are (tutor-plugin/, docs/tutor.md):");
    eprintln!("  tutor local do offload -- {args}");
    eprintln!("  tutor k8s do offload -- {args}");
}

/// A word as a POSIX shell reads it back: as is when safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Print what could not be let in again after a run that held source writers off.
fn report_thaw_failures(failures: &[crate::job::ThawFailure]) {
    for f in failures {
        eprintln!(
            "ERROR: {}. The {} source may still refuse writes.",
            f.error, f.store
        );
    }
}
