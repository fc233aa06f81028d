//! `offload plan`: what a job would do, the checks it needs to pass, the Meilisearch and
//! Elasticsearch sections and the maintenance-window runbook. Writes nothing anywhere.

use std::time::Duration;

use anyhow::bail;

use super::{inputs, reindex, Outcome, Output};
use crate::cli::JobArgs;
use crate::core::plan::make_plan;
use crate::resolve::SettingsError;
use crate::search::elasticsearch;
use crate::search::plan::plan_ok;
use crate::settings::{tutor_root, Settings};
use crate::tutor::TutorConfig;
use crate::ui::print;

/// How long the plan waits for the source Elasticsearch to list its indexes.
const SOURCE_ES_WAIT: Duration = Duration::from_secs(3);

pub async fn plan(args: JobArgs, out: Output) -> anyhow::Result<Outcome> {
    let meilisearch = reindex::plan_section(&args).await?;
    let elasticsearch = elasticsearch_section(&args).await?;
    let settings = match Settings::resolve(&inputs(&args), None) {
        // A search-only platform with no store target yet: the search sections are the plan.
        Err(SettingsError::NothingToDo) if meilisearch.is_some() || elasticsearch.is_some() => None,
        other => Some(other?),
    };
    let search_json = || {
        let mut json = serde_json::json!({});
        if let Some(m) = &meilisearch {
            json["meilisearch"] = m.clone();
        }
        if let Some(e) = &elasticsearch {
            json["elasticsearch"] = e.clone();
        }
        json
    };
    let search_text = || {
        let mut text = String::new();
        if let Some(m) = &meilisearch {
            text.push_str(&print::search_plan(m));
        }
        if let Some(e) = &elasticsearch {
            text.push_str(&print::elasticsearch_plan(e));
        }
        text
    };
    let search_only = settings.as_ref().is_none_or(|s| s.stores.is_empty());
    if search_only && (meilisearch.is_some() || elasticsearch.is_some()) {
        out.emit(&search_json(), search_text);
        return match &meilisearch {
            Some(m) if !plan_ok(m) => {
                bail!("the Meilisearch checks failed (see above); fix them before reindexing")
            }
            _ => Ok(Outcome::Clean),
        };
    }
    let settings = settings.expect("settings resolved when a store has a target");
    super::check_reachable(&settings).await?;
    let mut plan = make_plan(&settings.open_stores()).await?;
    plan.tls_warnings = settings.tls_warnings();
    let mut json = serde_json::to_value(&plan).expect("serializable plan");
    if let serde_json::Value::Object(search) = search_json() {
        for (k, v) in search {
            json[k] = v;
        }
    }
    let runbook = print::maintenance_runbook();
    json["runbook"] = runbook.clone().into();
    out.emit(&json, || {
        let mut text = print::plan(&plan);
        text.push_str(&search_text());
        text.push('\n');
        text.push_str(&runbook);
        text
    });
    if !plan.checks_pass() {
        bail!("some prerequisite checks failed (see above); fix them before copying");
    }
    Ok(Outcome::Clean)
}

/// The Elasticsearch part of `plan` on a Tutor 18-or-older platform; an Elasticsearch target on a
/// newer one is refused.
async fn elasticsearch_section(args: &JobArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let root = tutor_root(args.tutor_root.as_deref());
    let Some(cfg) = TutorConfig::load_if_present(&root)? else {
        if args.elasticsearch.to_elasticsearch.is_some() {
            bail!(
                "--to-elasticsearch needs the Tutor root's config.yml (none in {}): pass --tutor-root",
                root.display()
            );
        }
        return Ok(None);
    };
    let target = elasticsearch::resolve(&args.elasticsearch, None)?;
    if !cfg.is_elasticsearch_era() {
        if target.is_some() {
            let release = cfg
                .tutor_release()
                .map(|r| format!("Tutor {}", r.version))
                .unwrap_or_else(|| "a Tutor without Elasticsearch settings".into());
            bail!(
                "--to-elasticsearch: {} runs {release}, which searches with Meilisearch, not Elasticsearch; drop --to-elasticsearch and move the search index with --to-meilisearch",
                root.display()
            );
        }
        return Ok(None);
    }
    let source =
        elasticsearch::read_indexes(&elasticsearch::source_url(&cfg), SOURCE_ES_WAIT).await;
    Ok(elasticsearch::plan_section(
        &cfg,
        source.as_deref(),
        target.as_ref(),
    ))
}
