//! The delta pass: after a copy made while the platform was running, find the key ranges whose
//! source changed since (with the same chunk digests verify uses) and copy only those again,
//! clearing them on the target first so deleted rows go too. This is what makes the final pass in
//! a maintenance window take minutes instead of a full copy.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, UnitState};
use super::error::{CoreError, StoreError};
use super::progress::{Phase, Reporter, UnitOutcome};
use super::runner::{check_targets_kept, with_retries};
use super::store::{Cursor, KeyRange, Side, Store, Unit};

/// What the delta pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaSummary {
    pub units_checked: usize,
    pub units_changed: usize,
    pub chunks_recopied: u64,
    pub rows_recopied: u64,
    /// Units recopied, by name.
    pub changed: Vec<String>,
}

/// Check every copied unit and copy its changed key ranges again.
pub async fn delta(
    stores: &[Arc<dyn Store>],
    catalog: Arc<Catalog>,
    chunk_rows: u64,
    parallel: usize,
    retries: u32,
    reporter: Arc<dyn Reporter>,
    cancel: &CancellationToken,
) -> Result<DeltaSummary, CoreError> {
    let mut summary = DeltaSummary::default();
    // Triggers and the like must not react to rows copied again; until finish_target has put them
    // back, the store's finish phase counts as not done, so a crash here is finished on resume.
    for store in stores {
        catalog.phase_start(store.kind(), Phase::Finish)?;
        store.pause_target_side_effects().await?;
    }
    let records = catalog.units(None)?;
    reporter.on_phase_start(
        Phase::Copy,
        records.len() as u64,
        records.iter().map(|r| r.unit.est_rows).sum(),
        0,
    );
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for rec in records {
        if rec.state != UnitState::Copied {
            continue;
        }
        let Some(store) = stores.iter().find(|s| s.kind() == rec.unit.store).cloned() else {
            continue;
        };
        summary.units_checked += 1;
        let (permits, catalog, reporter, cancel) = (
            permits.clone(),
            catalog.clone(),
            reporter.clone(),
            cancel.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            if cancel.is_cancelled() {
                return Ok((rec.unit.name.clone(), 0, 0));
            }
            reporter.on_unit_start(Phase::Copy, &rec.unit);
            let result = delta_unit(
                &*store, &catalog, &rec.unit, chunk_rows, retries, &*reporter, &cancel,
            )
            .await;
            let outcome = match &result {
                Ok(_) => UnitOutcome::Done,
                Err(e) => UnitOutcome::Failed(e.to_string()),
            };
            reporter.on_unit_done(Phase::Copy, &rec.unit, &outcome);
            result.map(|(chunks, rows)| (rec.unit.name.clone(), chunks, rows))
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((name, chunks, rows))) => {
                if chunks > 0 {
                    summary.units_changed += 1;
                    summary.chunks_recopied += chunks;
                    summary.rows_recopied += rows;
                    summary.changed.push(name);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error
                    .get_or_insert(CoreError::Invalid(format!("a delta worker crashed: {e}")));
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(CoreError::Interrupted);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for store in stores {
        let notes = with_retries(retries, cancel, |_, _| {}, || store.finish_target()).await?;
        for n in &notes {
            catalog.event("info", Some(store.kind()), None, n)?;
        }
        catalog.phase_done(store.kind(), Phase::Finish, "after delta")?;
    }
    // What the pass wrote counts only if its targets did not restart and lose it meanwhile.
    check_targets_kept(stores, &catalog, retries, cancel).await?;
    summary.changed.sort();
    reporter.on_phase_done(Phase::Copy);
    Ok(summary)
}

/// Compare one unit chunk by chunk and copy the differing chunks again. Returns (chunks, rows).
async fn delta_unit(
    store: &dyn Store,
    catalog: &Catalog,
    unit: &Unit,
    chunk_rows: u64,
    retries: u32,
    reporter: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<(u64, u64), CoreError> {
    let limit = chunk_rows.max(1);
    let digest = |side: Side, after: Option<Cursor>, upto: Option<Cursor>, limit: Option<u64>| async move {
        with_retries(
            retries,
            cancel,
            |_, _| {},
            || store.digest_range(side, unit, after.as_ref(), upto.as_ref(), limit),
        )
        .await
    };
    let (mut chunks, mut rows) = (0u64, 0u64);
    let mut after = unit.range.after.clone();
    loop {
        if cancel.is_cancelled() {
            return Err(CoreError::Interrupted);
        }
        let source = digest(
            Side::Source,
            after.clone(),
            unit.range.upto.clone(),
            Some(limit),
        )
        .await?;
        let last_chunk = source.rows < limit || source.last.is_none();
        let upto = if last_chunk {
            unit.range.upto.clone()
        } else {
            source.last.clone()
        };
        let target = digest(Side::Target, after.clone(), upto.clone(), None).await?;
        reporter.on_batch(Phase::Copy, unit, source.rows, 0);
        if source.rows != target.rows || source.digest != target.digest {
            let range = store.render_range(unit, after.as_ref(), upto.as_ref());
            tracing::info!(store = %unit.store, unit = %unit.name, range = %range, "source changed since the copy; copying this range again");
            catalog.set_state(unit, UnitState::Copying, None)?;
            rows += recopy(store, unit, after.clone(), upto.clone(), retries, cancel).await?;
            catalog.set_state(unit, UnitState::Copied, None)?;
            catalog.event(
                "info",
                Some(unit.store),
                Some(&unit.name),
                &format!("delta: copied {range} again"),
            )?;
            chunks += 1;
        }
        if last_chunk {
            break;
        }
        after = source.last;
    }
    Ok((chunks, rows))
}

/// Clear a range on the target and copy it again. Returns the records written: those the
/// target already held identical (the objects store skips them) are not counted.
async fn recopy(
    store: &dyn Store,
    unit: &Unit,
    after: Option<Cursor>,
    upto: Option<Cursor>,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<u64, StoreError> {
    with_retries(
        retries,
        cancel,
        |_, _| {},
        || store.clear_range(unit, after.as_ref(), upto.as_ref()),
    )
    .await?;
    let part = Unit {
        range: KeyRange { after, upto },
        ..unit.clone()
    };
    let mut cursor: Option<Cursor> = None;
    let mut rows = 0;
    loop {
        let batch = with_retries(
            retries,
            cancel,
            |_, _| {},
            || store.copy_batch(&part, cursor.as_ref()),
        )
        .await?;
        rows += batch.rows.saturating_sub(batch.unchanged);
        match batch.next {
            Some(next) => cursor = Some(next),
            None => return Ok(rows),
        }
    }
}
