//! Test support beyond the shared helpers: the Meilisearch stand-in.

pub mod meili_standin;
