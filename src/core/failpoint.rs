//! Crash points for the resume tests: when `OFFLOAD_FAILPOINT` names a point, the process kills
//! itself with SIGKILL there, exactly as `kill -9` would (or sends itself SIGINT, as Ctrl-C would,
//! or holds there until the test lets it go), so tests can stop a copy at a known place without
//! timing games. Unset (always, outside tests) it costs one environment lookup per process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var("OFFLOAD_FAILPOINT").ok())
        .as_deref()
}

fn die(point: &str) {
    tracing::warn!(
        point,
        "OFFLOAD_FAILPOINT reached: killing this process with SIGKILL"
    );
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// A named point (`after-prepare`, `before-finish`, `before-prepare`): `NAME` dies there, and
/// `hold:NAME` holds there as `hold-after-batch:N` does.
pub fn reached(point: &str) {
    match configured() {
        Some(p) if p == point => die(point),
        Some(p) if p.strip_prefix("hold:") == Some(point) => hold(p),
        _ => {}
    }
}

/// Counts recorded batches; `after-batch:N` dies once the N-th batch of this process is recorded,
/// and `after-partial-batch:N` once the N-th batch that leaves its unit part-way is (so a test
/// can stop inside a unit whatever order the units run in). `mid_unit`: the unit goes on after
/// this batch.
pub fn batch_recorded(mid_unit: bool) {
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    static PARTIAL: AtomicU64 = AtomicU64::new(0);
    let Some(spec) = configured() else {
        return;
    };
    let n = BATCHES.fetch_add(1, Ordering::SeqCst) + 1;
    let limit = |prefix: &str| {
        spec.strip_prefix(prefix)
            .and_then(|v| v.parse::<u64>().ok())
    };
    if limit("after-batch:").is_some_and(|l| n >= l) {
        die(spec);
    }
    if mid_unit {
        let partial = PARTIAL.fetch_add(1, Ordering::SeqCst) + 1;
        if limit("after-partial-batch:").is_some_and(|l| partial >= l) {
            die(spec);
        }
    }
    // `hold-after-batch:N`: a job that is running, at a known place, for as long as a test needs.
    if limit("hold-after-batch:") == Some(n) {
        hold(spec);
    }
    // `sigint-after-batch:N`: Ctrl-C, once, as a terminal would send it.
    if limit("sigint-after-batch:") == Some(n) {
        tracing::warn!(
            point = spec,
            "OFFLOAD_FAILPOINT reached: sending SIGINT to this process"
        );
        // SAFETY: raise(3) with a valid signal number has no memory effects.
        unsafe {
            libc::raise(libc::SIGINT);
        }
    }
}

/// Say so on stderr, then wait for a line (or the end of input) on standard input: the test
/// signals, kills or inspects the process meanwhile, and lets it go on by writing that line. Only
/// this worker waits (the runtime's other threads go on: signals are still handled).
fn hold(point: &str) {
    tracing::warn!(
        point,
        pid = std::process::id(),
        "OFFLOAD_FAILPOINT reached: holding here until a line arrives on standard input"
    );
    let wait = || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(wait);
    } else {
        wait();
    }
    tracing::warn!(point, "OFFLOAD_FAILPOINT released: going on");
}

/// Whether `OFFLOAD_FAILPOINT` names `point`, for faults a store simulates itself instead of
/// dying (`redis-snapshot-break`: the snapshot stream breaks off after its first chunk).
pub fn active(point: &str) -> bool {
    configured() == Some(point)
}

/// Counts events a store names (`after-part` for each uploaded part of a multipart object);
/// `NAME:N` dies once the N-th such event of this process happened.
pub fn counted(name: &str) {
    static EVENTS: AtomicU64 = AtomicU64::new(0);
    let Some(spec) = configured() else {
        return;
    };
    let Some(limit) = spec
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if EVENTS.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
        die(spec);
    }
}
