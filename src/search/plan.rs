//! The Meilisearch part of a plan: the target checked, the indexes listed with what the migrated
//! MySQL holds for them, the address browsers will use, and what offload does for an
//! Elasticsearch platform. Writes nothing.

use std::collections::HashMap;

use serde_json::json;

use super::client::MeilisearchClient;
use super::source::SourceReader;
use super::specs::IndexKind;
use super::{check_target, elasticsearch_note, index_uid};
use crate::core::StoreError;
use crate::resolve::config_text;
use crate::stores::mysql::MysqlEndpoint;
use crate::tutor::TutorConfig;

/// What the Meilisearch plan section is drawn from, resolved.
pub struct SearchPlanInputs<'a> {
    pub tutor: Option<&'a TutorConfig>,
    /// The target server, when one is named.
    pub target: Option<&'a MeilisearchClient>,
    /// The migrated MySQL, when named, to count what the indexes will hold.
    pub mysql: Option<&'a MysqlEndpoint>,
    /// `--databases`' first entry, else config.yml's platform database.
    pub database: Option<String>,
    pub public_url: Option<&'a str>,
}

/// The section as JSON, or `None` when there is no target and no Elasticsearch to speak of.
pub async fn plan_section(
    inputs: &SearchPlanInputs<'_>,
) -> Result<Option<serde_json::Value>, StoreError> {
    let tutor = inputs.tutor;
    let es = tutor.and_then(elasticsearch_note);
    if inputs.target.is_none() && es.is_none() {
        return Ok(None);
    }
    let mut checks = Vec::new();
    if let Some(client) = inputs.target {
        match check_target(client).await {
            Ok(v) => checks.push(json!({"name": "target Meilisearch", "ok": true, "detail": format!("{} answers, version {v}, index swap available", client.address())})),
            Err(e) => checks.push(json!({"name": "target Meilisearch", "ok": false, "detail": e.to_string()})),
        }
    }
    let prefix = tutor
        .and_then(|t| config_text(t, "MEILISEARCH_INDEX_PREFIX"))
        .unwrap_or_else(|| "tutor_".into());
    // Counts from the migrated MySQL when it is named (block counts need the structures: they
    // are counted while `reindex` builds the documents).
    let mut counts: HashMap<IndexKind, u64> = Default::default();
    if let Some(endpoint) = inputs.mysql {
        let database = inputs
            .database
            .clone()
            .or_else(|| tutor.and_then(|t| config_text(t, "OPENEDX_MYSQL_DATABASE")))
            .unwrap_or_else(|| "openedx".into());
        let source = SourceReader::new(endpoint, &database, None);
        // Before the copy the migrated MySQL holds no platform tables yet: then the counts come
        // while `reindex` builds the indexes.
        if source.has_table("course_overviews_courseoverview").await? {
            let overviews = source.course_overviews().await?;
            let courses = source
                .course_index()
                .await?
                .iter()
                .filter(|e| !e.published_version.is_empty() && overviews.contains_key(&e.course_id))
                .count() as u64;
            counts.insert(IndexKind::CourseInfo, courses);
            counts.insert(
                IndexKind::CommentThreads,
                source.count("forum_commentthread").await?,
            );
            counts.insert(IndexKind::Comments, source.count("forum_comment").await?);
        }
    }
    let indexes: Vec<serde_json::Value> = IndexKind::ALL
        .iter()
        .map(|k| json!({"index": index_uid(&prefix, *k), "from": k.source(), "documents": counts.get(k)}))
        .collect();
    // Browsers query Meilisearch directly: the cutover needs the address they reach it at.
    let public_url = match (inputs.public_url, inputs.target) {
        (Some(u), _) => Some(format!("browsers will reach it at {u} (MEILISEARCH_PUBLIC_URL after cutover)")),
        (None, Some(_)) => Some("the cutover needs the address browsers reach it at: pass --meilisearch-public-url URL (MEILISEARCH_PUBLIC_URL)".to_string()),
        (None, None) => None,
    };
    Ok(Some(json!({
        "checks": checks,
        "public_url": public_url,
        "indexes": indexes,
        "elasticsearch": es,
        "note": "document counts are computed while `offload reindex` builds each index and checked against the live index after the swap",
    })))
}

/// Whether the Meilisearch checks of a plan passed.
pub fn plan_ok(section: &serde_json::Value) -> bool {
    section["checks"]
        .as_array()
        .map(|c| c.iter().all(|c| c["ok"] == true))
        .unwrap_or(true)
}
