//! The plan: for every selected store, what the source holds (units and sizes), what the two
//! servers are, and which prerequisites hold, before anything is written anywhere.

use std::sync::Arc;

use serde::Serialize;

use super::error::CoreError;
use super::store::{Store, StoreKind, Survey, Unit};

/// The plan for one store.
#[derive(Debug, Clone, Serialize)]
pub struct StorePlan {
    pub store: StoreKind,
    pub source: String,
    pub target: String,
    pub survey: Survey,
    pub units: Vec<Unit>,
    /// Units whose target already holds data.
    pub occupied: Vec<String>,
    pub total_rows: u64,
    pub total_bytes: u64,
}

/// The plan for the whole job.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stores: Vec<StorePlan>,
}

impl Plan {
    /// Whether every prerequisite check passed.
    pub fn checks_pass(&self) -> bool {
        self.stores
            .iter()
            .all(|s| s.survey.checks.iter().all(|c| c.ok))
    }
}

/// Survey and inventory every store. Reads only.
pub async fn make_plan(stores: &[Arc<dyn Store>]) -> Result<Plan, CoreError> {
    let mut out = Vec::new();
    for store in stores {
        let mut survey = store.survey().await?;
        let units = store.inventory().await?;
        survey.notes.extend(store.inventory_notes(&units));
        let occupied = store.occupied(&units).await?;
        let identity = store.identity();
        out.push(StorePlan {
            store: store.kind(),
            source: identity.source.address,
            target: identity.target.address,
            total_rows: units.iter().map(|u| u.est_rows).sum(),
            total_bytes: units.iter().map(|u| u.est_bytes).sum(),
            survey,
            units,
            occupied,
        });
    }
    Ok(Plan { stores: out })
}
