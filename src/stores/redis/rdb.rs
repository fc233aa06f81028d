//! Cutting a Redis snapshot (the RDB stream a master sends to a new replica) into keys: each
//! value is taken as the bytes `DUMP` would return for it (type byte, serialized value, RDB
//! version, CRC-64), so `RESTORE` on the target accepts it unchanged. Values are never decoded,
//! only measured; one bigger than the caller's limit is read past, and only its name is kept.

use std::io::{self, Read};

/// Highest RDB format this reader knows (Redis 7.4 and 8.x write 12).
pub const MAX_RDB_VERSION: u16 = 12;

/// One key of the snapshot.
#[derive(Debug)]
pub struct SnapshotKey {
    pub key: Vec<u8>,
    /// Absolute expiry in the source's clock, Unix milliseconds.
    pub expire_at_ms: Option<i64>,
    /// The DUMP payload; `None` when the value is bigger than the limit.
    pub payload: Option<Vec<u8>>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    #[error("reading the snapshot stream: {0}")]
    Io(#[from] io::Error),
    /// A layout this reader does not know (a newer server, a module value, ...): the caller
    /// reads the database another way.
    #[error("the snapshot holds {0}, which this version of offload cannot cut into keys")]
    Unsupported(String),
    #[error("the snapshot stream is damaged: {0}")]
    Corrupt(String),
}

/// A length as RDB writes it: a number, or the marker of a specially encoded string.
enum Len {
    Plain(u64),
    Special(u8),
}

/// The byte source, with its own buffer: keeps the CRC-64 of everything read (the stream's
/// trailer checks it) and copies what is read into the current payload while one is being cut.
struct Tap<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// CRC-64 of the bytes before `buf[0]`.
    crc: u64,
    /// Where in `buf` the payload being cut starts.
    capture: Option<usize>,
    payload: Vec<u8>,
    /// Set when the value being cut outgrew the limit: the rest is read and dropped.
    over: bool,
    limit: usize,
}

impl<R: Read> Tap<R> {
    fn new(inner: R, limit: usize) -> Tap<R> {
        Tap {
            inner,
            buf: vec![0u8; 256 * 1024].into_boxed_slice(),
            pos: 0,
            end: 0,
            crc: 0,
            capture: None,
            payload: Vec::new(),
            over: false,
            limit,
        }
    }

    fn keep(&mut self, from: usize, to: usize) {
        if self.over || from >= to {
            return;
        }
        if self.payload.len() + (to - from) > self.limit {
            self.over = true;
            self.payload = Vec::new();
        } else {
            self.payload.extend_from_slice(&self.buf[from..to]);
        }
    }

    /// Called when the buffer is used up: account for it and read more.
    fn refill(&mut self) -> io::Result<()> {
        self.crc = crc64(self.crc, &self.buf[..self.end]);
        if let Some(from) = self.capture {
            self.keep(from, self.end);
            self.capture = Some(0);
        }
        self.pos = 0;
        self.end = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended before the snapshot did",
                    ))
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        if self.pos == self.end {
            self.refill()?;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn fixed<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        if self.end - self.pos >= N {
            out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
            self.pos += N;
        } else {
            for b in out.iter_mut() {
                *b = self.byte()?;
            }
        }
        Ok(out)
    }

    /// Read `n` bytes, appending them to `out` when given.
    fn take(&mut self, n: u64, mut out: Option<&mut Vec<u8>>) -> Result<(), RdbError> {
        let mut left = n;
        while left > 0 {
            if self.pos == self.end {
                self.refill()?;
            }
            let step = (self.end - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(&self.buf[self.pos..self.pos + step]);
            }
            self.pos += step;
            left -= step as u64;
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), RdbError> {
        self.take(n, None)
    }

    fn start_capture(&mut self, kind: u8) {
        self.payload = Vec::with_capacity(64);
        self.payload.push(kind);
        self.over = false;
        self.capture = Some(self.pos);
    }

    /// The bytes read since [`Tap::start_capture`], or `None` if they outgrew the limit.
    fn end_capture(&mut self) -> Option<Vec<u8>> {
        if let Some(from) = self.capture.take() {
            self.keep(from, self.pos);
        }
        (!self.over).then(|| std::mem::take(&mut self.payload))
    }

    /// CRC-64 of everything read so far.
    fn crc_so_far(&self) -> u64 {
        crc64(self.crc, &self.buf[..self.pos])
    }

    fn length(&mut self) -> Result<Len, RdbError> {
        let b = self.byte()?;
        Ok(match b >> 6 {
            0 => Len::Plain(u64::from(b & 0x3f)),
            1 => Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(self.byte()?)),
            2 => match b {
                0x80 => Len::Plain(u64::from(u32::from_be_bytes(self.fixed()?))),
                0x81 => Len::Plain(u64::from_be_bytes(self.fixed()?)),
                _ => return Err(RdbError::Corrupt(format!("length marker {b:#04x}"))),
            },
            _ => Len::Special(b & 0x3f),
        })
    }

    fn count(&mut self) -> Result<u64, RdbError> {
        match self.length()? {
            Len::Plain(n) => Ok(n),
            Len::Special(_) => Err(RdbError::Corrupt(
                "an encoded string where a count belongs".into(),
            )),
        }
    }

    /// Read past one string.
    fn skip_string(&mut self) -> Result<(), RdbError> {
        match self.length()? {
            Len::Plain(n) => self.skip(n),
            Len::Special(0) => self.skip(1),
            Len::Special(1) => self.skip(2),
            Len::Special(2) => self.skip(4),
            Len::Special(3) => {
                let packed = self.count()?;
                self.count()?;
                self.skip(packed)
            }
            Len::Special(e) => Err(RdbError::Corrupt(format!("string encoding {e}"))),
        }
    }

    /// Read one string whole (key names, auxiliary fields), decoding integers and LZF.
    fn string(&mut self) -> Result<Vec<u8>, RdbError> {
        let mut raw = Vec::new();
        match self.length()? {
            Len::Plain(n) => {
                self.take(n, Some(&mut raw))?;
                Ok(raw)
            }
            Len::Special(0) => Ok((self.fixed::<1>()?[0] as i8).to_string().into_bytes()),
            Len::Special(1) => Ok(i16::from_le_bytes(self.fixed()?).to_string().into_bytes()),
            Len::Special(2) => Ok(i32::from_le_bytes(self.fixed()?).to_string().into_bytes()),
            Len::Special(3) => {
                let packed = self.count()?;
                let plain = usize::try_from(self.count()?)
                    .map_err(|_| RdbError::Corrupt("a length beyond memory".into()))?;
                self.take(packed, Some(&mut raw))?;
                lzf_decompress(&raw, plain)
            }
            Len::Special(e) => Err(RdbError::Corrupt(format!("string encoding {e}"))),
        }
    }

    /// Opcodes of a module value or module auxiliary data, up to their end marker.
    fn skip_module_opcodes(&mut self) -> Result<(), RdbError> {
        loop {
            match self.count()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.count()?;
                }
                3 => self.skip(4)?,
                4 => self.skip(8)?,
                5 => self.skip_string()?,
                op => return Err(RdbError::Corrupt(format!("module opcode {op}"))),
            }
        }
    }

    /// Read past the serialized value of type `kind`.
    fn skip_value(&mut self, kind: u8) -> Result<(), RdbError> {
        match kind {
            // A string, or a single blob: ziplist, intset, listpack, zipmap encodings.
            0 | 9 | 10 | 11 | 12 | 13 | 16 | 17 | 20 => self.skip_string(),
            // List (linked), set, quicklist of ziplists.
            1 | 2 | 14 => {
                for _ in 0..self.count()? {
                    self.skip_string()?;
                }
                Ok(())
            }
            // Sorted set with scores written as text.
            3 => {
                for _ in 0..self.count()? {
                    self.skip_string()?;
                    let n = self.byte()?;
                    if n < 253 {
                        self.skip(u64::from(n))?;
                    }
                }
                Ok(())
            }
            4 => {
                for _ in 0..self.count()? {
                    self.skip_string()?;
                    self.skip_string()?;
                }
                Ok(())
            }
            // Sorted set with binary scores.
            5 => {
                for _ in 0..self.count()? {
                    self.skip_string()?;
                    self.skip(8)?;
                }
                Ok(())
            }
            // Module value: the module's id, then self-describing opcodes.
            7 => {
                self.count()?;
                self.skip_module_opcodes()
            }
            // Quicklist of listpacks: container kind, then the node.
            18 => {
                for _ in 0..self.count()? {
                    self.count()?;
                    self.skip_string()?;
                }
                Ok(())
            }
            15 | 19 | 21 => self.skip_stream(kind),
            other => Err(RdbError::Unsupported(format!(
                "a value of RDB type {other}"
            ))),
        }
    }

    fn skip_stream(&mut self, kind: u8) -> Result<(), RdbError> {
        for _ in 0..self.count()? {
            self.skip_string()?; // master entry id
            self.skip_string()?; // listpack
        }
        // Length and last id; from version 2 also first id, max deleted id, entries added.
        let fields = if kind >= 19 { 8 } else { 3 };
        for _ in 0..fields {
            self.count()?;
        }
        for _ in 0..self.count()? {
            self.skip_string()?; // group name
            self.count()?; // last delivered id
            self.count()?;
            if kind >= 19 {
                self.count()?; // entries read
            }
            for _ in 0..self.count()? {
                self.skip(16 + 8)?; // pending id, delivery time
                self.count()?; // delivery count
            }
            for _ in 0..self.count()? {
                self.skip_string()?; // consumer name
                self.skip(if kind >= 21 { 16 } else { 8 })?; // seen (and active) time
                let pending = self.count()?;
                self.skip(pending.saturating_mul(16))?;
            }
        }
        Ok(())
    }
}

/// Reads a snapshot stream key by key.
pub struct RdbReader<R> {
    tap: Tap<R>,
    version: u16,
    db: i64,
    only: Option<i64>,
    finished: bool,
}

impl<R: Read> RdbReader<R> {
    /// Start reading: checks the header. Values over `limit` serialized bytes are not kept.
    pub fn new(inner: R, limit: usize) -> Result<RdbReader<R>, RdbError> {
        let mut tap = Tap::new(inner, limit);
        let header: [u8; 9] = tap.fixed()?;
        if &header[..5] != b"REDIS" {
            return Err(RdbError::Corrupt("no RDB header".into()));
        }
        let version = std::str::from_utf8(&header[5..])
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| RdbError::Corrupt("unreadable RDB version".into()))?;
        if version > MAX_RDB_VERSION {
            return Err(RdbError::Unsupported(format!(
                "RDB format version {version}"
            )));
        }
        Ok(RdbReader {
            tap,
            version,
            db: 0,
            only: None,
            finished: false,
        })
    }

    /// Hand out only the keys of database `db` (the others are read past).
    pub fn only_db(mut self, db: i64) -> RdbReader<R> {
        self.only = Some(db);
        self
    }

    /// The next key, or `None` at the end of the snapshot (its checksum checked).
    pub fn next_key(&mut self) -> Result<Option<SnapshotKey>, RdbError> {
        if self.finished {
            return Ok(None);
        }
        let mut expire_at_ms = None;
        loop {
            let op = self.tap.byte()?;
            match op {
                0xff => {
                    self.finished = true;
                    if self.version >= 5 {
                        let expected = self.tap.crc_so_far();
                        let stated = u64::from_le_bytes(self.tap.fixed()?);
                        if stated != 0 && stated != expected {
                            return Err(RdbError::Corrupt("its checksum does not match".into()));
                        }
                    }
                    return Ok(None);
                }
                0xfe => {
                    self.db = i64::try_from(self.tap.count()?)
                        .map_err(|_| RdbError::Corrupt("database number".into()))?;
                }
                0xfd => {
                    let secs = u32::from_le_bytes(self.tap.fixed()?);
                    expire_at_ms = Some(i64::from(secs) * 1000);
                }
                0xfc => expire_at_ms = Some(i64::from_le_bytes(self.tap.fixed()?)),
                0xfb => {
                    self.tap.count()?;
                    self.tap.count()?;
                }
                0xfa => {
                    self.tap.skip_string()?;
                    self.tap.skip_string()?;
                }
                0xf9 => self.tap.skip(1)?,
                0xf8 => {
                    self.tap.count()?;
                }
                0xf7 => {
                    self.tap.count()?; // module id
                    self.tap.count()?; // when opcode
                    self.tap.count()?; // when
                    self.tap.skip_module_opcodes()?;
                }
                0xf6 => self.tap.skip_string()?,
                0xf4 => {
                    for _ in 0..3 {
                        self.tap.count()?;
                    }
                }
                kind if kind < 0xf0 => {
                    if self.only.is_some_and(|db| db != self.db) {
                        self.tap.skip_string()?;
                        self.tap.skip_value(kind)?;
                        expire_at_ms = None;
                        continue;
                    }
                    let key = self.tap.string()?;
                    return self.value(kind, key, expire_at_ms).map(Some);
                }
                other => {
                    return Err(RdbError::Unsupported(format!("the opcode {other:#04x}")));
                }
            }
        }
    }

    fn value(
        &mut self,
        kind: u8,
        key: Vec<u8>,
        expire_at_ms: Option<i64>,
    ) -> Result<SnapshotKey, RdbError> {
        self.tap.start_capture(kind);
        let read = self.tap.skip_value(kind);
        let payload = self.tap.end_capture();
        read?;
        let payload = payload.map(|mut p| {
            p.extend_from_slice(&self.version.to_le_bytes());
            let crc = crc64(0, &p);
            p.extend_from_slice(&crc.to_le_bytes());
            p
        });
        Ok(SnapshotKey {
            key,
            expire_at_ms,
            payload,
        })
    }
}

/// Expand an LZF block (the compression RDB uses for strings) to `plain` bytes.
fn lzf_decompress(packed: &[u8], plain: usize) -> Result<Vec<u8>, RdbError> {
    let bad = || RdbError::Corrupt("a compressed string does not expand".into());
    // The stated size is only trusted as far as a reasonable reservation goes.
    let mut out = Vec::with_capacity(plain.min(64 << 20));
    let mut i = 0;
    while i < packed.len() {
        let ctrl = usize::from(packed[i]);
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = packed.get(i..i + run).ok_or_else(bad)?;
            out.extend_from_slice(lit);
            i += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*packed.get(i).ok_or_else(bad)?);
                i += 1;
            }
            let back = ((ctrl & 0x1f) << 8) + usize::from(*packed.get(i).ok_or_else(bad)?) + 1;
            i += 1;
            let from = out.len().checked_sub(back).ok_or_else(bad)?;
            for j in 0..len + 2 {
                let b = out[from + j];
                out.push(b);
            }
        }
    }
    if out.len() != plain {
        return Err(bad());
    }
    Ok(out)
}

/// CRC-64 as Redis computes it for DUMP payloads and RDB files (Jones polynomial, reflected).
pub fn crc64(crc: u64, data: &[u8]) -> u64 {
    let t = crc_table();
    let mut crc = crc;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = crc ^ u64::from_le_bytes(c.try_into().expect("8 bytes"));
        crc = t[7][(v & 0xff) as usize]
            ^ t[6][((v >> 8) & 0xff) as usize]
            ^ t[5][((v >> 16) & 0xff) as usize]
            ^ t[4][((v >> 24) & 0xff) as usize]
            ^ t[3][((v >> 32) & 0xff) as usize]
            ^ t[2][((v >> 40) & 0xff) as usize]
            ^ t[1][((v >> 48) & 0xff) as usize]
            ^ t[0][(v >> 56) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

fn crc_table() -> &'static [[u64; 256]; 8] {
    static TABLE: std::sync::OnceLock<Box<[[u64; 256]; 8]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const POLY: u64 = 0x95ac_9329_ac4b_c9b5; // 0xad93d23594c935a9, bits reversed
        let mut t = Box::new([[0u64; 256]; 8]);
        for i in 0..256 {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            t[0][i] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            }
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_the_published_check_value() {
        // CRC-64/REDIS of "123456789" (the catalogue's check value).
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        // Same result whether fed at once or in pieces, through both the 8-byte and tail paths.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = crc64(0, &data);
        let parts = crc64(crc64(0, &data[..13]), &data[13..]);
        assert_eq!(whole, parts);
    }

    /// A reader that hands out one byte per call, so every value crosses buffer refills.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.split_first() {
                Some((b, rest)) if !buf.is_empty() => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn short(text: &[u8]) -> Vec<u8> {
        let mut v = vec![text.len() as u8];
        v.extend_from_slice(text);
        v
    }

    /// A version-10 snapshot: an auxiliary field, database 0 with a key with a deadline and
    /// one whose value is stored as an integer, database 1 with one key, and the checksum.
    fn snapshot() -> Vec<u8> {
        let mut s = b"REDIS0010".to_vec();
        s.push(0xfa);
        s.extend(short(b"redis-ver"));
        s.extend(short(b"7.0.15"));
        s.extend([0xfe, 0x00, 0xfb, 0x02, 0x01]);
        s.push(0xfc);
        s.extend(1_900_000_000_000i64.to_le_bytes());
        s.push(0x00);
        s.extend(short(b"greeting"));
        s.extend(short(b"hello"));
        s.push(0x00);
        s.extend(short(b"answer"));
        s.extend([0xc0, 42]);
        s.extend([0xfe, 0x01, 0x00]);
        s.extend(short(b"elsewhere"));
        s.extend(short(b"x"));
        s.push(0xff);
        let crc = crc64(0, &s);
        s.extend(crc.to_le_bytes());
        s
    }

    /// What DUMP returns for a value: its bytes, the format version, the CRC-64 of both.
    fn dumped(value: &[u8]) -> Vec<u8> {
        let mut p = value.to_vec();
        p.extend(10u16.to_le_bytes());
        let crc = crc64(0, &p);
        p.extend(crc.to_le_bytes());
        p
    }

    #[test]
    fn keys_are_cut_into_dump_payloads_across_refills() {
        let data = snapshot();
        let mut r = RdbReader::new(Trickle(&data), 1024).unwrap().only_db(0);
        let k = r.next_key().unwrap().unwrap();
        assert_eq!(k.key, b"greeting");
        assert_eq!(k.expire_at_ms, Some(1_900_000_000_000));
        assert_eq!(k.payload.unwrap(), dumped(b"\x00\x05hello"));
        let k = r.next_key().unwrap().unwrap();
        assert_eq!(k.key, b"answer");
        assert_eq!(k.expire_at_ms, None, "a deadline belongs to one key only");
        assert_eq!(k.payload.unwrap(), dumped(&[0x00, 0xc0, 42]));
        assert!(r.next_key().unwrap().is_none(), "database 1 is read past");
        assert!(r.next_key().unwrap().is_none());

        let mut all = RdbReader::new(&data[..], 1024).unwrap();
        let names: Vec<Vec<u8>> = std::iter::from_fn(|| all.next_key().unwrap())
            .map(|k| k.key)
            .collect();
        assert_eq!(names, [&b"greeting"[..], b"answer", b"elsewhere"]);
    }

    #[test]
    fn values_over_the_limit_keep_only_their_name() {
        let data = snapshot();
        let mut r = RdbReader::new(Trickle(&data), 4).unwrap();
        let k = r.next_key().unwrap().unwrap();
        assert_eq!(k.key, b"greeting");
        assert!(k.payload.is_none(), "7 bytes over a limit of 4");
        let k = r.next_key().unwrap().unwrap();
        assert_eq!(k.payload.unwrap(), dumped(&[0x00, 0xc0, 42]));
    }

    #[test]
    fn a_damaged_stream_is_refused() {
        let mut data = snapshot();
        let last = data.len() - 1;
        data[last] ^= 1;
        let mut r = RdbReader::new(&data[..], 1024).unwrap();
        let outcome = std::iter::from_fn(|| match r.next_key() {
            Ok(Some(_)) => Some(Ok(())),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
        .find(Result::is_err);
        assert!(
            matches!(outcome, Some(Err(RdbError::Corrupt(_)))),
            "a wrong checksum: {outcome:?}"
        );
        let cut = &snapshot()[..40];
        let mut r = RdbReader::new(cut, 1024).unwrap();
        assert!(
            matches!(r.next_key(), Err(RdbError::Io(_))),
            "a stream cut short"
        );
        let newer = b"REDIS0013\xff";
        assert!(matches!(
            RdbReader::new(&newer[..], 1024),
            Err(RdbError::Unsupported(_))
        ));
    }

    #[test]
    fn lzf_expands_literals_and_back_references() {
        // "abcabcabcabc": 3 literals, then a back reference of length 9 at distance 3.
        let packed = [2, b'a', b'b', b'c', (7 << 5), 9 - 2 - 7, 2];
        assert_eq!(lzf_decompress(&packed, 12).unwrap(), b"abcabcabcabc");
        assert!(lzf_decompress(&packed, 11).is_err());
        assert!(lzf_decompress(&[(1 << 5), 5], 3).is_err());
    }
}
