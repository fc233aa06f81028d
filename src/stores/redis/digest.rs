//! Per-key digests for verification: key name, type, canonical value and whether it expires,
//! read in pipelined pages; on the target, a key's TTL is checked against the source's within a
//! tolerance. Keys whose source TTL ends before the verification's cutoff are left out on both
//! sides, so a key that expires while the check runs is not reported as lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::copy::{run, OnSide, SideError, SideResult};
use super::values::{
    bytes_of, int_of, pending_piece, stream_meta, text_of, KeyType, Piece, PieceReader,
    ValueDigest, PIECE_ITEMS,
};
use crate::core::Side;

/// Strings up to this size are read with one GET; longer ones in pieces.
const WHOLE_STRING_BYTES: i64 = 256 * 1024;
/// Keys read in pieces at once within a page.
const KEYS_IN_PIECES_AT_ONCE: usize = 16;
/// Estimated bytes of whole values read in one pipeline.
const WHOLE_BYTES: u64 = 4 * 1024 * 1024;

/// Local wall-clock time in milliseconds.
pub fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keys expiring before this moment are left out of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    /// In the source server's clock (compared with PEXPIRETIME), when the source has it.
    pub source_ms: Option<i64>,
    /// In this machine's clock (compared with now + PTTL).
    pub local_ms: i64,
}

impl Cutoff {
    /// Whether a key of the source with this PEXPIRETIME (or, without one, this PTTL read at
    /// `read_local_ms`) expires before the cutoff.
    fn expires_before(&self, expiretime: Option<i64>, pttl: i64, read_local_ms: i64) -> bool {
        match (self.source_ms, expiretime) {
            (Some(cut), Some(at)) if at >= 0 => at < cut,
            _ => read_local_ms + pttl < self.local_ms,
        }
    }
}

/// What one side's digest pass needs.
pub struct DigestPass {
    pub side: Side,
    pub conn: MultiplexedConnection,
    /// The source, for the target's TTL cross-check (None on the source side).
    pub source: Option<MultiplexedConnection>,
    /// The source knows PEXPIRETIME (7.0+).
    pub expiretime: bool,
    pub cutoff: Cutoff,
    pub tolerance_ms: i64,
    /// Whether this side runs the read script (cleared on the first refusal).
    pub scripts: Arc<AtomicBool>,
}

/// One key's digest.
pub struct KeyDigest {
    pub key: Vec<u8>,
    pub digest: [u8; 16],
    pub bytes: u64,
    /// The key's type as TYPE names it (`string`, `hash`, a module's name).
    pub kind: &'static str,
}

struct Probe {
    key: Vec<u8>,
    kind: KeyType,
    has_ttl: bool,
    ttl_differs: bool,
    /// Elements (bytes for a string), when already known.
    size: Option<i64>,
    /// The whole value, when the read script returned it.
    value: Option<Value>,
}

/// What the first read of a key found.
struct Read {
    key: Vec<u8>,
    kind: KeyType,
    pttl: i64,
    expiretime: Option<i64>,
    size: Option<i64>,
    value: Option<Value>,
    read_ms: i64,
}

/// Reads type, TTL, expiry time, size and (when small) the whole value of each key, in one call
/// for a page of keys. ARGV: want PEXPIRETIME, most elements read whole, longest string read
/// whole, byte budget after which keys are left for the next call.
const READ_SCRIPT: &str = r#"
local want_exp, max_items, max_str, budget = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local used = 0
local out = {}
for i, k in ipairs(KEYS) do
  if used >= budget then
    out[i] = {'unread'}
  else
    local t = redis.call('TYPE', k)['ok']
    if t == 'none' then
      out[i] = {t}
    else
      local ttl = redis.call('PTTL', k)
      local exp = -1
      if want_exp then exp = redis.call('PEXPIRETIME', k) end
      local size, value = -1, nil
      if t == 'string' then
        size = redis.call('STRLEN', k)
        if size <= max_str then value = redis.call('GET', k); used = used + size end
      elseif t == 'list' then
        size = redis.call('LLEN', k)
        if size <= max_items then value = redis.call('LRANGE', k, 0, -1) end
      elseif t == 'set' then
        size = redis.call('SCARD', k)
        if size <= max_items then value = redis.call('SMEMBERS', k) end
      elseif t == 'zset' then
        size = redis.call('ZCARD', k)
        if size <= max_items then value = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') end
      elseif t == 'hash' then
        size = redis.call('HLEN', k)
        if size <= max_items then value = redis.call('HGETALL', k) end
      elseif t == 'stream' then
        size = redis.call('XLEN', k)
      end
      if type(value) == 'table' then
        for _, v in ipairs(value) do used = used + #v end
      end
      if value then
        out[i] = {t, ttl, exp, size, value}
      else
        out[i] = {t, ttl, exp, size}
      end
    end
  end
end
return out
"#;

impl DigestPass {
    /// Digest a page of keys; keys gone or expiring before the cutoff are left out.
    pub async fn page(&self, mut keys: Vec<Vec<u8>>) -> SideResult<Vec<KeyDigest>> {
        // A follower's marker on the target is offload's, not the platform's.
        keys.retain(|k| k.as_slice() != super::position::MARKER_KEY.as_bytes());
        let side = self.side;
        let conn = &mut self.conn.clone();
        let reads = if self.scripts.load(Ordering::SeqCst) {
            match self.read_scripted(conn, keys.clone()).await {
                Err(SideError(_, e)) if super::copy::scripts_refused(&e) => {
                    if self.scripts.swap(false, Ordering::SeqCst) {
                        tracing::info!(store = "redis", %side, error = %e, "the server does not run scripts; reading with plain pipelines");
                    }
                    self.read_plain(conn, keys).await?
                }
                other => other?,
            }
        } else {
            self.read_plain(conn, keys).await?
        };
        let mut probes = Vec::with_capacity(reads.len());
        let mut volatile = Vec::new();
        for r in reads {
            if r.kind == KeyType::None || r.pttl == -2 {
                continue;
            }
            if r.pttl >= 0
                && side == Side::Source
                && self.cutoff.expires_before(r.expiretime, r.pttl, r.read_ms)
            {
                continue;
            }
            if r.pttl >= 0 && side == Side::Target {
                volatile.push((probes.len(), r.pttl, r.read_ms));
            }
            probes.push(Some(Probe {
                key: r.key,
                kind: r.kind,
                has_ttl: r.pttl >= 0,
                ttl_differs: false,
                size: r.size,
                value: r.value,
            }));
        }
        if !volatile.is_empty() {
            self.cross_check_ttls(&mut probes, &volatile).await?;
        }
        let probes: Vec<Probe> = probes.into_iter().flatten().collect();
        self.digest_values(conn, probes).await
    }

    /// Type and TTL of each key in one pipeline.
    async fn read_plain(
        &self,
        conn: &mut MultiplexedConnection,
        keys: Vec<Vec<u8>>,
    ) -> SideResult<Vec<Read>> {
        let side = self.side;
        let with_expiretime = self.expiretime && side == Side::Source;
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("TYPE").arg(k).cmd("PTTL").arg(k);
            if with_expiretime {
                pipe.cmd("PEXPIRETIME").arg(k);
            }
        }
        let replies = run(conn, &pipe).await.on(side)?;
        let read_ms = local_ms();
        let per = if with_expiretime { 3 } else { 2 };
        let mut out = Vec::with_capacity(keys.len());
        for (i, key) in keys.into_iter().enumerate() {
            out.push(Read {
                key,
                kind: KeyType::parse(&text_of(replies[i * per].clone()).on(side)?),
                pttl: int_of(&replies[i * per + 1]).on(side)?,
                expiretime: with_expiretime
                    .then(|| int_of(&replies[i * per + 2]).ok())
                    .flatten(),
                size: None,
                value: None,
                read_ms,
            });
        }
        Ok(out)
    }

    /// Type, TTL, size and small values of each key with [`READ_SCRIPT`].
    async fn read_scripted(
        &self,
        conn: &mut MultiplexedConnection,
        mut keys: Vec<Vec<u8>>,
    ) -> SideResult<Vec<Read>> {
        let side = self.side;
        let with_expiretime = self.expiretime && side == Side::Source;
        let mut out = Vec::with_capacity(keys.len());
        while !keys.is_empty() {
            let reply: Value = redis::cmd("EVAL")
                .arg(READ_SCRIPT)
                .arg(keys.len())
                .arg(&keys)
                .arg(if with_expiretime { "1" } else { "0" })
                .arg(PIECE_ITEMS)
                .arg(WHOLE_STRING_BYTES)
                .arg(WHOLE_BYTES)
                .query_async(conn)
                .await
                .on(side)?;
            let read_ms = local_ms();
            let Value::Array(items) = reply else {
                return Err(super::values::unexpected("the read script's reply")).on(side);
            };
            let mut unread = Vec::new();
            for (key, item) in std::mem::take(&mut keys).into_iter().zip(items) {
                let Value::Array(parts) = item else {
                    return Err(super::values::unexpected("a read script entry")).on(side);
                };
                let mut parts = parts.into_iter();
                let kind = text_of(parts.next().unwrap_or(Value::Nil)).on(side)?;
                if kind == "unread" {
                    unread.push(key);
                    continue;
                }
                let mut int = || int_of(&parts.next().unwrap_or(Value::Int(-2)));
                let (pttl, expiretime, size) = (int().on(side)?, int().on(side)?, int().on(side)?);
                out.push(Read {
                    key,
                    kind: KeyType::parse(&kind),
                    pttl,
                    expiretime: with_expiretime.then_some(expiretime),
                    size: Some(size),
                    value: parts.next(),
                    read_ms,
                });
            }
            keys = unread;
        }
        Ok(out)
    }

    /// On the target: compare each expiring key's remaining TTL with the source's, and leave out
    /// the keys the source pass left out (expiring before the cutoff).
    async fn cross_check_ttls(
        &self,
        probes: &mut [Option<Probe>],
        volatile: &[(usize, i64, i64)],
    ) -> SideResult<()> {
        let Some(source) = &mut self.source.clone() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for (i, _, _) in volatile {
            let key = &probes[*i].as_ref().expect("probe").key;
            pipe.cmd("PTTL").arg(key);
            if self.expiretime {
                pipe.cmd("PEXPIRETIME").arg(key);
            }
        }
        let sent = Instant::now();
        let replies = run(source, &pipe).await.on(Side::Source)?;
        // The source was read about half a round trip after sending.
        let source_read_ms = local_ms() - (sent.elapsed().as_millis() as i64) / 2;
        let per = if self.expiretime { 2 } else { 1 };
        for (n, (i, target_pttl, target_read_ms)) in volatile.iter().enumerate() {
            let source_pttl = int_of(&replies[n * per]).on(Side::Source)?;
            let at = self
                .expiretime
                .then(|| int_of(&replies[n * per + 1]).ok())
                .flatten();
            let target_deadline = target_read_ms + target_pttl;
            let slot = &mut probes[*i];
            match source_pttl {
                // Gone from the source: expiring anyway, or an extra key.
                -2 => {
                    if target_deadline < self.cutoff.local_ms {
                        *slot = None;
                    }
                }
                // No TTL on the source: differs (the digest carries has_ttl).
                -1 => {}
                p => {
                    if self.cutoff.expires_before(at, p, source_read_ms) {
                        *slot = None;
                    } else if (target_deadline - (source_read_ms + p)).abs() > self.tolerance_ms {
                        let probe = slot.as_mut().expect("probe");
                        probe.ttl_differs = true;
                        tracing::warn!(
                            store = "redis",
                            key = %super::values::display_key(&probe.key),
                            source_ttl_ms = p,
                            target_ttl_ms = target_pttl,
                            tolerance_ms = self.tolerance_ms,
                            "TTL differs beyond the tolerance"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn digest_values(
        &self,
        conn: &mut MultiplexedConnection,
        mut probes: Vec<Probe>,
    ) -> SideResult<Vec<KeyDigest>> {
        let side = self.side;
        // Sizes, so small values are read whole in one pipeline and big ones in pieces.
        let mut pipe = redis::pipe();
        for p in probes.iter().filter(|p| p.size.is_none()) {
            match p.kind.size_command() {
                Some(c) => pipe.cmd(c).arg(&p.key),
                None => pipe.cmd("EXISTS").arg(&p.key),
            };
        }
        let mut asked = run(conn, &pipe).await.on(side)?.into_iter();
        let mut sizes = Vec::with_capacity(probes.len());
        for p in &mut probes {
            sizes.push(match p.size {
                Some(n) => n,
                None => int_of(&asked.next().unwrap_or(Value::Nil)).on(side)?,
            });
        }
        // Small values are read whole, in pipelines of about WHOLE_BYTES (estimated) each.
        let estimate = |p: &Probe, size: i64| match p.kind {
            KeyType::String if size <= WHOLE_STRING_BYTES => Some(size.max(0) as u64),
            KeyType::List | KeyType::Set | KeyType::Zset | KeyType::Hash
                if size <= PIECE_ITEMS as i64 =>
            {
                Some(size.max(0) as u64 * 64)
            }
            _ => None,
        };
        let mut values: Vec<Option<([u8; 32], u64)>> = vec![None; probes.len()];
        for (i, p) in probes.iter_mut().enumerate() {
            if let Some(v) = p.value.take() {
                let piece = Piece::from_whole(&p.kind, v).on(side)?;
                let mut d = ValueDigest::new(&p.kind);
                d.feed(&piece);
                values[i] = Some((d.finish(&p.kind), piece.bytes()));
            }
        }
        let mut pending: Vec<usize> = Vec::new();
        let mut pending_bytes = 0u64;
        for i in 0..=probes.len() {
            let est = probes
                .get(i)
                .filter(|_| values[i].is_none())
                .and_then(|p| estimate(p, sizes[i]));
            if let Some(est) = est {
                pending.push(i);
                pending_bytes += est;
            }
            let last = i == probes.len();
            if !pending.is_empty() && (last || pending_bytes >= WHOLE_BYTES) {
                let mut pipe = redis::pipe();
                for &j in &pending {
                    let p = &probes[j];
                    match p.kind {
                        KeyType::String => pipe.cmd("GET").arg(&p.key),
                        KeyType::List => pipe.cmd("LRANGE").arg(&p.key).arg(0).arg(-1),
                        KeyType::Set => pipe.cmd("SMEMBERS").arg(&p.key),
                        KeyType::Zset => pipe
                            .cmd("ZRANGE")
                            .arg(&p.key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                        _ => pipe.cmd("HGETALL").arg(&p.key),
                    };
                }
                let replies = run(conn, &pipe).await.on(side)?;
                for (&j, v) in pending.iter().zip(replies) {
                    let kind = &probes[j].kind;
                    let piece = Piece::from_whole(kind, v).on(side)?;
                    let mut d = ValueDigest::new(kind);
                    d.feed(&piece);
                    values[j] = Some((d.finish(kind), piece.bytes()));
                }
                pending.clear();
                pending_bytes = 0;
            }
        }
        // Big values and streams: several keys at once, each read in pieces.
        let rest: Vec<usize> = (0..probes.len()).filter(|&i| values[i].is_none()).collect();
        let probes_ref = &probes;
        let sizes_ref = &sizes;
        let read: Vec<(usize, ([u8; 32], u64))> = futures_util::stream::iter(rest)
            .map(|i| {
                let mut conn = conn.clone();
                async move {
                    let p = &probes_ref[i];
                    let v = self
                        .value_in_pieces(&mut conn, &p.key, &p.kind, sizes_ref[i])
                        .await?;
                    Ok::<_, SideError>((i, v))
                }
            })
            .buffer_unordered(KEYS_IN_PIECES_AT_ONCE)
            .try_collect()
            .await?;
        for (i, v) in read {
            values[i] = Some(v);
        }
        let mut out = Vec::with_capacity(probes.len());
        for (i, p) in probes.iter().enumerate() {
            let (value, bytes) = values[i].take().expect("every value read");
            let mut h = blake3::Hasher::new();
            h.update(&(p.key.len() as u64).to_le_bytes());
            h.update(&p.key);
            h.update(p.kind.as_str().as_bytes());
            h.update(&[0]);
            h.update(&value);
            h.update(&[u8::from(p.has_ttl), u8::from(p.ttl_differs)]);
            let mut digest = [0u8; 16];
            digest.copy_from_slice(&h.finalize().as_bytes()[..16]);
            out.push(KeyDigest {
                key: p.key.clone(),
                digest,
                bytes: bytes + p.key.len() as u64,
                kind: p.kind.type_name(),
            });
        }
        Ok(out)
    }

    /// A big value, a stream or a module type, read in bounded pieces.
    async fn value_in_pieces(
        &self,
        conn: &mut MultiplexedConnection,
        key: &[u8],
        kind: &KeyType,
        size: i64,
    ) -> SideResult<([u8; 32], u64)> {
        let side = self.side;
        if let KeyType::Other(_) = kind {
            // A module type: its serialized form is all there is to compare.
            let payload = bytes_of(
                redis::cmd("DUMP")
                    .arg(key)
                    .query_async::<Value>(conn)
                    .await
                    .on(side)?,
            )
            .on(side)?;
            let mut d = ValueDigest::new(kind);
            d.feed_extra(&[&payload]);
            return Ok((d.finish(kind), payload.len() as u64));
        }
        let mut dedup = false;
        loop {
            let mut d = ValueDigest::new(kind);
            if dedup {
                d = d.dedup();
            }
            let mut bytes = 0;
            let mut reader = PieceReader::new(key, kind.clone());
            while let Some(piece) = reader.next(conn).await.on(side)? {
                bytes += piece.bytes();
                d.feed(&piece);
            }
            // A scan may return a member twice: read again, dropping duplicates.
            if matches!(kind, KeyType::Set | KeyType::Hash) && !dedup && d.elements() as i64 > size
            {
                dedup = true;
                continue;
            }
            if *kind == KeyType::Stream {
                self.stream_extra(conn, key, &mut d).await?;
            }
            return Ok((d.finish(kind), bytes));
        }
    }

    /// A stream's last id and its groups: name, last delivered id, consumers, and each pending
    /// entry's id, owner and delivery count (idle times change by themselves and are left out).
    async fn stream_extra(
        &self,
        conn: &mut MultiplexedConnection,
        key: &[u8],
        d: &mut ValueDigest,
    ) -> SideResult<()> {
        let side = self.side;
        let meta = stream_meta(conn, key).await.on(side)?;
        d.feed_extra(&[b"last-id", meta.last_id.as_bytes()]);
        for g in &meta.groups {
            d.feed_extra(&[b"group", &g.name, g.last_delivered.as_bytes()]);
            for c in &g.consumers {
                d.feed_extra(&[b"consumer", c]);
            }
            let mut after: Option<String> = None;
            loop {
                let piece = pending_piece(conn, key, &g.name, after.as_deref())
                    .await
                    .on(side)?;
                for p in &piece {
                    d.feed_extra(&[
                        b"pending",
                        p.id.as_bytes(),
                        &p.consumer,
                        p.deliveries.to_string().as_bytes(),
                    ]);
                }
                if piece.len() < PIECE_ITEMS {
                    break;
                }
                after = piece.last().map(|p| p.id.clone());
            }
        }
        Ok(())
    }
}
