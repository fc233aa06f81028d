//! Test support beyond the shared helpers: the Meilisearch and Open edX heartbeat stand-ins, the
//! TCP fault proxy, servers that speak TLS, and MariaDB servers of a test's own (with a binary log).

pub mod fault_proxy;
pub mod heartbeat_standin;
pub mod meili_standin;
pub mod own_mariadb;
pub mod tls;
