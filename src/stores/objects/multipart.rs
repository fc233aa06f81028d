//! Objects copied in parts: the part layout (the source's own when it is multipart), the upload
//! created and checkpointed before its first part, parts sent after ListParts tells what the
//! target already has, and the completion checked against the ETag the parts give.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::digest::{self, Meta};
use super::endpoint::{classify, Failure};
use super::listing::{clean_etag, Listed};
use super::ops::Fingerprint;
use super::transfer::{body_result, HashingBody};
use super::{
    encode_copy_cursor, key_cursor, CopyCursor, From, ObjectsStore, Spec, PARTS_BATCH_BYTES,
};
use crate::core::{BatchOutcome, Side, StoreError, Unit};

/// A multipart upload under way, as recorded in the unit's cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub key: String,
    pub id: String,
    pub part_sizes: Vec<u64>,
    /// Whether the parts mirror the source's own, so the target's ETag must equal the source's.
    pub mirror: bool,
    pub source: Fingerprint,
}

/// The part sizes to copy a source object with, and whether they mirror the source's own parts.
async fn layout(
    store: &ObjectsStore,
    spec: &Spec,
    entry: &Listed,
    fp: &Fingerprint,
) -> Result<(Vec<u64>, bool), Failure> {
    let n = fp.etag.as_deref().and_then(digest::multipart_parts);
    let (From::S3 { bucket }, Some(n)) = (&spec.from, n) else {
        return Ok((store.parts_for(fp.size), false));
    };
    let part_len = |number: i32| async move {
        let out = store
            .source_client()
            .head_object()
            .bucket(bucket)
            .key(&entry.key)
            .part_number(number)
            .send()
            .await
            .map_err(|e| {
                classify(
                    Side::Source,
                    &store.source_address(),
                    "reading the object's parts",
                    true,
                    &e,
                )
            })?;
        Ok::<_, Failure>((
            out.content_length().unwrap_or(0).max(0) as u64,
            out.parts_count(),
        ))
    };
    let fallback = || (store.parts_for(fp.size), false);
    let (first, count) = match part_len(1).await {
        Ok(v) => v,
        Err(Failure::Fatal(e)) => return Err(Failure::Fatal(e)),
        Err(_) => return Ok(fallback()),
    };
    if count.map(|c| c as u64) != Some(n) || first == 0 {
        return Ok(fallback());
    }
    let uniform = digest::uniform_parts(fp.size, first);
    if uniform.len() as u64 == n {
        let (last, _) = part_len(n as i32).await?;
        if Some(&last) == uniform.last() {
            return Ok((uniform, true));
        }
    }
    let mut sizes = Vec::new();
    for i in 1..=n {
        sizes.push(part_len(i as i32).await?.0);
    }
    if sizes.iter().sum::<u64>() != fp.size {
        return Ok(fallback());
    }
    Ok((sizes, true))
}

fn outcome_skip(key: &str, failed: Option<(String, String)>) -> BatchOutcome {
    BatchOutcome {
        rows: 0,
        bytes: 0,
        next: Some(key_cursor(key)),
        failed: failed.into_iter().collect(),
        unchanged: 0,
    }
}

/// The first batch of an object copied in parts: skip it if identical, else create the upload
/// and checkpoint it before any part moves.
pub async fn start_upload(
    store: &ObjectsStore,
    spec: &Spec,
    after: Option<String>,
    entry: &Listed,
) -> Result<BatchOutcome, StoreError> {
    let key = &entry.key;
    let label = format!("{}/{}", spec.to.bucket, key);
    let (meta, fp) = match store.source_head(spec, entry).await {
        Ok(v) => v,
        Err(Failure::Gone) => return Ok(outcome_skip(key, None)),
        Err(Failure::Object(m)) => return Ok(outcome_skip(key, Some((label, m)))),
        Err(Failure::Fatal(e)) => return Err(e),
    };
    let (sizes, mirror) = match layout(store, spec, entry, &fp).await {
        Ok(v) => v,
        Err(Failure::Gone) => return Ok(outcome_skip(key, None)),
        Err(Failure::Object(m)) => return Ok(outcome_skip(key, Some((label, m)))),
        Err(Failure::Fatal(e)) => return Err(e),
    };
    // Already there and identical (a re-run)?
    let there = match store.target_head(&spec.to.bucket, key).await {
        Ok(t) => t,
        Err(Failure::Fatal(e)) => return Err(e),
        Err(_) => None,
    };
    if let Some((tmeta, tsize, tetag)) = there {
        if tsize == fp.size && tmeta == meta {
            let expected = if mirror {
                fp.etag.clone()
            } else if digest::multipart_parts(&tetag) == Some(sizes.len() as u64) {
                store
                    .hash_source(spec, entry, sizes.clone())
                    .await
                    .ok()
                    .map(|(_, etag)| etag)
            } else {
                None
            };
            if expected.as_deref() == Some(tetag.as_str()) {
                return Ok(BatchOutcome {
                    rows: 1,
                    bytes: 0,
                    next: Some(key_cursor(key)),
                    failed: Vec::new(),
                    unchanged: 1,
                });
            }
        }
    }
    abort_uploads_of(store, &spec.to.bucket, key).await?;
    let req = store
        .target_client
        .create_multipart_upload()
        .bucket(&spec.to.bucket)
        .key(key);
    let created = match with_meta!(req, &meta).send().await {
        Ok(c) => c,
        Err(e) => {
            return match classify(
                Side::Target,
                &store.target.address(),
                "starting a multipart upload",
                true,
                &e,
            ) {
                Failure::Fatal(err) => Err(err),
                Failure::Object(m) => Ok(outcome_skip(key, Some((label, m)))),
                Failure::Gone => Ok(outcome_skip(
                    key,
                    Some((label, "the bucket is gone".into())),
                )),
            }
        }
    };
    let id = created.upload_id().unwrap_or_default().to_string();
    tracing::debug!(store = "objects", bucket = %spec.to.bucket, key = %key, upload = %id, parts = sizes.len(), "multipart upload started");
    let upload = Upload {
        key: key.clone(),
        id,
        part_sizes: sizes,
        mirror,
        source: fp,
    };
    Ok(BatchOutcome {
        next: Some(encode_copy_cursor(&CopyCursor {
            after,
            upload: Some(upload),
        })),
        ..BatchOutcome::default()
    })
}

/// Abort every multipart upload of exactly this key on the target.
async fn abort_uploads_of(store: &ObjectsStore, bucket: &str, key: &str) -> Result<(), StoreError> {
    let list = store
        .target_client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await;
    let Ok(list) = list else { return Ok(()) };
    for u in list.uploads() {
        if u.key() == Some(key) {
            if let Some(id) = u.upload_id() {
                tracing::info!(
                    store = "objects",
                    bucket,
                    key,
                    upload = id,
                    "aborting a stale multipart upload"
                );
                let _ = store
                    .target_client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            }
        }
    }
    Ok(())
}

/// The parts already on the target for an upload (number -> (ETag, size)); `None` when the
/// upload no longer exists.
async fn parts_done(
    store: &ObjectsStore,
    bucket: &str,
    up: &Upload,
) -> Result<Option<BTreeMap<i32, (String, u64)>>, StoreError> {
    let mut out = BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = store
            .target_client
            .list_parts()
            .bucket(bucket)
            .key(&up.key)
            .upload_id(&up.id);
        if let Some(m) = &marker {
            req = req.part_number_marker(m);
        }
        let page = match req.send().await {
            Ok(p) => p,
            Err(e) => {
                return match classify(
                    Side::Target,
                    &store.target.address(),
                    "listing the parts of an upload",
                    true,
                    &e,
                ) {
                    Failure::Fatal(err) => Err(err),
                    _ => Ok(None), // NoSuchUpload: aborted or expired
                };
            }
        };
        for p in page.parts() {
            if let (Some(n), Some(etag)) = (p.part_number(), p.e_tag()) {
                out.insert(n, (clean_etag(etag), p.size().unwrap_or(0).max(0) as u64));
            }
        }
        match page.next_part_number_marker() {
            Some(m) if page.is_truncated() == Some(true) => marker = Some(m.to_string()),
            _ => return Ok(Some(out)),
        }
    }
}

/// Upload the next parts of an upload recorded in the cursor; complete it once all are there.
pub async fn continue_upload(
    store: &ObjectsStore,
    unit: &Unit,
    spec: &Spec,
    after: Option<String>,
    up: Upload,
) -> Result<BatchOutcome, StoreError> {
    let bucket = spec.to.bucket.clone();
    let label = format!("{bucket}/{}", up.key);
    let entry = Listed {
        key: up.key.clone(),
        size: up.source.size,
        etag: up.source.etag.clone(),
        file: match &spec.from {
            From::Folder(f) => Some(super::listing::file_path(f, &spec.to.prefix, &up.key)),
            From::S3 { .. } => None,
        },
        problem: None,
    };
    let abort = || async {
        let _ = store
            .target_client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(&up.key)
            .upload_id(&up.id)
            .send()
            .await;
    };
    let restart = BatchOutcome {
        next: Some(encode_copy_cursor(&CopyCursor {
            after: after.clone(),
            upload: None,
        })),
        ..BatchOutcome::default()
    };
    // The source must still be the version the upload started from.
    match store.source_head(spec, &entry).await {
        Ok((_, fp)) if fp == up.source => {}
        Ok(_) => {
            tracing::info!(store = "objects", bucket = %bucket, key = %up.key, "the source object changed since its upload started; copying it again from the start");
            abort().await;
            return Ok(restart);
        }
        Err(Failure::Gone) => {
            abort().await;
            return Ok(outcome_skip(&up.key, None));
        }
        Err(Failure::Object(m)) => {
            abort().await;
            return Ok(outcome_skip(&up.key, Some((label, m))));
        }
        Err(Failure::Fatal(e)) => return Err(e.in_unit(&unit.name)),
    }
    let Some(mut done) = parts_done(store, &bucket, &up).await? else {
        tracing::info!(store = "objects", bucket = %bucket, key = %up.key, upload = %up.id, "the multipart upload is gone from the target; copying the object again from the start");
        return Ok(restart);
    };
    let first_time = store
        .resumed
        .lock()
        .expect("resumed set")
        .insert(up.id.clone());
    if first_time && !done.is_empty() {
        tracing::info!(store = "objects", bucket = %bucket, key = %up.key, upload = %up.id, parts_there = done.len(), parts = up.part_sizes.len(), "continuing a multipart upload: parts already on the target are kept");
    }
    // Parts still to send, in order, with their offsets.
    let mut offset = 0u64;
    let mut missing = Vec::new();
    for (i, &len) in up.part_sizes.iter().enumerate() {
        let n = i as i32 + 1;
        if done.get(&n).map(|(_, s)| *s) != Some(len) {
            missing.push((n, offset, len));
        }
        offset += len;
    }
    let mut now = Vec::new();
    let mut budget = 0u64;
    for m in &missing {
        if !now.is_empty() && budget + m.2 > PARTS_BATCH_BYTES.max(store.options.part_size) {
            break;
        }
        budget += m.2;
        now.push(*m);
    }
    let all_sent_now = now.len() == missing.len();
    let if_match = match &spec.from {
        From::S3 { .. } => up.source.etag.clone(),
        From::Folder(_) => None,
    };
    // Parts that mirror the source's are checked all at once before completing (the MD5s of the
    // target's parts must give the source's ETag), so offload need not hash them as they pass.
    let hash_parts = !(up.mirror && if_match.is_some());
    let results: Vec<Result<(i32, String, u64), Failure>> = futures_util::stream::iter(now)
        .map(|(n, offset, len)| {
            let (entry, up, bucket, if_match) = (&entry, &up, &bucket, if_match.as_deref());
            async move {
                let _permit = store.permits.acquire().await.expect("semaphore open");
                let (feed, got, _, _) = store
                    .open_source(spec, entry, Some((offset, len)), if_match)
                    .await?;
                if got != len {
                    return Err(Failure::Object(format!(
                        "part {n}: the source returned {got} bytes for a range of {len}"
                    )));
                }
                let (body, report) = if hash_parts {
                    HashingBody::stream(feed, len)
                } else {
                    HashingBody::counted(feed, len)
                };
                let res = store
                    .target_client
                    .upload_part()
                    .bucket(bucket)
                    .key(&up.key)
                    .upload_id(&up.id)
                    .part_number(n)
                    .content_length(len as i64)
                    .body(body)
                    .send()
                    .await;
                let sent = body_result(&report);
                let res = match res {
                    Ok(r) => r,
                    Err(e) => {
                        if let Some(Err(msg)) = sent {
                            return Err(Failure::Object(msg));
                        }
                        return Err(classify(Side::Target, &store.target.address(), "uploading a part", true, &e));
                    }
                };
                let md5 = match sent {
                    Some(Ok(md5)) => md5.map(hex::encode),
                    Some(Err(msg)) => return Err(Failure::Object(msg)),
                    None => return Err(Failure::Object(format!("part {n} was not sent whole"))),
                };
                let etag = res.e_tag().map(clean_etag).unwrap_or_default();
                if let Some(md5) = md5.filter(|m| *m != etag) {
                    return Err(Failure::Object(format!(
                        "part {n}: the target stored other bytes than were sent (ETag {etag}, MD5 {md5})"
                    )));
                }
                crate::core::failpoint::counted("after-part");
                Ok((n, etag, len))
            }
        })
        .buffer_unordered(store.options.transfers.max(1))
        .collect()
        .await;
    let mut bytes = 0u64;
    let mut object_problem = None;
    for r in results {
        match r {
            Ok((n, etag, len)) => {
                bytes += len;
                done.insert(n, (etag, len));
            }
            Err(Failure::Fatal(e)) => return Err(e.in_unit(&unit.name)),
            Err(Failure::Gone) => object_problem = Some(None),
            Err(Failure::Object(m)) => {
                if m.contains("PreconditionFailed") || m.contains("status 412") {
                    tracing::info!(store = "objects", bucket = %bucket, key = %up.key, "the source object changed during its upload; copying it again from the start");
                    abort().await;
                    return Ok(restart);
                }
                object_problem.get_or_insert(Some(m));
            }
        }
    }
    if let Some(problem) = object_problem {
        abort().await;
        return Ok(outcome_skip(&up.key, problem.map(|m| (label, m))));
    }
    if !all_sent_now {
        return Ok(BatchOutcome {
            rows: 0,
            bytes,
            next: Some(encode_copy_cursor(&CopyCursor {
                after,
                upload: Some(up),
            })),
            ..BatchOutcome::default()
        });
    }
    // Every part is there: complete, and check the ETag the target computed.
    let mut parts = Vec::new();
    let mut md5s = Vec::new();
    for (n, (etag, _)) in done.iter().take(up.part_sizes.len()) {
        parts.push(
            CompletedPart::builder()
                .part_number(*n)
                .e_tag(format!("\"{etag}\""))
                .build(),
        );
        let mut d = [0u8; 16];
        if hex::decode_to_slice(etag, &mut d).is_err() {
            abort().await;
            return Ok(outcome_skip(&up.key, Some((label, format!("part {n} has an ETag that is not an MD5 ({etag}); the target cannot be checked by content")))));
        }
        md5s.push(d);
    }
    if up.mirror {
        let expected = digest::multipart_etag(&md5s);
        if up.source.etag.as_deref() != Some(expected.as_str()) {
            abort().await;
            return Ok(outcome_skip(
                &up.key,
                Some((
                    label,
                    format!(
                        "the parts the target received give ETag {expected}, not the source's {}: the bytes changed on the way; run the copy again (--resume) to send the object afresh",
                        up.source.etag.as_deref().unwrap_or("")
                    ),
                )),
            ));
        }
    }
    let completed = store
        .target_client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(&up.key)
        .upload_id(&up.id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    let completed = match completed {
        Ok(c) => c,
        Err(e) => {
            return match classify(
                Side::Target,
                &store.target.address(),
                "completing a multipart upload",
                true,
                &e,
            ) {
                Failure::Fatal(err) => Err(err.in_unit(&unit.name)),
                Failure::Gone => Ok(restart),
                Failure::Object(m) => {
                    abort().await;
                    Ok(outcome_skip(&up.key, Some((label, m))))
                }
            }
        }
    };
    let etag = completed.e_tag().map(clean_etag).unwrap_or_default();
    let expected = digest::multipart_etag(&md5s);
    let problem = if etag != expected {
        Some(format!(
            "the target's ETag {etag} is not the one its parts give ({expected})"
        ))
    } else if up.mirror && up.source.etag.as_deref() != Some(etag.as_str()) {
        Some(format!(
            "the target's ETag {etag} differs from the source's {}: the source's parts could not be reproduced",
            up.source.etag.as_deref().unwrap_or("")
        ))
    } else {
        None
    };
    if problem.is_some() {
        // Leave no torn object behind: the copy of this object did not happen.
        let _ = store
            .target_client
            .delete_object()
            .bucket(&bucket)
            .key(&up.key)
            .send()
            .await;
    }
    tracing::debug!(store = "objects", bucket = %bucket, key = %up.key, etag = %etag, "multipart upload completed");
    Ok(BatchOutcome {
        rows: if problem.is_none() { 1 } else { 0 },
        bytes,
        next: Some(key_cursor(&up.key)),
        failed: problem.map(|p| (label, p)).into_iter().collect(),
        unchanged: 0,
    })
}
