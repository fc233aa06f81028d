//! Objects copied in parts: the part layout (the source's own when it is multipart), the upload
//! created and checkpointed before its first part, parts sent after ListParts tells what the
//! target already has, and the completion checked against the ETag the parts give.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

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

/// One part of an object still to send: its number, and where it lies in the object.
#[derive(Debug, Clone, Copy)]
struct Part {
    number: i32,
    offset: u64,
    len: u64,
}

/// One batch of an upload recorded in the cursor: what every step of it needs.
struct UploadBatch<'a> {
    store: &'a ObjectsStore,
    unit: &'a Unit,
    spec: &'a Spec,
    after: Option<String>,
    up: Upload,
    bucket: String,
    /// `bucket/key`, naming the object in failures.
    label: String,
    /// The source object, as the upload recorded it when it started.
    entry: Listed,
}

/// Upload the next parts of an upload recorded in the cursor; complete it once all are there.
pub async fn continue_upload(
    store: &ObjectsStore,
    unit: &Unit,
    spec: &Spec,
    after: Option<String>,
    up: Upload,
) -> Result<BatchOutcome, StoreError> {
    let batch = UploadBatch::new(store, unit, spec, after, up);
    if let ControlFlow::Break(end) = batch.check_source_unchanged().await? {
        return Ok(end);
    }
    let Some(mut done) = parts_done(store, &batch.bucket, &batch.up).await? else {
        tracing::info!(store = "objects", bucket = %batch.bucket, key = %batch.up.key, upload = %batch.up.id, "the multipart upload is gone from the target; copying the object again from the start");
        return Ok(batch.restart());
    };
    batch.note_first_continuation(&done);
    let (now, all_sent_now) = batch.parts_for_this_batch(&done);
    let results = batch.send_parts(now).await;
    let bytes = match batch.record_sent(results, &mut done).await? {
        ControlFlow::Continue(bytes) => bytes,
        ControlFlow::Break(end) => return Ok(end),
    };
    if !all_sent_now {
        return Ok(batch.more_parts_to_send(bytes));
    }
    // Every part is there: complete, and check the ETag the target computed.
    batch.complete(&done, bytes).await
}

impl<'a> UploadBatch<'a> {
    fn new(
        store: &'a ObjectsStore,
        unit: &'a Unit,
        spec: &'a Spec,
        after: Option<String>,
        up: Upload,
    ) -> UploadBatch<'a> {
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
        UploadBatch {
            store,
            unit,
            spec,
            after,
            up,
            bucket,
            label,
            entry,
        }
    }

    /// Abort the upload on the target (what it holds of the object is dropped).
    async fn abort(&self) {
        let _ = self
            .store
            .target_client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.up.key)
            .upload_id(&self.up.id)
            .send()
            .await;
    }

    /// The outcome that copies the object again from its start, in a new upload.
    fn restart(&self) -> BatchOutcome {
        BatchOutcome {
            next: Some(encode_copy_cursor(&CopyCursor {
                after: self.after.clone(),
                upload: None,
            })),
            ..BatchOutcome::default()
        }
    }

    /// The outcome that leaves the object out, with why when there is a reason to report.
    fn skip(&self, why: Option<String>) -> BatchOutcome {
        outcome_skip(&self.up.key, why.map(|m| (self.label.clone(), m)))
    }

    /// The source must still be the version the upload started from.
    async fn check_source_unchanged(&self) -> Result<ControlFlow<BatchOutcome>, StoreError> {
        match self.store.source_head(self.spec, &self.entry).await {
            Ok((_, fp)) if fp == self.up.source => Ok(ControlFlow::Continue(())),
            Ok(_) => {
                tracing::info!(store = "objects", bucket = %self.bucket, key = %self.up.key, "the source object changed since its upload started; copying it again from the start");
                self.abort().await;
                Ok(ControlFlow::Break(self.restart()))
            }
            Err(Failure::Gone) => {
                self.abort().await;
                Ok(ControlFlow::Break(self.skip(None)))
            }
            Err(Failure::Object(m)) => {
                self.abort().await;
                Ok(ControlFlow::Break(self.skip(Some(m))))
            }
            Err(Failure::Fatal(e)) => Err(e.in_unit(&self.unit.name)),
        }
    }

    /// Say once per process when an upload continues with parts a stopped run left on the target.
    fn note_first_continuation(&self, done: &BTreeMap<i32, (String, u64)>) {
        let first_time = self
            .store
            .resumed
            .lock()
            .expect("resumed set")
            .insert(self.up.id.clone());
        if first_time && !done.is_empty() {
            tracing::info!(store = "objects", bucket = %self.bucket, key = %self.up.key, upload = %self.up.id, parts_there = done.len(), parts = self.up.part_sizes.len(), "continuing a multipart upload: parts already on the target are kept");
        }
    }

    /// The parts to send in this batch (the first missing ones, about a batch's worth of bytes),
    /// and whether they are all the missing ones.
    fn parts_for_this_batch(&self, done: &BTreeMap<i32, (String, u64)>) -> (Vec<Part>, bool) {
        // Parts still to send, in order, with their offsets.
        let mut offset = 0u64;
        let mut missing = Vec::new();
        for (i, &len) in self.up.part_sizes.iter().enumerate() {
            let number = i as i32 + 1;
            if done.get(&number).map(|(_, s)| *s) != Some(len) {
                missing.push(Part {
                    number,
                    offset,
                    len,
                });
            }
            offset += len;
        }
        let mut now = Vec::new();
        let mut budget = 0u64;
        for m in &missing {
            if !now.is_empty()
                && budget + m.len > PARTS_BATCH_BYTES.max(self.store.options.part_size)
            {
                break;
            }
            budget += m.len;
            now.push(*m);
        }
        let all_sent_now = now.len() == missing.len();
        (now, all_sent_now)
    }

    /// Send parts to the target, several at once; each gives (number, ETag, length) or why not.
    async fn send_parts(&self, parts: Vec<Part>) -> Vec<Result<(i32, String, u64), Failure>> {
        let if_match = match &self.spec.from {
            From::S3 { .. } => self.up.source.etag.clone(),
            From::Folder(_) => None,
        };
        // Parts that mirror the source's are checked all at once before completing (the MD5s of the
        // target's parts must give the source's ETag), so offload need not hash them as they pass.
        let hash_parts = !(self.up.mirror && if_match.is_some());
        futures_util::stream::iter(parts)
            .map(|part| self.send_part(part, if_match.as_deref(), hash_parts))
            .buffer_unordered(self.store.options.transfers.max(1))
            .collect()
            .await
    }

    /// Read one part from the source and upload it, checking the target stored what was sent.
    async fn send_part(
        &self,
        part: Part,
        if_match: Option<&str>,
        hash_parts: bool,
    ) -> Result<(i32, String, u64), Failure> {
        let Part {
            number: n,
            offset,
            len,
        } = part;
        let store = self.store;
        let _permit = store.permits.acquire().await.expect("semaphore open");
        let (feed, got, _, _) = store
            .open_source(self.spec, &self.entry, Some((offset, len)), if_match)
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
            .bucket(&self.bucket)
            .key(&self.up.key)
            .upload_id(&self.up.id)
            .part_number(n)
            .content_length(len as i64)
            .body(body)
            .send()
            .await;
        let sent = body_result(&report);
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                if let Some(Err(f)) = sent {
                    return Err(f.into_failure(store.source_address()));
                }
                return Err(classify(
                    Side::Target,
                    &store.target.address(),
                    "uploading a part",
                    true,
                    &e,
                ));
            }
        };
        let md5 = match sent {
            Some(Ok(md5)) => md5.map(hex::encode),
            Some(Err(f)) => return Err(f.into_failure(store.source_address())),
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

    /// Add the parts sent to `done` and count their bytes; a part that failed ends the batch:
    /// the object is copied again from the start when the source changed meanwhile, else left out.
    async fn record_sent(
        &self,
        results: Vec<Result<(i32, String, u64), Failure>>,
        done: &mut BTreeMap<i32, (String, u64)>,
    ) -> Result<ControlFlow<BatchOutcome, u64>, StoreError> {
        let mut bytes = 0u64;
        let mut object_problem = None;
        for r in results {
            match r {
                Ok((n, etag, len)) => {
                    bytes += len;
                    done.insert(n, (etag, len));
                }
                Err(Failure::Fatal(e)) => return Err(e.in_unit(&self.unit.name)),
                Err(Failure::Gone) => object_problem = Some(None),
                Err(Failure::Object(m)) => {
                    if m.contains("PreconditionFailed") || m.contains("status 412") {
                        tracing::info!(store = "objects", bucket = %self.bucket, key = %self.up.key, "the source object changed during its upload; copying it again from the start");
                        self.abort().await;
                        return Ok(ControlFlow::Break(self.restart()));
                    }
                    object_problem.get_or_insert(Some(m));
                }
            }
        }
        if let Some(problem) = object_problem {
            self.abort().await;
            return Ok(ControlFlow::Break(self.skip(problem)));
        }
        Ok(ControlFlow::Continue(bytes))
    }

    /// The outcome of a batch that sent some parts and leaves others for the next batch.
    fn more_parts_to_send(self, bytes: u64) -> BatchOutcome {
        BatchOutcome {
            rows: 0,
            bytes,
            next: Some(encode_copy_cursor(&CopyCursor {
                after: self.after,
                upload: Some(self.up),
            })),
            ..BatchOutcome::default()
        }
    }

    /// Complete the upload once every part is on the target, and check the ETag it computed.
    async fn complete(
        &self,
        done: &BTreeMap<i32, (String, u64)>,
        bytes: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let (parts, md5s) = match self.completed_parts(done).await {
            ControlFlow::Continue(v) => v,
            ControlFlow::Break(end) => return Ok(end),
        };
        if let ControlFlow::Break(end) = self.check_parts_give_source_etag(&md5s).await {
            return Ok(end);
        }
        let etag = match self.send_completion(parts).await? {
            ControlFlow::Continue(etag) => etag,
            ControlFlow::Break(end) => return Ok(end),
        };
        Ok(self.check_completed(etag, &md5s, bytes).await)
    }

    /// The parts to complete the upload with, and their MD5s from their ETags; an ETag that is no
    /// MD5 leaves the object out, since the target could not be checked by content.
    async fn completed_parts(
        &self,
        done: &BTreeMap<i32, (String, u64)>,
    ) -> ControlFlow<BatchOutcome, (Vec<CompletedPart>, Vec<[u8; 16]>)> {
        let mut parts = Vec::new();
        let mut md5s = Vec::new();
        for (n, (etag, _)) in done.iter().take(self.up.part_sizes.len()) {
            parts.push(
                CompletedPart::builder()
                    .part_number(*n)
                    .e_tag(format!("\"{etag}\""))
                    .build(),
            );
            let mut d = [0u8; 16];
            if hex::decode_to_slice(etag, &mut d).is_err() {
                self.abort().await;
                return ControlFlow::Break(self.skip(Some(format!("part {n} has an ETag that is not an MD5 ({etag}); the target cannot be checked by content"))));
            }
            md5s.push(d);
        }
        ControlFlow::Continue((parts, md5s))
    }

    /// With parts that mirror the source's, their MD5s must give the source's ETag before the
    /// upload is completed.
    async fn check_parts_give_source_etag(&self, md5s: &[[u8; 16]]) -> ControlFlow<BatchOutcome> {
        let up = &self.up;
        if up.mirror {
            let expected = digest::multipart_etag(md5s);
            if up.source.etag.as_deref() != Some(expected.as_str()) {
                self.abort().await;
                return ControlFlow::Break(self.skip(Some(format!(
                    "the parts the target received give ETag {expected}, not the source's {}: the bytes changed on the way; run the copy again (--resume) to send the object afresh",
                    up.source.etag.as_deref().unwrap_or("")
                ))));
            }
        }
        ControlFlow::Continue(())
    }

    /// Ask the target to complete the upload; gives the ETag it computed.
    async fn send_completion(
        &self,
        parts: Vec<CompletedPart>,
    ) -> Result<ControlFlow<BatchOutcome, String>, StoreError> {
        let completed = self
            .store
            .target_client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.up.key)
            .upload_id(&self.up.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(c) => Ok(ControlFlow::Continue(
                c.e_tag().map(clean_etag).unwrap_or_default(),
            )),
            Err(e) => match classify(
                Side::Target,
                &self.store.target.address(),
                "completing a multipart upload",
                true,
                &e,
            ) {
                Failure::Fatal(err) => Err(err.in_unit(&self.unit.name)),
                Failure::Gone => Ok(ControlFlow::Break(self.restart())),
                Failure::Object(m) => {
                    self.abort().await;
                    Ok(ControlFlow::Break(self.skip(Some(m))))
                }
            },
        }
    }

    /// The batch's outcome from the ETag of the completed object: it must be the one its parts
    /// give, and the source's when the parts mirror the source's.
    async fn check_completed(&self, etag: String, md5s: &[[u8; 16]], bytes: u64) -> BatchOutcome {
        let up = &self.up;
        let expected = digest::multipart_etag(md5s);
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
            let _ = self
                .store
                .target_client
                .delete_object()
                .bucket(&self.bucket)
                .key(&up.key)
                .send()
                .await;
        }
        tracing::debug!(store = "objects", bucket = %self.bucket, key = %up.key, etag = %etag, "multipart upload completed");
        BatchOutcome {
            rows: if problem.is_none() { 1 } else { 0 },
            bytes,
            next: Some(key_cursor(&up.key)),
            failed: problem
                .map(|p| (self.label.clone(), p))
                .into_iter()
                .collect(),
            unchanged: 0,
        }
    }
}
