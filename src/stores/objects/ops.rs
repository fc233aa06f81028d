//! Copying one object in one streamed PUT (large ones go through `multipart`), and reading the
//! source: its metadata and version, its bytes as a stream. Every write is checked against the
//! MD5 of the bytes read; objects already identical on the target are skipped.

use std::collections::HashMap;

use aws_sdk_s3::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use super::digest::{self, Meta};
use super::endpoint::{classify, Failure};
use super::listing::{clean_etag, Listed};
use super::transfer::{body_result, Feed, HashingBody};
use super::{From, ObjectsStore, Spec};
use crate::core::Side;

pub use super::admin::{
    abort_stale_uploads, carry_public_read, compare_public_read, delete_extras, ensure_bucket,
    object_digests, survey,
};

/// How one object's copy ended.
#[derive(Debug)]
pub enum Done {
    Copied,
    /// Already identical on the target.
    Same,
}

/// What identifies the version of a source object an upload was started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub modified: Option<String>,
    #[serde(default)]
    pub inode: Option<u64>,
}

impl ObjectsStore {
    pub(super) fn source_client(&self) -> &aws_sdk_s3::Client {
        self.source_client.as_ref().expect("S3 source has a client")
    }

    /// Metadata and version of a source object.
    pub(super) async fn source_head(
        &self,
        spec: &Spec,
        entry: &Listed,
    ) -> Result<(Meta, Fingerprint), Failure> {
        match &spec.from {
            From::S3 { bucket } => {
                let out = self
                    .source_client()
                    .head_object()
                    .bucket(bucket)
                    .key(&entry.key)
                    .send()
                    .await
                    .map_err(|e| {
                        classify(
                            Side::Source,
                            &self.source_address(),
                            "reading the object's metadata",
                            true,
                            &e,
                        )
                    })?;
                let fp = Fingerprint {
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    etag: out.e_tag().map(clean_etag),
                    modified: out.last_modified().map(|t| t.to_string()),
                    inode: None,
                };
                Ok((meta_of!(out), fp))
            }
            From::Folder(folder) => {
                let path = entry.file.as_ref().ok_or(Failure::Gone)?;
                let fp = file_fingerprint(path).await?;
                Ok((folder_meta(folder.layout, &entry.key, path).await, fp))
            }
        }
    }

    /// Metadata, size and ETag of a target object, if it exists.
    pub(super) async fn target_head(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Meta, u64, String)>, Failure> {
        match self
            .target_client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some((
                meta_of!(out),
                out.content_length().unwrap_or(0).max(0) as u64,
                out.e_tag().map(clean_etag).unwrap_or_default(),
            ))),
            Err(e) => match classify(
                Side::Target,
                &self.target.address(),
                "reading the object's metadata",
                true,
                &e,
            ) {
                Failure::Gone => Ok(None),
                other => Err(other),
            },
        }
    }

    /// A stream of a source object's bytes (or of `range`), with its length, metadata and ETag.
    pub(super) async fn open_source(
        &self,
        spec: &Spec,
        entry: &Listed,
        range: Option<(u64, u64)>,
        if_match: Option<&str>,
    ) -> Result<(Feed, u64, Option<Meta>, Option<String>), Failure> {
        match &spec.from {
            From::S3 { bucket } => {
                let mut req = self
                    .source_client()
                    .get_object()
                    .bucket(bucket)
                    .key(&entry.key);
                if let Some((offset, len)) = range {
                    req = req.range(format!("bytes={}-{}", offset, offset + len - 1));
                }
                if let Some(etag) = if_match {
                    req = req.if_match(format!("\"{etag}\""));
                }
                let out = req.send().await.map_err(|e| {
                    classify(
                        Side::Source,
                        &self.source_address(),
                        "reading the object",
                        true,
                        &e,
                    )
                })?;
                let len = out.content_length().unwrap_or(0).max(0) as u64;
                let meta = meta_of!(out);
                let etag = out.e_tag().map(clean_etag);
                Ok((Feed::S3(Box::pin(out.body)), len, Some(meta), etag))
            }
            From::Folder(_) => {
                let path = entry.file.as_ref().ok_or(Failure::Gone)?;
                let (offset, len) = range.unwrap_or((0, entry.size));
                let feed = Feed::file(path, offset, len)
                    .await
                    .map_err(|e| io_failure(path, e))?;
                Ok((feed, len, None, None))
            }
        }
    }

    /// Read a source object fully and hash it as an upload with these part sizes would be.
    pub(super) async fn hash_source(
        &self,
        spec: &Spec,
        entry: &Listed,
        parts: Vec<u64>,
    ) -> Result<([u8; 16], String), Failure> {
        let (feed, len, _, _) = self.open_source(spec, entry, None, None).await?;
        feed.hash(len, parts).await.map_err(Failure::Object)
    }
}

/// A file's size, modification time and inode.
async fn file_fingerprint(path: &std::path::Path) -> Result<Fingerprint, Failure> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path)
        .await
        .map_err(|e| io_failure(path, e))?;
    Ok(Fingerprint {
        size: m.len(),
        etag: None,
        modified: Some(format!("{}.{:09}", m.mtime(), m.mtime_nsec())),
        inode: Some(m.ino()),
    })
}

fn io_failure(path: &std::path::Path, e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::NotFound {
        Failure::Gone
    } else {
        Failure::Object(format!("cannot read {}: {e}", path.display()))
    }
}

/// The metadata a file is given: guessed from its name, or for an ORA2 upload, the Content-Type
/// its `metadata.json` recorded.
pub(super) async fn folder_meta(layout: super::Layout, key: &str, path: &std::path::Path) -> Meta {
    if layout == super::Layout::Ora2 {
        let recorded = match path.parent() {
            Some(dir) => tokio::fs::read_to_string(dir.join("metadata.json"))
                .await
                .ok(),
            None => None,
        };
        let content_type = recorded
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("Content-Type")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        return Meta {
            content_type: Some(content_type),
            ..Meta::default()
        };
    }
    Meta::guess(key)
}

/// Copy one object in a single PUT, unless the target already holds it identical.
pub async fn copy_one(
    store: &ObjectsStore,
    spec: &Spec,
    entry: &Listed,
    there: Option<&Listed>,
) -> Result<Done, Failure> {
    let _permit = store.permits.acquire().await.expect("semaphore open");
    if let Some(p) = &entry.problem {
        return Err(Failure::Object(p.clone()));
    }
    let key = &entry.key;
    if let Some(t) = there.filter(|t| t.size == entry.size) {
        let same_content = match &spec.from {
            From::S3 { .. } => t.etag.is_some() && t.etag == entry.etag,
            From::Folder(_) => {
                let (_, etag) = store.hash_source(spec, entry, vec![entry.size]).await?;
                t.etag.as_deref() == Some(etag.as_str())
            }
        };
        if same_content {
            let (source_meta, _) = store.source_head(spec, entry).await?;
            if let Some((target_meta, _, _)) = store.target_head(&spec.to.bucket, key).await? {
                if source_meta == target_meta {
                    return Ok(Done::Same);
                }
            }
        }
    }

    let before = match &spec.from {
        From::Folder(_) => Some(store.source_head(spec, entry).await?),
        From::S3 { .. } => None,
    };
    let (feed, len, s3_meta, source_etag) = store.open_source(spec, entry, None, None).await?;
    let meta = match (&before, s3_meta) {
        (Some((m, _)), _) => m.clone(),
        (None, Some(m)) => m,
        (None, None) => Meta::default(),
    };
    // An S3 source whose ETag is an MD5 says what the bytes must hash to: the target checks
    // them against it (Content-MD5) and offload need not hash them again. Otherwise offload
    // hashes what it sends and compares with the target's ETag afterwards.
    let source_md5 = source_etag.filter(|e| digest::is_md5(e));
    let content_md5 = source_md5.as_deref().and_then(|e| {
        let mut raw = [0u8; 16];
        hex::decode_to_slice(e, &mut raw).ok()?;
        Some(aws_smithy_types::base64::encode(raw))
    });
    let (body, report) = if content_md5.is_some() {
        HashingBody::counted(feed, len)
    } else {
        HashingBody::stream(feed, len)
    };
    let req = store
        .target_client
        .put_object()
        .bucket(&spec.to.bucket)
        .key(key)
        .content_length(len as i64)
        .set_content_md5(content_md5)
        .body(body);
    let put = with_meta!(req, &meta).send().await;
    let sent = body_result(&report);
    let changed = |src: &str, read: &str| {
        format!(
            "the bytes read do not match the source's ETag ({src}{read}): it changed during the copy, or its ETag is not an MD5 (then use verify --deep)"
        )
    };
    let put = match put {
        Ok(p) => p,
        Err(e) => {
            if let Some(Err(f)) = sent {
                return Err(f.into_failure(store.source_address()));
            }
            if matches!(e.code(), Some("BadDigest" | "InvalidDigest")) {
                return Err(Failure::Object(changed(
                    source_md5.as_deref().unwrap_or(""),
                    "; the target refused them",
                )));
            }
            return Err(classify(
                Side::Target,
                &store.target.address(),
                "writing the object",
                true,
                &e,
            ));
        }
    };
    let md5 = match (sent, &source_md5) {
        (Some(Ok(Some(md5))), _) => hex::encode(md5),
        // Counted only: the target accepted the bytes against the source's MD5.
        (Some(Ok(None)), Some(src)) => src.clone(),
        (Some(Err(f)), _) => return Err(f.into_failure(store.source_address())),
        (None, _) if len == 0 => "d41d8cd98f00b204e9800998ecf8427e".to_string(),
        _ => {
            return Err(Failure::Object(
                "the upload finished before the whole object was sent".into(),
            ))
        }
    };
    let stored = put.e_tag().map(clean_etag).unwrap_or_default();
    let mut problem = None;
    if digest::is_md5(&stored) && stored != md5 {
        problem = Some(format!(
            "the target stored other bytes than were sent (its ETag {stored}, MD5 of the data {md5})"
        ));
    } else if let Some(src) = source_md5.filter(|src| *src != md5) {
        problem = Some(changed(&src, &format!(", read {md5}")));
    } else if let Some((_, fp_before)) = &before {
        let path = entry.file.as_ref().expect("a file");
        let after = file_fingerprint(path).await.ok();
        if after.as_ref() != Some(fp_before) {
            problem = Some(format!(
                "{} changed while it was being copied; copy again once it is stable",
                path.display()
            ));
        }
    }
    if let Some(p) = problem {
        // Leave no torn object behind: the copy of this object did not happen.
        let _ = store
            .target_client
            .delete_object()
            .bucket(&spec.to.bucket)
            .key(key)
            .send()
            .await;
        return Err(Failure::Object(p));
    }
    tracing::debug!(store = "objects", bucket = %spec.to.bucket, key = %key, bytes = len, "object copied");
    Ok(Done::Copied)
}
