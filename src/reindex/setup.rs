//! Settings of the Meilisearch part of a job: the target server and where its master key comes
//! from, the address browsers will use after cutover, the index prefix and the API key uid, from
//! flags, the environment, Tutor's config.yml and a job's record.

use serde_json::json;

use crate::secret::{Secret, SecretSource};
use crate::settings::{config_text, recover_password, Inputs, SettingsError};
use crate::tutor::TutorConfig;

/// Environment variable holding the target's master key.
pub const TO_KEY_ENV: &str = "OFFLOAD_TO_MEILISEARCH_KEY";

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

fn invalid(what: &str, detail: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        what: what.to_string(),
        detail: detail.into(),
    }
}

fn check_url(flag: &str, url: &str) -> Result<String, SettingsError> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        invalid(
            flag,
            format!("`{url}` is not a URL ({e}); expected http(s)://host:port"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            flag,
            format!("`{url}` is not an http(s):// address; expected http(s)://host:port"),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            flag,
            "the URL holds credentials; give the master key in a file or the environment instead",
        ));
    }
    Ok(url.trim().trim_end_matches('/').to_string())
}

/// Resolve the Meilisearch settings when the job has a target (flag or record); `None` otherwise.
pub fn resolve(
    inputs: &Inputs,
    tutor: Option<&TutorConfig>,
    recorded: Option<&serde_json::Value>,
) -> Result<Option<MeilisearchSettings>, SettingsError> {
    let rec = |k: &str| recorded.map(|r| &r[k]).filter(|v| !v.is_null());
    let url = match (&inputs.to_meilisearch, rec("url").and_then(|v| v.as_str())) {
        (Some(flag), _) => check_url("--to-meilisearch", flag)?,
        (None, Some(recorded)) => recorded.to_string(),
        (None, None) => return Ok(None),
    };
    let (master_key, key_source) = if let Ok(v) = std::env::var(TO_KEY_ENV) {
        (Some(Secret::new(v)), SecretSource::Env(TO_KEY_ENV.into()))
    } else if let Some(path) = &inputs.to_meilisearch_key_file {
        let key = crate::secret::read_secret_file(path).map_err(|e| SettingsError::File {
            what: "--to-meilisearch-key-file".into(),
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        (Some(key), SecretSource::File(absolute))
    } else if let Some(source) =
        rec("key").and_then(|v| serde_json::from_value::<SecretSource>(v.clone()).ok())
    {
        (
            recover_password(&source, "Meilisearch", "target", TO_KEY_ENV, tutor)?,
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
    let prefix = tutor
        .and_then(|t| config_text(t, "MEILISEARCH_INDEX_PREFIX"))
        .unwrap_or_else(|| "tutor_".into());
    let api_key_uid = tutor.and_then(|t| config_text(t, "MEILISEARCH_API_KEY_UID"));
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

    fn inputs(url: &str) -> Inputs {
        Inputs {
            to_meilisearch: Some(url.into()),
            ..Inputs::default()
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
    fn a_recorded_target_comes_back_with_its_public_url() {
        let rec = json!({"url": "http://m:7700", "key": "none", "public_url": "https://search.example.org"});
        let s = resolve(&Inputs::default(), None, Some(&rec))
            .unwrap()
            .unwrap();
        assert_eq!(s.url, "http://m:7700");
        assert_eq!(s.public_url.as_deref(), Some("https://search.example.org"));
        assert!(resolve(&Inputs::default(), None, None).unwrap().is_none());
    }
}
