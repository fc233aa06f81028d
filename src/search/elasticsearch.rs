//! Elasticsearch, the search index of Tutor 15 to 18 platforms: the `--to-elasticsearch` target
//! (checked and recorded, never holding a password), and the plan's section saying which indexes
//! the platform has (read from the source server when this machine reaches it, else the list that
//! Tutor release's Open edX creates) and that they are rebuilt on the new server, not copied.
//!
//! Offload writes nothing to Elasticsearch: the indexes are derived data, rebuilt by the
//! platform's own commands after cutover (`tutor::elasticsearch` has them).

use std::time::Duration;

use serde_json::{json, Value};

use crate::resolve::{check_host, config_text, invalid, SettingsError};
use crate::tutor::elasticsearch::{platform_indexes, ES_INDEXES};
use crate::tutor::{ElasticsearchTarget, TutorConfig};

/// The Elasticsearch flags every job command takes.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct ElasticsearchArgs {
    /// Tutor 18 and older: the external Elasticsearch the platform will search with, e.g.
    /// https://openedx@search.internal:9243 (a user but no password: Tutor has no setting for
    /// either, so the runbook shows the settings patch to add them). Cutover writes
    /// RUN_ELASTICSEARCH: false and ELASTICSEARCH_SCHEME/_HOST/_PORT; the indexes are rebuilt
    /// afterwards with the commands the runbook gives, not copied.
    #[arg(long, value_name = "URL")]
    pub to_elasticsearch: Option<String>,

    /// Path, inside the Open edX containers, of the CA bundle that signed the target
    /// Elasticsearch's certificate (for a private CA; https:// only).
    #[arg(long, value_name = "PATH")]
    pub to_elasticsearch_ca: Option<String>,
}

/// The Elasticsearch target, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticsearchSettings {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Empty for none.
    pub username: String,
    /// Empty for the containers' default trust store.
    pub ca_certs: String,
}

impl ElasticsearchSettings {
    /// The URL as given, without a password (there is none).
    pub fn url(&self) -> String {
        let user = if self.username.is_empty() {
            String::new()
        } else {
            format!("{}@", self.username)
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{}://{user}{host}:{}", self.scheme, self.port)
    }

    /// What the job records to find the target again (it holds no secret).
    pub fn record(&self) -> Value {
        json!({ "url": self.url(), "ca_certs": self.ca_certs })
    }

    /// Tutor's settings for this target.
    pub fn target(&self) -> ElasticsearchTarget {
        ElasticsearchTarget {
            scheme: self.scheme.clone(),
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            ca_certs: self.ca_certs.clone(),
        }
    }
}

const FLAG: &str = "--to-elasticsearch";

/// Parse and check `--to-elasticsearch` (and its CA path); the scheme's port when none is given.
pub fn parse_target(url: &str, ca: Option<&str>) -> Result<ElasticsearchSettings, SettingsError> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        invalid(
            FLAG,
            format!("not a URL ({e}); expected http(s)://[user@]host:port"),
        )
    })?;
    if parsed.password().is_some() {
        return Err(invalid(
            FLAG,
            "the URL holds a password: Tutor 15 to 18 have no setting for it and offload never \
             keeps one; give the user alone (https://USER@host:port) and put the password in the \
             settings patch the cutover's runbook shows",
        ));
    }
    let scheme = parsed.scheme();
    if !matches!(scheme, "http" | "https") {
        return Err(invalid(
            FLAG,
            format!("`{scheme}://` is not http:// or https://"),
        ));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(FLAG, "the URL has no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    check_host(&host).map_err(|d| invalid(FLAG, d))?;
    if parsed.port() == Some(0) {
        return Err(invalid(FLAG, "0 is not a port (1-65535)"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return Err(invalid(
            FLAG,
            "Tutor's ELASTIC_SEARCH_CONFIG takes a host and a port only: remove the path and query",
        ));
    }
    let username = percent_decode(parsed.username());
    if username.contains(['"', '\'', '\\', ':', '@', '/', '`', '$']) {
        return Err(invalid(
            FLAG,
            "the user name holds a quote, backslash, colon, @, / or $; use a user whose name does not",
        ));
    }
    let ca_certs = match ca {
        None => String::new(),
        Some(path) => {
            let ok = path.starts_with('/')
                && !path.contains(|c: char| c.is_whitespace() || "\"'\\`$".contains(c));
            if !ok {
                return Err(invalid(
                    "--to-elasticsearch-ca",
                    "expected an absolute path inside the Open edX containers, without spaces or quotes, e.g. /openedx/config/es-ca.pem",
                ));
            }
            if scheme != "https" {
                return Err(invalid(
                    "--to-elasticsearch-ca",
                    "a CA bundle needs an https:// --to-elasticsearch",
                ));
            }
            path.to_string()
        }
    };
    Ok(ElasticsearchSettings {
        scheme: scheme.to_string(),
        port: parsed.port_or_known_default().unwrap_or(9200),
        host,
        username,
        ca_certs,
    })
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("u={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The Elasticsearch target from the flags, else the job's record; `None` when neither names one.
pub fn resolve(
    args: &ElasticsearchArgs,
    recorded: Option<&Value>,
) -> Result<Option<ElasticsearchSettings>, SettingsError> {
    if let Some(url) = &args.to_elasticsearch {
        return parse_target(url, args.to_elasticsearch_ca.as_deref()).map(Some);
    }
    if args.to_elasticsearch_ca.is_some() {
        return Err(invalid(
            "--to-elasticsearch-ca",
            "given without --to-elasticsearch URL",
        ));
    }
    let Some(url) = recorded.and_then(|r| r["url"].as_str()) else {
        return Ok(None);
    };
    let ca = recorded
        .and_then(|r| r["ca_certs"].as_str())
        .filter(|c| !c.is_empty());
    parse_target(url, ca).map(Some)
}

/// The source Elasticsearch as config.yml names it (`ELASTICSEARCH_SCHEME://HOST:PORT`).
pub fn source_url(cfg: &TutorConfig) -> String {
    let scheme = config_text(cfg, "ELASTICSEARCH_SCHEME").unwrap_or_else(|| "http".into());
    let host = config_text(cfg, "ELASTICSEARCH_HOST").unwrap_or_else(|| "elasticsearch".into());
    let port = cfg.get_u16("ELASTICSEARCH_PORT").unwrap_or(9200);
    format!("{scheme}://{host}:{port}")
}

/// The indexes a server holds (`GET /_cat/indices?format=json`), by name with document counts;
/// `None` when it does not answer within `wait`, or answers something else.
pub async fn read_indexes(base: &str, wait: Duration) -> Option<Vec<(String, Option<u64>)>> {
    let client = reqwest::Client::builder().timeout(wait).build().ok()?;
    let url = format!(
        "{}/_cat/indices?format=json&h=index,docs.count",
        base.trim_end_matches('/')
    );
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let mut out: Vec<(String, Option<u64>)> = body
        .as_array()?
        .iter()
        .filter_map(|row| {
            let name = row["index"].as_str()?.to_string();
            let docs = row["docs.count"].as_str().and_then(|d| d.parse().ok());
            Some((name, docs))
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    Some(out)
}

/// Which platform index a server index is: its name, or the forum's timestamped
/// `comments_<time>` / `comment_threads_<time>` behind the aliases.
fn platform_index_of(name: &str) -> Option<&'static str> {
    ES_INDEXES
        .iter()
        .map(|i| i.name)
        .filter(|i| {
            name == *i
                || name
                    .strip_prefix(i)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .max_by_key(|i| i.len())
}

/// The plan's Elasticsearch section for an Elasticsearch-era platform (`None` otherwise): the
/// Tutor release, the indexes (from the source server when `source` answered, else the list the
/// release's Open edX creates), the target when one is named, and how the indexes are rebuilt.
pub fn plan_section(
    cfg: &TutorConfig,
    source: Option<&[(String, Option<u64>)]>,
    target: Option<&ElasticsearchSettings>,
) -> Option<Value> {
    if !cfg.is_elasticsearch_era() {
        return None;
    }
    let release = cfg.tutor_release();
    let known = platform_indexes(cfg);
    let indexes: Vec<Value> = match source {
        Some(found) => found
            .iter()
            .map(|(name, docs)| {
                let index = platform_index_of(name);
                let rebuilt_by = index
                    .and_then(|n| ES_INDEXES.iter().find(|i| i.name == n))
                    .map(|i| i.rebuilt_by);
                json!({"index": name, "documents": docs, "platform_index": index, "rebuilt_by": rebuilt_by})
            })
            .collect(),
        None => known
            .iter()
            .map(|i| json!({"index": i.name, "documents": null, "platform_index": i.name, "holds": i.holds, "rebuilt_by": i.rebuilt_by}))
            .collect(),
    };
    let source_url = source_url(cfg);
    let indexes_from = match source {
        Some(_) => format!("read from the source Elasticsearch at {source_url}"),
        None => format!(
            "the indexes {} creates; the source Elasticsearch at {source_url} did not answer from here",
            match release.as_ref() {
                Some(r) => format!("the Open edX of Tutor {}", r.version),
                None => "Tutor 15 to 18's Open edX".to_string(),
            }
        ),
    };
    let target_text = match target {
        Some(t) => format!(
            "cutover points the platform at {} (RUN_ELASTICSEARCH: false, ELASTICSEARCH_SCHEME, ELASTICSEARCH_HOST, ELASTICSEARCH_PORT); the indexes are then rebuilt there with the runbook's commands",
            t.url()
        ),
        None => "to move the search index off this server, pass --to-elasticsearch URL: cutover writes the ELASTICSEARCH_* settings and the runbook gives the reindex commands".to_string(),
    };
    Some(json!({
        "tutor_version": release.as_ref().map(|r| r.version.clone()),
        "tutor_version_from": release.as_ref().map(|r| r.from),
        "indexes_from": indexes_from,
        "indexes": indexes,
        "target": target.map(|t| t.url()),
        "what_offload_does": "Elasticsearch indexes are rebuilt, not copied: Open edX never treats them as a source of truth, so offload copies nothing from them and verifies nothing in them",
        "cutover": target_text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_and_passwords_refused() {
        let t = parse_target("https://openedx@search.internal:9243/", None).unwrap();
        assert_eq!(
            (
                t.scheme.as_str(),
                t.host.as_str(),
                t.port,
                t.username.as_str()
            ),
            ("https", "search.internal", 9243, "openedx")
        );
        assert_eq!(t.url(), "https://openedx@search.internal:9243");
        assert_eq!(
            parse_target("https://es.example.org", None).unwrap().port,
            443
        );
        assert_eq!(parse_target("http://es:9200", None).unwrap().port, 9200);

        let err = parse_target("https://u:s3cret@es:9243", None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--to-elasticsearch: "), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        for bad in [
            "ftp://es:21",
            "https://es:9243/prefix",
            "https://es:0",
            "es:9200",
            "https://es:9243?x=1",
        ] {
            assert!(parse_target(bad, None).is_err(), "{bad}");
        }

        let t = parse_target("https://es:9243", Some("/openedx/ca.pem")).unwrap();
        assert_eq!(t.ca_certs, "/openedx/ca.pem");
        for bad in ["ca.pem", "/a b.pem", "/x'.pem"] {
            let err = parse_target("https://es:9243", Some(bad))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--to-elasticsearch-ca: "), "{err}");
        }
        assert!(parse_target("http://es:9200", Some("/ca.pem")).is_err());
    }

    #[test]
    fn a_recorded_target_comes_back() {
        let t = parse_target("https://openedx@es:9243", Some("/ca.pem")).unwrap();
        let again = resolve(&ElasticsearchArgs::default(), Some(&t.record()))
            .unwrap()
            .unwrap();
        assert_eq!(again, t);
        assert_eq!(resolve(&ElasticsearchArgs::default(), None).unwrap(), None);
        let ca_alone = ElasticsearchArgs {
            to_elasticsearch_ca: Some("/ca.pem".into()),
            ..ElasticsearchArgs::default()
        };
        assert!(resolve(&ca_alone, None).is_err());
    }

    #[test]
    fn forum_indexes_behind_aliases_are_recognised() {
        assert_eq!(
            platform_index_of("comments_20240612101010"),
            Some("comments")
        );
        assert_eq!(
            platform_index_of("comment_threads_20240612101010"),
            Some("comment_threads")
        );
        assert_eq!(
            platform_index_of("courseware_content"),
            Some("courseware_content")
        );
        assert_eq!(platform_index_of("comments_old"), None);
        assert_eq!(platform_index_of("other"), None);
    }
}
