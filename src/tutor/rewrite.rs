//! Minimal-diff editing of `config.yml`: change only the settings asked for, so that a file Tutor
//! saved comes out byte for byte as `tutor config save --set K=V --unset K` would write it.
//!
//! Tutor writes `config.yml` with PyYAML in block style with sorted keys, so every top-level
//! setting starts at column 0 and owns the lines up to the next one. An edit replaces, inserts (in
//! sorted position) or removes one such block, writing the value with the PyYAML port in
//! [`super::pyyaml`]; every other byte is kept. The result is read back and compared with what
//! was intended before it is returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::pyyaml::{self, EmitError};
use super::{is_secret_key, Redacted, TutorError, CONFIG_FILENAME};

/// A set of changes to `config.yml`: settings to set and settings to remove.
///
/// Later calls for the same key replace earlier ones. `Debug` masks secret settings.
#[derive(Clone, Default, PartialEq)]
pub struct ConfigEdits {
    changes: BTreeMap<String, Option<Value>>,
}

impl std::fmt::Debug for ConfigEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.changes {
            match value {
                Some(_) if is_secret_key(key) => map.entry(key, &Redacted("*")),
                Some(value) => map.entry(key, value),
                None => map.entry(key, &"<unset>"),
            };
        }
        map.finish()
    }
}

impl ConfigEdits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` (like `tutor config save --set KEY=VALUE`).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.changes.insert(key.into(), Some(value.into()));
        self
    }

    /// Removes `key` from the file (like `tutor config save --unset KEY`).
    pub fn unset(&mut self, key: impl Into<String>) -> &mut Self {
        self.changes.insert(key.into(), None);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The changes in key order: `Some(value)` to set, `None` to remove.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Value>)> {
        self.changes.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// The change asked for `key`, if any: `Some(None)` means "remove".
    pub fn get(&self, key: &str) -> Option<Option<&Value>> {
        self.changes.get(key).map(Option::as_ref)
    }

    /// The `tutor config save` arguments that make the same change (`--set K=<JSON>`, which
    /// Tutor parses as YAML, and `--unset K`). They hold secret values: never log them.
    pub fn tutor_save_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (key, value) in &self.changes {
            match value {
                Some(value) => {
                    let json = serde_json::to_string(value).unwrap_or_default();
                    args.extend(["--set".to_owned(), format!("{key}={json}")]);
                }
                None => args.extend(["--unset".to_owned(), key.clone()]),
            }
        }
        args
    }
}

/// Applies `edits` to the text of a `config.yml`, changing nothing else.
pub fn apply_edits(original: &str, edits: &ConfigEdits) -> Result<String, TutorError> {
    apply_edits_at(original, edits, Path::new(CONFIG_FILENAME))
}

/// [`apply_edits`], naming `path` in errors.
pub(crate) fn apply_edits_at(
    original: &str,
    edits: &ConfigEdits,
    path: &Path,
) -> Result<String, TutorError> {
    let (before, entries) = read_entries(original, path)?;
    let mut blocks = BTreeMap::new();
    for (key, value) in edits.iter() {
        if let Some(value) = value {
            check_settable(key, value)?;
            let block = pyyaml::emit_entry(key, value).map_err(|e| value_error(key, e))?;
            blocks.insert(key, block);
        } else if !pyyaml::is_plain_key(key) {
            return Err(value_error(key, EmitError::Key));
        }
    }

    let mut pending: Vec<(&str, &String)> = blocks
        .iter()
        .filter(|(k, _)| !entries.iter().any(|e| e.key == **k))
        .map(|(k, b)| (*k, b))
        .collect();
    let mut out = String::with_capacity(original.len() + 256);
    let mut emit_pending = |out: &mut String, below: Option<&str>| {
        let split = pending
            .iter()
            .position(|(k, _)| below.is_some_and(|b| *k >= b))
            .unwrap_or(pending.len());
        for (_, block) in pending.drain(..split) {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(block);
        }
    };
    let first_start = entries.first().map_or(original.len(), |e| e.start);
    out.push_str(&original[..first_start]);
    if let Some(first) = entries.first() {
        emit_pending(&mut out, Some(&first.key));
    }
    for (i, entry) in entries.iter().enumerate() {
        match edits.get(&entry.key) {
            None => out.push_str(&original[entry.start..entry.end]),
            Some(Some(_)) => out.push_str(&blocks[entry.key.as_str()]),
            Some(None) => {}
        }
        let next = entries.get(i + 1);
        emit_pending(&mut out, next.map(|n| n.key.as_str()));
        out.push_str(&original[entry.end..next.map_or(original.len(), |n| n.start)]);
    }
    emit_pending(&mut out, None);

    verify(&before, &out, edits, path)?;
    Ok(out)
}

/// Strings Tutor would not store as given: every value passes through Jinja on each load.
fn check_settable(key: &str, value: &Value) -> Result<(), TutorError> {
    let strings: Vec<&str> = match value {
        Value::String(s) => vec![s],
        Value::Sequence(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    for s in strings {
        let reason = if ["{{", "{%", "{#"].iter().any(|d| s.contains(d)) {
            "the value contains `{{`, `{%` or `{#`, which Tutor renders as a Jinja template \
             each time it loads config.yml"
        } else if s.contains('\r') || s.ends_with('\n') {
            "the value contains a carriage return or ends with a newline, which Tutor's Jinja \
             rendering would change"
        } else {
            continue;
        };
        return Err(TutorError::Value {
            key: key.to_owned(),
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

fn value_error(key: &str, e: EmitError) -> TutorError {
    let reason = match e {
        EmitError::Key => "offload only edits settings whose names are letters, digits and \
                           underscores, as Tutor's are"
            .to_owned(),
        EmitError::Value(what) => format!("offload does not write {what} into config.yml"),
    };
    TutorError::Value {
        key: key.to_owned(),
        reason,
    }
}

/// Reads back the edited text and checks it holds exactly the original settings with the edits.
fn verify(
    before: &Mapping,
    text: &str,
    edits: &ConfigEdits,
    path: &Path,
) -> Result<(), TutorError> {
    let (after, entries) = read_entries(text, path)?;
    let mut expected = before.clone();
    for (key, value) in edits.iter() {
        match value {
            Some(v) => {
                expected.insert(Value::String(key.to_owned()), v.clone());
            }
            None => {
                expected.remove(key);
            }
        }
    }
    let differs = |k: &Value| after.get(k) != expected.get(k);
    let bad = after.keys().chain(expected.keys()).find(|k| differs(k));
    match bad {
        None if after.len() == expected.len() => Ok(()),
        _ => {
            let key = bad.and_then(Value::as_str).unwrap_or("?");
            let line = entries.iter().find(|e| e.key == key).map_or(1, |e| e.line);
            Err(TutorError::Layout {
                path: path.to_owned(),
                line,
                reason: format!("after editing, {key} would not read back as intended"),
            })
        }
    }
}

/// One top-level setting as laid out in the file.
struct Entry {
    key: String,
    /// 1-based line number of the `KEY:` line.
    line: usize,
    /// Byte range of the setting: its key line through its last content line.
    start: usize,
    end: usize,
    /// The text after `KEY:` on the key line, trimmed.
    inline: String,
    /// The content lines after the key line (blank lines and column-0 comments excluded).
    more: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum LineKind {
    Blank,
    Comment,
    Indented,
    SeqItem,
    Key,
}

fn classify(content: &str) -> LineKind {
    let marker = |m: &str| {
        content
            .strip_prefix(m)
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
    };
    if content.trim().is_empty() {
        LineKind::Blank
    } else if content.starts_with([' ', '\t', '\u{85}', '\u{2028}', '\u{2029}']) {
        // PyYAML writes U+0085, U+2028 and U+2029 inside a quoted value as line breaks, so a
        // line may start with one at column 0: it continues the setting above (found by fuzzing).
        LineKind::Indented
    } else if content.starts_with(['#', '%']) || marker("---") || marker("...") {
        LineKind::Comment
    } else if marker("-") {
        LineKind::SeqItem
    } else {
        LineKind::Key
    }
}

/// Splits a `KEY: value` line into the key and the rest.
fn split_key_line(content: &str) -> Result<(String, &str), String> {
    let key_end = match content.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let mut escaped = false;
            let mut close = None;
            for (i, c) in content.char_indices().skip(1) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if q == '"' => escaped = true,
                    c if c == q => {
                        // In single quotes, '' is an escaped quote.
                        if q == '\'' && content[i + 1..].starts_with('\'') {
                            escaped = true;
                            continue;
                        }
                        close = Some(i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            close.ok_or("a quoted key that does not end on its line")?
        }
        Some('?') => return Err("a complex `? key`".to_owned()),
        _ => {
            let colon = content
                .match_indices(':')
                .find(|(i, _)| content[i + 1..].is_empty() || content[i + 1..].starts_with(' '))
                .map(|(i, _)| i)
                .ok_or("a line that is not `KEY: value`")?;
            content[..colon].trim_end().len()
        }
    };
    let token = &content[..key_end];
    let rest = content[key_end..]
        .trim_start()
        .strip_prefix(':')
        .filter(|r| r.is_empty() || r.starts_with(' '))
        .ok_or("a line that is not `KEY: value`")?;
    let key = if token.starts_with(['\'', '"']) {
        serde_yaml::from_str::<String>(token).map_err(|_| "an unreadable quoted key".to_owned())?
    } else {
        token.to_owned()
    };
    Ok((key, rest.trim()))
}

/// Finds the top-level settings and their byte ranges.
fn layout(text: &str, path: &Path) -> Result<Vec<Entry>, TutorError> {
    let layout_error = |line: usize, reason: String| TutorError::Layout {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        match classify(content) {
            LineKind::Blank | LineKind::Comment => {}
            LineKind::Indented | LineKind::SeqItem => {
                let entry = entries.last_mut().ok_or_else(|| {
                    layout_error(n + 1, "content before the first setting".to_owned())
                })?;
                entry.end = offset + line.len();
                entry.more.push(content.to_owned());
            }
            LineKind::Key => {
                let (key, rest) = split_key_line(content).map_err(|r| layout_error(n + 1, r))?;
                entries.push(Entry {
                    key,
                    line: n + 1,
                    start: offset,
                    end: offset + line.len(),
                    inline: rest.to_owned(),
                    more: Vec::new(),
                });
            }
        }
        offset += line.len();
    }
    Ok(entries)
}

/// Whether text after `KEY:` (or after `- `) is a whole plain scalar on one line.
pub(crate) fn is_plain_scalar_text(text: &str) -> bool {
    !text.is_empty()
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains('\t')
        && !text.ends_with(':')
        && !text.starts_with(|c: char| "'\"[]{}#&*!|>%@`,".contains(c))
        && !text.starts_with("- ")
        && !text.starts_with("? ")
        && text != "-"
        && text != "?"
}

/// Parses `config.yml` into its top-level mapping, resolving plain scalars as PyYAML does.
pub(crate) fn read_mapping(text: &str, path: &Path) -> Result<Mapping, TutorError> {
    read_entries(text, path).map(|(mapping, _)| mapping)
}

fn read_entries(text: &str, path: &Path) -> Result<(Mapping, Vec<Entry>), TutorError> {
    let parsed: Value = serde_yaml::from_str(text).map_err(|e| {
        let location = e.location();
        let message = e.to_string();
        TutorError::Malformed {
            path: path.to_owned(),
            line: location.as_ref().map_or(0, |l| l.line()),
            column: location.as_ref().map_or(0, |l| l.column()),
            problem: message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned(),
        }
    })?;
    let mut mapping = match parsed {
        Value::Mapping(m) => m,
        other => {
            return Err(TutorError::NotMapping {
                path: path.to_owned(),
                found: match other {
                    Value::Null => "nothing",
                    Value::Sequence(_) => "a list",
                    Value::Tagged(_) => "a tagged value",
                    _ => "a single value",
                },
            })
        }
    };
    let entries = layout(text, path)?;
    let keys: Vec<Option<&str>> = mapping.keys().map(Value::as_str).collect();
    if keys.len() != entries.len() || keys.iter().zip(&entries).any(|(k, e)| *k != Some(&e.key)) {
        let line = entries
            .iter()
            .zip(&keys)
            .find(|(e, k)| **k != Some(&e.key))
            .map_or(1, |(e, _)| e.line);
        return Err(TutorError::Layout {
            path: path.to_owned(),
            line,
            reason: "the settings found line by line differ from what a YAML parser reads"
                .to_owned(),
        });
    }
    for entry in &entries {
        let Some(value) = mapping.get_mut(entry.key.as_str()) else {
            continue;
        };
        if entry.more.is_empty() && is_plain_scalar_text(&entry.inline) {
            *value = pyyaml::resolve_plain(&entry.inline);
        } else if let (true, Value::Sequence(items)) = (entry.inline.is_empty(), &mut *value) {
            // Each item is its `- ` line and the indented lines that continue it (PyYAML folds
            // long items): only one-line items are plain scalars to resolve, but every item must
            // be found, or an item folded over two lines left the others read as YAML 1.2 (a
            // `0o17` beside it became 15; found by fuzzing).
            let mut texts: Vec<(&str, bool)> = Vec::new();
            let mut complete = true;
            for line in &entry.more {
                match (line.strip_prefix("- "), texts.last_mut()) {
                    (Some(text), _) => texts.push((text, true)),
                    (None, Some(last)) if classify(line) == LineKind::Indented => last.1 = false,
                    _ => complete = false,
                }
            }
            if complete && texts.len() == items.len() {
                for (item, (text, one_line)) in items.iter_mut().zip(texts) {
                    if one_line && is_plain_scalar_text(text) {
                        *item = pyyaml::resolve_plain(text);
                    }
                }
            }
        }
    }
    Ok((mapping, entries))
}

/// Each top-level setting's key and text (key line through last content line, without the final
/// newline), for showing a diff. Empty if the text cannot be laid out.
pub(crate) fn setting_blocks(text: &str) -> Vec<(String, &str)> {
    layout(text, Path::new(CONFIG_FILENAME))
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, text[e.start..e.end].trim_end_matches(['\n', '\r'])))
        .collect()
}

/// The path of `config.yml` in `root`.
pub(crate) fn config_path(root: &Path) -> PathBuf {
    root.join(CONFIG_FILENAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(pairs: &[(&str, Option<Value>)]) -> ConfigEdits {
        let mut e = ConfigEdits::new();
        for (k, v) in pairs {
            match v {
                Some(v) => e.set(*k, v.clone()),
                None => e.unset(*k),
            };
        }
        e
    }

    const SAVED: &str = "CMS_HOST: studio.example.org\nJWT: '-----BEGIN\n\n  body\n\n  END'\nMYSQL_ROOT_PASSWORD: abc\nPLUGINS:\n- minio\nZ: 1\n";

    #[test]
    fn replaces_inserts_and_removes_only_the_named_blocks() {
        let e = edits(&[
            ("MYSQL_ROOT_PASSWORD", Some("0123".into())),
            ("MYSQL_HOST", Some("db.example.org".into())),
            ("RUN_MYSQL", Some(false.into())),
            ("AAA", Some(Value::from(1))),
            ("ZZ", Some(Value::Sequence(vec![]))),
            ("PLUGINS", Some(Value::Sequence(vec!["s3".into()]))),
            ("JWT", None),
        ]);
        let out = apply_edits(SAVED, &e).unwrap();
        assert_eq!(
            out,
            "AAA: 1\nCMS_HOST: studio.example.org\nMYSQL_HOST: db.example.org\n\
             MYSQL_ROOT_PASSWORD: '0123'\nPLUGINS:\n- s3\nRUN_MYSQL: false\nZ: 1\nZZ: []\n"
        );
    }

    #[test]
    fn no_edits_is_identity_and_comments_stay() {
        assert_eq!(apply_edits(SAVED, &ConfigEdits::new()).unwrap(), SAVED);
        let text = "# mine\nA: 1\n\n# about C\nC: 3\n";
        let out = apply_edits(text, &edits(&[("B", Some(2.into()))])).unwrap();
        assert_eq!(out, "# mine\nA: 1\nB: 2\n\n# about C\nC: 3\n");
    }

    #[test]
    fn file_without_final_newline_gets_one_before_an_insert() {
        let out = apply_edits("A: 1", &edits(&[("B", Some(2.into()))])).unwrap();
        assert_eq!(out, "A: 1\nB: 2\n");
    }

    #[test]
    fn values_tutor_would_render_are_refused_without_echoing_them() {
        for bad in ["pa{{ss", "x{%y", "a{#b", "line\n", "a\rb"] {
            let err = apply_edits(SAVED, &edits(&[("K", Some(bad.into()))])).unwrap_err();
            assert!(matches!(err, TutorError::Value { .. }), "{err:?}");
            assert!(!err.to_string().contains(bad), "{err}");
        }
        let err = apply_edits(SAVED, &edits(&[("bad key", Some(1.into()))])).unwrap_err();
        assert!(matches!(err, TutorError::Value { .. }));
    }

    #[test]
    fn layouts_offload_cannot_edit_are_refused() {
        for text in ["{A: 1, B: 2}\n", "? A\n: 1\n", "  A: 1\n"] {
            let err = apply_edits(text, &edits(&[("B", Some(2.into()))])).unwrap_err();
            assert!(
                matches!(err, TutorError::Layout { .. }),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn quoted_keys_are_recognised() {
        let text = "'0123': a\n\"B\": b\nC: c\n";
        let out = apply_edits(text, &edits(&[("C", Some("d".into()))])).unwrap();
        assert_eq!(out, "'0123': a\n\"B\": b\nC: d\n");
    }

    #[test]
    fn debug_masks_secrets() {
        let e = edits(&[
            ("MYSQL_ROOT_PASSWORD", Some("hunter2".into())),
            ("MYSQL_HOST", Some("db".into())),
        ]);
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("db"),
            "{shown}"
        );
    }

    #[test]
    fn tutor_save_args_are_yaml() {
        let e = edits(&[
            ("A", Some("0123".into())),
            ("B", Some(false.into())),
            ("C", None),
            ("D", Some(Value::Sequence(vec!["s3".into()]))),
        ]);
        assert_eq!(
            e.tutor_save_args(),
            [
                "--set",
                "A=\"0123\"",
                "--set",
                "B=false",
                "--unset",
                "C",
                "--set",
                "D=[\"s3\"]"
            ]
        );
    }
}
