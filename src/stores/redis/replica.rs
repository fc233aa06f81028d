//! Reading a source database from a snapshot, the way a new replica does: `PSYNC` asks the
//! source for a full synchronization, and the RDB stream it sends is cut into keys (see
//! [`super::rdb`]) on a thread of its own, which hands them over in bounded chunks. One fork on
//! the source serializes every key, where the SCAN path costs a script call per key.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::endpoint::RedisEndpoint;
use super::rdb::{RdbError, RdbReader, SnapshotKey};

/// Keys per chunk handed over (a chunk also ends at the byte budget).
const CHUNK_KEYS: usize = 1000;
/// Chunks waiting between the reading thread and the writers.
const CHUNKS_AHEAD: usize = 4;

/// Why a snapshot could not be read.
#[derive(Debug)]
pub enum FeedError {
    /// The source does not let this connection synchronize (ACL, a managed service, TLS, an
    /// old server) or sends a layout this reader does not know: read with SCAN instead.
    Refused(String),
    /// The connection failed or the stream broke off: worth a retry.
    Io(io::Error),
    /// The stream is damaged.
    Corrupt(String),
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::Refused(m) | FeedError::Corrupt(m) => f.write_str(m),
            FeedError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<RdbError> for FeedError {
    fn from(e: RdbError) -> Self {
        match e {
            RdbError::Io(e) => FeedError::Io(e),
            RdbError::Unsupported(_) | RdbError::TooLarge { .. } => {
                FeedError::Refused(e.to_string())
            }
            RdbError::Corrupt { .. } => FeedError::Corrupt(e.to_string()),
        }
    }
}

enum Event {
    Ready {
        source_ms: i64,
        clock_at: Instant,
        at: SnapshotAt,
    },
    Keys(Vec<SnapshotKey>),
    Failed(FeedError),
}

/// Where in the source's replication stream a snapshot was taken (`+FULLRESYNC <replid>
/// <offset>`): it holds every write up to `offset`, and the stream goes on at `offset + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotAt {
    pub replid: String,
    pub offset: u64,
}

/// The keys of one source database, from a snapshot being read by a background thread.
pub struct SnapshotFeed {
    /// Where the snapshot was taken.
    pub at: SnapshotAt,
    rx: mpsc::Receiver<Event>,
    /// The source's clock (Unix milliseconds) at `clock_at`, for the keys' remaining TTLs.
    source_ms: i64,
    clock_at: Instant,
    /// Keys handed out so far.
    pub handed: u64,
}

impl SnapshotFeed {
    /// Ask the source for a snapshot and start reading the keys of database `db`. Values over
    /// `limit` serialized bytes come without payload; chunks stop at about `chunk_bytes`.
    pub async fn open(
        source: &RedisEndpoint,
        db: i64,
        limit: usize,
        chunk_bytes: usize,
    ) -> Result<SnapshotFeed, FeedError> {
        if source.tls.is_some() {
            return Err(FeedError::Refused(
                "snapshots are read over plain TCP only, and this source uses TLS".into(),
            ));
        }
        let (tx, mut rx) = mpsc::channel(CHUNKS_AHEAD);
        let (host, port) = (source.host.clone(), source.port);
        let user = source.username.clone();
        let password = source.password.as_ref().map(|p| p.expose().to_string());
        std::thread::Builder::new()
            .name(format!("redis-snapshot-db{db}"))
            .spawn(move || {
                let read = || -> Result<(), FeedError> {
                    let (reader, source_ms, clock_at, at) =
                        handshake(&host, port, user.as_deref(), password.as_deref())?;
                    if tx
                        .blocking_send(Event::Ready {
                            source_ms,
                            clock_at,
                            at,
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                    let mut rdb = RdbReader::new(reader, limit)?.only_db(db);
                    let mut sent = 0u64;
                    loop {
                        if sent == 1 && crate::core::failpoint::active("redis-snapshot-break") {
                            return Err(FeedError::Io(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "OFFLOAD_FAILPOINT redis-snapshot-break",
                            )));
                        }
                        let mut chunk = Vec::with_capacity(64);
                        let mut bytes = 0usize;
                        let mut end = false;
                        while chunk.len() < CHUNK_KEYS && bytes < chunk_bytes {
                            match rdb.next_key()? {
                                Some(k) => {
                                    bytes += k.key.len() + k.payload.as_ref().map_or(0, Vec::len);
                                    chunk.push(k);
                                }
                                None => {
                                    end = true;
                                    break;
                                }
                            }
                        }
                        if !chunk.is_empty() && tx.blocking_send(Event::Keys(chunk)).is_err() {
                            return Ok(()); // the copy stopped listening
                        }
                        sent += 1;
                        if end {
                            return Ok(());
                        }
                    }
                };
                if let Err(e) = read() {
                    let _ = tx.blocking_send(Event::Failed(e));
                }
            })
            .map_err(FeedError::Io)?;
        match rx.recv().await {
            Some(Event::Ready {
                source_ms,
                clock_at,
                at,
            }) => Ok(SnapshotFeed {
                at,
                rx,
                source_ms,
                clock_at,
                handed: 0,
            }),
            Some(Event::Failed(e)) => Err(e),
            _ => Err(FeedError::Io(io::Error::other(
                "the snapshot reader stopped before the source answered",
            ))),
        }
    }

    /// The next chunk of keys; `None` when the database's keys are all handed out.
    pub async fn next(&mut self) -> Option<Result<Vec<SnapshotKey>, FeedError>> {
        match self.rx.recv().await? {
            Event::Keys(k) => {
                self.handed += k.len() as u64;
                Some(Ok(k))
            }
            Event::Failed(e) => Some(Err(e)),
            Event::Ready { .. } => Some(Err(FeedError::Corrupt("a second start".into()))),
        }
    }

    /// A key's PTTL now, as the source would answer it: -1 without expiry, 0 or less once
    /// expired.
    pub fn pttl(&self, expire_at_ms: Option<i64>) -> i64 {
        match expire_at_ms {
            None => -1,
            Some(at) => {
                // The deadline comes from the snapshot: any i64, so no arithmetic may overflow.
                let elapsed =
                    i64::try_from(self.clock_at.elapsed().as_millis()).unwrap_or(i64::MAX);
                let now = self.source_ms.saturating_add(elapsed);
                at.saturating_sub(now).max(0)
            }
        }
    }
}

fn command(stream: &mut TcpStream, args: &[&[u8]]) -> io::Result<()> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out)
}

fn line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    reader.read_until(b'\n', &mut buf)?;
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the source closed the connection",
        ));
    }
    while matches!(buf.last(), Some(b'\r' | b'\n')) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A simple-string reply: `Ok(text)` for `+...`, `Err(message)` for an error reply.
fn status(reader: &mut impl BufRead) -> Result<Result<String, String>, FeedError> {
    let l = line(reader).map_err(FeedError::Io)?;
    match l.as_bytes().first() {
        Some(b'+') => Ok(Ok(l[1..].to_string())),
        Some(b'-') => Ok(Err(l[1..].to_string())),
        _ => Err(FeedError::Corrupt(format!("unexpected reply {l:?}"))),
    }
}

/// The source's clock from `TIME`, in Unix milliseconds (the local clock if it is refused).
fn source_clock(stream: &mut TcpStream, reader: &mut impl BufRead) -> Result<i64, FeedError> {
    command(stream, &[b"TIME"]).map_err(FeedError::Io)?;
    let first = line(reader).map_err(FeedError::Io)?;
    let local = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    if first != "*2" {
        return Ok(local());
    }
    let mut parts = Vec::new();
    for _ in 0..2 {
        let _len = line(reader).map_err(FeedError::Io)?;
        parts.push(line(reader).map_err(FeedError::Io)?);
    }
    let ms = match (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
        (Ok(s), Ok(us)) => s.checked_mul(1000).and_then(|ms| ms.checked_add(us / 1000)),
        _ => None,
    };
    Ok(ms.unwrap_or_else(local))
}

/// Connect, authenticate and ask for a full synchronization; returns the reader positioned at
/// the start of the RDB stream, the source's clock, and where in its replication stream the
/// snapshot is taken.
fn handshake(
    host: &str,
    port: u16,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<(BufReader<TcpStream>, i64, Instant, SnapshotAt), FeedError> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(FeedError::Io)?
        .next()
        .ok_or_else(|| FeedError::Io(io::Error::other("the source's host has no address")))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(FeedError::Io)?;
    stream.set_nodelay(true).map_err(FeedError::Io)?;
    // The source sends a newline every second while it prepares the snapshot, so a long
    // silence means it is gone.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(FeedError::Io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(FeedError::Io)?);
    if let Some(pw) = password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = user {
            args.push(u.as_bytes());
        }
        args.push(pw.as_bytes());
        command(&mut stream, &args).map_err(FeedError::Io)?;
        if let Err(e) = status(&mut reader)? {
            return Err(FeedError::Refused(format!("authentication refused: {e}")));
        }
    }
    let source_ms = source_clock(&mut stream, &mut reader)?;
    let clock_at = Instant::now();
    command(
        &mut stream,
        &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
    )
    .map_err(FeedError::Io)?;
    if let Err(e) = status(&mut reader)? {
        return Err(FeedError::Refused(format!("REPLCONF refused: {e}")));
    }
    // Only the snapshot, not the stream of writes after it (Redis 7.0 and later; older servers
    // refuse the option and the connection is closed after the snapshot anyway).
    command(&mut stream, &[b"REPLCONF", b"rdb-only", b"1"]).map_err(FeedError::Io)?;
    status(&mut reader)?.ok();
    command(&mut stream, &[b"PSYNC", b"?", b"-1"]).map_err(FeedError::Io)?;
    // Newlines keep the connection alive while the source waits to start the snapshot (for
    // more replicas to join, `repl-diskless-sync-delay`): skip them.
    loop {
        let next = reader.fill_buf().map_err(FeedError::Io)?;
        match next.first() {
            Some(b'\n' | b'\r') => reader.consume(1),
            _ => break,
        }
    }
    let at = match status(&mut reader)? {
        Ok(s) if s.starts_with("FULLRESYNC") => parse_fullresync(&s)
            .ok_or_else(|| FeedError::Corrupt(format!("unexpected PSYNC answer {s:?}")))?,
        Ok(s) => return Err(FeedError::Refused(format!("PSYNC answered {s:?}"))),
        Err(e) => return Err(FeedError::Refused(format!("PSYNC refused: {e}"))),
    };
    // More newlines until the snapshot starts: `$<length>` for a snapshot from disk,
    // `$EOF:<mark>` for one streamed straight from the fork.
    loop {
        let mut b = [0u8; 1];
        reader.read_exact(&mut b).map_err(FeedError::Io)?;
        match b[0] {
            b'\n' | b'\r' => continue,
            b'$' => break,
            other => {
                return Err(FeedError::Corrupt(format!(
                    "unexpected byte {other:#04x} before the snapshot"
                )))
            }
        }
    }
    let header = line(&mut reader).map_err(FeedError::Io)?;
    if !(header.starts_with("EOF:") || header.parse::<u64>().is_ok()) {
        return Err(FeedError::Corrupt(format!(
            "unexpected snapshot header {header:?}"
        )));
    }
    Ok((reader, source_ms, clock_at, at))
}

/// `FULLRESYNC <replid> <offset>` read as where the snapshot is taken.
pub fn parse_fullresync(answer: &str) -> Option<SnapshotAt> {
    let mut parts = answer.split_ascii_whitespace();
    if parts.next()? != "FULLRESYNC" {
        return None;
    }
    let replid = parts.next()?;
    let offset = parts.next()?.parse::<u64>().ok()?;
    (replid.len() == 40 && replid.bytes().all(|b| b.is_ascii_hexdigit())).then(|| SnapshotAt {
        replid: replid.to_string(),
        offset,
    })
}
