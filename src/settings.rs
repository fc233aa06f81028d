//! Turns the command line's inputs, Tutor's config.yml, the environment and a job's record into
//! validated settings: which stores take part, each store's source and target (resolved in the
//! store's own `settings` module, through the registry in `stores`), and what a job records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::core::catalog::Setup;
use crate::core::{Store, StoreKind};
use crate::resolve::{invalid, ResolveContext, SettingsError, TargetsFile};
use crate::search::elasticsearch::{ElasticsearchArgs, ElasticsearchSettings};
use crate::search::settings::{MeilisearchSettings, SearchArgs};
use crate::stores::mongodb::settings::MongoSettings;
use crate::stores::mysql::settings::MysqlSettings;
use crate::stores::objects::ObjectsSettings;
use crate::stores::redis::settings::RedisSettings;
use crate::stores::{StoreArgs, StoreSettings, COPY_STORES};
use crate::tutor::TutorConfig;

/// Everything a command needs to know, resolved.
pub struct Settings {
    pub tutor_root: PathBuf,
    pub tutor: Option<TutorConfig>,
    pub job_dir: PathBuf,
    /// The copy stores taking part, in the order of [`COPY_STORES`].
    pub stores: Vec<StoreSettings>,
    pub meilisearch: Option<MeilisearchSettings>,
    /// Tutor 18 and older: the Elasticsearch the platform moves to (nothing is copied to it).
    pub elasticsearch: Option<ElasticsearchSettings>,
    pub parallel: usize,
}

/// What the command line gives settings to resolve from (no clap types beyond each store's flag
/// group, so the library never parses arguments itself).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub tutor_root: Option<PathBuf>,
    pub job: Option<PathBuf>,
    /// `--stores`: the stores to work on, by name.
    pub stores: Vec<String>,
    /// `--targets`: a YAML file of targets.
    pub targets: Option<PathBuf>,
    pub parallel: usize,
    pub batch_rows: Option<u64>,
    pub create_users: bool,
    pub deep: bool,
    pub store_args: StoreArgs,
    pub search: SearchArgs,
    pub elasticsearch: ElasticsearchArgs,
}

impl Inputs {
    /// Whether the flags name any endpoint themselves (otherwise a job's record is used).
    pub fn names_endpoints(&self) -> bool {
        self.targets.is_some()
            || self.search.to_meilisearch.is_some()
            || self.elasticsearch.to_elasticsearch.is_some()
            || COPY_STORES
                .iter()
                .any(|k| self.store_args.names_endpoint(*k))
    }

    /// The job folder these inputs name: `--job`, else beside the Tutor root.
    pub fn job_dir(&self) -> PathBuf {
        self.job
            .clone()
            .unwrap_or_else(|| default_job_dir(&tutor_root(self.tutor_root.as_deref())))
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

fn read_targets(path: Option<&Path>) -> Result<TargetsFile, SettingsError> {
    let Some(path) = path else {
        return Ok(TargetsFile::default());
    };
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
    })
}

fn wanted_stores(names: &[String]) -> Result<Vec<StoreKind>, SettingsError> {
    let mut wanted = Vec::new();
    for name in names {
        let kind = StoreKind::parse(name).ok_or_else(|| {
            invalid(
                "--stores",
                format!("unknown store `{name}`; choose from mysql, mongodb, redis, objects, meilisearch"),
            )
        })?;
        if !AVAILABLE.contains(&kind) {
            return Err(SettingsError::NotAvailable {
                store: kind.to_string(),
            });
        }
        wanted.push(kind);
    }
    Ok(wanted)
}

impl Settings {
    /// Resolve settings from the inputs; `recorded` is the endpoint record of an existing job,
    /// used when the flags do not name a target themselves.
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
        let tutor = TutorConfig::load_if_present(&tutor_root)?;

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
        let targets = read_targets(inputs.targets.as_deref())?;
        let ctx = ResolveContext {
            tutor: planned.as_ref().or(tutor.as_ref()),
            tutor_root: &tutor_root,
            tutor_root_flag: inputs.tutor_root.is_some(),
            targets: &targets,
            batch_rows: inputs.batch_rows,
            create_users: inputs.create_users,
            deep: inputs.deep,
        };

        // A store takes part when --stores names it, or (without --stores) when it has a target
        // in the flags or in the job's record.
        let wanted = wanted_stores(&inputs.stores)?;
        let record = |kind: StoreKind| recorded.and_then(|r| r.get(kind.as_str()));
        let selected = |kind: StoreKind, has_target: bool| {
            if wanted.is_empty() {
                has_target || record(kind).is_some()
            } else {
                wanted.contains(&kind)
            }
        };
        let mut stores = Vec::new();
        for kind in COPY_STORES {
            if selected(kind, inputs.store_args.has_target(kind, &targets)) {
                stores.push(StoreSettings::resolve(
                    kind,
                    &inputs.store_args,
                    &ctx,
                    record(kind),
                )?);
            }
        }
        let meilisearch = if selected(
            StoreKind::Meilisearch,
            inputs.search.to_meilisearch.is_some(),
        ) {
            let m = crate::search::settings::resolve(
                &inputs.search,
                ctx.tutor,
                record(StoreKind::Meilisearch),
            )?;
            if m.is_none() {
                return Err(SettingsError::NoTarget {
                    store: "meilisearch".into(),
                });
            }
            m
        } else {
            None
        };
        // Elasticsearch is not a store (nothing is copied): it takes part whenever named.
        let elasticsearch = crate::search::elasticsearch::resolve(
            &inputs.elasticsearch,
            recorded.and_then(|r| r.get("elasticsearch")),
        )?;
        let settings = Settings {
            tutor_root,
            tutor,
            job_dir,
            stores,
            meilisearch,
            elasticsearch,
            parallel: inputs.parallel.max(1),
        };
        if settings.is_empty() {
            return Err(SettingsError::NothingToDo);
        }
        Ok(settings)
    }

    /// Whether no store is selected.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty() && self.meilisearch.is_none() && self.elasticsearch.is_none()
    }

    pub fn mysql(&self) -> Option<&MysqlSettings> {
        self.stores.iter().find_map(|s| match s {
            StoreSettings::Mysql(m) => Some(m),
            _ => None,
        })
    }

    pub fn mongodb(&self) -> Option<&MongoSettings> {
        self.stores.iter().find_map(|s| match s {
            StoreSettings::Mongodb(m) => Some(m),
            _ => None,
        })
    }

    pub fn redis(&self) -> Option<&RedisSettings> {
        self.stores.iter().find_map(|s| match s {
            StoreSettings::Redis(r) => Some(r),
            _ => None,
        })
    }

    pub fn objects(&self) -> Option<&ObjectsSettings> {
        self.stores.iter().find_map(|s| match s {
            StoreSettings::Objects(o) => Some(o),
            _ => None,
        })
    }

    /// Every side whose server certificate goes unverified or partly verified by an explicit
    /// option, for the plan's warnings.
    pub fn tls_warnings(&self) -> Vec<crate::core::plan::TlsWarning> {
        self.stores.iter().flat_map(|s| s.tls_warnings()).collect()
    }

    /// The copy stores these settings describe, ready to work.
    pub fn open_stores(&self) -> Vec<Arc<dyn Store>> {
        self.stores.iter().map(|s| s.open(self.parallel)).collect()
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
        for s in &self.stores {
            endpoints.insert(s.kind().to_string(), s.record());
        }
        if let Some(m) = &self.meilisearch {
            endpoints.insert("meilisearch".into(), m.record());
            guard.insert("meilisearch".into(), m.identity());
        }
        if let Some(e) = &self.elasticsearch {
            endpoints.insert("elasticsearch".into(), e.record());
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
