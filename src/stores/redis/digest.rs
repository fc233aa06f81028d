//! Per-key digests for verification: key name, type, canonical value and whether it expires,
//! read in pipelined pages; on the target, a key's TTL is checked against the source's within a
//! tolerance. Keys whose source TTL ends before the verification's cutoff are left out on both
//! sides, so a key that expires while the check runs is not reported as lost.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::copy::{run, OnSide, SideResult};
use super::values::{
    bytes_of, int_of, pending_piece, stream_meta, text_of, KeyType, Piece, PieceReader,
    ValueDigest, PIECE_ITEMS,
};
use crate::core::Side;

/// Strings up to this size are read with one GET; longer ones in pieces.
const WHOLE_STRING_BYTES: i64 = 256 * 1024;
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
}

/// One key's digest.
pub struct KeyDigest {
    pub key: Vec<u8>,
    pub digest: [u8; 16],
    pub bytes: u64,
}

struct Probe {
    key: Vec<u8>,
    kind: KeyType,
    has_ttl: bool,
    ttl_differs: bool,
}

impl DigestPass {
    /// Digest a page of keys; keys gone or expiring before the cutoff are left out.
    pub async fn page(&self, keys: Vec<Vec<u8>>) -> SideResult<Vec<KeyDigest>> {
        let side = self.side;
        let conn = &mut self.conn.clone();
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
        let mut probes = Vec::with_capacity(keys.len());
        let mut volatile = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let kind = KeyType::parse(&text_of(replies[i * per].clone()).on(side)?);
            let pttl = int_of(&replies[i * per + 1]).on(side)?;
            if kind == KeyType::None || pttl == -2 {
                continue;
            }
            if pttl >= 0 && side == Side::Source {
                let at = with_expiretime
                    .then(|| int_of(&replies[i * per + 2]).ok())
                    .flatten();
                if self.cutoff.expires_before(at, pttl, read_ms) {
                    continue;
                }
            }
            if pttl >= 0 && side == Side::Target {
                volatile.push((probes.len(), pttl));
            }
            probes.push(Some(Probe {
                key,
                kind,
                has_ttl: pttl >= 0,
                ttl_differs: false,
            }));
        }
        if !volatile.is_empty() {
            self.cross_check_ttls(&mut probes, &volatile, read_ms)
                .await?;
        }
        let probes: Vec<Probe> = probes.into_iter().flatten().collect();
        self.digest_values(conn, probes).await
    }

    /// On the target: compare each expiring key's remaining TTL with the source's, and leave out
    /// the keys the source pass left out (expiring before the cutoff).
    async fn cross_check_ttls(
        &self,
        probes: &mut [Option<Probe>],
        volatile: &[(usize, i64)],
        target_read_ms: i64,
    ) -> SideResult<()> {
        let Some(source) = &mut self.source.clone() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for (i, _) in volatile {
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
        for (n, (i, target_pttl)) in volatile.iter().enumerate() {
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
        probes: Vec<Probe>,
    ) -> SideResult<Vec<KeyDigest>> {
        let side = self.side;
        // Sizes, so small values are read whole in one pipeline and big ones in pieces.
        let mut pipe = redis::pipe();
        for p in &probes {
            match p.kind.size_command() {
                Some(c) => pipe.cmd(c).arg(&p.key),
                None => pipe.cmd("EXISTS").arg(&p.key),
            };
        }
        let sizes = run(conn, &pipe).await.on(side)?;
        let sizes: Vec<i64> = sizes
            .iter()
            .map(int_of)
            .collect::<redis::RedisResult<_>>()
            .on(side)?;
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
        let mut pending: Vec<usize> = Vec::new();
        let mut pending_bytes = 0u64;
        for i in 0..=probes.len() {
            let est = probes.get(i).and_then(|p| estimate(p, sizes[i]));
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
        let mut out = Vec::with_capacity(probes.len());
        for (i, p) in probes.iter().enumerate() {
            let (value, bytes) = match values[i].take() {
                Some(v) => v,
                None => self.value_in_pieces(conn, &p.key, &p.kind, sizes[i]).await?,
            };
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
