//! What makes two objects the same: size, a content digest computed the same way on both sides
//! (the S3 ETag the copy gives the object: MD5 for one part, MD5 of the part MD5s for a
//! multipart upload, or with `--deep` the MD5 of all bytes), and the metadata offload carries
//! (Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language, user
//! metadata).

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The metadata offload copies, as S3 returns it on HEAD/GET.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// `x-amz-meta-*`, names lowercased.
    pub user: BTreeMap<String, String>,
}

impl Meta {
    /// A stable text of the metadata, for digests.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        for (name, v) in [
            ("content-type", &self.content_type),
            ("cache-control", &self.cache_control),
            ("content-disposition", &self.content_disposition),
            ("content-encoding", &self.content_encoding),
            ("content-language", &self.content_language),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                s.push_str(&format!("{name}:{v}\n"));
            }
        }
        for (k, v) in &self.user {
            s.push_str(&format!("x-amz-meta-{}:{v}\n", k.to_ascii_lowercase()));
        }
        s
    }

    /// The metadata Django's S3 storage would give a file of this name: Content-Type (and
    /// Content-Encoding for compressed files) guessed from its extension, as Python's
    /// `mimetypes.guess_type` does.
    pub fn guess(name: &str) -> Meta {
        let lower = name.to_ascii_lowercase();
        let mut stem = lower.as_str();
        let mut encoding = None;
        for (suffix, enc) in [
            (".gz", "gzip"),
            (".z", "compress"),
            (".bz2", "bzip2"),
            (".xz", "xz"),
            (".br", "br"),
        ] {
            if let Some(s) = stem.strip_suffix(suffix) {
                stem = s;
                encoding = Some(enc.to_string());
                break;
            }
        }
        let has_ext = std::path::Path::new(stem)
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.contains('.'));
        let guessed = if has_ext {
            mime_guess::from_path(stem).first_raw().map(str::to_string)
        } else {
            None
        };
        Meta {
            content_type: Some(guessed.unwrap_or_else(|| "application/octet-stream".into())),
            content_encoding: encoding,
            ..Meta::default()
        }
    }
}

/// Whether an ETag is a plain MD5 (32 hex digits).
pub fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The number of parts of a multipart ETag (`<md5>-N`).
pub fn multipart_parts(etag: &str) -> Option<u64> {
    let (md5, n) = etag.split_once('-')?;
    (is_md5(md5)).then_some(())?;
    n.parse().ok()
}

/// The ETag S3 gives a multipart upload of parts with these MD5s.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for p in part_md5s {
        h.update(p);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// The sizes of the parts an object of `size` bytes is uploaded in with parts of `part_size`.
pub fn uniform_parts(size: u64, part_size: u64) -> Vec<u64> {
    let part_size = part_size.max(1);
    let mut out = Vec::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(part_size);
        out.push(n);
        left -= n;
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

/// Hashes a byte stream as the parts of an upload would: the MD5 of each part, and the MD5 of
/// everything.
pub struct PartHasher {
    parts: Vec<u64>,
    index: usize,
    in_part: u64,
    part: Md5,
    whole: Md5,
    done: Vec<[u8; 16]>,
}

impl PartHasher {
    pub fn new(parts: Vec<u64>) -> Self {
        PartHasher {
            parts,
            index: 0,
            in_part: 0,
            part: Md5::new(),
            whole: Md5::new(),
            done: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        while !data.is_empty() {
            let want = self.parts.get(self.index).copied().unwrap_or(u64::MAX) - self.in_part;
            let take = (want.min(data.len() as u64)) as usize;
            self.part.update(&data[..take]);
            self.in_part += take as u64;
            data = &data[take..];
            if self.index < self.parts.len() && self.in_part == self.parts[self.index] {
                let d = std::mem::take(&mut self.part).finalize();
                self.done.push(d.into());
                self.index += 1;
                self.in_part = 0;
            }
        }
    }

    /// (MD5 of everything, the ETag of the upload: plain MD5 for one part, else multipart).
    pub fn finish(mut self) -> ([u8; 16], String) {
        if self.in_part > 0 || (self.done.is_empty() && self.parts.len() <= 1) {
            let d = std::mem::take(&mut self.part).finalize();
            self.done.push(d.into());
        }
        let whole: [u8; 16] = self.whole.finalize().into();
        let etag = if self.parts.len() <= 1 {
            hex::encode(whole)
        } else {
            multipart_etag(&self.done)
        };
        (whole, etag)
    }
}

/// The digest of one object: key, size, content digest and metadata.
pub fn object_digest(key: &str, size: u64, content: &str, meta: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for part in [
        key.as_bytes(),
        &size.to_le_bytes(),
        content.as_bytes(),
        meta.as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_match_the_known_formula() {
        // Two parts "ab" + "c": md5(md5("ab") ++ md5("c")) - 2, computed independently.
        let a: [u8; 16] = Md5::digest(b"ab").into();
        let c: [u8; 16] = Md5::digest(b"c").into();
        let mut joined = a.to_vec();
        joined.extend_from_slice(&c);
        let expected = format!("{}-2", hex::encode(Md5::digest(&joined)));
        assert_eq!(multipart_etag(&[a, c]), expected);
        let mut h = PartHasher::new(uniform_parts(3, 2));
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish().1, expected);
        // One part: the plain MD5, also for an empty object.
        let mut h = PartHasher::new(uniform_parts(0, 5));
        h.update(b"");
        assert_eq!(h.finish().1, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            multipart_parts("d41d8cd98f00b204e9800998ecf8427e-12"),
            Some(12)
        );
        assert_eq!(multipart_parts("d41d8cd98f00b204e9800998ecf8427e"), None);
    }

    #[test]
    fn guesses_types_like_django() {
        assert_eq!(
            Meta::guess("a/b.png").content_type.as_deref(),
            Some("image/png")
        );
        let gz = Meta::guess("x.tar.gz");
        assert_eq!(gz.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(
            Meta::guess("noext").content_type.as_deref(),
            Some("application/octet-stream")
        );
    }
}
