//! What the command line shows: progress bars (the only place that knows indicatif) and the
//! human-readable printers for plans, summaries, reports and status.

pub mod html;
pub mod print;
pub mod progress;
