//! `offload rollback`: restore config.yml from the newest backup that `cutover` made, unless it
//! was changed after cutover (then show what rollback would change, and go on only with
//! `--force`, saving the current file first).

use serde_json::json;

use super::{Outcome, Output};
use crate::cli::RollbackArgs;
use crate::settings::tutor_root;
use crate::tutor::{self, TutorError};

pub fn rollback(args: RollbackArgs, out: Output) -> anyhow::Result<Outcome> {
    let root = tutor_root(args.tutor_root.as_deref());
    let now = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let restored = match tutor::rollback(&root, args.force, &now) {
        Err(TutorError::EditedAfterCutover(edited)) => {
            eprintln!(
                "What rollback would change (secrets masked):\n{}",
                edited.diff
            );
            return Err(TutorError::EditedAfterCutover(edited).into());
        }
        other => other?,
    };
    out.emit(
        &json!({"restored_from": restored.restored_from, "saved_current": restored.saved_current, "removed_plugin": restored.removed_plugin}),
        || {
            let mut text = String::new();
            if let Some(saved) = &restored.saved_current {
                text.push_str(&format!(
                    "Saved the edited config.yml as {} before rolling back.\n",
                    saved.display()
                ));
            }
            if let Some(plugin) = &restored.removed_plugin {
                text.push_str(&format!(
                    "Removed the settings-patch plugin {} that cutover wrote.\n",
                    plugin.display()
                ));
            }
            text.push_str(&format!(
                "Restored {} from {}. Run `tutor config save` and restart the platform (tutor local start -d) to use the old servers again.\n",
                root.join(tutor::CONFIG_FILENAME).display(),
                restored.restored_from.display()
            ));
            text
        },
    );
    Ok(Outcome::Clean)
}
