//! The object storage store: MinIO (or any S3) buckets, or Tutor's filesystem media, copied to
//! an S3-compatible target. Objects stream from source to target (never staged on disk), many at
//! once; large ones go in parts whose upload survives a crash (the upload id is checkpointed
//! before the first part, and ListParts tells what is already there); re-running skips objects
//! already identical; verification compares key listings and content digests (ETags computed the
//! way the copy produces them), or with `--deep` full MD5s and metadata; the delta pass deletes
//! what the source no longer has and copies a changed key range again, skipping identical objects.
//!
//! Tested against SeaweedFS on both sides; MinIO and AWS S3 specifics (virtual-hosted addressing,
//! Block Public Access) are handled in code but untested here.

#[macro_use]
mod macros;
mod admin;
mod credentials;
mod digest;
mod endpoint;
mod listing;
mod multipart;
mod ops;
pub mod settings;
mod transfer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

pub use endpoint::{CaBundle, CredentialSource, S3Endpoint};
pub use listing::{FolderSpec, KeySpace, Layout};
pub use settings::{media_folders, minio_buckets, ObjectsArgs, ObjectsSettings};

use listing::Listed;

use crate::core::store::{ShapeDifference, Survey};
use crate::core::{
    BatchOutcome, ChunkDigest, Cursor, EndIdentity, ErrorKind, Identity, IfExists, KeyRange,
    RowDigest, Side, Store, StoreError, StoreKind, Unit,
};

/// Objects listed (and at most copied) per batch.
const BATCH_OBJECTS: usize = 1000;
/// Bytes of small objects copied per batch, at most (one object may exceed it).
const BATCH_BYTES: u64 = 512 * 1024 * 1024;
/// A bucket or folder is split into key ranges (units) of at most this many objects or bytes
/// (a bigger object gets a range of its own).
const UNIT_OBJECTS: u64 = 50_000;
const UNIT_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes of parts uploaded per batch of a multipart object (between checkpoints).
const PARTS_BATCH_BYTES: u64 = 1024 * 1024 * 1024;
/// S3's limits on parts.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// A Tutor media folder mapped to a bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaFolder {
    /// Unit name, e.g. `openedx-media/grades`.
    pub name: String,
    pub folder: FolderSpec,
    /// The bucket this folder stands for (mapped with `--bucket-map` like a MinIO bucket).
    pub bucket: String,
    /// Key prefix in that bucket.
    pub prefix: String,
    /// Key prefixes of that bucket that belong to other folders.
    pub exclude: Vec<String>,
}

/// Where objects come from.
#[derive(Debug, Clone)]
pub enum ObjectSource {
    /// Buckets of an S3 endpoint (MinIO).
    S3 {
        endpoint: S3Endpoint,
        buckets: Vec<String>,
    },
    /// Folders of Tutor's root.
    Media {
        root: PathBuf,
        folders: Vec<MediaFolder>,
    },
}

/// Choices for an object migration.
#[derive(Debug, Clone)]
pub struct ObjectsOptions {
    /// Part size for objects copied in parts (those larger than it, and multipart source objects
    /// whose layout cannot be read).
    pub part_size: u64,
    /// Objects (or parts) moved at once.
    pub transfers: usize,
    pub create_buckets: bool,
    /// Verify by hashing every object fully on both sides.
    pub deep: bool,
    /// Source bucket -> target bucket, where they differ.
    pub bucket_map: BTreeMap<String, String>,
    /// Source buckets (or media buckets) whose anonymous read access is carried to the target
    /// when the source grants it (MinIO's `openedx` bucket is public).
    pub public_read: Vec<String>,
    /// Media buckets that are public without a policy to read (Tutor serves media to everyone).
    pub public_media: Vec<String>,
}

impl Default for ObjectsOptions {
    fn default() -> Self {
        ObjectsOptions {
            part_size: 64 * 1024 * 1024,
            transfers: 32,
            create_buckets: false,
            deep: false,
            bucket_map: BTreeMap::new(),
            public_read: Vec::new(),
            public_media: Vec::new(),
        }
    }
}

/// Where a unit reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spec {
    from: From,
    to: KeySpace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum From {
    S3 { bucket: String },
    Folder(FolderSpec),
}

/// An S3 or filesystem source and an S3 target.
pub struct ObjectsStore {
    source: ObjectSource,
    source_client: Option<aws_sdk_s3::Client>,
    target: S3Endpoint,
    target_client: aws_sdk_s3::Client,
    options: ObjectsOptions,
    permits: Arc<Semaphore>,
    /// Multipart uploads this process has already reported continuing.
    resumed: Mutex<HashSet<String>>,
}

impl ObjectsStore {
    pub fn new(source: ObjectSource, target: S3Endpoint, options: ObjectsOptions) -> ObjectsStore {
        let transfers = options.transfers.max(1);
        let source_client = match &source {
            ObjectSource::S3 { endpoint, .. } => Some(endpoint.client(transfers)),
            ObjectSource::Media { .. } => None,
        };
        ObjectsStore {
            target_client: target.client(transfers),
            source_client,
            source,
            target,
            permits: Arc::new(Semaphore::new(transfers)),
            options,
            resumed: Mutex::new(HashSet::new()),
        }
    }

    fn target_bucket(&self, source_bucket: &str) -> String {
        self.options
            .bucket_map
            .get(source_bucket)
            .cloned()
            .unwrap_or_else(|| source_bucket.to_string())
    }

    fn source_address(&self) -> String {
        match &self.source {
            ObjectSource::S3 { endpoint, .. } => endpoint.address(),
            ObjectSource::Media { root, .. } => root.display().to_string(),
        }
    }

    fn spec(&self, unit: &Unit) -> Result<Spec, StoreError> {
        serde_json::from_value(unit.spec.clone()).map_err(|e| {
            StoreError::new(
                StoreKind::Objects,
                self.target.address(),
                ErrorKind::Input,
                format!("unreadable unit record for {}: {e}", unit.name),
                "the job folder was written by another version; start over with --restart",
            )
        })
    }

    /// A side's refusal of its credentials, with where they came from put first in the hint
    /// (listing is the first call of every command, so the operator learns it there).
    fn naming_credentials(&self, side: Side, mut e: StoreError) -> StoreError {
        let credentials = match (side, &self.source) {
            (Side::Target, _) => Some(&self.target.credentials),
            (Side::Source, ObjectSource::S3 { endpoint, .. }) => Some(&endpoint.credentials),
            (Side::Source, ObjectSource::Media { .. }) => None,
        };
        if let (ErrorKind::Auth, Some(c)) = (e.kind, credentials) {
            e.hint = format!(
                "the {side} credentials came from {}; {}",
                c.describe(),
                e.hint
            );
        }
        e
    }

    /// The (source bucket or media bucket, spec, unit base name) of every place objects come from.
    fn places(&self) -> Vec<(String, Spec, String, String)> {
        match &self.source {
            ObjectSource::S3 { buckets, .. } => buckets
                .iter()
                .map(|b| {
                    let spec = Spec {
                        from: From::S3 { bucket: b.clone() },
                        to: KeySpace {
                            bucket: self.target_bucket(b),
                            prefix: String::new(),
                            exclude: Vec::new(),
                        },
                    };
                    (b.clone(), spec, b.clone(), "*".to_string())
                })
                .collect(),
            ObjectSource::Media { root, folders } => folders
                .iter()
                .map(|f| {
                    let spec = Spec {
                        from: From::Folder(f.folder.clone()),
                        to: KeySpace {
                            bucket: self.target_bucket(&f.bucket),
                            prefix: f.prefix.clone(),
                            exclude: f.exclude.clone(),
                        },
                    };
                    let shown = f
                        .folder
                        .folder
                        .strip_prefix(root)
                        .unwrap_or(&f.folder.folder)
                        .display()
                        .to_string();
                    (f.bucket.clone(), spec, f.name.clone(), shown)
                })
                .collect(),
        }
    }

    /// Objects of a unit's key space on one side, after `after`, up to `upto`, at most `limit`.
    async fn list(
        &self,
        side: Side,
        spec: &Spec,
        after: Option<&str>,
        upto: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), StoreError> {
        match (side, &spec.from) {
            (Side::Target, _) => listing::list_s3(
                &self.target_client,
                Side::Target,
                &self.target.address(),
                &spec.to,
                after,
                upto,
                limit,
                true,
            )
            .await
            .map_err(|e| self.naming_credentials(Side::Target, e)),
            (Side::Source, From::S3 { bucket }) => {
                let space = KeySpace {
                    bucket: bucket.clone(),
                    ..KeySpace::default()
                };
                listing::list_s3(
                    self.source_client.as_ref().expect("S3 source has a client"),
                    Side::Source,
                    &self.source_address(),
                    &space,
                    after,
                    upto,
                    limit,
                    false,
                )
                .await
                .map_err(|e| self.naming_credentials(Side::Source, e))
            }
            (Side::Source, From::Folder(folder)) => {
                let (folder, prefix) = (folder.clone(), spec.to.prefix.clone());
                let (after, upto) = (after.map(str::to_string), upto.map(str::to_string));
                tokio::task::spawn_blocking(move || {
                    listing::list_folder(&folder, &prefix, after.as_deref(), upto.as_deref(), limit)
                })
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreKind::Objects,
                        self.source_address(),
                        ErrorKind::Query,
                        format!("listing a folder failed: {e}"),
                        "",
                    )
                })
            }
        }
    }

    /// The part sizes a copy uses for an object of `size` bytes without a source layout.
    fn parts_for(&self, size: u64) -> Vec<u64> {
        digest::uniform_parts(size, effective_part_size(size, self.options.part_size))
    }

    /// Whether a listed source object is copied in parts.
    fn needs_parts(&self, e: &Listed) -> bool {
        e.problem.is_none()
            && (e.size > self.options.part_size
                || e.etag
                    .as_deref()
                    .and_then(digest::multipart_parts)
                    .is_some())
    }
}

/// The part size used for an object: the configured one, raised so no upload needs more than
/// S3's 10,000 parts.
pub fn effective_part_size(size: u64, part_size: u64) -> u64 {
    let min = size.div_ceil(MAX_PARTS);
    if min <= part_size {
        part_size
    } else {
        min.div_ceil(1024 * 1024) * 1024 * 1024
    }
}

/// A copy cursor: the last key done, and a multipart upload under way (the object after it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CopyCursor {
    after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<multipart::Upload>,
}

/// The first and last keys of a range, as keys.
fn range_keys(range: &KeyRange) -> (Option<String>, Option<String>) {
    (
        range.after.as_ref().and_then(cursor_key),
        range.upto.as_ref().and_then(cursor_key),
    )
}

fn key_cursor(key: &str) -> Cursor {
    Cursor(json!(key))
}

fn cursor_key(c: &Cursor) -> Option<String> {
    match &c.0 {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("after").and_then(|v| v.as_str()).map(str::to_string),
        _ => None,
    }
}

fn decode_copy_cursor(c: &Cursor) -> CopyCursor {
    match &c.0 {
        serde_json::Value::String(s) => CopyCursor {
            after: Some(s.clone()),
            upload: None,
        },
        v => serde_json::from_value(v.clone()).unwrap_or_default(),
    }
}

fn encode_copy_cursor(c: &CopyCursor) -> Cursor {
    match (&c.after, &c.upload) {
        (Some(k), None) => key_cursor(k),
        _ => Cursor(serde_json::to_value(c).expect("cursor serializes")),
    }
}

#[async_trait]
impl Store for ObjectsStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Objects
    }

    fn identity(&self) -> Identity {
        let source = match &self.source {
            ObjectSource::S3 { endpoint, buckets } => EndIdentity::new(endpoint.address())
                .with("kind", json!("s3"))
                .with("buckets", json!(buckets)),
            ObjectSource::Media { root, .. } => {
                EndIdentity::new(root.display().to_string()).with("kind", json!("filesystem"))
            }
        };
        let target = EndIdentity::new(self.target.address())
            .with("bucket_map", json!(self.options.bucket_map));
        Identity::new(source, target).with("part_size", json!(self.options.part_size))
    }

    async fn survey(&self) -> Result<Survey, StoreError> {
        ops::survey(self).await
    }

    async fn inventory(&self) -> Result<Vec<Unit>, StoreError> {
        let mut units = Vec::new();
        for (container, spec, base, object) in self.places() {
            if let From::Folder(f) = &spec.from {
                if !f.folder.is_dir() {
                    continue;
                }
            }
            let mut ranges: Vec<(Option<String>, Option<String>, u64, u64)> = Vec::new();
            let (mut start, mut rows, mut bytes) = (None::<String>, 0u64, 0u64);
            let mut after: Option<String> = None;
            let mut last: Option<String> = None;
            loop {
                let (page, more) = self
                    .list(Side::Source, &spec, after.as_deref(), None, 5000)
                    .await?;
                for e in &page {
                    // Cut before an object that would make the range too big, so large objects
                    // get ranges of their own and copy side by side.
                    if rows > 0 && (rows >= UNIT_OBJECTS || bytes + e.size > UNIT_BYTES) {
                        ranges.push((start.take(), last.clone(), rows, bytes));
                        start = last.clone();
                        rows = 0;
                        bytes = 0;
                    }
                    rows += 1;
                    bytes += e.size;
                    last = Some(e.key.clone());
                }
                after = page.last().map(|e| e.key.clone()).or(after);
                if !more {
                    break;
                }
            }
            // The last range runs to the end of the key space.
            ranges.push((start, None, rows, bytes));
            let split = ranges.len() > 1;
            for (i, (after, upto, rows, bytes)) in ranges.into_iter().enumerate() {
                units.push(Unit {
                    store: StoreKind::Objects,
                    name: if split {
                        format!("{base}#{}", i + 1)
                    } else {
                        base.clone()
                    },
                    container: container.clone(),
                    object: object.clone(),
                    range: KeyRange {
                        after: after.as_deref().map(key_cursor),
                        upto: upto.as_deref().map(key_cursor),
                    },
                    est_rows: rows,
                    est_bytes: bytes,
                    size_known: true,
                    spec: serde_json::to_value(&spec).expect("spec serializes"),
                });
            }
        }
        Ok(units)
    }

    async fn occupied(&self, units: &[Unit]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for u in units {
            let spec = self.spec(u)?;
            let (after, upto) = range_keys(&u.range);
            let (found, _) = self
                .list(Side::Target, &spec, after.as_deref(), upto.as_deref(), 1)
                .await?;
            if !found.is_empty() {
                out.push(u.name.clone());
            }
        }
        Ok(out)
    }

    async fn prepare_target(
        &self,
        units: &[Unit],
        policy: IfExists,
        occupied: &[String],
    ) -> Result<(), StoreError> {
        let mut buckets: Vec<String> = Vec::new();
        for u in units {
            let b = self.spec(u)?.to.bucket;
            if !buckets.contains(&b) {
                buckets.push(b);
            }
        }
        for b in &buckets {
            ops::ensure_bucket(self, b).await?;
        }
        if policy == IfExists::Replace {
            for u in units.iter().filter(|u| occupied.contains(&u.name)) {
                let (after, upto) = range_keys(&u.range);
                ops::delete_extras(self, u, &self.spec(u)?, after, upto, "--if-exists replace")
                    .await?;
            }
        }
        Ok(())
    }

    async fn begin_copy(&self, _workers: usize) -> Result<String, StoreError> {
        Ok(format!(
            "objects: each key range is copied as listed when it is reached ({} objects at once, parts of {} MiB); objects written to the source after that are caught by the delta pass (offload migrate --resume --delta)",
            self.options.transfers,
            self.options.part_size / (1024 * 1024)
        ))
    }

    async fn prepare(&self, _unit: &Unit) -> Result<(), StoreError> {
        Ok(())
    }

    async fn copy_batch(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
    ) -> Result<BatchOutcome, StoreError> {
        let spec = self.spec(unit)?;
        let cursor = after
            .or(unit.range.after.as_ref())
            .map(decode_copy_cursor)
            .unwrap_or_default();
        if let Some(upload) = cursor.upload.clone() {
            return multipart::continue_upload(self, unit, &spec, cursor.after.clone(), upload)
                .await;
        }
        let upto = unit.range.upto.as_ref().and_then(cursor_key);
        let (entries, more) = self
            .list(
                Side::Source,
                &spec,
                cursor.after.as_deref(),
                upto.as_deref(),
                BATCH_OBJECTS,
            )
            .await?;
        let Some(first) = entries.first() else {
            ops::abort_stale_uploads(self, unit, &spec, None).await?;
            return Ok(BatchOutcome::default());
        };
        if self.needs_parts(first) {
            return multipart::start_upload(self, &spec, cursor.after.clone(), first).await;
        }
        let mut batch: Vec<Listed> = Vec::new();
        let mut size = 0u64;
        for e in &entries {
            if self.needs_parts(e) || (!batch.is_empty() && size + e.size > BATCH_BYTES) {
                break;
            }
            size += e.size;
            batch.push(e.clone());
        }
        let last = batch.last().expect("one object at least").key.clone();
        let whole_rest = batch.len() == entries.len() && !more;
        let (present, _) = self
            .list(
                Side::Target,
                &spec,
                cursor.after.as_deref(),
                Some(&last),
                usize::MAX,
            )
            .await?;
        let present: HashMap<String, Listed> =
            present.into_iter().map(|l| (l.key.clone(), l)).collect();
        let spec = &spec;
        let results: Vec<(Listed, Result<ops::Done, endpoint::Failure>)> =
            futures_util::stream::iter(batch)
                .map(|e| {
                    let there = present.get(&e.key);
                    async move {
                        let r = ops::copy_one(self, spec, &e, there).await;
                        (e, r)
                    }
                })
                .buffer_unordered(self.options.transfers.max(1))
                .collect()
                .await;
        let mut out = BatchOutcome::default();
        let mut fatal = None;
        for (e, r) in results {
            match r {
                // Rows: objects now on the target; bytes: what moved to get them there.
                Ok(ops::Done::Copied) => {
                    out.rows += 1;
                    out.bytes += e.size;
                }
                Ok(ops::Done::Same) => {
                    out.rows += 1;
                    out.unchanged += 1;
                }
                Err(endpoint::Failure::Object(msg)) => {
                    out.failed
                        .push((format!("{}/{}", spec.to.bucket, e.key), msg));
                }
                Err(endpoint::Failure::Gone) => {
                    tracing::info!(store = "objects", bucket = %spec.to.bucket, key = %e.key, "object deleted from the source since it was listed; not copied");
                }
                Err(endpoint::Failure::Fatal(err)) => {
                    fatal.get_or_insert(err);
                }
            }
        }
        if let Some(err) = fatal {
            return Err(err.in_unit(&unit.name));
        }
        out.failed.sort();
        if whole_rest {
            ops::abort_stale_uploads(self, unit, spec, None).await?;
            out.next = None;
        } else {
            out.next = Some(key_cursor(&last));
        }
        Ok(out)
    }

    async fn finish_target(&self) -> Result<Vec<String>, StoreError> {
        ops::carry_public_read(self).await
    }

    async fn end_copy(&self) {}

    async fn digest_range(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<ChunkDigest, StoreError> {
        let spec = self.spec(unit)?;
        let (after, upto) = (after.and_then(cursor_key), upto.and_then(cursor_key));
        let limit = limit.map(|l| l as usize).unwrap_or(usize::MAX);
        let (entries, _) = self
            .list(side, &spec, after.as_deref(), upto.as_deref(), limit)
            .await
            .map_err(|e| e.in_unit(&unit.name))?;
        let digests = ops::object_digests(self, side, &spec, &entries).await?;
        let mut h = blake3::Hasher::new();
        for d in &digests {
            h.update(d);
        }
        Ok(ChunkDigest {
            rows: entries.len() as u64,
            bytes: entries.iter().map(|e| e.size).sum(),
            digest: h.finalize().to_hex().to_string(),
            last: entries.last().map(|e| key_cursor(&e.key)),
            ..ChunkDigest::default()
        })
    }

    async fn row_digests(
        &self,
        side: Side,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        cap: usize,
    ) -> Result<Vec<RowDigest>, StoreError> {
        let spec = self.spec(unit)?;
        let (after, upto) = (after.and_then(cursor_key), upto.and_then(cursor_key));
        let (entries, _) = self
            .list(side, &spec, after.as_deref(), upto.as_deref(), cap)
            .await
            .map_err(|e| e.in_unit(&unit.name))?;
        let digests = ops::object_digests(self, side, &spec, &entries).await?;
        Ok(entries
            .iter()
            .zip(digests)
            .map(|(e, digest)| RowDigest {
                key: format!("{}/{}", spec.to.bucket, e.key),
                digest,
                // Objects already skip what the target holds unchanged: no finer ranges needed.
                cursor: None,
            })
            .collect())
    }

    async fn compare_shape(&self, units: &[Unit]) -> Result<Vec<ShapeDifference>, StoreError> {
        ops::compare_public_read(self, units).await
    }

    /// The delta pass: remove only the target objects of the range that the source no longer
    /// has. Objects that differ are replaced by the copy that follows, which skips those already
    /// identical (size, content digest, metadata), so unchanged large objects are not sent again.
    async fn clear_range(
        &self,
        unit: &Unit,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
    ) -> Result<(), StoreError> {
        let spec = self.spec(unit)?;
        let range = self.render_range(unit, after, upto);
        let (after, upto) = (after.and_then(cursor_key), upto.and_then(cursor_key));
        let deleted = ops::delete_extras(self, unit, &spec, after, upto, "delta pass").await?;
        if deleted > 0 {
            tracing::info!(store = "objects", unit = %unit.name, range = %range, deleted, "delta pass: removed target objects deleted from the source");
        }
        Ok(())
    }

    fn render_range(&self, unit: &Unit, after: Option<&Cursor>, upto: Option<&Cursor>) -> String {
        let bucket = self
            .spec(unit)
            .map(|s| s.to.bucket)
            .unwrap_or_else(|_| unit.container.clone());
        let mut parts = vec![format!("bucket {bucket}")];
        if let Some(a) = after.and_then(cursor_key) {
            parts.push(format!("keys after {a:?}"));
        }
        if let Some(u) = upto.and_then(cursor_key) {
            parts.push(format!("up to {u:?}"));
        }
        parts.join(", ")
    }
}
