//! What the command line shows: progress bars on a terminal (the only place that knows
//! indicatif), progress lines everywhere else (logs, pipes, Kubernetes), and the human-readable
//! printers for plans, summaries, reports and status.

pub mod html;
pub mod lines;
mod numbers;
pub mod print;
pub mod progress;
