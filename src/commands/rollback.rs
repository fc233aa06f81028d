//! `offload rollback`: restore config.yml from the newest backup that `cutover` made.

use serde_json::json;

use super::{Outcome, Output};
use crate::cli::RollbackArgs;
use crate::settings::tutor_root;
use crate::tutor;

pub fn rollback(args: RollbackArgs, out: Output) -> anyhow::Result<Outcome> {
    let root = tutor_root(args.tutor_root.as_deref());
    let restored = tutor::rollback(&root)?;
    out.emit(&json!({"restored_from": restored.restored_from}), || {
        format!(
            "Restored {} from {}. Run `tutor config save` and restart the platform (tutor local start -d) to use the old servers again.\n",
            root.join(tutor::CONFIG_FILENAME).display(),
            restored.restored_from.display()
        )
    });
    Ok(Outcome::Clean)
}
