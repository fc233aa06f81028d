//! `offload plan`: what a job would do, the checks it needs to pass, the Meilisearch section and
//! the maintenance-window runbook. Writes nothing anywhere.

use anyhow::bail;

use super::{inputs, reindex, Outcome, Output};
use crate::cli::JobArgs;
use crate::core::plan::make_plan;
use crate::resolve::SettingsError;
use crate::search::plan::plan_ok;
use crate::settings::Settings;
use crate::ui::print;

pub async fn plan(args: JobArgs, out: Output) -> anyhow::Result<Outcome> {
    let meilisearch = reindex::plan_section(&args).await?;
    let settings = match Settings::resolve(&inputs(&args), None) {
        // An Elasticsearch platform with no target yet: the note on what offload does is the plan.
        Err(SettingsError::NothingToDo) if meilisearch.is_some() => None,
        other => Some(other?),
    };
    if let Some(m) = &meilisearch {
        if settings.as_ref().is_none_or(|s| s.stores.is_empty()) {
            out.emit(&serde_json::json!({ "meilisearch": m }), || {
                print::search_plan(m)
            });
            return Ok(if plan_ok(m) {
                Outcome::Clean
            } else {
                bail!("the Meilisearch checks failed (see above); fix them before reindexing")
            });
        }
    }
    let settings = settings.expect("settings resolved when a store has a target");
    super::check_reachable(&settings).await?;
    let mut plan = make_plan(&settings.open_stores()).await?;
    plan.tls_warnings = settings.tls_warnings();
    let mut json = serde_json::to_value(&plan).expect("serializable plan");
    if let Some(m) = &meilisearch {
        json["meilisearch"] = m.clone();
    }
    let runbook = print::maintenance_runbook();
    json["runbook"] = runbook.clone().into();
    out.emit(&json, || {
        let mut text = print::plan(&plan);
        if let Some(m) = &meilisearch {
            text.push_str(&print::search_plan(m));
        }
        text.push('\n');
        text.push_str(&runbook);
        text
    });
    if !plan.checks_pass() {
        bail!("some prerequisite checks failed (see above); fix them before copying");
    }
    Ok(Outcome::Clean)
}
