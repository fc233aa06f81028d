//! The Redis store's settings: its flags, and its source and target resolved from them, Tutor's
//! config.yml (`REDIS_*`, the Celery and cache database numbers), the environment, password files
//! and a job's record; the database selection and remaps; what the job records (never a password).

use std::path::PathBuf;

use serde_json::json;

use super::{CopyMode, DbChoice, RedisEndpoint, RedisOptions};
use crate::core::Side;
use crate::resolve::{
    config_host, config_number, config_port, config_text, invalid, resolve_side, EndpointRecord,
    ResolveContext, SettingsError, SideSpec, StoreEndpoint,
};
use crate::secret::{Secret, SecretSource};

/// The Redis flags.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct RedisArgs {
    /// Source Redis, overriding config.yml's REDIS_HOST/REDIS_PORT/REDIS_USERNAME/REDIS_PASSWORD:
    /// redis://[user[:password]@]host:port[/db] (rediss:// for TLS). The password may instead come
    /// from OFFLOAD_FROM_REDIS_PASSWORD or --from-redis-password-file.
    #[arg(long, value_name = "URL")]
    pub from_redis: Option<String>,

    /// File whose first line is the source Redis password.
    #[arg(long, value_name = "FILE")]
    pub from_redis_password_file: Option<PathBuf>,

    /// Target Redis: redis://[user[:password]@]host:port[/db], or rediss://...[?ca=FILE |
    /// ?insecure=true] for TLS. The password may instead come from OFFLOAD_TO_REDIS_PASSWORD or
    /// --to-redis-password-file.
    #[arg(long, value_name = "URL")]
    pub to_redis: Option<String>,

    /// File whose first line is the target Redis password.
    #[arg(long, value_name = "FILE")]
    pub to_redis_password_file: Option<PathBuf>,

    /// Redis databases to copy, comma-separated: N, or SRC:DST to land source database SRC in
    /// target database DST [default: every database that holds keys]. Tutor uses 0 for the Celery
    /// broker and 1 for the Django cache, which is safe to leave out (`--redis-dbs 0`).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub redis_dbs: Vec<String>,

    /// Rebuild Redis values with typed commands instead of DUMP/RESTORE (what offload does by
    /// itself when the target cannot restore the source's payloads, e.g. an older server).
    #[arg(long)]
    pub redis_typed: bool,

    /// Read the Redis source key by key with SCAN, resumable mid-database, instead of from a
    /// snapshot the source streams as to a new replica (PSYNC), which is what offload does where
    /// the source allows it.
    #[arg(long)]
    pub redis_scan: bool,
}

/// The Redis part of the settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub source: RedisEndpoint,
    pub source_secret: SecretSource,
    pub target: RedisEndpoint,
    pub target_secret: SecretSource,
    pub options: RedisOptions,
}

impl StoreEndpoint for RedisEndpoint {
    const STORE: &'static str = "Redis";
    const NAME: &'static str = "redis";
    fn parse_url(url: &str) -> Result<Self, String> {
        RedisEndpoint::parse(url)
    }
    fn password_slot(&mut self) -> Option<&mut Option<Secret>> {
        Some(&mut self.password)
    }
}

/// Resolve both ends, the databases and the options; `recorded` is the Redis part of a job's
/// record.
pub fn resolve(
    args: &RedisArgs,
    ctx: &ResolveContext,
    recorded: Option<&serde_json::Value>,
) -> Result<RedisSettings, SettingsError> {
    let tutor = ctx.tutor;
    // Source: the flag, else the job's record, else config.yml (REDIS_HOST, ...).
    let (source, source_secret) = resolve_side(
        SideSpec {
            side: Side::Source,
            url: args.from_redis.clone(),
            password_file: args.from_redis_password_file.clone(),
            tutor_password: tutor.map(|t| (t, "REDIS_PASSWORD")),
            from_config: tutor.map(|cfg| {
                Ok(RedisEndpoint {
                    host: config_host(cfg, "REDIS_HOST", "redis", "--from-redis")?,
                    port: config_port(cfg, "REDIS_PORT", 6379, "--from-redis")?,
                    username: config_text(cfg, "REDIS_USERNAME").filter(|u| !u.is_empty()),
                    password: None,
                    tls: None,
                    db: None,
                })
            }),
        },
        recorded,
        tutor,
    )?;
    let (target, target_secret) = resolve_side::<RedisEndpoint>(
        SideSpec {
            side: Side::Target,
            url: args.to_redis.clone().or_else(|| ctx.targets.redis.clone()),
            password_file: args
                .to_redis_password_file
                .clone()
                .or_else(|| ctx.targets.redis_password_file.clone()),
            tutor_password: None,
            from_config: None,
        },
        recorded,
        tutor,
    )?;

    let dbs_text: Vec<String> = if args.redis_dbs.is_empty() {
        recorded
            .and_then(|r| r.get("dbs"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    } else {
        args.redis_dbs.clone()
    };
    let dbs = databases(&dbs_text, &source, &target)?;
    let config_db = |key: &str, default: i64| match tutor {
        Some(cfg) => config_number(
            cfg,
            key,
            default,
            0..=i64::from(i32::MAX),
            "a Redis database number (0 or more)",
        ),
        None => Ok(default),
    };
    Ok(RedisSettings {
        source,
        source_secret,
        target,
        target_secret,
        options: RedisOptions {
            dbs,
            celery_db: config_db("OPENEDX_CELERY_REDIS_DB", 0)?,
            cache_db: config_db("OPENEDX_CACHE_REDIS_DB", 1)?,
            batch_keys: ctx.batch_rows.unwrap_or(RedisOptions::default().batch_keys),
            mode: if args.redis_typed {
                CopyMode::Typed
            } else {
                CopyMode::Auto
            },
            snapshot: !args.redis_scan,
            ..RedisOptions::default()
        },
    })
}

/// The databases to copy and where each lands: `--redis-dbs` (or the job's record), else a
/// database number in the source URL; a number in the target URL receives the one source database.
fn databases(
    text: &[String],
    source: &RedisEndpoint,
    target: &RedisEndpoint,
) -> Result<Vec<DbChoice>, SettingsError> {
    let mut dbs = text
        .iter()
        .map(|d| DbChoice::parse(d).map_err(|e| invalid("--redis-dbs", e)))
        .collect::<Result<Vec<_>, _>>()?;
    // A database number in a URL path: the source's selects it, the target's receives it.
    if dbs.is_empty() {
        if let Some(db) = source.db {
            dbs.push(DbChoice {
                source: db,
                target: target.db.unwrap_or(db),
            });
        }
    }
    if let Some(tdb) = target.db {
        match dbs.as_mut_slice() {
            [one] => one.target = tdb,
            _ => {
                return Err(invalid(
                    "--to-redis",
                    "a database number in the target URL needs exactly one source database (--redis-dbs N or a number in --from-redis); map several with --redis-dbs SRC:DST",
                ))
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &dbs {
        if !seen.insert(d.target) {
            return Err(invalid(
                "--redis-dbs",
                format!(
                    "two source databases would land in target database {}",
                    d.target
                ),
            ));
        }
    }
    Ok(dbs)
}

impl RedisSettings {
    /// The sides whose certificate `insecure=true` leaves unverified.
    pub fn tls_warnings(&self) -> Vec<(Side, String)> {
        [(Side::Source, &self.source), (Side::Target, &self.target)]
            .into_iter()
            .filter_map(|(side, e)| e.tls_warning().map(|w| (side, w)))
            .collect()
    }

    /// What the job records to reconnect later: URLs without passwords, where each password
    /// comes from, and the databases.
    pub fn record(&self) -> serde_json::Value {
        json!({
            "source": EndpointRecord { url: self.source.public_url(), secret: self.source_secret.clone() },
            "target": EndpointRecord { url: self.target.public_url(), secret: self.target_secret.clone() },
            "dbs": self.options.dbs.iter().map(|d| d.render()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::TargetsFile;
    use crate::tutor::TutorConfig;

    use crate::resolve::test_support::config as tutor;

    fn context<'a>(cfg: &'a TutorConfig, targets: &'a TargetsFile) -> ResolveContext<'a> {
        ResolveContext {
            tutor: Some(cfg),
            tutor_root: cfg.root(),
            tutor_root_flag: true,
            targets,
            batch_rows: None,
            create_users: false,
            deep: false,
        }
    }

    fn args(from: Option<&str>) -> RedisArgs {
        RedisArgs {
            from_redis: from.map(str::to_string),
            to_redis: Some("redis://t:6379".into()),
            ..RedisArgs::default()
        }
    }

    #[test]
    fn invalid_ports_and_database_numbers_in_config_are_errors() {
        let targets = TargetsFile::default();
        let (_d, cfg) = tutor("REDIS_PORT: 70000\n");
        let err = resolve(&args(None), &context(&cfg, &targets), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_PORT") && err.contains("70000"), "{err}");
        assert!(resolve(
            &args(Some("redis://s:6379")),
            &context(&cfg, &targets),
            None
        )
        .is_ok());

        for key in ["OPENEDX_CELERY_REDIS_DB", "OPENEDX_CACHE_REDIS_DB"] {
            let (_d, cfg) = tutor(&format!("{key}: two\n"));
            let err = resolve(&args(None), &context(&cfg, &targets), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("two"), "{err}");
        }
        let (_d, cfg) = tutor("OPENEDX_CELERY_REDIS_DB: 4\n");
        let s = resolve(&args(None), &context(&cfg, &targets), None).unwrap();
        assert_eq!((s.options.celery_db, s.options.cache_db), (4, 1));
        assert_eq!(s.source.port, 6379);
    }
}
