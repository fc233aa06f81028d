//! offload: move the data stores of a single-server Open edX platform (run by Tutor) onto
//! external services, and prove nothing was lost.
//!
//! The library is everything but `main`: [`cli`] defines the arguments, [`commands`] runs one
//! subcommand each (resolve settings, call the job, print), [`job`] is the job's lifecycle
//! (open/resume, freeze, copy, delta, verify, reindex, cross-store checks, cutover gate),
//! [`core`] the engine every store plugs into (plan, catalog, runner, verify, progress),
//! [`stores`] the per-store mechanics and settings with the registry from store kind to
//! implementation, [`search`] the Meilisearch rebuild, [`tutor`] reads and rewrites Tutor's
//! `config.yml`, [`settings`] and [`resolve`] turn inputs into resolved settings, and [`ui`]
//! draws progress and reports. `docs/architecture.md` draws the layers and their arrows.

pub mod core;
pub mod resolve;
pub mod search;
pub mod secret;
pub mod stores;
pub mod tutor;

pub mod cli;
pub mod commands;
pub mod job;
pub mod settings;
pub mod ui;
