//! The Meilisearch reindex: rebuilds the indexes Open edX serves (`course_info`,
//! `courseware_content`, `studio_content`, `comment_threads`, `comments`) on a target Meilisearch
//! from the platform's source of truth (MySQL and MongoDB), or copies them from the old server,
//! with a zero-downtime swap per index; then verifies them and provisions Tutor's API key.
//!
//! Meilisearch is never a source of truth in Open edX, so this is not a copy store: there are no
//! rows to move, only documents to rebuild the way the platform's own indexers build them.

pub mod api_key;
pub mod client;
pub mod documents;
pub mod elasticsearch;
pub mod plan;
pub mod rebuild;
pub mod settings;
pub mod source;
pub mod specs;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::core::progress::{Phase, Reporter, UnitOutcome};
use crate::core::{ErrorKind, StoreError, StoreKind, Unit};
use crate::secret::Secret;
use crate::tutor::TutorConfig;
use client::MeilisearchClient;
use documents::Micros;
use rebuild::{rebuild_index, DocSink, IndexOutcome, RebuildOptions};
use source::SourceReader;
use specs::{IndexKind, IndexSettings};

/// Where index documents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Build them from MySQL and MongoDB, as the platform does.
    Rebuild,
    /// Copy settings and documents from the old Meilisearch (falls back to rebuilding an index
    /// the old server cannot give).
    Copy,
}

/// What a reindex run needs.
pub struct ReindexJob {
    pub target: MeilisearchClient,
    /// The old server, for copy mode.
    pub old: Option<MeilisearchClient>,
    /// The target's master key, for the API key check.
    pub master_key: Option<Secret>,
    pub prefix: String,
    pub mode: Mode,
    pub indexes: Vec<IndexKind>,
    /// `MEILISEARCH_API_KEY_UID`: the key to create for the platform.
    pub api_key_uid: Option<String>,
    pub options: RebuildOptions,
    /// "Now" for course modes' expiry.
    pub now: Micros,
}

/// What happened to one index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexReport {
    pub index: String,
    /// `rebuilt` or `copied`.
    pub how: String,
    pub documents: u64,
    pub bytes: u64,
    pub batches: u64,
    /// Documents in the live index after the swap.
    pub live_documents: u64,
    pub seconds: f64,
    pub settings_differences: Vec<String>,
    pub sample_checked: usize,
    pub document_differences: Vec<String>,
}

impl IndexReport {
    pub fn clean(&self) -> bool {
        self.live_documents == self.documents
            && self.settings_differences.is_empty()
            && self.document_differences.is_empty()
    }
}

/// The outcome of a reindex run.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    pub target: String,
    pub server_version: String,
    pub source: String,
    pub indexes: Vec<IndexReport>,
    pub api_key: Option<String>,
    pub notes: Vec<String>,
}

impl ReindexReport {
    pub fn clean(&self) -> bool {
        self.indexes.iter().all(IndexReport::clean)
    }
}

/// The full name of an index under a prefix.
pub fn index_uid(prefix: &str, kind: IndexKind) -> String {
    format!("{prefix}{}", kind.name())
}

/// Check the target before anything is written: reachable, the key accepted, index swap there.
/// Returns the server version.
pub async fn check_target(target: &MeilisearchClient) -> Result<String, StoreError> {
    target.health().await?;
    let version = target.version().await?;
    let major: Option<u64> = version.split('.').next().and_then(|m| m.parse().ok());
    if major == Some(0) {
        return Err(StoreError::new(
            StoreKind::Meilisearch,
            target.address(),
            ErrorKind::Unsupported,
            format!("Meilisearch {version} has no index swap"),
            "upgrade the target to Meilisearch 1.0 or newer (Tutor runs 1.8); nothing was changed",
        ));
    }
    Ok(version)
}

/// What the plan says about an Elasticsearch platform (Tutor v18 and older), if this is one.
pub fn elasticsearch_note(cfg: &TutorConfig) -> Option<String> {
    let es = cfg.is_set_in_file("RUN_ELASTICSEARCH") || cfg.is_set_in_file("ELASTICSEARCH_HOST");
    es.then(|| {
        "this platform's config.yml has RUN_ELASTICSEARCH / ELASTICSEARCH_HOST: it searches with Elasticsearch (Tutor v18 or older). \
         offload does not copy Elasticsearch indexes: they are rebuilt. With --to-elasticsearch URL the cutover points the platform at \
         a new Elasticsearch and its runbook gives the reindex commands (see the Elasticsearch section). offload can also build the \
         Meilisearch indexes that Tutor v19 and newer serve (offload reindex --to-meilisearch URL), ready for after the Tutor upgrade"
            .to_string()
    })
}

fn unit_for(uid: &str, kind: IndexKind, target: &MeilisearchClient) -> Unit {
    Unit {
        store: StoreKind::Meilisearch,
        name: uid.to_string(),
        container: target.address(),
        object: kind.name().to_string(),
        range: Default::default(),
        est_rows: 0,
        est_bytes: 0,
        size_known: true,
        spec: Value::Null,
    }
}

/// Rebuild (or copy) every selected index, verify each one, then provision the API key.
pub async fn run(
    job: &ReindexJob,
    source: Option<&SourceReader>,
    reporter: Arc<dyn Reporter>,
) -> Result<ReindexReport, StoreError> {
    let server_version = check_target(&job.target).await?;
    let mut notes = Vec::new();
    let old_ok = match (&job.old, job.mode) {
        (Some(old), Mode::Copy) => match old.health().await {
            Ok(()) => true,
            Err(e) => {
                notes.push(format!(
                    "copy mode: the old Meilisearch is not healthy ({e}); every index is rebuilt from the source of truth instead"
                ));
                false
            }
        },
        (None, Mode::Copy) => {
            notes.push("copy mode: no old Meilisearch known (MEILISEARCH_URL or --from-meilisearch); rebuilding instead".into());
            false
        }
        _ => false,
    };
    reporter.on_phase_start(Phase::Reindex, job.indexes.len() as u64, 0, 0);
    let mut reports = Vec::new();
    for &kind in &job.indexes {
        let uid = index_uid(&job.prefix, kind);
        let unit = unit_for(&uid, kind, &job.target);
        reporter.on_unit_start(Phase::Reindex, &unit);
        let started = Instant::now();
        let on_batch =
            |rows: u64, bytes: u64| reporter.on_batch(Phase::Reindex, &unit, rows, bytes);
        let copied_from = match (&job.old, old_ok) {
            (Some(old), true) => old.get_index(&uid).await?.map(|info| (old, info)),
            _ => None,
        };
        let result = match copied_from {
            Some((old, info)) => {
                let settings = IndexSettings::from_server(
                    info.primary_key.as_deref(),
                    &old.get_settings(&uid).await?,
                );
                let outcome = rebuild_index(
                    &job.target,
                    &uid,
                    &settings,
                    &job.options,
                    &on_batch,
                    |sink| copy_documents(old, &uid, sink),
                )
                .await;
                outcome.map(|o| (o, settings, "copied"))
            }
            None => {
                if job.mode == Mode::Copy && old_ok {
                    notes.push(format!("copy mode: the old server has no index {uid}; rebuilt from the source of truth"));
                }
                let source = source.ok_or_else(|| {
                    StoreError::new(
                        StoreKind::Meilisearch,
                        job.target.address(),
                        ErrorKind::Input,
                        "rebuilding needs the source of truth, and no MySQL was given",
                        "pass --to-mysql (or --from-mysql with --meilisearch-source source)",
                    )
                })?;
                let settings = kind.settings();
                let outcome = rebuild_index(
                    &job.target,
                    &uid,
                    &settings,
                    &job.options,
                    &on_batch,
                    |sink| produce(kind, source, job.now, sink),
                )
                .await;
                outcome.map(|o| (o, settings, "rebuilt"))
            }
        };
        let (outcome, settings, how) = match result {
            Ok(v) => v,
            Err(e) => {
                reporter.on_unit_done(Phase::Reindex, &unit, &UnitOutcome::Failed(e.to_string()));
                return Err(e);
            }
        };
        let report = verify_index(
            &job.target,
            &uid,
            &settings,
            &outcome,
            how,
            started.elapsed().as_secs_f64(),
        )
        .await?;
        reporter.on_unit_done(
            Phase::Reindex,
            &unit,
            &if report.clean() {
                UnitOutcome::Done
            } else {
                UnitOutcome::Differs(format!(
                    "{} difference(s)",
                    report.settings_differences.len() + report.document_differences.len()
                ))
            },
        );
        reports.push(report);
    }
    reporter.on_phase_done(Phase::Reindex);
    let api_key = match (&job.api_key_uid, &job.master_key) {
        (Some(uid), Some(master)) => {
            Some(provision_api_key(&job.target, master, uid, &job.prefix).await?)
        }
        _ => None,
    };
    Ok(ReindexReport {
        target: job.target.url(),
        server_version,
        source: match (source, old_ok) {
            (_, true) => format!(
                "old Meilisearch {}",
                job.old.as_ref().map(|o| o.address()).unwrap_or_default()
            ),
            (Some(s), false) => s.describe(),
            (None, false) => "none".into(),
        },
        indexes: reports,
        api_key,
        notes,
    })
}

async fn copy_documents(
    old: &MeilisearchClient,
    uid: &str,
    sink: DocSink,
) -> Result<(), StoreError> {
    let mut offset = 0;
    loop {
        let (docs, _total) = old.documents_page(uid, offset, 1000).await?;
        if docs.is_empty() {
            return Ok(());
        }
        offset += docs.len() as u64;
        for d in docs {
            if !sink.send(d).await {
                return Ok(());
            }
        }
    }
}

/// Send the documents of one index, built from the source of truth.
pub async fn produce(
    kind: IndexKind,
    source: &SourceReader,
    now: Micros,
    sink: DocSink,
) -> Result<(), StoreError> {
    const PAGE: u64 = 1000;
    match kind {
        IndexKind::CommentThreads => {
            let mut after = 0;
            loop {
                let page = source.threads(after, PAGE).await?;
                let Some(last) = page.last() else {
                    return Ok(());
                };
                after = last.id;
                for t in &page {
                    if !sink.send(documents::thread_document(t)).await {
                        return Ok(());
                    }
                }
            }
        }
        IndexKind::Comments => {
            let mut after = 0;
            loop {
                let page = source.comments(after, PAGE).await?;
                let Some(last) = page.last() else {
                    return Ok(());
                };
                after = last.id;
                for c in &page {
                    if !sink.send(documents::comment_document(c)).await {
                        return Ok(());
                    }
                }
            }
        }
        IndexKind::CourseInfo | IndexKind::CoursewareContent | IndexKind::StudioContent => {
            let overviews = source.course_overviews().await?;
            let modes = if kind == IndexKind::CourseInfo {
                source.course_modes().await?
            } else {
                Default::default()
            };
            let access = if kind == IndexKind::StudioContent {
                source.access_ids().await?
            } else {
                None
            };
            let mut missing = 0usize;
            for entry in source.course_index().await? {
                let Some(overview) = overviews.get(&entry.course_id) else {
                    tracing::debug!(course = %entry.course_id, "in the course index but without a course overview; not indexed");
                    continue;
                };
                let version = if kind == IndexKind::StudioContent {
                    &entry.draft_version
                } else {
                    &entry.published_version
                };
                if version.is_empty() {
                    continue;
                }
                let Some(tree) = source.course_tree(&entry.course_id, version).await? else {
                    missing += 1;
                    tracing::warn!(course = %entry.course_id, version = %version, "the course's structure is not in modulestore.structures; not indexed");
                    continue;
                };
                let mut docs = Vec::new();
                match kind {
                    IndexKind::CourseInfo => {
                        let slugs = documents::course_mode_slugs(
                            modes
                                .get(&entry.course_id)
                                .map(Vec::as_slice)
                                .unwrap_or(&[]),
                            now,
                        );
                        docs.extend(documents::course_info_document(
                            overview,
                            tree.root_block(),
                            &tree.about(),
                            &slugs,
                        ));
                    }
                    IndexKind::CoursewareContent => {
                        documents::courseware_documents(&tree, |d| docs.push(d))
                    }
                    _ => {
                        let id = access
                            .as_ref()
                            .and_then(|a| a.get(&entry.course_id).copied());
                        documents::studio_documents(&tree, id, |d| docs.push(d))
                    }
                }
                for d in docs {
                    if !sink.send(d).await {
                        return Ok(());
                    }
                }
            }
            if missing > 0 {
                tracing::warn!(
                    index = kind.name(),
                    missing,
                    "courses whose structure is missing were not indexed"
                );
            }
            Ok(())
        }
    }
}

/// Compare the live index with what was sent: count, settings, and the sample field by field.
async fn verify_index(
    client: &MeilisearchClient,
    uid: &str,
    settings: &IndexSettings,
    outcome: &IndexOutcome,
    how: &str,
    seconds: f64,
) -> Result<IndexReport, StoreError> {
    let live_documents = client.document_count(uid).await?;
    let info = client.get_index(uid).await?;
    let actual = IndexSettings::from_server(
        info.as_ref().and_then(|i| i.primary_key.as_deref()),
        &client.get_settings(uid).await?,
    );
    let settings_differences = settings.differences(&actual);
    let mut document_differences = Vec::new();
    for expected in &outcome.sample {
        let id = match &expected[&settings.primary_key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match client.get_document(uid, &id).await? {
            None => document_differences.push(format!("{uid}: document {id} is missing")),
            Some(found) => {
                for d in compare_json("", expected, &found) {
                    document_differences.push(format!("{uid}: document {id}: {d}"));
                }
            }
        }
    }
    Ok(IndexReport {
        index: uid.to_string(),
        how: how.to_string(),
        documents: outcome.documents,
        bytes: outcome.bytes,
        batches: outcome.batches,
        live_documents,
        seconds,
        settings_differences,
        sample_checked: outcome.sample.len(),
        document_differences,
    })
}

/// Field-by-field differences between two JSON documents, named by dotted path. Numbers compare
/// by value (`1.0` equals `1`).
pub fn compare_json(path: &str, expected: &Value, found: &Value) -> Vec<String> {
    let name = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut out = Vec::new();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => out.extend(compare_json(&name(k), x, y)),
                    (Some(x), None) => out.push(format!(
                        "field `{}` missing (expected {})",
                        name(k),
                        short(x)
                    )),
                    (None, Some(y)) => out.push(format!(
                        "field `{}` not expected (found {})",
                        name(k),
                        short(y)
                    )),
                    (None, None) => {}
                }
            }
            out
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Vec::new(),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| compare_json(&format!("{path}[{i}]"), x, y))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!(
            "field `{path}`: expected {}, found {}",
            short(a),
            short(b)
        )],
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Create Tutor's API key on the target (uid `MEILISEARCH_API_KEY_UID`, every action, indexes
/// `<prefix>*`) unless it exists, and check that its value is the one Tutor computes
/// (HMAC-SHA256 of the uid keyed by the master key). Returns a sentence for the report.
pub async fn provision_api_key(
    target: &MeilisearchClient,
    master_key: &Secret,
    uid: &str,
    prefix: &str,
) -> Result<String, StoreError> {
    let expected = api_key::derive(master_key.expose(), uid);
    let wanted_indexes = json!([format!("{prefix}*")]);
    let existing = target.get_key(uid).await?;
    let (key, created) = match existing {
        Some(k) => (k, false),
        None => {
            let mut body = Map::new();
            body.insert("uid".into(), json!(uid));
            body.insert("name".into(), json!("Open edX (created by offload)"));
            body.insert(
                "description".into(),
                json!("MEILISEARCH_API_KEY for the Open edX platform"),
            );
            body.insert("actions".into(), json!(["*"]));
            body.insert("indexes".into(), wanted_indexes.clone());
            body.insert("expiresAt".into(), Value::Null);
            (target.create_key(&Value::Object(body)).await?, true)
        }
    };
    let problem = |detail: String| {
        StoreError::new(
            StoreKind::Meilisearch,
            target.address(),
            ErrorKind::Query,
            detail,
            "delete that key on the target (DELETE /keys/{uid}) and run again, or fix MEILISEARCH_API_KEY_UID",
        )
    };
    if key["actions"] != json!(["*"]) || key["indexes"] != wanted_indexes {
        return Err(problem(format!(
            "the API key {uid} exists with actions {} and indexes {}, not [\"*\"] and {wanted_indexes}",
            key["actions"], key["indexes"]
        )));
    }
    if key["key"].as_str() != Some(expected.as_str()) {
        return Err(problem(format!(
            "the API key {uid} does not have the value Tutor computes from the master key (HMAC-SHA256); the master key differs from the one that created it"
        )));
    }
    Ok(format!(
        "API key {uid} {} with actions [\"*\"] on {prefix}*; its value equals MEILISEARCH_API_KEY as Tutor computes it",
        if created { "created" } else { "already present" }
    ))
}

/// Now, as microseconds since the epoch (the "now" course modes expire against).
pub fn now_micros() -> Micros {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as Micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticsearch_platforms_are_detected_from_config_yml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yml"),
            "LMS_HOST: learn.example.org\n",
        )
        .unwrap();
        let cfg = TutorConfig::load(dir.path()).unwrap();
        assert_eq!(
            elasticsearch_note(&cfg),
            None,
            "a Tutor v19+ config has no Elasticsearch"
        );
        std::fs::write(
            dir.path().join("config.yml"),
            "ELASTICSEARCH_HOST: elasticsearch\nRUN_ELASTICSEARCH: true\n",
        )
        .unwrap();
        let cfg = TutorConfig::load(dir.path()).unwrap();
        let note = elasticsearch_note(&cfg).expect("detected");
        assert!(note.contains("does not copy Elasticsearch"), "{note}");
    }

    #[test]
    fn differences_are_named_by_path() {
        let expected = json!({"a": 1.0, "b": {"c": "x"}, "d": [1, 2]});
        let found = json!({"a": 1, "b": {"c": "y"}, "d": [1, 2], "e": true});
        assert_eq!(
            compare_json("", &expected, &found),
            vec![
                "field `b.c`: expected \"x\", found \"y\"".to_string(),
                "field `e` not expected (found true)".to_string(),
            ]
        );
    }
}
