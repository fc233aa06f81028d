//! offload's integration tests: one binary, real servers on loopback started by `scripts/stack up`.
//!
//! Endpoints come from `OFFLOAD_TEST_*` variables (printed by `scripts/stack env`), defaulting to
//! the stack's ports. A test whose server is missing fails and says how to start it.

mod check;
mod cli;
mod common;
mod cutover;
mod cutover_es;
mod cutover_s3;
mod cutover_tls;
mod faults;
mod follow_mongodb;
mod follow_redis;
mod fuzz;
mod inputs;
mod job;
mod lines;
mod meilisearch;
mod migrate;
mod mongodb;
mod mysql;
mod objects;
mod plugin;
mod plugins;
mod progress;
mod reach;
mod redis;
mod restart;
mod s3_credentials;
mod stop;
mod support;
mod tls;
