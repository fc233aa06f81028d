//! Test support beyond the shared helpers: the Meilisearch stand-in, the TCP fault proxy, and
//! servers that speak TLS.

pub mod fault_proxy;
pub mod meili_standin;
pub mod tls;
