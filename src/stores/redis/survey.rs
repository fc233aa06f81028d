//! What the plan says about a Redis migration before anything is written: server versions,
//! memory on the target against the data, databases and what Tutor uses each for, and whether
//! something is still writing to the source (the Celery queues), with how to drain it.

use redis::aio::MultiplexedConnection;
use redis::RedisResult;

use super::values::{bytes_of, int_of};
use super::{RedisStore, SCAN_COUNT};
use crate::core::store::{Check, Survey};
use crate::core::{Side, StoreError};

/// `INFO section` as text.
pub async fn info(conn: &mut MultiplexedConnection, section: &str) -> RedisResult<String> {
    redis::cmd("INFO").arg(section).query_async(conn).await
}

/// One `name:value` line of INFO text.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

pub fn info_u64(info: &str, name: &str) -> Option<u64> {
    info_field(info, name).and_then(|v| v.parse().ok())
}

/// `db0:keys=12,expires=3,avg_ttl=0` lines as (database, keys).
pub fn parse_keyspace(info: &str) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = info
        .lines()
        .filter_map(|l| {
            let (db, rest) = l.trim().split_once(':')?;
            let db = db.strip_prefix("db")?.parse().ok()?;
            let keys = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse()
                .ok()?;
            Some((db, keys))
        })
        .collect();
    out.sort();
    out
}

pub async fn server_version(conn: &mut MultiplexedConnection) -> RedisResult<String> {
    let text = info(conn, "server").await?;
    Ok(info_field(&text, "redis_version")
        .unwrap_or("unknown")
        .to_string())
}

/// Whether `x.y.z` is at least `major.minor`.
pub fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// Queue names bound in kombu's `_kombu.binding.*` sets (members are
/// `routing_key \x06\x16 pattern \x06\x16 queue`), and the pending work in them.
async fn celery_queues(conn: &mut MultiplexedConnection) -> RedisResult<(Vec<(String, i64)>, i64)> {
    let mut bindings = Vec::new();
    let mut cursor = 0u64;
    let mut scanned = 0usize;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("_kombu.binding.*")
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        bindings.extend(keys);
        scanned += SCAN_COUNT;
        // A broker database is small; stop looking in a big one.
        if next == 0 || scanned >= 200_000 {
            break;
        }
        cursor = next;
    }
    let mut queues: Vec<String> = Vec::new();
    for b in &bindings {
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS").arg(b).query_async(conn).await?;
        for m in members {
            let text = String::from_utf8_lossy(&m).into_owned();
            if let Some(q) = text.rsplit("\x06\x16").next().filter(|q| !q.is_empty()) {
                queues.push(q.to_string());
            }
        }
    }
    queues.sort();
    queues.dedup();
    if queues.is_empty() {
        queues.push("celery".into());
    }
    let mut pipe = redis::pipe();
    for q in &queues {
        pipe.cmd("LLEN").arg(q);
    }
    pipe.cmd("HLEN").arg("unacked");
    let replies = super::copy::run(conn, &pipe).await?;
    let lens: Vec<i64> = replies.iter().map(|r| int_of(r).unwrap_or(0)).collect();
    let unacked = *lens.last().unwrap_or(&0);
    Ok((queues.into_iter().zip(lens).collect::<Vec<_>>(), unacked))
}

/// Clients of the source other than this connection (replicas and monitors left out).
async fn other_clients(conn: &mut MultiplexedConnection) -> RedisResult<Vec<String>> {
    let me: i64 = redis::cmd("CLIENT").arg("ID").query_async(conn).await?;
    let list = bytes_of(
        redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("normal")
            .query_async(conn)
            .await?,
    )?;
    let list = String::from_utf8_lossy(&list).into_owned();
    Ok(list
        .lines()
        .filter(|l| !l.contains(&format!("id={me} ")))
        .map(|l| {
            let field = |name: &str| {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix(name))
                    .unwrap_or("")
                    .to_string()
            };
            let name = field("name=");
            let addr = field("addr=");
            if name.is_empty() {
                format!("{addr} (db {})", field("db="))
            } else {
                format!("{name} at {addr} (db {})", field("db="))
            }
        })
        .collect())
}

/// How the copy will read the source, and what a snapshot costs it: a fork per database, whose
/// copy-on-write pages can take up to the source's resident memory again while it is written.
fn read_path(store: &RedisStore, source_memory: &str, databases: usize) -> String {
    if !store.snapshot.load(std::sync::atomic::Ordering::SeqCst) {
        return "keys are read live with SCAN (--redis-scan, or --redis-typed)".to_string();
    }
    if store.source.tls.is_some() {
        return "keys are read live with SCAN: snapshots are read over plain TCP only, and the source uses TLS".to_string();
    }
    let rss = info_u64(source_memory, "used_memory_rss").unwrap_or(0);
    let machine = info_u64(source_memory, "total_system_memory").unwrap_or(0);
    let tight = machine > 0 && rss.saturating_mul(2) > machine;
    format!(
        "{}each database is read from a snapshot the source makes as for a new replica ({databases} fork(s), as BGSAVE does; where the source refuses, keys are read live with SCAN). While a fork writes its snapshot, pages changed on the source are copied: up to {} more in the worst case{}; --redis-scan reads without forking",
        if tight { "warning: " } else { "" },
        mib(rss),
        if machine > 0 {
            format!(", on a machine of {}", mib(machine))
        } else {
            String::new()
        }
    )
}

/// Whether `offload follow` can read the source's replication stream, and for how long the
/// source's backlog keeps what a stopped follower has not read: information, never a failure
/// (without it, the final pass uses the delta pass).
async fn follow_path(store: &RedisStore, src: &mut MultiplexedConnection) -> String {
    if store.source.tls.is_some() {
        return "not followable: the replication stream is read over plain TCP only, and the source uses TLS; the final pass copies what changed with the delta pass".into();
    }
    let user = store.source.username.as_deref().unwrap_or("default");
    let allowed = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(user)
        .arg("PSYNC")
        .arg("?")
        .arg("-1")
        .query_async::<String>(src)
        .await;
    // OK, or (Redis 7) the reason the user may not run it; an error when ACL DRYRUN itself is
    // not allowed or not known (older servers, managed services).
    let allowed = match allowed {
        Ok(answer) if answer == "OK" => Some(Ok(())),
        Ok(why) => Some(Err(why)),
        Err(_) => None,
    };
    let backlog = redis::cmd("CONFIG")
        .arg("GET")
        .arg("repl-backlog-size")
        .query_async::<Vec<String>>(src)
        .await
        .ok()
        .and_then(|v| v.get(1).and_then(|n| n.parse::<u64>().ok()));
    let stats = info(src, "stats").await.unwrap_or_default();
    let input_kbps = info_field(&stats, "instantaneous_input_kbps").and_then(|v| v.parse().ok());
    follow_detail(allowed, backlog, input_kbps)
}

/// The plan's words for [`follow_path`]: `allowed` is the ACL's answer for PSYNC (`None`: not
/// known), `backlog` the source's `repl-backlog-size`, `input_kbps` what clients send it now
/// (an upper bound of its write rate).
fn follow_detail(
    allowed: Option<Result<(), String>>,
    backlog: Option<u64>,
    input_kbps: Option<f64>,
) -> String {
    let acl = match &allowed {
        Some(Ok(())) => "the source's user may read the replication stream (PSYNC)".to_string(),
        Some(Err(why)) => format!(
            "not followable as configured: the source's user may not run PSYNC ({why}); grant `+psync +replconf +sync` in its ACL to follow, otherwise the final pass uses the delta pass"
        ),
        None => "whether the source's user may run PSYNC could not be checked (ACL DRYRUN not allowed); it needs `+psync +replconf +sync`".to_string(),
    };
    if matches!(allowed, Some(Err(_))) {
        return acl;
    }
    let backlog_text = match (backlog, input_kbps) {
        (Some(b), Some(k)) if k > 0.0 => format!(
            "; its repl-backlog-size of {} holds at least {:.0} s of writes at the current rate ({k:.1} KB/s in): a follower stopped for longer starts again from new snapshots; raise it (CONFIG SET repl-backlog-size) to stop for longer",
            mib(b),
            b as f64 / (k * 1024.0)
        ),
        (Some(b), _) => format!(
            "; its repl-backlog-size of {} keeps that many bytes of writes for a stopped follower (beyond it, following starts again from new snapshots)",
            mib(b)
        ),
        (None, _) => "; its repl-backlog-size could not be read (CONFIG GET not allowed)".into(),
    };
    format!("{acl}{backlog_text}")
}

pub async fn survey(store: &RedisStore) -> Result<Survey, StoreError> {
    let mut survey = Survey::default();
    let err = |side: Side| move |e: redis::RedisError| store.err(side, &e);
    let mut src = store.conn(Side::Source, 0).await?;
    let mut tgt = store.conn(Side::Target, 0).await?;
    for (side, conn) in [(Side::Source, &mut src), (Side::Target, &mut tgt)] {
        let version = server_version(conn).await.map_err(err(side))?;
        let e = store.endpoint(side);
        survey.checks.push(Check::new(
            format!("{side} reachable"),
            true,
            format!(
                "{} as {}{}: redis {version}",
                e.address(),
                e.user(),
                if e.tls.is_some() { " over TLS" } else { "" }
            ),
        ));
        match side {
            Side::Source => survey.source_version = format!("redis {version}"),
            Side::Target => survey.target_version = format!("redis {version}"),
        }
    }
    let selected = store.selected().await?;
    let source_memory = info(&mut src, "memory").await.map_err(err(Side::Source))?;
    let target_memory = info(&mut tgt, "memory").await.map_err(err(Side::Target))?;
    let keyspace = store.keyspace(Side::Source).await?;
    let total_keys: u64 = keyspace.iter().map(|(_, n)| n).sum();
    let selected_keys: u64 = selected.iter().map(|(_, n)| n).sum();
    let dataset = info_u64(&source_memory, "used_memory_dataset")
        .or_else(|| info_u64(&source_memory, "used_memory"))
        .unwrap_or(0);
    let needed = dataset
        .saturating_mul(selected_keys)
        .checked_div(total_keys)
        .unwrap_or(0);
    let needed = needed + needed / 5;
    let max = info_u64(&target_memory, "maxmemory").unwrap_or(0);
    let used = info_u64(&target_memory, "used_memory").unwrap_or(0);
    let policy = info_field(&target_memory, "maxmemory_policy")
        .unwrap_or("noeviction")
        .to_string();
    let fits = max == 0 || max >= used + needed;
    survey.checks.push(Check::new(
        "target memory",
        fits,
        if max == 0 {
            format!("no maxmemory limit on the target; the data takes about {} on the source", mib(needed))
        } else if fits {
            format!(
                "maxmemory {} holds the data (about {} with 20% headroom) plus the {} in use{}",
                mib(max),
                mib(needed),
                mib(used),
                if policy != "noeviction" {
                    format!("; note: maxmemory-policy is {policy}, so the target would evict keys silently if it filled up")
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "the target's maxmemory is {} but the data needs about {} (with 20% headroom) and {} is already in use: raise maxmemory on the target or choose a bigger server (or leave the cache out with --redis-dbs)",
                mib(max),
                mib(needed),
                mib(used)
            )
        },
    ));
    let replication = info(&mut tgt, "replication").await.unwrap_or_default();
    let cluster = info(&mut tgt, "cluster").await.unwrap_or_default();
    let (writable, detail) = redundancy(&replication, &cluster);
    survey
        .checks
        .push(Check::new("target redundancy", writable, detail));
    let highest = selected.iter().map(|(c, _)| c.target).max().unwrap_or(0);
    let databases: Option<i64> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async::<Vec<String>>(&mut tgt)
        .await
        .ok()
        .and_then(|v| v.get(1).and_then(|n| n.parse().ok()));
    survey.checks.push(match databases {
        Some(n) => Check::new(
            "target databases",
            highest < n,
            if highest < n {
                format!("the target has {n} databases; the highest one used is {highest}")
            } else {
                format!("the target has only {n} databases but database {highest} is needed: raise `databases` on the target, or map databases with --redis-dbs SRC:DST")
            },
        ),
        None => Check::new(
            "target databases",
            true,
            "CONFIG GET is not allowed on the target: a missing database is reported when the copy opens it, before writing",
        ),
    });

    // Who else talks to the source: no sleep needed, the server keeps the numbers.
    let stats = info(&mut src, "stats").await.map_err(err(Side::Source))?;
    let ops = info_u64(&stats, "instantaneous_ops_per_sec").unwrap_or(0);
    let others = other_clients(&mut src).await.unwrap_or_default();
    survey.checks.push(Check::new(
        "writers",
        true,
        if others.is_empty() {
            format!("no other client is connected to the source (about {ops} commands/s, offload's own included)")
        } else {
            format!(
                "warning: {} other client(s) are connected to the source ({}{}) and it runs about {ops} commands/s: the platform is still running. Keys written during the copy may be missed; stop it (see the Celery note) before the final copy",
                others.len(),
                others.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if others.len() > 5 { ", ..." } else { "" }
            )
        },
    ));

    survey.checks.push(Check::new(
        "read path",
        true,
        read_path(store, &source_memory, selected.len()),
    ));

    survey.checks.push(Check::new(
        "follow (replication stream)",
        true,
        follow_path(store, &mut src).await,
    ));

    for (choice, keys) in &selected {
        let db = choice.source;
        let into = if choice.target != db {
            format!(" -> target db{}", choice.target)
        } else {
            String::new()
        };
        if db == store.options.celery_db {
            let mut c = store.conn(Side::Source, db).await?;
            let (queues, unacked) = celery_queues(&mut c).await.map_err(err(Side::Source))?;
            let waiting: i64 = queues.iter().map(|(_, n)| n).sum();
            let shown: Vec<String> = queues
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(q, n)| format!("{q}={n}"))
                .collect();
            survey.notes.push(format!(
                "db{db}{into}: Celery broker (queues: drain before switching), {keys} keys; {waiting} task(s) waiting{}, {unacked} unacknowledged. To drain: stop the LMS and CMS (`tutor local stop lms cms`), let the workers finish until every queue list is empty and `unacked` is gone (`redis-cli -n {db} LLEN <queue>` / `HLEN unacked`), then stop the workers (`tutor local stop lms-worker cms-worker`) and copy again with --if-exists replace",
                if shown.is_empty() { String::new() } else { format!(" ({})", shown.join(", ")) }
            ));
        } else if db == store.options.cache_db {
            survey.notes.push(format!(
                "db{db}{into}: Django cache, {keys} keys: safe to lose (the platform refills it); leave it out with --redis-dbs {}",
                store.options.celery_db
            ));
        } else {
            survey.notes.push(format!(
                "db{db}{into}: {keys} keys (not one Tutor uses by default)"
            ));
        }
    }
    if selected.is_empty() {
        survey
            .notes
            .push("the source holds no keys: nothing to copy".to_string());
    }
    Ok(survey)
}

/// What the target's `INFO replication` and `INFO cluster` say about its redundancy: whether it
/// takes writes (a replica does not), and information for the plan, since Tutor's scaling guide
/// warns that a single Redis server is a single point of failure.
fn redundancy(replication: &str, cluster: &str) -> (bool, String) {
    if info_field(replication, "role") == Some("slave") {
        return (
            false,
            "the target is a replica (role:slave) and refuses writes: point --to-redis at its primary".into(),
        );
    }
    if info_field(cluster, "cluster_enabled") == Some("1") {
        return (
            false,
            "the target runs in cluster mode, which has only database 0 and which Tutor's Redis settings do not address: use a primary with replicas instead".into(),
        );
    }
    match info_u64(replication, "connected_slaves") {
        Some(n) if n > 0 => (true, format!("the target has {n} connected replica(s)")),
        Some(_) => (true, "the target has no connected replica: a single point of failure, as Tutor's scaling guide warns (information, not an error; a Sentinel or managed failover is not visible from the server)".into()),
        None => (true, "INFO replication is not allowed on the target: offload cannot tell whether it has replicas".into()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn redundancy_reads_replicas_roles_and_cluster_mode() {
        let (ok, text) = redundancy(
            "role:master\r\nconnected_slaves:0\r\n",
            "cluster_enabled:0\r\n",
        );
        assert!(ok && text.contains("single point of failure"), "{text}");
        let (ok, text) = redundancy("role:master\r\nconnected_slaves:2\r\n", "");
        assert!(ok && text.contains("2 connected replica"), "{text}");
        let (ok, text) = redundancy("role:slave\r\n", "");
        assert!(!ok && text.contains("--to-redis"), "{text}");
        let (ok, text) = redundancy(
            "role:master\r\nconnected_slaves:0\r\n",
            "cluster_enabled:1\r\n",
        );
        assert!(!ok && text.contains("cluster mode"), "{text}");
    }
    use super::*;

    #[test]
    fn the_plan_says_whether_and_for_how_long_the_source_can_be_followed() {
        let ok = follow_detail(Some(Ok(())), Some(1024 * 1024), Some(10.0));
        assert!(ok.contains("may read the replication stream"), "{ok}");
        assert!(ok.contains("102 s of writes"), "{ok}");
        let refused = follow_detail(Some(Err("NOPERM psync".into())), Some(1), Some(1.0));
        assert!(refused.contains("+psync +replconf +sync"), "{refused}");
        assert!(!refused.contains("backlog"), "{refused}");
        let unknown = follow_detail(None, None, None);
        assert!(unknown.contains("could not be checked"), "{unknown}");
        assert!(unknown.contains("could not be read"), "{unknown}");
    }

    #[test]
    fn reads_info_text() {
        let ks =
            "# Keyspace\r\ndb0:keys=12,expires=3,avg_ttl=0\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace(ks), vec![(0, 12), (3, 1)]);
        let mem = "used_memory:1000\r\nused_memory_dataset:600\r\nmaxmemory_policy:noeviction\r\n";
        assert_eq!(info_u64(mem, "used_memory"), Some(1000));
        assert_eq!(info_u64(mem, "used_memory_dataset"), Some(600));
        assert_eq!(info_field(mem, "maxmemory_policy"), Some("noeviction"));
        assert!(version_at_least("7.0.15", 7, 0));
        assert!(!version_at_least("6.2.14", 7, 0));
    }
}
