//! Reading the source's replication stream: commands as RESP arrays of bulk strings, each with
//! the bytes it takes in the stream (the replication offset counts bytes), and which keys a
//! command writes, from the source's own `COMMAND` table, so a follower can name what it
//! touched.

use std::collections::HashMap;

use redis::Value;

/// Longest single argument accepted from the stream (Redis' own `proto-max-bulk-len` cap).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most arguments accepted in one command.
const MAX_ARGS: usize = 16 * 1024 * 1024;

/// A damaged stream, named by what was wrong.
#[derive(Debug, PartialEq)]
pub struct Damaged(pub String);

/// A command's arguments (its name first) and the bytes it takes in the stream.
pub type Command = (Vec<Vec<u8>>, usize);

/// The next whole command at the start of `buf`; `Ok(None)` when `buf` holds only part of one.
pub fn next_command(buf: &[u8]) -> Result<Option<Command>, Damaged> {
    let Some((count, mut at)) = header(buf, 0, b'*')? else {
        return Ok(None);
    };
    if count > MAX_ARGS {
        return Err(Damaged(format!("a command of {count} arguments")));
    }
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some((len, start)) = header(buf, at, b'$')? else {
            return Ok(None);
        };
        if len > MAX_BULK {
            return Err(Damaged(format!("an argument of {len} bytes")));
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(Damaged("an argument not ended by CRLF".into()));
        }
        args.push(buf[start..end].to_vec());
        at = end + 2;
    }
    Ok(Some((args, at)))
}

/// `<kind><number>\r\n` at `at`: the number and where the next part starts.
fn header(buf: &[u8], at: usize, kind: u8) -> Result<Option<(usize, usize)>, Damaged> {
    let Some(&first) = buf.get(at) else {
        return Ok(None);
    };
    if first != kind {
        return Err(Damaged(format!(
            "expected {:?} at a command boundary, found byte {first:#04x}",
            kind as char
        )));
    }
    let Some(nl) = buf[at..].iter().position(|b| *b == b'\n') else {
        if buf.len() - at > 24 {
            return Err(Damaged("a length line without an end".into()));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..at + nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| {
            Damaged(format!(
                "unreadable length {:?}",
                String::from_utf8_lossy(line)
            ))
        })?;
    Ok(Some((n, at + nl + 1)))
}

/// A command as RESP, as it is sent to a server (for `REPLCONF ACK`).
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Where a command's keys are among its arguments (`COMMAND`'s first key, last key, step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeySpec {
    first: i64,
    last: i64,
    step: i64,
    /// The keys' places depend on other arguments (`ZUNIONSTORE`, `SORT ... STORE`).
    movable: bool,
}

/// Which keys of a command are known.
#[derive(Debug, PartialEq)]
pub enum Keys {
    These(Vec<Vec<u8>>),
    /// Not known from the table (a movable or unknown command): the database as a whole.
    Unknown,
}

/// The source's command table, by lower-case name.
#[derive(Debug, Default)]
pub struct KeySpecs(HashMap<String, KeySpec>);

impl KeySpecs {
    /// Read from the reply to `COMMAND` (RESP2 or RESP3 shapes).
    pub fn from_reply(reply: &Value) -> KeySpecs {
        let mut map = HashMap::new();
        let Value::Array(entries) = reply else {
            return KeySpecs(map);
        };
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let text = |v: &Value| match v {
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).to_ascii_lowercase()),
                Value::SimpleString(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            let Some(name) = parts.first().and_then(text) else {
                continue;
            };
            let movable = match parts.get(2) {
                Some(Value::Array(flags)) | Some(Value::Set(flags)) => {
                    flags.iter().filter_map(text).any(|f| f == "movablekeys")
                }
                _ => false,
            };
            let (Some(first), Some(last), Some(step)) =
                (int(parts.get(3)), int(parts.get(4)), int(parts.get(5)))
            else {
                continue;
            };
            map.insert(
                name,
                KeySpec {
                    first,
                    last,
                    step,
                    movable,
                },
            );
        }
        KeySpecs(map)
    }

    /// The keys `args` (name first) writes.
    pub fn keys(&self, args: &[Vec<u8>]) -> Keys {
        let Some(name) = args.first() else {
            return Keys::These(Vec::new());
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let Some(spec) = self.0.get(&name) else {
            return Keys::Unknown;
        };
        if spec.movable {
            return Keys::Unknown;
        }
        if spec.first <= 0 {
            return Keys::These(Vec::new());
        }
        let argc = args.len() as i64;
        let last = if spec.last < 0 {
            argc + spec.last
        } else {
            spec.last
        };
        let step = spec.step.max(1);
        let mut keys = Vec::new();
        let mut i = spec.first;
        while i <= last && i < argc {
            keys.push(args[i as usize].clone());
            i += step;
        }
        Keys::These(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn commands_are_read_whole_with_their_length_in_the_stream() {
        let set = encode(&[b"SET", b"k", b"v\r\n"]);
        let mut stream = set.clone();
        stream.extend(encode(&[b"PING"]));
        let (cmd, used) = next_command(&stream).unwrap().unwrap();
        assert_eq!(cmd, vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\n".to_vec()]);
        assert_eq!(used, set.len());
        let (cmd, used) = next_command(&stream[set.len()..]).unwrap().unwrap();
        assert_eq!((cmd, used), (args(&["PING"]), 14));
        for cut in 0..set.len() {
            assert_eq!(next_command(&set[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(next_command(b"+OK\r\n").is_err());
        assert!(next_command(b"*1\r\n$3\r\nabcXY").is_err());
    }

    #[test]
    fn keys_follow_the_command_table() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"mset".to_vec()),
                Value::Int(-3),
                Value::Array(vec![Value::SimpleString("write".into())]),
                Value::Int(1),
                Value::Int(-1),
                Value::Int(2),
            ]),
            Value::Array(vec![
                Value::BulkString(b"zunionstore".to_vec()),
                Value::Int(-4),
                Value::Array(vec![Value::SimpleString("movablekeys".into())]),
                Value::Int(1),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                Value::BulkString(b"flushall".to_vec()),
                Value::Int(-1),
                Value::Array(vec![]),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
        ]);
        let specs = KeySpecs::from_reply(&reply);
        assert_eq!(
            specs.keys(&args(&["MSET", "a", "1", "b", "2"])),
            Keys::These(args(&["a", "b"]))
        );
        assert_eq!(
            specs.keys(&args(&["ZUNIONSTORE", "d", "2", "a", "b"])),
            Keys::Unknown
        );
        assert_eq!(specs.keys(&args(&["FLUSHALL"])), Keys::These(vec![]));
        assert_eq!(specs.keys(&args(&["NOSUCH", "x"])), Keys::Unknown);
    }
}
