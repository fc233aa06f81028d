//! Property tests over the parsers of hostile input (proptest), a bounded number of cases each
//! so they run in the normal suite in seconds: the same properties the cargo-fuzz targets check
//! (`fuzz/src/lib.rs`, included here), fed with generated structured inputs and mutated seeds,
//! plus what only a test with real PyYAML can say: that the config.yml rewriter writes what
//! Tutor's writer writes. `scripts/fuzz TARGET SECONDS` runs the same generators for a given
//! time through the ignored `fuzz::long_run` test when cargo-fuzz cannot run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use offload::stores::redis::rdb::{crc64, RdbReader};
use offload::tutor::{apply_edits, ConfigEdits, TutorError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_yaml::Value;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A few hundred cases at most per property; no failure files written beside the tests.
fn bounded(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a seed").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("read a seed"))
        .collect()
}

/// A seed changed in a few places: bytes flipped, set, inserted or removed, or the tail cut.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let all = seeds(target);
    let edits = prop::collection::vec(
        (any::<u8>(), any::<prop::sample::Index>(), any::<u8>()),
        1..8,
    );
    (prop::sample::select(all), edits).prop_map(|(mut data, edits)| {
        for (op, at, byte) in edits {
            if data.is_empty() {
                data.push(byte);
                continue;
            }
            let i = at.index(data.len());
            match op % 5 {
                0 => data[i] ^= 1 << (byte % 8),
                1 => data[i] = byte,
                2 => data.insert(i, byte),
                3 => {
                    data.remove(i);
                }
                _ => data.truncate(i),
            }
        }
        data
    })
}

// ---------------------------------------------------------------------------------------------
// The RDB reader: snapshots written from a model must read back as the model.

#[derive(Debug, Clone)]
enum KeyForm {
    Plain(Vec<u8>),
    /// Written as an RDB integer; reads back as its decimal text.
    Int(i32),
    /// Written LZF-compressed (literal runs only, which any LZF reader must take).
    Lzf(Vec<u8>),
}

#[derive(Debug, Clone)]
enum ValueForm {
    Str(Vec<u8>),
    Set(Vec<Vec<u8>>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    Zset(Vec<(Vec<u8>, f64)>),
}

#[derive(Debug, Clone)]
struct ModelKey {
    db: u8,
    key: KeyForm,
    value: ValueForm,
    /// `(true, ms)` written as milliseconds, `(false, s)` as seconds.
    expiry: Option<(bool, i64)>,
}

fn len(out: &mut Vec<u8>, n: usize) {
    if n < 64 {
        out.push(n as u8);
    } else if n < 16384 {
        out.extend([0x40 | (n >> 8) as u8, n as u8]);
    } else {
        out.push(0x80);
        out.extend((n as u32).to_be_bytes());
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    len(out, s.len());
    out.extend_from_slice(s);
}

fn key_bytes(k: &KeyForm) -> Vec<u8> {
    match k {
        KeyForm::Plain(b) | KeyForm::Lzf(b) => b.clone(),
        KeyForm::Int(n) => n.to_string().into_bytes(),
    }
}

fn encode_key(out: &mut Vec<u8>, k: &KeyForm) {
    match k {
        KeyForm::Plain(b) => string(out, b),
        KeyForm::Int(n) => {
            if let Ok(v) = i8::try_from(*n) {
                out.extend([0xc0, v as u8]);
            } else if let Ok(v) = i16::try_from(*n) {
                out.push(0xc1);
                out.extend(v.to_le_bytes());
            } else {
                out.push(0xc2);
                out.extend(n.to_le_bytes());
            }
        }
        KeyForm::Lzf(b) => {
            let mut packed = Vec::new();
            for run in b.chunks(32) {
                packed.push((run.len() - 1) as u8);
                packed.extend_from_slice(run);
            }
            out.push(0xc3);
            len(out, packed.len());
            len(out, b.len());
            out.extend(packed);
        }
    }
}

/// The type byte and serialized value, as the snapshot holds them (and DUMP's payload starts).
fn encode_value(v: &ValueForm) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        ValueForm::Str(s) => {
            out.push(0);
            string(&mut out, s);
        }
        ValueForm::Set(items) => {
            out.push(2);
            len(&mut out, items.len());
            items.iter().for_each(|i| string(&mut out, i));
        }
        ValueForm::Hash(pairs) => {
            out.push(4);
            len(&mut out, pairs.len());
            for (f, v) in pairs {
                string(&mut out, f);
                string(&mut out, v);
            }
        }
        ValueForm::Zset(items) => {
            out.push(5);
            len(&mut out, items.len());
            for (m, score) in items {
                string(&mut out, m);
                out.extend(score.to_le_bytes());
            }
        }
    }
    out
}

/// A version-10 snapshot of `keys`, grouped by database in the order given.
fn encode_snapshot(keys: &[ModelKey]) -> Vec<u8> {
    let mut s = b"REDIS0010".to_vec();
    s.push(0xfa);
    string(&mut s, b"redis-ver");
    string(&mut s, b"7.0.15");
    let mut current = None;
    for k in keys {
        if current != Some(k.db) {
            s.push(0xfe);
            len(&mut s, usize::from(k.db));
            s.extend([0xfb, 0x01, 0x00]);
            current = Some(k.db);
        }
        match k.expiry {
            Some((true, ms)) => {
                s.push(0xfc);
                s.extend(ms.to_le_bytes());
            }
            Some((false, secs)) => {
                s.push(0xfd);
                s.extend((secs as u32).to_le_bytes());
            }
            None => {}
        }
        let value = encode_value(&k.value);
        s.push(value[0]);
        encode_key(&mut s, &k.key);
        s.extend_from_slice(&value[1..]);
    }
    s.push(0xff);
    let crc = crc64(0, &s);
    s.extend(crc.to_le_bytes());
    s
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn model_key() -> impl Strategy<Value = ModelKey> {
    let key = prop_oneof![
        bytes(80).prop_map(KeyForm::Plain),
        any::<i32>().prop_map(KeyForm::Int),
        prop::collection::vec(any::<u8>(), 1..120).prop_map(KeyForm::Lzf),
    ];
    let value = prop_oneof![
        bytes(300).prop_map(ValueForm::Str),
        prop::collection::vec(bytes(20), 0..6).prop_map(ValueForm::Set),
        prop::collection::vec((bytes(10), bytes(30)), 0..6).prop_map(ValueForm::Hash),
        prop::collection::vec((bytes(10), any::<f64>()), 0..6).prop_map(ValueForm::Zset),
    ];
    let expiry = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|ms| Some((true, ms))),
        any::<u32>().prop_map(|s| Some((false, i64::from(s)))),
    ];
    (0u8..4, key, value, expiry).prop_map(|(db, key, value, expiry)| ModelKey {
        db,
        key,
        value,
        expiry,
    })
}

/// The DUMP payload of a value: its bytes, version 10, the CRC-64 of both.
fn dumped(value: &[u8]) -> Vec<u8> {
    let mut p = value.to_vec();
    p.extend(10u16.to_le_bytes());
    let crc = crc64(0, &p);
    p.extend(crc.to_le_bytes());
    p
}

fn rdb_model_reads_back(mut keys: Vec<ModelKey>, only: Option<u8>) -> Result<(), TestCaseError> {
    keys.sort_by_key(|k| k.db);
    let data = encode_snapshot(&keys);
    checks::rdb(&data);
    let limit = 200;
    let mut reader = RdbReader::new(&data[..], limit).expect("header");
    if let Some(db) = only {
        reader = reader.only_db(i64::from(db));
    }
    let mut got = Vec::new();
    while let Some(k) = reader
        .next_key()
        .expect("a snapshot written from a model reads")
    {
        got.push(k);
    }
    let want: Vec<&ModelKey> = keys
        .iter()
        .filter(|k| only.is_none_or(|db| k.db == db))
        .collect();
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert_eq!(&g.key, &key_bytes(&w.key));
        let expire = w.expiry.map(|(ms, v)| if ms { v } else { v * 1000 });
        prop_assert_eq!(g.expire_at_ms, expire);
        // The type byte and serialized value are kept while they fit in the limit.
        let value = encode_value(&w.value);
        let want_payload = (value.len() <= limit).then(|| dumped(&value));
        prop_assert_eq!(&g.payload, &want_payload);
    }
    Ok(())
}

proptest! {
    #![proptest_config(bounded(128))]

    #[test]
    fn rdb_snapshots_written_from_a_model_read_back_as_the_model(
        keys in prop::collection::vec(model_key(), 0..12),
        only in prop::option::of(0u8..4),
    ) {
        rdb_model_reads_back(keys, only)?;
    }

    #[test]
    fn rdb_damaged_snapshots_never_panic(data in mutated("rdb")) {
        checks::rdb(&data);
    }

    #[test]
    fn rdb_damaged_model_snapshots_never_panic(
        keys in prop::collection::vec(model_key(), 1..6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut data = encode_snapshot(&keys);
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        checks::rdb(&data);
    }

    #[test]
    fn rdb_arbitrary_bytes_after_a_header_never_panic(tail in bytes(200), version in 0u8..13) {
        let mut data = format!("REDIS{version:04}").into_bytes();
        data.extend(tail);
        checks::rdb(&data);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection URLs.

fn url_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(mysql|mariadb|mongodb|mongodb\\+srv|redis|rediss|http|https|s3|ftp)://[a-zA-Z0-9:@%/?&=.,_~+#\\[\\] -]{0,40}",
        "(mysql|mongodb|redis|https)://[a-z]{1,6}(:[a-zA-Z0-9%@:/]{0,12})?@[a-z0-9.:\\[\\]]{1,20}(/[a-z0-9]{0,4})?(\\?[a-z_-]{1,12}=[a-z_/]{0,16})?",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(bounded(256))]

    #[test]
    fn urls_generated_never_panic_and_round_trip(url in url_text()) {
        let mut data = vec![0u8];
        data.extend(url.as_bytes());
        checks::urls(&data);
    }

    #[test]
    fn urls_mutated_seeds_never_panic_and_round_trip(data in mutated("urls")) {
        checks::urls(&data);
    }

    #[test]
    fn url_users_and_passwords_with_any_characters_come_back_as_written(
        user in "[ -~é✓]{1,12}",
        password in "[ -~é✓]{1,12}",
    ) {
        use offload::resolve::encode_userinfo;
        let (u, p) = (encode_userinfo(&user), encode_userinfo(&password));
        let mysql = offload::stores::mysql::MysqlEndpoint::parse(&format!("mysql://{u}:{p}@db:3306"))
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(&mysql.user, &user);
        prop_assert_eq!(mysql.password.as_ref().map(|p| p.expose()), Some(password.as_str()));
        let redis = offload::stores::redis::RedisEndpoint::parse(&format!("redis://{u}:{p}@db:6379"))
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(redis.username.as_deref(), Some(user.as_str()));
        let mongo = offload::stores::mongodb::MongoEndpoint::parse(&format!("mongodb://{u}:{p}@db"))
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(mongo.user.as_deref(), Some(user.as_str()));
        prop_assert_eq!(mongo.password.as_ref().map(|p| p.expose()), Some(password.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// config.yml: reading never panics, and the rewriter writes what PyYAML (Tutor's writer) writes.

fn yaml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[A-Z_]{1,8}", "[ -~é✓]{0,20}").prop_map(|(k, v)| format!("{k}: {v}")),
        ("[A-Z_]{1,8}", "[a-z0-9 '\"#:{}\\[\\]-]{0,20}").prop_map(|(k, v)| format!("{k}: '{v}'")),
        "[A-Z_]{1,8}:".prop_map(String::from),
        "- [a-z0-9'\"{}:-]{0,10}".prop_map(String::from),
        "  [ -~]{0,20}".prop_map(String::from),
        "# [ -~]{0,10}".prop_map(String::from),
        Just(String::new()),
        Just("---".to_owned()),
        Just("PLUGINS:\n- minio\n- mfe".to_owned()),
        Just("MYSQL_HOST: '{{ OTHER }}'\nOTHER: '{{ MYSQL_HOST }}'".to_owned()),
        Just("X: '{% if RUN_MYSQL %}a{% else %}b{% endif %}'".to_owned()),
        "[ -~\t]{0,20}".prop_map(String::from),
    ]
}

fn yaml_text() -> impl Strategy<Value = String> {
    (prop::collection::vec(yaml_line(), 0..12), any::<bool>()).prop_map(|(lines, end)| {
        let mut t = lines.join("\n");
        if end {
            t.push('\n');
        }
        t
    })
}

proptest! {
    #![proptest_config(bounded(96))]

    #[test]
    fn config_texts_generated_never_panic(text in yaml_text()) {
        checks::tutor_config(text.as_bytes());
    }

    #[test]
    fn config_seeds_mutated_never_panic(data in mutated("tutor_config")) {
        checks::tutor_config(&data);
    }

    #[test]
    fn rewrites_of_mutated_seeds_never_panic(data in mutated("tutor_rewrite")) {
        checks::tutor_rewrite(&data);
    }
}

/// Real PyYAML, in one long-lived Python process: a JSON mapping in; out (as JSON) the text
/// `yaml.dump(mapping, default_flow_style=False, allow_unicode=True)` gives, and whether
/// `yaml.safe_load` of that text gives the mapping back (it does not for every string).
struct PyYaml {
    _child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

const PYYAML_LOOP: &str = r#"
import json, sys, yaml
for line in sys.stdin:
    doc = json.loads(line)
    text = yaml.dump(doc, default_flow_style=False, allow_unicode=True)
    sys.stdout.write(json.dumps([text, yaml.safe_load(text) == doc]) + "\n")
    sys.stdout.flush()
"#;

fn python() -> PathBuf {
    let python = std::env::var_os("OFFLOAD_STACK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".stack/venv/bin/python"));
    assert!(
        python.is_file(),
        "Python with PyYAML (Tutor's) not found at {}: run scripts/stack up, or set \
         OFFLOAD_STACK_PYTHON",
        python.display()
    );
    python
}

fn pyyaml_dump(doc: &serde_json::Value) -> (String, bool) {
    static PYYAML: OnceLock<Mutex<PyYaml>> = OnceLock::new();
    let py = PYYAML.get_or_init(|| {
        let mut child = Command::new(python())
            .args(["-c", PYYAML_LOOP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start Python");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Mutex::new(PyYaml {
            _child: child,
            input,
            output,
        })
    });
    let mut py = py.lock().unwrap_or_else(|e| e.into_inner());
    writeln!(py.input, "{doc}").expect("write to Python");
    py.input.flush().expect("flush to Python");
    let mut line = String::new();
    py.output.read_line(&mut line).expect("read from Python");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("PyYAML answered {line:?}: {e}"))
}

#[derive(Debug, Clone)]
enum Setting {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl Setting {
    fn json(&self) -> serde_json::Value {
        match self {
            Setting::Str(s) => s.as_str().into(),
            Setting::Int(n) => (*n).into(),
            Setting::Bool(b) => (*b).into(),
            Setting::List(items) => items.iter().map(|s| s.as_str()).collect::<Vec<_>>().into(),
        }
    }

    fn yaml(&self) -> Value {
        match self {
            Setting::Str(s) => s.as_str().into(),
            Setting::Int(n) => (*n).into(),
            Setting::Bool(b) => (*b).into(),
            Setting::List(items) => {
                Value::Sequence(items.iter().map(|s| s.as_str().into()).collect())
            }
        }
    }
}

/// Strings that test PyYAML's quoting rules: YAML 1.1 words and numbers, indicators, breaks,
/// long lines that fold, unicode and characters only double quotes can hold.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "[a-z :#'\"-]{0,100}",
        "[a-z0-9 ]{60,130}",
        "[ a\n'\"é✓\u{85}\u{2028}\u{feff}\u{1}\t\\\\]{0,20}",
        prop::sample::select(vec![
            "yes",
            "No",
            "ON",
            "null",
            "~",
            "0123",
            "09",
            "0o17",
            "1e3",
            "1.5",
            ".inf",
            "1:20",
            "2001-12-14",
            "2001-12-14 21:59:43.10 -5",
            "<<",
            "=",
            "-",
            "- a",
            "? x",
            "!tag",
            "&a",
            "*a",
            "@x",
            "%x",
            "`x",
            "a: b",
            "a #b",
            "---",
            "...",
            " lead",
            "trail ",
            "",
        ])
        .prop_map(String::from),
    ]
}

fn setting() -> impl Strategy<Value = Setting> {
    prop_oneof![
        3 => tricky_string().prop_map(Setting::Str),
        1 => any::<i64>().prop_map(Setting::Int),
        1 => any::<bool>().prop_map(Setting::Bool),
        1 => prop::collection::vec(tricky_string(), 0..4).prop_map(Setting::List),
    ]
}

/// A setting name as Tutor's are; not a YAML 1.1 word (`ON`, `NO`, ...), which PyYAML would
/// quote and offload never edits.
fn key_name(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_filter("a YAML 1.1 word", |k| {
        !matches!(
            k.as_str(),
            "ON" | "NO" | "OFF" | "YES" | "TRUE" | "FALSE" | "NULL"
        )
    })
}

fn settings() -> impl Strategy<Value = BTreeMap<String, Setting>> {
    prop::collection::btree_map(key_name("[A-Z][A-Z0-9_]{0,10}"), setting(), 0..8)
}

/// Whether offload refuses `value` by design (Tutor would render it with Jinja on load).
fn refused_by_design(value: &Setting) -> bool {
    let bad = |s: &str| {
        ["{{", "{%", "{#"].iter().any(|d| s.contains(d)) || s.contains('\r') || s.ends_with('\n')
    };
    match value {
        Setting::Str(s) => bad(s),
        Setting::List(items) => items.iter().any(|s| bad(s)),
        _ => false,
    }
}

/// Short names, so that some are also in the file and some are not.
fn unset_keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(key_name("[A-Z][A-Z0-9_]{0,2}"), 0..3)
}

fn json_doc(map: &BTreeMap<String, Setting>) -> serde_json::Value {
    serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.json())).collect())
}

fn rewrite_matches_pyyaml(
    before: BTreeMap<String, Setting>,
    sets: BTreeMap<String, Setting>,
    unsets: Vec<String>,
) -> Result<(), TestCaseError> {
    let (original, _) = pyyaml_dump(&json_doc(&before));
    let mut after = before.clone();
    let mut edits = ConfigEdits::new();
    for (k, v) in &sets {
        edits.set(k.clone(), v.yaml());
        after.insert(k.clone(), v.clone());
    }
    for k in unsets.iter().filter(|k| !sets.contains_key(*k)) {
        edits.unset(k.clone());
        after.remove(k);
    }
    if before.is_empty() || after.is_empty() {
        // PyYAML writes an empty mapping as `{}` (flow style), which the rewriter refuses by
        // design (its advice: `tutor config save`); Tutor's own config.yml is never empty.
        return Ok(());
    }
    let got = apply_edits(&original, &edits);
    if sets.values().any(refused_by_design) {
        prop_assert!(matches!(got, Err(TutorError::Value { .. })), "{got:?}");
        return Ok(());
    }
    let (want, _) = pyyaml_dump(&json_doc(&after));
    let (_, faithful) = pyyaml_dump(&json_doc(&sets));
    if !faithful {
        // Tutor itself cannot keep such a value (PyYAML writes U+0085 as a line break that
        // reads back as a space): offload must refuse it rather than write it.
        prop_assert!(
            got.is_err(),
            "accepted a value Tutor cannot store: {:?}",
            edits
        );
        return Ok(());
    }
    let got = got.map_err(|e| TestCaseError::fail(format!("refused {original:?}: {e}")))?;
    prop_assert_eq!(got, want, "from {:?} with {:?}", original, edits);
    Ok(())
}

proptest! {
    #![proptest_config(bounded(128))]

    /// Round trip against Tutor's own writer: PyYAML writes a config.yml, offload edits it, and
    /// the result is byte for byte what PyYAML writes for the edited settings.
    #[test]
    fn rewrite_gives_what_pyyaml_writes(
        before in settings(),
        sets in settings(),
        unsets in unset_keys(),
    ) {
        rewrite_matches_pyyaml(before, sets, unsets)?;
    }
}

// ---------------------------------------------------------------------------------------------
// `scripts/fuzz TARGET SECONDS` without cargo-fuzz: the generators above, for that long.

/// Runs `test` over `strategy` until the runner's cases are done; a failure, shrunk, as text.
fn cases<S: Strategy>(
    runner: &mut TestRunner,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<(), String> {
    runner.run(&strategy, test).map_err(|e| e.to_string())
}

fn bytes_check(check: fn(&[u8])) -> impl Fn(Vec<u8>) -> Result<(), TestCaseError> {
    move |data| {
        check(&data);
        Ok(())
    }
}

fn run_for(target: &str, seconds: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut done = 0u64;
    let config = Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    };
    while Instant::now() < deadline {
        let runner = &mut TestRunner::new(config.clone());
        match target {
            "rdb" => {
                cases(runner, mutated("rdb"), bytes_check(checks::rdb))?;
                let model = (
                    prop::collection::vec(model_key(), 0..12),
                    prop::option::of(0u8..4),
                );
                cases(runner, model, |(keys, only)| {
                    rdb_model_reads_back(keys, only)
                })?;
            }
            "urls" => {
                let generated = url_text().prop_map(|u| [&[0u8][..], u.as_bytes()].concat());
                cases(runner, generated, bytes_check(checks::urls))?;
                cases(runner, mutated("urls"), bytes_check(checks::urls))?;
            }
            "tutor_config" => {
                let generated = yaml_text().prop_map(String::into_bytes);
                cases(runner, generated, bytes_check(checks::tutor_config))?;
                cases(
                    runner,
                    mutated("tutor_config"),
                    bytes_check(checks::tutor_config),
                )?;
            }
            "tutor_rewrite" => {
                let model = (settings(), settings(), unset_keys());
                cases(runner, model, |(b, s, u)| rewrite_matches_pyyaml(b, s, u))?;
                cases(
                    runner,
                    mutated("tutor_rewrite"),
                    bytes_check(checks::tutor_rewrite),
                )?;
            }
            other => {
                return Err(format!(
                    "no fuzz target {other}; the targets are {:?}",
                    checks::TARGETS
                ))
            }
        }
        done += 2 * u64::from(config.cases);
    }
    Ok(done)
}

/// Run by `scripts/fuzz` with `OFFLOAD_FUZZ_TARGET` and `OFFLOAD_FUZZ_SECONDS`.
#[test]
#[ignore = "run by scripts/fuzz for a given time"]
fn long_run() {
    let target = std::env::var("OFFLOAD_FUZZ_TARGET").expect("OFFLOAD_FUZZ_TARGET");
    let seconds: u64 = std::env::var("OFFLOAD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("OFFLOAD_FUZZ_SECONDS, a number of seconds");
    match run_for(&target, seconds) {
        Ok(cases) => println!("fuzz {target}: {cases} cases in {seconds} s, no failure"),
        Err(e) => panic!("fuzz {target}: a failing input (shrunk):\n{e}"),
    }
}

/// Every committed seed reads as its target expects: the real snapshots completely.
#[test]
fn seed_corpus_passes_every_property() {
    for target in checks::TARGETS {
        for data in seeds(target) {
            checks::run(target, &data);
        }
    }
    for data in seeds("rdb") {
        let mut r = RdbReader::new(&data[..], usize::MAX).expect("a real snapshot's header");
        while r
            .next_key()
            .expect("a real snapshot reads to its end")
            .is_some()
        {}
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs fuzzing found, each fixed.

/// A Meilisearch URL that did not parse was quoted whole in the refusal, password included.
#[test]
fn meilisearch_refusals_never_show_the_password() {
    use offload::search::client::MeilisearchClient;
    for url in [
        "mysql://tgt%3Aadm:hunter2secret@[::1]:3307",
        "http://a:hunter2secret@.]]ts...].].]/41q",
        "http://key:hunter2secret@127.0.0.1:99999",
    ] {
        let e = MeilisearchClient::new(url, None, "target").expect_err("refused");
        let shown = e.to_string();
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(shown.contains("***@"), "still says which URL: {shown}");
    }
}

/// PyYAML writes U+2028 (and U+0085, U+2029) in a quoted value as a line break, so a line of a
/// config.yml Tutor wrote may start with one; the rewriter refused to edit such a file.
#[test]
fn config_lines_starting_with_a_unicode_line_break_continue_their_setting() {
    let text = "A: '\n\n\u{2028}  \\'\nC: 1\n";
    let mut edits = ConfigEdits::new();
    edits.set("B", 2);
    assert_eq!(
        apply_edits(text, &edits).expect("editable"),
        "A: '\n\n\u{2028}  \\'\nB: 2\nC: 1\n"
    );
}

/// A list item PyYAML folded over two lines made the rewriter read the other items with YAML 1.2
/// rules (`0o17` as the number 15), so it refused to write what Tutor writes.
#[test]
fn a_folded_list_item_leaves_the_others_read_as_pyyaml_reads_them() {
    let long = "00  a0aaa00a0aa  a00     0 a   aa a0aa0aaa a0aa  00a000a 0aaaa00a  0a0  0aa a a 0";
    let mut edits = ConfigEdits::new();
    edits.set("A", Value::Sequence(vec!["0o17".into(), long.into()]));
    let written = apply_edits("A: ''\n", &edits).expect("editable");
    // What PyYAML 6 writes for {"A": ["0o17", long]}.
    assert_eq!(
        written,
        "A:\n- 0o17\n- 00  a0aaa00a0aa  a00     0 a   aa a0aa0aaa a0aa  00a000a 0aaaa00a  0a0  0aa a a\n  0\n"
    );
    assert_eq!(apply_edits(&written, &edits).expect("reads back"), written);
}

/// A user or password with a raw `/` puts the rest of the user part in the URL's path, which the
/// Redis and S3 refusals quoted, password included.
#[test]
fn refusals_never_quote_a_path_that_holds_the_password() {
    use offload::stores::objects::S3Endpoint;
    use offload::stores::redis::RedisEndpoint;
    let e = RedisEndpoint::parse("redis://cache/ops:hunter2secret@10.0.0.5:6379").unwrap_err();
    assert!(
        !e.contains("hunter2secret") && e.contains("percent-encode"),
        "{e}"
    );
    let e = S3Endpoint::parse("http://AKIA/x:hunter2secret@minio:9000").unwrap_err();
    assert!(
        !e.contains("hunter2secret") && e.contains("percent-encode"),
        "{e}"
    );
    // Paths without a user part are still shown.
    assert!(RedisEndpoint::parse("redis://cache/x")
        .unwrap_err()
        .contains("`/x`"));
    assert!(S3Endpoint::parse("http://minio:9000/bucket")
        .unwrap_err()
        .contains("/bucket"));
}
