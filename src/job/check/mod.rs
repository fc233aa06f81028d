//! `offload check`: is the platform working on its new servers? After cutover and `tutor local
//! start`, it asks the running platform itself, not the stores: the LMS and CMS heartbeats with
//! their extended checks ([`heartbeat`]), a search with the key browsers get on every index at the
//! public Meilisearch URL ([`search`]), a Celery control round trip through the new Redis that a
//! running worker must answer ([`celery`]), and an object read through the platform's S3 settings
//! ([`objects`]). Everything it needs comes from config.yml, as the platform reads it.
//!
//! A check that finds something not working is a result, not an error: the command exits 1. Only
//! inputs that cannot be used at all (no config.yml, an invalid URL) are errors.

mod celery;
mod heartbeat;
mod objects;
mod search;

use std::time::Duration;

use serde::Serialize;

use super::JobError;
use crate::tutor::TutorConfig;

pub use celery::{ping_body, PidboxNames};
pub use heartbeat::{parse_heartbeat, HeartbeatAnswer};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Working, shown by the answer.
    Ok,
    /// Nothing wrong was seen, but the answer could not prove it works.
    Warning,
    /// Not working.
    Failed,
    /// Not asked, and why (e.g. the platform does not use that service).
    Skipped,
}

impl CheckStatus {
    pub fn label(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warning => "warning",
            CheckStatus::Failed => "FAILED",
            CheckStatus::Skipped => "skipped",
        }
    }
}

/// One answer of the running platform.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// What was asked: `LMS`, `CMS`, `Meilisearch`, `Celery`, `S3`.
    pub service: String,
    /// The check within it, e.g. `heartbeat sql` or an index name.
    pub name: String,
    pub status: CheckStatus,
    /// What the platform answered (never a secret).
    pub detail: String,
    /// What to do next, for a check that did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    fn new(
        service: &str,
        name: impl Into<String>,
        status: CheckStatus,
        detail: impl Into<String>,
    ) -> Self {
        CheckResult {
            service: service.to_string(),
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn ok(service: &str, name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(service, name, CheckStatus::Ok, detail)
    }

    fn failed(
        service: &str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(service, name, CheckStatus::Failed, detail).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Everything `offload check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The Tutor root whose config.yml named the services.
    pub tutor_root: String,
    pub results: Vec<CheckResult>,
    /// True when no check failed.
    pub working: bool,
}

impl CheckReport {
    fn new(tutor_root: String, results: Vec<CheckResult>) -> CheckReport {
        let working = !results.iter().any(|r| r.status == CheckStatus::Failed);
        CheckReport {
            tutor_root,
            results,
            working,
        }
    }

    pub fn count(&self, status: CheckStatus) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

/// What to ask and how long to wait.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The LMS as a browser reaches it, e.g. `https://learn.example.org`.
    pub lms_url: url::Url,
    /// The CMS (Studio), when it is to be checked.
    pub cms_url: Option<url::Url>,
    /// Longest wait for one HTTP answer (a heartbeat with Celery's check takes up to
    /// HEARTBEAT_CELERY_TIMEOUT, 5 s by default, itself).
    pub timeout: Duration,
    /// Longest wait for the Celery workers' answers.
    pub celery_timeout: Duration,
}

/// Check an LMS or CMS base URL: http(s) with a host, no query or credentials (a path prefix
/// is kept). `flag` names it in the message.
pub fn parse_platform_url(flag: &str, text: &str) -> Result<url::Url, JobError> {
    // A URL with a user part is shown without it: it may hold a password.
    let shown = match text.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => {
            format!(
                "{scheme}://***@{}",
                &rest[rest.rfind('@').unwrap_or(0) + 1..]
            )
        }
        _ => text.to_string(),
    };
    let bad = |why: &str| {
        JobError::Refused(format!(
            "{flag} {shown:?}: {why}; give the address browsers use, e.g. https://learn.example.org (Tutor's LMS_HOST, or CMS_HOST for --cms-url)"
        ))
    };
    let url = url::Url::parse(text.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not hold a user or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(url)
}

/// Ask the running platform named by `cfg` (its config.yml after cutover) whether it works.
pub async fn check_platform(
    cfg: &TutorConfig,
    options: &CheckOptions,
) -> Result<CheckReport, JobError> {
    let http = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(Duration::from_secs(10).min(options.timeout))
        .build()
        .map_err(|e| JobError::Refused(format!("cannot set up an HTTP client: {e}")))?;
    let cms = async {
        match &options.cms_url {
            Some(url) => heartbeat::check(&http, "CMS", url).await,
            None => vec![CheckResult::new(
                "CMS",
                "heartbeat",
                CheckStatus::Skipped,
                "not asked: pass --cms-url (Studio's address, Tutor's CMS_HOST) to check it",
            )],
        }
    };
    let (lms, cms, search, celery, objects) = tokio::join!(
        heartbeat::check(&http, "LMS", &options.lms_url),
        cms,
        search::check(&http, cfg),
        celery::check(cfg, options.celery_timeout),
        objects::check(cfg),
    );
    let results = [lms, cms, search, celery, objects].concat();
    Ok(CheckReport::new(cfg.root().display().to_string(), results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_urls_are_checked_and_named() {
        assert!(parse_platform_url("--lms-url", "https://learn.example.org").is_ok());
        assert!(parse_platform_url("--lms-url", "http://127.0.0.1:8000/prefix/").is_ok());
        for bad in [
            "learn.example.org",
            "ftp://learn.example.org",
            "https://u:p@learn.example.org",
            "https://learn.example.org/?x=1",
        ] {
            let err = parse_platform_url("--lms-url", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--lms-url"), "{err}");
            assert!(!err.contains("u:p"), "{err}");
        }
    }

    #[test]
    fn a_failed_check_makes_the_platform_not_working() {
        let ok = CheckResult::ok("LMS", "heartbeat sql", "OK");
        let warn = CheckResult::new("S3", "x", CheckStatus::Warning, "");
        let report = CheckReport::new("/t".into(), vec![ok.clone(), warn]);
        assert!(report.working);
        let failed = CheckResult::failed("Celery", "workers", "none", "start them");
        let report = CheckReport::new("/t".into(), vec![ok, failed]);
        assert!(!report.working);
        assert_eq!(report.count(CheckStatus::Failed), 1);
    }
}
