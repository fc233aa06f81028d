//! Cutting a Redis snapshot (the RDB stream a master sends to a new replica) into keys: each
//! value is taken as the bytes `DUMP` would return for it (type byte, serialized value, RDB
//! version, CRC-64), so `RESTORE` on the target accepts it unchanged. Values are never decoded,
//! only measured; one bigger than the caller's limit is read past, and only its name is kept.
//!
//! The stream is treated as hostile: every length it declares is checked before anything is
//! allocated for it (key names are capped at [`MAX_KEY_BYTES`], payloads at the caller's limit,
//! and both only grow as bytes really arrive), LZF expansion stops the moment it would pass the
//! declared size, and no input-derived value is used unchecked as an index or in arithmetic.

use std::io::{self, Read};

/// Highest RDB format this reader knows (Redis 7.4 and 8.x write 12).
pub const MAX_RDB_VERSION: u16 = 12;

/// The longest key name this reader holds in memory. Redis allows up to 512 MiB, but Open edX's
/// keys are short; a snapshot declaring a longer one is read with SCAN instead.
pub const MAX_KEY_BYTES: u64 = 1 << 20;

/// One key of the snapshot.
#[derive(Debug)]
pub struct SnapshotKey {
    pub key: Vec<u8>,
    /// Absolute expiry in the source's clock, Unix milliseconds.
    pub expire_at_ms: Option<i64>,
    /// The DUMP payload; `None` when the value is bigger than the limit.
    pub payload: Option<Vec<u8>>,
}

/// Why a snapshot could not be read. Every kind but `Io` means "read this database another
/// way" (live with SCAN); `Io` means the connection broke and a retry may succeed.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    #[error("reading the snapshot stream: {0}")]
    Io(#[from] io::Error),
    /// A layout this reader does not know (a newer server, a module value, ...): the caller
    /// reads the database another way.
    #[error(
        "the snapshot holds {0}, which this version of offload cannot cut into keys; the keys \
         are read live with SCAN instead"
    )]
    Unsupported(String),
    /// Bytes that no Redis writes: `at` is the offset in the stream.
    #[error(
        "the snapshot stream is damaged at byte {at}: {what}; the keys are read live with SCAN \
         instead (if this recurs, check the source server's memory and disk)"
    )]
    Corrupt { at: u64, what: String },
    /// A declared length over what this reader holds in memory.
    #[error(
        "the snapshot declares {what} of {declared} bytes at byte {at}, over this reader's \
         limit of {cap}; the keys are read live with SCAN instead"
    )]
    TooLarge {
        what: &'static str,
        declared: u64,
        cap: u64,
        at: u64,
    },
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
    /// Bytes of the stream before `buf[0]`, for the offsets errors name.
    before: u64,
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
            before: 0,
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
        if self.payload.len().saturating_add(to - from) > self.limit {
            self.over = true;
            self.payload = Vec::new();
        } else if let Some(bytes) = self.buf.get(from..to) {
            self.payload.extend_from_slice(bytes);
        }
    }

    /// The offset in the stream of the next byte to read.
    fn offset(&self) -> u64 {
        self.before + self.pos as u64
    }

    /// A `Corrupt` error at the current offset.
    fn corrupt(&self, what: impl Into<String>) -> RdbError {
        RdbError::Corrupt {
            at: self.offset(),
            what: what.into(),
        }
    }

    /// `n` as a size to hold in memory, if it is at most `cap`.
    fn within(&self, what: &'static str, n: u64, cap: u64) -> Result<usize, RdbError> {
        usize::try_from(n)
            .ok()
            .filter(|_| n <= cap)
            .ok_or(RdbError::TooLarge {
                what,
                declared: n,
                cap,
                at: self.offset(),
            })
    }

    /// Called when the buffer is used up: account for it and read more.
    fn refill(&mut self) -> io::Result<()> {
        self.crc = crc64(self.crc, &self.buf[..self.end]);
        if let Some(from) = self.capture {
            self.keep(from, self.end);
            self.capture = Some(0);
        }
        self.before += self.end as u64;
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
                _ => return Err(self.corrupt(format!("length marker {b:#04x}"))),
            },
            _ => Len::Special(b & 0x3f),
        })
    }

    fn count(&mut self) -> Result<u64, RdbError> {
        match self.length()? {
            Len::Plain(n) => Ok(n),
            Len::Special(_) => Err(self.corrupt("an encoded string where a count belongs")),
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
            Len::Special(e) => Err(self.corrupt(format!("string encoding {e}"))),
        }
    }

    /// Read one key name whole, decoding integers and LZF; at most [`MAX_KEY_BYTES`].
    fn key_name(&mut self) -> Result<Vec<u8>, RdbError> {
        match self.length()? {
            Len::Plain(n) => {
                let n = self.within("a key name", n, MAX_KEY_BYTES)?;
                let mut raw = Vec::with_capacity(n.min(64 * 1024));
                self.take(n as u64, Some(&mut raw))?;
                Ok(raw)
            }
            Len::Special(0) => Ok((self.fixed::<1>()?[0] as i8).to_string().into_bytes()),
            Len::Special(1) => Ok(i16::from_le_bytes(self.fixed()?).to_string().into_bytes()),
            Len::Special(2) => Ok(i32::from_le_bytes(self.fixed()?).to_string().into_bytes()),
            Len::Special(3) => {
                let packed = self.count()?;
                let packed = self.within("a compressed key name", packed, MAX_KEY_BYTES)?;
                let plain = self.count()?;
                let plain = self.within("a key name", plain, MAX_KEY_BYTES)?;
                let mut raw = Vec::with_capacity(packed.min(64 * 1024));
                self.take(packed as u64, Some(&mut raw))?;
                lzf_decompress(&raw, plain).map_err(|what| self.corrupt(what))
            }
            Len::Special(e) => Err(self.corrupt(format!("string encoding {e}"))),
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
                op => return Err(self.corrupt(format!("module opcode {op}"))),
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
        let (magic, digits) = header.split_at(5);
        if magic != b"REDIS" {
            return Err(RdbError::Corrupt {
                at: 0,
                what: "it does not start with an RDB header".into(),
            });
        }
        let version = digits
            .iter()
            .try_fold(0u16, |v, d| {
                d.is_ascii_digit().then(|| v * 10 + u16::from(d - b'0'))
            })
            .ok_or_else(|| RdbError::Corrupt {
                at: 5,
                what: "its RDB version is not a number".into(),
            })?;
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
                            return Err(self.tap.corrupt("its checksum does not match"));
                        }
                    }
                    return Ok(None);
                }
                0xfe => {
                    let db = self.tap.count()?;
                    self.db = i64::try_from(db)
                        .map_err(|_| self.tap.corrupt(format!("{db} is not a database number")))?;
                }
                0xfd => {
                    let secs = u32::from_le_bytes(self.tap.fixed()?);
                    // At most about 4.3e12: no u32 of seconds overflows as milliseconds.
                    expire_at_ms = i64::from(secs).checked_mul(1000);
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
                    let key = self.tap.key_name()?;
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

/// Expand an LZF block (the compression RDB uses for strings) to exactly `plain` bytes; the
/// output never grows past `plain`, whatever the block says. `plain` is already capped.
fn lzf_decompress(packed: &[u8], plain: usize) -> Result<Vec<u8>, &'static str> {
    const PAST: &str = "a compressed string expands past its declared size";
    const BROKEN: &str = "a compressed string is cut short or refers before its start";
    let mut out = Vec::with_capacity(plain.min(64 * 1024));
    let mut rest = packed;
    while let Some((&ctrl, tail)) = rest.split_first() {
        rest = tail;
        let ctrl = usize::from(ctrl);
        if ctrl < 32 {
            let run = ctrl + 1;
            if out.len() + run > plain {
                return Err(PAST);
            }
            let lit = rest.get(..run).ok_or(BROKEN)?;
            out.extend_from_slice(lit);
            rest = &rest[run..];
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                let (&more, tail) = rest.split_first().ok_or(BROKEN)?;
                len += usize::from(more);
                rest = tail;
            }
            let (&low, tail) = rest.split_first().ok_or(BROKEN)?;
            rest = tail;
            let back = ((ctrl & 0x1f) << 8) + usize::from(low) + 1;
            let copy = len + 2;
            if out.len() + copy > plain {
                return Err(PAST);
            }
            let from = out.len().checked_sub(back).ok_or(BROKEN)?;
            // Byte by byte: a reference may overlap what it is writing (a run).
            for j in from..from + copy {
                let b = *out.get(j).ok_or(BROKEN)?;
                out.push(b);
            }
        }
    }
    if out.len() != plain {
        return Err("a compressed string expands to less than its declared size");
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
            matches!(outcome, Some(Err(RdbError::Corrupt { .. }))),
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

    /// A snapshot header, database 0, and `body` (no end marker: readers stop before it).
    fn hostile(body: &[u8]) -> Vec<u8> {
        let mut s = b"REDIS0010\xfe\x00".to_vec();
        s.extend_from_slice(body);
        s
    }

    fn first_error(data: &[u8], limit: usize) -> RdbError {
        let mut r = RdbReader::new(data, limit).expect("header");
        loop {
            match r.next_key() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("read to the end"),
                Err(e) => return e,
            }
        }
    }

    #[test]
    fn declared_lengths_over_the_caps_are_refused_before_anything_is_allocated() {
        // A string value named by a 4 GiB key name (64-bit length form).
        let mut body = vec![0x00, 0x81];
        body.extend((4u64 << 30).to_be_bytes());
        let e = first_error(&hostile(&body), 1024);
        assert!(
            matches!(e, RdbError::TooLarge { what: "a key name", declared, cap: MAX_KEY_BYTES, at: 21 } if declared == 4 << 30),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("SCAN"),
            "says what happens next: {e}"
        );
        // An LZF key name declaring 4 GiB once expanded, from 3 packed bytes.
        let mut body = vec![0x00, 0xc3, 0x03, 0x81];
        body.extend((4u64 << 30).to_be_bytes());
        body.extend([0x00, b'a', 0x00]);
        let e = first_error(&hostile(&body), 1024);
        assert!(
            matches!(
                e,
                RdbError::TooLarge {
                    what: "a key name",
                    ..
                }
            ),
            "{e:?}"
        );
        // A declared 4 GiB value is read past (never held: over the limit) until the stream ends.
        let mut body = vec![0x00, 0x01, b'k', 0x80];
        body.extend(u32::MAX.to_be_bytes());
        body.extend([b'x'; 100]);
        let e = first_error(&hostile(&body), 16);
        assert!(
            matches!(e, RdbError::Io(ref io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );
        // A set declaring 2^64-1 members ends with the stream too, without allocating for them.
        let mut body = vec![0x02, 0x01, b'k', 0x81];
        body.extend(u64::MAX.to_be_bytes());
        body.extend([0x01, b'm']);
        assert!(matches!(first_error(&hostile(&body), 16), RdbError::Io(_)));
    }

    #[test]
    fn lzf_stops_as_soon_as_it_would_pass_the_declared_size() {
        // One literal, then a back reference of 264 bytes: far past a declared 10.
        let bomb = [0x00, b'a', 0xe0, 0xff, 0x00];
        assert_eq!(
            lzf_decompress(&bomb, 10),
            Err("a compressed string expands past its declared size")
        );
        assert_eq!(
            lzf_decompress(&[0x05, b'a'], 6).unwrap_err(),
            "a compressed string is cut short or refers before its start"
        );
        assert!(
            lzf_decompress(&[0x20, 0x05], 3).is_err(),
            "a reference before the start"
        );
        assert_eq!(lzf_decompress(&[], 0).unwrap(), b"");
        // The same bomb inside a snapshot: a damaged stream, with the offset named.
        let mut body = vec![0x00, 0xc3, 0x05, 0x0a];
        body.extend(bomb);
        let e = first_error(&hostile(&body), 1024);
        assert!(matches!(e, RdbError::Corrupt { at: 20, .. }), "{e:?}");
    }

    #[test]
    fn any_expiry_is_read_and_damage_is_named_by_offset() {
        for ms in [i64::MIN, -1, 0, i64::MAX] {
            let mut body = vec![0xfc];
            body.extend(ms.to_le_bytes());
            body.extend([0x00, 0x01, b'k', 0x01, b'v', 0xff]);
            let data = hostile(&body);
            let mut r = RdbReader::new(&data[..], 1024).unwrap();
            assert_eq!(r.next_key().unwrap().unwrap().expire_at_ms, Some(ms));
        }
        let mut body = vec![0xfd];
        body.extend(u32::MAX.to_le_bytes());
        body.extend([0x00, 0x01, b'k', 0x01, b'v', 0xff]);
        let data = hostile(&body);
        let mut r = RdbReader::new(&data[..], 1024).unwrap();
        assert_eq!(
            r.next_key().unwrap().unwrap().expire_at_ms,
            Some(i64::from(u32::MAX) * 1000)
        );
        // A length marker no Redis writes (0x82): the offset named is where reading stopped.
        let e = first_error(&hostile(&[0x00, 0x01, b'k', 0x82]), 1024);
        assert!(
            matches!(e, RdbError::Corrupt { at: 15, ref what } if what.contains("0x82")),
            "{e:?}"
        );
        for header in [&b"REDIS+010"[..], b"REDIS 010", b"RADIS0010"] {
            assert!(
                matches!(RdbReader::new(header, 1024), Err(RdbError::Corrupt { .. })),
                "{header:?}"
            );
        }
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
