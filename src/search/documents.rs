//! Document builders: pure functions from source records (course overviews, modes, modulestore
//! blocks, forum posts) to the JSON documents the platform's own indexers put in Meilisearch.
//!
//! Each builder follows one indexer: `course_info` and `courseware_content` follow
//! `cms/djangoapps/contentstore/courseware_index.py` through edx-search's `search/meilisearch.py`
//! (`process_document`: `convert_doc_datatypes` then `_pk` = SHA-1 of `id`), `studio_content`
//! follows `openedx/core/djangoapps/content/search/documents.py`, and the forum indexes follow
//! openedx/forum `forum/search/meilisearch.py` (`create_document`). `docs/meilisearch.md` says
//! which fields are exact and which approximated.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};

/// Microseconds since the Unix epoch (UTC), as MySQL `DATETIME(6)` and BSON dates give them.
pub type Micros = i64;

/// Python's `datetime.timestamp()` of a UTC instant: seconds as a float, exactly as
/// `total_seconds()` computes it (integer microseconds divided by 10^6, correctly rounded).
pub fn timestamp(micros: Micros) -> f64 {
    micros as f64 / 1_000_000.0
}

/// The platform's default start date for blocks without one (`DEFAULT_START_DATE`, 2030-01-01 UTC).
pub const DEFAULT_START: Micros = 1_893_456_000_000_000;

/// edx-search's `id2pk`: hex SHA-1 of the document id.
pub fn id2pk(id: &str) -> String {
    hex::encode(Sha1::digest(id.as_bytes()))
}

/// Django's `slugify` (without `allow_unicode`): NFKD-to-ASCII, lowercase, drop what is not a word
/// character, space or hyphen, collapse runs of spaces and hyphens into one hyphen, trim `-` and `_`.
///
/// ASCII folding keeps ASCII characters and drops the rest (Django decomposes first, so `é` becomes
/// `e`; offload folds the common Latin accents the same way and drops other characters).
pub fn slugify(text: &str) -> String {
    let mut folded = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            folded.push(c.to_ascii_lowercase());
        } else if let Some(base) = fold_latin(c) {
            folded.push(base);
        }
    }
    let kept: String = folded
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || c.is_ascii_whitespace())
        .collect();
    let mut out = String::with_capacity(kept.len());
    let mut in_run = false;
    for c in kept.chars() {
        if c == '-' || c.is_ascii_whitespace() {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out.trim_matches(|c| c == '-' || c == '_').to_string()
}

/// The ASCII letter an accented Latin letter decomposes to under NFKD, for the common ones.
fn fold_latin(c: char) -> Option<char> {
    let base = match c {
        'à'..='å' => 'a',
        'À'..='Å' => 'a',
        'ç' | 'Ç' => 'c',
        'è'..='ë' | 'È'..='Ë' => 'e',
        'ì'..='ï' | 'Ì'..='Ï' => 'i',
        'ñ' | 'Ñ' => 'n',
        'ò'..='ö' | 'Ò'..='Ö' => 'o',
        'ù'..='ü' | 'Ù'..='Ü' => 'u',
        'ý' | 'ÿ' | 'Ý' => 'y',
        _ => return None,
    };
    Some(base)
}

/// Studio's `meili_id_from_opaque_key`: the slugified key, a hyphen, and the hex BLAKE2b (4-byte
/// digest) of the key.
pub fn studio_id(key: &str) -> String {
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(4).expect("4 is a valid BLAKE2b output size");
    hasher.update(key.as_bytes());
    let mut out = [0u8; 4];
    hasher
        .finalize_variable(&mut out)
        .expect("the buffer has the requested size");
    format!("{}-{}", slugify(key), hex::encode(out))
}

/// The text of an HTML fragment as Python's `HTMLParser` (with `convert_charrefs`) hands it to
/// `handle_data`: tags dropped, character references decoded, everything else kept.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let next = bytes.get(i + 1).copied().unwrap_or(b' ');
            if next.is_ascii_alphabetic() || next == b'/' || next == b'!' || next == b'?' {
                push_decoded(&mut out, &html[text_start..i]);
                let end = if html[i..].starts_with("<!--") {
                    html[i..].find("-->").map(|p| i + p + 3)
                } else {
                    html[i..].find('>').map(|p| i + p + 1)
                };
                match end {
                    Some(e) => {
                        i = e;
                        text_start = e;
                        continue;
                    }
                    None => {
                        // An unterminated tag: HTMLParser keeps it as text at the end.
                        text_start = i;
                        break;
                    }
                }
            }
        }
        i += 1;
    }
    push_decoded(&mut out, &html[text_start..]);
    out
}

/// `html_to_text`, but also dropping `<script>` and `<style>` contents and comments, as
/// BeautifulSoup's `get_text()` does (the forum's indexer).
pub fn soup_text(html: &str) -> String {
    html_to_text(&remove_elements(html, &["script", "style"]))
}

/// Remove `<tag ...>...</tag>` elements (case-insensitive, non-greedy, across lines).
fn remove_elements(html: &str, tags: &[&str]) -> String {
    let mut out = html.to_string();
    for tag in tags {
        loop {
            let lower = out.to_ascii_lowercase();
            let Some(start) = lower.find(&format!("<{tag}")) else {
                break;
            };
            let close = format!("</{tag}>");
            match lower[start..].find(&close) {
                Some(p) => out.replace_range(start..start + p + close.len(), ""),
                None => break,
            }
        }
    }
    out
}

fn push_decoded(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|p| p + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let code = if let Some(hexdigits) = num.strip_prefix(['x', 'X']) {
                u32::from_str_radix(hexdigits, 16).ok()
            } else {
                num.parse::<u32>().ok()
            };
            code.and_then(char::from_u32)
        } else {
            match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                "copy" => Some('©'),
                "reg" => Some('®'),
                "hellip" => Some('…'),
                "mdash" => Some('—'),
                "ndash" => Some('–'),
                "laquo" => Some('«'),
                "raquo" => Some('»'),
                _ => None,
            }
        };
        match decoded {
            Some(c) if !name.is_empty() => {
                out.push(c);
                let skip = if rest[end..].starts_with(';') {
                    end + 1
                } else {
                    end
                };
                rest = &rest[skip..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

/// `strip_html_content_to_text` (courseware_index.py) and capa's `escape_html_characters`:
/// the text, with every run of whitespace, `&nbsp;` or `//` replaced by one space.
pub fn strip_html_content_to_text(html: &str) -> String {
    let text = html_to_text(html);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let mut in_run = false;
    while let Some(c) = rest.chars().next() {
        let run_len = if c.is_whitespace() || python_space(c) {
            c.len_utf8()
        } else if rest.starts_with("&nbsp;") {
            6
        } else if rest.starts_with("//") {
            2
        } else {
            0
        };
        if run_len > 0 {
            if !in_run {
                out.push(' ');
            }
            in_run = true;
            rest = &rest[run_len..];
        } else {
            out.push(c);
            in_run = false;
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Characters Python's `\s` matches that Rust's `is_whitespace` does not.
fn python_space(c: char) -> bool {
    matches!(c, '\u{1c}'..='\u{1f}')
}

/// The text capa's `index_dictionary` indexes for a problem: the XML without solutions, hints,
/// scripts and styles, as text.
pub fn capa_text(data: &str) -> String {
    let mut cleaned = remove_elements(data, &["solution", "script", "style"]);
    // `<[a-z]*hint.*?>.*?</[a-z]*hint>`: hint elements of any kind.
    loop {
        let lower = cleaned.to_ascii_lowercase();
        let Some(open) = find_hint_open(&lower) else {
            break;
        };
        let Some(close_rel) = lower[open..].find("hint>") else {
            break;
        };
        // The closing tag is the first `</...hint>` after the opening one.
        let after_open = open + lower[open..].find('>').unwrap_or(0) + 1;
        let Some(close_start) = lower[after_open..].find("</") else {
            break;
        };
        let close_end = lower[after_open + close_start..]
            .find("hint>")
            .map(|p| after_open + close_start + p + 5)
            .unwrap_or(open + close_rel + 5);
        cleaned.replace_range(open..close_end, "");
    }
    strip_html_content_to_text(&cleaned)
}

fn find_hint_open(lower: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = lower[from..].find('<') {
        let start = from + p;
        let name: String = lower[start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        if name.ends_with("hint") && !name.is_empty() {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// The response types of a problem (`problem_types`): the names of its `*response` elements,
/// sorted (the platform lists a Python set, whose order is not defined).
pub fn problem_types(data: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let lower = data.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find('<') {
        let start = from + p + 1;
        let name: String = lower[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.ends_with("response") && name != "response" && !found.contains(&name) {
            found.push(name);
        }
        from = start;
    }
    found.sort();
    found
}

/// A course key's parts: `course-v1:ORG+NUMBER+RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourseKey {
    pub org: String,
    pub number: String,
    pub run: String,
}

impl CourseKey {
    pub fn parse(key: &str) -> Option<CourseKey> {
        let rest = key.strip_prefix("course-v1:")?;
        let mut parts = rest.splitn(3, '+');
        let (org, number, run) = (parts.next()?, parts.next()?, parts.next()?);
        if org.is_empty() || number.is_empty() || run.is_empty() {
            return None;
        }
        Some(CourseKey {
            org: org.to_string(),
            number: number.to_string(),
            run: run.to_string(),
        })
    }

    /// The usage key of a block in this course.
    pub fn usage_key(&self, block_type: &str, block_id: &str) -> String {
        format!(
            "block-v1:{}+{}+{}+type@{block_type}+block@{block_id}",
            self.org, self.number, self.run
        )
    }
}

/// A course's row in `course_overviews_courseoverview`, the fields course discovery uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CourseOverview {
    pub id: String,
    pub display_name: Option<String>,
    pub start: Option<Micros>,
    pub end: Option<Micros>,
    pub enrollment_start: Option<Micros>,
    pub enrollment_end: Option<Micros>,
    pub advertised_start: Option<String>,
    pub course_image_url: String,
    pub effort: Option<String>,
    pub short_description: Option<String>,
    pub language: Option<String>,
    pub invitation_only: bool,
    pub catalog_visibility: Option<String>,
}

/// A row of `course_modes_coursemode`.
#[derive(Debug, Clone, PartialEq)]
pub struct CourseMode {
    pub slug: String,
    pub currency: String,
    pub expiration: Option<Micros>,
}

/// `CourseMode.modes_for_course(course_id)` as slugs: unexpired, not `credit`, in the unique
/// index's order (slug, currency), and `audit` when none is left.
pub fn course_mode_slugs(modes: &[CourseMode], now: Micros) -> Vec<String> {
    let mut live: Vec<&CourseMode> = modes
        .iter()
        .filter(|m| m.expiration.is_none_or(|e| e >= now))
        .filter(|m| m.slug != "credit")
        .collect();
    live.sort_by(|a, b| (&a.slug, &a.currency).cmp(&(&b.slug, &b.currency)));
    if live.is_empty() {
        return vec!["audit".to_string()];
    }
    live.into_iter().map(|m| m.slug.clone()).collect()
}

/// One block of a modulestore structure, with the fields the indexers read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Block {
    pub block_type: String,
    pub block_id: String,
    pub display_name: Option<String>,
    /// Its own `start` field, when set (otherwise inherited from its parent).
    pub start: Option<Micros>,
    pub children: Vec<(String, String)>,
    /// The definition's `data` field (HTML, problem XML, about text).
    pub data: Option<String>,
    pub edited_on: Option<Micros>,
}

/// One course's structure: its blocks by `(type, id)` and the root (the `course` block).
#[derive(Debug, Clone, Default)]
pub struct CourseTree {
    pub course_id: String,
    pub root: (String, String),
    pub blocks: HashMap<(String, String), Block>,
}

impl CourseTree {
    pub fn get(&self, key: &(String, String)) -> Option<&Block> {
        self.blocks.get(key)
    }

    pub fn root_block(&self) -> Option<&Block> {
        self.blocks.get(&self.root)
    }

    /// The `about` blocks' data by block id (`overview`, `effort`, ...).
    pub fn about(&self) -> BTreeMap<String, String> {
        self.blocks
            .values()
            .filter(|b| b.block_type == "about")
            .filter_map(|b| b.data.clone().map(|d| (b.block_id.clone(), d)))
            .collect()
    }

    /// Visit every block below the root, depth first in children order, with its ancestors
    /// (root first) and its inherited start.
    pub fn walk(&self, mut visit: impl FnMut(&Block, &[&Block], Micros)) {
        let Some(root) = self.root_block() else {
            return;
        };
        let root_start = root.start.unwrap_or(DEFAULT_START);
        let mut path: Vec<&Block> = vec![root];
        self.walk_children(root, root_start, &mut path, &mut visit);
    }

    fn walk_children<'a>(
        &'a self,
        parent: &'a Block,
        parent_start: Micros,
        path: &mut Vec<&'a Block>,
        visit: &mut impl FnMut(&Block, &[&Block], Micros),
    ) {
        for key in &parent.children {
            // A child missing from the structure is skipped, as the platform's loaders do.
            let Some(child) = self.blocks.get(key) else {
                continue;
            };
            let start = child.start.unwrap_or(parent_start);
            visit(child, path, start);
            path.push(child);
            self.walk_children(child, start, path, visit);
            path.pop();
        }
    }
}

/// The display name the platform shows for a block without one (its class default).
pub fn default_display_name(block_type: &str) -> Option<&'static str> {
    Some(match block_type {
        "html" => "Text",
        "problem" => "Blank Problem",
        "video" => "Video",
        "discussion" => "Discussion",
        _ => return None,
    })
}

/// `xblock_api.get_block_display_name`: the display name, else the type's default, else the type.
fn studio_display_name(block: &Block) -> String {
    block
        .display_name
        .clone()
        .or_else(|| default_display_name(&block.block_type).map(str::to_string))
        .unwrap_or_else(|| block.block_type.clone())
}

/// The display name as the XBlock field holds it (its default when unset).
fn field_display_name(block: &Block) -> Option<String> {
    block
        .display_name
        .clone()
        .or_else(|| default_display_name(&block.block_type).map(str::to_string))
}

/// A block's index dictionary: `(content, content_type, problem_types)`.
type IndexDictionary = (Map<String, Value>, &'static str, Option<Vec<String>>);

/// What a block's `index_dictionary()` returns, for the block types that index content:
/// `(content, content_type, problem_types)`. `None` for types that return `{}`.
fn index_dictionary(block: &Block) -> Option<IndexDictionary> {
    let mut content = Map::new();
    let display_name = field_display_name(block)
        .map(Value::String)
        .unwrap_or(Value::Null);
    match block.block_type.as_str() {
        "chapter" | "sequential" | "vertical" => {
            content.insert("display_name".into(), display_name);
            Some((content, "Sequence", None))
        }
        "html" => {
            let data = block.data.as_deref().unwrap_or("");
            let without = remove_elements(data, &["script", "style"]);
            content.insert(
                "html_content".into(),
                Value::String(strip_html_content_to_text(&without)),
            );
            content.insert("display_name".into(), display_name);
            Some((content, "Text", None))
        }
        "problem" => {
            let data = block.data.as_deref().unwrap_or("");
            content.insert("capa_content".into(), Value::String(capa_text(data)));
            content.insert("display_name".into(), display_name);
            Some((content, "CAPA", Some(problem_types(data))))
        }
        "video" => {
            content.insert("display_name".into(), display_name);
            Some((content, "Video", None))
        }
        _ => None,
    }
}

/// edx-search's `convert_doc_datatypes` for a value already in JSON: `None` values dropped,
/// recursively in objects (lists are kept as they are).
fn drop_nulls(value: Map<String, Value>) -> Map<String, Value> {
    value
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::Object(inner) => (k, Value::Object(drop_nulls(inner))),
            other => (k, other),
        })
        .collect()
}

/// Set a datetime field the way `convert_doc_datatypes` stores it: a float timestamp plus
/// `<key>__utcoffset` (0 for UTC).
fn put_datetime(doc: &mut Map<String, Value>, key: &str, micros: Micros) {
    doc.insert(key.to_string(), json!(timestamp(micros)));
    doc.insert(format!("{key}__utcoffset"), json!(0));
}

/// edx-search's `process_document`: convert datatypes, then add `_pk`.
fn edx_search_document(mut doc: Map<String, Value>) -> Value {
    let id = doc
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    doc = drop_nulls(doc);
    doc.insert("_pk".into(), Value::String(id2pk(&id)));
    Value::Object(doc)
}

/// The `course_info` (course discovery) document of a course, as `CourseAboutSearchIndexer`
/// builds it. `about` holds the course's about blocks; `modes` its mode slugs.
pub fn course_info_document(
    overview: &CourseOverview,
    course: Option<&Block>,
    about: &BTreeMap<String, String>,
    modes: &[String],
) -> Option<Value> {
    let key = CourseKey::parse(&overview.id)?;
    let mut doc = Map::new();
    doc.insert("id".into(), json!(overview.id));
    doc.insert("course".into(), json!(overview.id));
    doc.insert("image_url".into(), json!(overview.course_image_url));
    // `course_organization_image_url` is '' unless the organizations app has a logo (not read).
    doc.insert("org_image_url".into(), json!(""));
    let mut content = Map::new();

    let display_name = course
        .and_then(|c| c.display_name.clone())
        .or_else(|| overview.display_name.clone());
    let about_text = |name: &str| about.get(name).filter(|s| !s.is_empty()).cloned();
    let effort = about_text("effort").or_else(|| overview.effort.clone());
    let short_description =
        about_text("short_description").or_else(|| overview.short_description.clone());

    // ABOUT_INFORMATION_TO_INCLUDE, in its order. Falsy values are skipped.
    let analyse = |content: &mut Map<String, Value>, name: &str, text: &str| {
        content.insert(name.into(), json!(strip_html_content_to_text(text)));
    };
    if let Some(v) = overview.advertised_start.as_ref().filter(|s| !s.is_empty()) {
        doc.insert("advertised_start".into(), json!(v));
    }
    if let Some(v) = about_text("announcement") {
        doc.insert("announcement".into(), json!(v));
    }
    if let Some(v) = overview.start {
        put_datetime(&mut doc, "start", v);
    }
    if let Some(v) = overview.end {
        put_datetime(&mut doc, "end", v);
    }
    if let Some(v) = effort.filter(|s| !s.is_empty()) {
        doc.insert("effort".into(), json!(v));
    }
    if let Some(v) = display_name.filter(|s| !s.is_empty()) {
        analyse(&mut content, "display_name", &v);
    }
    if let Some(v) = about_text("overview") {
        analyse(&mut content, "overview", &v);
    }
    for name in ["title", "university"] {
        if let Some(v) = about_text(name) {
            analyse(&mut content, name, &v);
            doc.insert(name.into(), json!(v));
        }
    }
    analyse(&mut content, "number", &key.number);
    doc.insert("number".into(), json!(key.number));
    if let Some(v) = short_description.filter(|s| !s.is_empty()) {
        analyse(&mut content, "short_description", &v);
    }
    for name in [
        "description",
        "key_dates",
        "video",
        "course_staff_short",
        "course_staff_extended",
        "requirements",
        "syllabus",
        "textbook",
        "faq",
        "more_info",
        "ocw_links",
    ] {
        if let Some(v) = about_text(name) {
            analyse(&mut content, name, &v);
        }
    }
    if let Some(v) = overview.enrollment_start {
        put_datetime(&mut doc, "enrollment_start", v);
    }
    if let Some(v) = overview.enrollment_end {
        put_datetime(&mut doc, "enrollment_end", v);
    }
    doc.insert("org".into(), json!(key.org));
    if !modes.is_empty() {
        doc.insert("modes".into(), json!(modes));
    }
    if let Some(v) = overview.language.as_ref().filter(|s| !s.is_empty()) {
        doc.insert("language".into(), json!(v));
    }
    if overview.invitation_only {
        doc.insert("invitation_only".into(), json!(true));
    }
    if let Some(v) = overview
        .catalog_visibility
        .as_ref()
        .filter(|s| !s.is_empty())
    {
        doc.insert("catalog_visibility".into(), json!(v));
    }
    doc.insert("content".into(), Value::Object(content));
    Some(edx_search_document(doc))
}

/// The `courseware_content` documents of a course's published structure, as
/// `CoursewareSearchIndexer.index` builds them, in walk order.
pub fn courseware_documents(tree: &CourseTree, mut emit: impl FnMut(Value)) {
    let Some(key) = CourseKey::parse(&tree.course_id) else {
        return;
    };
    let unnamed = |b: &Block| {
        b.display_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "(Unnamed)".to_string())
    };
    tree.walk(|block, ancestors, start| {
        let Some((content, content_type, problem_types)) = index_dictionary(block) else {
            return;
        };
        let mut doc = Map::new();
        doc.insert("course".into(), json!(tree.course_id));
        doc.insert("org".into(), json!(key.org));
        doc.insert("content".into(), Value::Object(content));
        doc.insert("content_type".into(), json!(content_type));
        if let Some(types) = problem_types {
            doc.insert("problem_types".into(), json!(types));
        }
        doc.insert(
            "id".into(),
            json!(key.usage_key(&block.block_type, &block.block_id)),
        );
        put_datetime(&mut doc, "start_date", start);
        // `content_groups` is None without group configurations: dropped.
        let mut path: Vec<String> = ancestors.iter().map(|b| unnamed(b)).collect();
        path.push(unnamed(block));
        doc.insert("course_name".into(), json!(path[0]));
        let location: Vec<&String> = path.iter().skip(1).take(3).collect();
        doc.insert("location".into(), json!(location));
        emit(edx_search_document(doc));
    });
}

/// The `studio_content` documents of a course's blocks (every block below the course), as
/// `index_course` builds them, in walk order. `access_id` is the course's `SearchAccess` id.
pub fn studio_documents(tree: &CourseTree, access_id: Option<i64>, mut emit: impl FnMut(Value)) {
    let Some(key) = CourseKey::parse(&tree.course_id) else {
        return;
    };
    tree.walk(|block, ancestors, _start| {
        let usage_key = key.usage_key(&block.block_type, &block.block_id);
        let mut doc = Map::new();
        doc.insert("id".into(), json!(studio_id(&usage_key)));
        doc.insert("type".into(), json!("course_block"));
        doc.insert("usage_key".into(), json!(usage_key));
        doc.insert("block_id".into(), json!(block.block_id));
        doc.insert("display_name".into(), json!(studio_display_name(block)));
        doc.insert("block_type".into(), json!(block.block_type));
        doc.insert("context_key".into(), json!(tree.course_id));
        doc.insert("org".into(), json!(key.org));
        if let Some(id) = access_id {
            doc.insert("access_id".into(), json!(id));
        }
        let breadcrumbs: Vec<Value> = ancestors
            .iter()
            .map(|b| {
                let mut crumb = Map::new();
                crumb.insert("display_name".into(), json!(studio_display_name(b)));
                if b.block_type != "course" {
                    crumb.insert(
                        "usage_key".into(),
                        json!(key.usage_key(&b.block_type, &b.block_id)),
                    );
                }
                Value::Object(crumb)
            })
            .collect();
        doc.insert("breadcrumbs".into(), Value::Array(breadcrumbs));
        if let Some(edited) = block.edited_on {
            doc.insert("modified".into(), json!(timestamp(edited)));
        }
        // `_get_content_from_block`: index_dictionary without content_type, its `content`
        // flattened in without display_name.
        let mut content = Map::new();
        if let Some((inner, _type, problem_types)) = index_dictionary(block) {
            if let Some(types) = problem_types {
                content.insert("problem_types".into(), json!(types));
            }
            for (k, v) in inner {
                if k != "display_name" {
                    content.insert(k, v);
                }
            }
        }
        let description = match block.block_type.as_str() {
            "html" => content.get("html_content"),
            "problem" => content.get("capa_content"),
            _ => None,
        }
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
        doc.insert("content".into(), Value::Object(content));
        if let Some(d) = description {
            doc.insert("description".into(), json!(d));
        }
        // `searchable_doc_tags`: `{}` for an untagged block (tags are not read: see the docs).
        doc.insert("tags".into(), json!({}));
        emit(Value::Object(doc));
    });
}

/// A row of `forum_commentthread`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForumThread {
    pub id: i64,
    pub course_id: String,
    pub title: String,
    pub body: String,
    pub context: String,
    pub commentable_id: Option<String>,
}

/// A row of `forum_comment`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForumComment {
    pub id: i64,
    pub course_id: String,
    pub body: String,
    pub comment_thread_id: i64,
}

/// The forum's `comment_threads` document (`create_document(thread.doc_to_hash(), thread.id)`).
pub fn thread_document(thread: &ForumThread) -> Value {
    let id = thread.id.to_string();
    json!({
        "id": id,
        "_pk": id2pk(&id),
        "context": thread.context,
        "course_id": thread.course_id,
        "commentable_id": thread.commentable_id,
        "body": soup_text(&thread.body),
        "title": thread.title,
    })
}

/// The forum's `comments` document (`create_document(comment.doc_to_hash(), comment.id)`):
/// a comment has no title nor commentable id of its own, and its context is always `course`.
pub fn comment_document(comment: &ForumComment) -> Value {
    let id = comment.id.to_string();
    json!({
        "id": id,
        "_pk": id2pk(&id),
        "context": "course",
        "course_id": comment.course_id,
        "commentable_id": null,
        "body": soup_text(&comment.body),
        "title": null,
        "comment_thread_id": comment.comment_thread_id,
    })
}

#[cfg(test)]
mod tests;
