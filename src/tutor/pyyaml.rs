//! The parts of PyYAML 6 that decide how Tutor's `config.yml` reads and writes, ported to Rust.
//!
//! Tutor saves its configuration with `yaml.dump(config, default_flow_style=False,
//! allow_unicode=True)` and reads it with PyYAML's YAML 1.1 `SafeLoader`. Two things follow:
//! - to edit `config.yml` without reformatting it, a new value must be written exactly as PyYAML
//!   would write it (plain, single-quoted or double-quoted, folded at 80 columns), which is what
//!   [`emit_entry`] does, a line-for-line port of `yaml.emitter.Emitter`'s scalar writers;
//! - a plain scalar means what YAML 1.1 says (`yes` is a boolean, `0o17` is a string), not what
//!   `serde_yaml`'s YAML 1.2 says, which is what [`resolve_plain`] decides.

use serde_yaml::Value;

/// The tag PyYAML's implicit resolver gives a plain scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Implicit {
    Str,
    Bool,
    Int,
    Float,
    Null,
    /// Timestamps, `<<` and `=`: never a string when plain, and never produced by offload.
    Other,
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn all_in(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.bytes().all(allowed)
}

fn strip_sign(s: &str) -> &str {
    s.strip_prefix(['-', '+']).unwrap_or(s)
}

/// `[0-5]?[0-9]`: one sexagesimal segment.
fn sexagesimal_segment(s: &str) -> bool {
    match s.as_bytes() {
        [d] => d.is_ascii_digit(),
        [a, b] => (b'0'..=b'5').contains(a) && b.is_ascii_digit(),
        _ => false,
    }
}

/// `[1-9][0-9_]*(?::[0-5]?[0-9])+` (already unsigned).
fn is_base60_int(s: &str) -> bool {
    let mut parts = s.split(':');
    let head = parts.next().unwrap_or("");
    let tail: Vec<&str> = parts.collect();
    !tail.is_empty()
        && head
            .as_bytes()
            .first()
            .is_some_and(|b| (b'1'..=b'9').contains(b))
        && all_in(head, |b| b.is_ascii_digit() || b == b'_')
        && tail.iter().all(|p| sexagesimal_segment(p))
}

fn is_yaml11_int(s: &str) -> bool {
    let u = strip_sign(s);
    if let Some(rest) = u.strip_prefix("0b") {
        return all_in(rest, |b| b == b'0' || b == b'1' || b == b'_');
    }
    if let Some(rest) = u.strip_prefix("0x") {
        return all_in(rest, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if let Some(rest) = u.strip_prefix('0') {
        // `0` alone, or `0[0-7_]+` (octal).
        return rest.is_empty() || all_in(rest, |b| (b'0'..=b'7').contains(&b) || b == b'_');
    }
    if u.as_bytes()
        .first()
        .is_some_and(|b| (b'1'..=b'9').contains(b))
        && all_in(u, |b| b.is_ascii_digit() || b == b'_')
    {
        return true;
    }
    is_base60_int(u)
}

/// `(?:[eE][-+][0-9]+)?` at the end of a float: returns the part before it.
fn strip_exponent(s: &str) -> Option<&str> {
    match s.find(['e', 'E']) {
        None => Some(s),
        Some(i) => {
            let exp = &s[i + 1..];
            let ok = exp.len() >= 2 && exp.starts_with(['-', '+']) && digits(&exp[1..]);
            ok.then_some(&s[..i])
        }
    }
}

fn is_yaml11_float(s: &str) -> bool {
    if matches!(s, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let u = strip_sign(s);
    if matches!(u, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    // `\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?`, only without a sign.
    if let Some(rest) = s.strip_prefix('.') {
        if let Some(mantissa) = strip_exponent(rest) {
            if mantissa.as_bytes().first().is_some_and(u8::is_ascii_digit)
                && all_in(mantissa, |b| b.is_ascii_digit() || b == b'_')
            {
                return true;
            }
        }
    }
    // `[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?`
    if let Some(mantissa) = strip_exponent(u) {
        if let Some((int, frac)) = mantissa.split_once('.') {
            if int.as_bytes().first().is_some_and(u8::is_ascii_digit)
                && all_in(int, |b| b.is_ascii_digit() || b == b'_')
                && frac.bytes().all(|b| b.is_ascii_digit() || b == b'_')
            {
                return true;
            }
        }
    }
    // `[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*`
    if let Some((head, frac)) = u.rsplit_once('.') {
        let mut parts = head.split(':');
        let first = parts.next().unwrap_or("");
        let segments: Vec<&str> = parts.collect();
        return !segments.is_empty()
            && first.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && all_in(first, |b| b.is_ascii_digit() || b == b'_')
            && segments.iter().all(|p| sexagesimal_segment(p))
            && frac.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    }
    false
}

/// Takes 1 or 2 ASCII digits from the front; returns the rest.
fn take_digits(s: &str, min: usize, max: usize) -> Option<&str> {
    let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
    (n >= min && !s[n..].starts_with(|c: char| c.is_ascii_digit())).then(|| &s[n..])
}

fn is_yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [&s[..4], &s[5..7], &s[8..]].iter().all(|p| digits(p))
    {
        return true;
    }
    let parse = || -> Option<()> {
        let rest = take_digits(s, 4, 4)?.strip_prefix('-')?;
        let rest = take_digits(rest, 1, 2)?.strip_prefix('-')?;
        let rest = take_digits(rest, 1, 2)?;
        let rest = match rest.strip_prefix(['T', 't']) {
            Some(r) => r,
            None => {
                let r = rest.trim_start_matches([' ', '\t']);
                (r.len() < rest.len()).then_some(r)?
            }
        };
        let rest = take_digits(rest, 1, 2)?.strip_prefix(':')?;
        let rest = take_digits(rest, 2, 2)?.strip_prefix(':')?;
        let mut rest = take_digits(rest, 2, 2)?;
        if let Some(r) = rest.strip_prefix('.') {
            rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() || rest == "Z" {
            return Some(());
        }
        let rest = take_digits(rest.strip_prefix(['-', '+'])?, 1, 2)?;
        if rest.is_empty() {
            return Some(());
        }
        take_digits(rest.strip_prefix(':')?, 2, 2)?
            .is_empty()
            .then_some(())
    };
    // A plain scalar has no surrounding whitespace, so a trailing blank never matches.
    !s.ends_with([' ', '\t']) && parse().is_some()
}

/// PyYAML's `Resolver.resolve(ScalarNode, value, (True, False))`.
fn implicit_tag(s: &str) -> Implicit {
    // Python's `$` also matches before one final newline.
    let t = s.strip_suffix('\n').unwrap_or(s);
    let first = s.chars().next();
    match first {
        None => Implicit::Null,
        Some('y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O')
            if matches!(
                t,
                "yes"
                    | "Yes"
                    | "YES"
                    | "no"
                    | "No"
                    | "NO"
                    | "true"
                    | "True"
                    | "TRUE"
                    | "false"
                    | "False"
                    | "FALSE"
                    | "on"
                    | "On"
                    | "ON"
                    | "off"
                    | "Off"
                    | "OFF"
            ) =>
        {
            Implicit::Bool
        }
        Some('-' | '+' | '0'..='9' | '.') if is_yaml11_float(t) => Implicit::Float,
        Some('-' | '+' | '0'..='9') if is_yaml11_int(t) => Implicit::Int,
        Some('<') if t == "<<" => Implicit::Other,
        Some('~' | 'n' | 'N') if matches!(t, "~" | "null" | "Null" | "NULL") => Implicit::Null,
        Some('0'..='9') if is_yaml11_timestamp(t) => Implicit::Other,
        Some('=') if t == "=" => Implicit::Other,
        Some('!' | '&' | '*') if t.len() == 1 => Implicit::Other,
        _ => Implicit::Str,
    }
}

fn construct_int(s: &str) -> Option<i64> {
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    let (neg, u) = match cleaned.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let magnitude = if u == "0" {
        0
    } else if let Some(r) = u.strip_prefix("0b") {
        i64::from_str_radix(r, 2).ok()?
    } else if let Some(r) = u.strip_prefix("0x") {
        i64::from_str_radix(r, 16).ok()?
    } else if let Some(r) = u.strip_prefix('0') {
        i64::from_str_radix(r, 8).ok()?
    } else if u.contains(':') {
        u.split(':').try_fold(0i64, |acc, part| {
            acc.checked_mul(60)?.checked_add(part.parse::<i64>().ok()?)
        })?
    } else {
        u.parse().ok()?
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn construct_float(s: &str) -> Option<f64> {
    let cleaned: String = s
        .chars()
        .filter(|&c| c != '_')
        .collect::<String>()
        .to_lowercase();
    let (neg, u) = match cleaned.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let magnitude = if u == ".inf" {
        f64::INFINITY
    } else if u == ".nan" {
        f64::NAN
    } else if u.contains(':') {
        u.split(':').try_fold(0f64, |acc, part| {
            Some(acc * 60.0 + part.parse::<f64>().ok()?)
        })?
    } else {
        u.parse().ok()?
    };
    Some(if neg { -magnitude } else { magnitude })
}

/// The value PyYAML's `SafeLoader` gives a plain (unquoted) scalar.
///
/// Timestamps stay strings (Tutor prints them back as text); integers beyond `i64` too.
pub(crate) fn resolve_plain(s: &str) -> Value {
    match implicit_tag(s) {
        Implicit::Null => Value::Null,
        Implicit::Bool => Value::Bool(matches!(
            s.to_ascii_lowercase().as_str(),
            "yes" | "true" | "on"
        )),
        Implicit::Int => construct_int(s)
            .map(Value::from)
            .unwrap_or_else(|| Value::String(s.to_owned())),
        Implicit::Float => construct_float(s)
            .map(Value::from)
            .unwrap_or_else(|| Value::String(s.to_owned())),
        Implicit::Str | Implicit::Other => Value::String(s.to_owned()),
    }
}

/// Why a value cannot be written the way Tutor would write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EmitError {
    /// Keys must be plain identifiers that PyYAML writes unquoted on one line.
    Key,
    /// Floats, mappings, tagged values and nested lists are never written by offload.
    Value(&'static str),
}

const BEST_WIDTH: usize = 80;
const BEST_INDENT: usize = 2;

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank_or_break(c: char) -> bool {
    matches!(c, '\0' | ' ' | '\t' | '\r') || is_break(c)
}

struct Analysis {
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

/// `Emitter.analyze_scalar` with `allow_unicode=True`, keeping what block context needs.
fn analyze(s: &[char]) -> Analysis {
    if s.is_empty() {
        return Analysis {
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let (mut leading_space, mut leading_break) = (false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let text: String = s.iter().collect();
    if text.starts_with("---") || text.starts_with("...") {
        block_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = s.len() == 1 || is_blank_or_break(s[1]);
    let (mut previous_space, mut previous_break) = (false, false);
    for (index, &ch) in s.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                block_indicators = true;
            }
            if (ch == '?' || ch == ':' || ch == '-') && followed_by_whitespace {
                block_indicators = true;
            }
        } else if (ch == ':' && followed_by_whitespace) || (ch == '#' && preceded_by_whitespace) {
            block_indicators = true;
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || ('\x20'..='\x7e').contains(&ch)) {
            let unicode = (ch == '\u{85}'
                || ('\u{a0}'..='\u{d7ff}').contains(&ch)
                || ('\u{e000}'..='\u{fffd}').contains(&ch)
                || ('\u{10000}'..'\u{10ffff}').contains(&ch))
                && ch != '\u{feff}';
            if !unicode {
                special_characters = true;
            }
        }
        if ch == ' ' {
            leading_space |= index == 0;
            trailing_space |= index == s.len() - 1;
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            leading_break |= index == 0;
            trailing_break |= index == s.len() - 1;
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank_or_break(ch);
        followed_by_whitespace = index + 2 >= s.len() || is_blank_or_break(s[index + 2]);
    }
    let mut allow_block_plain = true;
    let mut allow_single_quoted = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        allow_block_plain = false;
    }
    if break_space {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if space_break || special_characters {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if line_breaks || block_indicators {
        allow_block_plain = false;
    }
    Analysis {
        allow_block_plain,
        allow_single_quoted,
    }
}

/// The emitter state that the scalar writers read and update (`column`, `whitespace`,
/// `indention`), writing into `out`.
struct Writer {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
    indent: usize,
}

impl Writer {
    fn new() -> Self {
        Writer {
            out: String::new(),
            column: 0,
            whitespace: true,
            indention: true,
            indent: 0,
        }
    }

    fn write(&mut self, data: &str) {
        self.column += data.chars().count();
        self.out.push_str(data);
    }

    fn write_chars(&mut self, data: &[char]) {
        self.column += data.len();
        self.out.extend(data);
    }

    fn write_indicator(&mut self, indicator: &str, need_whitespace: bool, indention: bool) {
        if !self.whitespace && need_whitespace {
            self.write(" ");
        }
        self.write(indicator);
        self.whitespace = false;
        self.indention = self.indention && indention;
    }

    fn write_indent(&mut self) {
        let indent = self.indent;
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.write(&pad);
        }
    }

    fn write_line_break(&mut self, br: Option<char>) {
        self.out.push(br.unwrap_or('\n'));
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
    }

    /// `Emitter.write_plain(text, split=True)`.
    fn write_plain(&mut self, text: &[char]) {
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write(" ");
        }
        self.whitespace = false;
        self.indention = false;
        let (mut spaces, mut breaks) = (false, false);
        let mut start = 0;
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(&text[start..end]);
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
        }
    }

    /// The line breaks of a quoted or plain scalar: an extra one before a leading `\n`.
    fn write_breaks(&mut self, brs: &[char]) {
        if brs[0] == '\n' {
            self.write_line_break(None);
        }
        for &br in brs {
            self.write_line_break((br != '\n').then_some(br));
        }
        self.write_indent();
    }

    /// `Emitter.write_single_quoted(text, split=True)`.
    fn write_single_quoted(&mut self, text: &[char]) {
        self.write_indicator("'", true, false);
        let (mut spaces, mut breaks) = (false, false);
        let mut start = 0;
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    self.write_breaks(&text[start..end]);
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || c == '\'' || is_break(c)) && start < end {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
        }
        self.write_indicator("'", false, false);
    }

    /// `Emitter.write_double_quoted(text, split=True)` with `allow_unicode=True`.
    fn write_double_quoted(&mut self, text: &[char]) {
        self.write_indicator("\"", true, false);
        let mut start = 0;
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            let escape = match ch {
                None => true,
                Some(c) => {
                    matches!(
                        c,
                        '"' | '\\' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
                    ) || !(('\x20'..='\x7e').contains(&c)
                        || ('\u{a0}'..='\u{d7ff}').contains(&c)
                        || ('\u{e000}'..='\u{fffd}').contains(&c))
                }
            };
            if escape {
                if start < end {
                    self.write_chars(&text[start..end]);
                    start = end;
                }
                if let Some(c) = ch {
                    let data = match c {
                        '\0' => "\\0".to_owned(),
                        '\x07' => "\\a".to_owned(),
                        '\x08' => "\\b".to_owned(),
                        '\x09' => "\\t".to_owned(),
                        '\x0a' => "\\n".to_owned(),
                        '\x0b' => "\\v".to_owned(),
                        '\x0c' => "\\f".to_owned(),
                        '\x0d' => "\\r".to_owned(),
                        '\x1b' => "\\e".to_owned(),
                        '"' => "\\\"".to_owned(),
                        '\\' => "\\\\".to_owned(),
                        '\u{85}' => "\\N".to_owned(),
                        '\u{a0}' => "\\_".to_owned(),
                        '\u{2028}' => "\\L".to_owned(),
                        '\u{2029}' => "\\P".to_owned(),
                        c if (c as u32) <= 0xff => format!("\\x{:02X}", c as u32),
                        c if (c as u32) <= 0xffff => format!("\\u{:04X}", c as u32),
                        c => format!("\\U{:08X}", c as u32),
                    };
                    self.write(&data);
                    start = end + 1;
                }
            }
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                // `end - start` is -1 right after an escape, as in Python.
                && (self.column + end) as isize - start as isize > BEST_WIDTH as isize
            {
                let mut data: String = text[start.min(end)..end].iter().collect();
                data.push('\\');
                if start < end {
                    start = end;
                }
                self.write(&data);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text[start] == ' ' {
                    self.write("\\");
                }
            }
        }
        self.write_indicator("\"", false, false);
    }

    /// `Emitter.process_scalar` for a string in block context, not as a simple key.
    fn write_str(&mut self, s: &str) {
        let text: Vec<char> = s.chars().collect();
        let analysis = analyze(&text);
        self.indent = BEST_INDENT;
        if implicit_tag(s) == Implicit::Str && analysis.allow_block_plain {
            self.write_plain(&text);
        } else if analysis.allow_single_quoted {
            self.write_single_quoted(&text);
        } else {
            self.write_double_quoted(&text);
        }
    }

    /// A non-string scalar: PyYAML writes these plain, as their YAML 1.1 spelling.
    fn write_scalar(&mut self, value: &Value) -> Result<(), EmitError> {
        self.indent = BEST_INDENT;
        match value {
            Value::String(s) => {
                self.write_str(s);
                Ok(())
            }
            Value::Null => {
                self.write_plain(&['n', 'u', 'l', 'l']);
                Ok(())
            }
            Value::Bool(b) => {
                let text: Vec<char> = if *b { "true" } else { "false" }.chars().collect();
                self.write_plain(&text);
                Ok(())
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                let text: Vec<char> = n.to_string().chars().collect();
                self.write_plain(&text);
                Ok(())
            }
            Value::Number(_) => Err(EmitError::Value("a floating-point number")),
            Value::Sequence(_) => Err(EmitError::Value("a nested list")),
            Value::Mapping(_) => Err(EmitError::Value("a mapping")),
            Value::Tagged(_) => Err(EmitError::Value("a tagged value")),
        }
    }
}

/// Whether PyYAML writes `key` as a plain one-line simple key, the only keys offload edits.
pub(crate) fn is_plain_key(key: &str) -> bool {
    let text: Vec<char> = key.chars().collect();
    !key.is_empty()
        && text.len() < 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && implicit_tag(key) == Implicit::Str
        && analyze(&text).allow_block_plain
}

/// One top-level `key: value` entry of a block mapping, exactly as `yaml.dump(...,
/// default_flow_style=False, allow_unicode=True)` writes it, ending with a newline.
pub(crate) fn emit_entry(key: &str, value: &Value) -> Result<String, EmitError> {
    if !is_plain_key(key) {
        return Err(EmitError::Key);
    }
    let mut w = Writer::new();
    w.write(key);
    w.whitespace = false;
    w.indention = false;
    w.write_indicator(":", false, false);
    match value {
        Value::Sequence(items) if items.is_empty() => {
            w.write_indicator("[", true, false);
            w.write_indicator("]", false, false);
        }
        Value::Sequence(items) => {
            for item in items {
                w.indent = 0;
                w.write_indent();
                w.write_indicator("-", true, true);
                w.write_scalar(item)?;
            }
        }
        scalar => w.write_scalar(scalar)?,
    }
    w.out.push('\n');
    Ok(w.out)
}

#[cfg(test)]
mod tests;
