//! The copy loop: runs every unit of every store through prepare, batches and finish, with a
//! global concurrency budget, retries with backoff on retryable errors, a checkpoint after every
//! batch, and cancellation that stops at a batch boundary with the cursor saved. A batch is
//! recorded only while its target is still the server life it was written into (see
//! [`super::epoch`]); a target that restarted and lost writes has its store's units copied again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, UnitRecord, UnitState};
use super::epoch::{compare, EpochCheck, TargetEpoch};
use super::error::{CoreError, ErrorKind, StoreError};
use super::progress::{Phase, Reporter, StoreTotals, UnitOutcome};
use super::store::{IfExists, Store, StoreKind, Unit};

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Units worked on at once, across all stores.
    pub parallel: usize,
    /// Attempts after the first for a retryable error.
    pub retries: u32,
    pub if_exists: IfExists,
    /// Longest one attempt at preparing a unit or copying one batch may take before it counts
    /// as stalled (a connection that stopped answering): it is dropped and retried. `None`: no
    /// limit.
    pub stall_timeout: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallel: 4,
            retries: 5,
            if_exists: IfExists::Refuse,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
        }
    }
}

/// The default of [`RunOptions::stall_timeout`] (`--stall-timeout`): a batch is a few MiB, so
/// ten minutes without it completing means a connection stopped answering, not a slow one.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The first wait before a retry; each further one doubles, up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// The longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// The wait before retry number `attempt` (1 for the first): exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with "equal jitter": half of it fixed, the other
/// half random, so the workers that one dropped connection failed together do not all come back
/// at the same instant.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(jitter_fraction())
}

/// A number in [0, 1), different on every call; not for cryptography, only to spread retries.
fn jitter_fraction() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let hash = RandomState::new().hash_one((CALLS.fetch_add(1, Ordering::Relaxed), nanos));
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// `op` bounded by `limit`: past it, the attempt is dropped (and its connection with it) and
/// counts as a transient error of `store`, which [`with_retries`] tries again.
/// `hosts` names both ends, as `source -> target`: which one stalled is not known here.
pub async fn bounded<T>(
    limit: Option<Duration>,
    (store, hosts): (StoreKind, impl FnOnce() -> String),
    what: &str,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let Some(limit) = limit else {
        return op.await;
    };
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result,
        Err(_) => {
            Err(StoreError::new(
                store,
                hosts(),
                ErrorKind::Transient,
                format!(
                    "{what} did not complete within {} s: a connection to the source or the target stopped answering",
                    limit.as_secs_f64()
                ),
                "offload drops it and retries; if it keeps stalling, check the network and both servers' load, or give slow batches more time with --stall-timeout",
            ))
        }
    }
}

/// What a copy run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopySummary {
    pub units_total: usize,
    pub units_copied_now: usize,
    pub units_already_done: usize,
    pub units_skipped: usize,
    pub rows: u64,
    pub bytes: u64,
    pub notes: Vec<String>,
}

/// Runs jobs against a catalog.
pub struct Runner {
    pub catalog: Arc<Catalog>,
    pub reporter: Arc<dyn Reporter>,
    pub cancel: CancellationToken,
    pub options: RunOptions,
}

/// Run `op` again on retryable errors with exponential backoff and jitter ([`backoff`]), until
/// `retries` (the operator's `--retries`) is spent or the job is cancelled. Each retry is logged
/// with its cause and passed to `on_retry` (the reporter).
pub async fn with_retries<T, F, Fut>(
    retries: u32,
    cancel: &CancellationToken,
    mut on_retry: impl FnMut(u32, &StoreError),
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < retries && !cancel.is_cancelled() => {
                attempt += 1;
                on_retry(attempt, &e);
                let wait = backoff(attempt);
                tracing::warn!(store = %e.store, host = %e.host, attempt, of = retries, wait_ms = wait.as_millis() as u64, error = %e, "retrying after a retryable error");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// After a pass that wrote outside the runner (the delta pass): whether each store's target is
/// still the life the catalog recorded, or kept its writes when it restarted. A target that
/// restarted and may have lost them has its units marked to copy again, said in the job's
/// events, and the pass ends with an error that says to resume.
pub async fn check_targets_kept(
    stores: &[Arc<dyn Store>],
    catalog: &Catalog,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<(), CoreError> {
    for store in stores {
        let kind = store.kind();
        let read = || store.target_epoch();
        let Some(now) = with_retries(retries, cancel, |_, _| {}, read).await? else {
            continue;
        };
        let check = match catalog.target_epoch(kind)? {
            Some(written) => (compare(&written, &now), written),
            None => (EpochCheck::Same, now.clone()),
        };
        if let (EpochCheck::RestartedLost, written) = check {
            let units = catalog.redo_store(kind)?;
            catalog.record_target_epoch(kind, &now)?;
            let message = format!(
                "{kind}: the target restarted ({} -> {}) and may have lost what was written into it ({}); its {} written unit(s) are marked to copy again",
                written.describe(),
                now.describe(),
                written.durability,
                units.len()
            );
            tracing::warn!(store = %kind, units = units.len(), "{message}");
            catalog.event("warn", Some(kind), None, &message)?;
            return Err(CoreError::TargetRestarted {
                store: kind,
                times: 1,
                durability: written.durability,
            });
        }
        catalog.record_target_epoch(kind, &now)?;
    }
    Ok(())
}

/// The refusal of a target that already holds data for `occupied` units, before anything is
/// written (`--if-exists refuse`).
pub fn occupied_refusal(kind: StoreKind, host: String, occupied: &[String]) -> StoreError {
    let shown: Vec<&str> = occupied.iter().take(5).map(|s| s.as_str()).collect();
    StoreError::new(
        kind,
        host,
        ErrorKind::TargetNotEmpty,
        format!(
            "the target already holds data for {} unit(s): {}{}",
            occupied.len(),
            shown.join(", "),
            if occupied.len() > 5 { ", ..." } else { "" }
        ),
        "nothing was written. Empty the target, or choose --if-exists skip (keep what is there) or --if-exists replace (drop and copy again)",
    )
}

enum UnitEnd {
    Copied {
        rows: u64,
        bytes: u64,
    },
    Interrupted,
    Failed(String),
    /// Its target restarted and may have lost what the unit wrote: not recorded, copied again.
    TargetRestarted,
}

/// Rounds of copying again after the target lost writes, within one run, before it stops.
const REDOS_PER_RUN: u32 = 3;

/// One store's target during a run: the server life its writes go into, and whether a restart
/// that may have lost them was seen.
struct EpochWatch {
    written: Mutex<TargetEpoch>,
    lost: AtomicBool,
}

impl EpochWatch {
    fn new(epoch: TargetEpoch) -> EpochWatch {
        EpochWatch {
            written: Mutex::new(epoch),
            lost: AtomicBool::new(false),
        }
    }

    fn written(&self) -> TargetEpoch {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Writes go into `epoch` from now on, nothing lost so far.
    fn start_over(&self, epoch: TargetEpoch) {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
        self.lost.store(false, Ordering::SeqCst);
    }

    /// Read the target's epoch now: whether everything written so far is still there as far as
    /// a restart goes. A restart that kept its writes is logged and the watch moves on to the
    /// new life; one that may have lost them marks the watch lost.
    async fn holds(
        &self,
        store: &dyn Store,
        retries: u32,
        cancel: &CancellationToken,
    ) -> Result<bool, StoreError> {
        if self.lost() {
            return Ok(false);
        }
        let Some(now) = with_retries(retries, cancel, |_, _| {}, || store.target_epoch()).await?
        else {
            return Ok(true);
        };
        let written = self.written();
        match compare(&written, &now) {
            EpochCheck::Same => Ok(true),
            EpochCheck::RestartedKept => {
                tracing::warn!(store = %store.kind(), was = %written.describe(), now = %now.describe(), durability = %written.durability, "the target restarted; it keeps what it acknowledged, so the copy goes on");
                self.start_over(now);
                Ok(true)
            }
            EpochCheck::RestartedLost => {
                tracing::warn!(store = %store.kind(), was = %written.describe(), now = %now.describe(), durability = %written.durability, "the target restarted and may have lost what was written into it; its units will be copied again");
                self.lost.store(true, Ordering::SeqCst);
                Ok(false)
            }
        }
    }
}

/// After a store's copy round (or a delta pass that copied some of it again): where its change
/// stream must be read from to apply what the job's reads may have missed, combined with what
/// earlier runs recorded (the follower's checkpoint, when it has followed, since it is the
/// latest). A follower's checkpoint is moved to the new point too: units copied again hold
/// what the source held when they were read, and applying the stream to them from an older
/// point would apply some changes twice. When the store cannot say, the recorded point is
/// forgotten (a follower then starts from a fresh snapshot, or the final pass uses the delta),
/// never kept stale.
pub(crate) async fn record_stream_start(
    catalog: &Catalog,
    kind: StoreKind,
    store: &dyn Store,
) -> Result<(), CoreError> {
    let followed = catalog.follow_checkpoint(kind)?;
    let earlier = match &followed {
        Some(checkpoint) => Some(checkpoint.position.clone()),
        None => catalog.stream_start(kind)?,
    };
    let position = match store.stream_start(earlier.as_ref()).await {
        Ok(position) => position,
        Err(e) => {
            let message = format!(
                "{kind}: where to follow the source's changes from could not be read ({e}); following starts from a fresh snapshot or the final pass uses the delta"
            );
            tracing::warn!(store = %kind, "{message}");
            catalog.event("warn", Some(kind), None, &message)?;
            None
        }
    };
    catalog.record_stream_start(kind, position.as_ref())?;
    catalog.move_follow_checkpoint(kind, position.as_ref())
}

/// The watches of a run, one per store whose target tells its epoch.
type Watches = BTreeMap<StoreKind, Arc<EpochWatch>>;

/// The work of a copy run, and what is already done, as the catalog holds it.
struct Work {
    /// Every unit not yet copied, largest first.
    units: Vec<UnitRecord>,
    total_rows: u64,
    total_bytes: u64,
    done_rows: u64,
    done_bytes: u64,
}

/// How the units of a copy run ended, beyond those copied.
#[derive(Default)]
struct UnitEnds {
    failures: Vec<String>,
    interrupted: bool,
    first_core_error: Option<CoreError>,
}

/// Units run at once, each in a task of its own: the unit, and how its copy ended.
type UnitTasks = JoinSet<(Unit, Result<UnitEnd, CoreError>)>;

impl Runner {
    async fn record_stream_start(
        &self,
        kind: StoreKind,
        store: &Arc<dyn Store>,
    ) -> Result<(), CoreError> {
        record_stream_start(&self.catalog, kind, &**store).await
    }

    /// Copy every unit recorded in the catalog for these stores. Units already copied are skipped,
    /// unless their target restarted since and may have lost them: those are copied again.
    pub async fn copy(&self, stores: &[Arc<dyn Store>]) -> Result<CopySummary, CoreError> {
        let mut summary = CopySummary::default();
        let mut by_kind: BTreeMap<StoreKind, Arc<dyn Store>> = BTreeMap::new();
        for s in stores {
            by_kind.insert(s.kind(), s.clone());
        }

        let watches = self.watch_targets(&by_kind, &mut summary).await?;
        let occupied_by_store = self.check_targets(&by_kind).await?;
        self.prepare_targets(&by_kind, occupied_by_store).await?;

        super::failpoint::reached("after-prepare");

        // Units copied by earlier runs (and not copied again in this one), by store.
        let mut done_before: BTreeSet<(StoreKind, String)> = BTreeSet::new();
        let mut redos = 0u32;
        loop {
            let mut counts = CopySummary::default();
            let work = self.work_to_do(&by_kind, &mut counts)?;
            if redos == 0 {
                done_before = self
                    .catalog
                    .units(None)?
                    .into_iter()
                    .filter(|r| r.state == UnitState::Copied && by_kind.contains_key(&r.unit.store))
                    .map(|r| (r.unit.store, r.unit.name))
                    .collect();
            }
            summary.units_total = counts.units_total;
            summary.units_skipped = counts.units_skipped;
            self.reporter.on_phase_start(
                Phase::Copy,
                counts.units_total as u64,
                work.total_rows,
                work.total_bytes,
            );
            if work.done_rows > 0 || work.done_bytes > 0 {
                self.reporter.on_resumed(work.done_rows, work.done_bytes);
            }
            for kind in by_kind.keys() {
                let totals = StoreTotals::of_records(&self.catalog.units(Some(*kind))?);
                self.reporter.on_store_totals(Phase::Copy, *kind, &totals);
            }
            let kinds_with_work = self
                .begin_copies(&by_kind, &work.units, &mut summary)
                .await?;
            let tasks = self.spawn_units(&by_kind, &watches, work.units);
            let ends = self.collect_unit_ends(tasks, &mut summary).await;
            for kind in &kinds_with_work {
                by_kind[kind].end_copy().await;
                self.record_stream_start(*kind, &by_kind[kind]).await?;
            }
            let lost = self.targets_lost(&by_kind, &watches).await;
            let lost = match lost {
                Ok(lost) => lost,
                Err(e) => {
                    self.stop_unless_all_copied(ends)?;
                    return Err(e);
                }
            };
            if lost.is_empty() {
                self.stop_unless_all_copied(ends)?;
                break;
            }
            for (kind, written, now) in &lost {
                self.redo(*kind, written, now, &mut summary)?;
                watches[kind].start_over(now.clone());
                done_before.retain(|(k, _)| k != kind);
            }
            self.stop_unless_all_copied(ends)?;
            redos += 1;
            if redos > REDOS_PER_RUN {
                let (kind, written, _) = &lost[0];
                return Err(CoreError::TargetRestarted {
                    store: *kind,
                    times: redos,
                    durability: written.durability.clone(),
                });
            }
        }
        summary.units_already_done = done_before.len();
        summary.units_copied_now = summary
            .units_total
            .saturating_sub(summary.units_skipped + summary.units_already_done);
        self.reporter.on_phase_done(Phase::Copy);

        super::failpoint::reached("before-finish");

        self.finish_targets(&by_kind, &mut summary).await?;
        // A restart while the stores finished: the run cannot end as copied.
        if let Some((kind, written, now)) = self.targets_lost(&by_kind, &watches).await?.first() {
            self.redo(*kind, written, now, &mut summary)?;
            return Err(CoreError::TargetRestarted {
                store: *kind,
                times: redos + 1,
                durability: written.durability.clone(),
            });
        }
        Ok(summary)
    }

    /// Before a run writes: read each store's target epoch, compare it with the one the job's
    /// writes went into (from the catalog), mark for copying again the units of a target that
    /// restarted and may have lost them, and record the epoch writes go into now.
    async fn watch_targets(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        summary: &mut CopySummary,
    ) -> Result<Watches, CoreError> {
        let mut watches = Watches::new();
        for (kind, store) in by_kind {
            let read = || store.target_epoch();
            let Some(now) =
                with_retries(self.options.retries, &self.cancel, |_, _| {}, read).await?
            else {
                continue;
            };
            if let Some(written) = self.catalog.target_epoch(*kind)? {
                match compare(&written, &now) {
                    EpochCheck::Same => {}
                    EpochCheck::RestartedKept => {
                        tracing::info!(store = %kind, was = %written.describe(), now = %now.describe(), durability = %written.durability, "the target restarted since the last run; it keeps what it acknowledged");
                    }
                    EpochCheck::RestartedLost => self.redo(*kind, &written, &now, summary)?,
                }
            }
            self.catalog.record_target_epoch(*kind, &now)?;
            watches.insert(*kind, Arc::new(EpochWatch::new(now)));
        }
        Ok(watches)
    }

    /// After the units of a round ended: the stores whose target restarted and may have lost
    /// what was written, with the epoch written into and the one now. Targets that restarted
    /// and kept their writes have their new epoch recorded.
    async fn targets_lost(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        watches: &Watches,
    ) -> Result<Vec<(StoreKind, TargetEpoch, TargetEpoch)>, CoreError> {
        let mut lost = Vec::new();
        for (kind, watch) in watches {
            let written = watch.written();
            let store = by_kind[kind].clone();
            if !watch
                .holds(&*store, self.options.retries, &self.cancel)
                .await?
            {
                let read = || store.target_epoch();
                let now = with_retries(self.options.retries, &self.cancel, |_, _| {}, read)
                    .await?
                    .unwrap_or_else(|| written.clone());
                lost.push((*kind, written, now));
            } else if watch.written() != written {
                self.catalog.record_target_epoch(*kind, &watch.written())?;
            }
        }
        Ok(lost)
    }

    /// A store's target restarted from `written` to `now` and may have lost what was written:
    /// its units start over in the catalog, said in the job's events, the log and the notes.
    fn redo(
        &self,
        kind: StoreKind,
        written: &TargetEpoch,
        now: &TargetEpoch,
        summary: &mut CopySummary,
    ) -> Result<(), CoreError> {
        let units = self.catalog.redo_store(kind)?;
        self.catalog.record_target_epoch(kind, now)?;
        let message = format!(
            "{kind}: the target restarted ({} -> {}) and may have lost what was written into it ({}); copying its {} written unit(s) again",
            written.describe(),
            now.describe(),
            written.durability,
            units.len()
        );
        tracing::warn!(store = %kind, units = units.len(), "{message}");
        self.catalog.event("warn", Some(kind), None, &message)?;
        self.reporter.on_note(&message);
        summary.notes.push(message);
        Ok(())
    }

    /// Check every store's target before writing to any of them: nothing half-written. Gives,
    /// for each store still to prepare, its units and the names of those whose target is occupied.
    async fn check_targets(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
    ) -> Result<BTreeMap<StoreKind, (Vec<Unit>, Vec<String>)>, CoreError> {
        let mut occupied_by_store = BTreeMap::new();
        for (kind, store) in by_kind {
            if self.catalog.is_phase_done(kind, Phase::Prepare)? {
                continue;
            }
            let units: Vec<Unit> = self
                .catalog
                .units(Some(*kind))?
                .into_iter()
                .map(|r| r.unit)
                .collect();
            let occupied = store.occupied(&units).await?;
            if !occupied.is_empty() && self.options.if_exists == IfExists::Refuse {
                return Err(
                    occupied_refusal(*kind, store.identity().target.address, &occupied).into(),
                );
            }
            occupied_by_store.insert(*kind, (units, occupied));
        }
        Ok(occupied_by_store)
    }

    /// Prepare the targets of the stores [`Runner::check_targets`] found still to prepare, as
    /// `--if-exists` says for their occupied units.
    async fn prepare_targets(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        occupied_by_store: BTreeMap<StoreKind, (Vec<Unit>, Vec<String>)>,
    ) -> Result<(), CoreError> {
        for (kind, (units, occupied)) in occupied_by_store {
            super::failpoint::reached("before-prepare");
            let store = &by_kind[&kind];
            self.reporter
                .on_phase_start(Phase::Prepare, units.len() as u64, 0, 0);
            self.catalog.phase_start(kind, Phase::Prepare)?;
            if self.options.if_exists == IfExists::Skip {
                for u in units.iter().filter(|u| occupied.contains(&u.name)) {
                    self.catalog.set_state(u, UnitState::Skipped, None)?;
                    tracing::info!(store = %kind, unit = %u.name, "target holds data; skipped as --if-exists skip asks");
                }
            }
            if self.options.if_exists == IfExists::Replace && !occupied.is_empty() {
                // Recorded before anything is dropped.
                let names = occupied.join(", ");
                let message = format!("dropping what the target holds for {} unit(s) to copy them again, as --if-exists replace asks: {names}", occupied.len());
                self.catalog.event("warn", Some(kind), None, &message)?;
            }
            store
                .prepare_target(&units, self.options.if_exists, &occupied)
                .await?;
            self.catalog.phase_done(
                kind,
                Phase::Prepare,
                &format!("{} occupied", occupied.len()),
            )?;
            self.reporter.on_phase_done(Phase::Prepare);
        }
        Ok(())
    }

    /// The work: every unit not yet copied, in the order sorted below; counts the units in
    /// `summary` and sums what is to copy and what is already done.
    fn work_to_do(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        summary: &mut CopySummary,
    ) -> Result<Work, CoreError> {
        let mut work = Vec::new();
        let (mut total_rows, mut total_bytes, mut done_rows, mut done_bytes) = (0, 0, 0, 0);
        for kind in by_kind.keys() {
            for rec in self.catalog.units(Some(*kind))? {
                summary.units_total += 1;
                total_rows += rec.unit.est_rows.max(rec.rows_done);
                total_bytes += rec.unit.est_bytes.max(rec.bytes_done);
                match rec.state {
                    UnitState::Copied => {
                        summary.units_already_done += 1;
                        done_rows += rec.unit.est_rows.max(rec.rows_done);
                        done_bytes += rec.unit.est_bytes.max(rec.bytes_done);
                    }
                    UnitState::Skipped => summary.units_skipped += 1,
                    _ => {
                        done_rows += rec.rows_done;
                        done_bytes += rec.bytes_done;
                        work.push(rec);
                    }
                }
            }
        }
        // Largest first, so the big units do not trail at the end. Units their store could not
        // size in time go last: such a source scans to size a collection, and likely also to
        // answer the first query of one, so the sized units' documents keep the target busy
        // while it works on the unsized ones.
        work.sort_by_key(|r| std::cmp::Reverse((r.unit.size_known, r.unit.est_bytes)));
        Ok(Work {
            units: work,
            total_rows,
            total_bytes,
            done_rows,
            done_bytes,
        })
    }

    /// Open the copy on every store with work left (its shared snapshot, say); their notes go to
    /// the reporter and `summary`. Gives those stores, in order.
    async fn begin_copies(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        work: &[UnitRecord],
        summary: &mut CopySummary,
    ) -> Result<Vec<StoreKind>, CoreError> {
        let kinds_with_work: Vec<StoreKind> = {
            let mut k: Vec<_> = work.iter().map(|r| r.unit.store).collect();
            k.sort();
            k.dedup();
            k
        };
        for kind in &kinds_with_work {
            self.catalog.phase_start(kind, Phase::Copy)?;
            let earlier = self.catalog.units(Some(*kind))?.into_iter();
            let earlier = earlier.filter(|r| r.state == UnitState::Copied || r.cursor.is_some());
            by_kind[kind].copied_by_earlier_runs(earlier.count());
            let note = by_kind[kind].begin_copy(self.options.parallel).await?;
            // Said once, also when a round copies again what a restarted target lost.
            if !note.is_empty() && !summary.notes.contains(&note) {
                self.reporter.on_note(&note);
                summary.notes.push(note);
            }
        }
        Ok(kinds_with_work)
    }

    /// Start a task per unit; at most `parallel` of them copy at once, in the order given.
    fn spawn_units(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        watches: &Watches,
        work: Vec<UnitRecord>,
    ) -> UnitTasks {
        let permits = Arc::new(Semaphore::new(self.options.parallel.max(1)));
        let mut tasks = JoinSet::new();
        for rec in work {
            let store = by_kind[&rec.unit.store].clone();
            let catalog = self.catalog.clone();
            let reporter = self.reporter.clone();
            let cancel = self.cancel.clone();
            let permits = permits.clone();
            let retries = self.options.retries;
            let stall = self.options.stall_timeout;
            let watch = watches.get(&rec.unit.store).cloned();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                let unit = rec.unit.clone();
                if cancel.is_cancelled() {
                    return (unit, Ok(UnitEnd::Interrupted));
                }
                let run = UnitRun {
                    store: &*store,
                    catalog: &catalog,
                    reporter: &*reporter,
                    cancel: &cancel,
                    retries,
                    stall,
                    watch: watch.as_deref(),
                };
                let end = copy_unit(run, rec).await;
                (unit, end)
            });
        }
        tasks
    }

    /// Wait for every unit's task; copied units are counted in `summary` and reported as they end.
    async fn collect_unit_ends(&self, mut tasks: UnitTasks, summary: &mut CopySummary) -> UnitEnds {
        let mut ends = UnitEnds::default();
        while let Some(joined) = tasks.join_next().await {
            let (unit, end) = match joined {
                Ok(v) => v,
                Err(e) => {
                    ends.failures.push(format!("a worker crashed: {e}"));
                    continue;
                }
            };
            match end {
                Ok(UnitEnd::Copied { rows, bytes }) => {
                    summary.units_copied_now += 1;
                    summary.rows += rows;
                    summary.bytes += bytes;
                    self.reporter
                        .on_unit_done(Phase::Copy, &unit, &UnitOutcome::Done);
                }
                Ok(UnitEnd::Interrupted) => ends.interrupted = true,
                Ok(UnitEnd::TargetRestarted) => {
                    // Copied again after the round (the runner resets its store's units).
                    self.reporter.on_unit_done(
                        Phase::Copy,
                        &unit,
                        &UnitOutcome::Skipped("the target restarted; copying again".into()),
                    );
                }
                Ok(UnitEnd::Failed(msg)) => {
                    self.reporter.on_unit_done(
                        Phase::Copy,
                        &unit,
                        &UnitOutcome::Failed(msg.clone()),
                    );
                    ends.failures.push(msg);
                }
                Err(e) => {
                    // The catalog itself failed: stop everything, the checkpoint cannot be trusted.
                    self.cancel.cancel();
                    ends.first_core_error.get_or_insert(e);
                }
            }
        }
        ends
    }

    /// The run stops here, before any store is finished, unless every unit was copied.
    fn stop_unless_all_copied(&self, ends: UnitEnds) -> Result<(), CoreError> {
        if let Some(e) = ends.first_core_error {
            return Err(e);
        }
        if ends.interrupted || self.cancel.is_cancelled() {
            return Err(CoreError::Interrupted);
        }
        if !ends.failures.is_empty() {
            return Err(CoreError::UnitsFailed {
                count: ends.failures.len(),
                first: ends.failures[0].clone(),
            });
        }
        Ok(())
    }

    /// Objects best created after the data, once per store and only when all of it is there.
    async fn finish_targets(
        &self,
        by_kind: &BTreeMap<StoreKind, Arc<dyn Store>>,
        summary: &mut CopySummary,
    ) -> Result<(), CoreError> {
        for (kind, store) in by_kind {
            if self.catalog.is_phase_done(kind, Phase::Finish)? {
                continue;
            }
            self.catalog.phase_done(kind, Phase::Copy, "")?;
            self.reporter.on_phase_start(Phase::Finish, 1, 0, 0);
            self.catalog.phase_start(kind, Phase::Finish)?;
            let cancel = self.cancel.clone();
            let notes = with_retries(
                self.options.retries,
                &cancel,
                |_, _| {},
                || store.finish_target(),
            )
            .await?;
            for n in &notes {
                self.catalog.event("info", Some(*kind), None, n)?;
            }
            summary.notes.extend(notes);
            self.catalog.phase_done(kind, Phase::Finish, "")?;
            self.reporter.on_phase_done(Phase::Finish);
        }
        Ok(())
    }
}

/// What one unit's copy works with.
struct UnitRun<'a> {
    store: &'a dyn Store,
    catalog: &'a Catalog,
    reporter: &'a dyn Reporter,
    cancel: &'a CancellationToken,
    retries: u32,
    /// How long one attempt at a batch or at preparing the unit may take (`--stall-timeout`).
    stall: Option<Duration>,
    /// The store's target epoch, when it tells one.
    watch: Option<&'a EpochWatch>,
}

async fn copy_unit(run: UnitRun<'_>, rec: UnitRecord) -> Result<UnitEnd, CoreError> {
    let UnitRun {
        store,
        catalog,
        reporter,
        cancel,
        retries,
        stall,
        watch,
    } = run;
    let unit = &rec.unit;
    reporter.on_unit_start(Phase::Copy, unit);
    let on_retry = |attempt: u32, e: &StoreError| reporter.on_retry(unit, attempt, &e.to_string());
    let ends = || {
        let id = store.identity();
        format!("{} -> {}", id.source.address, id.target.address)
    };
    let fail = |e: StoreError| -> Result<UnitEnd, CoreError> {
        let msg = e.to_string();
        tracing::error!(store = %unit.store, unit = %unit.name, error = %msg, "unit failed; its target part is incomplete");
        catalog.set_state(unit, UnitState::Failed, Some(&msg))?;
        catalog.event("error", Some(unit.store), Some(&unit.name), &msg)?;
        Ok(UnitEnd::Failed(msg))
    };

    if let Err(e) = with_retries(retries, cancel, on_retry, || {
        bounded(
            stall,
            (unit.store, ends),
            "preparing the unit",
            store.prepare(unit),
        )
    })
    .await
    {
        return fail(e);
    }
    catalog.set_state(unit, UnitState::Copying, None)?;
    let mut cursor = rec.cursor.clone();
    let (mut rows, mut bytes) = (0u64, 0u64);
    // Items the store skipped because they alone failed (one object of a bucket, say).
    let (mut skipped, mut first_skipped) = (0usize, None::<String>);
    loop {
        if cancel.is_cancelled() {
            return Ok(UnitEnd::Interrupted);
        }
        if watch.is_some_and(|w| w.lost()) {
            return Ok(UnitEnd::TargetRestarted);
        }
        let batch = match with_retries(retries, cancel, on_retry, || {
            bounded(
                stall,
                (unit.store, ends),
                "one batch",
                store.copy_batch(unit, cursor.as_ref()),
            )
        })
        .await
        {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        // Recorded only if what it wrote is still there: the target has not restarted since
        // the writes of this job began, or kept them when it did.
        if let Some(watch) = watch {
            match watch.holds(store, retries, cancel).await {
                Ok(true) => {}
                Ok(false) => return Ok(UnitEnd::TargetRestarted),
                Err(e) => return fail(e),
            }
        }
        catalog.record_batch(unit, batch.next.as_ref(), batch.rows, batch.bytes)?;
        for (key, why) in &batch.failed {
            let msg = format!("{key}: {why}");
            tracing::warn!(store = %unit.store, unit = %unit.name, key = %key, error = %why, "not copied; the rest of the unit goes on");
            catalog.event("error", Some(unit.store), Some(&unit.name), &msg)?;
            first_skipped.get_or_insert(msg);
        }
        skipped += batch.failed.len();
        super::failpoint::batch_recorded(batch.next.is_some());
        reporter.on_batch(Phase::Copy, unit, batch.rows, batch.bytes);
        rows += batch.rows;
        bytes += batch.bytes;
        match batch.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if let Some(first) = first_skipped {
        // The unit is not copied: start it over on the next run, which skips what is already
        // identical on the target and tries the failed items again.
        let msg = format!("{skipped} item(s) could not be copied; the first: {first}");
        tracing::error!(store = %unit.store, unit = %unit.name, failed = skipped, "unit incomplete; its target part is missing what failed");
        catalog.reset_unit(unit)?;
        catalog.set_state(unit, UnitState::Failed, Some(&msg))?;
        return Ok(UnitEnd::Failed(format!(
            "{} ({}): {msg}",
            unit.store, unit.name
        )));
    }
    catalog.set_state(unit, UnitState::Copied, None)?;
    tracing::debug!(store = %unit.store, unit = %unit.name, rows, bytes, "unit copied");
    Ok(UnitEnd::Copied { rows, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_its_cap_and_keeps_half_of_each_wait_fixed() {
        for attempt in 1..=40 {
            let ceiling = (BACKOFF_BASE * (1u32 << (attempt - 1).min(16))).min(BACKOFF_CAP);
            let waits: Vec<Duration> = (0..50).map(|_| backoff(attempt)).collect();
            for w in &waits {
                assert!(
                    *w >= ceiling / 2 && *w <= ceiling,
                    "attempt {attempt}: {w:?}"
                );
            }
            let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
            assert!(
                distinct.len() > 1,
                "attempt {attempt}: no jitter in {waits:?}"
            );
        }
        assert!(backoff(1) <= Duration::from_millis(250));
        assert!(backoff(u32::MAX) <= BACKOFF_CAP);
    }

    fn transient() -> StoreError {
        StoreError::new(
            StoreKind::Redis,
            "127.0.0.1:1",
            ErrorKind::Transient,
            "connection reset",
            "",
        )
    }

    #[tokio::test]
    async fn retries_stop_at_the_operators_limit_and_each_is_reported_with_its_cause() {
        let calls = AtomicU32::new(0);
        let mut seen = Vec::new();
        let result: Result<(), _> = with_retries(
            3,
            &CancellationToken::new(),
            |attempt, e| seen.push((attempt, e.detail.clone())),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(transient()) }
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "the first attempt and 3 retries"
        );
        let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
        assert_eq!(attempts, [1, 2, 3]);
        assert!(seen.iter().all(|(_, d)| d == "connection reset"));
    }

    #[tokio::test]
    async fn a_stalled_attempt_becomes_a_retryable_error_naming_both_ends() {
        let stalled = bounded(
            Some(Duration::from_millis(20)),
            (StoreKind::Mysql, || "a:1 -> b:2".to_string()),
            "one batch",
            std::future::pending::<Result<(), StoreError>>(),
        )
        .await
        .unwrap_err();
        assert!(stalled.is_retryable());
        assert_eq!(stalled.host, "a:1 -> b:2");
        assert!(stalled.to_string().contains("within 0.02 s"), "{stalled}");
        assert!(stalled.to_string().contains("--stall-timeout"), "{stalled}");

        // Attempts that stall twice and then answer: the copy goes on.
        let calls = AtomicU32::new(0);
        let value = with_retries(
            5,
            &CancellationToken::new(),
            |_, _| {},
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                bounded(
                    Some(Duration::from_millis(20)),
                    (StoreKind::Mysql, String::new),
                    "one batch",
                    async move {
                        if n < 2 {
                            std::future::pending::<()>().await;
                        }
                        Ok(n)
                    },
                )
            },
        )
        .await
        .unwrap();
        assert_eq!(value, 2);
    }
}
