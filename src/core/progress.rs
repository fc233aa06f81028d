//! The `Reporter` trait: how the engine tells the outside world what it is doing, so that
//! progress bars, JSON lines or silence are the CLI's choice and never the library's.

use super::store::Unit;

/// The phases of a job, in order, as progress reports them and the catalog records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Plan,
    /// Writers held off on a source (recorded per store until released).
    Freeze,
    Prepare,
    Copy,
    Finish,
    /// The final pass: copy again only what changed.
    Delta,
    Verify,
    Reindex,
    Cutover,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Plan,
        Phase::Freeze,
        Phase::Prepare,
        Phase::Copy,
        Phase::Finish,
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
}

/// A reporter that shows nothing.
pub struct SilentReporter;

impl Reporter for SilentReporter {}
