//! A [`Reporter`] drawn with indicatif: an overall bar, one line per store when a run moves several
//! stores, and one line per active unit, with counts, rates and ETAs a person reads at a glance
//! (`1.2M/3.4M rows  119k rows/s  42.1 MiB/s  ETA 1m 05s`). Drawn on standard error only when it
//! is a terminal and progress is wanted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::numbers::{byte_rate, bytes, done_of, eta, rate};
use crate::core::progress::{Phase, Reporter, StoreTotals, UnitOutcome};
use crate::core::{StoreKind, Unit};

/// The noun of a line that counts the records of several kinds of store together.
const ANY_RECORDS: &str = "records";

/// How often lines redraw themselves, so rates and ETAs move while a batch is in flight.
const TICK: Duration = Duration::from_millis(250);

/// Progress bars for an interactive terminal.
pub struct BarReporter {
    multi: MultiProgress,
    bars: Mutex<Bars>,
}

/// What is on screen: the current phase's lines, and the active units'.
#[derive(Default)]
struct Bars {
    /// The phase the overall line and the store lines belong to.
    phase: Option<Phase>,
    overall: Option<Line>,
    /// Whether the overall line knows its total.
    overall_sized: bool,
    /// The stores the current phase has shown to work on, naming the overall line's records.
    kinds: BTreeSet<StoreKind>,
    stores: BTreeMap<StoreKind, StoreLine>,
    units: HashMap<String, Line>,
}

/// One line on screen: a bar whose position counts records, and a hidden twin that counts bytes,
/// so indicatif's rate estimator serves both.
#[derive(Clone)]
struct Line {
    records: ProgressBar,
    bytes: ProgressBar,
    resumed: Arc<Resumed>,
}

/// What a line counted from a previous run, left out of its average rates once it is done.
#[derive(Default)]
struct Resumed {
    rows: AtomicU64,
    bytes: AtomicU64,
}

/// A store's line: drawn only once a second store joins the phase (with one store the overall
/// line says it all), and finished when the last of its units ends.
struct StoreLine {
    line: Line,
    shown: bool,
    units: u64,
    units_ended: u64,
}

/// The shape of a line, which decides its template.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Overall,
    Store,
    Unit,
}

/// Whether bars should be drawn: asked for, and standard error is a terminal.
pub fn bars_wanted(no_progress: bool, json: bool) -> bool {
    !no_progress && !json && std::io::stderr().is_terminal()
}

impl Line {
    /// A line not yet drawn, `done` of `total` records (zero: not known) and `done_bytes` already
    /// behind it; what was done before does not count toward its rates.
    fn new(shape: Shape, noun: &'static str, total: u64, done: u64, done_bytes: u64) -> Line {
        let records =
            ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::hidden());
        let bytes = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let line = Line {
            records,
            bytes,
            resumed: Arc::default(),
        };
        line.restyle(shape, noun, total > 0);
        if done > 0 || done_bytes > 0 {
            line.resume(done, done_bytes);
        }
        line
    }

    fn restyle(&self, shape: Shape, noun: &'static str, sized: bool) {
        self.records.set_style(line_style(shape, noun, sized, self));
    }

    /// Work done before this run: counted in the line, not in its rates.
    fn resume(&self, done: u64, done_bytes: u64) {
        // A steady tick would skip the estimator update the reset below relies on.
        self.records.disable_steady_tick();
        self.grow_to(done);
        self.records.set_position(done);
        self.bytes.set_position(done_bytes);
        self.resumed.rows.store(done, Ordering::Relaxed);
        self.resumed.bytes.store(done_bytes, Ordering::Relaxed);
        for bar in [&self.records, &self.bytes] {
            bar.tick();
            bar.reset_eta();
        }
    }

    fn add(&self, rows: u64, bytes: u64) {
        self.bytes.inc(bytes);
        self.grow_to(self.records.position() + rows);
        self.records.inc(rows);
    }

    /// An estimate too low must not leave the count past the end of the bar.
    fn grow_to(&self, pos: u64) {
        if pos > self.records.length().unwrap_or(0) {
            self.records.set_length(pos);
        }
    }

    /// Leave the line on screen with what was done (not the estimate) and its average rates.
    fn finish(&self, message: String) {
        self.records.set_length(self.records.position());
        self.records.finish_with_message(message);
        self.bytes.finish();
    }

    fn clear(&self) {
        self.records.finish_and_clear();
        self.bytes.finish();
    }
}

/// A line's template, with its counts, rates and ETA drawn by the functions below.
fn line_style(shape: Shape, noun: &'static str, sized: bool, line: &Line) -> ProgressStyle {
    let template = match shape {
        Shape::Overall => "{prefix:>7.bold} [{bar:24.cyan/blue}] {counted}  {speed}  {left}  {msg}",
        Shape::Store => "{prefix:>7} [{bar:24.cyan/blue}] {counted}  {speed}  {left}  {msg}",
        Shape::Unit => "  {spinner} {msg:40!} {counted:>24}  {speed}",
    };
    let byte_meter = line.bytes.clone();
    let (meter_for_speed, resumed) = (line.bytes.clone(), line.resumed.clone());
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
        .with_key(
            "counted",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let total = sized.then(|| state.len()).flatten();
                let _ = w.write_str(&done_of(state.pos(), total, noun));
                let b = byte_meter.position();
                if b > 0 {
                    let _ = write!(w, "  {}", bytes(b));
                }
            },
        )
        .with_key(
            "speed",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let bytes_done = meter_for_speed.position();
                // Done: the average over the run, without what an earlier run did.
                let (rows_per_sec, bytes_per_sec) = if state.is_finished() {
                    (
                        average(
                            state.pos(),
                            resumed.rows.load(Ordering::Relaxed),
                            state.elapsed(),
                        ),
                        average(
                            bytes_done,
                            resumed.bytes.load(Ordering::Relaxed),
                            state.elapsed(),
                        ),
                    )
                } else {
                    (state.per_sec(), meter_for_speed.per_sec())
                };
                let _ = w.write_str(&rate(rows_per_sec, noun));
                if bytes_done > 0 {
                    let _ = write!(w, "  {}", byte_rate(bytes_per_sec));
                }
            },
        )
        .with_key(
            "left",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&left(state, sized));
            },
        )
}

/// Per second over `elapsed`, of what was `done` beyond what was `resumed`.
fn average(done: u64, resumed: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        done.saturating_sub(resumed) as f64 / secs
    } else {
        0.0
    }
}

/// `ETA 1m 05s` while running (`ETA -` while the rate or the total is unknown), `in 12s` once done.
fn left(state: &ProgressState, sized: bool) -> String {
    if state.is_finished() {
        return format!("in {}", eta(state.elapsed()));
    }
    let per_sec = state.per_sec();
    let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
    // Past an estimate too low, the time left is not known either.
    if !sized || remaining == 0 || !per_sec.is_finite() || per_sec <= 0.0 {
        return "ETA -".to_string();
    }
    format!(
        "ETA {}",
        eta(Duration::from_secs_f64(
            (remaining as f64 / per_sec).min(1e9)
        ))
    )
}

impl BarReporter {
    pub fn new() -> BarReporter {
        BarReporter {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            bars: Mutex::new(Bars::default()),
        }
    }

    fn key(phase: Phase, unit: &Unit) -> String {
        format!("{}:{}:{}", phase.as_str(), unit.store, unit.name)
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, Bars> {
        self.bars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a hidden line on screen, after `after` (or last), ticking.
    fn show(&self, line: &Line, after: Option<&Line>) {
        let bar = match after {
            Some(a) => self.multi.insert_after(&a.records, line.records.clone()),
            None => self.multi.add(line.records.clone()),
        };
        bar.enable_steady_tick(TICK);
    }
}

impl Bars {
    /// The records the overall line counts: one store's noun, or records in general.
    fn overall_noun(&self) -> &'static str {
        let mut nouns: Vec<&'static str> = self.kinds.iter().map(|k| k.nouns().1).collect();
        nouns.dedup();
        match nouns.as_slice() {
            [one] => one,
            _ => ANY_RECORDS,
        }
    }

    /// Note a store at work in the current phase; rename the overall line's records if need be.
    fn saw_store(&mut self, kind: StoreKind) {
        let before = self.overall_noun();
        if self.kinds.insert(kind) && self.overall_noun() != before {
            if let Some(overall) = &self.overall {
                overall.restyle(Shape::Overall, self.overall_noun(), self.overall_sized);
            }
        }
    }
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for BarReporter {
    fn on_phase_start(&self, phase: Phase, total_units: u64, total_rows: u64, _total_bytes: u64) {
        if phase != Phase::Copy && phase != Phase::Verify {
            return;
        }
        let mut bars = self.bars();
        if let Some(old) = bars.overall.take() {
            old.clear();
        }
        for (_, old) in std::mem::take(&mut bars.stores) {
            old.line.clear();
        }
        bars.kinds.clear();
        bars.phase = Some(phase);
        bars.overall_sized = total_rows > 0;
        let overall = Line::new(Shape::Overall, ANY_RECORDS, total_rows, 0, 0);
        overall.records.set_prefix(phase.as_str());
        overall.records.set_message(format!("{total_units} units"));
        self.show(&overall, None);
        bars.overall = Some(overall);
    }

    fn on_store_totals(&self, phase: Phase, store: StoreKind, totals: &StoreTotals) {
        let mut bars = self.bars();
        if bars.phase != Some(phase) || bars.overall.is_none() {
            return;
        }
        bars.saw_store(store);
        let (units_noun, noun) = store.nouns();
        let line = Line::new(
            Shape::Store,
            noun,
            totals.rows,
            totals.rows_done,
            totals.bytes_done,
        );
        line.records.set_prefix(store.as_str());
        line.records.set_message(format!(
            "{}/{} {units_noun}",
            totals.units_done, totals.units
        ));
        if let Some(old) = bars.stores.insert(
            store,
            StoreLine {
                line,
                shown: false,
                units: totals.units,
                units_ended: totals.units_done,
            },
        ) {
            old.line.clear();
        }
        if bars.stores.len() < 2 {
            return;
        }
        // Several stores: every store line goes on screen under the overall line, in store order.
        let mut after = bars.overall.clone();
        let kinds: Vec<StoreKind> = bars.stores.keys().copied().collect();
        for kind in kinds {
            let store_line = bars.stores.get_mut(&kind).expect("listed above");
            if !store_line.shown {
                store_line.shown = true;
                self.show(&store_line.line, after.as_ref());
            }
            after = Some(store_line.line.clone());
        }
    }

    fn on_resumed(&self, rows: u64, bytes: u64) {
        let bars = self.bars();
        if let Some(overall) = &bars.overall {
            overall.resume(rows, bytes);
            overall.records.enable_steady_tick(TICK);
        }
    }

    fn on_phase_done(&self, phase: Phase) {
        let mut bars = self.bars();
        if bars.phase != Some(phase) {
            return;
        }
        bars.phase = None;
        if let Some(overall) = bars.overall.take() {
            overall.finish(format!("{} done", phase.as_str()));
        }
        for (_, s) in std::mem::take(&mut bars.stores) {
            if !s.line.records.is_finished() {
                s.line.finish(format!("{}/{}", s.units_ended, s.units));
            }
        }
    }

    fn on_unit_start(&self, phase: Phase, unit: &Unit) {
        let mut bars = self.bars();
        if bars.phase == Some(phase) {
            bars.saw_store(unit.store);
        }
        let line = Line::new(Shape::Unit, unit.store.nouns().1, unit.est_rows, 0, 0);
        line.records.set_message(unit.name.clone());
        self.show(&line, None);
        if let Some(old) = bars.units.insert(Self::key(phase, unit), line) {
            old.clear();
        }
    }

    fn on_batch(&self, phase: Phase, unit: &Unit, rows: u64, bytes: u64) {
        let bars = self.bars();
        if let Some(line) = bars.units.get(&Self::key(phase, unit)) {
            line.add(rows, bytes);
        }
        if bars.phase != Some(phase) {
            return;
        }
        if let Some(s) = bars.stores.get(&unit.store) {
            s.line.add(rows, bytes);
        }
        if let Some(overall) = &bars.overall {
            overall.add(rows, bytes);
        }
    }

    fn on_unit_done(&self, phase: Phase, unit: &Unit, outcome: &UnitOutcome) {
        let mut bars = self.bars();
        if let Some(line) = bars.units.remove(&Self::key(phase, unit)) {
            line.clear();
        }
        if bars.phase == Some(phase) {
            if let Some(s) = bars.stores.get_mut(&unit.store) {
                s.units_ended += 1;
                let (units_noun, _) = unit.store.nouns();
                let message = format!("{}/{} {units_noun}", s.units_ended, s.units);
                if s.units_ended >= s.units {
                    s.line.finish(message);
                } else {
                    s.line.records.set_message(message);
                }
            }
        }
        drop(bars);
        match outcome {
            UnitOutcome::Failed(e) => {
                let _ = self.multi.println(format!("  failed  {}: {e}", unit.name));
            }
            UnitOutcome::Differs(d) => {
                let _ = self.multi.println(format!("  differs {}: {d}", unit.name));
            }
            _ => {}
        }
    }

    fn on_retry(&self, unit: &Unit, attempt: u32, error: &str) {
        let _ = self
            .multi
            .println(format!("  retry {attempt} for {}: {error}", unit.name));
    }

    fn on_note(&self, message: &str) {
        let _ = self.multi.println(format!("  {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::numbers::{count, significant};

    #[test]
    fn numbers_keep_three_significant_digits() {
        for (value, text) in [
            (0.0, "0"),
            (0.999, "0.999"),
            (0.5, "0.5"),
            (0.0004, "0"),
            (1.0, "1"),
            (1.234, "1.23"),
            (9.999, "10"),
            (42.14, "42.1"),
            (99.96, "100"),
            (119.12499, "119"),
            (1020.4, "1020"),
            (f64::NAN, "0"),
            (f64::INFINITY, "0"),
            (-3.0, "0"),
        ] {
            assert_eq!(significant(value), text, "{value}");
        }
    }

    #[test]
    fn counts_take_si_prefixes() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1000, "1k"),
            (1234, "1.23k"),
            (119_124, "119k"),
            (999_999, "1M"),
            (1_200_000, "1.2M"),
            (3_456_789_012, "3.46G"),
        ] {
            assert_eq!(count(n), text, "{n}");
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        for (n, text) in [
            (0, "0 B"),
            (512, "512 B"),
            (1000, "1000 B"),
            (1536, "1.5 KiB"),
            (1_048_575, "1 MiB"),
            (44_145_459, "42.1 MiB"),
            (1_288_490_189, "1.2 GiB"),
            (5 << 40, "5 TiB"),
        ] {
            assert_eq!(bytes(n), text, "{n}");
        }
    }

    #[test]
    fn rates_name_what_moves() {
        assert_eq!(rate(119_124.989_2, "rows"), "119k rows/s");
        assert_eq!(
            rate(34_453.715_311_986_57, "documents"),
            "34.5k documents/s"
        );
        assert_eq!(rate(0.999, "keys"), "0.999 keys/s");
        assert_eq!(rate(0.0, "objects"), "0 objects/s");
        assert_eq!(byte_rate(44_145_459.0), "42.1 MiB/s");
        assert_eq!(byte_rate(100.4), "100 B/s");
    }

    #[test]
    fn a_finished_line_averages_only_this_run() {
        assert_eq!(average(900, 600, Duration::from_secs(3)), 100.0);
        assert_eq!(average(10, 20, Duration::from_secs(1)), 0.0);
        assert_eq!(average(10, 0, Duration::ZERO), 0.0);
    }

    #[test]
    fn done_counts_show_their_total_when_known() {
        assert_eq!(
            done_of(1_200_000, Some(3_400_000), "rows"),
            "1.2M/3.4M rows"
        );
        assert_eq!(done_of(12_345, None, "documents"), "12.3k documents");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        for (secs, text) in [
            (0, "<1s"),
            (8, "8s"),
            (65, "1m 05s"),
            (3600 * 2 + 180, "2h 03m"),
            (86400 * 3 + 3600 * 4 + 5, "3d 04h"),
        ] {
            assert_eq!(eta(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn the_overall_line_names_one_store_records_or_records_in_general() {
        let mut bars = Bars::default();
        assert_eq!(bars.overall_noun(), "records");
        bars.saw_store(StoreKind::Mysql);
        assert_eq!(bars.overall_noun(), "rows");
        bars.saw_store(StoreKind::Redis);
        assert_eq!(bars.overall_noun(), "records");
        let mut documents = Bars::default();
        documents.saw_store(StoreKind::Mongodb);
        documents.saw_store(StoreKind::Meilisearch);
        assert_eq!(documents.overall_noun(), "documents");
    }

    /// The whole reporter, drawn nowhere: lines follow the events, nothing panics or deadlocks.
    #[test]
    fn a_multi_store_run_keeps_a_line_per_store() {
        let reporter = BarReporter {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            bars: Mutex::new(Bars::default()),
        };
        let unit = |store, name: &str| Unit {
            store,
            name: name.into(),
            container: "c".into(),
            object: name.into(),
            range: Default::default(),
            est_rows: 10,
            est_bytes: 100,
            spec: serde_json::Value::Null,
            size_known: true,
        };
        let (table, db) = (unit(StoreKind::Mysql, "t"), unit(StoreKind::Redis, "0"));
        reporter.on_phase_start(Phase::Copy, 2, 20, 200);
        let totals = StoreTotals {
            units: 1,
            rows: 10,
            bytes: 100,
            ..StoreTotals::default()
        };
        reporter.on_store_totals(Phase::Copy, StoreKind::Mysql, &totals);
        assert!(!reporter.bars().stores[&StoreKind::Mysql].shown);
        reporter.on_store_totals(Phase::Copy, StoreKind::Redis, &totals);
        assert!(reporter.bars().stores.values().all(|s| s.shown));
        for u in [&table, &db] {
            reporter.on_unit_start(Phase::Copy, u);
            reporter.on_batch(Phase::Copy, u, 12, 150);
        }
        {
            let bars = reporter.bars();
            assert_eq!(bars.overall.as_ref().unwrap().records.position(), 24);
            assert_eq!(bars.overall.as_ref().unwrap().bytes.position(), 300);
            let mysql = &bars.stores[&StoreKind::Mysql].line;
            assert_eq!(mysql.records.position(), 12);
            assert_eq!(mysql.records.length(), Some(12), "grown past the estimate");
        }
        reporter.on_unit_done(Phase::Copy, &table, &UnitOutcome::Done);
        assert!(reporter.bars().stores[&StoreKind::Mysql]
            .line
            .records
            .is_finished());
        reporter.on_unit_done(Phase::Copy, &db, &UnitOutcome::Done);
        reporter.on_phase_done(Phase::Copy);
        let bars = reporter.bars();
        assert!(bars.overall.is_none() && bars.stores.is_empty() && bars.units.is_empty());
    }
}
