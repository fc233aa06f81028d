//! A [`Reporter`] drawn with indicatif: an overall bar with rate and ETA, plus one line per active
//! unit. Drawn on standard error only when it is a terminal and progress is wanted.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::core::progress::{Phase, Reporter, UnitOutcome};
use crate::core::Unit;

/// Progress bars for an interactive terminal.
pub struct BarReporter {
    multi: MultiProgress,
    overall: Mutex<Option<ProgressBar>>,
    units: Mutex<HashMap<String, ProgressBar>>,
}

/// Whether bars should be drawn: asked for, and standard error is a terminal.
pub fn bars_wanted(no_progress: bool, json: bool) -> bool {
    !no_progress && !json && std::io::stderr().is_terminal()
}

impl BarReporter {
    pub fn new() -> BarReporter {
        BarReporter {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            overall: Mutex::new(None),
            units: Mutex::new(HashMap::new()),
        }
    }

    fn key(phase: Phase, unit: &Unit) -> String {
        format!("{}:{}:{}", phase.as_str(), unit.store, unit.name)
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
        let bar = self.multi.add(ProgressBar::new(total_rows.max(1)));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>7.bold} [{bar:30.cyan/blue}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(phase.as_str());
        bar.set_message(format!("{total_units} units"));
        bar.enable_steady_tick(Duration::from_millis(250));
        if let Some(old) = self.overall.lock().expect("bar lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn on_resumed(&self, rows: u64, _bytes: u64) {
        if let Some(bar) = &*self.overall.lock().expect("bar lock") {
            bar.set_position(rows);
            bar.reset_eta();
        }
    }

    fn on_phase_done(&self, phase: Phase) {
        if let Some(bar) = self.overall.lock().expect("bar lock").take() {
            bar.finish_with_message(format!("{} done", phase.as_str()));
        }
    }

    fn on_unit_start(&self, phase: Phase, unit: &Unit) {
        let bar = self.multi.add(ProgressBar::new(unit.est_rows.max(1)));
        bar.set_style(
            ProgressStyle::with_template(
                "  {spinner} {msg:40!} {human_pos:>10} rows {per_sec:>12}",
            )
            .expect("valid template"),
        );
        bar.set_message(unit.name.clone());
        bar.enable_steady_tick(Duration::from_millis(250));
        self.units
            .lock()
            .expect("bar lock")
            .insert(Self::key(phase, unit), bar);
    }

    fn on_batch(&self, phase: Phase, unit: &Unit, rows: u64, _bytes: u64) {
        if let Some(bar) = self
            .units
            .lock()
            .expect("bar lock")
            .get(&Self::key(phase, unit))
        {
            bar.inc(rows);
        }
        if let Some(bar) = &*self.overall.lock().expect("bar lock") {
            let pos = bar.position() + rows;
            if pos > bar.length().unwrap_or(0) {
                bar.set_length(pos);
            }
            bar.set_position(pos);
        }
    }

    fn on_unit_done(&self, phase: Phase, unit: &Unit, outcome: &UnitOutcome) {
        if let Some(bar) = self
            .units
            .lock()
            .expect("bar lock")
            .remove(&Self::key(phase, unit))
        {
            bar.finish_and_clear();
        }
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
