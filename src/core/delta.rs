//! The delta pass: after a copy made while the platform was running, find the key ranges whose
//! source changed since (with the same chunk digests verify uses) and copy only those again,
//! clearing them on the target first so deleted rows go too. Within a chunk that differs, the
//! per-row digests name the rows that changed, appeared or went, and only the key ranges around
//! them are copied again; a chunk where most rows differ, or whose rows have no key, is copied
//! whole. This is what makes the final pass in a maintenance window short.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, UnitState};
use super::error::{CoreError, StoreError};
use super::progress::{Phase, Reporter, UnitOutcome};
use super::runner::{check_targets_kept, with_retries};
use super::store::{Cursor, KeyRange, RowDigest, Side, Store, Unit};

/// What the delta pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaSummary {
    pub units_checked: usize,
    pub units_changed: usize,
    /// Chunks whose digests differed.
    pub chunks_recopied: u64,
    /// Key ranges copied again: a whole chunk, or the rows around a change within one.
    pub ranges_recopied: u64,
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
                return Ok((rec.unit.store, rec.unit.name.clone(), UnitDelta::default()));
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
            result.map(|found| (rec.unit.store, rec.unit.name.clone(), found))
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((kind, name, found))) => {
                if found.chunks > 0 {
                    // What was written again is checked again by the verify in the window.
                    catalog.record_touched(
                        kind,
                        &[crate::core::follow::Touched {
                            unit: name.clone(),
                            key: None,
                        }],
                    )?;
                    summary.units_changed += 1;
                    summary.chunks_recopied += found.chunks;
                    summary.ranges_recopied += found.ranges;
                    summary.rows_recopied += found.rows;
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
    // Units copied again hold what their source held when read: a change stream is followed
    // from there, not from where it stood before.
    for store in stores {
        let kind = store.kind();
        let changed = catalog
            .units(Some(kind))?
            .iter()
            .any(|r| summary.changed.contains(&r.unit.name));
        if changed {
            super::runner::record_stream_start(&catalog, kind, &**store).await?;
        }
    }
    summary.changed.sort();
    reporter.on_phase_done(Phase::Copy);
    Ok(summary)
}

/// What the delta pass did to one unit.
#[derive(Debug, Default)]
struct UnitDelta {
    chunks: u64,
    ranges: u64,
    rows: u64,
}

/// Compare one unit chunk by chunk and copy again what differs in each chunk that changed.
async fn delta_unit(
    store: &dyn Store,
    catalog: &Catalog,
    unit: &Unit,
    chunk_rows: u64,
    retries: u32,
    reporter: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<UnitDelta, CoreError> {
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
    let mut found = UnitDelta::default();
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
            let chunk = KeyRange {
                after: after.clone(),
                upto: upto.clone(),
            };
            let ranges = changed_ranges(store, unit, &chunk, limit, retries, cancel).await?;
            let shown = store.render_range(unit, after.as_ref(), upto.as_ref());
            tracing::info!(store = %unit.store, unit = %unit.name, range = %shown, parts = ranges.len(), "source changed since the copy; copying what differs again");
            catalog.set_state(unit, UnitState::Copying, None)?;
            for part in &ranges {
                found.rows += recopy(
                    store,
                    unit,
                    part.after.clone(),
                    part.upto.clone(),
                    retries,
                    cancel,
                )
                .await?;
            }
            catalog.set_state(unit, UnitState::Copied, None)?;
            let what = if ranges.len() == 1 && ranges[0] == chunk {
                format!("delta: copied {shown} again")
            } else {
                format!(
                    "delta: copied {} key range(s) of {shown} again",
                    ranges.len()
                )
            };
            catalog.event("info", Some(unit.store), Some(&unit.name), &what)?;
            found.chunks += 1;
            found.ranges += ranges.len() as u64;
        }
        if last_chunk {
            break;
        }
        after = source.last;
    }
    Ok(found)
}

/// The key ranges of a chunk that differ between the two sides, from their per-row digests:
/// the whole chunk when its rows have no key, when they are too many to list, or when most of
/// them differ (copying the chunk whole is then cheaper).
async fn changed_ranges(
    store: &dyn Store,
    unit: &Unit,
    chunk: &KeyRange,
    limit: u64,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<Vec<KeyRange>, StoreError> {
    // A chunk holds at most `limit` source rows when it was digested; rows inserted since and
    // rows only the target holds make it larger. Past this cap the chunk is copied whole.
    let cap = usize::try_from(limit.saturating_mul(2).max(1_024)).unwrap_or(usize::MAX);
    let rows = |side: Side| async move {
        with_retries(
            retries,
            cancel,
            |_, _| {},
            || store.row_digests(side, unit, chunk.after.as_ref(), chunk.upto.as_ref(), cap),
        )
        .await
    };
    let source = rows(Side::Source).await?;
    let target = rows(Side::Target).await?;
    let whole = || vec![chunk.clone()];
    if source.len() >= cap || target.len() >= cap {
        return Ok(whole());
    }
    let Some(runs) = differing_slots(&source, &target) else {
        return Ok(whole());
    };
    let differing: usize = runs.iter().map(|r| r.end() - r.start() + 1).sum();
    if differing * 2 > source.len() + 1 {
        return Ok(whole());
    }
    let key = |i: usize| source[i].cursor.clone();
    Ok(runs
        .into_iter()
        .map(|run| KeyRange {
            after: match *run.start() {
                0 => chunk.after.clone(),
                i => key(i - 1),
            },
            upto: if *run.end() == source.len() {
                chunk.upto.clone()
            } else {
                key(*run.end())
            },
        })
        .collect())
}

/// Which parts of a chunk differ, given both sides' rows in key order. The chunk is cut into
/// slots by the source's keys: slot `i` runs from after source row `i - 1` (the chunk's start
/// for 0) up to and including source row `i`; slot `n` (the number of source rows) from after
/// the last one to the chunk's end. A slot differs when its source row is missing on the target
/// or holds other content, or when the target holds a row there that the source does not.
/// Returns the runs of adjacent differing slots, or `None` when a row has no key or the two
/// sides do not list their common keys in the same order (the caller copies the chunk whole).
fn differing_slots(
    source: &[RowDigest],
    target: &[RowDigest],
) -> Option<Vec<RangeInclusive<usize>>> {
    let key = |r: &RowDigest| r.cursor.as_ref().map(|c| c.0.to_string());
    let mut source_at = HashMap::with_capacity(source.len());
    for (i, r) in source.iter().enumerate() {
        source_at.insert(key(r)?, i);
    }
    let mut target_digest = HashMap::with_capacity(target.len());
    for r in target {
        target_digest.insert(key(r)?, r.digest);
    }
    let n = source.len();
    let mut differs = vec![false; n + 1];
    for (i, r) in source.iter().enumerate() {
        let k = key(r)?;
        if target_digest.get(&k) != Some(&r.digest) {
            differs[i] = true;
        }
    }
    // A row only the target holds lies between the source rows matched before and after it.
    let mut matched_before: Option<usize> = None;
    let mut extra_since_match = false;
    for r in target {
        match source_at.get(&key(r)?) {
            Some(&i) => {
                if matched_before.is_some_and(|p| p >= i) {
                    return None;
                }
                if extra_since_match {
                    let from = matched_before.map_or(0, |p| p + 1);
                    differs[from..=i].iter_mut().for_each(|d| *d = true);
                    extra_since_match = false;
                }
                matched_before = Some(i);
            }
            None => extra_since_match = true,
        }
    }
    if extra_since_match {
        let from = matched_before.map_or(0, |p| p + 1);
        differs[from..=n].iter_mut().for_each(|d| *d = true);
    }
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &d) in differs.iter().enumerate() {
        match (d, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push(s..=i - 1);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(s..=n);
    }
    Some(runs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, content: u8) -> RowDigest {
        RowDigest {
            key: format!("id={id}"),
            digest: [content; 16],
            cursor: Some(Cursor(serde_json::json!([id]))),
        }
    }

    fn rows(list: &[(u64, u8)]) -> Vec<RowDigest> {
        list.iter().map(|&(id, c)| row(id, c)).collect()
    }

    #[test]
    fn equal_rows_have_no_differing_slot() {
        let both = rows(&[(1, 1), (2, 2), (3, 3)]);
        assert_eq!(differing_slots(&both, &both), Some(vec![]));
    }

    #[test]
    fn a_changed_row_is_its_own_slot_and_adjacent_changes_merge() {
        let source = rows(&[(1, 1), (2, 9), (3, 9), (4, 4), (5, 9)]);
        let target = rows(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        assert_eq!(differing_slots(&source, &target), Some(vec![1..=2, 4..=4]));
    }

    #[test]
    fn a_row_missing_on_the_target_or_only_on_the_target_marks_where_it_lies() {
        // 2 is missing on the target: slot 1. 4 exists only on the target, between 3 and 5:
        // slot 3 (after 3, up to 5) must be cleared, which copies 5 again too.
        let source = rows(&[(1, 1), (2, 2), (3, 3), (5, 5)]);
        let target = rows(&[(1, 1), (3, 3), (4, 4), (5, 5)]);
        assert_eq!(differing_slots(&source, &target), Some(vec![1..=1, 3..=3]));
    }

    #[test]
    fn rows_only_the_target_holds_at_either_end_reach_the_chunk_bounds() {
        let source = rows(&[(2, 2), (3, 3)]);
        let target = rows(&[(1, 1), (2, 2), (3, 3), (4, 4)]);
        assert_eq!(differing_slots(&source, &target), Some(vec![0..=0, 2..=2]));
        assert_eq!(differing_slots(&[], &target), Some(vec![0..=0]));
        assert_eq!(differing_slots(&source, &[]), Some(vec![0..=1]));
    }

    #[test]
    fn keyless_rows_or_a_different_order_give_up_on_row_level() {
        let mut keyless = rows(&[(1, 1)]);
        keyless[0].cursor = None;
        assert_eq!(differing_slots(&keyless, &rows(&[(1, 2)])), None);
        let source = rows(&[(1, 1), (2, 2)]);
        let target = rows(&[(2, 2), (1, 1)]);
        assert_eq!(differing_slots(&source, &target), None);
    }
}
