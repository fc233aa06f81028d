//! offload: move the data stores of a single-server Open edX platform (run by Tutor) onto
//! external services, and prove nothing was lost.
//!
//! The library holds everything but argument parsing and terminal output: [`core`] is the engine
//! (plan, catalog, runner, verify, progress), [`stores`] the per-store mechanics, [`tutor`] reads
//! and rewrites Tutor's `config.yml`.

pub mod core;
pub mod job;
pub mod reindex;
pub mod secret;
pub mod stores;
pub mod tutor;

pub mod cli;
pub mod commands;
pub mod cross_checks;
pub mod cutover_cmd;
pub mod migrate_cmd;
pub mod reindex_cmd;
pub mod settings;
pub mod ui;
