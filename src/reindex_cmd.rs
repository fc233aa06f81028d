//! The `offload reindex` command: resolves where the target Meilisearch, its key, the old server
//! and the source of truth (MySQL, MongoDB) are, runs the rebuild, prints the outcome, and records
//! the reindex phase in the job folder when there is one. Also the Meilisearch part of `plan`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

use crate::cli::{JobArgs, MeilisearchModeArg, MeilisearchSourceArg, ReindexArgs};
use crate::commands::Outcome;
use crate::core::catalog::Catalog;
use crate::core::progress::{Reporter, SilentReporter};
use crate::reindex::client::MeilisearchClient;
use crate::reindex::rebuild::RebuildOptions;
use crate::reindex::source::SourceReader;
use crate::reindex::specs::IndexKind;
use crate::reindex::{self, Mode, ReindexJob, ReindexReport};
use crate::secret::{read_secret_file, Secret};
use crate::settings::{
    config_text, default_job_dir, find_password, tutor_root, PasswordLookup, Settings,
};
use crate::stores::mysql::MysqlEndpoint;
use crate::tutor::TutorConfig;

use crate::reindex::setup::TO_KEY_ENV;
/// Environment variable holding the old server's master key.
pub const FROM_KEY_ENV: &str = "OFFLOAD_FROM_MEILISEARCH_KEY";

fn load_tutor(args: &JobArgs) -> anyhow::Result<Option<TutorConfig>> {
    let root = tutor_root(args.tutor_root.as_deref());
    if root.join("config.yml").is_file() {
        Ok(Some(TutorConfig::load(&root)?))
    } else {
        Ok(None)
    }
}

/// The target client with its master key (environment first, then the key file).
pub fn target_client(
    args: &JobArgs,
) -> anyhow::Result<Option<(MeilisearchClient, Option<Secret>)>> {
    let Some(url) = &args.to_meilisearch else {
        return Ok(None);
    };
    let key = if let Ok(v) = std::env::var(TO_KEY_ENV) {
        Some(Secret::new(v))
    } else if let Some(path) = &args.to_meilisearch_key_file {
        Some(read_secret_file(path).with_context(|| {
            format!("--to-meilisearch-key-file: cannot read {}", path.display())
        })?)
    } else {
        None
    };
    if key.is_none() {
        tracing::warn!("no master key for the target Meilisearch (--to-meilisearch-key-file or {TO_KEY_ENV}); a server with a master key will refuse every request");
    }
    Ok(Some((
        MeilisearchClient::new(url, key.clone(), "target")?,
        key,
    )))
}

fn old_client(
    args: &ReindexArgs,
    tutor: Option<&TutorConfig>,
) -> anyhow::Result<Option<MeilisearchClient>> {
    let url = args
        .job
        .from_meilisearch
        .clone()
        .or_else(|| tutor.and_then(|t| config_text(t, "MEILISEARCH_URL")));
    let Some(url) = url else { return Ok(None) };
    let key = if let Ok(v) = std::env::var(FROM_KEY_ENV) {
        Some(Secret::new(v))
    } else if let Some(path) = &args.from_meilisearch_key_file {
        Some(read_secret_file(path).with_context(|| {
            format!(
                "--from-meilisearch-key-file: cannot read {}",
                path.display()
            )
        })?)
    } else {
        tutor
            .and_then(|t| config_text(t, "MEILISEARCH_MASTER_KEY"))
            .map(Secret::new)
    };
    Ok(Some(MeilisearchClient::new(&url, key, "old")?))
}

/// The MySQL to read: the target (migrated) or the source, with its password.
fn mysql_endpoint(
    args: &ReindexArgs,
    tutor: Option<&TutorConfig>,
) -> anyhow::Result<Option<MysqlEndpoint>> {
    let j = &args.job;
    let (url, env, file, file_flag, tutor_key) = match args.meilisearch_source {
        MeilisearchSourceArg::Migrated => (
            j.to_mysql.clone(),
            "OFFLOAD_TO_MYSQL_PASSWORD",
            j.to_mysql_password_file.as_deref(),
            "--to-mysql-password-file",
            None,
        ),
        MeilisearchSourceArg::Source => (
            j.from_mysql.clone(),
            "OFFLOAD_FROM_MYSQL_PASSWORD",
            j.from_mysql_password_file.as_deref(),
            "--from-mysql-password-file",
            tutor.map(|t| (t, "MYSQL_ROOT_PASSWORD")),
        ),
    };
    let mut endpoint = match url {
        Some(u) => MysqlEndpoint::parse(&u).map_err(|d| anyhow!("MySQL URL: {d}"))?,
        None => match (args.meilisearch_source, tutor) {
            (MeilisearchSourceArg::Source, Some(cfg)) => crate::settings::mysql_from_tutor(cfg),
            _ => return Ok(None),
        },
    };
    find_password(
        &mut endpoint.password,
        &PasswordLookup {
            env,
            file,
            file_flag,
            tutor: tutor_key,
        },
    )?;
    Ok(Some(endpoint))
}

/// The MongoDB URL to read, from the flags or config.yml (source side).
fn mongo_url(args: &ReindexArgs, tutor: Option<&TutorConfig>) -> Option<String> {
    match args.meilisearch_source {
        MeilisearchSourceArg::Migrated => args.job.to_mongodb.clone(),
        MeilisearchSourceArg::Source => args.job.from_mongodb.clone().or_else(|| {
            let cfg = tutor?;
            let host = config_text(cfg, "MONGODB_HOST")?;
            let port = config_text(cfg, "MONGODB_PORT").unwrap_or_else(|| "27017".into());
            let user = config_text(cfg, "MONGODB_USERNAME").unwrap_or_default();
            let auth = if user.is_empty() {
                String::new()
            } else {
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                format!(
                    "{}:{}@",
                    enc(&user),
                    enc(&config_text(cfg, "MONGODB_PASSWORD").unwrap_or_default())
                )
            };
            Some(format!(
                "mongodb://{auth}{host}:{port}/?directConnection=true"
            ))
        }),
    }
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

fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

pub async fn reindex(args: ReindexArgs, json: bool, bars: bool) -> anyhow::Result<Outcome> {
    let tutor = load_tutor(&args.job)?;
    let Some((target, master_key)) = target_client(&args.job)? else {
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
        .or_else(|| {
            tutor
                .as_ref()
                .and_then(|t| config_text(t, "MEILISEARCH_INDEX_PREFIX"))
        })
        .unwrap_or_else(|| "tutor_".into());
    let database = args
        .mysql_database
        .clone()
        .or_else(|| {
            tutor
                .as_ref()
                .and_then(|t| config_text(t, "OPENEDX_MYSQL_DATABASE"))
        })
        .unwrap_or_else(|| "openedx".into());
    let mongo_db = args
        .mongodb_database
        .clone()
        .or_else(|| {
            tutor
                .as_ref()
                .and_then(|t| config_text(t, "MONGODB_DATABASE"))
        })
        .unwrap_or_else(|| "openedx".into());
    let api_key_uid = args.meilisearch_api_key_uid.clone().or_else(|| {
        tutor
            .as_ref()
            .and_then(|t| config_text(t, "MEILISEARCH_API_KEY_UID"))
    });

    // Check the target first: a wrong key or an unreachable server stops before any reading.
    reindex::check_target(&target).await?;

    let old = if mode == Mode::Copy {
        old_client(&args, tutor.as_ref())?
    } else {
        None
    };
    let mysql = mysql_endpoint(&args, tutor.as_ref())?;
    let mongo = mongo_url(&args, tutor.as_ref());
    let source = match &mysql {
        Some(m) => Some(
            SourceReader::connect(
                m,
                &database,
                mongo.as_deref().map(|u| (u, mongo_db.as_str())),
            )
            .await?,
        ),
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
        now: now_micros(),
    };
    let job_dir = args
        .job
        .job
        .clone()
        .unwrap_or_else(|| default_job_dir(&tutor_root(args.job.tutor_root.as_deref())));
    let catalog = if Catalog::exists(&job_dir) {
        Some(Catalog::open(&job_dir)?)
    } else {
        None
    };
    if let Some(c) = &catalog {
        c.phase_start("meilisearch", "reindex")?;
    }
    let reporter: Arc<dyn Reporter> = if bars {
        Arc::new(crate::ui::progress::BarReporter::new())
    } else {
        Arc::new(SilentReporter)
    };
    let report = reindex::run(&job, source.as_ref(), reporter).await?;
    if let Some(c) = &catalog {
        c.phase_done(
            "meilisearch",
            "reindex",
            if report.clean() { "clean" } else { "differs" },
        )?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.clean() {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}

/// The platform's MySQL database, from config.yml or Tutor's default.
fn platform_database(tutor: Option<&TutorConfig>, key: &str) -> String {
    tutor
        .and_then(|t| config_text(t, key))
        .unwrap_or_else(|| "openedx".into())
}

/// Where a job reads the source of truth: the migrated MySQL and MongoDB when the job moves them
/// (so the indexes match what the platform uses after cutover), else the servers config.yml names.
pub async fn job_source(settings: &Settings) -> anyhow::Result<SourceReader> {
    let tutor = settings.tutor.as_ref();
    let mysql = match &settings.mysql {
        Some(m) => m.target.clone(),
        None => bail!("the Meilisearch indexes are built from the platform's MySQL, and this job does not migrate it: add mysql to --stores, or run `offload reindex --meilisearch-source source` on its own"),
    };
    let database = platform_database(tutor, "OPENEDX_MYSQL_DATABASE");
    let mongo = match &settings.mongodb {
        Some(m) => {
            let client = m.target.client(crate::core::Side::Target, 2).await?;
            let db = platform_database(tutor, "MONGODB_DATABASE");
            Some((client.database(&db), m.target.address()))
        }
        None => None,
    };
    Ok(SourceReader::with_mongo(&mysql, &database, mongo))
}

/// The reindex phase of a job (`offload migrate`): rebuild every index on the job's target from
/// the job's source of truth, swap, verify, and provision the platform's API key.
pub async fn reindex_in_job(
    settings: &Settings,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<ReindexReport> {
    let m = settings
        .meilisearch
        .as_ref()
        .context("the job has no Meilisearch target")?;
    let target = MeilisearchClient::new(&m.url, m.master_key.clone(), "target")?;
    reindex::check_target(&target).await?;
    let source = job_source(settings).await?;
    let job = ReindexJob {
        target,
        old: None,
        master_key: m.master_key.clone(),
        prefix: m.prefix.clone(),
        mode: Mode::Rebuild,
        indexes: IndexKind::ALL.to_vec(),
        api_key_uid: m.api_key_uid.clone(),
        options: RebuildOptions::default(),
        now: now_micros(),
    };
    Ok(reindex::run(&job, Some(&source), reporter).await?)
}

/// The human report.
pub fn render(report: &ReindexReport) -> String {
    let mut out = format!(
        "Meilisearch {} at {}, documents from {}\n",
        report.server_version, report.target, report.source
    );
    for i in &report.indexes {
        out.push_str(&format!(
            "  {:<40} {} {} documents in {} batch(es), {:.1}s; live index holds {}; settings {}; {} sampled document(s) {}\n",
            i.index,
            i.how,
            i.documents,
            i.batches,
            i.seconds,
            i.live_documents,
            if i.settings_differences.is_empty() { "equal" } else { "DIFFER" },
            i.sample_checked,
            if i.document_differences.is_empty() { "equal" } else { "DIFFER" },
        ));
        for d in i.settings_differences.iter().chain(&i.document_differences) {
            out.push_str(&format!("      {d}\n"));
        }
        if i.live_documents != i.documents {
            out.push_str(&format!(
                "      count: {} document(s) built from the source, {} in the live index\n",
                i.documents, i.live_documents
            ));
        }
    }
    if let Some(k) = &report.api_key {
        out.push_str(&format!("  {k}\n"));
    }
    for n in &report.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out.push_str(if report.clean() {
        "Every index was rebuilt, swapped in and verified.\n"
    } else {
        "Some indexes differ from what was sent (see above).\n"
    });
    out
}

/// The Meilisearch part of `plan`: target checks, the indexes and what the source holds for
/// them, and what offload does for an Elasticsearch platform.
pub async fn plan_section(args: &JobArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let tutor = load_tutor(args)?;
    let es = tutor.as_ref().and_then(reindex::elasticsearch_note);
    let target = target_client(args)?;
    if target.is_none() && es.is_none() {
        return Ok(None);
    }
    let mut checks = Vec::new();
    if let Some((client, _)) = &target {
        match reindex::check_target(client).await {
            Ok(v) => checks.push(serde_json::json!({"name": "target Meilisearch", "ok": true, "detail": format!("{} answers, version {v}, index swap available", client.address())})),
            Err(e) => checks.push(serde_json::json!({"name": "target Meilisearch", "ok": false, "detail": e.to_string()})),
        }
    }
    let prefix = tutor
        .as_ref()
        .and_then(|t| config_text(t, "MEILISEARCH_INDEX_PREFIX"))
        .unwrap_or_else(|| "tutor_".into());
    // Counts from the migrated MySQL when it is named (block counts need the structures: they
    // are counted while `reindex` builds the documents).
    let mut counts: std::collections::HashMap<IndexKind, u64> = Default::default();
    if let Some(url) = &args.to_mysql {
        let mut endpoint = MysqlEndpoint::parse(url).map_err(|d| anyhow!("--to-mysql: {d}"))?;
        find_password(
            &mut endpoint.password,
            &PasswordLookup {
                env: "OFFLOAD_TO_MYSQL_PASSWORD",
                file: args.to_mysql_password_file.as_deref(),
                file_flag: "--to-mysql-password-file",
                tutor: None,
            },
        )?;
        let database = args
            .databases
            .first()
            .cloned()
            .or_else(|| {
                tutor
                    .as_ref()
                    .and_then(|t| config_text(t, "OPENEDX_MYSQL_DATABASE"))
            })
            .unwrap_or_else(|| "openedx".into());
        let source = SourceReader::connect(&endpoint, &database, None).await?;
        // Before the copy the migrated MySQL holds no platform tables yet: then the counts come
        // while `reindex` builds the indexes.
        if source.has_table("course_overviews_courseoverview").await? {
            let overviews = source.course_overviews().await?;
            let courses = source
                .course_index()
                .await?
                .iter()
                .filter(|e| !e.published_version.is_empty() && overviews.contains_key(&e.course_id))
                .count() as u64;
            counts.insert(IndexKind::CourseInfo, courses);
            counts.insert(
                IndexKind::CommentThreads,
                source.count("forum_commentthread").await?,
            );
            counts.insert(IndexKind::Comments, source.count("forum_comment").await?);
        }
    }
    let indexes: Vec<serde_json::Value> = IndexKind::ALL
        .iter()
        .map(|k| serde_json::json!({"index": reindex::index_uid(&prefix, *k), "from": k.source(), "documents": counts.get(k)}))
        .collect();
    // Browsers query Meilisearch directly: the cutover needs the address they reach it at.
    let public_url = match (&args.meilisearch_public_url, &target) {
        (Some(u), _) => Some(format!("browsers will reach it at {u} (MEILISEARCH_PUBLIC_URL after cutover)")),
        (None, Some(_)) => Some("the cutover needs the address browsers reach it at: pass --meilisearch-public-url URL (MEILISEARCH_PUBLIC_URL)".to_string()),
        (None, None) => None,
    };
    Ok(Some(serde_json::json!({
        "checks": checks,
        "public_url": public_url,
        "indexes": indexes,
        "elasticsearch": es,
        "note": "document counts are computed while `offload reindex` builds each index and checked against the live index after the swap",
    })))
}

/// Whether the Meilisearch checks of a plan passed.
pub fn plan_ok(section: &serde_json::Value) -> bool {
    section["checks"]
        .as_array()
        .map(|c| c.iter().all(|c| c["ok"] == true))
        .unwrap_or(true)
}

/// The Meilisearch part of a plan, for people.
pub fn render_plan(section: &serde_json::Value) -> String {
    let mut out = String::from("Meilisearch (rebuilt by `offload reindex`)\n");
    for c in section["checks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  [{}] {}: {}\n",
            if c["ok"] == true { "ok" } else { "FAIL" },
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    if let Some(p) = section["public_url"].as_str() {
        out.push_str(&format!("  {p}\n"));
    }
    for i in section["indexes"].as_array().into_iter().flatten() {
        let count = match i["documents"].as_u64() {
            Some(n) => format!("{n} documents"),
            None => "counted during reindex".to_string(),
        };
        out.push_str(&format!(
            "  {:<36} {count:<24} from {}\n",
            i["index"].as_str().unwrap_or(""),
            i["from"].as_str().unwrap_or("")
        ));
    }
    if let Some(es) = section["elasticsearch"].as_str() {
        out.push_str(&format!("  note: {es}\n"));
    }
    out
}
