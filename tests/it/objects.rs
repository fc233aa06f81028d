//! Objects store against two real SeaweedFS S3 servers: MinIO-style buckets and Tutor's media
//! folders end to end, metadata and awkward keys, kill -9 inside a multipart upload and its
//! resume, a changed object named by verify, and the inputs that must fail per object or stop
//! the job before it writes.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use md5::{Digest, Md5};

use crate::common::{
    assert_exit, assert_safe_to_switch, s3_client as client, s3_keys as keys,
    s3_source_url as source_url, s3_target_url as target_url, text,
};

fn src() -> Client {
    client(&source_url())
}

fn tgt() -> Client {
    client(&target_url())
}

/// A bucket name unique to this test run.
fn bucket(tag: &str) -> String {
    format!("it-{tag}-{}", std::process::id())
}

/// Remove a bucket with everything in it (objects and unfinished uploads), if it exists.
pub(crate) async fn drop_bucket(c: &Client, b: &str) {
    if let Ok(list) = c.list_multipart_uploads().bucket(b).send().await {
        for u in list.uploads() {
            let _ = c
                .abort_multipart_upload()
                .bucket(b)
                .key(u.key().unwrap())
                .upload_id(u.upload_id().unwrap())
                .send()
                .await;
        }
    }
    loop {
        let Ok(page) = c.list_objects_v2().bucket(b).send().await else {
            return;
        };
        if page.contents().is_empty() {
            break;
        }
        for o in page.contents() {
            c.delete_object()
                .bucket(b)
                .key(o.key().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    let _ = c.delete_bucket_policy().bucket(b).send().await;
    let _ = c.delete_bucket().bucket(b).send().await;
}

/// Create a fresh, empty bucket on the source (failing with a hint when the server is missing).
async fn fresh_source_bucket(b: &str) {
    let c = src();
    if let Err(e) = c.list_buckets().send().await {
        panic!(
            "cannot reach the test S3 at {}: {e:?}. Start the test servers with `scripts/stack up s3`",
            source_url()
        );
    }
    drop_bucket(&c, b).await;
    c.create_bucket().bucket(b).send().await.unwrap();
}

async fn put(b: &str, key: &str, body: Vec<u8>) {
    src()
        .put_object()
        .bucket(b)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {b}/{key}: {e:?}"));
}

async fn get(c: &Client, b: &str, key: &str) -> Option<Vec<u8>> {
    let out = c.get_object().bucket(b).key(key).send().await.ok()?;
    Some(out.body.collect().await.unwrap().into_bytes().to_vec())
}

/// Every key of a bucket with the MD5 of its bytes (read back, not taken from ETags).
async fn contents(c: &Client, b: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut token = None;
    loop {
        let mut req = c.list_objects_v2().bucket(b);
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let page = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {b}: {e:?}"));
        for o in page.contents() {
            let k = o.key().unwrap().to_string();
            let body = get(c, b, &k).await.unwrap();
            out.insert(k, hex::encode(Md5::digest(&body)));
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

/// The metadata a HEAD shows, as one comparable line.
async fn head_meta(c: &Client, b: &str, key: &str) -> String {
    let h = c
        .head_object()
        .bucket(b)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {b}/{key}: {e:?}"));
    let mut user: Vec<_> = h
        .metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    user.sort();
    format!(
        "type={:?} cache={:?} disposition={:?} encoding={:?} user={user:?} length={:?}",
        h.content_type(),
        h.cache_control(),
        h.content_disposition(),
        h.content_encoding(),
        h.content_length()
    )
}

/// The real binary with a Tutor root (which may hold no config.yml) and a job folder; the
/// target's keys come from OFFLOAD_TO_S3_ACCESS_KEY / OFFLOAD_TO_S3_SECRET_KEY.
fn offload(job: &Path, root: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
    cmd.args(args)
        .arg("--job")
        .arg(job)
        .arg("--tutor-root")
        .arg(root)
        .env_remove("OFFLOAD_FAILPOINT")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("OFFLOAD_TO_S3_ACCESS_KEY")
        .env_remove("OFFLOAD_TO_S3_SECRET_KEY")
        .env_remove("OFFLOAD_FROM_S3_ACCESS_KEY")
        .env_remove("OFFLOAD_FROM_S3_SECRET_KEY")
        .env("OFFLOAD_TO_S3_ACCESS_KEY", keys().0)
        .env("OFFLOAD_TO_S3_SECRET_KEY", keys().1)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run offload")
}

/// Copy flags from the source S3 to the target S3 for these buckets.
fn s3_flags(buckets: &[&str], extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--from-s3".to_string(),
        source_url(),
        "--to-s3".into(),
        target_url(),
        "--buckets".into(),
        buckets.join(","),
        "--create-buckets".into(),
        "--no-progress".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The binary with both sides' keys in the environment.
fn run(job: &Path, cmd: &str, flags: &[String]) -> Output {
    let mut args = vec![cmd];
    args.extend(flags.iter().map(|s| s.as_str()));
    offload(job, &job.join("no-tutor-here"), &args, &from_keys())
}

fn from_keys() -> [(&'static str, String); 2] {
    let (a, s) = keys();
    [
        ("OFFLOAD_FROM_S3_ACCESS_KEY", a),
        ("OFFLOAD_FROM_S3_SECRET_KEY", s),
    ]
}

/// Pseudo-random bytes (a simple LCG), so big fixtures need no data files.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// The Tutor buckets of a MinIO platform with typical content, under test-unique names.
struct TutorBuckets {
    openedx: String,
    uploads: String,
    videos: String,
    grades: String,
    learning: String,
}

impl TutorBuckets {
    async fn seed() -> TutorBuckets {
        let t = TutorBuckets {
            openedx: bucket("openedx"),
            uploads: bucket("uploads"),
            videos: bucket("videos"),
            grades: bucket("grades"),
            learning: bucket("learning"),
        };
        for b in t.all() {
            fresh_source_bucket(&b).await;
            drop_bucket(&tgt(), &format!("{b}-new")).await;
        }
        let s = src();
        // Course assets and media of the default storage, with the headers Django sets.
        s.put_object()
            .bucket(&t.openedx)
            .key("openedx/media/video-transcripts/3f2a9c.sjson")
            .content_type("application/json")
            .body(ByteStream::from(
                br#"{"start":[0],"end":[1500],"text":["Welcome"]}"#.to_vec(),
            ))
            .send()
            .await
            .unwrap();
        s.put_object()
            .bucket(&t.openedx)
            .key("openedx/media/profile-images/ab12_500.jpg")
            .content_type("image/jpeg")
            .cache_control("max-age=31536000")
            .body(ByteStream::from(noise(40_000, 1)))
            .send()
            .await
            .unwrap();
        s.put_object()
            .bucket(&t.openedx)
            .key("user_tasks/2024/05/course_export.tar.gz")
            .content_type("application/x-tar")
            .content_encoding("gzip")
            .content_disposition("attachment; filename=\"course.tar.gz\"")
            .body(ByteStream::from(noise(300_000, 2)))
            .send()
            .await
            .unwrap();
        put(
            &t.grades,
            "openedx/media/grades/9c1e/Demo_grade_report_2024-05-01.csv",
            b"id,grade\n1,0.9\n".to_vec(),
        )
        .await;
        s.put_object()
            .bucket(&t.uploads)
            .key("submissions_attachments/7f3e/course-v1:edX+Demo+2024/block-v1:edX+Demo+2024+type@openassessment+block@a1")
            .content_type("application/pdf")
            .metadata("uploaded-by", "learner-7")
            .body(ByteStream::from(noise(120_000, 3)))
            .send()
            .await
            .unwrap();
        put(&t.videos, "video-upload/intro.mp4", noise(2_000_000, 4)).await;
        put(
            &t.learning,
            "component_versions/9/static/diagram.png",
            noise(5_000, 5),
        )
        .await;
        // What `mc policy set public` gives MinIO's openedx bucket (read and write for anyone).
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":["*"]}},"Action":["s3:GetObject","s3:PutObject"],"Resource":["arn:aws:s3:::{}/*"]}}]}}"#,
            t.openedx
        );
        s.put_bucket_policy()
            .bucket(&t.openedx)
            .policy(policy)
            .send()
            .await
            .unwrap();
        t
    }

    fn all(&self) -> Vec<String> {
        vec![
            self.openedx.clone(),
            self.uploads.clone(),
            self.videos.clone(),
            self.grades.clone(),
            self.learning.clone(),
        ]
    }

    async fn drop(&self) {
        for b in self.all() {
            drop_bucket(&src(), &b).await;
            drop_bucket(&tgt(), &format!("{b}-new")).await;
        }
    }
}

#[tokio::test]
async fn minio_buckets_from_config_copy_and_verify_clean() {
    let t = TutorBuckets::seed().await;
    let job = tempfile::tempdir().unwrap();
    // A Tutor root with the minio plugin: bucket names and keys come from config.yml.
    let root = job.path().join("tutor");
    std::fs::create_dir_all(&root).unwrap();
    let (access, secret) = keys();
    std::fs::write(
        root.join("config.yml"),
        format!(
            "MINIO_BUCKET_NAME: {}\nMINIO_FILE_UPLOAD_BUCKET_NAME: {}\nMINIO_GRADES_BUCKET_NAME: {}\nMINIO_OPENEDX_LEARNING_BUCKET_NAME: {}\nMINIO_VIDEO_UPLOAD_BUCKET_NAME: {}\nOPENEDX_AWS_ACCESS_KEY: {access}\nOPENEDX_AWS_SECRET_ACCESS_KEY: {secret}\nPLUGINS:\n- minio\n",
            t.openedx, t.uploads, t.grades, t.learning, t.videos
        ),
    )
    .unwrap();
    let map: Vec<String> = t.all().iter().map(|b| format!("{b}={b}-new")).collect();
    let map = map.join(",");
    let (from, to) = (source_url(), target_url());
    let args = [
        "--from-s3",
        from.as_str(),
        "--to-s3",
        to.as_str(),
        "--bucket-map",
        map.as_str(),
        "--create-buckets",
        "--no-progress",
    ];
    let plan = offload(
        job.path(),
        &root,
        &[&["plan", "--json"], &args[..]].concat(),
        &[],
    );
    assert_exit(&plan, 0);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let units: Vec<&str> = plan["stores"][0]["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["container"].as_str().unwrap())
        .collect();
    for b in t.all() {
        assert!(
            units.contains(&b.as_str()),
            "plan lists bucket {b}: {units:?}"
        );
    }

    let copy = offload(job.path(), &root, &[&["copy"], &args[..]].concat(), &[]);
    assert_exit(&copy, 0);
    for b in t.all() {
        let (a, z) = (
            contents(&src(), &b).await,
            contents(&tgt(), &format!("{b}-new")).await,
        );
        assert!(!a.is_empty());
        assert_eq!(a, z, "bucket {b}: same keys with the same bytes");
        for k in a.keys() {
            assert_eq!(
                head_meta(&src(), &b, k).await,
                head_meta(&tgt(), &format!("{b}-new"), k).await,
                "metadata of {b}/{k}"
            );
        }
    }
    // The openedx bucket is publicly readable on the target too, without MinIO's anonymous writes.
    let policy = tgt()
        .get_bucket_policy()
        .bucket(format!("{}-new", t.openedx))
        .send()
        .await
        .expect("a policy on the target's openedx bucket");
    let policy: serde_json::Value = serde_json::from_str(policy.policy().unwrap()).unwrap();
    let policy_text = policy.to_string();
    assert!(
        policy_text.contains("s3:GetObject") && !policy_text.contains("s3:PutObject"),
        "{policy_text}"
    );
    assert!(
        tgt()
            .get_bucket_policy()
            .bucket(format!("{}-new", t.grades))
            .send()
            .await
            .is_err(),
        "private buckets stay private"
    );

    let verify = offload(job.path(), &root, &["verify"], &[]);
    assert_safe_to_switch(&verify);

    // Re-running over the full target copies nothing again: every object is found identical.
    let again = offload(
        job.path(),
        &root,
        &[
            &["copy", "--restart", "--if-exists", "replace", "--json"],
            &args[..],
        ]
        .concat(),
        &[],
    );
    assert_exit(&again, 0);
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        summary["rows"], 7,
        "every object counted as in place: {summary}"
    );
    assert_eq!(
        summary["bytes"], 0,
        "and none of them sent again: {summary}"
    );
    t.drop().await;
}

#[tokio::test]
async fn awkward_keys_and_metadata_survive() {
    let b = bucket("keys");
    fresh_source_bucket(&b).await;
    drop_bucket(&tgt(), &b).await;
    let keys = [
        "with space/and more.txt",
        "ünïcödé/日本語/файл 😀.txt",
        "plus+sign+key",
        "percent%20encoded%2Fnot",
        "folder/",
        "zero-bytes",
        "a//double//slash",
        "question?mark&amp=1",
        "~tilde!quote'paren(1)",
    ];
    let s = src();
    for (i, k) in keys.iter().enumerate() {
        let body = if k.ends_with('/') || k.starts_with("zero") {
            Vec::new()
        } else {
            noise(100 + i * 37, i as u64)
        };
        s.put_object()
            .bucket(&b)
            .key(*k)
            .content_type("text/plain; charset=utf-8")
            .cache_control("public, max-age=600")
            .content_disposition("attachment; filename=\"x.txt\"")
            .content_encoding("identity")
            .metadata("course", "course-v1:edX+Demo+2024")
            .metadata("origin", "studio upload")
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{k}: {e:?}"));
    }
    let job = tempfile::tempdir().unwrap();
    let f = s3_flags(&[&b], &[]);
    assert_exit(&run(job.path(), "copy", &f), 0);
    let (a, z) = (contents(&src(), &b).await, contents(&tgt(), &b).await);
    assert_eq!(a.len(), keys.len());
    assert_eq!(a, z);
    for k in keys {
        assert_eq!(
            head_meta(&src(), &b, k).await,
            head_meta(&tgt(), &b, k).await,
            "{k}"
        );
    }
    assert_exit(&run(job.path(), "verify", &[]), 0);
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

/// A fresh source bucket with 30 small assets and one 11 MiB object, and no target bucket.
async fn seed_assets_and_lecture(b: &str) {
    fresh_source_bucket(b).await;
    drop_bucket(&tgt(), b).await;
    for i in 0..30 {
        put(b, &format!("asset/{i:03}.png"), noise(1000 + i, i as u64)).await;
    }
    put(b, "big/lecture.mp4", noise(11 * 1024 * 1024, 99)).await;
}

#[tokio::test]
async fn a_changed_object_is_named() {
    let b = bucket("diff");
    // big/lecture.mp4 is stored whole on the source and reaches the target in parts: verify must
    // recompute its multipart ETag from the source's bytes.
    seed_assets_and_lecture(&b).await;
    let job = tempfile::tempdir().unwrap();
    let f = s3_flags(&[&b], &["--part-size", "5242880"]);
    assert_exit(&run(job.path(), "copy", &f), 0);
    let etag = tgt()
        .head_object()
        .bucket(&b)
        .key("big/lecture.mp4")
        .send()
        .await
        .unwrap();
    assert!(
        etag.e_tag().unwrap().ends_with("-3\""),
        "copied in 3 parts: {:?}",
        etag.e_tag()
    );
    assert_exit(&run(job.path(), "verify", &[]), 0);

    // Same size, other bytes; one gone; one extra; metadata changed on another.
    let t = tgt();
    t.put_object()
        .bucket(&b)
        .key("asset/007.png")
        .body(ByteStream::from(noise(1007, 1234)))
        .send()
        .await
        .unwrap();
    t.delete_object()
        .bucket(&b)
        .key("asset/013.png")
        .send()
        .await
        .unwrap();
    t.put_object()
        .bucket(&b)
        .key("asset/999-extra.png")
        .body(ByteStream::from(b"x".to_vec()))
        .send()
        .await
        .unwrap();
    t.copy_object()
        .bucket(&b)
        .key("asset/021.png")
        .copy_source(format!("{b}/asset/021.png"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("image/gif")
        .send()
        .await
        .unwrap();
    for deep in [false, true] {
        let args = if deep {
            vec!["verify", "--deep"]
        } else {
            vec!["verify"]
        };
        let out = offload(
            job.path(),
            &job.path().join("no-tutor-here"),
            &args,
            &from_keys(),
        );
        assert_exit(&out, 1);
        let report = text(&out);
        assert!(report.contains("NOT safe to switch"), "{report}");
        for (kind, key) in [
            ("differs", "asset/007.png"),
            ("missing on target", "asset/013.png"),
            ("extra on target", "asset/999-extra.png"),
        ] {
            assert!(
                report.contains(&format!("{kind}: {b}/{key}")),
                "{kind} {key} named (deep: {deep}):\n{report}"
            );
        }
        // Metadata is compared by --deep (one HEAD per object); the default compares what the
        // listings show: keys, sizes, content digests.
        assert_eq!(
            report.contains(&format!("differs: {b}/asset/021.png")),
            deep,
            "a changed Content-Type is named with --deep only (deep: {deep}):\n{report}"
        );
        assert!(!report.contains("asset/008.png"), "{report}");
    }
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

/// Upload `parts` to the source as one multipart object; returns its ETag (without quotes).
async fn put_in_parts(b: &str, key: &str, parts: &[Vec<u8>]) -> String {
    let s = src();
    let up = s
        .create_multipart_upload()
        .bucket(b)
        .key(key)
        .content_type("video/mp4")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let r = s
            .upload_part()
            .bucket(b)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(p.clone()))
            .send()
            .await
            .unwrap();
        done.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap())
                .build(),
        );
    }
    let c = s
        .complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.e_tag().unwrap().trim_matches('"').to_string()
}

#[tokio::test]
async fn multipart_source_objects_keep_their_parts() {
    let b = bucket("parts");
    fresh_source_bucket(&b).await;
    drop_bucket(&tgt(), &b).await;
    const MIB: usize = 1024 * 1024;
    // Even parts (the last one shorter), and uneven ones, as some uploaders leave them.
    let even: Vec<Vec<u8>> = vec![noise(5 * MIB, 11), noise(5 * MIB, 12), noise(1000, 13)];
    let uneven: Vec<Vec<u8>> = vec![
        noise(5 * MIB, 21),
        noise(7 * MIB, 22),
        noise(5 * MIB + 3, 23),
    ];
    let mut etags = BTreeMap::new();
    for (key, parts) in [("video/even.mp4", &even), ("video/uneven.mp4", &uneven)] {
        etags.insert(key, put_in_parts(&b, key, parts).await);
        assert!(etags[key].ends_with("-3"), "{key}: {}", etags[key]);
    }
    let job = tempfile::tempdir().unwrap();
    // A part size that matches neither layout: the copy must keep the source's own.
    let f = s3_flags(&[&b], &["--part-size", "6291456"]);
    let out = run(job.path(), "copy", &f);
    assert_exit(&out, 0);
    for (key, parts) in [("video/even.mp4", &even), ("video/uneven.mp4", &uneven)] {
        let h = tgt()
            .head_object()
            .bucket(&b)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            h.e_tag().unwrap().trim_matches('"'),
            etags[key],
            "{key}: the target's ETag is the source's, so its parts are the source's"
        );
        assert_eq!(h.content_type(), Some("video/mp4"));
        assert_eq!(get(&tgt(), &b, key).await.unwrap(), parts.concat(), "{key}");
    }
    assert_exit(&run(job.path(), "verify", &[]), 0);
    // Copied again from scratch into a full target: both are recognised as identical.
    let mut args: Vec<String> = ["--restart", "--if-exists", "replace", "--json"]
        .map(String::from)
        .to_vec();
    args.extend(f.iter().cloned());
    let again = run(job.path(), "copy", &args);
    assert_exit(&again, 0);
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["bytes"].as_u64(), Some(0), "{}", text(&again));
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

/// Keys of the objects a run wrote, from its debug log (`-vv`): single PUTs and multipart uploads.
fn written_keys(out: &Output) -> Vec<String> {
    let raw = String::from_utf8_lossy(&out.stderr);
    // Without colour codes, should the log have them.
    let mut log = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            log.push(c);
        }
    }
    let mut keys: Vec<String> = log
        .lines()
        .filter(|l| l.contains("object copied") || l.contains("multipart upload started"))
        .filter_map(|l| {
            let rest = &l[l.find(" key=")? + 5..];
            let end = rest.find(" bytes=").or_else(|| rest.find(" upload="))?;
            Some(rest[..end].trim_matches('"').to_string())
        })
        .collect();
    keys.sort();
    keys
}

/// Wait until the clock is past the whole second `t` (S3 Last-Modified has whole seconds), so
/// an object written from now on shows a later Last-Modified than one written at `t`.
async fn past_second(t: &aws_sdk_s3::primitives::DateTime) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() <= t.secs() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn delta_copies_only_what_changed_on_an_s3_source() {
    let b = bucket("delta");
    // big/lecture.mp4, stored whole on the source and copied in 3 parts: the delta must recognise
    // it unchanged from its bytes rather than upload it again.
    seed_assets_and_lecture(&b).await;
    let job = tempfile::tempdir().unwrap();
    let f = s3_flags(&[&b], &["--part-size", "5242880"]);
    assert_exit(&run(job.path(), "copy", &f), 0);
    assert_exit(&run(job.path(), "verify", &[]), 0);

    // The platform keeps writing: one object changed (same size), one added, one deleted.
    put(&b, "asset/007.png", noise(1007, 4242)).await;
    put(&b, "asset/500-new.png", noise(777, 500)).await;
    src()
        .delete_object()
        .bucket(&b)
        .key("asset/013.png")
        .send()
        .await
        .unwrap();
    let out = run(job.path(), "verify", &[]);
    assert_exit(&out, 1);
    let report = text(&out);
    for (kind, key) in [
        ("differs", "asset/007.png"),
        ("missing on target", "asset/500-new.png"),
        ("extra on target", "asset/013.png"),
    ] {
        assert!(
            report.contains(&format!("{kind}: {b}/{key}")),
            "{kind} {key} named:\n{report}"
        );
    }

    let big_before = tgt()
        .head_object()
        .bucket(&b)
        .key("big/lecture.mp4")
        .send()
        .await
        .unwrap();
    past_second(big_before.last_modified().unwrap()).await;
    let mut args = vec!["migrate", "--resume", "--delta", "--no-cutover", "-vv"];
    args.extend(f.iter().map(|s| s.as_str()));
    let out = offload(
        job.path(),
        &job.path().join("no-tutor-here"),
        &args,
        &from_keys(),
    );
    assert_exit(&out, 0);
    let report = text(&out);
    assert!(
        report.contains("Delta pass: 1 of 1 unit(s) had changed"),
        "{report}"
    );
    assert!(report.contains("Safe to switch"), "{report}");
    assert_eq!(
        written_keys(&out),
        ["asset/007.png", "asset/500-new.png"],
        "only the changed and the new object were written:\n{report}"
    );
    // The summary counts what was written, not the identical objects the recopy passed over.
    let written = written_keys(&out).len();
    assert!(
        report.contains(&format!("{written} record(s) copied again")),
        "the summary counts the {written} objects written:\n{report}"
    );
    let big_after = tgt()
        .head_object()
        .bucket(&b)
        .key("big/lecture.mp4")
        .send()
        .await
        .unwrap();
    assert_eq!(
        big_after.last_modified(),
        big_before.last_modified(),
        "the unchanged large object was not uploaded again"
    );
    assert_eq!(contents(&tgt(), &b).await, contents(&src(), &b).await);
    assert_exit(&run(job.path(), "verify", &[]), 0);
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

#[tokio::test]
async fn kill_inside_a_multipart_upload_resumes_it() {
    let b = bucket("resume");
    fresh_source_bucket(&b).await;
    drop_bucket(&tgt(), &b).await;
    let big = noise(30 * 1024 * 1024 + 12345, 7);
    put(&b, "video/lecture-01.mp4", big.clone()).await;
    put(&b, "z-after.txt", b"after the big one".to_vec()).await;
    let job = tempfile::tempdir().unwrap();
    let f = s3_flags(
        &[&b],
        &["--part-size", "5242880", "--object-transfers", "1"],
    );
    let mut args = vec!["copy"];
    args.extend(f.iter().map(|s| s.as_str()));
    let out = offload(
        job.path(),
        &job.path().join("no-tutor-here"),
        &args,
        &[
            &from_keys()[..],
            &[("OFFLOAD_FAILPOINT", "after-part:3".to_string())],
        ]
        .concat(),
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed inside the upload: {}",
        text(&out)
    );

    // The target holds an unfinished upload of that object with the 3 parts sent so far.
    let t = tgt();
    assert!(
        get(&t, &b, "video/lecture-01.mp4").await.is_none(),
        "not completed yet"
    );
    let uploads = t.list_multipart_uploads().bucket(&b).send().await.unwrap();
    let ups: Vec<_> = uploads
        .uploads()
        .iter()
        .filter(|u| u.key() == Some("video/lecture-01.mp4"))
        .collect();
    assert_eq!(ups.len(), 1);
    let id = ups[0].upload_id().unwrap().to_string();
    let parts = t
        .list_parts()
        .bucket(&b)
        .key("video/lecture-01.mp4")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(parts.parts().len(), 3);
    // A stale upload some earlier crash left in the same bucket.
    let stale = t
        .create_multipart_upload()
        .bucket(&b)
        .key("old/crashed.bin")
        .send()
        .await
        .unwrap();

    let mut args = vec!["copy", "--resume", "--json", "-v"];
    args.extend(f.iter().map(|s| s.as_str()));
    let out = offload(
        job.path(),
        &job.path().join("no-tutor-here"),
        &args,
        &from_keys(),
    );
    assert_exit(&out, 0);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("continuing a multipart upload") && log.contains(&id),
        "{log}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = summary["bytes"].as_u64().unwrap();
    assert!(
        sent < 20 * 1024 * 1024,
        "the resumed run sent only the missing parts, not the whole object again: {sent} bytes"
    );
    assert_eq!(
        get(&t, &b, "video/lecture-01.mp4").await.unwrap(),
        big,
        "bytes identical"
    );
    assert_eq!(
        get(&t, &b, "z-after.txt").await.unwrap(),
        b"after the big one"
    );
    let left = t.list_multipart_uploads().bucket(&b).send().await.unwrap();
    assert!(
        left.uploads().is_empty(),
        "no upload left behind (the stale one {:?} aborted): {:?}",
        stale.upload_id(),
        left.uploads()
    );
    assert_exit(&run(job.path(), "verify", &[]), 0);
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

/// A Tutor root without MinIO: media files in the folders Tutor mounts.
fn media_root(dir: &Path) -> PathBuf {
    let root = dir.join("tutor");
    let w = |rel: &str, body: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    w(
        "config.yml",
        b"LMS_HOST: learn.example.org\nPLUGINS:\n- mfe\n",
    );
    w(
        "data/openedx-media/user_tasks/2024/05/course_export.tar.gz",
        &noise(50_000, 1),
    );
    w(
        "data/openedx-media/video-transcripts/3f2a9c.sjson",
        br#"{"text":["Welcome"]}"#,
    );
    w(
        "data/openedx-media/video-images/intro.png",
        &noise(2_000, 2),
    );
    w(
        "data/openedx-media/profile-images/ab12_500.jpg",
        &noise(3_000, 3),
    );
    w(
        "data/openedx-media/grades/9c1e/Demo grade report.csv",
        b"id,grade\n1,0.9\n",
    );
    w(
        "data/openedx-media-private/openedx-learning/component_versions/9/diagram.svg",
        b"<svg/>",
    );
    w(
        "data/lms/ora2/openedxuploads/submissions_attachments/7f3e/course-v1:edX+Demo+2024/block1/content",
        &noise(9_000, 4),
    );
    w(
        "data/lms/ora2/openedxuploads/submissions_attachments/7f3e/course-v1:edX+Demo+2024/block1/metadata.json",
        br#"{"Content-Type": "application/pdf", "Content-MD5": "x"}"#,
    );
    root
}

#[tokio::test]
async fn filesystem_media_lands_where_the_s3_plugins_look() {
    let job = tempfile::tempdir().unwrap();
    let root = media_root(job.path());
    let names = [
        "openedx",
        "openedxgrades",
        "openedxlearning",
        "openedxuploads",
    ];
    let map: Vec<String> = names
        .iter()
        .map(|n| format!("{n}={}", bucket(&format!("fs{n}"))))
        .collect();
    for n in names {
        drop_bucket(&tgt(), &bucket(&format!("fs{n}"))).await;
    }
    let (to, map) = (target_url(), map.join(","));
    let args = [
        "--to-s3",
        to.as_str(),
        "--bucket-map",
        map.as_str(),
        "--create-buckets",
        "--no-progress",
    ];
    let plan = offload(job.path(), &root, &[&["plan"], &args[..]].concat(), &[]);
    assert_exit(&plan, 0);
    let shown = text(&plan);
    assert!(
        shown.contains(&format!(
            "data/openedx-media/grades -> s3://{}/openedx/media/grades/",
            bucket("fsopenedxgrades")
        )),
        "the plan shows where each folder goes:\n{shown}"
    );
    assert_exit(
        &offload(job.path(), &root, &[&["copy"], &args[..]].concat(), &[]),
        0,
    );

    // Where Django's S3 storages (MinIO or tutor-contrib-s3 settings) read each file from.
    let expected = [
        ("openedx", "user_tasks/2024/05/course_export.tar.gz", "data/openedx-media/user_tasks/2024/05/course_export.tar.gz", "application/x-tar"),
        ("openedx", "openedx/media/video-transcripts/3f2a9c.sjson", "data/openedx-media/video-transcripts/3f2a9c.sjson", "application/octet-stream"),
        ("openedx", "openedx/media/video-images/intro.png", "data/openedx-media/video-images/intro.png", "image/png"),
        ("openedx", "openedx/media/profile-images/ab12_500.jpg", "data/openedx-media/profile-images/ab12_500.jpg", "image/jpeg"),
        ("openedxgrades", "openedx/media/grades/9c1e/Demo grade report.csv", "data/openedx-media/grades/9c1e/Demo grade report.csv", "text/csv"),
        ("openedxlearning", "component_versions/9/diagram.svg", "data/openedx-media-private/openedx-learning/component_versions/9/diagram.svg", "image/svg+xml"),
        ("openedxuploads", "submissions_attachments/7f3e/course-v1:edX+Demo+2024/block1", "data/lms/ora2/openedxuploads/submissions_attachments/7f3e/course-v1:edX+Demo+2024/block1/content", "application/pdf"),
    ];
    let mut per_bucket: BTreeMap<String, usize> = BTreeMap::new();
    for (name, key, file, ctype) in expected {
        let b = bucket(&format!("fs{name}"));
        *per_bucket.entry(b.clone()).or_default() += 1;
        let body = get(&tgt(), &b, key)
            .await
            .unwrap_or_else(|| panic!("{b}/{key} is on the target"));
        assert_eq!(body, std::fs::read(root.join(file)).unwrap(), "{key}");
        let h = tgt()
            .head_object()
            .bucket(&b)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(h.content_type(), Some(ctype), "{key}");
    }
    for (b, n) in &per_bucket {
        assert_eq!(contents(&tgt(), b).await.len(), *n, "nothing else in {b}");
    }
    let gz = tgt()
        .head_object()
        .bucket(bucket("fsopenedx"))
        .key("user_tasks/2024/05/course_export.tar.gz")
        .send()
        .await
        .unwrap();
    assert_eq!(
        gz.content_encoding(),
        Some("gzip"),
        "as Django's storage sets it"
    );
    assert!(
        tgt()
            .get_bucket_policy()
            .bucket(bucket("fsopenedx"))
            .send()
            .await
            .is_ok(),
        "the media bucket is publicly readable, as Tutor serves media"
    );
    assert_exit(&offload(job.path(), &root, &["verify"], &[]), 0);

    // A file changed on disk after the copy is named by verify.
    std::fs::write(
        root.join("data/openedx-media/grades/9c1e/Demo grade report.csv"),
        b"id,grade\n1,0.8\n",
    )
    .unwrap();
    let out = offload(job.path(), &root, &["verify"], &[]);
    assert_exit(&out, 1);
    assert!(
        text(&out).contains(&format!(
            "differs: {}/openedx/media/grades/9c1e/Demo grade report.csv",
            bucket("fsopenedxgrades")
        )),
        "{}",
        text(&out)
    );
    for n in names {
        drop_bucket(&tgt(), &bucket(&format!("fs{n}"))).await;
    }
}

#[tokio::test]
async fn delta_copies_only_what_changed_in_media_folders() {
    let job = tempfile::tempdir().unwrap();
    let root = media_root(job.path());
    let names = [
        "openedx",
        "openedxgrades",
        "openedxlearning",
        "openedxuploads",
    ];
    let target = |n: &str| bucket(&format!("fd{n}"));
    for n in names {
        drop_bucket(&tgt(), &target(n)).await;
    }
    let map: Vec<String> = names.iter().map(|n| format!("{n}={}", target(n))).collect();
    let (to, map) = (target_url(), map.join(","));
    let args = [
        "--to-s3",
        to.as_str(),
        "--bucket-map",
        map.as_str(),
        "--create-buckets",
        "--no-progress",
    ];
    assert_exit(
        &offload(job.path(), &root, &[&["copy"], &args[..]].concat(), &[]),
        0,
    );
    assert_exit(&offload(job.path(), &root, &["verify"], &[]), 0);

    // Files written after the copy: one changed (same size), one added, one deleted.
    let media = root.join("data/openedx-media");
    std::fs::write(
        media.join("grades/9c1e/Demo grade report.csv"),
        b"id,grade\n1,0.8\n",
    )
    .unwrap();
    std::fs::write(media.join("video-images/new.png"), noise(1_500, 8)).unwrap();
    std::fs::remove_file(media.join("profile-images/ab12_500.jpg")).unwrap();
    let out = offload(job.path(), &root, &["verify"], &[]);
    assert_exit(&out, 1);
    let report = text(&out);
    let (grades, openedx) = (target("openedxgrades"), target("openedx"));
    for named in [
        format!("differs: {grades}/openedx/media/grades/9c1e/Demo grade report.csv"),
        format!("missing on target: {openedx}/openedx/media/video-images/new.png"),
        format!("extra on target: {openedx}/openedx/media/profile-images/ab12_500.jpg"),
    ] {
        assert!(report.contains(&named), "{named}:\n{report}");
    }

    let out = offload(
        job.path(),
        &root,
        &[
            &["migrate", "--resume", "--delta", "--no-cutover", "-vv"],
            &args[..],
        ]
        .concat(),
        &[],
    );
    assert_exit(&out, 0);
    let report = text(&out);
    assert!(report.contains("Delta pass: 3 of"), "{report}");
    assert!(report.contains("Safe to switch"), "{report}");
    assert_eq!(
        written_keys(&out),
        [
            "openedx/media/grades/9c1e/Demo grade report.csv",
            "openedx/media/video-images/new.png"
        ],
        "only the changed and the new file were written:\n{report}"
    );
    assert_eq!(
        get(
            &tgt(),
            &grades,
            "openedx/media/grades/9c1e/Demo grade report.csv"
        )
        .await,
        Some(b"id,grade\n1,0.8\n".to_vec())
    );
    assert_eq!(
        get(&tgt(), &openedx, "openedx/media/video-images/new.png").await,
        Some(noise(1_500, 8))
    );
    assert_eq!(
        get(
            &tgt(),
            &openedx,
            "openedx/media/profile-images/ab12_500.jpg"
        )
        .await,
        None
    );
    assert_exit(&offload(job.path(), &root, &["verify"], &[]), 0);
    for n in names {
        drop_bucket(&tgt(), &target(n)).await;
    }
}

#[tokio::test]
async fn bad_files_fail_alone_and_the_job_says_incomplete() {
    let job = tempfile::tempdir().unwrap();
    let root = media_root(job.path());
    let media = root.join("data/openedx-media");
    // Unreadable: a link to nothing. Changing while read: a file that claims 4096 bytes and
    // yields a handful (what a file shrinking during the copy looks like).
    std::os::unix::fs::symlink(job.path().join("nowhere"), media.join("broken-link.pdf")).unwrap();
    std::os::unix::fs::symlink(
        "/sys/devices/system/cpu/online",
        media.join("shrinking.txt"),
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(media.join("shrinking.txt"))
            .unwrap()
            .len(),
        4096
    );
    let b = bucket("fsbad");
    drop_bucket(&tgt(), &b).await;
    let (to, map) = (
        target_url(),
        format!("openedx={b},openedxgrades={b}-g,openedxlearning={b}-l,openedxuploads={b}-u"),
    );
    let args = [
        "--to-s3",
        to.as_str(),
        "--bucket-map",
        map.as_str(),
        "--create-buckets",
        "--no-progress",
    ];
    let out = offload(job.path(), &root, &[&["copy"], &args[..]].concat(), &[]);
    assert_exit(&out, 2);
    let msg = text(&out);
    assert!(msg.contains("2 item(s) could not be copied"), "{msg}");
    let status = offload(job.path(), &root, &["status", "--json"], &[]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let unit = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"]["name"] == "openedx-media")
        .unwrap();
    assert_eq!(unit["state"], "failed", "{unit}");
    let err = unit["last_error"].as_str().unwrap();
    assert!(
        err.contains("broken-link.pdf") || err.contains("shrinking.txt"),
        "{err}"
    );
    // Each failure is recorded by name in the job's history (both of them).
    let catalog = rusqlite::Connection::open(job.path().join("catalog.sqlite")).unwrap();
    let events: Vec<String> = catalog
        .prepare("SELECT message FROM event WHERE level = 'error'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let all = events.join("\n");
    assert!(
        all.contains(&format!("{b}/broken-link.pdf: cannot read")),
        "{all}"
    );
    assert!(
        all.contains(&format!("{b}/shrinking.txt: the source ended after"))
            && all.contains("changed while being read"),
        "{all}"
    );
    // The rest went on; nothing that failed is on the target.
    let there = contents(&tgt(), &b).await;
    assert!(
        there.contains_key("user_tasks/2024/05/course_export.tar.gz"),
        "{there:?}"
    );
    assert!(
        !there.contains_key("broken-link.pdf") && !there.contains_key("shrinking.txt"),
        "{there:?}"
    );
    // Fixed, a resume finishes the job.
    std::fs::remove_file(media.join("broken-link.pdf")).unwrap();
    std::fs::remove_file(media.join("shrinking.txt")).unwrap();
    assert_exit(
        &offload(
            job.path(),
            &root,
            &["copy", "--resume", "--no-progress"],
            &[],
        ),
        0,
    );
    assert_exit(&offload(job.path(), &root, &["verify"], &[]), 0);
    for suffix in ["", "-g", "-l", "-u"] {
        drop_bucket(&tgt(), &format!("{b}{suffix}")).await;
    }
}

#[tokio::test]
async fn access_denied_on_one_object_fails_it_alone() {
    let b = bucket("denied");
    fresh_source_bucket(&b).await;
    drop_bucket(&tgt(), &b).await;
    for k in ["a.txt", "secret.pdf", "z.txt"] {
        put(&b, k, k.as_bytes().repeat(50)).await;
    }
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{b}/secret.pdf"}}]}}"#
    );
    src()
        .put_bucket_policy()
        .bucket(&b)
        .policy(policy)
        .send()
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let out = run(job.path(), "copy", &s3_flags(&[&b], &[]));
    assert_exit(&out, 2);
    let msg = text(&out);
    assert!(
        msg.contains(&format!("{b}/secret.pdf")) && msg.contains("access denied"),
        "{msg}"
    );
    let there = contents(&tgt(), &b).await;
    assert_eq!(
        there.keys().collect::<Vec<_>>(),
        ["a.txt", "z.txt"],
        "the rest was copied, the denied one not"
    );
    src()
        .delete_bucket_policy()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    assert_exit(
        &run(
            job.path(),
            "copy",
            &["--resume".into(), "--no-progress".into()],
        ),
        0,
    );
    assert_exit(&run(job.path(), "verify", &[]), 0);
    drop_bucket(&src(), &b).await;
    drop_bucket(&tgt(), &b).await;
}

#[tokio::test]
async fn wrong_credentials_and_missing_buckets_stop_before_writing() {
    let b = bucket("refuse");
    fresh_source_bucket(&b).await;
    drop_bucket(&tgt(), &b).await;
    put(&b, "x.txt", b"x".to_vec()).await;
    let job = tempfile::tempdir().unwrap();
    let wrong = target_url().replacen("://", "://offload-test-access:wrong-secret@", 1);
    let flags = |to: &str, create: bool| {
        let mut v = vec![
            "--from-s3".to_string(),
            source_url(),
            "--to-s3".into(),
            to.to_string(),
            "--buckets".into(),
            b.clone(),
            "--no-progress".into(),
        ];
        if create {
            v.push("--create-buckets".into());
        }
        v
    };
    let out = run(job.path(), "copy", &flags(&wrong, true));
    assert_exit(&out, 2);
    let msg = text(&out);
    assert!(
        msg.contains("credentials were refused") && msg.contains("OFFLOAD_TO_S3_SECRET_KEY"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-secret"),
        "the secret is never shown: {msg}"
    );

    let wrong_source = source_url().replacen("://", "://nobody:nothing@", 1);
    let mut f = flags(&target_url(), true);
    f[1] = wrong_source;
    let out = run(&job.path().join("j2"), "copy", &f);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the source") && text(&out).contains("credentials were refused"),
        "{}",
        text(&out)
    );

    let out = run(&job.path().join("j3"), "copy", &flags(&target_url(), false));
    assert_exit(&out, 2);
    let msg = text(&out);
    assert!(
        msg.contains(&format!("target bucket {b}")) && msg.contains("--create-buckets"),
        "{msg}"
    );
    assert!(
        tgt().head_bucket().bucket(&b).send().await.is_err(),
        "nothing was created on the target"
    );
    drop_bucket(&src(), &b).await;
}
