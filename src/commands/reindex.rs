//! `offload reindex`: rebuild the platform's Meilisearch indexes on the target from MySQL and
//! MongoDB (or copy them from the old server), print the outcome, and record it in the job folder
//! when there is one. Also the Meilisearch part of `plan`. The source of truth's endpoints are
//! resolved by the MySQL and MongoDB stores, as for a copy.

use std::path::Path;

use anyhow::{anyhow, bail};

use super::{inputs, Outcome, Output};
use crate::cli::{JobArgs, MeilisearchModeArg, MeilisearchSourceArg, ReindexArgs};
use crate::core::Side;
use crate::resolve::{ResolveContext, TargetsFile};
use crate::search::plan::{plan_section as search_plan_section, SearchPlanInputs};
use crate::search::rebuild::RebuildOptions;
use crate::search::settings::{api_key_uid, old_client, target_client, TO_KEY_ENV};
use crate::search::source::{MongoSource, SourceReader};
use crate::search::specs::IndexKind;
use crate::search::{self, Mode, ReindexJob};
use crate::settings::tutor_root;
use crate::stores::mongodb::settings as mongodb_settings;
use crate::stores::mysql::settings as mysql_settings;
use crate::stores::mysql::MysqlEndpoint;
use crate::tutor::TutorConfig;
use crate::ui::print;

fn load_tutor(args: &JobArgs) -> anyhow::Result<Option<TutorConfig>> {
    let root = tutor_root(args.tutor_root.as_deref());
    Ok(TutorConfig::load_if_present(&root)?)
}

/// What the stores' resolution needs besides their flags, for a reindex (no job record).
fn context<'a>(
    tutor: Option<&'a TutorConfig>,
    root: &'a Path,
    targets: &'a TargetsFile,
) -> ResolveContext<'a> {
    ResolveContext {
        tutor,
        tutor_root: root,
        tutor_root_flag: false,
        targets,
        batch_rows: None,
        create_users: false,
        deep: false,
    }
}

/// The MySQL to read: the migrated target or the source, with its password; `None` when the
/// flags and config.yml name none.
fn mysql_endpoint(
    args: &JobArgs,
    side: MeilisearchSourceArg,
    ctx: &ResolveContext,
) -> anyhow::Result<Option<MysqlEndpoint>> {
    Ok(match side {
        MeilisearchSourceArg::Migrated if args.mysql.to_mysql.is_some() => {
            Some(mysql_settings::resolve_target(&args.mysql, ctx, None)?.0)
        }
        MeilisearchSourceArg::Source if args.mysql.from_mysql.is_some() || ctx.tutor.is_some() => {
            Some(mysql_settings::resolve_source(&args.mysql, ctx, None)?.0)
        }
        _ => None,
    })
}

/// The modulestore's MongoDB to read, as for `mysql_endpoint`.
async fn mongo_source(
    args: &JobArgs,
    side: MeilisearchSourceArg,
    ctx: &ResolveContext<'_>,
    database: &str,
) -> anyhow::Result<Option<MongoSource>> {
    let endpoint = match side {
        MeilisearchSourceArg::Migrated if args.mongodb.to_mongodb.is_some() => Some((
            mongodb_settings::resolve_target(&args.mongodb, ctx, None)?.0,
            Side::Target,
        )),
        // config.yml names the source's MongoDB only when it sets MONGODB_HOST.
        MeilisearchSourceArg::Source
            if args.mongodb.from_mongodb.is_some()
                || ctx
                    .tutor
                    .is_some_and(|t| crate::resolve::config_text(t, "MONGODB_HOST").is_some()) =>
        {
            Some((
                mongodb_settings::resolve_source(&args.mongodb, ctx, None)?.0,
                Side::Source,
            ))
        }
        _ => None,
    };
    Ok(match endpoint {
        Some((e, side)) => Some(MongoSource::connect(&e, side, database).await?),
        None => None,
    })
}

fn selected_indexes(list: &[String]) -> anyhow::Result<Vec<IndexKind>> {
    if list.is_empty() {
        return Ok(IndexKind::ALL.to_vec());
    }
    list.iter()
        .map(|n| {
            IndexKind::parse(n).ok_or_else(|| {
                anyhow!("--indexes: unknown index `{n}`; choose from course_info, courseware_content, studio_content, comment_threads, comments")
            })
        })
        .collect()
}

/// A config.yml value, else a default.
fn config_or(tutor: Option<&TutorConfig>, key: &str, default: &str) -> String {
    tutor
        .and_then(|t| crate::resolve::config_text(t, key))
        .unwrap_or_else(|| default.into())
}

pub async fn reindex(args: ReindexArgs, out: Output) -> anyhow::Result<Outcome> {
    let tutor = load_tutor(&args.job)?;
    let tutor = tutor.as_ref();
    let Some((target, master_key)) = target_client(&args.job.search)? else {
        bail!("no target Meilisearch: pass --to-meilisearch URL (its master key in --to-meilisearch-key-file or {TO_KEY_ENV})");
    };
    let indexes = selected_indexes(&args.indexes)?;
    let mode = match args.meilisearch_mode {
        MeilisearchModeArg::Rebuild => Mode::Rebuild,
        MeilisearchModeArg::Copy => Mode::Copy,
    };
    let prefix = args
        .meilisearch_index_prefix
        .clone()
        .unwrap_or_else(|| config_or(tutor, "MEILISEARCH_INDEX_PREFIX", "tutor_"));
    let database = args
        .mysql_database
        .clone()
        .unwrap_or_else(|| config_or(tutor, "OPENEDX_MYSQL_DATABASE", "openedx"));
    let mongo_db = args
        .mongodb_database
        .clone()
        .unwrap_or_else(|| config_or(tutor, "MONGODB_DATABASE", "openedx"));
    let api_key_uid = api_key_uid(args.meilisearch_api_key_uid.as_deref(), tutor)?;

    // Check the target first: a wrong key or an unreachable server stops before any reading.
    search::check_target(&target).await?;

    let old = if mode == Mode::Copy {
        old_client(
            &args.job.search,
            args.from_meilisearch_key_file.as_deref(),
            tutor,
        )?
    } else {
        None
    };
    let root = tutor_root(args.job.tutor_root.as_deref());
    let targets = TargetsFile::default();
    let ctx = context(tutor, &root, &targets);
    let side = args.meilisearch_source;
    let source = match mysql_endpoint(&args.job, side, &ctx)? {
        Some(m) => {
            let mongo = mongo_source(&args.job, side, &ctx, &mongo_db).await?;
            Some(SourceReader::new(&m, &database, mongo))
        }
        None => None,
    };
    let job = ReindexJob {
        target,
        old,
        master_key,
        prefix,
        mode,
        indexes,
        api_key_uid,
        options: RebuildOptions {
            batch_bytes: args.meilisearch_batch_bytes.max(1024),
            sample: args.sample,
            ..RebuildOptions::default()
        },
        now: search::now_micros(),
    };
    let job_dir = inputs(&args.job).job_dir();
    let report = crate::job::reindex_alone(&job_dir, &job, source.as_ref(), out.reporter()).await?;
    out.emit(&report, || print::reindex_report(&report));
    Ok(if report.clean() {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}

/// The Meilisearch part of `plan` (and `migrate --dry-run`).
pub async fn plan_section(args: &JobArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let tutor = load_tutor(args)?;
    let target = target_client(&args.search)?;
    if target.is_some() {
        // The key the cutover will need is checked before any server is asked.
        api_key_uid(None, tutor.as_ref())?;
    }
    let root = tutor_root(args.tutor_root.as_deref());
    let targets = TargetsFile::default();
    let ctx = context(tutor.as_ref(), &root, &targets);
    // Counts come from the migrated MySQL when it is named.
    let mysql = match &args.mysql.to_mysql {
        Some(_) => Some(mysql_settings::resolve_target(&args.mysql, &ctx, None)?.0),
        None => None,
    };
    let inputs = SearchPlanInputs {
        tutor: tutor.as_ref(),
        target: target.as_ref().map(|(client, _)| client),
        mysql: mysql.as_ref(),
        database: args.mysql.databases.first().cloned(),
        public_url: args.search.meilisearch_public_url.as_deref(),
    };
    Ok(search_plan_section(&inputs).await?)
}
