//! Row values between the wire and the target: fields of `LOAD DATA LOCAL INFILE` data and
//! literals for multi-row REPLACE statements; cursor encoding for the catalog, readable keys for
//! reports, and the canonical row digest that both sides compute identically.

use std::fmt::Write as _;

use mysql_async::Value;
use serde_json::json;

use crate::core::Cursor;

/// How a column's values are written as SQL literals, decided once from its declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnClass {
    /// Character data: escaped string literal in the connection's utf8mb4.
    Text,
    /// Bytes that must not be reinterpreted (binary strings, blobs, BIT, spatial): hex literal.
    Binary,
    /// DECIMAL: the server's exact text, unquoted.
    Decimal,
    /// DATE: the date part only.
    Date,
    /// DATETIME / TIMESTAMP.
    DateTime,
    /// YEAR: an integer on the wire, but in `LOAD DATA` text `0` would mean 2000, so it is
    /// written with four digits.
    Year,
    /// Everything else (integers, floats, YEAR, TIME): formatted from the typed value.
    Other,
}

impl ColumnClass {
    /// Classify by `information_schema.COLUMNS.DATA_TYPE`.
    pub fn from_data_type(data_type: &str) -> ColumnClass {
        match data_type.to_ascii_lowercase().as_str() {
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
            | "set" | "json" => ColumnClass::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit"
            | "geometry" | "point" | "linestring" | "polygon" | "multipoint"
            | "multilinestring" | "multipolygon" | "geometrycollection" | "geomcollection" => {
                ColumnClass::Binary
            }
            "decimal" | "numeric" => ColumnClass::Decimal,
            "date" => ColumnClass::Date,
            "datetime" | "timestamp" => ColumnClass::DateTime,
            "year" => ColumnClass::Year,
            _ => ColumnClass::Other,
        }
    }
}

/// Append `value` as a SQL literal to `out`.
pub fn push_literal(out: &mut String, value: &Value, class: ColumnClass) {
    match value {
        Value::NULL => out.push_str("NULL"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        // A FLOAT read as f32 is written as its exact double value so that no double rounding
        // happens on the way back in.
        Value::Float(f) => push_double(out, f64::from(*f)),
        Value::Double(d) => push_double(out, *d),
        Value::Bytes(b) => match class {
            ColumnClass::Binary => push_hex(out, b),
            ColumnClass::Decimal if b.iter().all(|c| b"0123456789.-+eE".contains(c)) => {
                out.push_str(std::str::from_utf8(b).unwrap_or("0"))
            }
            _ => push_escaped(out, b),
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            if class == ColumnClass::Date {
                let _ = write!(out, "'{y:04}-{mo:02}-{d:02}'");
            } else {
                let _ = write!(out, "'{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'");
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let _ = write!(out, "'{sign}{hours}:{mi:02}:{s:02}.{us:06}'");
        }
    }
}

fn push_double(out: &mut String, d: f64) {
    if d == 0.0 && d.is_sign_negative() {
        out.push_str("-0e0");
    } else {
        let _ = write!(out, "{d:e}");
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    out.push_str("X'");
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2 + 1);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out.push('\'');
}

/// A quoted string literal, escaped for a session without NO_BACKSLASH_ESCAPES. Bytes that are not
/// UTF-8 (impossible from a utf8mb4 session, but cheap to guard) fall back to a hex literal.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        push_hex(out, bytes);
        return;
    };
    out.reserve(text.len() + 2);
    out.push('\'');
    for ch in text.chars() {
        match ch {
            '\0' => out.push_str("\\0"),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// Append `value` as one field of `LOAD DATA ... CHARACTER SET binary FIELDS TERMINATED BY '\t'
/// ESCAPED BY '\\' LINES TERMINATED BY '\n'` data (no enclosing quotes): `\N` for NULL, every
/// other value as the bytes the server would print for it, with the escape character, tab,
/// newline, carriage return and NUL escaped. Without `ENCLOSED BY` the text `NULL` stays a string,
/// and an empty field is an empty string. Bytes are sent as they are (the load names the binary
/// character set), so binary strings, BLOBs, BIT and spatial values are never reinterpreted.
pub fn push_field(out: &mut Vec<u8>, value: &Value, class: ColumnClass) {
    match value {
        Value::NULL => out.extend_from_slice(b"\\N"),
        Value::Bytes(b) => push_field_bytes(out, b),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let _ = if class == ColumnClass::Date {
                write!(Raw(out), "{y:04}-{mo:02}-{d:02}")
            } else if *us == 0 {
                write!(Raw(out), "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            } else {
                write!(
                    Raw(out),
                    "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
                )
            };
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let _ = if *us == 0 {
                write!(Raw(out), "{sign}{hours}:{mi:02}:{s:02}")
            } else {
                write!(Raw(out), "{sign}{hours}:{mi:02}:{s:02}.{us:06}")
            };
        }
        Value::Int(y) if class == ColumnClass::Year => {
            let _ = write!(Raw(out), "{y:04}");
        }
        Value::UInt(y) if class == ColumnClass::Year => {
            let _ = write!(Raw(out), "{y:04}");
        }
        // Numbers never contain a character that needs escaping.
        other => {
            let mut s = String::new();
            push_literal(&mut s, other, class);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// `fmt::Write` straight into a byte buffer.
struct Raw<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_field_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 8);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Encode key values for the catalog.
pub fn encode_cursor(values: &[Value]) -> Cursor {
    Cursor(serde_json::Value::Array(
        values.iter().map(encode_value).collect(),
    ))
}

fn encode_value(v: &Value) -> serde_json::Value {
    match v {
        Value::NULL => serde_json::Value::Null,
        Value::Int(i) => json!({ "i": i }),
        Value::UInt(u) => json!({ "u": u }),
        Value::Float(f) => json!({ "f": f }),
        Value::Double(d) => json!({ "d": d }),
        Value::Bytes(b) => json!({ "b": hex::encode(b) }),
        Value::Date(y, mo, d, h, mi, s, us) => json!({ "dt": [y, mo, d, h, mi, s, us] }),
        Value::Time(neg, days, h, mi, s, us) => json!({ "tm": [neg, days, h, mi, s, us] }),
    }
}

/// Decode key values from the catalog; `None` when the cursor is not one of ours.
pub fn decode_cursor(cursor: &Cursor) -> Option<Vec<Value>> {
    cursor.0.as_array()?.iter().map(decode_value).collect()
}

fn decode_value(v: &serde_json::Value) -> Option<Value> {
    if v.is_null() {
        return Some(Value::NULL);
    }
    let obj = v.as_object()?;
    let (tag, val) = obj.iter().next()?;
    let num = |i: usize| val.get(i).and_then(|x| x.as_u64());
    Some(match tag.as_str() {
        "i" => Value::Int(val.as_i64()?),
        "u" => Value::UInt(val.as_u64()?),
        "f" => Value::Float(val.as_f64()? as f32),
        "d" => Value::Double(val.as_f64()?),
        "b" => Value::Bytes(hex::decode(val.as_str()?).ok()?),
        "dt" => Value::Date(
            num(0)? as u16,
            num(1)? as u8,
            num(2)? as u8,
            num(3)? as u8,
            num(4)? as u8,
            num(5)? as u8,
            num(6)? as u32,
        ),
        "tm" => Value::Time(
            val.get(0)?.as_bool()?,
            num(1)? as u32,
            num(2)? as u8,
            num(3)? as u8,
            num(4)? as u8,
            num(5)? as u32,
        ),
        _ => return None,
    })
}

/// A key value as a person reads it: numbers plain, text quoted, other bytes in hex.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(char::is_control) => format!("'{s}'"),
            _ => format!("0x{}", hex::encode(b)),
        },
        other => {
            let mut s = String::new();
            push_literal(&mut s, other, ColumnClass::Other);
            s
        }
    }
}

/// Feed one value into a row digest: a type tag and length-prefixed bytes, so that no two
/// different rows can produce the same byte stream.
pub fn hash_value(h: &mut blake3::Hasher, v: &Value) {
    match v {
        Value::NULL => {
            h.update(&[0]);
        }
        Value::Int(i) => {
            h.update(&[1]);
            h.update(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            // Same tag as Int when the value fits, so a signed/unsigned driver choice never differs.
            if let Ok(i) = i64::try_from(*u) {
                h.update(&[1]);
                h.update(&i.to_le_bytes());
            } else {
                h.update(&[2]);
                h.update(&u.to_le_bytes());
            }
        }
        Value::Float(f) => {
            h.update(&[3]);
            h.update(&f64::from(*f).to_bits().to_le_bytes());
        }
        Value::Double(d) => {
            h.update(&[3]);
            h.update(&d.to_bits().to_le_bytes());
        }
        Value::Bytes(b) => {
            h.update(&[4]);
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        Value::Date(y, mo, d, hh, mi, s, us) => {
            h.update(&[5]);
            h.update(&y.to_le_bytes());
            h.update(&[*mo, *d, *hh, *mi, *s]);
            h.update(&us.to_le_bytes());
        }
        Value::Time(neg, days, hh, mi, s, us) => {
            h.update(&[6, u8::from(*neg)]);
            h.update(&days.to_le_bytes());
            h.update(&[*hh, *mi, *s]);
            h.update(&us.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value, class: ColumnClass) -> String {
        let mut s = String::new();
        push_literal(&mut s, &v, class);
        s
    }

    #[test]
    fn text_literals_escape_what_mysql_interprets() {
        let v = Value::Bytes("a'b\\c\0d\ne\r\u{1a}🎓".as_bytes().to_vec());
        assert_eq!(lit(v, ColumnClass::Text), "'a\\'b\\\\c\\0d\\ne\\r\\Z🎓'");
    }

    #[test]
    fn binary_and_decimal_literals() {
        assert_eq!(
            lit(Value::Bytes(vec![0, 255]), ColumnClass::Binary),
            "X'00FF'"
        );
        assert_eq!(lit(Value::Bytes(vec![]), ColumnClass::Binary), "X''");
        let dec = Value::Bytes(b"-12345678901234567890.123456789012345678901234567890".to_vec());
        assert_eq!(
            lit(dec, ColumnClass::Decimal),
            "-12345678901234567890.123456789012345678901234567890"
        );
        // A decimal column never lets arbitrary text through unquoted.
        assert_eq!(
            lit(Value::Bytes(b"1;DROP".to_vec()), ColumnClass::Decimal),
            "'1;DROP'"
        );
    }

    #[test]
    fn floats_round_trip_through_their_literal() {
        for f in [0.1f32, 1e-38, 3.402_823_5e38, -1.5, 123_456.79] {
            let s = lit(Value::Float(f), ColumnClass::Other);
            let back: f64 = s.parse().unwrap();
            assert_eq!(back as f32, f, "{s}");
        }
        for d in [0.1f64, 1e-308, f64::MAX, 2.0f64.sqrt()] {
            let s = lit(Value::Double(d), ColumnClass::Other);
            assert_eq!(s.parse::<f64>().unwrap(), d, "{s}");
        }
    }

    #[test]
    fn dates_and_times() {
        let zero = Value::Date(0, 0, 0, 0, 0, 0, 0);
        assert_eq!(
            lit(zero.clone(), ColumnClass::DateTime),
            "'0000-00-00 00:00:00.000000'"
        );
        assert_eq!(lit(zero, ColumnClass::Date), "'0000-00-00'");
        let t = Value::Time(true, 1, 2, 3, 4, 5);
        assert_eq!(lit(t, ColumnClass::Other), "'-26:03:04.000005'");
    }

    fn field(v: Value, class: ColumnClass) -> Vec<u8> {
        let mut out = Vec::new();
        push_field(&mut out, &v, class);
        out
    }

    #[test]
    fn load_data_fields_escape_exactly_what_the_server_interprets() {
        assert_eq!(field(Value::NULL, ColumnClass::Text), b"\\N");
        // The strings NULL and \N, and the empty string, stay strings.
        assert_eq!(
            field(Value::Bytes(b"NULL".to_vec()), ColumnClass::Text),
            b"NULL"
        );
        assert_eq!(
            field(Value::Bytes(b"\\N".to_vec()), ColumnClass::Text),
            b"\\\\N"
        );
        assert_eq!(field(Value::Bytes(Vec::new()), ColumnClass::Text), b"");
        let raw = b"a\tb\nc\rd\0e\\f'g\"h\x1a\xff\xfe".to_vec();
        assert_eq!(
            field(Value::Bytes(raw), ColumnClass::Binary),
            b"a\\tb\\nc\\rd\\0e\\\\f'g\"h\x1a\xff\xfe"
        );
        let text = "Zoë 🎓 李".as_bytes().to_vec();
        assert_eq!(field(Value::Bytes(text.clone()), ColumnClass::Text), text);
        let dec = b"-12345678901234567890.123456789012345678901234567890".to_vec();
        assert_eq!(field(Value::Bytes(dec.clone()), ColumnClass::Decimal), dec);
    }

    #[test]
    fn load_data_fields_for_numbers_dates_and_times() {
        assert_eq!(field(Value::Int(-5), ColumnClass::Other), b"-5");
        assert_eq!(
            field(Value::UInt(u64::MAX), ColumnClass::Other),
            b"18446744073709551615"
        );
        assert_eq!(field(Value::Double(-0.0), ColumnClass::Other), b"-0e0");
        assert_eq!(field(Value::Int(0), ColumnClass::Year), b"0000");
        assert_eq!(field(Value::UInt(1901), ColumnClass::Year), b"1901");
        let d: f64 = String::from_utf8(field(Value::Double(0.1), ColumnClass::Other))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(d, 0.1);
        let zero = Value::Date(0, 0, 0, 0, 0, 0, 0);
        assert_eq!(field(zero.clone(), ColumnClass::Date), b"0000-00-00");
        assert_eq!(field(zero, ColumnClass::DateTime), b"0000-00-00 00:00:00");
        let frac = Value::Date(2024, 2, 29, 23, 59, 59, 999_999);
        assert_eq!(
            field(frac, ColumnClass::DateTime),
            b"2024-02-29 23:59:59.999999"
        );
        assert_eq!(
            field(Value::Time(true, 34, 22, 59, 59, 0), ColumnClass::Other),
            b"-838:59:59"
        );
        assert_eq!(
            field(Value::Time(false, 0, 0, 0, 0, 1), ColumnClass::Other),
            b"0:00:00.000001"
        );
    }

    #[test]
    fn cursors_round_trip() {
        let values = vec![
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Bytes(b"k\x00ey".to_vec()),
            Value::Date(2024, 2, 29, 23, 59, 59, 999_999),
            Value::Time(false, 0, 1, 2, 3, 4),
        ];
        let c = encode_cursor(&values);
        assert_eq!(decode_cursor(&c).unwrap(), values);
    }
}
