//! Following a Redis source after the copy, as a replica does: `PSYNC <replid> <offset+1>`
//! from the earliest database's snapshot, commands applied to the target database by database
//! (the job's selection and `SRC:DST` remap), each batch in one MULTI/EXEC together with the
//! marker keys that say where each database now stands (see [`super::position`]), so a kill at
//! any moment neither repeats nor loses a command. Where the source's backlog no longer holds
//! the point (or the copy gave none), the job's databases are loaded again from new snapshots
//! and followed from there. `REPLCONF ACK` every second keeps the link.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::copy::{self, Dumped};
use super::endpoint::RedisEndpoint;
use super::position::{DbEntry, Marker, RedisPosition, Start, MARKER_KEY};
use super::replica::{parse_fullresync, SnapshotAt, SnapshotFeed};
use super::stream::{encode, next_command, KeySpecs, Keys};
use super::survey;
use super::values::display_key;
use crate::core::follow::{Applied, Follower, Lag, StreamPosition, Touched};
use crate::core::{Cursor, ErrorKind, Side, StoreError, StoreKind};

/// Commands applied in one MULTI/EXEC at most (a source transaction is never split).
const BATCH_COMMANDS: usize = 2_000;
/// Argument bytes applied in one MULTI/EXEC at most.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How often the follower tells the source how far it has read.
const ACK_EVERY: Duration = Duration::from_secs(1);
/// The source pings its replicas every 10 s by default: this long without a byte is a dead link.
const SILENT_LINK: Duration = Duration::from_secs(60);
/// Longest wait for the rest of a source transaction once its MULTI arrived.
const REST_OF_TRANSACTION: Duration = Duration::from_secs(30);
/// New snapshots tried in a row before following gives up (the backlog keeps overflowing).
const RESYNC_ATTEMPTS: u32 = 3;
/// Attempts to reconnect a lost link before following stops with an error.
const RECONNECTS: u32 = 5;
/// A key's value larger than this in a snapshot cannot be restored in one RESTORE.
const LARGEST_PAYLOAD: usize = 512 * 1024 * 1024;

/// The key of a Redis unit's row, as touched keys and `row_digests_at` name it.
pub fn key_cursor(key: &[u8]) -> Cursor {
    match std::str::from_utf8(key) {
        Ok(text) => Cursor(json!({ "key": text })),
        Err(_) => Cursor(json!({ "key_hex": hex(key) })),
    }
}

/// A key back from [`key_cursor`].
pub fn cursor_key(c: &Cursor) -> Option<Vec<u8>> {
    if let Some(text) = c.0.get("key").and_then(|v| v.as_str()) {
        return Some(text.as_bytes().to_vec());
    }
    let h = c.0.get("key_hex")?.as_str()?;
    if h.len() % 2 != 0 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One command for the target, in a target database.
struct Op {
    db: i64,
    args: Vec<Vec<u8>>,
}

/// Commands read and translated but not applied yet.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    bytes: usize,
    touched: Vec<Touched>,
    transactions: u64,
}

/// A source transaction being read (MULTI seen, EXEC not yet).
#[derive(Default)]
struct Open {
    ops: Vec<Op>,
    bytes: usize,
    touched: Vec<Touched>,
}

/// The replication link to the source.
struct Link {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already read as commands.
    used: usize,
    last_ack: Instant,
    last_byte: Instant,
}

impl Link {
    async fn fill(&mut self, within: Duration) -> std::io::Result<Option<usize>> {
        if self.used > 0 && self.used == self.buf.len() {
            self.buf.clear();
            self.used = 0;
        } else if self.used > 1024 * 1024 {
            self.buf.drain(..self.used);
            self.used = 0;
        }
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout(within, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Ok(None),
            Ok(Ok(0)) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source closed the replication link",
            )),
            Ok(Ok(n)) => {
                self.last_byte = Instant::now();
                Ok(Some(n))
            }
            Ok(Err(e)) => Err(e),
        }
    }

    /// One reply line of the handshake (blank keep-alive lines skipped).
    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(nl) = self.buf[self.used..].iter().position(|b| *b == b'\n') {
                let raw = &self.buf[self.used..self.used + nl];
                let text =
                    String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
                self.used += nl + 1;
                if text.is_empty() {
                    continue;
                }
                return Ok(text);
            }
            if self.fill(Duration::from_secs(30)).await?.is_none() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the source did not answer within 30 s",
                ));
            }
        }
    }

    async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.stream.write_all(&encode(args)).await
    }

    async fn ack(&mut self, offset: u64) -> std::io::Result<()> {
        self.last_ack = Instant::now();
        self.send(&[b"REPLCONF", b"ACK", offset.to_string().as_bytes()])
            .await
    }
}

/// What asking the source to continue gave.
enum Psync {
    Continue(Link, Option<String>),
    /// The source offers only a full resynchronization (the point left its backlog, or
    /// another replication history).
    Full,
}

/// A source database followed: its target database and its unit.
#[derive(Debug, Clone)]
pub struct Followed {
    pub target: i64,
    pub unit: String,
}

/// Applies a Redis source's replication stream to its target (see the module docs).
pub struct RedisFollower {
    source: RedisEndpoint,
    target: RedisEndpoint,
    dbs: BTreeMap<i64, Followed>,
    specs: KeySpecs,
    info: MultiplexedConnection,
    tgt: MultiplexedConnection,
    link: Option<Link>,
    replid: String,
    /// The stream up to here is applied (or held by a snapshot) for every followed database.
    applied: u64,
    applied_db: Option<i64>,
    /// Per source database, the offset its snapshot holds everything up to.
    skip: BTreeMap<i64, u64>,
    resync: bool,
    /// Whether the last `apply` ended cleanly (the target holds exactly what it returned).
    clean: bool,
    markers: bool,
}

impl RedisFollower {
    /// Open a follower of `dbs` from `from`, or from the target's markers where a follower
    /// wrote them later than the checkpoint.
    pub async fn open(
        source: RedisEndpoint,
        target: RedisEndpoint,
        dbs: BTreeMap<i64, Followed>,
        from: &StreamPosition,
    ) -> Result<RedisFollower, StoreError> {
        if source.tls.is_some() {
            return Err(StoreError::new(
                StoreKind::Redis,
                source.address(),
                ErrorKind::Unsupported,
                "the replication stream is read over plain TCP only, and this source uses TLS",
                "the final pass copies what changed with the delta pass (offload copy --resume --delta)",
            ));
        }
        let err = |side: Side, e: redis::RedisError| {
            let address = match side {
                Side::Source => source.address(),
                Side::Target => target.address(),
            };
            super::endpoint::map_error(side, &address, &e)
        };
        let mut info = source.connect(0).await.map_err(|e| err(Side::Source, e))?;
        let tgt = target.connect(0).await.map_err(|e| err(Side::Target, e))?;
        let reply: Value = redis::cmd("COMMAND")
            .query_async(&mut info)
            .await
            .unwrap_or(Value::Nil);
        let specs = KeySpecs::from_reply(&reply);
        let mut position = RedisPosition::parse(from).unwrap_or_default();
        let mut markers = false;
        for (src, f) in &dbs {
            let mut c = tgt.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("SELECT").arg(f.target).cmd("GET").arg(MARKER_KEY);
            let replies = copy::run(&mut c, &pipe)
                .await
                .map_err(|e| err(Side::Target, e))?;
            if let Some(Value::BulkString(text)) = replies.get(1) {
                markers = true;
                match Marker::decode(text) {
                    Some(Marker::At(e)) => position.set(*src, Some(e)),
                    Some(Marker::Loading) => position.set(*src, None),
                    None => {}
                }
            }
        }
        let followed: Vec<i64> = dbs.keys().copied().collect();
        let mut follower = RedisFollower {
            source,
            target,
            dbs,
            specs,
            info,
            tgt,
            link: None,
            replid: String::new(),
            applied: 0,
            applied_db: None,
            skip: BTreeMap::new(),
            resync: true,
            clean: true,
            markers,
        };
        if let Start::Continue {
            replid,
            offset,
            db,
            skip,
        } = position.start(&followed)
        {
            follower.replid = replid;
            follower.applied = offset;
            follower.applied_db = db;
            follower.skip = skip;
            follower.resync = false;
        }
        Ok(follower)
    }

    fn source_err(&self, kind: ErrorKind, detail: String, hint: &str) -> StoreError {
        StoreError::new(StoreKind::Redis, self.source.address(), kind, detail, hint)
    }

    fn target_err(&self, e: &redis::RedisError) -> StoreError {
        super::endpoint::map_error(Side::Target, &self.target.address(), e)
    }

    /// Where each followed database stands once the stream up to `offset` (with `db`
    /// selected) is applied.
    fn position_at(&self, offset: u64, db: Option<i64>) -> RedisPosition {
        let mut p = RedisPosition::default();
        for src in self.dbs.keys() {
            let entry = match self.skip.get(src) {
                Some(s) if *s > offset => DbEntry {
                    replid: self.replid.clone(),
                    offset: *s,
                    db: None,
                },
                _ => DbEntry {
                    replid: self.replid.clone(),
                    offset,
                    db,
                },
            };
            p.set(*src, Some(entry));
        }
        p
    }

    fn position(&self) -> StreamPosition {
        if self.resync {
            let mut p = RedisPosition::default();
            for src in self.dbs.keys() {
                p.set(*src, None);
            }
            return p.to_stream();
        }
        self.position_at(self.applied, self.applied_db).to_stream()
    }

    /// Connect and authenticate a replication link, and ask to continue at `offset + 1`.
    async fn psync(&self, replid: &str, offset: u64) -> Result<Psync, StoreError> {
        let io = |e: std::io::Error| {
            self.source_err(
                ErrorKind::Transient,
                format!("the replication link to the source failed: {e}"),
                "offload reconnects; if the source stays unreachable, check it and run `offload follow` again (it resumes from its checkpoint)",
            )
        };
        let addr = format!("{}:{}", self.source.host, self.source.port);
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection within 10 s",
                ))
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut link = Link {
            stream,
            buf: Vec::new(),
            used: 0,
            last_ack: Instant::now(),
            last_byte: Instant::now(),
        };
        let refused = |what: &str, answer: String| {
            self.source_err(
                ErrorKind::Auth,
                format!("the source refused {what}: {answer}"),
                "following reads the source's replication stream: the source's user needs `+psync +replconf +sync` in its ACL (or use the default user); otherwise the final pass uses the delta pass",
            )
        };
        if let Some(pw) = &self.source.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &self.source.username {
                args.push(u.as_bytes());
            }
            args.push(pw.expose().as_bytes());
            link.send(&args).await.map_err(io)?;
            let answer = link.line().await.map_err(io)?;
            if !answer.starts_with('+') {
                return Err(refused("the credentials", answer));
            }
        }
        link.send(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"])
            .await
            .map_err(io)?;
        let answer = link.line().await.map_err(io)?;
        if !answer.starts_with('+') {
            return Err(refused("REPLCONF", answer));
        }
        link.send(&[
            b"PSYNC",
            replid.as_bytes(),
            (offset + 1).to_string().as_bytes(),
        ])
        .await
        .map_err(io)?;
        let answer = link.line().await.map_err(io)?;
        if let Some(rest) = answer.strip_prefix("+CONTINUE") {
            let new_id = rest.trim();
            let new_id = (!new_id.is_empty()).then(|| new_id.to_string());
            return Ok(Psync::Continue(link, new_id));
        }
        if answer.starts_with("+FULLRESYNC") && parse_fullresync(&answer[1..]).is_some() {
            return Ok(Psync::Full);
        }
        Err(refused("PSYNC", answer))
    }

    /// Reconnect at the applied point, loading new snapshots when the source cannot continue.
    async fn connect(&mut self) -> Result<(), StoreError> {
        let mut attempts = 0;
        loop {
            if self.resync {
                attempts += 1;
                if attempts > RESYNC_ATTEMPTS {
                    return Err(self.source_err(
                        ErrorKind::Unsupported,
                        format!("the source's replication backlog overflowed {RESYNC_ATTEMPTS} times while new snapshots were loaded"),
                        "raise the source's repl-backlog-size (CONFIG SET repl-backlog-size 256mb) and run `offload follow` again, or let the final pass use the delta pass",
                    ));
                }
                self.load_snapshots().await?;
            }
            match self.psync(&self.replid.clone(), self.applied).await? {
                Psync::Continue(link, new_id) => {
                    if let Some(id) = new_id {
                        // A failover on the source's side: the same history under a new name.
                        self.replid = id;
                    }
                    self.link = Some(link);
                    return Ok(());
                }
                Psync::Full => {
                    tracing::warn!(store = "redis", offset = self.applied, "the source's replication backlog no longer holds where following stands (raise repl-backlog-size to avoid this)");
                    self.resync = true;
                }
            }
        }
    }

    /// Empty each followed target database and load it from a new snapshot of its source,
    /// marked as loading until it is complete.
    async fn load_snapshots(&mut self) -> Result<(), StoreError> {
        let mut taken: BTreeMap<i64, SnapshotAt> = BTreeMap::new();
        let units: Vec<&str> = self.dbs.values().map(|f| f.unit.as_str()).collect();
        tracing::warn!(store = "redis", units = %units.join(", "), "loading the followed databases from new snapshots of the source (each target database is emptied, then loaded); following goes on from there");
        for (src, f) in self.dbs.clone() {
            let mut pipe = redis::pipe();
            pipe.cmd("MULTI")
                .cmd("SELECT")
                .arg(f.target)
                .cmd("FLUSHDB")
                .cmd("SET")
                .arg(MARKER_KEY)
                .arg(Marker::Loading.encode())
                .cmd("EXEC");
            let replies = copy::run(&mut self.tgt, &pipe)
                .await
                .map_err(|e| self.target_err(&e))?;
            copy::first_error(&replies).map_err(|e| self.target_err(&e))?;
            self.markers = true;
            let mut feed = SnapshotFeed::open(&self.source, src, LARGEST_PAYLOAD, 2 * 1024 * 1024)
                .await
                .map_err(|e| {
                    self.source_err(
                        ErrorKind::Unsupported,
                        format!("no snapshot of database {src} from the source: {e}"),
                        "following loads a new snapshot when the source's backlog no longer holds its point: the source must allow PSYNC (ACL +psync +replconf +sync, plain TCP); otherwise the final pass uses the delta pass",
                    )
                    .in_unit(&f.unit)
                })?;
            tracing::info!(store = "redis", unit = %f.unit, replid = %feed.at.replid, offset = feed.at.offset, "loading the database from a new snapshot");
            let mut conn = self
                .target
                .connect(f.target)
                .await
                .map_err(|e| self.target_err(&e))?;
            while let Some(chunk) = feed.next().await {
                let chunk = chunk.map_err(|e| {
                    self.source_err(
                        ErrorKind::Transient,
                        format!("the snapshot of database {src} broke off: {e}"),
                        "run `offload follow` again: it loads the database again",
                    )
                    .in_unit(&f.unit)
                })?;
                let read_at = Instant::now();
                let mut group = Vec::with_capacity(chunk.len());
                for k in chunk {
                    let Some(payload) = k.payload else {
                        return Err(self.source_err(
                            ErrorKind::Unsupported,
                            format!("key {} is larger than one RESTORE can carry", display_key(&k.key)),
                            "the final pass copies this database with the delta pass instead (offload copy --resume --delta)",
                        ).in_unit(&f.unit));
                    };
                    group.push(Dumped {
                        pttl: feed.pttl(k.expire_at_ms),
                        key: k.key,
                        payload: Some(payload),
                    });
                }
                if let Err(e) = copy::restore_group(&mut conn, &group, read_at).await {
                    let mut err = self.target_err(&e).in_unit(&f.unit);
                    if copy::payload_rejected(&e) {
                        err.kind = ErrorKind::Unsupported;
                        err.hint = "following restores the source's snapshot payloads as they are: the target must run the same or a newer Redis than the source; otherwise the final pass uses the delta pass".into();
                    }
                    return Err(err);
                }
            }
            let entry = DbEntry::of_snapshot(&feed.at);
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(MARKER_KEY)
                .arg(Marker::At(entry).encode());
            let replies = copy::run(&mut conn, &pipe)
                .await
                .map_err(|e| self.target_err(&e))?;
            copy::first_error(&replies).map_err(|e| self.target_err(&e))?;
            taken.insert(src, feed.at);
        }
        let Some(first) = taken.values().min_by_key(|a| a.offset).cloned() else {
            return Ok(());
        };
        if taken.values().any(|a| a.replid != first.replid) {
            // The source restarted between two snapshots: load them again.
            return Ok(());
        }
        self.replid = first.replid;
        self.applied = first.offset;
        self.applied_db = None;
        self.skip = taken.into_iter().map(|(db, a)| (db, a.offset)).collect();
        self.resync = false;
        Ok(())
    }

    /// How far behind the source the applied point is, in bytes of the stream.
    async fn lag(&mut self) -> Lag {
        let behind = match survey::info(&mut self.info, "replication").await {
            Ok(text) => {
                let head = survey::info_u64(&text, "master_repl_offset");
                let id = survey::info_field(&text, "master_replid");
                match (head, id) {
                    (Some(h), Some(id)) if id == self.replid && !self.resync => {
                        Some(h.saturating_sub(self.applied))
                    }
                    (Some(h), _) => Some(h),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        Lag {
            seconds: None,
            behind,
            behind_unit: "bytes".into(),
        }
    }

    fn touch(
        &self,
        set: &mut HashSet<(String, Option<Vec<u8>>)>,
        out: &mut Vec<Touched>,
        unit: &str,
        key: Option<&[u8]>,
    ) {
        if set.insert((unit.to_string(), key.map(<[u8]>::to_vec))) {
            out.push(Touched {
                unit: unit.to_string(),
                key: key.map(key_cursor),
            });
        }
    }

    /// The target's commands for one source command of database `db` ending at stream offset
    /// `end`, with the units and keys they touch.
    fn translate(
        &self,
        db: i64,
        args: Vec<Vec<u8>>,
        end: u64,
        seen: &mut HashSet<(String, Option<Vec<u8>>)>,
        ops: &mut Vec<Op>,
        touched: &mut Vec<Touched>,
    ) -> Result<(), StoreError> {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let held = |d: i64| self.skip.get(&d).is_some_and(|s| end <= *s);
        let num = |i: usize| {
            args.get(i)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|t| t.parse::<i64>().ok())
        };
        let across = |what: &str, one: i64, other: i64| {
            self.source_err(
                ErrorKind::Unsupported,
                format!("the source ran {what} between database {one} and database {other}, and only one of them is followed"),
                "follow (and copy) both databases, or let the final pass copy them with the delta pass (offload copy --resume --delta)",
            )
        };
        if name == "flushall" {
            for (src, f) in &self.dbs {
                if !held(*src) {
                    ops.push(Op {
                        db: f.target,
                        args: vec![b"FLUSHDB".to_vec()],
                    });
                    self.touch(seen, touched, &f.unit, None);
                }
            }
            return Ok(());
        }
        if name == "swapdb" {
            // Whichever database is selected: the two it names count.
            let (Some(a), Some(b)) = (num(1), num(2)) else {
                return Ok(());
            };
            let (fa, fb) = (self.dbs.get(&a), self.dbs.get(&b));
            match (fa, fb) {
                (None, None) => {}
                (Some(fa), Some(fb)) => {
                    if held(a) && held(b) {
                        return Ok(());
                    }
                    ops.push(Op {
                        db: fa.target,
                        args: vec![
                            b"SWAPDB".to_vec(),
                            fa.target.to_string().into_bytes(),
                            fb.target.to_string().into_bytes(),
                        ],
                    });
                    self.touch(seen, touched, &fa.unit, None);
                    self.touch(seen, touched, &fb.unit, None);
                }
                _ => return Err(across("SWAPDB", a, b)),
            }
            return Ok(());
        }
        let Some(here) = self.dbs.get(&db) else {
            // A database the job does not copy; only a change reaching into one it copies matters.
            let into = match name.as_str() {
                "move" => num(2),
                "copy" => db_option(&args).and_then(|i| num(i + 1)),
                _ => None,
            };
            if let Some(other) = into.filter(|d| self.dbs.contains_key(d) && !held(*d)) {
                return Err(across(&name.to_ascii_uppercase(), db, other));
            }
            return Ok(());
        };
        if held(db) {
            return Ok(());
        }
        match name.as_str() {
            "flushdb" => {
                ops.push(Op {
                    db: here.target,
                    args: vec![b"FLUSHDB".to_vec()],
                });
                self.touch(seen, touched, &here.unit, None);
            }
            "move" => {
                let (Some(key), Some(to)) = (args.get(1).cloned(), num(2)) else {
                    return Ok(());
                };
                self.touch(seen, touched, &here.unit, Some(&key));
                match self.dbs.get(&to) {
                    Some(there) if !held(to) => {
                        self.touch(seen, touched, &there.unit, Some(&key));
                        ops.push(Op {
                            db: here.target,
                            args: vec![
                                b"MOVE".to_vec(),
                                key,
                                there.target.to_string().into_bytes(),
                            ],
                        });
                    }
                    // The key left the followed databases (or its new database's snapshot
                    // already holds it there): here it is gone.
                    _ => ops.push(Op {
                        db: here.target,
                        args: vec![b"DEL".to_vec(), key],
                    }),
                }
            }
            "copy" if db_option(&args).is_some() => {
                let i = db_option(&args).expect("checked");
                let Some(to) = num(i + 1) else { return Ok(()) };
                let Some(there) = self.dbs.get(&to).filter(|_| !held(to)) else {
                    return Ok(()); // the copy lands outside what is followed
                };
                let mut args = args;
                args[i + 1] = there.target.to_string().into_bytes();
                if let Some(dst) = args.get(2) {
                    self.touch(seen, touched, &there.unit, Some(dst));
                }
                ops.push(Op {
                    db: here.target,
                    args,
                });
            }
            _ => {
                match self.specs.keys(&args) {
                    Keys::These(keys) => {
                        for k in &keys {
                            self.touch(seen, touched, &here.unit, Some(k));
                        }
                    }
                    Keys::Unknown => self.touch(seen, touched, &here.unit, None),
                }
                ops.push(Op {
                    db: here.target,
                    args,
                });
            }
        }
        Ok(())
    }

    /// Apply `batch` and the markers of the point `(offset, db)` in one MULTI/EXEC.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        offset: u64,
        db: Option<i64>,
    ) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            self.applied = offset;
            self.applied_db = db;
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI");
        let mut selected = None;
        for op in &batch.ops {
            if selected != Some(op.db) {
                pipe.cmd("SELECT").arg(op.db);
                selected = Some(op.db);
            }
            let mut cmd = redis::cmd(&String::from_utf8_lossy(&op.args[0]));
            for a in &op.args[1..] {
                cmd.arg(a);
            }
            pipe.add_command(cmd);
        }
        let at = self.position_at(offset, db);
        for (src, f) in &self.dbs {
            if let Some(entry) = at.get(*src) {
                pipe.cmd("SELECT")
                    .arg(f.target)
                    .cmd("SET")
                    .arg(MARKER_KEY)
                    .arg(Marker::At(entry.clone()).encode());
            }
        }
        pipe.cmd("EXEC");
        let replies = copy::run(&mut self.tgt, &pipe)
            .await
            .map_err(|e| self.target_err(&e))?;
        self.markers = true;
        let refused = |what: String| {
            StoreError::new(
                StoreKind::Redis,
                self.target.address(),
                ErrorKind::Query,
                what,
                "the target no longer matches the source: copy the database again with `offload copy --resume --delta`, then follow again",
            )
        };
        // Replies: OK to MULTI, QUEUED per command, then EXEC's array.
        if let Some(Value::ServerError(e)) =
            replies.iter().find(|r| matches!(r, Value::ServerError(_)))
        {
            return Err(refused(format!(
                "the target refused a command of the source's stream, and nothing of the batch was applied: {}",
                e.details().unwrap_or(e.code())
            )));
        }
        let Some(Value::Array(results)) = replies.last() else {
            return Err(refused("the target aborted the batch's transaction".into()));
        };
        // Results follow the queued commands, SELECTs included; name the first failure.
        let mut names = Vec::new();
        let mut selected = None;
        for op in &batch.ops {
            if selected != Some(op.db) {
                names.push(None);
                selected = Some(op.db);
            }
            names.push(Some(op));
        }
        for (i, r) in results.iter().enumerate() {
            if let Value::ServerError(e) = r {
                let what = match names.get(i).copied().flatten() {
                    Some(op) => format!(
                        "{} {}",
                        String::from_utf8_lossy(&op.args[0]).to_ascii_uppercase(),
                        op.args.get(1).map(|k| display_key(k)).unwrap_or_default()
                    ),
                    None => "a command".into(),
                };
                return Err(refused(format!(
                    "the target refused {what} from the source's stream (the rest of the batch was applied): {}",
                    e.details().unwrap_or(e.code())
                )));
            }
        }
        self.applied = offset;
        self.applied_db = db;
        // Tests: a kill -9 after the target took a batch and before the job recorded it.
        crate::core::failpoint::reached("redis-follow-applied");
        Ok(())
    }

    /// Read and apply until about `wait` has passed (or more, to finish a transaction).
    async fn run(&mut self, wait: Duration) -> Result<Applied, StoreError> {
        let deadline = Instant::now() + wait;
        if self.link.is_none() {
            self.connect().await?;
        }
        let mut batch = Batch::default();
        let mut events = 0u64;
        let mut transactions = 0u64;
        let mut touched = Vec::new();
        let mut seen = HashSet::new();
        let mut read = self.applied;
        let mut db = self.applied_db;
        let mut open: Option<Open> = None;
        // The stream read up to the last command outside a transaction, and its database.
        let mut boundary = (read, db);
        let mut reconnects = 0;
        loop {
            // Every whole command buffered.
            loop {
                let link = self.link.as_mut().expect("connected");
                let parsed = next_command(&link.buf[link.used..]).map_err(|d| {
                    self.source_err(
                        ErrorKind::Transient,
                        format!("the replication stream could not be read: {}", d.0),
                        "run `offload follow` again: it resumes from its checkpoint",
                    )
                })?;
                let Some((args, used)) = parsed else { break };
                let link = self.link.as_mut().expect("connected");
                link.used += used;
                read += used as u64;
                if args.is_empty() {
                    continue;
                }
                let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                match name.as_str() {
                    "ping" | "publish" | "spublish" => {}
                    "replconf" => {
                        let getack = args
                            .get(1)
                            .is_some_and(|a| a.eq_ignore_ascii_case(b"getack"));
                        if getack {
                            let ack = read - used as u64;
                            let link = self.link.as_mut().expect("connected");
                            if let Err(e) = link.ack(ack).await {
                                tracing::debug!(store = "redis", error = %e, "REPLCONF ACK not sent");
                            }
                        }
                    }
                    "select" => {
                        db = args
                            .get(1)
                            .and_then(|a| std::str::from_utf8(a).ok())
                            .and_then(|t| t.parse().ok());
                    }
                    "multi" => open = Some(Open::default()),
                    "exec" => {
                        if let Some(t) = open.take() {
                            if !t.ops.is_empty() {
                                transactions += 1;
                                batch.transactions += 1;
                                events += t.ops.len() as u64;
                            }
                            batch.ops.extend(t.ops);
                            batch.bytes += t.bytes;
                            batch.touched.extend(t.touched);
                        }
                    }
                    _ => {
                        let Some(current) = db else {
                            return Err(self.source_err(
                                ErrorKind::Transient,
                                "the replication stream sent a command before selecting a database".into(),
                                "run `offload follow` again; if this repeats, copy again with `offload copy --resume --delta`",
                            ));
                        };
                        let bytes: usize = args.iter().map(Vec::len).sum();
                        let mut ops = Vec::new();
                        let mut t = Vec::new();
                        self.translate(current, args, read, &mut seen, &mut ops, &mut t)?;
                        match open.as_mut() {
                            Some(o) => {
                                o.bytes += bytes;
                                o.ops.extend(ops);
                                o.touched.extend(t);
                            }
                            None => {
                                if !ops.is_empty() {
                                    transactions += 1;
                                    batch.transactions += 1;
                                    events += ops.len() as u64;
                                }
                                batch.bytes += bytes;
                                batch.ops.extend(ops);
                                batch.touched.extend(t);
                            }
                        }
                    }
                }
                if open.is_none() {
                    boundary = (read, db);
                }
                if open.is_none()
                    && (batch.ops.len() >= BATCH_COMMANDS || batch.bytes >= BATCH_BYTES)
                {
                    self.flush(&mut batch, boundary.0, boundary.1).await?;
                    touched.append(&mut batch.touched);
                    batch = Batch::default();
                }
            }
            let now = Instant::now();
            let link = self.link.as_mut().expect("connected");
            if now.duration_since(link.last_ack) >= ACK_EVERY {
                if let Err(e) = link.ack(boundary.0).await {
                    tracing::debug!(store = "redis", error = %e, "REPLCONF ACK not sent");
                }
            }
            if open.is_none() && now >= deadline {
                break;
            }
            let within = if open.is_some() {
                REST_OF_TRANSACTION
            } else {
                deadline
                    .saturating_duration_since(now)
                    .min(ACK_EVERY)
                    .max(Duration::from_millis(5))
            };
            let filled = link.fill(within).await;
            let lost = match filled {
                Ok(Some(_)) => None,
                Ok(None) if open.is_some() => {
                    Some("a source transaction was not completed within 30 s".to_string())
                }
                Ok(None) if link.last_byte.elapsed() > SILENT_LINK => Some(format!(
                    "nothing from the source for {} s",
                    SILENT_LINK.as_secs()
                )),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = lost {
                // Apply what is whole, forget a transaction cut off, and continue where the
                // target stands.
                self.flush(&mut batch, boundary.0, boundary.1).await?;
                touched.append(&mut batch.touched);
                batch = Batch::default();
                let _ = open.take();
                self.link = None;
                reconnects += 1;
                tracing::warn!(store = "redis", reason = %why, "the replication link to the source was lost; continuing from where the target stands");
                if reconnects > RECONNECTS {
                    return Err(self.source_err(
                        ErrorKind::Transient,
                        format!("the replication link to the source was lost {RECONNECTS} times: {why}"),
                        "check the source, then run `offload follow` again: it resumes from its checkpoint",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(reconnects))).await;
                self.connect().await?;
                read = self.applied;
                db = self.applied_db;
                boundary = (read, db);
            }
        }
        self.flush(&mut batch, boundary.0, boundary.1).await?;
        touched.append(&mut batch.touched);
        let lag = self.lag().await;
        Ok(Applied {
            position: self.position(),
            events,
            transactions,
            lag,
            touched,
        })
    }
}

/// Where `COPY`'s `DB` option is among its arguments.
fn db_option(args: &[Vec<u8>]) -> Option<usize> {
    args.iter()
        .enumerate()
        .skip(3)
        .find(|(_, a)| a.eq_ignore_ascii_case(b"db"))
        .map(|(i, _)| i)
}

#[async_trait]
impl Follower for RedisFollower {
    async fn apply(&mut self, wait: Duration) -> Result<Applied, StoreError> {
        self.clean = false;
        let applied = self.run(wait).await?;
        self.clean = true;
        Ok(applied)
    }

    async fn source_head(&mut self) -> Result<StreamPosition, StoreError> {
        let text = survey::info(&mut self.info, "replication")
            .await
            .map_err(|e| super::endpoint::map_error(Side::Source, &self.source.address(), &e))?;
        Ok(StreamPosition(json!({
            "replid": survey::info_field(&text, "master_replid").unwrap_or(""),
            "offset": survey::info_u64(&text, "master_repl_offset").unwrap_or(0),
        })))
    }

    fn caught_up(&self, head: &StreamPosition) -> bool {
        let replid = head.0.get("replid").and_then(|v| v.as_str());
        let offset = head.0.get("offset").and_then(|v| v.as_u64());
        !self.resync
            && replid == Some(self.replid.as_str())
            && offset.is_some_and(|o| self.applied >= o)
    }

    async fn close(mut self: Box<Self>) {
        self.link = None;
        if !(self.clean && self.markers) {
            return;
        }
        // The job recorded the last position: the markers are no longer needed.
        let mut pipe = redis::pipe();
        for f in self.dbs.values() {
            pipe.cmd("SELECT").arg(f.target).cmd("DEL").arg(MARKER_KEY);
        }
        if let Err(e) = copy::run(&mut self.tgt, &pipe).await {
            tracing::debug!(store = "redis", error = %e, "the follower's markers were left on the target");
        }
    }
}
