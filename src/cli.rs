//! Command-line arguments (clap definitions only; long doc comments become `--help`). Each
//! store's own flags are defined beside it (its `settings` module) and flattened in here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::search::elasticsearch::ElasticsearchArgs;
use crate::search::settings::SearchArgs;
use crate::stores::mongodb::settings::MongoArgs;
use crate::stores::mysql::settings::MysqlArgs;
use crate::stores::objects::ObjectsArgs;
use crate::stores::redis::settings::RedisArgs;

/// Move a Tutor-run Open edX platform's data stores to external servers, and prove nothing was lost.
///
/// A migration is a job: `plan` shows what will happen, `copy` moves the data (resumable),
/// `verify` compares source and target by content, `cutover` points Tutor's config.yml at the
/// new servers. The job's state lives in a job folder (`--job`), next to the Tutor root by default.
#[derive(Debug, Parser)]
#[command(name = "offload", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log output (-v info, -vv debug). Logs go to standard error.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on standard error.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Print machine-readable JSON on standard output instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Never draw progress bars (they are also hidden when standard error is not a terminal).
    /// Without bars, progress goes to standard error as lines (see --progress-interval).
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Without bars (standard error not a terminal, or --no-progress): write a progress line to
    /// standard error every this many seconds while a phase runs, and one at each phase change.
    /// 0 turns the lines off.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECONDS")]
    pub progress_interval: u64,

    /// Log and progress lines on standard error as text or as JSON objects, one per line (for
    /// Loki, CloudWatch, jq). --json also writes progress lines as JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How lines on standard error are written.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read config.yml, find the sources, check the targets and size every store. Writes nothing.
    Plan(JobArgs),
    /// The whole job in one go: plan, copy, verify and cut over (stops before cutover when
    /// anything differs). `--resume` continues it, skipping what is done.
    Migrate(MigrateArgs),
    /// Copy every selected store into the job folder's plan; `--resume` continues a stopped job.
    Copy(CopyArgs),
    /// Compare source and target by content (row digests per key range). Writes nothing to either side.
    ///
    /// With a job folder, checks the job's units and records the outcome; without one, plans afresh
    /// from the same flags. Exit code 1 when anything differs.
    Verify(VerifyArgs),
    /// Keep the targets in step with the sources after the copy (MySQL's binary log, Redis'
    /// replication stream, MongoDB's change streams), from where the copy read, until stopped
    /// (Ctrl-C, SIGTERM) or until the final pass (`migrate --resume --freeze-source`) takes the
    /// job over.
    Follow(FollowArgs),
    /// Show the job's phases and per-unit progress from its catalog (works while a job runs).
    Status(StatusArgs),
    /// Rewrite Tutor's config.yml to use the new servers (after a clean verify), with a backup.
    Cutover(CutoverArgs),
    /// Restore config.yml from the newest backup that `cutover` made.
    Rollback(RollbackArgs),
    /// Rebuild the platform's Meilisearch indexes on the target from MySQL and MongoDB (or copy
    /// them from the old server), swapping each in atomically, then verify them and create the
    /// platform's API key. Exit code 1 when a rebuilt index differs from what was sent.
    Reindex(ReindexArgs),
    /// After cutover and `tutor local start`: ask the running platform whether it works on the
    /// new servers: the LMS and CMS heartbeats with their extended checks (MySQL, MongoDB,
    /// Celery), a search on every index with the key browsers get, a Celery round trip through
    /// the new Redis answered by the platform's workers, and an object read through its S3
    /// settings. Exit code 1 when something does not work.
    Check(CheckArgs),
}

/// Where the platform and the job are, what to move and where to.
#[derive(Debug, Args, Clone, Default)]
pub struct JobArgs {
    /// Tutor root holding config.yml [default: $TUTOR_ROOT, else ~/.local/share/tutor].
    #[arg(long, value_name = "DIR")]
    pub tutor_root: Option<PathBuf>,

    /// Job folder for the catalog [default: `<tutor root>.offload`, beside the Tutor root].
    #[arg(long, value_name = "DIR")]
    pub job: Option<PathBuf>,

    /// Stores to work on, comma-separated: mysql, mongodb, redis, objects, meilisearch
    /// [default: every store that has a target].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub stores: Vec<String>,

    /// YAML file of targets, e.g. `mysql: mysql://root@db.internal:3306` (and `mysql_password_file:`,
    /// `mongodb:`, `mongodb_password_file:`, `redis:`, `redis_password_file:`), instead of --to-* flags.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,

    /// Units worked on at once, across all stores.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,

    #[command(flatten)]
    pub mysql: MysqlArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub mongodb: MongoArgs,

    #[command(flatten)]
    pub search: SearchArgs,

    #[command(flatten)]
    pub elasticsearch: ElasticsearchArgs,

    #[command(flatten)]
    pub objects: ObjectsArgs,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Continue the job in the job folder where it stopped.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,

    /// Discard the job in the job folder and start over (the target is not emptied: see --if-exists).
    #[arg(long)]
    pub restart: bool,

    /// When the target already holds data: refuse (default), skip those units, or replace them.
    #[arg(long, value_enum, default_value_t = IfExistsArg::Refuse)]
    pub if_exists: IfExistsArg,

    /// Create the application users from config.yml on the target MySQL, each with privileges on
    /// its database: Open edX's (OPENEDX_MYSQL_USERNAME and its password) and each enabled
    /// plugin's (DISCOVERY_MYSQL_USERNAME, NOTES_MYSQL_USERNAME, ...).
    #[arg(long)]
    pub create_users: bool,

    /// Rows (MongoDB: documents) per batch and per checkpoint [default: about 8 MiB of rows, 16 MiB
    /// of documents, from table and collection statistics].
    #[arg(long, value_name = "N")]
    pub batch_rows: Option<u64>,

    /// Attempts after the first for a retryable error (connection dropped, deadlock).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,

    /// Seconds one attempt at a batch (or at preparing a unit) may take before it counts as
    /// stalled, a connection that stopped answering: it is dropped and retried as --retries
    /// allows. 0: no limit.
    #[arg(long, default_value = "600", value_name = "SECONDS", value_parser = stall_seconds)]
    pub stall_timeout: std::time::Duration,

    /// After the copy, copy again only the key ranges whose source changed since the job copied
    /// them (the short final pass of a maintenance window): MySQL key ranges, MongoDB collection
    /// ranges, Redis databases and object prefixes whose digests differ.
    #[arg(long)]
    pub delta: bool,

    /// Hold the source's writers off while this run works, and always release them at the end,
    /// also on errors and Ctrl-C: MySQL `read_only`, Redis `CLIENT PAUSE WRITE` (6.2+). MongoDB
    /// and object storage cannot be held off by offload: stop the platform first.
    #[arg(long)]
    pub freeze_source: bool,

    /// Rows per compared chunk in the delta pass (and in migrate's verify).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub chunk_rows: u64,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub copy: CopyArgs,

    /// Plan and check only, and print the maintenance-window runbook; writes nothing anywhere.
    #[arg(long)]
    pub dry_run: bool,

    /// Stop after verify; leave config.yml alone.
    #[arg(long)]
    pub no_cutover: bool,

    /// After the copy and a full verify, keep the targets in step with the sources (as
    /// `offload follow`) until stopped or until the final pass (`migrate --resume
    /// --freeze-source`) takes over; no cutover in this run.
    #[arg(long, conflicts_with_all = ["no_cutover", "dry_run"])]
    pub follow: bool,

    /// In the final pass, compare every unit again instead of only what changed since the last
    /// full verify.
    #[arg(long)]
    pub full_verify: bool,

    /// In the final pass, do not catch up from the change streams: copy what changed with the
    /// delta pass instead (for a source whose log no longer reaches back to the copy).
    #[arg(long, conflicts_with = "follow")]
    pub no_follow: bool,

    /// Also write the verification report as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Longest a follower waits for changes before it records its lag and looks again.
    #[arg(long, default_value = "1", value_parser = poll_seconds, value_name = "SECONDS")]
    pub poll: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Rows per compared chunk; a difference is narrowed to named rows within its chunk.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub chunk_rows: u64,

    /// Also write the report as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Objects: read every object fully on both sides and compare MD5s of all bytes instead of
    /// ETags (for targets whose ETags are not MD5s, e.g. SSE-KMS), and compare each object's
    /// metadata (Content-Type, Cache-Control, user metadata) too; the default compares key, size
    /// and ETag from the listings.
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Tutor root, to find the default job folder.
    #[arg(long, value_name = "DIR")]
    pub tutor_root: Option<PathBuf>,

    /// Job folder.
    #[arg(long, value_name = "DIR")]
    pub job: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Show the change (secrets masked) without writing.
    #[arg(long)]
    pub dry_run: bool,

    /// Cut over even where the job's verify did not pass. Dangerous: the platform may lose data.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Tutor root holding config.yml and its backups.
    #[arg(long, value_name = "DIR")]
    pub tutor_root: Option<PathBuf>,

    /// Roll back even though config.yml was changed after cutover; the current file is first
    /// saved as config.yml.offload-before-rollback-<time> beside it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// File whose first line is the old Meilisearch's master key [default:
    /// OFFLOAD_FROM_MEILISEARCH_KEY, else MEILISEARCH_MASTER_KEY in config.yml].
    #[arg(long, value_name = "FILE")]
    pub from_meilisearch_key_file: Option<PathBuf>,

    /// rebuild: build every document from MySQL and MongoDB, as the platform does. copy: read
    /// settings and documents from the old Meilisearch when it is healthy (faster).
    #[arg(long, value_enum, default_value_t = MeilisearchModeArg::Rebuild)]
    pub meilisearch_mode: MeilisearchModeArg,

    /// Read MySQL and MongoDB from the migrated targets (--to-mysql, --to-mongodb), so the
    /// indexes match what the platform uses after cutover, or from the sources.
    #[arg(long, value_enum, default_value_t = MeilisearchSourceArg::Migrated)]
    pub meilisearch_source: MeilisearchSourceArg,

    /// MongoDB database of the modulestore [default: MONGODB_DATABASE, else openedx].
    #[arg(long, value_name = "NAME")]
    pub mongodb_database: Option<String>,

    /// MySQL database of the platform [default: OPENEDX_MYSQL_DATABASE, else openedx].
    #[arg(long, value_name = "NAME")]
    pub mysql_database: Option<String>,

    /// Index name prefix [default: MEILISEARCH_INDEX_PREFIX, else tutor_].
    #[arg(long, value_name = "PREFIX")]
    pub meilisearch_index_prefix: Option<String>,

    /// Uid of the API key to create for the platform [default: MEILISEARCH_API_KEY_UID].
    #[arg(long, value_name = "UID")]
    pub meilisearch_api_key_uid: Option<String>,

    /// Indexes to rebuild, comma-separated: course_info, courseware_content, studio_content,
    /// comment_threads, comments [default: all].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub indexes: Vec<String>,

    /// Largest NDJSON request body; keep it under the server's payload limit (100 MB by default).
    #[arg(long, default_value_t = crate::search::rebuild::DEFAULT_BATCH_BYTES, value_name = "BYTES")]
    pub meilisearch_batch_bytes: usize,

    /// Documents per index compared field by field after the swap.
    #[arg(long, default_value_t = 25, value_name = "N")]
    pub sample: usize,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Tutor root whose config.yml names the platform's services [default: $TUTOR_ROOT, else
    /// ~/.local/share/tutor].
    #[arg(long, value_name = "DIR")]
    pub tutor_root: Option<PathBuf>,

    /// The LMS as browsers reach it, e.g. https://learn.example.org (http(s)://LMS_HOST).
    #[arg(long, value_name = "URL")]
    pub lms_url: String,

    /// Studio as browsers reach it, e.g. https://studio.learn.example.org (http(s)://CMS_HOST);
    /// without it the CMS is not asked.
    #[arg(long, value_name = "URL")]
    pub cms_url: Option<String>,

    /// Seconds to wait for one HTTP answer (a heartbeat's Celery check alone may take
    /// HEARTBEAT_CELERY_TIMEOUT, 5 s by default).
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = check_seconds)]
    pub timeout: std::time::Duration,

    /// Seconds to wait for the Celery workers to answer the control ping.
    #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = check_seconds)]
    pub celery_timeout: std::time::Duration,

    /// Also write the outcome as a self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum MeilisearchModeArg {
    #[default]
    Rebuild,
    Copy,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum MeilisearchSourceArg {
    #[default]
    Migrated,
    Source,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum IfExistsArg {
    #[default]
    Refuse,
    Skip,
    Replace,
}

/// `--stall-timeout`: whole or fractional seconds from 0 (no limit) to one day.
fn stall_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!(
            "--stall-timeout {text:?}: expected seconds from 0 (no limit) to 86400, e.g. 600"
        )),
    }
}

fn poll_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.05..=60.0).contains(&s) => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!(
            "--poll {text:?}: expected seconds from 0.05 to 60, e.g. 1"
        )),
    }
}

/// `--timeout`, `--celery-timeout`: seconds from 0.1 to 600.
fn check_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.1..=600.0).contains(&s) => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?}: expected seconds from 0.1 to 600, e.g. 30"
        )),
    }
}
