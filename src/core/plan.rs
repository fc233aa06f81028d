//! The plan: for every selected store, what the source holds (units and sizes), what the two
//! servers are, and which prerequisites hold, before anything is written anywhere.

use std::sync::Arc;

use serde::Serialize;

use super::error::CoreError;
use super::store::{Side, Store, StoreKind, Survey, Unit};

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

/// A side of a store whose server certificate goes unverified, or only partly verified, because
/// an explicit option says so: the plan shows one warning line for each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsWarning {
    pub store: StoreKind,
    pub side: Side,
    /// What is not verified, the option that says so, and how to verify instead.
    pub detail: String,
}

/// The plan for the whole job.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stores: Vec<StorePlan>,
    /// Sides whose certificate check is skipped or weakened (filled in from the settings).
    pub tls_warnings: Vec<TlsWarning>,
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
    Ok(Plan {
        stores: out,
        tls_warnings: Vec::new(),
    })
}
