//! `offload cutover` and `offload rollback`: point Tutor's config.yml at the migrated servers once
//! the job's verification passed for them, and restore it from the backup.

use anyhow::{bail, Context};
use serde_json::json;

use crate::cli::{CutoverArgs, RollbackArgs};
use crate::commands::{inputs_for_cutover, Outcome};
use crate::core::catalog::Catalog;
use crate::core::StoreKind;
use crate::settings::{tutor_root, Settings};
use crate::stores::mongodb::MongoEndpoint;
use crate::tutor::{self, CutoverTarget, MongodbTarget, MysqlTarget, RedisTarget, TutorConfig};

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

pub async fn cutover(args: CutoverArgs, json: bool) -> anyhow::Result<Outcome> {
    let inputs = inputs_for_cutover(&args.job);
    let root = tutor_root(args.job.tutor_root.as_deref());
    let job_dir = args
        .job
        .job
        .clone()
        .unwrap_or_else(|| crate::settings::default_job_dir(&root));
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

    let mut targets = Vec::new();
    for (kind, verdict) in verified_stores(catalog)? {
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
                let r = settings.redis.as_ref().context("the job has no Redis target")?;
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
                let m = settings.mongodb.as_ref().context("the job has no MongoDB target")?;
                targets.push(CutoverTarget::Mongodb(mongodb_target(&m.target)?));
            }
            other => bail!("cutover for {other} is not available in this version: point config.yml at the new {other} by hand (docs/cutover.md lists the keys), or leave it out with --stores"),
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
