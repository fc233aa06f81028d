//! Search as browsers do it: at MEILISEARCH_PUBLIC_URL, with MEILISEARCH_API_KEY (the search-only
//! key Tutor creates for the platform; the tokens Studio hands to browsers are signed with it), a
//! placeholder search on every index the platform builds must find documents. An index with no
//! hits is asked for its document count with the master key, to tell an empty index (nothing to
//! find) from one the key cannot see.

use serde_json::{json, Value};

use super::{CheckResult, CheckStatus};
use crate::resolve::config_text;
use crate::search::specs::IndexKind;
use crate::tutor::TutorConfig;

const SERVICE: &str = "Meilisearch";

/// A request's outcome: status and JSON body, or why nothing answered.
async fn ask(request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let response = request.send().await.map_err(|e| {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(&format!(": {s}"));
            source = s.source();
        }
        detail
    })?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(
        |_| json!({"message": String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string()}),
    );
    Ok((status, body))
}

/// `code: message` of a Meilisearch error body.
fn api_message(body: &Value) -> String {
    match (body["code"].as_str(), body["message"].as_str()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (None, Some(message)) => message.to_string(),
        _ => body.to_string(),
    }
}

pub async fn check(http: &reqwest::Client, cfg: &TutorConfig) -> Vec<CheckResult> {
    let Some(public_url) = config_text(cfg, "MEILISEARCH_PUBLIC_URL").filter(|u| !u.contains("{{"))
    else {
        return vec![CheckResult::new(
            SERVICE,
            "search",
            CheckStatus::Skipped,
            "config.yml has no MEILISEARCH_PUBLIC_URL: this platform does not search with Meilisearch",
        )];
    };
    let master = config_text(cfg, "MEILISEARCH_MASTER_KEY").filter(|k| !k.is_empty());
    let api_key = config_text(cfg, "MEILISEARCH_API_KEY")
        .filter(|k| !k.is_empty() && !k.contains("{{"))
        .or_else(|| {
            // Tutor's default is derived from the master key and the key's uid.
            let uid = config_text(cfg, "MEILISEARCH_API_KEY_UID")?;
            Some(crate::search::api_key::derive(master.as_deref()?, &uid))
        });
    let Some(api_key) = api_key else {
        return vec![CheckResult::failed(
            SERVICE,
            "search",
            "config.yml has neither MEILISEARCH_API_KEY nor the master key and MEILISEARCH_API_KEY_UID it is derived from",
            "run tutor config save once so Tutor writes them, then offload check again",
        )];
    };
    let prefix = config_text(cfg, "MEILISEARCH_INDEX_PREFIX").unwrap_or_else(|| "tutor_".into());
    let base = public_url.trim_end_matches('/').to_string();
    let mut out = Vec::new();
    for kind in IndexKind::ALL {
        let index = format!("{prefix}{}", kind.name());
        out.push(search_index(http, &base, &index, &api_key, master.as_deref()).await);
        if out
            .last()
            .is_some_and(|r| r.detail.starts_with("unreachable"))
        {
            // One unreachable server answers no other index either.
            break;
        }
    }
    out
}

async fn search_index(
    http: &reqwest::Client,
    base: &str,
    index: &str,
    api_key: &str,
    master: Option<&str>,
) -> CheckResult {
    let url = format!("{base}/indexes/{index}/search");
    let request = http
        .post(&url)
        .bearer_auth(api_key)
        .json(&json!({"q": "", "limit": 1}));
    let (status, body) = match ask(request).await {
        Ok(answer) => answer,
        Err(e) => {
            return CheckResult::failed(
                SERVICE,
                index,
                format!("unreachable: POST {url}: {e}"),
                "browsers cannot reach the search server either: check MEILISEARCH_PUBLIC_URL in config.yml and the proxy or DNS in front of the new Meilisearch",
            )
        }
    };
    match status {
        200 => {}
        401 | 403 => {
            return CheckResult::failed(
                SERVICE,
                index,
                format!("the platform's search key was refused ({status}: {})", api_message(&body)),
                "the new Meilisearch has no key MEILISEARCH_API_KEY: create it with tutor local do init --limit=meilisearch (or offload reindex, which creates it)",
            )
        }
        404 => {
            return CheckResult::failed(
                SERVICE,
                index,
                format!("no such index ({})", api_message(&body)),
                "rebuild the indexes on the new server: offload reindex --to-meilisearch URL (docs/meilisearch.md)",
            )
        }
        _ => {
            return CheckResult::failed(
                SERVICE,
                index,
                format!("POST {url} answered {status}: {}", api_message(&body)),
                "check the Meilisearch server's logs, and the proxy in front of it",
            )
        }
    }
    let hits = body["estimatedTotalHits"]
        .as_u64()
        .or_else(|| body["totalHits"].as_u64())
        .unwrap_or_else(|| body["hits"].as_array().map_or(0, |h| h.len() as u64));
    if hits > 0 {
        return CheckResult::ok(
            SERVICE,
            index,
            format!("a search with the platform's key finds {hits} document(s)"),
        );
    }
    // No hits: an empty index, or documents the key cannot see?
    let Some(master) = master else {
        return CheckResult::new(
            SERVICE,
            index,
            CheckStatus::Warning,
            "a search with the platform's key finds nothing, and without MEILISEARCH_MASTER_KEY offload cannot tell whether the index is empty",
        );
    };
    let stats = http
        .get(format!("{base}/indexes/{index}/stats"))
        .bearer_auth(master);
    match ask(stats).await {
        Ok((200, v)) => match v["numberOfDocuments"].as_u64() {
            Some(0) => CheckResult::ok(
                SERVICE,
                index,
                "the index is empty, so a search finds nothing (the platform has none of these documents yet)",
            ),
            Some(n) => CheckResult::failed(
                SERVICE,
                index,
                format!("the index holds {n} document(s), but a search with the platform's key finds none"),
                "the key's indexes do not cover this index: recreate the key with tutor local do init --limit=meilisearch, or check MEILISEARCH_INDEX_PREFIX",
            ),
            None => CheckResult::new(SERVICE, index, CheckStatus::Warning, "a search finds nothing, and the index's stats gave no document count"),
        },
        Ok((status, v)) => CheckResult::new(
            SERVICE,
            index,
            CheckStatus::Warning,
            format!("a search finds nothing, and the stats with the master key answered {status} ({})", api_message(&v)),
        ),
        Err(e) => CheckResult::new(
            SERVICE,
            index,
            CheckStatus::Warning,
            format!("a search finds nothing, and the stats could not be asked: {e}"),
        ),
    }
}
