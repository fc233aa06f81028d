//! S3 credentials found the way the AWS ecosystem provides them, against the stack's two real
//! SeaweedFS servers: keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only, a profile per side
//! in temporary AWS config and credentials files (with its region), the old `--s3-profile` name,
//! the plan's "credentials:" lines, a resume asking the same way again, a missing profile, no
//! credentials at all, wrong keys, an instance metadata address that never answers (a loopback
//! stand-in) not holding the plan up, and a container credentials endpoint stand-in. No test reaches a real metadata service, STS or
//! SSO: those need AWS itself (see docs/objects.md).

use std::path::Path;
use std::process::{Command, Output};

use aws_sdk_s3::primitives::ByteStream;

use crate::common::{
    assert_exit, s3_client as client, s3_keys as keys, s3_source_url as source_url,
    s3_target_url as target_url, text,
};

/// A source bucket unique to this test, holding one object.
async fn source_bucket(tag: &str) -> String {
    let bucket = format!("it-cred-{tag}-{}", std::process::id());
    let src = client(&source_url());
    let _ = src.create_bucket().bucket(&bucket).send().await;
    src.put_object()
        .bucket(&bucket)
        .key("hello.txt")
        .body(ByteStream::from_static(b"hello from the source"))
        .send()
        .await
        .expect("put the source object");
    bucket
}

async fn target_has(bucket: &str, key: &str) -> bool {
    client(&target_url())
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

/// A folder with the AWS shared files offload is pointed at (empty unless written).
struct AwsFiles {
    dir: tempfile::TempDir,
}

impl AwsFiles {
    fn new(config: &str, credentials: &str) -> AwsFiles {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("credentials"), credentials).unwrap();
        AwsFiles { dir }
    }

    fn config(&self) -> String {
        self.dir.path().join("config").display().to_string()
    }

    fn credentials(&self) -> String {
        self.dir.path().join("credentials").display().to_string()
    }
}

/// The real binary with no AWS or offload S3 setting of this process leaking in: the AWS files
/// are `files`, instance metadata is off (no test may reach it), and `env` is added last.
fn offload(job: &Path, files: &AwsFiles, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_string();
        if name.starts_with("AWS_")
            || name.starts_with("OFFLOAD_FROM_S3")
            || name.starts_with("OFFLOAD_TO_S3")
        {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .arg("--job")
        .arg(job)
        .arg("--tutor-root")
        .arg(job.join("no-tutor-here"))
        .env_remove("OFFLOAD_FAILPOINT")
        .env("AWS_CONFIG_FILE", files.config())
        .env("AWS_SHARED_CREDENTIALS_FILE", files.credentials())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run offload")
}

fn s3_flags(bucket: &str) -> Vec<String> {
    vec![
        "--from-s3".into(),
        source_url(),
        "--to-s3".into(),
        target_url(),
        "--buckets".into(),
        bucket.into(),
        "--create-buckets".into(),
        "--no-progress".into(),
    ]
}

fn args<'a>(cmd: &'a str, flags: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend(flags.iter().map(String::as_str));
    v.extend_from_slice(extra);
    v
}

fn source_keys_in_offload_variables() -> Vec<(&'static str, String)> {
    let (a, s) = keys();
    vec![
        ("OFFLOAD_FROM_S3_ACCESS_KEY", a),
        ("OFFLOAD_FROM_S3_SECRET_KEY", s),
    ]
}

/// No file of the job folder holds the secret key.
fn assert_no_secret_in(job: &Path) {
    let secret = keys().1;
    for entry in std::fs::read_dir(job).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret key",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn keys_from_aws_access_key_id_alone_copy_and_a_resume_asks_the_chain_again() {
    let bucket = source_bucket("env").await;
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let files = AwsFiles::new("", "");
    let (a, s) = keys();
    let mut env = source_keys_in_offload_variables();
    env.push(("AWS_ACCESS_KEY_ID", a));
    env.push(("AWS_SECRET_ACCESS_KEY", s));
    let flags = s3_flags(&bucket);

    let plan = offload(&job, &files, &args("plan", &flags, &[]), &env);
    assert_exit(&plan, 0);
    let said = text(&plan);
    assert!(
        said.contains("target credentials: environment (AWS_ACCESS_KEY_ID)"),
        "{said}"
    );
    assert!(
        said.contains(
            "source credentials: environment (OFFLOAD_FROM_S3_ACCESS_KEY, OFFLOAD_FROM_S3_SECRET_KEY)"
        ),
        "{said}"
    );
    assert!(!said.contains(&keys().1), "{said}");

    let copy = offload(&job, &files, &args("copy", &flags, &[]), &env);
    assert_exit(&copy, 0);
    assert!(target_has(&bucket, "hello.txt").await);
    assert_no_secret_in(&job);

    // The job only knows "the AWS credential chain": a resume without the flags asks it again
    // and finds the keys in the environment once more; without them it says what to do.
    let resume = offload(&job, &files, &["copy", "--resume", "--no-progress"], &env);
    assert_exit(&resume, 0);
    let without: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_"))
        .cloned()
        .collect();
    let refused = offload(
        &job,
        &files,
        &["copy", "--resume", "--no-progress"],
        &without,
    );
    assert_exit(&refused, 2);
    let said = text(&refused);
    assert!(
        said.contains("target S3 credentials") && said.contains("AWS credential chain"),
        "{said}"
    );
}

#[tokio::test]
async fn a_profile_per_side_from_the_aws_files_with_its_region() {
    let bucket = source_bucket("profiles").await;
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let (a, s) = keys();
    // The source's keys in the config file, the target's in the credentials file (region in
    // the config file), and a default profile with wrong keys that must not be used.
    let files = AwsFiles::new(
        &format!(
            "[profile source-side]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n\n\
             [profile target-side]\nregion = eu-central-1\n"
        ),
        &format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [target-side]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n"
        ),
    );
    let flags = s3_flags(&bucket);
    let extra = [
        "--from-s3-profile",
        "source-side",
        "--to-s3-profile",
        "target-side",
    ];
    let plan = offload(&job, &files, &args("plan", &flags, &extra), &[]);
    assert_exit(&plan, 0);
    let said = text(&plan);
    assert!(
        said.contains(&format!(
            "source credentials: AWS profile `source-side` ({}, {})",
            files.config(),
            files.credentials()
        )),
        "{said}"
    );
    assert!(
        said.contains("target credentials: AWS profile `target-side`"),
        "{said}"
    );
    assert!(said.contains("region eu-central-1"), "{said}");

    let copy = offload(&job, &files, &args("copy", &flags, &extra), &[]);
    assert_exit(&copy, 0);
    assert!(target_has(&bucket, "hello.txt").await);
    assert_no_secret_in(&job);
    let record = std::fs::read_dir(&job)
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
        .any(|b| String::from_utf8_lossy(&b).contains("target-side"));
    assert!(record, "the job records the profile's name");

    // The old flag name still picks the target's profile.
    let old = offload(
        &dir.path().join("job-old-flag"),
        &files,
        &args(
            "plan",
            &flags,
            &[
                "--from-s3-profile",
                "source-side",
                "--s3-profile",
                "target-side",
            ],
        ),
        &[],
    );
    assert_exit(&old, 0);
    assert!(
        text(&old).contains("target credentials: AWS profile `target-side`"),
        "{}",
        text(&old)
    );
}

#[test]
fn a_missing_profile_is_an_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let files = AwsFiles::new("[profile there]\nregion = us-east-1\n", "");
    for (flag, side_flag) in [
        ("--to-s3-profile", "--to-s3-profile"),
        ("--from-s3-profile", "--from-s3-profile"),
        ("--s3-profile", "--to-s3-profile"),
    ] {
        let out = offload(
            &dir.path().join(flag.trim_start_matches('-')),
            &files,
            &args("plan", &s3_flags("it-cred-missing"), &[flag, "not-there"]),
            &source_keys_in_offload_variables()
                .into_iter()
                .filter(|_| flag != "--from-s3-profile")
                .collect::<Vec<_>>(),
        );
        assert_exit(&out, 2);
        let said = text(&out);
        assert!(
            said.contains(side_flag) && said.contains("`not-there`"),
            "{flag}: {said}"
        );
        assert!(said.contains(&files.config()), "{flag}: {said}");
    }
}

#[test]
fn no_credentials_anywhere_names_the_side_and_every_way_to_give_them() {
    let dir = tempfile::tempdir().unwrap();
    let files = AwsFiles::new("", "");
    for (side, env) in [
        ("target", source_keys_in_offload_variables()),
        ("source", Vec::new()),
    ] {
        let out = offload(
            &dir.path().join(side),
            &files,
            &args("plan", &s3_flags("it-cred-none"), &[]),
            &env,
        );
        assert_exit(&out, 2);
        let said = text(&out);
        let flag = if side == "target" { "--to" } else { "--from" };
        for needed in [
            format!("the {side} S3 credentials"),
            format!("{flag}-s3-profile"),
            "AWS_ACCESS_KEY_ID".to_string(),
            "SSO".to_string(),
            "IRSA".to_string(),
            "EC2 instance role".to_string(),
        ] {
            assert!(said.contains(&needed), "{side}: no `{needed}` in {said}");
        }
    }
}

#[tokio::test]
async fn wrong_keys_are_refused_with_what_to_check() {
    let bucket = source_bucket("wrong").await;
    let dir = tempfile::tempdir().unwrap();
    let files = AwsFiles::new("", "");
    let mut env = source_keys_in_offload_variables();
    env.push(("AWS_ACCESS_KEY_ID", "not-a-key".into()));
    env.push(("AWS_SECRET_ACCESS_KEY", "not-a-secret".into()));
    let out = offload(
        &dir.path().join("job"),
        &files,
        &args("plan", &s3_flags(&bucket), &[]),
        &env,
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("the target credentials came from environment (AWS_ACCESS_KEY_ID)"),
        "{said}"
    );
    assert!(
        said.contains("the credentials were refused") || said.contains("access denied"),
        "{said}"
    );
    assert!(said.contains("--to-s3-profile"), "{said}");
    assert!(!said.contains("not-a-secret"), "{said}");
}

/// An instance metadata address that takes connections and never answers (a stand-in on
/// loopback, standing for a network where the metadata address leads nowhere): the chain gives
/// up on its own and the plan says what to do, instead of hanging.
#[test]
fn instance_metadata_that_never_answers_does_not_hold_the_plan() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let files = AwsFiles::new("", "");
    let mut env = source_keys_in_offload_variables();
    env.push(("AWS_EC2_METADATA_DISABLED", "false".into()));
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint));
    let out = offload(
        &dir.path().join("job"),
        &files,
        &args("plan", &s3_flags("it-cred-imds"), &[]),
        &env,
    );
    assert_exit(&out, 2);
    let said = text(&out);
    assert!(
        said.contains("the target S3 credentials") && said.contains("Ec2InstanceMetadata"),
        "{said}"
    );
    drop(silent);
}

/// A container credentials endpoint (what ECS and EKS Pod Identity give a pod), as a stand-in on
/// loopback that answers every request with the stack's keys and a session token, the way the
/// real one does: the chain finds it through `AWS_CONTAINER_CREDENTIALS_FULL_URI` and signs with
/// what it gave. SeaweedFS, started with static keys only, knows no session token and refuses
/// them: the refusal names the container endpoint as where the credentials came from.
#[tokio::test]
async fn a_container_credentials_endpoint_stand_in_is_found_by_the_chain() {
    use std::io::{BufRead, BufReader, Write};
    let bucket = source_bucket("container").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/credentials", listener.local_addr().unwrap());
    let (a, s) = keys();
    let body = format!(
        r#"{{"AccessKeyId":"{a}","SecretAccessKey":"{s}","Token":"stand-in-session-token","Expiration":"2099-01-01T00:00:00Z"}}"#
    );
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    // Serves until the test process ends; each request is read to its blank line.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let files = AwsFiles::new("", "");
    let mut env = source_keys_in_offload_variables();
    env.push(("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri));
    let plan = offload(
        &dir.path().join("job"),
        &files,
        &args("plan", &s3_flags(&bucket), &[]),
        &env,
    );
    assert_exit(&plan, 2);
    let said = text(&plan);
    assert!(
        said.contains("the credentials were refused")
            && said.contains(
                "the target credentials came from container credentials endpoint (ECS task role or EKS Pod Identity)"
            ),
        "{said}"
    );
    assert!(!said.contains("stand-in-session-token"), "{said}");
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}
