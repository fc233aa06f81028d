//! Test support beyond the shared helpers: the Meilisearch stand-in and the TCP fault proxy.

pub mod fault_proxy;
pub mod meili_standin;
