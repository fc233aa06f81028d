//! Settings of the Meilisearch part of a job: the target server and where its master key comes
//! from, the address browsers will use after cutover, the index prefix and the API key uid, from
//! flags, the environment, Tutor's config.yml and a job's record. The master key and the API key
//! uid are checked against the server's own rules here, before anything is written.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::client::MeilisearchClient;
use crate::core::Side;
use crate::resolve::{
    check_host, config_text, invalid, recover_password, with_userinfo_hint, SettingsError,
};
use crate::secret::{Secret, SecretSource};
use crate::tutor::TutorConfig;

/// The Meilisearch flags every job command takes.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct SearchArgs {
    /// Target Meilisearch, e.g. http://search.internal:7700. Its master key comes from
    /// --to-meilisearch-key-file (first) or OFFLOAD_TO_MEILISEARCH_KEY, never from the command line.
    #[arg(long, value_name = "URL")]
    pub to_meilisearch: Option<String>,

    /// File whose first line is the target Meilisearch's master key.
    #[arg(long, value_name = "FILE")]
    pub to_meilisearch_key_file: Option<PathBuf>,

    /// The target Meilisearch as browsers reach it, written to MEILISEARCH_PUBLIC_URL at
    /// cutover (the learners' search requests go there directly), e.g. https://search.example.org.
    #[arg(long, value_name = "URL")]
    pub meilisearch_public_url: Option<String>,

    /// The old Meilisearch (copy mode and comparisons) [default: MEILISEARCH_URL in config.yml].
    #[arg(long, value_name = "URL")]
    pub from_meilisearch: Option<String>,
}

/// Environment variable holding the target's master key.
pub const TO_KEY_ENV: &str = "OFFLOAD_TO_MEILISEARCH_KEY";
/// Environment variable holding the old server's master key.
pub const FROM_KEY_ENV: &str = "OFFLOAD_FROM_MEILISEARCH_KEY";

/// The target client with its master key (the key file when the flag names one, else the
/// environment); `None` when no target is named.
pub fn target_client(
    args: &SearchArgs,
) -> Result<Option<(MeilisearchClient, Option<Secret>)>, SearchSettingsError> {
    let Some(url) = &args.to_meilisearch else {
        return Ok(None);
    };
    let url = &check_url("--to-meilisearch", url)?;
    let key = if let Some(path) = &args.to_meilisearch_key_file {
        let key = read_key_file("--to-meilisearch-key-file", path)?;
        check_master_key("--to-meilisearch-key-file", &key)?;
        Some(key)
    } else if let Ok(v) = std::env::var(TO_KEY_ENV) {
        let key = Secret::new(v);
        check_master_key(TO_KEY_ENV, &key)?;
        Some(key)
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

/// The old server (`--from-meilisearch`, else config.yml's `MEILISEARCH_URL`) with its master key
/// (key file, environment, else config.yml's `MEILISEARCH_MASTER_KEY`).
pub fn old_client(
    args: &SearchArgs,
    key_file: Option<&Path>,
    tutor: Option<&TutorConfig>,
) -> Result<Option<MeilisearchClient>, SearchSettingsError> {
    let url = match (&args.from_meilisearch, tutor) {
        (Some(flag), _) => check_url("--from-meilisearch", flag)?,
        (None, Some(cfg)) => match config_text(cfg, "MEILISEARCH_URL") {
            Some(text) => check_url("config.yml MEILISEARCH_URL", &text)?,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let key = if let Some(path) = key_file {
        Some(read_key_file("--from-meilisearch-key-file", path)?)
    } else if let Ok(v) = std::env::var(FROM_KEY_ENV) {
        Some(Secret::new(v))
    } else {
        tutor
            .and_then(|t| config_text(t, "MEILISEARCH_MASTER_KEY"))
            .map(Secret::new)
    };
    Ok(Some(MeilisearchClient::new(&url, key, "old")?))
}

fn read_key_file(flag: &str, path: &Path) -> Result<Secret, SettingsError> {
    crate::secret::read_secret_file(path).map_err(|e| SettingsError::File {
        what: flag.into(),
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Why a Meilisearch client could not be set up from the flags.
#[derive(Debug, thiserror::Error)]
pub enum SearchSettingsError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Client(#[from] crate::core::StoreError),
}

/// The Meilisearch part of the settings.
#[derive(Debug, Clone)]
pub struct MeilisearchSettings {
    /// The target server as the platform's backend reaches it.
    pub url: String,
    pub master_key: Option<Secret>,
    /// Where the master key came from, recorded so later commands find it again.
    pub key_source: SecretSource,
    /// The target as browsers reach it (`MEILISEARCH_PUBLIC_URL` after cutover).
    pub public_url: Option<String>,
    /// `MEILISEARCH_INDEX_PREFIX`, default `tutor_`.
    pub prefix: String,
    /// `MEILISEARCH_API_KEY_UID`, when config.yml has one.
    pub api_key_uid: Option<String>,
}

fn check_url(flag: &str, url: &str) -> Result<String, SettingsError> {
    // A URL with a user part may hold a secret: it is not shown.
    let shown = if url.contains('@') {
        "the URL".to_string()
    } else {
        format!("`{url}`")
    };
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        invalid(
            flag,
            with_userinfo_hint(
                url,
                format!("{shown} is not a URL ({e}); expected http(s)://host:port"),
            ),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            flag,
            format!("{shown} is not an http(s):// address; expected http(s)://host:port"),
        ));
    }
    if let Some(host) = parsed.host_str() {
        check_host(host).map_err(|d| invalid(flag, d))?;
    }
    if parsed.port() == Some(0) {
        return Err(invalid(flag, "0 is not a port (1-65535)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            flag,
            "the URL holds credentials; give the master key in a file or the environment instead",
        ));
    }
    Ok(url.trim().trim_end_matches('/').to_string())
}

/// The shortest master key Meilisearch accepts: in production it refuses to start with a shorter
/// one (and a managed service runs in production).
pub const MASTER_KEY_MIN_BYTES: usize = 16;

/// Check the target's master key against Meilisearch's rule; `what` names where it came from.
/// The key itself is never shown.
pub fn check_master_key(what: &str, key: &Secret) -> Result<(), SettingsError> {
    if key.expose().len() < MASTER_KEY_MIN_BYTES {
        return Err(invalid(
            what,
            format!(
                "the Meilisearch master key is shorter than {MASTER_KEY_MIN_BYTES} bytes, which Meilisearch refuses in production; \
                 give the target server's MEILI_MASTER_KEY (at least {MASTER_KEY_MIN_BYTES} bytes; Tutor generates 24 characters); nothing was changed"
            ),
        ));
    }
    Ok(())
}

/// Check `MEILISEARCH_API_KEY_UID` (or the flag naming it): Meilisearch refuses a key uid that is
/// not a UUID (`invalid_api_key_uid`), and derives the key's value from the UUID's lowercase
/// hyphenated form, so only that form (the one Tutor writes with `{{ 4|uuid }}`) gives a key equal
/// to the `MEILISEARCH_API_KEY` Tutor computes from the text. `what` names the key or flag.
pub fn check_api_key_uid(what: &str, uid: &str) -> Result<(), SettingsError> {
    const FIX: &str = "set it to a UUID written as Tutor writes one, e.g. `tutor config save --set MEILISEARCH_API_KEY_UID=$(python3 -c 'import uuid; print(uuid.uuid4())')`, then run again; nothing was changed";
    let groups: Vec<&str> = uid.split('-').collect();
    let hyphenated = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if !hyphenated {
        return Err(invalid(
            what,
            format!(
                "`{uid}` is not a UUID in its 8-4-4-4-12 hyphenated form, and Meilisearch refuses a key uid that is not a UUID (invalid_api_key_uid); {FIX}"
            ),
        ));
    }
    if uid.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            what,
            format!(
                "`{uid}` has capital letters: Meilisearch derives the key from the lowercase form, so its key would differ from the MEILISEARCH_API_KEY Tutor computes from this text; write it in lowercase ({}) and run again; nothing was changed",
                uid.to_ascii_lowercase()
            ),
        ));
    }
    Ok(())
}

/// The API key uid to provision: the flag when given, else config.yml's
/// `MEILISEARCH_API_KEY_UID`; checked with [`check_api_key_uid`].
pub fn api_key_uid(
    flag: Option<&str>,
    tutor: Option<&TutorConfig>,
) -> Result<Option<String>, SettingsError> {
    let (what, uid) = match flag {
        Some(f) => ("--meilisearch-api-key-uid", Some(f.trim().to_string())),
        None => (
            "config.yml MEILISEARCH_API_KEY_UID",
            tutor.and_then(|t| config_text(t, "MEILISEARCH_API_KEY_UID")),
        ),
    };
    if let Some(uid) = &uid {
        check_api_key_uid(what, uid)?;
    }
    Ok(uid)
}

/// Resolve the Meilisearch settings when the job has a target (flag or record); `None` otherwise.
pub fn resolve(
    inputs: &SearchArgs,
    tutor: Option<&TutorConfig>,
    recorded: Option<&serde_json::Value>,
) -> Result<Option<MeilisearchSettings>, SettingsError> {
    let rec = |k: &str| recorded.map(|r| &r[k]).filter(|v| !v.is_null());
    let url = match (&inputs.to_meilisearch, rec("url").and_then(|v| v.as_str())) {
        (Some(flag), _) => check_url("--to-meilisearch", flag)?,
        (None, Some(recorded)) => recorded.to_string(),
        (None, None) => return Ok(None),
    };
    // An explicit key file wins over the environment; a named file that cannot be read is an
    // error even when the variable is set.
    let (master_key, key_source) = if let Some(path) = &inputs.to_meilisearch_key_file {
        let key = read_key_file("--to-meilisearch-key-file", path)?;
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        (Some(key), SecretSource::File(absolute))
    } else if let Ok(v) = std::env::var(TO_KEY_ENV) {
        (Some(Secret::new(v)), SecretSource::Env(TO_KEY_ENV.into()))
    } else if let Some(source) =
        rec("key").and_then(|v| serde_json::from_value::<SecretSource>(v.clone()).ok())
    {
        (
            recover_password(&source, "Meilisearch", Side::Target, TO_KEY_ENV, tutor)?,
            source,
        )
    } else {
        (None, SecretSource::None)
    };
    let public_url = match &inputs.meilisearch_public_url {
        Some(u) => Some(check_url("--meilisearch-public-url", u)?),
        None => rec("public_url")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    };
    if let Some(key) = &master_key {
        let what = match &key_source {
            SecretSource::File(_) => "--to-meilisearch-key-file".to_string(),
            SecretSource::Env(name) => name.clone(),
            SecretSource::Tutor(name) => format!("config.yml {name}"),
            SecretSource::Url | SecretSource::None => "the target Meilisearch's master key".into(),
        };
        check_master_key(&what, key)?;
    }
    let prefix = tutor
        .and_then(|t| config_text(t, "MEILISEARCH_INDEX_PREFIX"))
        .unwrap_or_else(|| "tutor_".into());
    let api_key_uid = api_key_uid(None, tutor)?;
    Ok(Some(MeilisearchSettings {
        url,
        master_key,
        key_source,
        public_url,
        prefix,
        api_key_uid,
    }))
}

impl MeilisearchSettings {
    /// What the job records to reconnect later: addresses and where the key is, never the key.
    pub fn record(&self) -> serde_json::Value {
        json!({
            "url": self.url,
            "key": self.key_source,
            "public_url": self.public_url,
        })
    }

    /// What a resume must find unchanged.
    pub fn identity(&self) -> serde_json::Value {
        json!({ "target": self.url, "prefix": self.prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(url: &str) -> SearchArgs {
        SearchArgs {
            to_meilisearch: Some(url.into()),
            ..SearchArgs::default()
        }
    }

    #[test]
    fn urls_are_checked_and_credentials_refused() {
        assert!(resolve(&inputs("ftp://x:7700"), None, None).is_err());
        assert!(resolve(&inputs("http://k:secret@x:7700"), None, None).is_err());
        let s = resolve(&inputs("http://search.internal:7700/"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(s.url, "http://search.internal:7700");
        assert_eq!(s.prefix, "tutor_");
    }

    #[test]
    fn api_key_uids_must_be_uuids_as_tutor_writes_them() {
        assert!(check_api_key_uid("k", "1b060280-7358-4220-83a1-b904da72a3d4").is_ok());
        for bad in [
            "tutor-api-key",
            "",
            "1b060280735842208 3a1b904da72a3d4",
            "1b060280-7358-4220-83a1-b904da72a3d",
            "1b060280-7358-4220-83a1b-904da72a3d4",
            "1b060280-7358-4220-83a1-b904da72a3g4",
            "{1b060280-7358-4220-83a1-b904da72a3d4}",
            "1b0602807358422083a1b904da72a3d4",
        ] {
            let err = check_api_key_uid("config.yml MEILISEARCH_API_KEY_UID", bad)
                .expect_err(bad)
                .to_string();
            assert!(
                err.starts_with("config.yml MEILISEARCH_API_KEY_UID: ")
                    && err.contains("invalid_api_key_uid")
                    && err.contains("tutor config save --set MEILISEARCH_API_KEY_UID="),
                "{err}"
            );
        }
        let err = check_api_key_uid(
            "--meilisearch-api-key-uid",
            "1B060280-7358-4220-83A1-B904DA72A3D4",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lowercase (1b060280-7358-4220-83a1-b904da72a3d4)"),
            "{err}"
        );
    }

    #[test]
    fn the_uid_comes_from_the_flag_else_config_yml_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yml"),
            "MEILISEARCH_API_KEY_UID: not-a-uuid\n",
        )
        .unwrap();
        let cfg = TutorConfig::load(dir.path()).unwrap();
        let err = api_key_uid(None, Some(&cfg)).unwrap_err().to_string();
        assert!(
            err.starts_with("config.yml MEILISEARCH_API_KEY_UID: `not-a-uuid`"),
            "{err}"
        );
        let uid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            api_key_uid(Some(uid), Some(&cfg)).unwrap().as_deref(),
            Some(uid)
        );
        let err = resolve(&inputs("http://m:7700"), Some(&cfg), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MEILISEARCH_API_KEY_UID"), "{err}");
        assert_eq!(api_key_uid(None, None).unwrap(), None);
    }

    #[test]
    fn master_keys_shorter_than_16_bytes_are_refused_without_showing_them() {
        assert!(check_master_key("k", &Secret::new("0123456789abcdef")).is_ok());
        let err = check_master_key("--to-meilisearch-key-file", &Secret::new("short-key-15byt"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--to-meilisearch-key-file: "), "{err}");
        assert!(err.contains("at least 16 bytes"), "{err}");
        assert!(!err.contains("short-key-15byt"), "{err}");
    }

    #[test]
    fn a_recorded_target_comes_back_with_its_public_url() {
        let rec = json!({"url": "http://m:7700", "key": "none", "public_url": "https://search.example.org"});
        let s = resolve(&SearchArgs::default(), None, Some(&rec))
            .unwrap()
            .unwrap();
        assert_eq!(s.url, "http://m:7700");
        assert_eq!(s.public_url.as_deref(), Some("https://search.example.org"));
        assert!(resolve(&SearchArgs::default(), None, None)
            .unwrap()
            .is_none());
    }
}

#[cfg(test)]
mod key_file_tests {
    use super::*;

    #[test]
    fn a_key_file_wins_over_the_environment_and_must_be_readable() {
        // The only test that sets this variable; the others do not look at where the key is from.
        std::env::set_var(TO_KEY_ENV, "from-env-0123456789");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file-0123456789\n").unwrap();
        let with = |key_file: PathBuf| SearchArgs {
            to_meilisearch: Some("http://m:7700".into()),
            to_meilisearch_key_file: Some(key_file),
            ..SearchArgs::default()
        };
        let s = resolve(&with(file.clone()), None, None).unwrap().unwrap();
        assert_eq!(s.master_key.unwrap().expose(), "from-file-0123456789");
        assert!(matches!(s.key_source, SecretSource::File(_)));
        let (_, key) = target_client(&with(file)).unwrap().unwrap();
        assert_eq!(key.unwrap().expose(), "from-file-0123456789");

        let missing = dir.path().join("missing-key");
        let err = resolve(&with(missing.clone()), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing-key"), "{err}");
        assert!(target_client(&with(missing)).is_err());
        std::env::remove_var(TO_KEY_ENV);
    }

    #[test]
    fn bad_ports_and_hosts_are_refused_and_credentials_not_shown() {
        for bad in ["http://m:0", "http://m:65536", "http://:7700", "junk"] {
            assert!(check_url("--to-meilisearch", bad).is_err(), "{bad}");
        }
        let err = check_url("--to-meilisearch", "http://k:se/cret@m:7700")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("se/cret"), "{err}");
    }
}
