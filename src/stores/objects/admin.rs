//! Everything around the copy itself: the plan's checks, target buckets (created with
//! `--create-buckets`), the public-read policy carried from MinIO's `openedx` bucket, stale
//! multipart uploads, extra objects removed under `--if-exists replace`, and per-object digests
//! for verification.

use std::collections::HashSet;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Delete, ObjectIdentifier,
};
use futures_util::StreamExt;

use super::digest::{self, Meta};
use super::endpoint::{classify, Failure};
use super::listing::Listed;
use super::ops::folder_meta;
use super::{range_keys, From, ObjectSource, ObjectsStore, Spec};
use crate::core::store::{Check, ShapeDifference, Survey};
use crate::core::{ErrorKind, Side, StoreError, StoreKind, Unit};

/// Connect to both ends, check every bucket, and describe the mapping.
pub async fn survey(store: &ObjectsStore) -> Result<Survey, StoreError> {
    let mut s = Survey::default();
    let places = store.places();
    match &store.source {
        ObjectSource::S3 { endpoint, .. } => {
            s.source_version = format!("S3 API at {}", endpoint.public_url());
            s.notes.push(format!(
                "source credentials: {}",
                endpoint.credentials.describe()
            ));
            for (bucket, spec, _, _) in &places {
                let r = store
                    .source_client()
                    .list_objects_v2()
                    .bucket(bucket)
                    .max_keys(1)
                    .send()
                    .await;
                let check = match r {
                    Ok(_) => Check::new(format!("source bucket {bucket}"), true, "readable"),
                    Err(e) => Check::new(
                        format!("source bucket {bucket}"),
                        false,
                        failure_text(classify(
                            Side::Source,
                            &endpoint.address(),
                            "listing the bucket",
                            false,
                            &e,
                        )),
                    ),
                };
                s.checks.push(check);
                if spec.to.bucket != *bucket {
                    s.notes
                        .push(format!("bucket {bucket} -> {}", spec.to.bucket));
                }
            }
        }
        ObjectSource::Media { root, .. } => {
            s.source_version = format!("Tutor media folders in {}", root.display());
            let mut any = false;
            for (_, spec, _, shown) in &places {
                let From::Folder(f) = &spec.from else {
                    continue;
                };
                let exists = f.folder.is_dir();
                any |= exists;
                s.notes.push(format!(
                    "{shown} -> s3://{}/{}{}{}",
                    spec.to.bucket,
                    spec.to.prefix,
                    match f.layout {
                        super::Layout::Plain => "",
                        super::Layout::Ora2 => " (ORA2 uploads: each folder's `content` file, with its metadata.json Content-Type)",
                    },
                    if exists { "" } else { " (folder missing: nothing to copy)" }
                ));
            }
            s.checks.push(Check::new(
                "media folders",
                any,
                if any {
                    "found".to_string()
                } else {
                    format!(
                        "no media folder found under {}; pass --tutor-root, or --from-s3 for MinIO",
                        root.display()
                    )
                },
            ));
        }
    }
    s.target_version = format!(
        "S3 API at {} (region {}, {} addressing)",
        store.target.public_url(),
        if store.target.region.is_empty() {
            "us-east-1"
        } else {
            &store.target.region
        },
        if store.target.path_style {
            "path-style"
        } else {
            "virtual-hosted"
        }
    );
    s.notes.push(format!(
        "target credentials: {}",
        store.target.credentials.describe()
    ));
    let mut seen = HashSet::new();
    for (_, spec, _, _) in &places {
        let b = &spec.to.bucket;
        if !seen.insert(b.clone()) {
            continue;
        }
        let r = store
            .target_client
            .list_objects_v2()
            .bucket(b)
            .max_keys(1)
            .send()
            .await;
        let name = format!("target bucket {b}");
        s.checks.push(match r {
            Ok(_) => Check::new(name, true, "exists"),
            Err(e) if e.code() == Some("NoSuchBucket") => {
                if store.options.create_buckets {
                    Check::new(name, true, "missing; will be created (--create-buckets)")
                } else {
                    Check::new(name, false, "missing: create it, pass --create-buckets, or map the source bucket to an existing one with --bucket-map")
                }
            }
            Err(e) => Check::new(
                name,
                false,
                failure_text(classify(Side::Target, &store.target.address(), "listing the bucket", false, &e)),
            ),
        });
    }
    s.notes.push(format!(
        "objects larger than {} MiB are copied in parts of that size (multipart source objects keep their own parts)",
        store.options.part_size / (1024 * 1024)
    ));
    Ok(s)
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Fatal(e) => {
            if e.hint.is_empty() {
                e.detail
            } else {
                format!("{}. {}", e.detail, e.hint)
            }
        }
        Failure::Object(m) => m,
        Failure::Gone => "not found".into(),
    }
}

/// Make sure a target bucket exists, creating it when `--create-buckets` allows.
pub async fn ensure_bucket(store: &ObjectsStore, bucket: &str) -> Result<(), StoreError> {
    let addr = store.target.address();
    match store
        .target_client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) => {
            let missing = e.code() == Some("NotFound")
                || e.code() == Some("NoSuchBucket")
                || e.raw_response().map(|r| r.status().as_u16()) == Some(404);
            if !missing {
                return Err(
                    match classify(Side::Target, &addr, "checking the bucket", false, &e) {
                        Failure::Fatal(err) => err.in_unit(bucket),
                        _ => unreachable!("bucket-level calls fail fatally"),
                    },
                );
            }
        }
    }
    if !store.options.create_buckets {
        return Err(StoreError::new(
            StoreKind::Objects,
            addr,
            ErrorKind::Input,
            format!("target bucket {bucket} does not exist"),
            "nothing was written. Create it, pass --create-buckets, or map the source bucket to an existing one with --bucket-map",
        ));
    }
    let mut req = store.target_client.create_bucket().bucket(bucket);
    if !store.target.region.is_empty() && store.target.region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(store.target.region.as_str()))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => {
            tracing::info!(store = "objects", bucket, "target bucket created");
            Ok(())
        }
        Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => Ok(()),
        Err(e) => Err(
            match classify(Side::Target, &addr, "creating the bucket", false, &e) {
                Failure::Fatal(err) => err.in_unit(bucket),
                _ => unreachable!("bucket-level calls fail fatally"),
            },
        ),
    }
}

/// Abort the multipart uploads left in a unit's key range (all of them once the unit is done).
pub async fn abort_stale_uploads(
    store: &ObjectsStore,
    unit: &Unit,
    spec: &Spec,
    keep: Option<&str>,
) -> Result<(), StoreError> {
    let (after, upto) = range_keys(&unit.range);
    let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
    loop {
        let mut req = store
            .target_client
            .list_multipart_uploads()
            .bucket(&spec.to.bucket);
        if !spec.to.prefix.is_empty() {
            req = req.prefix(&spec.to.prefix);
        }
        if let Some(k) = &key_marker {
            req = req.key_marker(k);
        }
        if let Some(i) = &id_marker {
            req = req.upload_id_marker(i);
        }
        let Ok(page) = req.send().await else {
            return Ok(()); // listing uploads is best effort (not every server offers it)
        };
        for u in page.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            let in_range = after.as_deref().is_none_or(|a| key > a)
                && upto.as_deref().is_none_or(|b| key <= b)
                && spec.to.owns(key);
            if in_range && keep != Some(id) {
                tracing::info!(store = "objects", bucket = %spec.to.bucket, key, upload = id, "aborting a stale multipart upload");
                let _ = store
                    .target_client
                    .abort_multipart_upload()
                    .bucket(&spec.to.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            }
        }
        if page.is_truncated() == Some(true) {
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(());
            }
        } else {
            return Ok(());
        }
    }
}

/// Delete the target objects of a key range (keys after `after`, up to `upto`) that the source
/// does not have; the rest is overwritten or found identical by the copy. `why` names the reason
/// in the log (`--if-exists replace`, the delta pass). Returns how many were deleted.
pub async fn delete_extras(
    store: &ObjectsStore,
    unit: &Unit,
    spec: &Spec,
    after: Option<String>,
    upto: Option<String>,
    why: &str,
) -> Result<u64, StoreError> {
    let mut after = after;
    let mut deleted = 0u64;
    loop {
        let (targets, more) = store
            .list(Side::Target, spec, after.as_deref(), upto.as_deref(), 1000)
            .await?;
        let Some(last) = targets.last().map(|t| t.key.clone()) else {
            return Ok(deleted);
        };
        let (sources, _) = store
            .list(
                Side::Source,
                spec,
                after.as_deref(),
                Some(&last),
                usize::MAX,
            )
            .await?;
        let keep: HashSet<&str> = sources.iter().map(|s| s.key.as_str()).collect();
        let extra: Vec<ObjectIdentifier> = targets
            .iter()
            .filter(|t| !keep.contains(t.key.as_str()))
            .filter_map(|t| ObjectIdentifier::builder().key(&t.key).build().ok())
            .collect();
        if !extra.is_empty() {
            let asked = extra.len() as u64;
            tracing::info!(store = "objects", bucket = %spec.to.bucket, count = extra.len(), reason = why, "deleting target objects the source does not have");
            let delete = Delete::builder()
                .set_objects(Some(extra))
                .quiet(true)
                .build()
                .expect("objects set");
            let out = store
                .target_client
                .delete_objects()
                .bucket(&spec.to.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    match classify(
                        Side::Target,
                        &store.target.address(),
                        "deleting objects",
                        false,
                        &e,
                    ) {
                        Failure::Fatal(err) => err.in_unit(&unit.name),
                        _ => unreachable!("bucket-level calls fail fatally"),
                    }
                })?;
            // Quiet mode reports only the keys that could not be deleted.
            if let Some(err) = out.errors().first() {
                return Err(StoreError::new(
                    StoreKind::Objects,
                    store.target.address(),
                    ErrorKind::Query,
                    format!(
                        "deleting {}/{} on the target, which the source no longer has, failed: {} ({} of {} objects not deleted)",
                        spec.to.bucket,
                        err.key().unwrap_or(""),
                        err.message().or(err.code()).unwrap_or("no reason given"),
                        out.errors().len(),
                        asked,
                    ),
                    "give the target credentials s3:DeleteObject on the bucket, then run the command again",
                )
                .in_unit(&unit.name));
            }
            deleted += asked;
        }
        if !more {
            return Ok(deleted);
        }
        after = Some(last);
    }
}

/// The digest of every listed object on one side, in order: key, size and content digest (the
/// ETag the copy gives it), taken from the listing where the listing shows it; with `--deep`, the
/// MD5 of all its bytes and its metadata (one GET and one HEAD per object).
pub async fn object_digests(
    store: &ObjectsStore,
    side: Side,
    spec: &Spec,
    entries: &[Listed],
) -> Result<Vec<[u8; 16]>, StoreError> {
    type Pending<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<[u8; 16], StoreError>> + Send + 'a>,
    >;
    let results: Vec<Result<[u8; 16], StoreError>> =
        futures_util::stream::iter(entries.iter().cloned())
            .map(|e| -> Pending<'_> {
                Box::pin(async move { digest_one(store, side, spec, &e).await })
            })
            .buffered(store.options.transfers.max(1))
            .collect()
            .await;
    results.into_iter().collect()
}

async fn digest_one(
    store: &ObjectsStore,
    side: Side,
    spec: &Spec,
    e: &Listed,
) -> Result<[u8; 16], StoreError> {
    let (content, meta) = match describe(store, side, spec, e).await {
        Ok(v) => v,
        Err(Failure::Fatal(err)) => return Err(err),
        Err(Failure::Gone) => ("gone while being checked".to_string(), String::new()),
        Err(Failure::Object(m)) => {
            tracing::warn!(store = "objects", side = %side, bucket = %spec.to.bucket, key = %e.key, error = %m, "object could not be checked; counted as differing");
            (format!("unreadable: {m}"), String::new())
        }
    };
    Ok(digest::object_digest(&e.key, e.size, &content, &meta))
}

/// (content digest, metadata text) of one object on one side. Without `--deep` the metadata
/// text is empty (not compared): the copy sets it from the very response it read the bytes from.
async fn describe(
    store: &ObjectsStore,
    side: Side,
    spec: &Spec,
    e: &Listed,
) -> Result<(String, String), Failure> {
    if let Some(p) = &e.problem {
        return Err(Failure::Object(p.clone()));
    }
    let etag = || format!("etag:{}", e.etag.clone().unwrap_or_default());
    if !store.options.deep {
        let listed = match (side, &spec.from) {
            (Side::Target, _) => true,
            (Side::Source, From::S3 { .. }) => {
                e.etag
                    .as_deref()
                    .and_then(digest::multipart_parts)
                    .is_some()
                    || e.size <= store.options.part_size
            }
            (Side::Source, From::Folder(_)) => false,
        };
        if listed {
            return Ok((etag(), String::new()));
        }
        // The copy gives this object a multipart ETag of uniform parts (or, for a file, the
        // MD5 of its bytes): compute the same from the source's bytes.
        let _permit = store.permits.acquire().await.expect("semaphore open");
        let parts = if e.size <= store.options.part_size {
            vec![e.size]
        } else {
            store.parts_for(e.size)
        };
        let (_, etag) = store.hash_source(spec, e, parts).await?;
        return Ok((format!("etag:{etag}"), String::new()));
    }
    let _permit = store.permits.acquire().await.expect("semaphore open");
    let meta: Meta = match (side, &spec.from) {
        (Side::Target, _) => {
            store
                .target_head(&spec.to.bucket, &e.key)
                .await?
                .ok_or(Failure::Gone)?
                .0
        }
        (Side::Source, From::S3 { .. }) => store.source_head(spec, e).await?.0,
        (Side::Source, From::Folder(f)) => {
            let path = e.file.as_ref().ok_or(Failure::Gone)?;
            folder_meta(f.layout, &e.key, path).await
        }
    };
    let content = match side {
        Side::Target => full_md5_target(store, spec, e).await?,
        Side::Source => {
            let (md5, _) = store.hash_source(spec, e, vec![e.size]).await?;
            format!("md5:{}", hex::encode(md5))
        }
    };
    Ok((content, meta.canonical()))
}

async fn full_md5_target(store: &ObjectsStore, spec: &Spec, e: &Listed) -> Result<String, Failure> {
    let out = store
        .target_client
        .get_object()
        .bucket(&spec.to.bucket)
        .key(&e.key)
        .send()
        .await
        .map_err(|err| {
            classify(
                Side::Target,
                &store.target.address(),
                "reading the object",
                true,
                &err,
            )
        })?;
    let len = out.content_length().unwrap_or(0).max(0) as u64;
    let feed = super::transfer::Feed::S3(Box::pin(out.body));
    let (md5, _) = feed.hash(len, vec![len]).await.map_err(Failure::Object)?;
    Ok(format!("md5:{}", hex::encode(md5)))
}

/// A bucket policy that lets anyone read objects (what MinIO's `mc policy set public` gives
/// readers, without its anonymous writes).
pub fn public_read_policy(bucket: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "PublicRead",
            "Effect": "Allow",
            "Principal": {"AWS": ["*"]},
            "Action": ["s3:GetObject"],
            "Resource": [format!("arn:aws:s3:::{bucket}/*")],
        }]
    })
    .to_string()
}

/// Whether a policy lets anonymous users do `action` (e.g. `s3:GetObject`).
pub fn grants_anonymous(policy: &str, action: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(policy) else {
        return false;
    };
    let list = |x: &serde_json::Value| -> Vec<String> {
        match x {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let statements = match &v["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let service = action.split(':').next().unwrap_or("s3");
    let verb = action.split(':').nth(1).unwrap_or("");
    statements.iter().any(|st| {
        let anyone = match &st["Principal"] {
            serde_json::Value::String(s) => s == "*",
            serde_json::Value::Object(o) => o
                .get("AWS")
                .map(|a| list(a).iter().any(|p| p == "*"))
                .unwrap_or(false),
            _ => false,
        };
        let allowed = st["Effect"].as_str() == Some("Allow");
        let acts = list(&st["Action"]).iter().any(|a| {
            a == "*"
                || a == action
                || a == &format!("{service}:*")
                || (a.ends_with('*')
                    && verb.starts_with(
                        a.trim_start_matches(&format!("{service}:"))
                            .trim_end_matches('*'),
                    )
                    && a.starts_with(&format!("{service}:")))
        });
        anyone && allowed && acts
    })
}

/// The target buckets that must be publicly readable, with the source bucket that makes it so.
async fn public_buckets(store: &ObjectsStore) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    match &store.source {
        ObjectSource::S3 { buckets, .. } => {
            for b in buckets
                .iter()
                .filter(|b| store.options.public_read.contains(b))
            {
                let policy = store
                    .source_client()
                    .get_bucket_policy()
                    .bucket(b)
                    .send()
                    .await
                    .ok()
                    .and_then(|p| p.policy().map(str::to_string));
                if let Some(p) = policy {
                    if grants_anonymous(&p, "s3:GetObject") && seen.insert(b.clone()) {
                        out.push((
                            b.clone(),
                            store.target_bucket(b),
                            grants_anonymous(&p, "s3:PutObject"),
                        ));
                    }
                }
            }
        }
        ObjectSource::Media { .. } => {
            for b in &store.options.public_media {
                if seen.insert(b.clone()) {
                    out.push((b.clone(), store.target_bucket(b), false));
                }
            }
        }
    }
    out
}

/// Give target buckets the public read access their source buckets have. Returns notes.
pub async fn carry_public_read(store: &ObjectsStore) -> Result<Vec<String>, StoreError> {
    let mut notes = Vec::new();
    for (source, target, writable) in public_buckets(store).await {
        let current = store
            .target_client
            .get_bucket_policy()
            .bucket(&target)
            .send()
            .await;
        match current {
            Ok(p) if grants_anonymous(p.policy().unwrap_or(""), "s3:GetObject") => {}
            Ok(_) => notes.push(format!(
                "objects: bucket {target} has a policy of its own that does not let anyone read it, unlike {source} on the source; offload left it alone: grant public read (s3:GetObject) yourself"
            )),
            Err(e) if e.code() == Some("NoSuchBucketPolicy") || e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                let put = store
                    .target_client
                    .put_bucket_policy()
                    .bucket(&target)
                    .policy(public_read_policy(&target))
                    .send()
                    .await;
                match put {
                    Ok(_) => notes.push(format!(
                        "objects: bucket {target} is publicly readable, as {source} is on the source{}",
                        if writable { " (its anonymous write access was not carried over)" } else { "" }
                    )),
                    Err(e) => notes.push(format!(
                        "objects: could not make bucket {target} publicly readable ({}); the platform serves public files from it: allow public bucket policies (e.g. turn off S3 Block Public Access for it) and set a public-read policy",
                        e.code().unwrap_or("error")
                    )),
                }
            }
            Err(e) => notes.push(format!(
                "objects: could not read the policy of bucket {target} ({}); check that it is publicly readable",
                e.code().unwrap_or("error")
            )),
        }
    }
    Ok(notes)
}

/// A target bucket that should be publicly readable and is not.
pub async fn compare_public_read(
    store: &ObjectsStore,
    units: &[Unit],
) -> Result<Vec<ShapeDifference>, StoreError> {
    let wanted: HashSet<String> = units
        .iter()
        .filter_map(|u| store.spec(u).ok().map(|s| s.to.bucket))
        .collect();
    let mut out = Vec::new();
    for (source, target, _) in public_buckets(store).await {
        if !wanted.contains(&target) {
            continue;
        }
        let policy = store
            .target_client
            .get_bucket_policy()
            .bucket(&target)
            .send()
            .await
            .ok()
            .and_then(|p| p.policy().map(str::to_string))
            .unwrap_or_default();
        if !grants_anonymous(&policy, "s3:GetObject") {
            out.push(ShapeDifference {
                container: target.clone(),
                object: String::new(),
                detail: format!(
                    "bucket {target} is not publicly readable, while {source} is on the source"
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_anonymous_grants_of_minio_and_aws_policies() {
        // What `mc policy set public` writes on MinIO.
        let minio = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetBucketLocation","s3:ListBucket","s3:ListBucketMultipartUploads"],"Resource":["arn:aws:s3:::openedx"]},{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:AbortMultipartUpload","s3:DeleteObject","s3:GetObject","s3:ListMultipartUploadParts","s3:PutObject"],"Resource":["arn:aws:s3:::openedx/*"]}]}"#;
        assert!(grants_anonymous(minio, "s3:GetObject"));
        assert!(grants_anonymous(minio, "s3:PutObject"));
        let ours = public_read_policy("b");
        assert!(grants_anonymous(&ours, "s3:GetObject"));
        assert!(!grants_anonymous(&ours, "s3:PutObject"));
        let private = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:root"},"Action":"s3:*"}}"#;
        assert!(!grants_anonymous(private, "s3:GetObject"));
        let wildcard = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:Get*"}}"#;
        assert!(grants_anonymous(wildcard, "s3:GetObject"));
        assert!(!grants_anonymous(wildcard, "s3:PutObject"));
        assert!(!grants_anonymous("not json", "s3:GetObject"));
    }
}
