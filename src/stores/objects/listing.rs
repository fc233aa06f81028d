//! Listing objects in key order, the same way on every side: an S3 bucket through ListObjectsV2
//! (`StartAfter`, pages of 1000) and a folder of files through a walk that visits entries in the
//! UTF-8 byte order of the keys they produce, one directory at a time, so memory stays bounded
//! by one directory's entries and both sides can be compared range by range.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use super::endpoint::{classify, Failure};
use crate::core::{Side, StoreError};

/// How files in a folder become objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Every file is an object; its path relative to the folder is the key.
    Plain,
    /// ORA2's filesystem backend: a folder holding `content` (and `metadata.json`) is one object
    /// whose key is the folder's relative path.
    Ora2,
}

/// The part of a bucket a unit owns: keys under `prefix`, minus keys under any `exclude` prefix
/// (those belong to other units).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySpace {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl KeySpace {
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && !self.exclude.iter().any(|e| key.starts_with(e))
    }
}

/// One object as a listing shows it. Keys are always in the target's key space.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The ETag without quotes, lowercased; `None` for files.
    pub etag: Option<String>,
    /// The file holding the content, for a filesystem source.
    pub file: Option<PathBuf>,
    /// Why this entry cannot be copied (unreadable folder, name not UTF-8), found while listing.
    pub problem: Option<String>,
}

/// Normalise an ETag: no quotes, lowercase.
pub fn clean_etag(e: &str) -> String {
    e.trim().trim_matches('"').to_ascii_lowercase()
}

/// List up to `limit` objects of `space` on an S3 endpoint with keys after `after` and up to
/// `upto`. Returns the objects and whether more may follow.
#[allow(clippy::too_many_arguments)]
pub async fn list_s3(
    client: &aws_sdk_s3::Client,
    side: Side,
    address: &str,
    space: &KeySpace,
    after: Option<&str>,
    upto: Option<&str>,
    limit: usize,
    missing_bucket_is_empty: bool,
) -> Result<(Vec<Listed>, bool), StoreError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    // StartAfter before the prefix is harmless; after it, it skips straight to the cursor.
    let start_after = after.filter(|a| a.as_bytes() >= space.prefix.as_bytes());
    if let Some(a) = after {
        if !a.starts_with(&space.prefix) && a.as_bytes() > space.prefix.as_bytes() {
            return Ok((out, false)); // every key of the space sorts before the cursor
        }
    }
    loop {
        let mut req = client
            .list_objects_v2()
            .bucket(&space.bucket)
            .max_keys(1000);
        if !space.prefix.is_empty() {
            req = req.prefix(&space.prefix);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        } else if let Some(a) = start_after {
            req = req.start_after(a);
        }
        let page = match req.send().await {
            Ok(p) => p,
            Err(e) => {
                let f = classify(side, address, "listing the bucket", false, &e);
                return match f {
                    Failure::Fatal(err)
                        if missing_bucket_is_empty && e.code() == Some("NoSuchBucket") =>
                    {
                        let _ = err;
                        Ok((out, false))
                    }
                    Failure::Fatal(err) => Err(err.in_unit(&space.bucket)),
                    _ => unreachable!("bucket-level calls fail fatally"),
                };
            }
        };
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            if let Some(a) = after {
                if key.as_bytes() <= a.as_bytes() {
                    continue;
                }
            }
            if let Some(u) = upto {
                if key.as_bytes() > u.as_bytes() {
                    return Ok((out, false));
                }
            }
            if !space.owns(key) {
                continue;
            }
            out.push(Listed {
                key: key.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(clean_etag),
                file: None,
                problem: None,
            });
            if out.len() >= limit {
                return Ok((out, true));
            }
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return Ok((out, false)),
        }
    }
}

/// A folder mapped into a key space: files under `folder` (leaving out `skip_dirs` at its top)
/// become keys `prefix + relative path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderSpec {
    pub folder: PathBuf,
    #[serde(default)]
    pub skip_dirs: Vec<String>,
    pub layout: Layout,
}

/// The file holding the content of `key` in a folder mapped with `prefix`.
pub fn file_path(spec: &FolderSpec, prefix: &str, key: &str) -> PathBuf {
    let rel = key.strip_prefix(prefix).unwrap_or(key);
    let path = spec.folder.join(rel);
    match spec.layout {
        Layout::Plain => path,
        Layout::Ora2 => path.join("content"),
    }
}

/// List up to `limit` files of a folder with keys (in the target key space, with `prefix`) after
/// `after` and up to `upto`. Blocking: call from `spawn_blocking`.
pub fn list_folder(
    spec: &FolderSpec,
    prefix: &str,
    after: Option<&str>,
    upto: Option<&str>,
    limit: usize,
) -> (Vec<Listed>, bool) {
    let mut out = Vec::new();
    // Translate the cursors from the key space into paths relative to the folder.
    let rel_after = match after {
        None => None,
        Some(a) if a.starts_with(prefix) => Some(&a[prefix.len()..]),
        Some(a) if a.as_bytes() < prefix.as_bytes() => None,
        Some(_) => return (out, false),
    };
    let rel_upto = match upto {
        None => None,
        Some(u) if u.starts_with(prefix) => Some(&u[prefix.len()..]),
        Some(u) if u.as_bytes() < prefix.as_bytes() => return (out, false),
        Some(_) => None,
    };
    if !spec.folder.is_dir() {
        return (out, false);
    }
    let mut walk = Walk {
        spec,
        prefix,
        after: rel_after,
        upto: rel_upto,
        limit,
        out: &mut out,
    };
    let more = walk.dir(&spec.folder, "") == Stop::Full;
    (out, more)
}

#[derive(PartialEq)]
enum Stop {
    No,
    Full,
    PastEnd,
}

struct Walk<'a> {
    spec: &'a FolderSpec,
    prefix: &'a str,
    after: Option<&'a str>,
    upto: Option<&'a str>,
    limit: usize,
    out: &'a mut Vec<Listed>,
}

enum Entry {
    /// A subfolder, visited for the keys under `rel/`.
    Dir(PathBuf),
    /// An object: a file, or an ORA2 upload folder's `content`.
    Object(PathBuf, u64),
    /// Something that cannot be listed or named; copied as a per-object failure.
    Problem(String),
}

impl Walk<'_> {
    fn push(
        &mut self,
        key_rel: &str,
        file: Option<PathBuf>,
        size: u64,
        problem: Option<String>,
    ) -> Stop {
        if let Some(a) = self.after {
            if key_rel.as_bytes() <= a.as_bytes() {
                return Stop::No;
            }
        }
        if let Some(u) = self.upto {
            if key_rel.as_bytes() > u.as_bytes() {
                return Stop::PastEnd;
            }
        }
        self.out.push(Listed {
            key: format!("{}{key_rel}", self.prefix),
            size,
            etag: None,
            file,
            problem,
        });
        if self.out.len() >= self.limit {
            Stop::Full
        } else {
            Stop::No
        }
    }

    /// Visit one folder whose keys start with `rel` (empty or ending in `/`).
    fn dir(&mut self, path: &Path, rel: &str) -> Stop {
        let reader = match std::fs::read_dir(path) {
            Ok(r) => r,
            Err(e) => {
                let key = rel.to_string();
                return self.push(
                    &key,
                    None,
                    0,
                    Some(format!("cannot read folder {}: {e}", path.display())),
                );
            }
        };
        // Sort keys: a folder sorts as `name/` (its keys all start so), a file as `name`.
        let mut entries: Vec<(String, Entry)> = Vec::new();
        for item in reader {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    entries.push((
                        format!("{rel}\u{fffd}"),
                        Entry::Problem(format!("cannot read an entry of {}: {e}", path.display())),
                    ));
                    continue;
                }
            };
            let child = item.path();
            let name = match item.file_name().into_string() {
                Ok(n) => n,
                Err(raw) => {
                    entries.push((
                        format!("{rel}{}", raw.to_string_lossy()),
                        Entry::Problem(format!(
                            "{} has a name that is not valid UTF-8, which an S3 key cannot hold; rename it",
                            child.display()
                        )),
                    ));
                    continue;
                }
            };
            if rel.is_empty() && self.spec.skip_dirs.contains(&name) {
                continue;
            }
            let meta = match std::fs::metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    entries.push((
                        format!("{rel}{name}"),
                        Entry::Problem(format!("cannot read {}: {e}", child.display())),
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                if self.spec.layout == Layout::Ora2 {
                    let content = child.join("content");
                    if let Ok(m) = std::fs::metadata(&content) {
                        if m.is_file() {
                            entries.push((format!("{rel}{name}"), Entry::Object(content, m.len())));
                        }
                    }
                }
                entries.push((format!("{rel}{name}/"), Entry::Dir(child)));
            } else if meta.is_file() && self.spec.layout == Layout::Plain {
                entries.push((format!("{rel}{name}"), Entry::Object(child, meta.len())));
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (key, entry) in entries {
            let stop = match entry {
                Entry::Dir(p) => {
                    if let Some(a) = self.after {
                        if !a.starts_with(&key) && a.as_bytes() > key.as_bytes() {
                            continue; // every key below sorts before the cursor
                        }
                    }
                    if let Some(u) = self.upto {
                        if key.as_bytes() > u.as_bytes() {
                            return Stop::PastEnd;
                        }
                    }
                    self.dir(&p, &key)
                }
                Entry::Object(p, size) => self.push(&key, Some(p), size, None),
                Entry::Problem(msg) => self.push(&key, None, 0, Some(msg)),
            };
            if stop != Stop::No {
                return stop;
            }
        }
        Stop::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    fn keys(
        spec: &FolderSpec,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: usize,
    ) -> Vec<String> {
        list_folder(spec, prefix, after, upto, limit)
            .0
            .into_iter()
            .map(|l| l.key)
            .collect()
    }

    #[test]
    fn walks_in_byte_order_of_keys() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a/b", "a-c", "a.txt", "a0", "a/z/y", "b", "é", "skip/x"] {
            write(dir.path(), f, f);
        }
        let spec = FolderSpec {
            folder: dir.path().to_path_buf(),
            skip_dirs: vec!["skip".into()],
            layout: Layout::Plain,
        };
        let all = keys(&spec, "p/", None, None, 100);
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(all, sorted);
        assert_eq!(
            all,
            ["p/a-c", "p/a.txt", "p/a/b", "p/a/z/y", "p/a0", "p/b", "p/é"]
        );
        // Resuming after any key gives exactly the rest; `upto` bounds the range.
        for (i, k) in all.iter().enumerate() {
            assert_eq!(
                keys(&spec, "p/", Some(k), None, 100),
                all[i + 1..].to_vec(),
                "after {k}"
            );
        }
        assert_eq!(
            keys(&spec, "p/", Some("p/a-c"), Some("p/a0"), 100),
            ["p/a.txt", "p/a/b", "p/a/z/y", "p/a0"]
        );
        assert_eq!(keys(&spec, "p/", None, None, 2), ["p/a-c", "p/a.txt"]);
        assert!(keys(&spec, "p/", Some("q"), None, 10).is_empty());
        assert_eq!(keys(&spec, "p/", Some("a"), None, 1), ["p/a-c"]);
    }

    #[test]
    fn ora2_folders_are_objects() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s/u1/item/content", "one");
        write(dir.path(), "s/u1/item/metadata.json", "{}");
        write(dir.path(), "s/u1/item/1/content", "two");
        write(dir.path(), "s/u1/item-b/content", "three");
        let spec = FolderSpec {
            folder: dir.path().to_path_buf(),
            skip_dirs: vec![],
            layout: Layout::Ora2,
        };
        assert_eq!(
            keys(&spec, "", None, None, 10),
            ["s/u1/item", "s/u1/item-b", "s/u1/item/1"]
        );
    }
}
