//! Reading one Redis key's value in bounded pieces (GETRANGE, LRANGE, SSCAN, ZRANGE, HSCAN,
//! XRANGE, XPENDING), and the canonical digest of a value: the same for equal values whatever
//! their encoding, server version or the order a scan returned members in.

use std::collections::HashSet;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};

/// Elements read per piece of a list, set, sorted set, hash, stream or pending list.
pub const PIECE_ITEMS: usize = 1000;
/// Bytes read per piece of a string.
pub const PIECE_BYTES: usize = 1 << 20;

/// A Redis value type, as `TYPE` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyType {
    String,
    List,
    Set,
    Zset,
    Hash,
    Stream,
    /// A module type (`ReJSON-RL`, ...): copied with DUMP/RESTORE only.
    Other(String),
    /// The key does not exist (any more).
    None,
}

impl KeyType {
    pub fn parse(name: &str) -> KeyType {
        match name {
            "string" => KeyType::String,
            "list" => KeyType::List,
            "set" => KeyType::Set,
            "zset" => KeyType::Zset,
            "hash" => KeyType::Hash,
            "stream" => KeyType::Stream,
            "none" => KeyType::None,
            other => KeyType::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            KeyType::Other(s) => s,
            known => known.type_name(),
        }
    }

    /// The type's name for per-type counts: as TYPE says, with every module type as `module`.
    pub fn type_name(&self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::List => "list",
            KeyType::Set => "set",
            KeyType::Zset => "zset",
            KeyType::Hash => "hash",
            KeyType::Stream => "stream",
            KeyType::Other(_) => "module",
            KeyType::None => "none",
        }
    }

    /// The O(1) command that tells the number of elements (bytes for a string).
    pub fn size_command(&self) -> Option<&'static str> {
        Some(match self {
            KeyType::String => "STRLEN",
            KeyType::List => "LLEN",
            KeyType::Set => "SCARD",
            KeyType::Zset => "ZCARD",
            KeyType::Hash => "HLEN",
            KeyType::Stream => "XLEN",
            _ => return None,
        })
    }
}

/// One stream entry: its id and field/value pairs in order.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A bounded part of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Consecutive bytes of a string.
    Bytes(Vec<u8>),
    /// List elements in order, or set members.
    Items(Vec<Vec<u8>>),
    /// Sorted-set members with their scores as the server prints them.
    Scored(Vec<(Vec<u8>, Vec<u8>)>),
    /// Hash fields and values.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    Entries(Vec<StreamEntry>),
}

impl Piece {
    pub fn bytes(&self) -> u64 {
        let pairs = |v: &[(Vec<u8>, Vec<u8>)]| v.iter().map(|(a, b)| a.len() + b.len()).sum();
        (match self {
            Piece::Bytes(b) => b.len(),
            Piece::Items(v) => v.iter().map(|x| x.len()).sum(),
            Piece::Scored(v) | Piece::Pairs(v) => pairs(v),
            Piece::Entries(v) => v.iter().map(|e| e.id.len() + pairs(&e.fields)).sum(),
        }) as u64
    }

    /// The piece of a whole-value reply (`GET`, `LRANGE 0 -1`, `SMEMBERS`, `ZRANGE 0 -1
    /// WITHSCORES`, `HGETALL`).
    pub fn from_whole(kind: &KeyType, v: Value) -> RedisResult<Piece> {
        Ok(match kind {
            KeyType::String => Piece::Bytes(bytes_of(v)?),
            KeyType::List | KeyType::Set => Piece::Items(items(v)?),
            KeyType::Zset => Piece::Scored(pairs(v)?),
            KeyType::Hash => Piece::Pairs(pairs(v)?),
            _ => return Err(unexpected("a whole-value read of this type")),
        })
    }
}

pub fn unexpected(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::TypeError,
        "unexpected reply",
        what.to_string(),
    ))
}

/// A reply as bytes (a nil is empty).
pub fn bytes_of(v: Value) -> RedisResult<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(e.into()),
        _ => Err(unexpected("a string")),
    }
}

pub fn text_of(v: Value) -> RedisResult<String> {
    Ok(String::from_utf8_lossy(&bytes_of(v)?).into_owned())
}

pub fn int_of(v: &Value) -> RedisResult<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected("an integer")),
        Value::SimpleString(s) => s.parse().map_err(|_| unexpected("an integer")),
        Value::ServerError(e) => Err(e.clone().into()),
        Value::Nil => Ok(0),
        _ => Err(unexpected("an integer")),
    }
}

fn array(v: Value) -> RedisResult<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(e.into()),
        _ => Err(unexpected("an array")),
    }
}

fn items(v: Value) -> RedisResult<Vec<Vec<u8>>> {
    array(v)?.into_iter().map(bytes_of).collect()
}

fn pairs(v: Value) -> RedisResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let flat = items(v)?;
    if flat.len() % 2 != 0 {
        return Err(unexpected("pairs"));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    Ok(out)
}

/// A `[name, value, name, value, ...]` reply (XINFO) as a lookup.
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    pub fn parse(v: Value) -> RedisResult<Fields> {
        let flat = array(v)?;
        let mut out = Vec::new();
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((text_of(k)?, v));
        }
        Ok(Fields(out))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|v| text_of(v.clone()).ok())
    }

    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.get(name).and_then(|v| bytes_of(v.clone()).ok())
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|v| int_of(v).ok())
    }
}

/// The stream id right after `id`, for exclusive range starts on every server version.
pub fn next_stream_id(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let (ms, seq): (u64, u64) = (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0));
    if seq == u64::MAX {
        format!("{}-0", ms.saturating_add(1))
    } else {
        format!("{ms}-{}", seq + 1)
    }
}

async fn query(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> RedisResult<Value> {
    match cmd.query_async::<Value>(conn).await? {
        Value::ServerError(e) => Err(e.into()),
        v => Ok(v),
    }
}

/// Reads one key's value piece by piece; every piece is bounded by [`PIECE_ITEMS`] elements or
/// [`PIECE_BYTES`] bytes (plus the size of single elements).
pub struct PieceReader {
    key: Vec<u8>,
    kind: KeyType,
    /// Offset (string), index (list, sorted set).
    pos: i64,
    /// SSCAN/HSCAN cursor, or the last stream id read.
    cursor: Option<String>,
    done: bool,
}

impl PieceReader {
    pub fn new(key: &[u8], kind: KeyType) -> PieceReader {
        PieceReader {
            key: key.to_vec(),
            kind,
            pos: 0,
            cursor: None,
            done: false,
        }
    }

    /// The next piece, or `None` when the value is read. A string always yields at least one
    /// (possibly empty) piece.
    pub async fn next(&mut self, conn: &mut MultiplexedConnection) -> RedisResult<Option<Piece>> {
        if self.done {
            return Ok(None);
        }
        let n = PIECE_ITEMS as i64;
        let key = self.key.as_slice();
        let piece = match &self.kind {
            KeyType::String => {
                let end = self.pos + PIECE_BYTES as i64 - 1;
                let v = bytes_of(
                    query(conn, redis::cmd("GETRANGE").arg(key).arg(self.pos).arg(end)).await?,
                )?;
                self.pos += v.len() as i64;
                self.done = v.len() < PIECE_BYTES;
                if v.is_empty() && self.pos > 0 {
                    return Ok(None);
                }
                Piece::Bytes(v)
            }
            KeyType::List => {
                let v = items(
                    query(
                        conn,
                        redis::cmd("LRANGE")
                            .arg(key)
                            .arg(self.pos)
                            .arg(self.pos + n - 1),
                    )
                    .await?,
                )?;
                self.pos += v.len() as i64;
                self.done = (v.len() as i64) < n;
                Piece::Items(v)
            }
            KeyType::Zset => {
                let v = pairs(
                    query(
                        conn,
                        redis::cmd("ZRANGE")
                            .arg(key)
                            .arg(self.pos)
                            .arg(self.pos + n - 1)
                            .arg("WITHSCORES"),
                    )
                    .await?,
                )?;
                self.pos += v.len() as i64;
                self.done = (v.len() as i64) < n;
                Piece::Scored(v)
            }
            KeyType::Set | KeyType::Hash => {
                let command = if self.kind == KeyType::Set {
                    "SSCAN"
                } else {
                    "HSCAN"
                };
                let cursor = self.cursor.clone().unwrap_or_else(|| "0".into());
                let reply = array(
                    query(
                        conn,
                        redis::cmd(command)
                            .arg(key)
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(PIECE_ITEMS),
                    )
                    .await?,
                )?;
                let mut it = reply.into_iter();
                let next = text_of(it.next().ok_or_else(|| unexpected("a scan cursor"))?)?;
                let found = it.next().unwrap_or(Value::Nil);
                self.done = next == "0";
                self.cursor = Some(next);
                if self.kind == KeyType::Set {
                    Piece::Items(items(found)?)
                } else {
                    Piece::Pairs(pairs(found)?)
                }
            }
            KeyType::Stream => {
                let start = match &self.cursor {
                    None => "-".to_string(),
                    Some(last) => next_stream_id(last),
                };
                let reply = array(
                    query(
                        conn,
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg(start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(PIECE_ITEMS),
                    )
                    .await?,
                )?;
                self.done = reply.len() < PIECE_ITEMS;
                let mut entries = Vec::with_capacity(reply.len());
                for e in reply {
                    let mut parts = array(e)?.into_iter();
                    let id = text_of(parts.next().ok_or_else(|| unexpected("a stream id"))?)?;
                    let fields = pairs(parts.next().unwrap_or(Value::Nil))?;
                    entries.push(StreamEntry { id, fields });
                }
                if let Some(last) = entries.last() {
                    self.cursor = Some(last.id.clone());
                }
                Piece::Entries(entries)
            }
            KeyType::Other(_) | KeyType::None => {
                self.done = true;
                return Ok(None);
            }
        };
        Ok(Some(piece))
    }
}

/// A consumer group of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMeta {
    pub name: Vec<u8>,
    pub last_delivered: String,
    pub entries_read: Option<i64>,
    /// Consumer names, sorted.
    pub consumers: Vec<Vec<u8>>,
}

/// What a stream holds besides its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMeta {
    pub last_id: String,
    pub entries_added: Option<i64>,
    pub max_deleted_id: Option<String>,
    /// Groups, sorted by name.
    pub groups: Vec<GroupMeta>,
}

pub async fn stream_meta(conn: &mut MultiplexedConnection, key: &[u8]) -> RedisResult<StreamMeta> {
    let info = Fields::parse(query(conn, redis::cmd("XINFO").arg("STREAM").arg(key)).await?)?;
    let mut groups = Vec::new();
    for g in array(query(conn, redis::cmd("XINFO").arg("GROUPS").arg(key)).await?)? {
        let g = Fields::parse(g)?;
        let name = g.bytes("name").ok_or_else(|| unexpected("a group name"))?;
        let mut consumers = Vec::new();
        for c in array(
            query(
                conn,
                redis::cmd("XINFO").arg("CONSUMERS").arg(key).arg(&name),
            )
            .await?,
        )? {
            if let Some(n) = Fields::parse(c)?.bytes("name") {
                consumers.push(n);
            }
        }
        consumers.sort();
        groups.push(GroupMeta {
            name,
            last_delivered: g.text("last-delivered-id").unwrap_or_else(|| "0-0".into()),
            entries_read: g.int("entries-read"),
            consumers,
        });
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StreamMeta {
        last_id: info
            .text("last-generated-id")
            .unwrap_or_else(|| "0-0".into()),
        entries_added: info.int("entries-added"),
        max_deleted_id: info.text("max-deleted-entry-id"),
        groups,
    })
}

/// One entry of a group's pending list.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: String,
    pub consumer: Vec<u8>,
    pub idle_ms: i64,
    pub deliveries: i64,
}

/// The next piece of a group's pending entries after `after` (exclusive), in id order.
pub async fn pending_piece(
    conn: &mut MultiplexedConnection,
    key: &[u8],
    group: &[u8],
    after: Option<&str>,
) -> RedisResult<Vec<Pending>> {
    let start = after.map(next_stream_id).unwrap_or_else(|| "-".into());
    let reply = array(
        query(
            conn,
            redis::cmd("XPENDING")
                .arg(key)
                .arg(group)
                .arg(start)
                .arg("+")
                .arg(PIECE_ITEMS),
        )
        .await?,
    )?;
    let mut out = Vec::with_capacity(reply.len());
    for p in reply {
        let p = array(p)?;
        if p.len() < 4 {
            return Err(unexpected("a pending entry"));
        }
        out.push(Pending {
            id: text_of(p[0].clone())?,
            consumer: bytes_of(p[1].clone())?,
            idle_ms: int_of(&p[2])?,
            deliveries: int_of(&p[3])?,
        });
    }
    Ok(out)
}

fn element_hash(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// A sorted-set score in a canonical form: the double's bits (with -0 as 0), so the same score
/// printed differently by two server versions digests the same.
fn score_bits(text: &[u8]) -> [u8; 8] {
    let s = String::from_utf8_lossy(text);
    match s.trim().parse::<f64>() {
        Ok(f) => (f + 0.0).to_bits().to_le_bytes(),
        Err(_) => [0xff; 8],
    }
}

/// Accumulates the canonical digest of one value from its pieces: ordered types (string, list,
/// sorted set, stream) hash their elements in order; sets and hashes sum element hashes, which
/// does not depend on the order a scan returns them in. Duplicates a scan may return are counted
/// so the caller can detect them and read again with [`ValueDigest::dedup`].
pub struct ValueDigest {
    ordered: blake3::Hasher,
    sum: u128,
    elements: u64,
    seen: Option<HashSet<[u8; 16]>>,
}

impl ValueDigest {
    pub fn new(kind: &KeyType) -> ValueDigest {
        let mut ordered = blake3::Hasher::new();
        ordered.update(kind.as_str().as_bytes());
        ValueDigest {
            ordered,
            sum: 0,
            elements: 0,
            seen: None,
        }
    }

    /// Drop duplicate set members and hash fields (costs 16 bytes a member).
    pub fn dedup(mut self) -> ValueDigest {
        self.seen = Some(HashSet::new());
        self
    }

    /// Elements (string bytes) taken in so far, duplicates included unless deduplicating.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    fn unordered(&mut self, identity: [u8; 16], h: [u8; 16]) {
        if let Some(seen) = &mut self.seen {
            if !seen.insert(identity) {
                return;
            }
        }
        self.elements += 1;
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(h));
    }

    pub fn feed(&mut self, piece: &Piece) {
        match piece {
            Piece::Bytes(b) => {
                self.ordered.update(b);
                self.elements += b.len() as u64;
            }
            Piece::Items(v) => {
                // A list is ordered; a set is not. The caller's kind decides which was meant, so
                // both are kept and `finish` uses the one that applies.
                for x in v {
                    self.ordered.update(&element_hash(&[x]));
                    let h = element_hash(&[x]);
                    if self.seen.is_some() {
                        self.unordered(h, h);
                    } else {
                        self.sum = self.sum.wrapping_add(u128::from_le_bytes(h));
                        self.elements += 1;
                    }
                }
            }
            Piece::Scored(v) => {
                for (m, s) in v {
                    self.ordered.update(&element_hash(&[m, &score_bits(s)]));
                    self.elements += 1;
                }
            }
            Piece::Pairs(v) => {
                for (f, x) in v {
                    let identity = element_hash(&[f]);
                    let h = element_hash(&[f, x]);
                    if self.seen.is_some() {
                        self.unordered(identity, h);
                    } else {
                        self.sum = self.sum.wrapping_add(u128::from_le_bytes(h));
                        self.elements += 1;
                    }
                }
            }
            Piece::Entries(v) => {
                for e in v {
                    let mut parts: Vec<&[u8]> = vec![e.id.as_bytes()];
                    for (f, x) in &e.fields {
                        parts.push(f);
                        parts.push(x);
                    }
                    self.ordered.update(&element_hash(&parts));
                    self.elements += 1;
                }
            }
        }
    }

    /// Mix in what is not a piece (stream metadata, a module type's payload).
    pub fn feed_extra(&mut self, parts: &[&[u8]]) {
        self.ordered.update(&element_hash(parts));
    }

    pub fn finish(self, kind: &KeyType) -> [u8; 32] {
        let mut h = self.ordered;
        if matches!(kind, KeyType::Set | KeyType::Hash) {
            // Only the order-free part counts.
            let mut u = blake3::Hasher::new();
            u.update(kind.as_str().as_bytes());
            u.update(&self.sum.to_le_bytes());
            u.update(&self.elements.to_le_bytes());
            return *u.finalize().as_bytes();
        }
        h.update(&self.elements.to_le_bytes());
        *h.finalize().as_bytes()
    }
}

/// Printable form of a key for reports: printable ASCII as is, anything else as `\xNN`, and
/// quotes when the key has spaces or is empty, like `redis-cli` does.
pub fn display_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut quote = key.is_empty();
    for &b in key {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
                quote = true;
            }
            b' ' => {
                out.push(' ');
                quote = true;
            }
            0x21..=0x7e => out.push(b as char),
            _ => {
                out.push_str(&format!("\\x{b:02x}"));
                quote = true;
            }
        }
    }
    if quote {
        format!("\"{out}\"")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_digest_ignores_order_and_duplicates_when_deduplicating() {
        let kind = KeyType::Set;
        let mut a = ValueDigest::new(&kind);
        a.feed(&Piece::Items(vec![b"x".to_vec(), b"y".to_vec()]));
        let mut b = ValueDigest::new(&kind).dedup();
        b.feed(&Piece::Items(vec![b"y".to_vec()]));
        b.feed(&Piece::Items(vec![b"x".to_vec(), b"y".to_vec()]));
        assert_eq!(b.elements(), 2);
        assert_eq!(a.finish(&kind), b.finish(&kind));
        let mut c = ValueDigest::new(&kind);
        c.feed(&Piece::Items(vec![b"x".to_vec(), b"z".to_vec()]));
        let mut d = ValueDigest::new(&kind);
        d.feed(&Piece::Items(vec![b"x".to_vec(), b"y".to_vec()]));
        assert_ne!(c.finish(&kind), d.finish(&kind));
    }

    #[test]
    fn list_digest_keeps_order_and_string_pieces_do_not_matter() {
        let kind = KeyType::List;
        let mut a = ValueDigest::new(&kind);
        a.feed(&Piece::Items(vec![b"x".to_vec(), b"y".to_vec()]));
        let mut b = ValueDigest::new(&kind);
        b.feed(&Piece::Items(vec![b"y".to_vec(), b"x".to_vec()]));
        assert_ne!(a.finish(&kind), b.finish(&kind));
        let s = KeyType::String;
        let mut whole = ValueDigest::new(&s);
        whole.feed(&Piece::Bytes(b"hello world".to_vec()));
        let mut parts = ValueDigest::new(&s);
        parts.feed(&Piece::Bytes(b"hello ".to_vec()));
        parts.feed(&Piece::Bytes(b"world".to_vec()));
        assert_eq!(whole.finish(&s), parts.finish(&s));
    }

    #[test]
    fn scores_compare_as_numbers() {
        assert_eq!(score_bits(b"1.5"), score_bits(b"1.50000000000000000"));
        assert_eq!(score_bits(b"-0"), score_bits(b"0"));
        assert_eq!(score_bits(b"inf"), f64::INFINITY.to_bits().to_le_bytes());
        assert_ne!(score_bits(b"1"), score_bits(b"2"));
    }

    #[test]
    fn keys_display_like_redis_cli() {
        assert_eq!(display_key(b":1:views.decorators"), ":1:views.decorators");
        assert_eq!(display_key(b"caf\xc3\xa9 x"), "\"caf\\xc3\\xa9 x\"");
        assert_eq!(display_key(b""), "\"\"");
        assert_eq!(next_stream_id("5-3"), "5-4");
        assert_eq!(next_stream_id(&format!("5-{}", u64::MAX)), "6-0");
    }
}
