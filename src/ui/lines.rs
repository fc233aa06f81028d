//! Progress as log lines, for every run whose standard error is not a terminal (a file, a pipe,
//! `kubectl logs`, `docker compose logs`) or that hides the bars: one line at each phase change
//! and one every `--progress-interval` while a phase runs, in words (`offload progress: ...`, the
//! same words as the bars and `status`) or as JSON objects (`--log-format json`, `--json`) with the
//! stable fields of [`ProgressFields`], documented in `docs/progress.md`. Only counts and names are
//! written: never an address's credentials or a secret.

use std::collections::{BTreeSet, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::numbers::{byte_rate, bytes, done_of, eta, rate};
use crate::core::catalog::{PhaseRecord, UnitRecord, UnitState};
use crate::core::progress::{Phase, Reporter, StoreTotals, UnitOutcome};
use crate::core::{StoreKind, Unit};

/// How progress lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `offload progress: copy 1.2M/3.4M rows, 420 MiB; 119k rows/s, 42.1 MiB/s; ETA 1m 05s; ...`
    Text,
    /// One JSON object per line.
    Json,
}

/// What one progress line says. The field names are stable (`docs/progress.md`): log pipelines
/// chart them, and `offload status --json` prints the same under `progress`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressFields {
    /// `phase_start`, `progress` or `phase_done` (`status` for `offload status`).
    pub event: &'static str,
    /// `copy`, `verify`, `prepare`, `finish`, `reindex`, ...
    pub phase: String,
    /// What the records are: `rows`, `documents`, `keys`, `objects`, or `records` for several
    /// stores at once.
    pub records_noun: &'static str,
    pub records_done: u64,
    /// The estimate; `None` when nothing was sized.
    pub records_total: Option<u64>,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// This run's average since the phase started (work an earlier run did is not counted).
    pub records_per_second: f64,
    pub bytes_per_second: f64,
    /// Seconds left at that rate; `None` while the rate or the total is unknown.
    pub eta_seconds: Option<u64>,
    pub units_done: u64,
    pub units_running: u64,
    pub units_left: u64,
    pub elapsed_seconds: u64,
}

impl ProgressFields {
    /// The line in words.
    pub fn text(&self) -> String {
        let total = |t: Option<u64>| t.filter(|t| *t > 0);
        let mut out = format!("offload progress: {}", self.phase);
        match self.event {
            "phase_start" => out.push_str(" started"),
            "phase_done" => out.push_str(" done"),
            _ => {}
        }
        // A phase that moves no records (preparing targets, finishing them) says only when it
        // starts and ends, and its units.
        let moves_records =
            self.records_total.is_some() || self.records_done > 0 || self.bytes_done > 0;
        if moves_records {
            out.push_str(&format!(
                ": {}, {}",
                done_of(
                    self.records_done,
                    total(self.records_total),
                    self.records_noun
                ),
                bytes(self.bytes_done)
            ));
        }
        if moves_records && self.event != "phase_start" {
            out.push_str(&format!(
                "; {}, {}",
                rate(self.records_per_second, self.records_noun),
                byte_rate(self.bytes_per_second)
            ));
        }
        match (self.event, self.eta_seconds) {
            ("phase_done", _) => out.push_str(&format!(
                "; in {}",
                eta(Duration::from_secs(self.elapsed_seconds))
            )),
            ("phase_start", _) => {}
            (_, Some(s)) => out.push_str(&format!("; ETA {}", eta(Duration::from_secs(s)))),
            (_, None) => out.push_str("; ETA -"),
        }
        out.push_str(&format!(
            "; units {} done, {} running, {} left",
            self.units_done, self.units_running, self.units_left
        ));
        out
    }

    /// The line as JSON, with the time it was written.
    pub fn json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("serializable progress");
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        value["time"] = now.into();
        value.to_string()
    }
}

/// The phase being counted.
struct State {
    phase: Option<Phase>,
    started: Instant,
    units_total: u64,
    units_done: u64,
    running: HashSet<String>,
    rows_total: u64,
    rows_done: u64,
    rows_resumed: u64,
    bytes_total: u64,
    bytes_done: u64,
    bytes_resumed: u64,
    stores: BTreeSet<StoreKind>,
    /// Whether the phase reported its units one by one (copy, verify do; prepare, finish not).
    saw_units: bool,
}

impl State {
    fn new() -> State {
        State {
            phase: None,
            started: Instant::now(),
            units_total: 0,
            units_done: 0,
            running: HashSet::new(),
            rows_total: 0,
            rows_done: 0,
            rows_resumed: 0,
            bytes_total: 0,
            bytes_done: 0,
            bytes_resumed: 0,
            stores: BTreeSet::new(),
            saw_units: false,
        }
    }

    fn noun(&self) -> &'static str {
        match self.stores.iter().collect::<Vec<_>>().as_slice() {
            [one] => one.nouns().1,
            _ => "records",
        }
    }

    fn fields(&self, event: &'static str, phase: Phase) -> ProgressFields {
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        let per_sec = |done: u64, resumed: u64| {
            if secs > 0.0 {
                done.saturating_sub(resumed) as f64 / secs
            } else {
                0.0
            }
        };
        let records_per_second = per_sec(self.rows_done, self.rows_resumed);
        let known = |t: u64| (t > 0).then_some(t);
        let remaining = self.rows_total.saturating_sub(self.rows_done);
        let eta_seconds = (self.rows_total > 0 && remaining > 0 && records_per_second > 0.0)
            .then(|| (remaining as f64 / records_per_second).min(1e9) as u64);
        let running = self.running.len() as u64;
        ProgressFields {
            event,
            phase: phase.as_str().to_string(),
            records_noun: self.noun(),
            records_done: self.rows_done,
            records_total: known(self.rows_total.max(self.rows_done)),
            bytes_done: self.bytes_done,
            bytes_total: known(self.bytes_total),
            records_per_second,
            bytes_per_second: per_sec(self.bytes_done, self.bytes_resumed),
            eta_seconds,
            units_done: self.units_done,
            units_running: running,
            units_left: self
                .units_total
                .saturating_sub(self.units_done)
                .saturating_sub(running),
            elapsed_seconds: elapsed.as_secs(),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    format: LineFormat,
    /// Set when the reporter is dropped; the ticker wakes and ends.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn write(&self, fields: &ProgressFields) {
        let line = match self.format {
            LineFormat::Text => fields.text(),
            LineFormat::Json => fields.json(),
        };
        // One write per line, so lines from several threads never interleave.
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("{line}\n").as_bytes());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`Reporter`] that writes progress lines on standard error.
pub struct LineReporter {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

impl LineReporter {
    /// Lines at each phase change and every `interval` while a phase runs.
    pub fn new(format: LineFormat, interval: Duration) -> LineReporter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            format,
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let ticking = shared.clone();
        let ticker = std::thread::Builder::new()
            .name("progress-lines".into())
            .spawn(move || tick(&ticking, interval))
            .ok();
        LineReporter { shared, ticker }
    }
}

/// Every `interval` until stopped: a `progress` line while a phase runs.
fn tick(shared: &Shared, interval: Duration) {
    let mut stopped = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (guard, timeout) = shared
            .wake
            .wait_timeout_while(stopped, interval, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        stopped = guard;
        if *stopped {
            return;
        }
        if timeout.timed_out() {
            let fields = {
                let state = shared.state();
                state.phase.map(|p| state.fields("progress", p))
            };
            if let Some(f) = fields {
                shared.write(&f);
            }
        }
    }
}

impl Drop for LineReporter {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Reporter for LineReporter {
    fn on_phase_start(&self, phase: Phase, total_units: u64, total_rows: u64, total_bytes: u64) {
        let fields = {
            let mut state = self.shared.state();
            let stores = std::mem::take(&mut state.stores);
            *state = State::new();
            // The stores of the run stay known across its phases (for the noun).
            state.stores = stores;
            state.phase = Some(phase);
            state.units_total = total_units;
            state.rows_total = total_rows;
            state.bytes_total = total_bytes;
            state.fields("phase_start", phase)
        };
        self.shared.write(&fields);
    }

    fn on_store_totals(&self, _phase: Phase, store: StoreKind, totals: &StoreTotals) {
        let mut state = self.shared.state();
        state.stores.insert(store);
        state.units_done += totals.units_done;
    }

    fn on_resumed(&self, rows: u64, bytes: u64) {
        let mut state = self.shared.state();
        state.rows_done += rows;
        state.rows_resumed += rows;
        state.bytes_done += bytes;
        state.bytes_resumed += bytes;
    }

    fn on_phase_done(&self, phase: Phase) {
        let fields = {
            let mut state = self.shared.state();
            if state.phase != Some(phase) {
                return;
            }
            state.phase = None;
            state.running.clear();
            // A phase that did not report its units one by one did them all when it ends.
            if !state.saw_units {
                state.units_done = state.units_total;
            }
            state.fields("phase_done", phase)
        };
        self.shared.write(&fields);
    }

    fn on_unit_start(&self, _phase: Phase, unit: &Unit) {
        let mut state = self.shared.state();
        state.stores.insert(unit.store);
        state
            .running
            .insert(format!("{}:{}", unit.store, unit.name));
    }

    fn on_batch(&self, _phase: Phase, _unit: &Unit, rows: u64, bytes: u64) {
        let mut state = self.shared.state();
        state.rows_done += rows;
        state.bytes_done += bytes;
    }

    fn on_unit_done(&self, _phase: Phase, unit: &Unit, _outcome: &UnitOutcome) {
        let mut state = self.shared.state();
        if state
            .running
            .remove(&format!("{}:{}", unit.store, unit.name))
        {
            state.units_done += 1;
        }
    }
}

/// The same fields for a job as its catalog records it (`offload status`): the phase running
/// (or the last one), records and bytes of the copy, units by state, and, while a process holds
/// the job, the average rate since the copy started and the time left at that rate.
pub fn from_catalog(phases: &[PhaseRecord], units: &[UnitRecord], held: bool) -> ProgressFields {
    let phase = phases
        .iter()
        .rfind(|p| p.done_at.is_none())
        .or_else(|| phases.last())
        .map(|p| p.phase.clone())
        .unwrap_or_else(|| "plan".into());
    let stores: BTreeSet<StoreKind> = units.iter().map(|u| u.unit.store).collect();
    let noun = match stores.iter().collect::<Vec<_>>().as_slice() {
        [one] => one.nouns().1,
        _ => "records",
    };
    let (mut done, mut total, mut bytes_done, mut bytes_total) = (0u64, 0u64, 0u64, 0u64);
    let (mut units_done, mut units_running, mut units_left) = (0u64, 0u64, 0u64);
    for u in units {
        done += u.rows_done;
        total += u.unit.est_rows.max(u.rows_done);
        bytes_done += u.bytes_done;
        bytes_total += u.unit.est_bytes;
        match u.state {
            UnitState::Copied | UnitState::Skipped => units_done += 1,
            UnitState::Copying => units_running += 1,
            UnitState::Pending | UnitState::Failed => units_left += 1,
        }
    }
    let since = phases
        .iter()
        .filter(|p| p.phase == "copy" && p.store != "job" && p.done_at.is_none())
        .filter_map(|p| p.started_at.as_deref())
        .min()
        .and_then(seconds_since)
        .filter(|_| held);
    let per_sec = |n: u64| since.filter(|s| *s > 0.0).map_or(0.0, |s| n as f64 / s);
    let records_per_second = per_sec(done);
    let remaining = total.saturating_sub(done);
    ProgressFields {
        event: "status",
        phase,
        records_noun: noun,
        records_done: done,
        records_total: (total > 0).then_some(total),
        bytes_done,
        bytes_total: (bytes_total > 0).then_some(bytes_total),
        records_per_second,
        bytes_per_second: per_sec(bytes_done),
        eta_seconds: (remaining > 0 && records_per_second > 0.0)
            .then(|| (remaining as f64 / records_per_second).min(1e9) as u64),
        units_done,
        units_running,
        units_left,
        elapsed_seconds: since.map_or(0, |s| s as u64),
    }
}

fn seconds_since(at: &str) -> Option<f64> {
    let then =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time::OffsetDateTime::now_utc() - then).as_seconds_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(store: StoreKind, name: &str) -> Unit {
        Unit {
            store,
            name: name.into(),
            container: "db".into(),
            object: name.into(),
            range: Default::default(),
            est_rows: 1000,
            est_bytes: 1 << 20,
            spec: serde_json::Value::Null,
            size_known: true,
        }
    }

    #[test]
    fn a_line_says_what_the_bars_say_in_rounded_numbers() {
        let f = ProgressFields {
            event: "progress",
            phase: "copy".into(),
            records_noun: "rows",
            records_done: 1_234_567,
            records_total: Some(3_400_000),
            bytes_done: 440_401_920,
            bytes_total: Some(1 << 30),
            records_per_second: 119_124.989_2,
            bytes_per_second: 44_153_651.2,
            eta_seconds: Some(65),
            units_done: 3,
            units_running: 2,
            units_left: 5,
            elapsed_seconds: 10,
        };
        assert_eq!(
            f.text(),
            "offload progress: copy: 1.23M/3.4M rows, 420 MiB; 119k rows/s, 42.1 MiB/s; ETA 1m 05s; units 3 done, 2 running, 5 left"
        );
        let json: serde_json::Value = serde_json::from_str(&f.json()).unwrap();
        for key in [
            "time",
            "event",
            "phase",
            "records_noun",
            "records_done",
            "records_total",
            "bytes_done",
            "bytes_total",
            "records_per_second",
            "bytes_per_second",
            "eta_seconds",
            "units_done",
            "units_running",
            "units_left",
            "elapsed_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json.as_object().unwrap().len(), 15, "{json}");
    }

    #[test]
    fn a_phase_without_records_says_when_it_starts_and_ends_and_its_units() {
        let r = LineReporter::new(LineFormat::Text, Duration::from_secs(3600));
        r.on_phase_start(Phase::Prepare, 16, 0, 0);
        let start = r.shared.state().fields("phase_start", Phase::Prepare);
        assert_eq!(
            start.text(),
            "offload progress: prepare started; units 0 done, 0 running, 16 left"
        );
        r.on_phase_done(Phase::Prepare);
        // What the done line said: the state keeps the phase's last counts.
        let done = r.shared.state().fields("phase_done", Phase::Prepare);
        assert!(
            done.text()
                .starts_with("offload progress: prepare done; in ")
                && done.text().ends_with("units 16 done, 0 running, 0 left"),
            "{}",
            done.text()
        );
    }

    #[test]
    fn units_are_counted_as_they_start_and_end() {
        let r = LineReporter::new(LineFormat::Text, Duration::from_secs(3600));
        let (a, b) = (unit(StoreKind::Mysql, "a"), unit(StoreKind::Mysql, "b"));
        r.on_phase_start(Phase::Copy, 3, 3000, 3 << 20);
        r.on_unit_start(Phase::Copy, &a);
        r.on_unit_start(Phase::Copy, &b);
        r.on_batch(Phase::Copy, &a, 1000, 1 << 20);
        r.on_unit_done(Phase::Copy, &a, &UnitOutcome::Done);
        let f = {
            let state = r.shared.state();
            state.fields("progress", Phase::Copy)
        };
        assert_eq!((f.units_done, f.units_running, f.units_left), (1, 1, 1));
        assert_eq!((f.records_done, f.records_total), (1000, Some(3000)));
        assert_eq!(f.records_noun, "rows");
        r.on_unit_start(Phase::Copy, &unit(StoreKind::Redis, "0"));
        assert_eq!(r.shared.state().noun(), "records");
    }
}
