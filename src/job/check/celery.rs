//! A Celery round trip through the new Redis, answered by the platform's own workers: what
//! `celery inspect ping` does, spoken directly in kombu's Redis layout, so no Celery of offload's
//! is needed.
//!
//! On the broker database (OPENEDX_CELERY_REDIS_DB), kombu keeps each direct exchange's bindings
//! in the set `_kombu.binding.<exchange>` (members `routing_key\x06\x16pattern\x06\x16queue`),
//! a queue is a list (LPUSH by publishers, BRPOP by workers), and fanout exchanges are Redis
//! PUB/SUB channels `/<db>.<exchange>`. Every worker subscribes to the remote-control exchange
//! `celery.pidbox`. offload binds a reply queue of its own to `reply.celery.pidbox`, publishes a
//! `ping` there, and waits on the reply queue: each worker that consumes from this Redis answers
//! `{"<worker name>": {"ok": "pong"}}`. The queues' backlog (every queue bound in the broker
//! database) is reported beside it. offload removes its binding and reply queue afterwards.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

use super::{CheckResult, CheckStatus};
use crate::resolve::config_text;
use crate::secret::Secret;
use crate::stores::redis::RedisEndpoint;
use crate::tutor::TutorConfig;

const SERVICE: &str = "Celery";
/// kombu's separator inside a binding set member.
const SEP: &str = "\x06\x16";
/// kombu's priority steps: a queue with priorities keeps `<queue>\x06\x16<n>` lists beside it.
const PRIORITY_STEPS: [u8; 3] = [3, 6, 9];

/// The keys and channel of one ping.
#[derive(Debug, Clone)]
pub struct PidboxNames {
    /// The PUB/SUB channel of the remote-control exchange on this database.
    pub channel: String,
    /// The binding set of the reply exchange.
    pub binding_set: String,
    /// offload's member in it.
    pub binding: String,
    /// offload's reply queue.
    pub reply_queue: String,
    /// The reply routing key (the reply queue's id).
    pub oid: String,
    /// Marks the replies to this ping.
    pub ticket: String,
}

impl PidboxNames {
    pub fn new(db: i64, oid: &str, ticket: &str) -> PidboxNames {
        let reply_queue = format!("{oid}.reply.celery.pidbox");
        PidboxNames {
            channel: format!("/{db}.celery.pidbox"),
            binding_set: "_kombu.binding.reply.celery.pidbox".into(),
            binding: [oid, oid, reply_queue.as_str()].join(SEP),
            reply_queue,
            oid: oid.into(),
            ticket: ticket.into(),
        }
    }
}

/// The message kombu's Redis transport carries for a `ping` broadcast on `celery.pidbox`, as
/// `celery inspect ping` publishes it: a JSON envelope whose body is base64 JSON.
pub fn ping_body(names: &PidboxNames, delivery_tag: &str, expires_at: f64) -> String {
    let body = json!({
        "method": "ping",
        "arguments": {},
        "destination": null,
        "pattern": null,
        "matcher": null,
        "ticket": names.ticket,
        "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": names.oid},
    });
    json!({
        "body": aws_smithy_types::base64::encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires_at},
        "properties": {
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    })
    .to_string()
}

/// The worker names in a reply to `ticket`, or `None` when the message is not one.
pub fn reply_workers(message: &[u8], ticket: &str) -> Option<Vec<String>> {
    let envelope: Value = serde_json::from_slice(message).ok()?;
    if envelope["headers"]["ticket"].as_str() != Some(ticket) {
        return None;
    }
    let body = envelope["body"].as_str()?;
    let body = match envelope["properties"]["body_encoding"].as_str() {
        Some("base64") => aws_smithy_types::base64::decode(body).ok()?,
        _ => body.as_bytes().to_vec(),
    };
    let body: Value = serde_json::from_slice(&body).ok()?;
    Some(body.as_object()?.keys().cloned().collect())
}

/// A fresh random id in UUID form (for the reply queue, the ticket and the delivery tag).
fn fresh_id() -> String {
    let mut seed = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut seed);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed);
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let h = hasher.finalize().to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The platform's broker, from config.yml (Tutor builds `redis://[user:password@]host:port/db`
/// from these keys).
fn broker(cfg: &TutorConfig) -> Result<(RedisEndpoint, i64), String> {
    let host = config_text(cfg, "REDIS_HOST").unwrap_or_else(|| "redis".into());
    let port = cfg
        .get_u16("REDIS_PORT")
        .filter(|p| *p != 0)
        .ok_or("REDIS_PORT in config.yml is not a port (1-65535)")?;
    let db = cfg
        .get("OPENEDX_CELERY_REDIS_DB")
        .and_then(|v| v.as_i64())
        .filter(|d| *d >= 0)
        .ok_or("OPENEDX_CELERY_REDIS_DB in config.yml is not a database number")?;
    let username = config_text(cfg, "REDIS_USERNAME").filter(|u| !u.is_empty());
    let password = config_text(cfg, "REDIS_PASSWORD")
        .filter(|p| !p.is_empty())
        .map(Secret::new);
    Ok((
        RedisEndpoint {
            host,
            port,
            // Tutor sends the password only with a username.
            password: password.filter(|_| username.is_some()),
            username,
            tls: None,
            db: Some(db),
        },
        db,
    ))
}

pub async fn check(cfg: &TutorConfig, wait: Duration) -> Vec<CheckResult> {
    let (endpoint, db) = match broker(cfg) {
        Ok(b) => b,
        Err(e) => {
            return vec![CheckResult::failed(
                SERVICE,
                "broker",
                e,
                "fix the setting in config.yml (tutor config save --set KEY=VALUE), then offload check again",
            )]
        }
    };
    let address = format!("{}:{} db {db}", endpoint.host, endpoint.port);
    let mut conn = match endpoint.connect(db).await {
        Ok(c) => c,
        Err(e) => {
            return vec![CheckResult::failed(
                SERVICE,
                "broker",
                format!("cannot use the Redis broker at {address}: {e}"),
                "check REDIS_HOST, REDIS_PORT, REDIS_USERNAME and REDIS_PASSWORD in config.yml against the new Redis, and that this machine reaches it",
            )]
        }
    };
    let mut out = vec![ping(&mut conn, db, &address, wait).await];
    out.push(backlog(&mut conn, &address).await);
    out
}

/// Publish a ping on the control exchange and gather the workers' answers.
async fn ping(
    conn: &mut MultiplexedConnection,
    db: i64,
    address: &str,
    wait: Duration,
) -> CheckResult {
    let names = PidboxNames::new(db, &fresh_id(), &fresh_id());
    let name = "workers (control ping)";
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + wait.as_secs_f64();
    let started = Instant::now();
    let bound: redis::RedisResult<()> = redis::cmd("SADD")
        .arg(&names.binding_set)
        .arg(&names.binding)
        .query_async(conn)
        .await;
    if let Err(e) = bound {
        return CheckResult::failed(
            SERVICE,
            name,
            format!("cannot bind a reply queue on {address}: {e}"),
            "the platform's Redis user needs the rights Celery uses (SADD, PUBLISH, BRPOP): check REDIS_USERNAME's ACL on the new Redis",
        );
    }
    let listeners: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(&names.channel)
        .arg(ping_body(&names, &fresh_id(), expires))
        .query_async(conn)
        .await;
    let result = match listeners {
        Err(e) => CheckResult::failed(
            SERVICE,
            name,
            format!("cannot publish on {address}: {e}"),
            "check REDIS_USERNAME's ACL on the new Redis (Celery needs PUBLISH)",
        ),
        Ok(0) => CheckResult::failed(
            SERVICE,
            name,
            format!("no Celery worker listens on {address} (nobody is subscribed to {})", names.channel),
            "start the workers on the new servers: tutor local start -d lms-worker cms-worker (Kubernetes: tutor k8s start), and check that they reach the new Redis (tutor local logs lms-worker)",
        ),
        Ok(listeners) => gather(conn, &names, listeners, started, wait, address).await,
    };
    // offload's binding and reply queue go away whatever happened.
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("SREM")
        .arg(&names.binding_set)
        .arg(&names.binding)
        .ignore()
        .cmd("DEL")
        .arg(&names.reply_queue)
        .ignore()
        .query_async(conn)
        .await;
    result
}

/// Wait for up to `listeners` answers on the reply queue, until `wait` has passed.
async fn gather(
    conn: &mut MultiplexedConnection,
    names: &PidboxNames,
    listeners: i64,
    started: Instant,
    wait: Duration,
    address: &str,
) -> CheckResult {
    let name = "workers (control ping)";
    let mut workers: Vec<String> = Vec::new();
    let mut first: Option<Duration> = None;
    while (workers.len() as i64) < listeners {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        // BRPOP takes whole or fractional seconds; at least 0.1 s, so it never blocks forever.
        let secs = left.as_secs_f64().max(0.1);
        let popped: redis::RedisResult<Option<(String, Vec<u8>)>> = redis::cmd("BRPOP")
            .arg(&names.reply_queue)
            .arg(format!("{secs:.2}"))
            .query_async(conn)
            .await;
        match popped {
            Ok(Some((_, message))) => {
                if let Some(answered) = reply_workers(&message, &names.ticket) {
                    first.get_or_insert(started.elapsed());
                    workers.extend(answered);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return CheckResult::failed(
                    SERVICE,
                    name,
                    format!("waiting for the workers' answers on {address} failed: {e}"),
                    "check REDIS_USERNAME's ACL on the new Redis (Celery needs BRPOP), then offload check again",
                )
            }
        }
    }
    workers.sort();
    workers.dedup();
    match first {
        Some(after) => {
            let mut detail = format!(
                "{} worker(s) consuming from {address} answered a ping in {:.2} s: {}",
                workers.len(),
                after.as_secs_f64(),
                workers.join(", ")
            );
            if (workers.len() as i64) < listeners {
                detail.push_str(&format!(
                    " ({listeners} client(s) listen for control messages; the others did not answer within {:.0} s)",
                    wait.as_secs_f64()
                ));
            }
            CheckResult::ok(SERVICE, name, detail)
        }
        None => CheckResult::failed(
            SERVICE,
            name,
            format!(
                "{listeners} client(s) listen for Celery's control messages on {address}, but none answered a ping within {:.0} s",
                wait.as_secs_f64()
            ),
            "the workers may be busy or stuck: tutor local logs lms-worker cms-worker; restart them (tutor local restart lms-worker cms-worker), or give them longer with --celery-timeout",
        ),
    }
}

/// The tasks waiting in every queue bound on the broker database.
async fn backlog(conn: &mut MultiplexedConnection, address: &str) -> CheckResult {
    let name = "queues";
    let mut queues: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("_kombu.binding.*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await;
        let (next, keys) = match page {
            Ok(p) => p,
            Err(e) => {
                return CheckResult::new(
                    SERVICE,
                    name,
                    CheckStatus::Warning,
                    format!("cannot list the queues on {address}: {e}"),
                )
            }
        };
        for key in keys {
            if key.ends_with(".pidbox") {
                continue;
            }
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap_or_default();
            for m in members {
                if let Some(queue) = m.split(SEP).nth(2).filter(|q| !q.is_empty()) {
                    queues.push(queue.to_string());
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    queues.sort();
    queues.dedup();
    if queues.is_empty() {
        return CheckResult::new(
            SERVICE,
            name,
            CheckStatus::Ok,
            format!("no queue is bound on {address} yet (workers bind theirs as they start)"),
        );
    }
    let mut pipe = redis::pipe();
    for q in &queues {
        pipe.cmd("LLEN").arg(q);
        for p in PRIORITY_STEPS {
            pipe.cmd("LLEN").arg(format!("{q}{SEP}{p}"));
        }
    }
    let lengths: Vec<u64> = match pipe.query_async(conn).await {
        Ok(l) => l,
        Err(e) => {
            return CheckResult::new(
                SERVICE,
                name,
                CheckStatus::Warning,
                format!("cannot read the queues' lengths on {address}: {e}"),
            )
        }
    };
    let per_queue: Vec<(String, u64)> = queues
        .iter()
        .zip(lengths.chunks(1 + PRIORITY_STEPS.len()))
        .map(|(q, l)| (q.clone(), l.iter().sum()))
        .collect();
    let waiting: u64 = per_queue.iter().map(|(_, n)| n).sum();
    let listed: Vec<String> = per_queue.iter().map(|(q, n)| format!("{q} {n}")).collect();
    CheckResult::ok(
        SERVICE,
        name,
        format!(
            "{waiting} task(s) waiting in {} queue(s): {}",
            per_queue.len(),
            listed.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_is_the_envelope_kombu_reads() {
        let names = PidboxNames::new(2, "oid-1", "ticket-1");
        assert_eq!(names.channel, "/2.celery.pidbox");
        assert_eq!(names.reply_queue, "oid-1.reply.celery.pidbox");
        assert_eq!(
            names.binding,
            "oid-1\x06\x16oid-1\x06\x16oid-1.reply.celery.pidbox"
        );
        let message: Value = serde_json::from_str(&ping_body(&names, "tag", 10.5)).unwrap();
        assert_eq!(
            message["properties"]["delivery_info"]["exchange"],
            "celery.pidbox"
        );
        assert_eq!(message["properties"]["body_encoding"], "base64");
        let body = aws_smithy_types::base64::decode(message["body"].as_str().unwrap()).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["method"], "ping");
        assert_eq!(body["ticket"], "ticket-1");
        assert_eq!(body["reply_to"]["routing_key"], "oid-1");
    }

    #[test]
    fn replies_are_read_by_ticket() {
        let reply = json!({
            "body": aws_smithy_types::base64::encode(r#"{"celery@lms-worker": {"ok": "pong"}}"#),
            "headers": {"ticket": "t", "clock": 3},
            "properties": {"body_encoding": "base64"},
        })
        .to_string();
        assert_eq!(
            reply_workers(reply.as_bytes(), "t"),
            Some(vec!["celery@lms-worker".to_string()])
        );
        assert_eq!(reply_workers(reply.as_bytes(), "other"), None);
        assert_eq!(reply_workers(b"not json", "t"), None);
    }
}
