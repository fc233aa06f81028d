//! The properties offload's parsers of hostile input must keep, one function per fuzz target,
//! each taking raw bytes and panicking when a property breaks. The same file drives both engines:
//! cargo-fuzz (libFuzzer, `fuzz/fuzz_targets/`) and the proptest run in the normal test suite
//! (`tests/it/fuzz.rs` includes it by path), so a crash found by one is checked by the other.

use std::io::{self, Read};
use std::path::PathBuf;

use offload::search::client::MeilisearchClient;
use offload::stores::mongodb::MongoEndpoint;
use offload::stores::mysql::MysqlEndpoint;
use offload::stores::objects::S3Endpoint;
use offload::stores::redis::rdb::{crc64, RdbError, RdbReader, SnapshotKey, MAX_KEY_BYTES};
use offload::stores::redis::RedisEndpoint;
use offload::tutor::{
    apply_edits, plan_cutover, ConfigEdits, CutoverTarget, MeilisearchTarget, MongodbTarget,
    MysqlTarget, RedisTarget, S3Target, TutorConfig,
};
use serde_yaml::Value;

/// The fuzz targets, by name (what `scripts/fuzz` lists).
pub const TARGETS: &[&str] = &["tutor_config", "tutor_rewrite", "urls", "rdb"];

/// Runs the target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "tutor_config" => tutor_config(data),
        "tutor_rewrite" => tutor_rewrite(data),
        "urls" => urls(data),
        "rdb" => rdb(data),
        other => panic!("no fuzz target {other}; the targets are {TARGETS:?}"),
    }
}

/// A value no input text holds by chance, to check secrets never reach what is shown.
const SECRET: &str = "s3cr3t-Zq9!xW";

// ---------------------------------------------------------------------------------------------
// Tutor's config.yml: the reader, the values Tutor would use, and the cutover plan.

/// A per-thread scratch Tutor root, so `TutorConfig::load` reads a real file.
fn scratch_root() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "offload-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// `config.yml` bytes: reading never panics; a file that reads is left byte-identical by an empty
/// edit; every value Tutor would use can be asked for; a cutover plan for every store either is
/// refused or gives a text that reads back, and its diff and runbook never show a secret.
pub fn tutor_config(data: &[u8]) {
    let root = scratch_root();
    std::fs::write(root.join("config.yml"), data).expect("write config.yml");
    let loaded = TutorConfig::load_with_env(&root, Vec::new());
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(_) => {
            assert!(
                loaded.is_err(),
                "bytes that are not UTF-8 were read as config.yml"
            );
            return;
        }
    };
    let same = apply_edits(text, &ConfigEdits::new());
    let Ok(cfg) = loaded else {
        assert!(
            same.is_err(),
            "the reader refused what the rewriter accepted"
        );
        return;
    };
    assert_eq!(
        same.expect("an empty edit of a file that reads").as_str(),
        text,
        "an empty edit changed the file"
    );
    let keys: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_owned()))
        .chain(
            [
                "MYSQL_HOST",
                "MYSQL_PORT",
                "MONGODB_HOST",
                "REDIS_HOST",
                "REDIS_PORT",
                "MEILISEARCH_URL",
                "PLUGINS",
                "RUN_MYSQL",
            ]
            .map(str::to_owned),
        )
        .collect();
    for key in &keys {
        let _ = cfg.get(key);
        let _ = cfg.get_str(key);
        let _ = cfg.get_u16(key);
        let _ = cfg.get_bool(key);
    }
    let _ = cfg.plugins();
    let targets = all_targets("db.example.org", SECRET);
    if let Ok(plan) = plan_cutover(&cfg, &targets) {
        let updated = plan.updated_text();
        let again = apply_edits(updated, &plan.edits).expect("the planned text reads back");
        assert_eq!(
            again, updated,
            "applying the same edits twice changed the file"
        );
        if !text.contains(SECRET) {
            assert!(
                !plan.masked_diff().contains(SECRET),
                "the diff shows a secret"
            );
            assert!(
                !plan.runbook().contains(SECRET),
                "the runbook shows a secret"
            );
            assert!(
                !format!("{plan:?}").contains(SECRET),
                "Debug shows a secret"
            );
        }
    }
}

fn all_targets(host: &str, secret: &str) -> Vec<CutoverTarget> {
    vec![
        CutoverTarget::Mysql(MysqlTarget {
            host: host.into(),
            port: 3306,
            root_username: "admin".into(),
            root_password: Some(secret.into()),
            app: Some(("openedx".into(), secret.into())),
            plugin_users: Vec::new(),
        }),
        CutoverTarget::Mongodb(MongodbTarget {
            host: host.into(),
            port: 27017,
            username: "openedx".into(),
            password: secret.into(),
            use_ssl: true,
            auth_source: "admin".into(),
            auth_mechanism: String::new(),
            replica_set: String::new(),
        }),
        CutoverTarget::Redis(RedisTarget {
            host: host.into(),
            port: 6379,
            username: String::new(),
            password: secret.into(),
            databases: vec![(0, 2), (1, 3)],
        }),
        CutoverTarget::Meilisearch(MeilisearchTarget {
            url: format!("https://{host}:7700"),
            public_url: format!("https://{host}"),
            master_key: secret.into(),
            api_key: secret.into(),
        }),
        CutoverTarget::S3(S3Target {
            host: host.into(),
            port: Some(443),
            use_ssl: true,
            region: "us-east-1".into(),
            storage_bucket: "storage".into(),
            file_upload_bucket: "uploads".into(),
            grade_bucket: "grades".into(),
            profile_image_bucket: String::new(),
            addressing_style: "path".into(),
            access_key: "access".into(),
            secret_key: secret.into(),
            signature_version: Some("s3v4".into()),
            custom_domain: Some(String::new()),
            querystring_auth: Some(true),
            video_upload_bucket: String::new(),
            openedx_learning_bucket: String::new(),
            discovery_bucket: String::new(),
            not_copied: Vec::new(),
        }),
    ]
}

/// The edits a fuzz input asks for, one `KEY=VALUE` line each after the config text: `KEY=!`
/// unsets, `[a,b]` is a list, `true`/`false` a boolean, a whole number an integer, anything else
/// a string (`\n` written as `\\n`).
pub fn decode_edits(spec: &str) -> ConfigEdits {
    let mut edits = ConfigEdits::new();
    for line in spec.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let unescape = |s: &str| s.replace("\\n", "\n");
        if value == "!" {
            edits.unset(key);
        } else if let Some(items) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            let list = items
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(unescape(s)))
                .collect();
            edits.set(key, Value::Sequence(list));
        } else if let Ok(b) = value.parse::<bool>() {
            edits.set(key, b);
        } else if let Ok(n) = value.parse::<i64>() {
            edits.set(key, n);
        } else {
            edits.set(key, unescape(value));
        }
    }
    edits
}

/// `config.yml` text, a NUL, then edits ([`decode_edits`]): the rewrite never panics; when it
/// succeeds the result reads back as the original with the edits (the rewriter checks that
/// itself), applying the edits again changes nothing, and an empty edit of it is the identity.
pub fn tutor_rewrite(data: &[u8]) {
    let Ok(all) = std::str::from_utf8(data) else {
        return;
    };
    let (text, spec) = all.split_once('\0').unwrap_or((all, ""));
    let edits = decode_edits(spec);
    let Ok(out) = apply_edits(text, &edits) else {
        return;
    };
    let again = apply_edits(&out, &edits).expect("an edited file reads back");
    assert_eq!(again, out, "applying the same edits twice changed the file");
    assert_eq!(
        apply_edits(&out, &ConfigEdits::new()).expect("an edited file reads back"),
        out
    );
}

// ---------------------------------------------------------------------------------------------
// Connection URLs.

/// Schemes put before the input (chosen by its first byte), so the fuzzer reaches past them.
const SCHEMES: &[&str] = &[
    "",
    "mysql://",
    "mongodb://",
    "mongodb+srv://",
    "redis://",
    "rediss://",
    "http://",
    "https://",
];

/// The identity of an endpoint: what must survive `parse(public_url())`.
fn same_after_public_url<E: std::fmt::Debug>(
    what: &str,
    url: &str,
    parsed: &E,
    public: String,
    reparse: impl Fn(&str) -> Result<E, String>,
    identity: impl Fn(&E) -> String,
) {
    match reparse(&public) {
        Ok(again) => assert_eq!(
            identity(parsed),
            identity(&again),
            "{what}: {url:?} and its public URL {public:?} name different endpoints"
        ),
        Err(e) => panic!("{what}: the public URL {public:?} of {url:?} does not parse: {e}"),
    }
}

/// A URL given to every endpoint parser: none panics; what parses gives a public URL that parses
/// to the same endpoint and holds no password, and a `Debug` that holds no password.
pub fn urls(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let url = format!(
        "{}{}",
        SCHEMES[usize::from(first) % SCHEMES.len()],
        String::from_utf8_lossy(rest)
    );
    // A password is checked for only when it is long enough not to appear elsewhere by chance.
    let hidden = |password: Option<&str>, shown: &[String]| {
        if let Some(p) = password.filter(|p| p.len() >= 6) {
            let without = url.replacen(p, "", 1);
            if !without.contains(p) {
                for s in shown {
                    assert!(!s.contains(p), "a password shows in {s:?} (from {url:?})");
                }
            }
        }
    };

    // What a refusal says must not hold the password either: the written password is swapped
    // for a marker no message holds by chance, and no parser's refusal may show the marker.
    let written_password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(info, _)| info.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    if let Some(p) = written_password {
        const MARKER: &str = "Pw0rdQz7";
        let probe = url.replacen(&format!(":{p}@"), &format!(":{MARKER}@"), 1);
        let refusals = [
            MysqlEndpoint::parse(&probe).err(),
            MongoEndpoint::parse(&probe).err(),
            RedisEndpoint::parse(&probe).err(),
            S3Endpoint::parse(&probe).err(),
            MeilisearchClient::new(&probe, None, "target")
                .err()
                .map(|e| e.to_string()),
        ];
        for message in refusals.into_iter().flatten() {
            assert!(
                !message.contains(MARKER),
                "a refusal shows the password: {message:?}"
            );
        }
    }

    if let Ok(e) = MysqlEndpoint::parse(&url) {
        let _ = e.address();
        let public = e.public_url();
        hidden(
            e.password.as_ref().map(|p| p.expose()),
            &[public.clone(), format!("{e:?}")],
        );
        same_after_public_url("MySQL", &url, &e, public, MysqlEndpoint::parse, |e| {
            format!("{} {} {} {:?}", e.host, e.port, e.user, e.tls)
        });
    }
    if let Ok(e) = MongoEndpoint::parse(&url) {
        let _ = (e.address(), e.tls(), e.auth_source());
        let public = e.public_url();
        hidden(
            e.password.as_ref().map(|p| p.expose()),
            &[public.clone(), format!("{e:?}")],
        );
        same_after_public_url("MongoDB", &url, &e, public, MongoEndpoint::parse, |e| {
            format!(
                "{} {} {:?} {:?}",
                e.srv,
                e.address(),
                e.user,
                e.auth_source()
            )
        });
    }
    if let Ok(e) = RedisEndpoint::parse(&url) {
        let _ = (e.address(), e.user());
        let public = e.public_url();
        hidden(
            e.password.as_ref().map(|p| p.expose()),
            &[public.clone(), format!("{e:?}")],
        );
        same_after_public_url("Redis", &url, &e, public, RedisEndpoint::parse, |e| {
            format!(
                "{} {} {:?} {:?} {:?}",
                e.host, e.port, e.username, e.tls, e.db
            )
        });
    }
    if let Ok(e) = S3Endpoint::parse(&url) {
        let _ = e.address();
        let public = e.public_url();
        hidden(
            e.secret_key.as_ref().map(|p| p.expose()),
            &[public.clone(), format!("{e:?}")],
        );
        same_after_public_url("S3", &url, &e, public, S3Endpoint::parse, |e| {
            format!("{:?} {}", e.url, e.path_style)
        });
    }
    if let Ok(client) = MeilisearchClient::new(&url, None, "target") {
        let _ = client.address();
        let shown = client.url();
        let again = MeilisearchClient::new(&shown, None, "target").unwrap_or_else(|e| {
            panic!("Meilisearch: {shown:?} (from {url:?}) does not parse: {e}")
        });
        assert_eq!(client.address(), again.address(), "Meilisearch: {url:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The Redis snapshot (RDB) reader.

/// Payloads bigger than this are not kept (the reader's `limit`).
const PAYLOAD_LIMIT: usize = 4096;

/// Hands out the bytes one at a time, so every value crosses the reader's buffer refills.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// Every key a reader gives, then how it ended (`Ok` at the end of the snapshot).
fn read_all<R: Read>(reader: R, only: Option<i64>) -> (Vec<SnapshotKey>, Result<(), String>) {
    let mut keys = Vec::new();
    let mut rdb = match RdbReader::new(reader, PAYLOAD_LIMIT) {
        Ok(r) => r,
        Err(e) => return (keys, Err(kind(&e))),
    };
    if let Some(db) = only {
        rdb = rdb.only_db(db);
    }
    loop {
        match rdb.next_key() {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => return (keys, Ok(())),
            Err(e) => return (keys, Err(kind(&e))),
        }
    }
}

/// An error as compared between two reads: its kind and message (an I/O error's text differs
/// by reader, so only its kind).
fn kind(e: &RdbError) -> String {
    let text = e.to_string();
    assert!(
        !text.is_empty() && text.len() < 512,
        "an unhelpful error message: {text:?}"
    );
    match e {
        RdbError::Io(io) => format!("io {:?}", io.kind()),
        other => other.to_string(),
    }
}

/// RDB bytes: reading never panics and never holds more than the caps; each payload is what
/// DUMP would give (its CRC-64 checks out); reading through a one-byte-at-a-time reader gives
/// the same keys and the same end as reading from a slice; reading one database gives a subset.
pub fn rdb(data: &[u8]) {
    let (keys, end) = read_all(data, None);
    for k in &keys {
        assert!(
            k.key.len() as u64 <= MAX_KEY_BYTES,
            "a key name over the cap"
        );
        if let Some(p) = &k.payload {
            assert!(p.len() <= PAYLOAD_LIMIT + 10, "a payload over the limit");
            let (body, crc) = p.split_at(p.len() - 8);
            let stated = u64::from_le_bytes(crc.try_into().expect("8 bytes"));
            assert_eq!(
                stated,
                crc64(0, body),
                "a payload whose CRC-64 does not check"
            );
        }
    }
    let (slow, slow_end) = read_all(Trickle(data), None);
    assert_eq!(end, slow_end, "the end differs when read byte by byte");
    assert_eq!(
        keys.len(),
        slow.len(),
        "the keys differ when read byte by byte"
    );
    for (a, b) in keys.iter().zip(&slow) {
        assert_eq!(
            (&a.key, a.expire_at_ms, &a.payload),
            (&b.key, b.expire_at_ms, &b.payload),
            "a key differs when read byte by byte"
        );
    }
    // Keys of other databases are read past, not decoded, so only a whole read bounds this.
    if end.is_ok() {
        let (db0, db0_end) = read_all(data, Some(0));
        assert!(db0_end.is_ok(), "one database fails where all read");
        assert!(
            db0.len() <= keys.len(),
            "one database holds more keys than all"
        );
    }
}
