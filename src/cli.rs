//! Command-line arguments (clap definitions only; long doc comments become `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read config.yml, find the sources, check the targets and size every store. Writes nothing.
    Plan(JobArgs),
    /// Copy every selected store into the job folder's plan; `--resume` continues a stopped job.
    Copy(CopyArgs),
    /// Compare source and target by content (row digests per key range). Writes nothing to either side.
    ///
    /// With a job folder, checks the job's units and records the outcome; without one, plans afresh
    /// from the same flags. Exit code 1 when anything differs.
    Verify(VerifyArgs),
    /// Show the job's phases and per-unit progress from its catalog (works while a job runs).
    Status(StatusArgs),
    /// Rewrite Tutor's config.yml to use the new servers (after a clean verify), with a backup.
    Cutover(CutoverArgs),
    /// Restore config.yml from the newest backup that `cutover` made.
    Rollback(RollbackArgs),
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

    /// Source MySQL, overriding what config.yml says: mysql://user[:password]@host:port.
    /// The password may instead come from OFFLOAD_FROM_MYSQL_PASSWORD or --from-mysql-password-file.
    #[arg(long, value_name = "URL")]
    pub from_mysql: Option<String>,

    /// File whose first line is the source MySQL password.
    #[arg(long, value_name = "FILE")]
    pub from_mysql_password_file: Option<PathBuf>,

    /// Target MySQL: mysql://user[:password]@host:port[?ssl-mode=required]. The password may
    /// instead come from OFFLOAD_TO_MYSQL_PASSWORD or --to-mysql-password-file.
    #[arg(long, value_name = "URL")]
    pub to_mysql: Option<String>,

    /// File whose first line is the target MySQL password.
    #[arg(long, value_name = "FILE")]
    pub to_mysql_password_file: Option<PathBuf>,

    /// Source MongoDB, overriding what config.yml says (MONGODB_HOST, MONGODB_PORT, MONGODB_USERNAME,
    /// MONGODB_AUTH_SOURCE, MONGODB_USE_SSL, MONGODB_REPLICA_SET...):
    /// mongodb://user[:password]@host:port/?authSource=admin, or mongodb+srv://user@name. The
    /// password may instead come from OFFLOAD_FROM_MONGODB_PASSWORD or --from-mongodb-password-file.
    #[arg(long, value_name = "URI")]
    pub from_mongodb: Option<String>,

    /// File whose first line is the source MongoDB password.
    #[arg(long, value_name = "FILE")]
    pub from_mongodb_password_file: Option<PathBuf>,

    /// Target MongoDB: mongodb://user[:password]@host:port/?authSource=admin[&tls=true], or
    /// mongodb+srv://user@name. The password may instead come from OFFLOAD_TO_MONGODB_PASSWORD or
    /// --to-mongodb-password-file.
    #[arg(long, value_name = "URI")]
    pub to_mongodb: Option<String>,

    /// File whose first line is the target MongoDB password.
    #[arg(long, value_name = "FILE")]
    pub to_mongodb_password_file: Option<PathBuf>,

    /// YAML file of targets, e.g. `mysql: mysql://root@db.internal:3306` (and `mysql_password_file:`,
    /// `mongodb:`, `mongodb_password_file:`), instead of --to-* flags.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,

    /// MySQL databases to copy, comma-separated [default: every non-system database].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub databases: Vec<String>,

    /// MySQL databases to leave out, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub exclude: Vec<String>,

    /// MongoDB databases to copy, comma-separated [default: MONGODB_DATABASE (openedx), plus the
    /// forum's cs_comments_service when the source has it].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub mongodb_databases: Vec<String>,

    /// MongoDB databases to leave out, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub mongodb_exclude: Vec<String>,

    /// Read the whole source MongoDB at one point in time (snapshot read concern at one cluster
    /// time). Needs a replica set (a one-node one will do) and a copy shorter than the source's
    /// minSnapshotHistoryWindowInSeconds. Without it, stop the platform's writers for an exact copy.
    #[arg(long)]
    pub mongodb_snapshot: bool,

    /// MongoDB collections larger than this many bytes are split into `_id` ranges that copy and
    /// verify in parallel (each range costs the source one query, and its bounds one pass over the
    /// `_id`s at plan time).
    #[arg(long, default_value_t = 1024 * 1024 * 1024, value_name = "BYTES")]
    pub mongodb_split_bytes: u64,

    /// Units worked on at once, across all stores.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,

    /// Tables larger than this many bytes (with an integer key) are split into key ranges that
    /// copy and verify in parallel.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub split_bytes: u64,
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

    /// Create the application user from config.yml (OPENEDX_MYSQL_USERNAME and its password) on the
    /// target MySQL, with privileges on its database.
    #[arg(long)]
    pub create_users: bool,

    /// Rows (MongoDB: documents) per batch and per checkpoint [default: about 8 MiB of rows, 16 MiB
    /// of documents, from table and collection statistics].
    #[arg(long, value_name = "N")]
    pub batch_rows: Option<u64>,

    /// Attempts after the first for a retryable error (connection dropped, deadlock).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Rows per compared chunk; a difference is narrowed to named rows within its chunk.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub chunk_rows: u64,
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
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum IfExistsArg {
    #[default]
    Refuse,
    Skip,
    Replace,
}
