//! `offload cutover` and `offload rollback`: point Tutor's config.yml at the migrated servers.

use crate::cli::{CutoverArgs, RollbackArgs};
use crate::commands::Outcome;

pub async fn cutover(_args: CutoverArgs, _json: bool) -> anyhow::Result<Outcome> {
    anyhow::bail!("cutover is not wired yet")
}

pub fn rollback(_args: RollbackArgs, _json: bool) -> anyhow::Result<Outcome> {
    anyhow::bail!("rollback is not wired yet")
}
