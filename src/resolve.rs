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
    #[error("no store has a target: pass --to-mysql URL, --to-mongodb URI, --to-redis URL, --to-s3 URL, --to-meilisearch URL or (Tutor 18 and older) --to-elasticsearch URL (or a --targets file)")]
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

impl TargetsFile {
    /// The target this file names for a store.
    pub fn target(&self, kind: crate::core::StoreKind) -> Option<&str> {
        use crate::core::StoreKind;
        match kind {
            StoreKind::Mysql => self.mysql.as_deref(),
            StoreKind::Mongodb => self.mongodb.as_deref(),
            StoreKind::Redis => self.redis.as_deref(),
            StoreKind::Objects => self.s3.as_deref(),
            StoreKind::Meilisearch => None,
        }
    }
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

/// Where to look for one endpoint's password when its URL has none, in this order: a file named
/// by a flag (an explicit flag wins over the environment), an environment variable, a config.yml
/// key.
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
    if let Ok(v) = std::env::var(lookup.env) {
        *password = Some(Secret::new(v));
        return Ok(SecretSource::Env(lookup.env.to_string()));
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
    side: Side,
    url_env: &str,
    tutor: Option<&TutorConfig>,
) -> Result<Option<Secret>, SettingsError> {
    let what = || format!("{side} {store} password");
    Ok(match source {
        SecretSource::None => None,
        SecretSource::Url => Some(Secret::new(std::env::var(url_env).map_err(|_| {
            SettingsError::SecretNotRecoverable {
                side: side.to_string(),
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

/// A TCP port from text: a number from 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("{text} is not a port (1-65535)")),
    }
}

/// A port from a config.yml key, Tutor's `default` when the key is missing; an invalid value is
/// an error naming the key, the value and `flag`, the flag that overrides it.
pub fn config_port(
    cfg: &TutorConfig,
    key: &str,
    default: u16,
    flag: &str,
) -> Result<u16, SettingsError> {
    let Some(text) = config_text(cfg, key).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    parse_port(&text).map_err(|detail| {
        invalid(
            format!("config.yml {key}"),
            format!("{detail}; fix it in config.yml or pass {flag} URL"),
        )
    })
}

/// A whole number from a config.yml key within `range`, `default` when the key is missing; an
/// invalid value is an error naming the key and the value.
pub fn config_number(
    cfg: &TutorConfig,
    key: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Result<i64, SettingsError> {
    let Some(text) = config_text(cfg, key) else {
        return Ok(default);
    };
    match text.trim().parse::<i64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(
            format!("config.yml {key}"),
            format!("{text} is not {what}; fix it in config.yml"),
        )),
    }
}

/// A host name from a config.yml key, `default` when the key is missing; an empty value or one
/// holding characters no host has is an error naming the key.
pub fn config_host(
    cfg: &TutorConfig,
    key: &str,
    default: &str,
    flag: &str,
) -> Result<String, SettingsError> {
    let Some(text) = config_text(cfg, key) else {
        return Ok(default.to_string());
    };
    check_host(&text).map_err(|detail| {
        invalid(
            format!("config.yml {key}"),
            format!("{detail}; fix it in config.yml or pass {flag} URL"),
        )
    })?;
    Ok(text)
}

/// Whether text can be a host name or address (brackets allowed around an IPv6 address).
pub fn check_host(host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err("the host is empty".into());
    }
    if bare
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "@/?#[]\\%,<>\"'`{}|^".contains(c))
    {
        return Err(format!("`{host}` is not a host name or address"));
    }
    Ok(())
}

/// Check a CA file named by a TLS option (`ssl-ca=`, `ca=`, `tlsCAFile=`, `--to-s3-ca-file`):
/// it must be readable and hold at least one PEM certificate. `option` names the option in the
/// message, which says what to do.
pub fn check_ca_file(option: &str, path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "{option}: cannot read the CA file {}: {e}; name a readable PEM file holding the CA certificate that signed the server's",
            path.display()
        )
    })?;
    if !text
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(format!(
            "{option}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); name the CA certificate file in PEM form",
            path.display()
        ));
    }
    Ok(())
}

/// Characters left as they are in the user part of a URL offload writes: RFC 3986's unreserved
/// ones. Everything else (`@`, `:`, `/`, `%`, non-ASCII, ...) is percent-encoded, so that parsing
/// the URL gives back the same user.
pub const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A user name (or other URL part) percent-encoded for the user part of a URL.
pub fn encode_userinfo(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, USERINFO).to_string()
}

/// When a URL that did not parse has a user part, the advice to percent-encode the reserved
/// characters it holds, showing each character's encoding, never the user or password itself.
pub fn userinfo_hint(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r)?;
    let userinfo = &rest[..rest.rfind('@')?];
    let found: Vec<String> = [('@', "%40"), (':', "%3A"), ('/', "%2F"), ('%', "%25")]
        .iter()
        .filter(|(c, _)| {
            // One `:` separates the user from the password.
            let n = userinfo.matches(*c).count();
            if *c == ':' {
                n > 1
            } else {
                n > 0
            }
        })
        .map(|(c, e)| format!("{c} as {e}"))
        .collect();
    let list = if found.is_empty() {
        "@ as %40, : as %3A, / as %2F, % as %25".to_string()
    } else {
        found.join(", ")
    };
    Some(format!(
        "if the user or password holds reserved characters, percent-encode them: {list}"
    ))
}

/// A URL parse error with [`userinfo_hint`] added when it applies.
pub fn with_userinfo_hint(url: &str, detail: String) -> String {
    match userinfo_hint(url) {
        Some(hint) => format!("{detail}; {hint}"),
        None => detail,
    }
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
    /// The endpoint config.yml describes, for a source no flag or record names; an invalid
    /// config.yml value is an error only when this is what the source comes from.
    pub from_config: Option<Result<E, SettingsError>>,
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
            *slot = recover_password(&rec.secret, E::STORE, spec.side, &env, tutor)?;
        }
        return Ok((e, rec.secret));
    }
    match spec.from_config {
        Some(from_config) => {
            let mut e = from_config?;
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

/// What the tests of every store's settings and endpoints share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::tutor::TutorConfig;

    /// User names with every character a URL reserves, and some that are merely unusual.
    pub const RESERVED_USERS: &[&str] = &[
        "tgt:adm",
        "a@b",
        "x/y",
        "p%q",
        "ünï cødé",
        "plain",
        "a?b#c&d=e+f",
    ];

    /// A config.yml of `text` in a root of its own (kept while the folder lives), without
    /// `TUTOR_*` overrides from the environment.
    pub fn config(text: &str) -> (tempfile::TempDir, TutorConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yml"), text).unwrap();
        let cfg = TutorConfig::load_with_env(dir.path(), std::iter::empty()).unwrap();
        (dir, cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_support::config as tutor;

    #[test]
    fn ports_and_numbers_from_config_are_checked() {
        let (_d, cfg) = tutor(
            "MYSQL_PORT: 433060\nREDIS_PORT: 0\nMONGODB_PORT: abc\nA: 7\nB: -1\nGOOD: 3307\n",
        );
        let err = config_port(&cfg, "MYSQL_PORT", 3306, "--from-mysql")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config.yml MYSQL_PORT: 433060 is not a port (1-65535); fix it in config.yml or pass --from-mysql URL");
        assert!(config_port(&cfg, "REDIS_PORT", 6379, "--from-redis").is_err());
        assert!(config_port(&cfg, "MONGODB_PORT", 27017, "--from-mongodb").is_err());
        assert_eq!(config_port(&cfg, "GOOD", 1, "--x").unwrap(), 3307);
        assert_eq!(config_port(&cfg, "MISSING", 3306, "--x").unwrap(), 3306);
        assert_eq!(config_number(&cfg, "A", 0, 0..=15, "n").unwrap(), 7);
        let err = config_number(&cfg, "B", 0, 0..=15, "a Redis database number")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.yml B") && err.contains("-1"), "{err}");
        assert_eq!(config_number(&cfg, "MISSING", 1, 0..=15, "n").unwrap(), 1);
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "", "80x"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        for bad in ["", "a b", "a/b", "u@h", "[]"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        for good in ["db", "10.0.0.1", "[::1]", "::1", "db-1.example.org"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_password_file_wins_over_the_environment_and_must_be_readable() {
        let env = "OFFLOAD_UNIT_TEST_RESOLVE_PASSWORD";
        std::env::set_var(env, "from-env");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let lookup = |file: Option<&'static Path>| PasswordLookup {
            env,
            file,
            file_flag: "--to-mysql-password-file",
            tutor: None,
        };
        let file: &'static Path = Box::leak(file.into_boxed_path());
        let mut password = None;
        let source = find_password(&mut password, &lookup(Some(file))).unwrap();
        assert_eq!(password.unwrap().expose(), "from-file");
        assert!(matches!(source, SecretSource::File(_)));

        let missing: &'static Path = Box::leak(dir.path().join("nope").into_boxed_path());
        let mut password = None;
        let err = find_password(&mut password, &lookup(Some(missing)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--to-mysql-password-file") && err.contains("nope"),
            "{err}"
        );

        let mut password = None;
        let source = find_password(&mut password, &lookup(None)).unwrap();
        assert_eq!(password.unwrap().expose(), "from-env");
        assert_eq!(source, SecretSource::Env(env.into()));
        std::env::remove_var(env);
    }

    #[test]
    fn userinfo_hints_show_encodings_never_the_secret() {
        let hint = userinfo_hint("mysql://root:pa/ss@w%rd@db:3306").unwrap();
        assert!(
            hint.contains("/ as %2F") && hint.contains("@ as %40") && hint.contains("% as %25"),
            "{hint}"
        );
        assert!(
            !hint.contains("pa/ss") && !hint.contains("w%rd") && !hint.contains("root"),
            "{hint}"
        );
        assert!(userinfo_hint("mysql://db:3306").is_none());
        assert_eq!(encode_userinfo("tgt:adm"), "tgt%3Aadm");
        assert_eq!(encode_userinfo("a@b/c%d"), "a%40b%2Fc%25d");
        assert_eq!(encode_userinfo("é-x.y_z~"), "%C3%A9-x.y_z~");
    }
}
