//! The `Reporter` trait: how the engine tells the outside world what it is doing, so that
//! progress bars, JSON lines or silence are the CLI's choice and never the library's.

use std::collections::BTreeMap;

use super::catalog::{UnitRecord, UnitState};
use super::follow::FollowCheckpoint;
use super::store::{StoreKind, Unit};

/// The phases of a job, in order, as progress reports them and the catalog records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Plan,
    /// Writers held off on a source (recorded per store until released).
    Freeze,
    Prepare,
    Copy,
    Finish,
    /// Keeping the target in step with the source's change stream after the copy.
    Follow,
    /// The final pass: copy again only what changed.
    Delta,
    Verify,
    Reindex,
    Cutover,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Plan,
        Phase::Freeze,
        Phase::Prepare,
        Phase::Copy,
        Phase::Finish,
        Phase::Follow,
        Phase::Delta,
        Phase::Verify,
        Phase::Reindex,
        Phase::Cutover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Freeze => "freeze",
            Phase::Prepare => "prepare",
            Phase::Copy => "copy",
            Phase::Finish => "finish",
            Phase::Follow => "follow",
            Phase::Delta => "delta",
            Phase::Verify => "verify",
            Phase::Reindex => "reindex",
            Phase::Cutover => "cutover",
        }
    }

    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// How a unit ended in a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitOutcome {
    Done,
    Skipped(String),
    Failed(String),
    Differs(String),
}

/// One store's share of a phase, as known when the phase starts: its units, rows and bytes, and how
/// much of each a previous run already did. Units a `--if-exists skip` left alone are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    pub units: u64,
    pub units_done: u64,
    pub rows: u64,
    pub rows_done: u64,
    pub bytes: u64,
    pub bytes_done: u64,
}

impl StoreTotals {
    /// The totals of a copy from one store's catalog records, counted as the runner counts them.
    pub fn of_records(records: &[UnitRecord]) -> StoreTotals {
        let mut t = StoreTotals::default();
        for rec in records {
            let (rows, bytes) = (
                rec.unit.est_rows.max(rec.rows_done),
                rec.unit.est_bytes.max(rec.bytes_done),
            );
            match rec.state {
                UnitState::Skipped => continue,
                UnitState::Copied => {
                    t.units_done += 1;
                    t.rows_done += rows;
                    t.bytes_done += bytes;
                }
                _ => {
                    t.rows_done += rec.rows_done;
                    t.bytes_done += rec.bytes_done;
                }
            }
            t.units += 1;
            t.rows += rows;
            t.bytes += bytes;
        }
        t
    }

    /// The totals of a pass over `units` (a verification), per store, from the units' estimates.
    pub fn of_units(units: &[Unit]) -> BTreeMap<StoreKind, StoreTotals> {
        let mut by_store: BTreeMap<StoreKind, StoreTotals> = BTreeMap::new();
        for u in units {
            let t = by_store.entry(u.store).or_default();
            t.units += 1;
            t.rows += u.est_rows;
            t.bytes += u.est_bytes;
        }
        by_store
    }
}

/// Receives progress events. Every method has an empty default so reporters implement what they show.
pub trait Reporter: Send + Sync {
    /// A phase starts; `total_units`/`total_bytes`/`total_rows` size the work ahead, `done_*` what a
    /// previous run already did.
    fn on_phase_start(
        &self,
        _phase: Phase,
        _total_units: u64,
        _total_rows: u64,
        _total_bytes: u64,
    ) {
    }
    /// One store's share of the phase just started: called once per store of the phase, right
    /// after `on_phase_start`.
    fn on_store_totals(&self, _phase: Phase, _store: StoreKind, _totals: &StoreTotals) {}
    /// Work already done before this run (resume), counted toward the overall bar.
    fn on_resumed(&self, _rows: u64, _bytes: u64) {}
    fn on_phase_done(&self, _phase: Phase) {}
    fn on_unit_start(&self, _phase: Phase, _unit: &Unit) {}
    /// A batch of `rows`/`bytes` finished in `unit`.
    fn on_batch(&self, _phase: Phase, _unit: &Unit, _rows: u64, _bytes: u64) {}
    fn on_unit_done(&self, _phase: Phase, _unit: &Unit, _outcome: &UnitOutcome) {}
    /// A retryable failure; the runner waits and tries again.
    fn on_retry(&self, _unit: &Unit, _attempt: u32, _error: &str) {}
    /// A one-line message for the operator (not an error).
    fn on_note(&self, _message: &str) {}
    /// A store's follower applied changes (or reports its lag while idle).
    fn on_follow(&self, _store: StoreKind, _checkpoint: &FollowCheckpoint) {}
}

/// A reporter that shows nothing.
pub struct SilentReporter;

impl Reporter for SilentReporter {}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(store: StoreKind, name: &str, rows: u64, bytes: u64) -> Unit {
        Unit {
            store,
            name: name.into(),
            container: "db".into(),
            object: name.into(),
            range: Default::default(),
            est_rows: rows,
            est_bytes: bytes,
            spec: serde_json::Value::Null,
            size_known: true,
        }
    }

    fn record(unit: Unit, state: UnitState, rows_done: u64, bytes_done: u64) -> UnitRecord {
        UnitRecord {
            unit,
            state,
            cursor: None,
            rows_done,
            bytes_done,
            attempts: 0,
            last_error: None,
            verify_state: None,
            verify_detail: None,
            updated_at: None,
        }
    }

    #[test]
    fn store_totals_of_records_count_resumed_work_and_leave_skipped_units_out() {
        let m = StoreKind::Mysql;
        let records = [
            // Copied before: all of it done, the larger of estimate and count.
            record(unit(m, "a", 100, 1000), UnitState::Copied, 120, 900),
            // Part-way: what it did so far.
            record(unit(m, "b", 50, 500), UnitState::Copying, 20, 200),
            record(unit(m, "c", 10, 100), UnitState::Pending, 0, 0),
            // Left alone by --if-exists skip: not work of this run.
            record(unit(m, "d", 7, 70), UnitState::Skipped, 0, 0),
        ];
        assert_eq!(
            StoreTotals::of_records(&records),
            StoreTotals {
                units: 3,
                units_done: 1,
                rows: 180,
                rows_done: 140,
                bytes: 1600,
                bytes_done: 1200,
            }
        );
    }

    #[test]
    fn store_totals_of_units_sum_each_store_apart() {
        let units = [
            unit(StoreKind::Redis, "0", 10, 100),
            unit(StoreKind::Mysql, "a", 1, 2),
            unit(StoreKind::Redis, "1", 5, 50),
        ];
        let totals = StoreTotals::of_units(&units);
        assert_eq!(totals.len(), 2);
        assert_eq!(totals[&StoreKind::Redis].units, 2);
        assert_eq!(totals[&StoreKind::Redis].rows, 15);
        assert_eq!(totals[&StoreKind::Redis].bytes, 150);
        assert_eq!(totals[&StoreKind::Mysql].rows, 1);
    }
}
