//! `offload cutover` and `offload rollback`: point Tutor's config.yml at the migrated servers once
//! the job's verification passed for them, and restore it from the backup.

use anyhow::{bail, Context};
use serde_json::json;

use crate::cli::{CutoverArgs, RollbackArgs};
use crate::commands::{inputs_for_cutover, Outcome};
use crate::core::catalog::Catalog;
use crate::core::StoreKind;
use crate::reindex::setup::MeilisearchSettings;
use crate::settings::{tutor_root, Settings};
use crate::stores::mongodb::MongoEndpoint;
use crate::stores::objects::{ObjectSource, ObjectsSettings};
use crate::tutor::{
    self, CutoverTarget, MeilisearchTarget, MongodbTarget, MysqlTarget, RedisTarget, S3Target,
    TutorConfig,
};

/// Tutor's MongoDB keys for a target URI: one host, authentication and TLS as separate settings.
fn mongodb_target(e: &MongoEndpoint) -> anyhow::Result<MongodbTarget> {
    if e.srv || e.hosts.contains(',') {
        bail!("the MongoDB target `{}` has several hosts or is a mongodb+srv:// name; Tutor's MONGODB_HOST takes one host, so set MONGODB_HOST and friends by hand (docs/cutover.md)", e.hosts);
    }
    // `host:port`, `[v6]:port` or a bare host (IPv6 hosts are bracketed in URIs).
    let brackets = |h: &str| h.trim_matches(|c| c == '[' || c == ']').to_string();
    let (host, port) = match e.hosts.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (brackets(h), p.parse().unwrap_or(27017))
        }
        _ => (brackets(&e.hosts), 27017),
    };
    let option = |name: &str| {
        e.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let on = |v: Option<String>| v.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(MongodbTarget {
        host,
        port,
        username: e.user.clone().unwrap_or_default(),
        password: e
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default(),
        use_ssl: on(option("tls")) || on(option("ssl")),
        auth_source: option("authSource")
            .or_else(|| e.path_db.clone())
            .unwrap_or_else(|| "admin".into()),
        auth_mechanism: option("authMechanism").unwrap_or_default(),
        replica_set: option("replicaSet").unwrap_or_default(),
    })
}

/// tutor-contrib-s3's settings for the job's object-storage target: the endpoint and keys, and
/// each bucket the platform uses under the name it has on the target.
fn s3_target(o: &ObjectsSettings, cfg: &TutorConfig) -> anyhow::Result<S3Target> {
    let t = &o.target;
    let (host, port, use_ssl) = match &t.url {
        None => (String::new(), None, true),
        Some(u) => {
            let parsed = url::Url::parse(u).context("the job's S3 target URL")?;
            (
                parsed.host_str().unwrap_or_default().to_string(),
                parsed.port_or_known_default(),
                parsed.scheme() == "https",
            )
        }
    };
    // The source buckets the platform uses, as the minio plugin names them (a filesystem source
    // is copied into buckets with these default names).
    let minio = matches!(o.source, ObjectSource::S3 { .. });
    let source_bucket = |key: &str, default: &str| {
        minio
            .then(|| crate::settings::config_text(cfg, key))
            .flatten()
            .filter(|b| !b.is_empty() && !b.contains('{'))
            .unwrap_or_else(|| default.to_string())
    };
    let on_target = |b: String| o.options.bucket_map.get(&b).cloned().unwrap_or(b);
    let storage = on_target(source_bucket("MINIO_BUCKET_NAME", "openedx"));
    Ok(S3Target {
        host,
        port,
        use_ssl,
        region: if t.region.is_empty() {
            "us-east-1".into()
        } else {
            t.region.clone()
        },
        file_upload_bucket: on_target(source_bucket(
            "MINIO_FILE_UPLOAD_BUCKET_NAME",
            "openedxuploads",
        )),
        grade_bucket: on_target(source_bucket("MINIO_GRADES_BUCKET_NAME", "openedxgrades")),
        // Profile images were copied into the storage bucket, where the minio plugin keeps them.
        profile_image_bucket: storage.clone(),
        storage_bucket: storage,
        addressing_style: if t.url.is_none() {
            "auto".into()
        } else if t.path_style {
            "path".into()
        } else {
            "virtual".into()
        },
        access_key: t.access_key.clone().unwrap_or_default(),
        secret_key: t
            .secret_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .unwrap_or_default(),
    })
}

/// Tutor's Meilisearch settings for the job's target; the public URL is the operator's to give.
fn meilisearch_target(m: &MeilisearchSettings) -> anyhow::Result<MeilisearchTarget> {
    let public_url = m.public_url.clone().context(
        "Meilisearch needs the address browsers reach it at (MEILISEARCH_PUBLIC_URL): pass --meilisearch-public-url URL, e.g. https://search.example.org",
    )?;
    let master_key = m.master_key.as_ref().map(|k| k.expose().to_string()).context(
        "the target Meilisearch's master key is needed for MEILISEARCH_MASTER_KEY: put it in --to-meilisearch-key-file FILE or OFFLOAD_TO_MEILISEARCH_KEY",
    )?;
    Ok(MeilisearchTarget {
        url: m.url.clone(),
        public_url,
        master_key,
    })
}

/// Which stores of the job passed verification, and why the others did not.
fn verified_stores(catalog: &Catalog) -> anyhow::Result<Vec<(StoreKind, Result<(), String>)>> {
    let job_verify_clean = catalog
        .phases()?
        .iter()
        .any(|p| p.store == "job" && p.phase == "verify" && p.detail.as_deref() == Some("clean"));
    let mut out = Vec::new();
    for kind in StoreKind::ALL {
        let units = catalog.units(Some(kind))?;
        if units.is_empty() {
            continue;
        }
        let unverified = units
            .iter()
            .filter(|u| u.verify_state.as_deref() != Some("matched"))
            .count();
        let verdict = if unverified > 0 {
            Err(format!(
                "{unverified} of {} unit(s) not verified as matching",
                units.len()
            ))
        } else if !job_verify_clean {
            Err("the last verify found differences (schema or data)".to_string())
        } else {
            Ok(())
        };
        out.push((kind, verdict));
    }
    Ok(out)
}

/// Whether the job's search indexes were rebuilt and verified on the target.
fn reindexed(catalog: &Catalog) -> anyhow::Result<Result<(), String>> {
    let phases = catalog.phases()?;
    let last = phases
        .iter()
        .rfind(|p| p.store == "meilisearch" && p.phase == "reindex");
    Ok(match last {
        Some(p) if p.done_at.is_some() && p.detail.as_deref() == Some("clean") => Ok(()),
        Some(p) if p.done_at.is_some() => {
            Err("the last reindex found differences in the rebuilt indexes".into())
        }
        Some(_) => Err("the last reindex did not finish".into()),
        None => Err("the search indexes were not rebuilt on the target yet (offload reindex, or offload migrate)".into()),
    })
}

pub async fn cutover(args: CutoverArgs, json: bool) -> anyhow::Result<Outcome> {
    let inputs = inputs_for_cutover(&args.job);
    let root = tutor_root(args.job.tutor_root.as_deref());
    let job_dir = args
        .job
        .job
        .clone()
        .unwrap_or_else(|| crate::settings::default_job_dir(&root));
    // [job-lock] held until the cutover ends; a dry run writes nothing and takes no lock.
    let _lock = (!args.dry_run && Catalog::exists(&job_dir))
        .then(|| crate::job::lock::JobLock::acquire(&job_dir))
        .transpose()?;
    let catalog = Catalog::open(&job_dir)?;
    let setup = catalog.setup()?;
    let settings = Settings::resolve(&inputs, Some(&setup.endpoints))?;
    let done = run_cutover(&settings, &catalog, &job_dir, args.dry_run, args.force)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done.value)?);
    } else {
        println!("{}", done.text);
    }
    Ok(Outcome::Clean)
}

/// What a cutover did (or, dry, would do): for JSON and for people.
pub struct CutoverOutcome {
    pub value: serde_json::Value,
    pub text: String,
}

/// Cut over the job's verified stores (all of them, or refuse), print the change and the runbook.
pub fn run_cutover(
    settings: &Settings,
    catalog: &Catalog,
    job_dir: &std::path::Path,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<CutoverOutcome> {
    let setup = catalog.setup()?;
    let cfg = TutorConfig::load(&settings.tutor_root)?;

    // The file must be the one the job planned against.
    if let Some(planned) = setup.endpoints["tutor_config_digest"].as_str() {
        if planned != cfg.digest() {
            bail!(
                "{} changed since this job planned the migration; check what changed, then plan and copy again (offload copy --restart) or restore the file",
                cfg.path().display()
            );
        }
    }

    let mut verdicts = verified_stores(catalog)?;
    if settings.meilisearch.is_some() {
        verdicts.push((StoreKind::Meilisearch, reindexed(catalog)?));
    }
    let mut targets = Vec::new();
    for (kind, verdict) in verdicts {
        if let Err(why) = &verdict {
            if !force {
                bail!("{kind} is not safe to switch: {why}. Run `offload verify --job {}` and fix what it reports; --force overrides this at the risk of losing data", job_dir.display());
            }
            tracing::error!(store = %kind, reason = %why, "cutting over an unverified store because --force was given; the platform may lose data");
            eprintln!("WARNING: cutting over {kind} although it is not verified ({why}), because --force was given");
        }
        match kind {
            StoreKind::Mysql => {
                let m = settings
                    .mysql
                    .as_ref()
                    .context("the job has no MySQL target")?;
                targets.push(CutoverTarget::Mysql(MysqlTarget {
                    host: m.target.host.clone(),
                    port: m.target.port,
                    root_username: m.target.user.clone(),
                    // A target without a password gets an empty one, not the old server's.
                    root_password: Some(
                        m.target
                            .password
                            .as_ref()
                            .map(|p| p.expose().to_string())
                            .unwrap_or_default(),
                    ),
                    app: None,
                    plugin_users: Vec::new(),
                }));
            }
            StoreKind::Redis => {
                let r = settings
                    .redis
                    .as_ref()
                    .context("the job has no Redis target")?;
                targets.push(CutoverTarget::Redis(RedisTarget {
                    host: r.target.host.clone(),
                    port: r.target.port,
                    username: r.target.username.clone().unwrap_or_default(),
                    password: r
                        .target
                        .password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                }));
            }
            StoreKind::Mongodb => {
                let m = settings
                    .mongodb
                    .as_ref()
                    .context("the job has no MongoDB target")?;
                targets.push(CutoverTarget::Mongodb(mongodb_target(&m.target)?));
            }
            StoreKind::Objects => {
                let o = settings
                    .objects
                    .as_ref()
                    .context("the job has no object-storage target")?;
                targets.push(CutoverTarget::S3(s3_target(o, &cfg)?));
            }
            StoreKind::Meilisearch => {
                let m = settings
                    .meilisearch
                    .as_ref()
                    .context("the job has no Meilisearch target")?;
                targets.push(CutoverTarget::Meilisearch(meilisearch_target(m)?));
            }
        }
    }
    if targets.is_empty() {
        bail!("the job in {} has no store to cut over", job_dir.display());
    }

    let plan = tutor::plan_cutover(&cfg, &targets)?;
    let diff = plan.masked_diff();
    if dry_run {
        let mut text =
            format!("Dry run: config.yml would change like this (secrets masked):\n{diff}");
        for w in &plan.warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        return Ok(CutoverOutcome {
            value: json!({"dry_run": true, "diff": diff, "warnings": plan.warnings, "runbook": plan.runbook()}),
            text,
        });
    }
    let now = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .context("formatting the backup timestamp")?;
    let applied = tutor::apply_cutover(&settings.tutor_root, &plan, &cfg.digest(), &now)?;
    catalog.phase_done("job", "cutover", &applied.backup_path.display().to_string())?;
    let mut text = format!(
        "Rewrote {} (backup: {}).\n{diff}",
        applied.config_path.display(),
        applied.backup_path.display()
    );
    for w in &plan.warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    text.push_str(&plan.runbook());
    Ok(CutoverOutcome {
        value: json!({
            "config": applied.config_path, "backup": applied.backup_path,
            "diff": diff, "warnings": plan.warnings, "runbook": plan.runbook(),
        }),
        text,
    })
}

pub fn rollback(args: RollbackArgs, json: bool) -> anyhow::Result<Outcome> {
    let root = tutor_root(args.tutor_root.as_deref());
    let restored = tutor::rollback(&root)?;
    if json {
        println!("{}", json!({"restored_from": restored.restored_from}));
    } else {
        println!(
            "Restored {} from {}. Run `tutor config save` and restart the platform (tutor local start -d) to use the old servers again.",
            root.join(tutor::CONFIG_FILENAME).display(),
            restored.restored_from.display()
        );
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretSource};
    use crate::stores::objects::{ObjectsOptions, S3Endpoint};

    fn config(text: &str) -> (tempfile::TempDir, TutorConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yml"), text).unwrap();
        let cfg = TutorConfig::load(dir.path()).unwrap();
        (dir, cfg)
    }

    fn objects(url: &str, minio: bool, map: &[(&str, &str)]) -> ObjectsSettings {
        let mut target = S3Endpoint::parse(url).unwrap();
        target.access_key = Some("AK".into());
        target.secret_key = Some(Secret::new("SK"));
        let source = if minio {
            ObjectSource::S3 {
                endpoint: S3Endpoint::parse("http://minio:9000").unwrap(),
                buckets: Vec::new(),
            }
        } else {
            ObjectSource::Media {
                root: "/t".into(),
                folders: Vec::new(),
            }
        };
        ObjectsSettings {
            source,
            target,
            options: ObjectsOptions {
                bucket_map: map
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                ..ObjectsOptions::default()
            },
        }
    }

    #[test]
    fn s3_settings_name_the_target_buckets_the_platform_uses() {
        let (_d, cfg) = config("MINIO_BUCKET_NAME: site-media\nMINIO_GRADES_BUCKET_NAME: site-grades\nPLUGINS:\n- minio\n");
        let t = s3_target(
            &objects(
                "http://s3.internal:9000",
                true,
                &[("site-media", "prod-media")],
            ),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.use_ssl),
            ("s3.internal", Some(9000), false)
        );
        assert_eq!(t.storage_bucket, "prod-media");
        assert_eq!(t.profile_image_bucket, "prod-media");
        assert_eq!(t.grade_bucket, "site-grades");
        assert_eq!(t.file_upload_bucket, "openedxuploads");
        assert_eq!(t.addressing_style, "path");
        assert_eq!((t.access_key.as_str(), t.secret_key.as_str()), ("AK", "SK"));

        // Filesystem media land in buckets with the plugin's default names, whatever
        // config.yml's unused MINIO_* settings say.
        let t = s3_target(&objects("aws", false, &[]), &cfg).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.use_ssl), ("", None, true));
        assert_eq!(t.storage_bucket, "openedx");
        assert_eq!(t.grade_bucket, "openedxgrades");
        assert_eq!(
            (t.addressing_style.as_str(), t.region.as_str()),
            ("auto", "us-east-1")
        );
    }

    #[test]
    fn meilisearch_needs_a_public_url_and_a_master_key() {
        let mut m = MeilisearchSettings {
            url: "http://search.internal:7700".into(),
            master_key: Some(Secret::new("mk")),
            key_source: SecretSource::None,
            public_url: None,
            prefix: "tutor_".into(),
            api_key_uid: None,
        };
        let err = meilisearch_target(&m).unwrap_err().to_string();
        assert!(err.contains("--meilisearch-public-url"), "{err}");
        m.public_url = Some("https://search.example.org".into());
        m.master_key = None;
        let err = meilisearch_target(&m).unwrap_err().to_string();
        assert!(err.contains("--to-meilisearch-key-file"), "{err}");
        m.master_key = Some(Secret::new("mk"));
        let t = meilisearch_target(&m).unwrap();
        assert_eq!(t.public_url, "https://search.example.org");
    }
}
