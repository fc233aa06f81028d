//! Copying keys between two connections: DUMP/RESTORE ... REPLACE in pipelines for ordinary keys
//! (with the remaining TTL, less the time the key spent in offload), and a typed rebuild in
//! bounded pieces for big keys, module-free fallbacks, and targets that cannot restore the
//! source's payloads.

use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{Pipeline, RedisError, RedisResult, Value};

use super::values::{
    bytes_of, int_of, pending_piece, stream_meta, text_of, KeyType, Piece, PieceReader,
};
use crate::core::Side;

/// A driver error and the side it happened on.
#[derive(Debug)]
pub struct SideError(pub Side, pub RedisError);

pub type SideResult<T> = Result<T, SideError>;

pub trait OnSide<T> {
    fn on(self, side: Side) -> SideResult<T>;
}

impl<T> OnSide<T> for RedisResult<T> {
    fn on(self, side: Side) -> SideResult<T> {
        self.map_err(|e| SideError(side, e))
    }
}

/// Run a pipeline and return every reply, server errors included as `Value::ServerError`.
pub async fn run(conn: &mut MultiplexedConnection, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
    let n = pipe.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    use redis::aio::ConnectionLike;
    conn.req_packed_commands(pipe, 0, n).await
}

/// The first server error among replies, as an error.
pub fn first_error(replies: &[Value]) -> RedisResult<()> {
    for r in replies {
        if let Value::ServerError(e) = r {
            return Err(e.clone().into());
        }
    }
    Ok(())
}

/// Whether an error says the target cannot load the source's DUMP payload (an older server).
pub fn payload_rejected(e: &RedisError) -> bool {
    let t = e.to_string();
    t.contains("payload version") || t.contains("Bad data format")
}

/// A key read for restoring.
pub struct Dumped {
    pub key: Vec<u8>,
    /// PTTL at read time: -1 no expiry, -2 gone.
    pub pttl: i64,
    pub payload: Option<Vec<u8>>,
}

/// Sizes of keys as `MEMORY USAGE` estimates them; `None` for a key that is gone. Falls back to
/// element counts when the server refuses `MEMORY USAGE`.
pub async fn probe_sizes(
    src: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
) -> RedisResult<Vec<Option<u64>>> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("MEMORY").arg("USAGE").arg(k);
    }
    let replies = run(src, &pipe).await?;
    if !replies.iter().any(|r| matches!(r, Value::ServerError(_))) {
        return Ok(replies
            .iter()
            .map(|r| match r {
                Value::Nil => None,
                v => Some(int_of(v).unwrap_or(0).max(0) as u64),
            })
            .collect());
    }
    // MEMORY USAGE is not allowed here: estimate from the type and the element count.
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("TYPE").arg(k);
    }
    let kinds: Vec<KeyType> = run(src, &pipe)
        .await?
        .into_iter()
        .map(|v| text_of(v).map(|t| KeyType::parse(&t)))
        .collect::<RedisResult<_>>()?;
    let mut pipe = redis::pipe();
    for (k, kind) in keys.iter().zip(&kinds) {
        match kind.size_command() {
            Some(c) => pipe.cmd(c).arg(k),
            None => pipe.cmd("EXISTS").arg(k),
        };
    }
    let sizes = run(src, &pipe).await?;
    Ok(kinds
        .iter()
        .zip(sizes)
        .map(|(kind, n)| {
            let n = int_of(&n).unwrap_or(0).max(0) as u64;
            match kind {
                KeyType::None => None,
                KeyType::String => Some(n),
                KeyType::Other(_) => Some(1024),
                _ => Some(n.saturating_mul(64)),
            }
        })
        .collect())
}

/// Read TTLs and payloads of a group of keys in one pipeline (PTTL before DUMP, so a key that
/// expires in between is read as gone, never as a payload without its TTL).
pub async fn dump_group(
    src: &mut MultiplexedConnection,
    keys: Vec<Vec<u8>>,
) -> RedisResult<(Vec<Dumped>, Instant)> {
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("PTTL").arg(k).cmd("DUMP").arg(k);
    }
    let replies = run(src, &pipe).await?;
    let read_at = Instant::now();
    let mut out = Vec::with_capacity(keys.len());
    let mut it = replies.into_iter();
    for key in keys {
        let (pttl, payload) = (
            it.next().unwrap_or(Value::Nil),
            it.next().unwrap_or(Value::Nil),
        );
        let pttl = int_of(&pttl)?;
        let payload = match payload {
            Value::Nil => None,
            Value::ServerError(e) => return Err(e.into()),
            v => Some(bytes_of(v)?),
        };
        out.push(Dumped { key, pttl, payload });
    }
    Ok((out, read_at))
}

/// Reads TTL, size and payload of each key server-side, in one call for a group of keys: the
/// same PTTL-then-DUMP order as the pipeline, a third of the commands for the server to parse.
/// Keys over `ARGV[1]` bytes are only sized; once `ARGV[2]` payload bytes are read, the rest are
/// left for the next call.
const DUMP_SCRIPT: &str = r#"
local big, budget, used = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
local out = {}
for _, k in ipairs(KEYS) do
  if used >= budget then
    out[#out + 1] = -3
    out[#out + 1] = false
  else
    local ttl = redis.call('PTTL', k)
    out[#out + 1] = ttl
    if ttl == -2 then
      out[#out + 1] = false
    else
      local size = redis.call('MEMORY', 'USAGE', k)
      if not size then size = 0 end
      if size > big then
        out[#out + 1] = size
      else
        local payload = redis.call('DUMP', k)
        used = used + #payload
        out[#out + 1] = payload
      end
    end
  end
end
return out
"#;

/// What one scripted read found.
pub struct ScriptedRead {
    pub dumped: Vec<Dumped>,
    pub read_at: Instant,
    /// Keys too big to dump whole.
    pub big: Vec<Vec<u8>>,
    /// Keys left for another call (the payload budget was spent).
    pub unread: Vec<Vec<u8>>,
}

/// Whether an error means scripts cannot be used here (ACL, disabled or renamed commands), so
/// the plain pipeline must do.
pub fn scripts_refused(e: &RedisError) -> bool {
    let t = e.to_string().to_ascii_lowercase();
    e.code() == Some("NOPERM")
        || t.contains("unknown command")
        || t.contains("noperm")
        || t.contains("script")
        || t.contains("lua")
}

/// Read a group of keys with [`DUMP_SCRIPT`].
pub async fn dump_scripted(
    src: &mut MultiplexedConnection,
    keys: Vec<Vec<u8>>,
    big_bytes: u64,
    budget: u64,
) -> RedisResult<ScriptedRead> {
    let reply: Value = redis::cmd("EVAL")
        .arg(DUMP_SCRIPT)
        .arg(keys.len())
        .arg(&keys)
        .arg(big_bytes)
        .arg(budget)
        .query_async(src)
        .await?;
    let read_at = Instant::now();
    let Value::Array(items) = reply else {
        return Err(super::values::unexpected("the dump script's reply"));
    };
    let mut out = ScriptedRead {
        dumped: Vec::with_capacity(keys.len()),
        read_at,
        big: Vec::new(),
        unread: Vec::new(),
    };
    // Two entries a key (a flat array costs the server less than one table a key): the TTL
    // (-3: not read), then the payload, the size of a big key, or nil for a key that is gone.
    if items.len() != keys.len() * 2 {
        return Err(super::values::unexpected("the dump script's reply"));
    }
    let mut items = items.into_iter();
    for key in keys {
        let (pttl, second) = (
            int_of(&items.next().unwrap_or(Value::Nil))?,
            items.next().unwrap_or(Value::Nil),
        );
        match (pttl, second) {
            (-3, _) => out.unread.push(key),
            (_, Value::Int(_)) => out.big.push(key),
            (_, Value::Nil) => out.dumped.push(Dumped {
                key,
                pttl,
                payload: None,
            }),
            (_, v) => out.dumped.push(Dumped {
                key,
                pttl,
                payload: Some(bytes_of(v)?),
            }),
        }
    }
    Ok(out)
}

/// The TTL to write for a key read `pttl` at `read_at`: `Some(0)` for no expiry, `None` when it
/// has expired (or is gone) by now.
pub fn remaining_ttl(pttl: i64, read_at: Instant) -> Option<i64> {
    match pttl {
        -1 => Some(0),
        p if p < 0 => None,
        p => {
            let left = p - read_at.elapsed().as_millis() as i64;
            (left > 0).then_some(left)
        }
    }
}

/// Restore a group on the target: RESTORE ... REPLACE with the remaining TTL; keys gone or
/// expired on the source are deleted on the target, so a replay leaves no stale copy.
/// Returns (keys restored, payload bytes).
pub async fn restore_group(
    tgt: &mut MultiplexedConnection,
    group: &[Dumped],
    read_at: Instant,
) -> RedisResult<(u64, u64)> {
    let mut pipe = redis::pipe();
    let (mut rows, mut bytes) = (0u64, 0u64);
    for d in group {
        match (&d.payload, remaining_ttl(d.pttl, read_at)) {
            (Some(payload), Some(ttl)) => {
                pipe.cmd("RESTORE")
                    .arg(&d.key)
                    .arg(ttl)
                    .arg(payload)
                    .arg("REPLACE");
                rows += 1;
                bytes += (d.key.len() + payload.len()) as u64;
            }
            _ => {
                pipe.cmd("DEL").arg(&d.key);
            }
        }
    }
    let replies = run(tgt, &pipe).await?;
    first_error(&replies)?;
    Ok((rows, bytes))
}

/// Rebuild one key on the target with typed commands, reading it in pieces. Returns the bytes
/// written, or `None` when the key is gone from the source (it is then deleted on the target).
pub async fn copy_key_typed(
    src: &mut MultiplexedConnection,
    tgt: &mut MultiplexedConnection,
    key: &[u8],
) -> SideResult<Option<u64>> {
    let kind = KeyType::parse(
        &text_of(
            redis::cmd("TYPE")
                .arg(key)
                .query_async::<Value>(src)
                .await
                .on(Side::Source)?,
        )
        .on(Side::Source)?,
    );
    if kind == KeyType::None {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(tgt)
            .await
            .on(Side::Target)?;
        return Ok(None);
    }
    if let KeyType::Other(name) = &kind {
        return Err(SideError(
            Side::Source,
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot rebuild a module type with typed commands",
                format!(
                    "key {} is of type {name}; only DUMP/RESTORE can copy it, which needs a target with the same module and a compatible version",
                    super::values::display_key(key)
                ),
            )),
        ));
    }
    let mut bytes = 0u64;
    let mut reader = PieceReader::new(key, kind.clone());
    let mut first = true;
    let mut wrote_entries = false;
    while let Some(piece) = reader.next(src).await.on(Side::Source)? {
        let mut pipe = redis::pipe();
        if first && kind != KeyType::String {
            pipe.cmd("DEL").arg(key).ignore();
        }
        bytes += piece.bytes();
        match &piece {
            Piece::Bytes(b) => {
                pipe.cmd(if first { "SET" } else { "APPEND" })
                    .arg(key)
                    .arg(b);
            }
            Piece::Items(v) if !v.is_empty() => {
                pipe.cmd(if kind == KeyType::List {
                    "RPUSH"
                } else {
                    "SADD"
                })
                .arg(key)
                .arg(v);
            }
            Piece::Scored(v) if !v.is_empty() => {
                let c = pipe.cmd("ZADD").arg(key);
                for (m, s) in v {
                    c.arg(s).arg(m);
                }
            }
            Piece::Pairs(v) if !v.is_empty() => {
                let c = pipe.cmd("HSET").arg(key);
                for (f, x) in v {
                    c.arg(f).arg(x);
                }
            }
            Piece::Entries(v) => {
                for e in v {
                    let c = pipe.cmd("XADD").arg(key).arg(&e.id);
                    for (f, x) in &e.fields {
                        c.arg(f).arg(x);
                    }
                    wrote_entries = true;
                }
            }
            _ => {}
        }
        first = false;
        let replies = run(tgt, &pipe).await.on(Side::Target)?;
        first_error(&replies).on(Side::Target)?;
    }
    if kind == KeyType::Stream {
        copy_stream_meta(src, tgt, key, wrote_entries).await?;
    }
    // The TTL as it is now, after the value: a key that expired meanwhile is not brought back.
    let started = Instant::now();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(src)
        .await
        .on(Side::Source)?;
    match remaining_ttl(pttl, started) {
        None => {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(tgt)
                .await
                .on(Side::Target)?;
            return Ok(None);
        }
        Some(0) => {}
        Some(ttl) => {
            redis::cmd("PEXPIRE")
                .arg(key)
                .arg(ttl)
                .query_async::<()>(tgt)
                .await
                .on(Side::Target)?;
        }
    }
    Ok(Some(bytes))
}

/// A stream's last id, counters, consumer groups, consumers and pending entries.
async fn copy_stream_meta(
    src: &mut MultiplexedConnection,
    tgt: &mut MultiplexedConnection,
    key: &[u8],
    has_entries: bool,
) -> SideResult<()> {
    let meta = stream_meta(src, key).await.on(Side::Source)?;
    let q = |c: &mut redis::Cmd| c.clone();
    if !has_entries {
        // An empty stream: create it with one entry trimmed away at once.
        let _: Value = redis::cmd("DEL")
            .arg(key)
            .query_async(tgt)
            .await
            .on(Side::Target)?;
        let _: Value = redis::cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg(0)
            .arg("0-1")
            .arg("offload")
            .arg("empty")
            .query_async(tgt)
            .await
            .on(Side::Target)?;
    }
    let mut setid = redis::cmd("XSETID");
    setid.arg(key).arg(&meta.last_id);
    let basic = q(&mut setid);
    if let Some(n) = meta.entries_added {
        setid.arg("ENTRIESADDED").arg(n);
        if let Some(m) = &meta.max_deleted_id {
            setid.arg("MAXDELETEDID").arg(m);
        }
    }
    if setid.query_async::<Value>(tgt).await.is_err() {
        // A server before 7.0 knows only the plain form.
        basic.query_async::<()>(tgt).await.on(Side::Target)?;
    }
    for g in &meta.groups {
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(key)
            .arg(&g.name)
            .arg(&g.last_delivered);
        let plain = q(&mut create);
        if let Some(n) = g.entries_read {
            create.arg("ENTRIESREAD").arg(n);
        }
        if create.query_async::<Value>(tgt).await.is_err() {
            plain.query_async::<()>(tgt).await.on(Side::Target)?;
        }
        let mut pipe = redis::pipe();
        for c in &g.consumers {
            pipe.cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(key)
                .arg(&g.name)
                .arg(c);
        }
        let replies = run(tgt, &pipe).await.on(Side::Target)?;
        first_error(&replies).on(Side::Target)?;
        let mut after: Option<String> = None;
        loop {
            let piece = pending_piece(src, key, &g.name, after.as_deref())
                .await
                .on(Side::Source)?;
            if piece.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for p in &piece {
                pipe.cmd("XCLAIM")
                    .arg(key)
                    .arg(&g.name)
                    .arg(&p.consumer)
                    .arg(0)
                    .arg(&p.id)
                    .arg("IDLE")
                    .arg(p.idle_ms)
                    .arg("RETRYCOUNT")
                    .arg(p.deliveries)
                    .arg("FORCE")
                    .arg("JUSTID");
            }
            let replies = run(tgt, &pipe).await.on(Side::Target)?;
            first_error(&replies).on(Side::Target)?;
            after = piece.last().map(|p| p.id.clone());
            if piece.len() < super::values::PIECE_ITEMS {
                break;
            }
        }
    }
    Ok(())
}
