//! Turns command-line flags, Tutor's config.yml, the environment and a job folder into validated
//! settings: which stores, which source and target servers, and where every password comes from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::catalog::Setup;
use crate::core::{Store, StoreKind};
use crate::reindex::setup::MeilisearchSettings;
use crate::secret::{read_secret_file, Secret, SecretSource};
use crate::stores::mongodb::{MongoEndpoint, MongoOptions, MongoStore};
use crate::stores::mysql::{AppUser, MysqlEndpoint, MysqlOptions, MysqlStore};
use crate::stores::objects::{ObjectsSettings, ObjectsStore};
use crate::stores::redis::{CopyMode, DbChoice, RedisEndpoint, RedisOptions, RedisStore};
use crate::tutor::TutorConfig;

/// Everything a command needs to know, resolved.
pub struct Settings {
    pub tutor_root: PathBuf,
    pub tutor: Option<TutorConfig>,
    pub job_dir: PathBuf,
    pub mysql: Option<MysqlSettings>,
    pub redis: Option<RedisSettings>,
    pub mongodb: Option<MongoSettings>,
    pub objects: Option<ObjectsSettings>,
    pub meilisearch: Option<MeilisearchSettings>,
    pub parallel: usize,
}

/// One end of a store: the URL without its password, and where the password comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    pub url: String,
    pub secret: SecretSource,
}

/// The MySQL part of the settings.
#[derive(Debug, Clone)]
pub struct MysqlSettings {
    pub source: MysqlEndpoint,
    pub source_secret: SecretSource,
    pub target: MysqlEndpoint,
    pub target_secret: SecretSource,
    pub options: MysqlOptions,
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

/// The MongoDB part of the settings.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub source: MongoEndpoint,
    pub source_secret: SecretSource,
    pub target: MongoEndpoint,
    pub target_secret: SecretSource,
    pub options: MongoOptions,
}

/// The flags that shape the settings (a subset of the CLI's, so the library does not depend on clap).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub tutor_root: Option<PathBuf>,
    pub job: Option<PathBuf>,
    pub stores: Vec<String>,
    pub from_mysql: Option<String>,
    pub from_mysql_password_file: Option<PathBuf>,
    pub to_mysql: Option<String>,
    pub to_mysql_password_file: Option<PathBuf>,
    pub targets: Option<PathBuf>,
    pub databases: Vec<String>,
    pub exclude: Vec<String>,
    pub parallel: usize,
    pub create_users: bool,
    pub batch_rows: Option<u64>,
    pub split_bytes: u64,
    pub from_redis: Option<String>,
    pub from_redis_password_file: Option<PathBuf>,
    pub to_redis: Option<String>,
    pub to_redis_password_file: Option<PathBuf>,
    /// `N` or `SOURCE:TARGET` database numbers.
    pub redis_dbs: Vec<String>,
    pub redis_typed: bool,
    pub redis_scan: bool,
    pub from_mongodb: Option<String>,
    pub from_mongodb_password_file: Option<PathBuf>,
    pub to_mongodb: Option<String>,
    pub to_mongodb_password_file: Option<PathBuf>,
    pub mongodb_databases: Vec<String>,
    pub mongodb_exclude: Vec<String>,
    pub mongodb_snapshot: bool,
    pub from_s3: Option<String>,
    pub to_s3: Option<String>,
    pub s3_region: Option<String>,
    pub s3_addressing: Option<String>,
    pub s3_profile: Option<String>,
    pub buckets: Vec<String>,
    pub bucket_map: Vec<String>,
    pub create_buckets: bool,
    pub part_size: Option<u64>,
    pub object_transfers: usize,
    pub deep: bool,
    pub mongodb_split_bytes: u64,
    /// Longest wait for the source to size one collection; `None` keeps the default, zero waits
    /// as long as it takes.
    pub mongodb_size_timeout: Option<std::time::Duration>,
    /// Bytes the copy's MongoDB source reads may hold ahead of the target; `None` keeps the
    /// default.
    pub mongodb_read_ahead: Option<u64>,
    pub to_meilisearch: Option<String>,
    pub to_meilisearch_key_file: Option<PathBuf>,
    pub meilisearch_public_url: Option<String>,
}

/// Why settings could not be resolved; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Tutor(#[from] crate::tutor::TutorError),
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("no target given for {store}. Pass --to-{store} URL or a --targets file")]
    NoTarget { store: String },
    #[error("no store has a target: pass --to-mysql URL, --to-mongodb URI, --to-redis URL, --to-s3 URL or --to-meilisearch URL (or a --targets file)")]
    NothingToDo,
    #[error(
        "the {store} store is not available in this version of offload; leave it out of --stores"
    )]
    NotAvailable { store: String },
    #[error("{what}: cannot read {path}: {detail}. Check the path and its permissions")]
    File {
        what: String,
        path: String,
        detail: String,
    },
    #[error("the {side} {store} password was given inside a URL and is not kept in the job. Pass the URL again, or put the password in {env}")]
    SecretNotRecoverable {
        side: String,
        store: String,
        env: String,
    },
}

fn invalid(what: impl Into<String>, detail: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        what: what.into(),
        detail: detail.into(),
    }
}

/// The targets file: `mysql: URL`, `mysql_password_file: FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    mysql: Option<String>,
    mysql_password_file: Option<PathBuf>,
    redis: Option<String>,
    redis_password_file: Option<PathBuf>,
    mongodb: Option<String>,
    mongodb_password_file: Option<PathBuf>,
    s3: Option<String>,
}

/// A config.yml value as text (numbers and booleans as YAML writes them).
pub fn config_text(cfg: &TutorConfig, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The default job folder: `<tutor root>.offload`, beside the root.
pub fn default_job_dir(tutor_root: &Path) -> PathBuf {
    let mut name = tutor_root
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "tutor".into());
    name.push(".offload");
    tutor_root.with_file_name(name)
}

/// Where the Tutor root is: the flag, else `TUTOR_ROOT`, else Tutor's default.
pub fn tutor_root(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(crate::tutor::default_root)
}

/// The stores this version can move.
pub const AVAILABLE: &[StoreKind] = &[
    StoreKind::Mysql,
    StoreKind::Mongodb,
    StoreKind::Redis,
    StoreKind::Objects,
    StoreKind::Meilisearch,
];

impl Settings {
    /// Resolve settings from flags; `recorded` is the endpoint record of an existing job, used when
    /// the flags do not name a target themselves.
    pub fn resolve(
        inputs: &Inputs,
        recorded: Option<&serde_json::Value>,
    ) -> Result<Settings, SettingsError> {
        // The flag, else the root the job was planned with, else Tutor's default.
        let recorded_root = recorded
            .and_then(|r| r.get("tutor_root"))
            .and_then(|v| v.as_str())
            .map(PathBuf::from);
        let tutor_root = match (&inputs.tutor_root, recorded_root) {
            (Some(flag), _) => flag.clone(),
            (None, Some(recorded)) => recorded,
            (None, None) => tutor_root(None),
        };
        let job_dir = inputs
            .job
            .clone()
            .unwrap_or_else(|| default_job_dir(&tutor_root));
        let tutor = if tutor_root.join("config.yml").is_file() {
            Some(TutorConfig::load(&tutor_root)?)
        } else {
            None
        };

        // Secrets a job found in config.yml come from config.yml as the job planned with it; after
        // a cutover that is the backup cutover made, not the rewritten file.
        let planned_digest = recorded
            .and_then(|r| r.get("tutor_config_digest"))
            .and_then(|v| v.as_str());
        let planned = match (&tutor, planned_digest) {
            (Some(cfg), Some(digest)) if cfg.digest() != digest => {
                planned_config(&tutor_root, digest)
            }
            _ => None,
        };
        let source_cfg = planned.as_ref().or(tutor.as_ref());

        let targets: TargetsFile = match &inputs.targets {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
                    what: "--targets".into(),
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                serde_yaml::from_str(&text).map_err(|e| {
                    invalid(
                        format!("--targets {}", path.display()),
                        format!("{e}; expected keys like `mysql: mysql://user@host:3306`"),
                    )
                })?
            }
            None => TargetsFile::default(),
        };

        let mut wanted: Vec<StoreKind> = Vec::new();
        for name in &inputs.stores {
            let kind = StoreKind::parse(name).ok_or_else(|| {
                invalid("--stores", format!("unknown store `{name}`; choose from mysql, mongodb, redis, objects, meilisearch"))
            })?;
            if !AVAILABLE.contains(&kind) {
                return Err(SettingsError::NotAvailable {
                    store: kind.to_string(),
                });
            }
            wanted.push(kind);
        }

        // A store takes part when --stores names it, or (without --stores) when it has a target.
        let selected = |kind: StoreKind, has_target: bool| {
            if wanted.is_empty() {
                has_target
            } else {
                wanted.contains(&kind)
            }
        };
        let record = |store: &str| recorded.and_then(|r| r.get(store));

        let has_mysql = inputs.to_mysql.is_some() || targets.mysql.is_some();
        let mysql = selected(StoreKind::Mysql, has_mysql || record("mysql").is_some())
            .then(|| Self::resolve_mysql(inputs, &targets, source_cfg, record("mysql")))
            .transpose()?;
        let has_redis = inputs.to_redis.is_some() || targets.redis.is_some();
        let redis = selected(StoreKind::Redis, has_redis || record("redis").is_some())
            .then(|| Self::resolve_redis(inputs, &targets, source_cfg, record("redis")))
            .transpose()?;
        let has_mongodb = inputs.to_mongodb.is_some() || targets.mongodb.is_some();
        let mongodb = selected(
            StoreKind::Mongodb,
            has_mongodb || record("mongodb").is_some(),
        )
        .then(|| Self::resolve_mongodb(inputs, &targets, source_cfg, record("mongodb")))
        .transpose()?;
        let s3_target = inputs.to_s3.clone().or_else(|| targets.s3.clone());
        let objects = selected(
            StoreKind::Objects,
            s3_target.is_some() || record("objects").is_some(),
        )
        .then(|| {
            crate::stores::objects::resolve(
                inputs,
                s3_target.as_deref(),
                source_cfg,
                &tutor_root,
                record("objects"),
            )
        })
        .transpose()?;
        let meilisearch = if selected(
            StoreKind::Meilisearch,
            inputs.to_meilisearch.is_some() || record("meilisearch").is_some(),
        ) {
            let m = crate::reindex::setup::resolve(inputs, source_cfg, record("meilisearch"))?;
            if m.is_none() {
                return Err(SettingsError::NoTarget {
                    store: "meilisearch".into(),
                });
            }
            m
        } else {
            None
        };
        let settings = Settings {
            tutor_root,
            tutor,
            job_dir,
            mysql,
            redis,
            mongodb,
            objects,
            meilisearch,
            parallel: inputs.parallel.max(1),
        };
        if settings.is_empty() {
            return Err(SettingsError::NothingToDo);
        }
        Ok(settings)
    }

    /// Whether no store is selected.
    pub fn is_empty(&self) -> bool {
        self.mysql.is_none()
            && self.mongodb.is_none()
            && self.redis.is_none()
            && self.objects.is_none()
            && self.meilisearch.is_none()
    }

    fn resolve_redis(
        inputs: &Inputs,
        targets: &TargetsFile,
        tutor: Option<&TutorConfig>,
        recorded: Option<&serde_json::Value>,
    ) -> Result<RedisSettings, SettingsError> {
        // Source: the flag, else the job's record, else config.yml (REDIS_HOST, ...).
        let (source, source_secret) = resolve_side(
            SideSpec {
                side: "source",
                url: inputs.from_redis.clone(),
                password_file: inputs.from_redis_password_file.clone(),
                tutor_password: tutor.map(|t| (t, "REDIS_PASSWORD")),
                from_config: tutor.map(|cfg| RedisEndpoint {
                    host: config_text(cfg, "REDIS_HOST").unwrap_or_else(|| "redis".into()),
                    port: config_text(cfg, "REDIS_PORT")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(6379),
                    username: config_text(cfg, "REDIS_USERNAME").filter(|u| !u.is_empty()),
                    password: None,
                    tls: None,
                    db: None,
                }),
            },
            recorded,
            tutor,
        )?;
        let (target, target_secret) = resolve_side::<RedisEndpoint>(
            SideSpec {
                side: "target",
                url: inputs.to_redis.clone().or_else(|| targets.redis.clone()),
                password_file: inputs
                    .to_redis_password_file
                    .clone()
                    .or_else(|| targets.redis_password_file.clone()),
                tutor_password: None,
                from_config: None,
            },
            recorded,
            tutor,
        )?;

        let dbs_text: Vec<String> = if inputs.redis_dbs.is_empty() {
            recorded
                .and_then(|r| r.get("dbs"))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        } else {
            inputs.redis_dbs.clone()
        };
        let mut dbs = dbs_text
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
        let config_db = |key: &str, default: i64| {
            tutor
                .and_then(|t| config_text(t, key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ok(RedisSettings {
            source,
            source_secret,
            target,
            target_secret,
            options: RedisOptions {
                dbs,
                celery_db: config_db("OPENEDX_CELERY_REDIS_DB", 0),
                cache_db: config_db("OPENEDX_CACHE_REDIS_DB", 1),
                batch_keys: inputs
                    .batch_rows
                    .unwrap_or(RedisOptions::default().batch_keys),
                mode: if inputs.redis_typed {
                    CopyMode::Typed
                } else {
                    CopyMode::Auto
                },
                snapshot: !inputs.redis_scan,
                ..RedisOptions::default()
            },
        })
    }

    fn resolve_mysql(
        inputs: &Inputs,
        targets: &TargetsFile,
        tutor: Option<&TutorConfig>,
        recorded: Option<&serde_json::Value>,
    ) -> Result<MysqlSettings, SettingsError> {
        // Source: the flag, else the job's record, else config.yml.
        let (source, source_secret) = resolve_side(
            SideSpec {
                side: "source",
                url: inputs.from_mysql.clone(),
                password_file: inputs.from_mysql_password_file.clone(),
                tutor_password: tutor.map(|t| (t, "MYSQL_ROOT_PASSWORD")),
                from_config: tutor.map(mysql_from_tutor),
            },
            recorded,
            tutor,
        )?;
        let (target, target_secret) = resolve_side::<MysqlEndpoint>(
            SideSpec {
                side: "target",
                url: inputs.to_mysql.clone().or_else(|| targets.mysql.clone()),
                password_file: inputs
                    .to_mysql_password_file
                    .clone()
                    .or_else(|| targets.mysql_password_file.clone()),
                tutor_password: None,
                from_config: None,
            },
            recorded,
            tutor,
        )?;

        let recorded_list = |key: &str| -> Vec<String> {
            recorded
                .and_then(|r| r.get(key))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        let databases = if inputs.databases.is_empty() {
            recorded_list("databases")
        } else {
            inputs.databases.clone()
        };
        let exclude = if inputs.exclude.is_empty() {
            recorded_list("exclude")
        } else {
            inputs.exclude.clone()
        };

        let mut create_users = Vec::new();
        if inputs.create_users {
            let cfg = tutor.ok_or_else(|| invalid("--create-users", "needs Tutor's config.yml for OPENEDX_MYSQL_USERNAME and its password; pass --tutor-root"))?;
            let name =
                config_text(cfg, "OPENEDX_MYSQL_USERNAME").unwrap_or_else(|| "openedx".into());
            let password = config_text(cfg, "OPENEDX_MYSQL_PASSWORD").ok_or_else(|| {
                invalid(
                    "--create-users",
                    "config.yml has no OPENEDX_MYSQL_PASSWORD; run `tutor config save` first",
                )
            })?;
            let database =
                config_text(cfg, "OPENEDX_MYSQL_DATABASE").unwrap_or_else(|| "openedx".into());
            create_users.push(AppUser {
                name,
                password: Secret::new(password),
                database,
            });
        }
        Ok(MysqlSettings {
            source,
            source_secret,
            target,
            target_secret,
            options: MysqlOptions {
                databases,
                exclude,
                create_users,
                batch_rows: inputs.batch_rows,
                split_bytes: inputs.split_bytes.max(1),
                ..MysqlOptions::default()
            },
        })
    }

    /// The stores these settings describe, ready to work.
    pub fn stores(&self) -> Vec<Arc<dyn Store>> {
        let mut out: Vec<Arc<dyn Store>> = Vec::new();
        if let Some(m) = &self.mysql {
            out.push(Arc::new(MysqlStore::new(
                m.source.clone(),
                m.target.clone(),
                m.options.clone(),
                self.parallel,
            )));
        }
        if let Some(r) = &self.redis {
            out.push(Arc::new(RedisStore::new(
                r.source.clone(),
                r.target.clone(),
                r.options.clone(),
            )));
        }
        if let Some(m) = &self.mongodb {
            out.push(Arc::new(MongoStore::new(
                m.source.clone(),
                m.target.clone(),
                m.options.clone(),
                self.parallel,
            )));
        }
        if let Some(o) = &self.objects {
            out.push(Arc::new(ObjectsStore::new(
                o.source.clone(),
                o.target.clone(),
                o.options.clone(),
            )));
        }
        out
    }

    /// What the job records: the guard compared on resume, and the endpoints (without secrets).
    pub fn setup(&self, stores: &[Arc<dyn Store>]) -> Setup {
        let mut guard = serde_json::Map::new();
        for s in stores {
            guard.insert(
                s.kind().to_string(),
                serde_json::to_value(s.identity()).expect("an identity serializes"),
            );
        }
        let mut endpoints = serde_json::Map::new();
        if let Some(m) = &self.mysql {
            endpoints.insert(
                "mysql".into(),
                json!({
                    "source": EndpointRecord { url: m.source.public_url(), secret: m.source_secret.clone() },
                    "target": EndpointRecord { url: m.target.public_url(), secret: m.target_secret.clone() },
                    "databases": m.options.databases,
                    "exclude": m.options.exclude,
                }),
            );
        }
        if let Some(r) = &self.redis {
            endpoints.insert(
                "redis".into(),
                json!({
                    "source": EndpointRecord { url: r.source.public_url(), secret: r.source_secret.clone() },
                    "target": EndpointRecord { url: r.target.public_url(), secret: r.target_secret.clone() },
                    "dbs": r.options.dbs.iter().map(|d| d.render()).collect::<Vec<_>>(),
                }),
            );
        }
        if let Some(m) = &self.mongodb {
            endpoints.insert(
                "mongodb".into(),
                json!({
                    "source": EndpointRecord { url: m.source.public_url(), secret: m.source_secret.clone() },
                    "target": EndpointRecord { url: m.target.public_url(), secret: m.target_secret.clone() },
                    "databases": m.options.databases,
                    "exclude": m.options.exclude,
                    "platform_databases": m.options.platform_databases,
                    "optional_databases": m.options.optional_databases,
                    "snapshot": m.options.snapshot,
                }),
            );
        }
        if let Some(o) = &self.objects {
            endpoints.insert("objects".into(), o.record());
        }
        if let Some(m) = &self.meilisearch {
            endpoints.insert("meilisearch".into(), m.record());
            guard.insert("meilisearch".into(), m.identity());
        }
        endpoints.insert(
            "tutor_root".into(),
            json!(self.tutor_root.display().to_string()),
        );
        // What config.yml was when the job planned, so cutover can refuse a file changed since.
        if let Some(cfg) = &self.tutor {
            endpoints.insert("tutor_config_digest".into(), json!(cfg.digest()));
        }
        Setup {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            guard: serde_json::Value::Object(guard),
            endpoints: serde_json::Value::Object(endpoints),
        }
    }
}

/// The backup of config.yml (made by cutover) whose content has this digest, if any.
fn planned_config(root: &Path, digest: &str) -> Option<TutorConfig> {
    let entries = std::fs::read_dir(root).ok()?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TUTOR_"))
        .collect();
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("config.yml.offload-backup-")
        })
        .filter_map(|e| TutorConfig::load_file(root, &e.path(), env.clone()).ok())
        .find(|cfg| cfg.digest() == digest)
}

impl Settings {
    fn resolve_mongodb(
        inputs: &Inputs,
        targets: &TargetsFile,
        tutor: Option<&TutorConfig>,
        recorded: Option<&serde_json::Value>,
    ) -> Result<MongoSettings, SettingsError> {
        // Source: the flag, else the job's record, else config.yml with Tutor's defaults.
        let (source, source_secret) = resolve_side(
            SideSpec {
                side: "source",
                url: inputs.from_mongodb.clone(),
                password_file: inputs.from_mongodb_password_file.clone(),
                tutor_password: tutor.map(|t| (t, "MONGODB_PASSWORD")),
                from_config: tutor.map(mongodb_from_tutor),
            },
            recorded,
            tutor,
        )?;
        let (target, target_secret) = resolve_side::<MongoEndpoint>(
            SideSpec {
                side: "target",
                url: inputs
                    .to_mongodb
                    .clone()
                    .or_else(|| targets.mongodb.clone()),
                password_file: inputs
                    .to_mongodb_password_file
                    .clone()
                    .or_else(|| targets.mongodb_password_file.clone()),
                tutor_password: None,
                from_config: None,
            },
            recorded,
            tutor,
        )?;

        let recorded_list = |key: &str| -> Option<Vec<String>> {
            recorded
                .and_then(|r| r.get(key))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        let databases = if inputs.mongodb_databases.is_empty() {
            recorded_list("databases").unwrap_or_default()
        } else {
            inputs.mongodb_databases.clone()
        };
        let exclude = if inputs.mongodb_exclude.is_empty() {
            recorded_list("exclude").unwrap_or_default()
        } else {
            inputs.mongodb_exclude.clone()
        };
        let platform = tutor
            .and_then(|c| config_text(c, "MONGODB_DATABASE"))
            .filter(|d| !d.is_empty())
            .map(|d| vec![d])
            .or_else(|| recorded_list("platform_databases"))
            .unwrap_or_else(|| vec!["openedx".into()]);
        let forum = tutor
            .and_then(|c| config_text(c, "FORUM_MONGODB_DATABASE"))
            .filter(|d| !d.is_empty())
            .map(|d| vec![d])
            .or_else(|| recorded_list("optional_databases"))
            .unwrap_or_else(|| vec!["cs_comments_service".into()]);
        let snapshot = inputs.mongodb_snapshot
            || recorded
                .and_then(|r| r.get("snapshot"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
        Ok(MongoSettings {
            source,
            source_secret,
            target,
            target_secret,
            options: MongoOptions {
                databases,
                exclude,
                platform_databases: platform,
                optional_databases: forum,
                batch_docs: inputs.batch_rows,
                split_bytes: inputs.mongodb_split_bytes.max(1),
                size_timeout: inputs
                    .mongodb_size_timeout
                    .unwrap_or(MongoOptions::default().size_timeout),
                snapshot,
                read_ahead_bytes: inputs
                    .mongodb_read_ahead
                    .unwrap_or(MongoOptions::default().read_ahead_bytes),
                ..MongoOptions::default()
            },
        })
    }
}

/// The source MySQL as Tutor's config.yml describes it (`MYSQL_*`, with Tutor's defaults), without
/// its password.
pub fn mysql_from_tutor(cfg: &TutorConfig) -> MysqlEndpoint {
    MysqlEndpoint {
        host: config_text(cfg, "MYSQL_HOST").unwrap_or_else(|| "mysql".into()),
        port: config_text(cfg, "MYSQL_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or(3306),
        user: config_text(cfg, "MYSQL_ROOT_USERNAME").unwrap_or_else(|| "root".into()),
        password: None,
        tls: crate::stores::mysql::TlsMode::Disabled,
    }
}

/// The source MongoDB as Tutor's config.yml describes it (`MONGODB_*`, with Tutor's defaults).
pub fn mongodb_from_tutor(cfg: &TutorConfig) -> MongoEndpoint {
    let text = |k: &str| config_text(cfg, k).filter(|v| !v.is_empty());
    let host = text("MONGODB_HOST").unwrap_or_else(|| "mongodb".into());
    let port = text("MONGODB_PORT").unwrap_or_else(|| "27017".into());
    let mut e = MongoEndpoint {
        srv: false,
        user: text("MONGODB_USERNAME"),
        password: None,
        hosts: format!("{host}:{port}"),
        path_db: None,
        options: Vec::new(),
    };
    if e.user.is_some() {
        let source = text("MONGODB_AUTH_SOURCE").unwrap_or_else(|| "admin".into());
        e.set_option("authSource", &source);
        if let Some(m) = text("MONGODB_AUTH_MECHANISM") {
            e.set_option("authMechanism", &m);
        }
    }
    if cfg.get_bool("MONGODB_USE_SSL") == Some(true) {
        e.set_option("tls", "true");
    }
    if let Some(rs) = text("MONGODB_REPLICA_SET") {
        e.set_option("replicaSet", &rs);
    }
    e
}

/// Where to look for one endpoint's password when its URL has none, in this order: an environment
/// variable, a file, a config.yml key.
pub struct PasswordLookup<'a> {
    pub env: &'a str,
    pub file: Option<&'a Path>,
    /// The flag that named the file, for messages.
    pub file_flag: &'a str,
    pub tutor: Option<(&'a TutorConfig, &'a str)>,
}

/// Complete a password: kept when the URL had one, else looked up; says where it came from.
pub fn find_password(
    password: &mut Option<Secret>,
    lookup: &PasswordLookup,
) -> Result<SecretSource, SettingsError> {
    if password.is_some() {
        return Ok(SecretSource::Url);
    }
    if let Ok(v) = std::env::var(lookup.env) {
        *password = Some(Secret::new(v));
        return Ok(SecretSource::Env(lookup.env.to_string()));
    }
    if let Some(path) = lookup.file {
        let secret = read_secret_file(path).map_err(|err| SettingsError::File {
            what: lookup.file_flag.to_string(),
            path: path.display().to_string(),
            detail: err.to_string(),
        })?;
        *password = Some(secret);
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return Ok(SecretSource::File(absolute));
    }
    if let Some((cfg, key)) = lookup.tutor {
        if let Some(p) = config_text(cfg, key).filter(|p| !p.is_empty()) {
            *password = Some(Secret::new(p));
            return Ok(SecretSource::Tutor(key.to_string()));
        }
    }
    Ok(SecretSource::None)
}

/// Find a recorded endpoint's password again where the job says it came from. `url_env` is the
/// variable to try when it was inside a URL (which the job does not keep).
pub fn recover_password(
    source: &SecretSource,
    store: &str,
    side: &str,
    url_env: &str,
    tutor: Option<&TutorConfig>,
) -> Result<Option<Secret>, SettingsError> {
    let what = || format!("{side} {store} password");
    Ok(match source {
        SecretSource::None => None,
        SecretSource::Url => Some(Secret::new(std::env::var(url_env).map_err(|_| {
            SettingsError::SecretNotRecoverable {
                side: side.into(),
                store: store.into(),
                env: url_env.into(),
            }
        })?)),
        SecretSource::Env(name) => Some(Secret::new(std::env::var(name).map_err(|_| {
            invalid(
                what(),
                format!("the job reads it from ${name}, which is not set now; export it again"),
            )
        })?)),
        SecretSource::File(path) => {
            Some(read_secret_file(path).map_err(|err| SettingsError::File {
                what: format!("{} file", what()),
                path: path.display().to_string(),
                detail: err.to_string(),
            })?)
        }
        SecretSource::Tutor(key) => {
            let cfg = tutor.ok_or_else(|| {
                invalid(
                    what(),
                    format!("the job reads it from config.yml ({key}), but no config.yml was found; pass --tutor-root"),
                )
            })?;
            config_text(cfg, key).map(Secret::new)
        }
    })
}

/// One store's endpoint type, as the shared source/target resolution sees it.
trait StoreEndpoint: Sized {
    /// For messages: `MySQL`.
    const STORE: &'static str;
    /// In flag and variable names: `mysql` gives `--to-mysql`, `OFFLOAD_TO_MYSQL_PASSWORD`.
    const NAME: &'static str;
    fn parse_url(url: &str) -> Result<Self, String>;
    /// Where the password goes; `None` when this endpoint takes none (MongoDB without a user).
    fn password_slot(&mut self) -> Option<&mut Option<Secret>>;
}

impl StoreEndpoint for MysqlEndpoint {
    const STORE: &'static str = "MySQL";
    const NAME: &'static str = "mysql";
    fn parse_url(url: &str) -> Result<Self, String> {
        MysqlEndpoint::parse(url)
    }
    fn password_slot(&mut self) -> Option<&mut Option<Secret>> {
        Some(&mut self.password)
    }
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

impl StoreEndpoint for MongoEndpoint {
    const STORE: &'static str = "MongoDB";
    const NAME: &'static str = "mongodb";
    fn parse_url(url: &str) -> Result<Self, String> {
        MongoEndpoint::parse(url)
    }
    fn password_slot(&mut self) -> Option<&mut Option<Secret>> {
        self.user.is_some().then_some(&mut self.password)
    }
}

/// Where one side of a store may come from, in this order: a URL (flag or targets file), the
/// job's record, config.yml (sources only).
struct SideSpec<'a, E> {
    /// `source` or `target`.
    side: &'static str,
    url: Option<String>,
    password_file: Option<PathBuf>,
    /// The config.yml key of the password, used when neither URL, variable nor file has one.
    tutor_password: Option<(&'a TutorConfig, &'a str)>,
    /// The endpoint config.yml describes, for a source no flag or record names.
    from_config: Option<E>,
}

/// Resolve one side of a store and where its password came from. `record` is the store's part
/// of a job's record.
fn resolve_side<E: StoreEndpoint>(
    spec: SideSpec<'_, E>,
    record: Option<&serde_json::Value>,
    tutor: Option<&TutorConfig>,
) -> Result<(E, SecretSource), SettingsError> {
    let direction = if spec.side == "source" { "from" } else { "to" };
    let flag = format!("--{direction}-{}", E::NAME);
    let env = format!(
        "OFFLOAD_{}_{}_PASSWORD",
        direction.to_uppercase(),
        E::NAME.to_uppercase()
    );
    let file_flag = format!("{flag}-password-file");
    let complete = |e: &mut E| match e.password_slot() {
        None => Ok(SecretSource::None),
        Some(slot) => find_password(
            slot,
            &PasswordLookup {
                env: &env,
                file: spec.password_file.as_deref(),
                file_flag: &file_flag,
                tutor: spec.tutor_password,
            },
        ),
    };
    if let Some(url) = &spec.url {
        let mut e = E::parse_url(url).map_err(|d| invalid(&flag, d))?;
        let secret = complete(&mut e)?;
        return Ok((e, secret));
    }
    let recorded: Option<EndpointRecord> = record
        .and_then(|r| r.get(spec.side))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if let Some(rec) = recorded {
        let mut e = E::parse_url(&rec.url)
            .map_err(|d| invalid(format!("the job's {} {} URL", spec.side, E::STORE), d))?;
        if let Some(slot) = e.password_slot() {
            *slot = recover_password(&rec.secret, E::STORE, spec.side, &env, tutor)?;
        }
        return Ok((e, rec.secret));
    }
    match spec.from_config {
        Some(mut e) => {
            let secret = complete(&mut e)?;
            Ok((e, secret))
        }
        None if spec.side == "target" => Err(SettingsError::NoTarget {
            store: E::NAME.into(),
        }),
        None => Err(invalid(
            format!("source {}", E::STORE),
            format!("no config.yml found in the Tutor root and no {flag} given; pass --tutor-root DIR or {flag} URL"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_folder_sits_beside_the_root() {
        assert_eq!(
            default_job_dir(Path::new("/home/u/.local/share/tutor")),
            PathBuf::from("/home/u/.local/share/tutor.offload")
        );
    }
}
