//! Test support beyond the shared helpers: the Meilisearch and Open edX heartbeat stand-ins, the
//! TCP fault proxy, and servers that speak TLS.

pub mod fault_proxy;
pub mod heartbeat_standin;
pub mod meili_standin;
pub mod tls;
