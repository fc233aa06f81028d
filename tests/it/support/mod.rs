//! Test support beyond the shared helpers: the Meilisearch stand-in, and servers that speak TLS.

pub mod meili_standin;
pub mod tls;
