//! Holding the sources' writers off for the final pass (`--freeze-source`) and always letting
//! them in again. Each hold is recorded in the catalog (phase `freeze` of the store) until
//! released, so a run after a killed one knows the hold it finds is its own to release.

use std::sync::Arc;

use super::{Job, JobError};
use crate::core::progress::Phase;
use crate::core::{Store, StoreError, StoreKind};

/// The stores whose writers this run holds off; give it back to [`Job::thaw_sources`].
#[must_use = "frozen sources must be thawed"]
pub struct Frozen(Vec<Arc<dyn Store>>);

/// A source that could not be let in again: its writers may still be held off.
#[derive(Debug)]
pub struct ThawFailure {
    pub store: StoreKind,
    pub error: StoreError,
}

impl Job {
    /// Hold the sources' writers off where the server allows it, when `freeze` is asked. A store
    /// that cannot be held off, or a hold left by an earlier run while `freeze` is not asked,
    /// adds a note. On an error, what was already frozen is released before returning.
    pub async fn freeze_sources(
        &self,
        freeze: bool,
        notes: &mut Vec<String>,
    ) -> Result<Frozen, JobError> {
        let held = self.catalog.held_freezes()?;
        let mut frozen = Frozen(Vec::new());
        for store in &self.stores {
            let earlier = held.contains(&store.kind());
            if !freeze {
                if earlier {
                    tracing::warn!(store = %store.kind(), "an earlier run of this job held the source's writers off and was stopped before letting them in");
                    notes.push(format!(
                        "{}: an earlier run of this job held the source's writers off and was stopped before letting them in; run again with --freeze-source to finish and release them, or release them by hand (MySQL: SET GLOBAL read_only = OFF; Redis: CLIENT UNPAUSE, or wait two minutes)",
                        store.kind()
                    ));
                }
                continue;
            }
            match store.freeze_source(earlier).await {
                Ok(Some(note)) => {
                    self.catalog.phase_start(store.kind(), Phase::Freeze)?;
                    notes.push(note);
                    frozen.0.push(store.clone());
                }
                Ok(None) => notes.push(format!(
                    "{}: offload cannot hold writers off on this source; stop the platform's writers yourself",
                    store.kind()
                )),
                Err(e) => {
                    let failures = self.thaw_sources(frozen).await;
                    for f in failures {
                        tracing::error!(store = %f.store, error = %f.error, "could not let the source's writers in again");
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(frozen)
    }

    /// Let in again the writers [`Job::freeze_sources`] held off; what could not be released is
    /// returned, for the operator to release by hand.
    pub async fn thaw_sources(&self, frozen: Frozen) -> Vec<ThawFailure> {
        let mut failures = Vec::new();
        for s in frozen.0 {
            match s.thaw_source().await {
                Ok(()) => {
                    let _ = self.catalog.phase_done(s.kind(), Phase::Freeze, "released");
                }
                Err(error) => {
                    tracing::error!(store = %s.kind(), error = %error, "could not let the source's writers in again");
                    failures.push(ThawFailure {
                        store: s.kind(),
                        error,
                    });
                }
            }
        }
        failures
    }
}
