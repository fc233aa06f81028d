//! Can this machine reach every server a job names? Each source and target host is resolved and
//! dialled (TCP) with a short timeout before any store is asked anything, so a host that only
//! exists inside Tutor's Compose network or Kubernetes namespace (`mysql`, `mongodb`, `redis`,
//! `minio`, `meilisearch`) is named with its store instead of surfacing as a driver error.

use std::time::Duration;

use serde::Serialize;

use crate::core::{Side, StoreKind};
use crate::settings::Settings;
use crate::stores::objects::ObjectSource;
use crate::stores::StoreSettings;

/// How long a name may take to resolve, and a connection to open.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// A server the job names that this machine cannot reach.
#[derive(Debug, Clone, Serialize)]
pub struct Unreachable {
    pub store: StoreKind,
    pub side: Side,
    /// `host:port`.
    pub address: String,
    /// Why: the name does not resolve, nothing answers, or it timed out.
    pub why: String,
}

/// The `(store, side, host, port)` of every server the settings name, where one is named by
/// host: a `mongodb+srv://` name, AWS's own S3 endpoints and filesystem media are left out (the
/// drivers resolve those their own way).
fn servers(settings: &Settings) -> Vec<(StoreKind, Side, String, u16)> {
    let mut out = Vec::new();
    for s in &settings.stores {
        let kind = s.kind();
        match s {
            StoreSettings::Mysql(m) => {
                out.push((kind, Side::Source, m.source.host.clone(), m.source.port));
                out.push((kind, Side::Target, m.target.host.clone(), m.target.port));
            }
            StoreSettings::Redis(r) => {
                out.push((kind, Side::Source, r.source.host.clone(), r.source.port));
                out.push((kind, Side::Target, r.target.host.clone(), r.target.port));
            }
            StoreSettings::Mongodb(m) => {
                for (side, e) in [(Side::Source, &m.source), (Side::Target, &m.target)] {
                    if e.srv {
                        continue;
                    }
                    for host in e.hosts.split(',') {
                        if let Some((h, p)) = split_host_port(host, 27017) {
                            out.push((kind, side, h, p));
                        }
                    }
                }
            }
            StoreSettings::Objects(o) => {
                let source = match &o.source {
                    ObjectSource::S3 { endpoint, .. } => endpoint.url.as_deref(),
                    ObjectSource::Media { .. } => None,
                };
                for (side, url) in [
                    (Side::Source, source),
                    (Side::Target, o.target.url.as_deref()),
                ] {
                    if let Some((h, p)) = url.and_then(url_host_port) {
                        out.push((kind, side, h, p));
                    }
                }
            }
        }
    }
    if let Some(m) = &settings.meilisearch {
        if let Some((h, p)) = url_host_port(&m.url) {
            out.push((StoreKind::Meilisearch, Side::Target, h, p));
        }
    }
    out
}

/// `host` and port of an http(s) URL (the scheme's port when none is written).
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    let host = u
        .host_str()?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    Some((host, u.port_or_known_default()?))
}

/// `host:port`, `[v6]:port` or a bare host with `default` as its port.
fn split_host_port(text: &str, default: u16) -> Option<(String, u16)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let strip = |h: &str| h.trim_matches(|c| c == '[' || c == ']').to_string();
    match text.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some((strip(h), p.parse().ok()?))
        }
        _ => Some((strip(text), default)),
    }
}

/// Resolve and dial one server; `None` when it answers.
async fn dial(host: &str, port: u16) -> Option<String> {
    let resolved = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let addrs: Vec<_> = match resolved {
        Err(_) => return Some("the name did not resolve in time".into()),
        Ok(Err(e)) => return Some(format!("the name does not resolve here: {e}")),
        Ok(Ok(a)) => a.collect(),
    };
    if addrs.is_empty() {
        return Some("the name resolves to no address".into());
    }
    let mut last = String::new();
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => last = format!("nothing answers at {addr} ({e})"),
            Err(_) => last = format!("{addr} did not answer within {}s", DIAL_TIMEOUT.as_secs()),
        }
    }
    Some(last)
}

/// Refuse settings that name a server this machine cannot reach ([`super::JobError::Unreachable`]).
pub async fn check(settings: &Settings) -> Result<(), super::JobError> {
    let servers = unreachable(settings).await;
    if servers.is_empty() {
        Ok(())
    } else {
        Err(super::JobError::Unreachable(servers))
    }
}

/// Every server the settings name that this machine cannot reach, dialled at once.
pub async fn unreachable(settings: &Settings) -> Vec<Unreachable> {
    let mut tasks = tokio::task::JoinSet::new();
    for (store, side, host, port) in servers(settings) {
        tasks.spawn(async move {
            let why = dial(&host, port).await?;
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            Some(Unreachable {
                store,
                side,
                address,
                why,
            })
        });
    }
    let mut out: Vec<Unreachable> = tasks.join_all().await.into_iter().flatten().collect();
    out.sort_by(|a, b| {
        (a.store, a.side as u8, &a.address).cmp(&(b.store, b.side as u8, &b.address))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_come_out_of_every_form() {
        assert_eq!(
            split_host_port("db:27018", 27017),
            Some(("db".into(), 27018))
        );
        assert_eq!(split_host_port("db", 27017), Some(("db".into(), 27017)));
        assert_eq!(
            split_host_port("[::1]:27019", 27017),
            Some(("::1".into(), 27019))
        );
        assert_eq!(
            url_host_port("https://s3.example.org"),
            Some(("s3.example.org".into(), 443))
        );
        assert_eq!(
            url_host_port("http://minio:9000"),
            Some(("minio".into(), 9000))
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_named_and_an_open_one_passes() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        assert_eq!(dial("127.0.0.1", port).await, None);
        drop(open);
        let why = dial("127.0.0.1", port).await.expect("closed");
        assert!(why.contains("nothing answers"), "{why}");
    }
}
