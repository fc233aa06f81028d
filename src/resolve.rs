//! The pieces every store's settings are resolved with, below `settings.rs` so that each store
//! resolves its own source and target without importing the composition back: config.yml values
//! as text, the `--targets` file, password lookup and recovery, the endpoint a job records, one
//! side's resolution from a URL, a job's record or config.yml, and [`SettingsError`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::Side;
use crate::secret::{read_secret_file, Secret, SecretSource};
use crate::tutor::TutorConfig;

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

/// A [`SettingsError::Invalid`] naming what was wrong (a flag, a config.yml key, a file).
pub fn invalid(what: impl Into<String>, detail: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        what: what.into(),
        detail: detail.into(),
    }
}

/// One end of a store: the URL without its password, and where the password comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    pub url: String,
    pub secret: SecretSource,
}

/// The targets file: `mysql: URL`, `mysql_password_file: FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsFile {
    pub mysql: Option<String>,
    pub mysql_password_file: Option<PathBuf>,
    pub redis: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    pub mongodb: Option<String>,
    pub mongodb_password_file: Option<PathBuf>,
    pub s3: Option<String>,
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

/// What every store's resolution may read besides its own flags: config.yml (as the job planned
/// with it), the Tutor root, the targets file and the flags shared by all stores.
pub struct ResolveContext<'a> {
    pub tutor: Option<&'a TutorConfig>,
    pub tutor_root: &'a Path,
    /// Whether `--tutor-root` was given (it then wins over a job's recorded media root).
    pub tutor_root_flag: bool,
    pub targets: &'a TargetsFile,
    /// `--batch-rows`: records per batch and checkpoint.
    pub batch_rows: Option<u64>,
    /// `--create-users`: create the platform's application users on the target.
    pub create_users: bool,
    /// `verify --deep`.
    pub deep: bool,
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
pub trait StoreEndpoint: Sized {
    /// For messages: `MySQL`.
    const STORE: &'static str;
    /// In flag and variable names: `mysql` gives `--to-mysql`, `OFFLOAD_TO_MYSQL_PASSWORD`.
    const NAME: &'static str;
    fn parse_url(url: &str) -> Result<Self, String>;
    /// Where the password goes; `None` when this endpoint takes none (MongoDB without a user).
    fn password_slot(&mut self) -> Option<&mut Option<Secret>>;
}

/// Where one side of a store may come from, in this order: a URL (flag or targets file), the
/// job's record, config.yml (sources only).
pub struct SideSpec<'a, E> {
    pub side: Side,
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The config.yml key of the password, used when neither URL, variable nor file has one.
    pub tutor_password: Option<(&'a TutorConfig, &'a str)>,
    /// The endpoint config.yml describes, for a source no flag or record names.
    pub from_config: Option<E>,
}

/// Resolve one side of a store and where its password came from. `record` is the store's part
/// of a job's record.
pub fn resolve_side<E: StoreEndpoint>(
    spec: SideSpec<'_, E>,
    record: Option<&serde_json::Value>,
    tutor: Option<&TutorConfig>,
) -> Result<(E, SecretSource), SettingsError> {
    let direction = spec.side.flag_prefix();
    let flag = format!("--{direction}-{}", E::NAME);
    let env = format!(
        "OFFLOAD_{}_{}_PASSWORD",
        spec.side.env_prefix(),
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
        .and_then(|r| r.get(spec.side.to_string()))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if let Some(rec) = recorded {
        let mut e = E::parse_url(&rec.url)
            .map_err(|d| invalid(format!("the job's {} {} URL", spec.side, E::STORE), d))?;
        if let Some(slot) = e.password_slot() {
            *slot = recover_password(&rec.secret, E::STORE, &spec.side.to_string(), &env, tutor)?;
        }
        return Ok((e, rec.secret));
    }
    match spec.from_config {
        Some(mut e) => {
            let secret = complete(&mut e)?;
            Ok((e, secret))
        }
        None if spec.side == Side::Target => Err(SettingsError::NoTarget {
            store: E::NAME.into(),
        }),
        None => Err(invalid(
            format!("source {}", E::STORE),
            format!("no config.yml found in the Tutor root and no {flag} given; pass --tutor-root DIR or {flag} URL"),
        )),
    }
}
