//! Where a MySQL source's binary log stands: the position a copy's consistent snapshot read at,
//! the server's current end, the files it still holds, and how positions compare, so that a
//! follower starts exactly where the copy's reads end and knows how far behind it is.

use std::cmp::Ordering;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::core::follow::StreamPosition;

/// A point in the source's binary log: a file and a byte offset in it (the start of the next
/// event to read), and the GTID of the last transaction before it where the server gave one
/// (informational: following resumes by file and offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl BinlogPosition {
    /// The position as the catalog keeps it.
    pub fn to_stream(&self) -> StreamPosition {
        StreamPosition(serde_json::json!({ "binlog": self }))
    }

    /// A position this store wrote; `None` for anything else.
    pub fn from_stream(position: &StreamPosition) -> Option<BinlogPosition> {
        serde_json::from_value(position.0.get("binlog")?.clone()).ok()
    }

    /// `mysql-bin.000042` → (`mysql-bin`, 42): the server numbers its files in order.
    fn file_sequence(&self) -> (&str, Option<u64>) {
        match self.file.rsplit_once('.') {
            Some((base, n)) => (base, n.parse().ok()),
            None => (self.file.as_str(), None),
        }
    }

    /// Order within one server's log: by file number, then offset. Files of different base
    /// names (the server's log was renamed) compare by name, which is the best there is.
    pub fn order(&self, other: &BinlogPosition) -> Ordering {
        let (a_base, a_n) = self.file_sequence();
        let (b_base, b_n) = other.file_sequence();
        let files = match (a_base == b_base, a_n, b_n) {
            (true, Some(a), Some(b)) => a.cmp(&b),
            _ => self.file.cmp(&other.file),
        };
        files.then(self.pos.cmp(&other.pos))
    }

    /// The earlier of two positions.
    pub fn earliest(self, other: BinlogPosition) -> BinlogPosition {
        if other.order(&self) == Ordering::Less {
            other
        } else {
            self
        }
    }

    /// Display form: `mysql-bin.000003:1234`.
    pub fn show(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }
}

/// Whether the server writes a binary log at all (`log_bin`).
pub async fn log_bin(conn: &mut Conn) -> mysql_async::Result<bool> {
    let on: Option<Option<String>> = conn.query_first("SELECT @@GLOBAL.log_bin").await?;
    Ok(on
        .flatten()
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON")))
}

/// Whether the server is MariaDB (whose snapshot reports its binlog position, and whose GTIDs
/// and replication protocol differ from MySQL's).
pub async fn is_mariadb(conn: &mut Conn) -> mysql_async::Result<bool> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(version.is_some_and(|v| v.to_ascii_lowercase().contains("mariadb")))
}

/// The end of the server's binary log now: `SHOW BINARY LOG STATUS` (MySQL 8.2 and later),
/// else `SHOW MASTER STATUS` (MySQL 8.0, MariaDB), with `gtid_executed` (MySQL) or
/// `gtid_binlog_pos` (MariaDB). `None` when the server has no binary log. Needs REPLICATION
/// CLIENT (MySQL) or BINLOG MONITOR (MariaDB).
pub async fn head(conn: &mut Conn) -> mysql_async::Result<Option<BinlogPosition>> {
    let mut last_err = None;
    for sql in ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"] {
        match conn.query_first::<mysql_async::Row, _>(sql).await {
            Ok(row) => {
                let Some(row) = row else { return Ok(None) };
                let file: Option<String> = row.get(0);
                let pos: Option<u64> = row.get(1);
                let (Some(file), Some(pos)) = (file, pos) else {
                    return Ok(None);
                };
                let gtid = gtid_now(conn).await;
                return Ok(Some(BinlogPosition { file, pos, gtid }));
            }
            // 1064: the statement does not exist on this server; try the older one.
            Err(mysql_async::Error::Server(e)) if e.code == 1064 => {
                last_err = Some(mysql_async::Error::Server(e));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.expect("one statement was tried"))
}

/// The server's executed GTIDs, where it keeps them (MySQL with GTIDs on, MariaDB).
async fn gtid_now(conn: &mut Conn) -> Option<String> {
    for sql in [
        "SELECT @@GLOBAL.gtid_binlog_pos",
        "SELECT @@GLOBAL.gtid_executed",
    ] {
        if let Ok(Some(Some(g))) = conn.query_first::<Option<String>, _>(sql).await {
            if !g.trim().is_empty() {
                return Some(g.trim().replace('\n', ""));
            }
        }
    }
    None
}

/// MariaDB: the binlog position the consistent snapshot of this connection's transaction
/// (`START TRANSACTION WITH CONSISTENT SNAPSHOT`) reads at, exact without any lock. `None` on
/// MySQL, which has no such status, or when the binary log is off.
pub async fn snapshot_position(conn: &mut Conn) -> mysql_async::Result<Option<BinlogPosition>> {
    let rows: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
        .await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let (Some(file), Some(pos)) = (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
    else {
        return Ok(None);
    };
    let Ok(pos) = pos.parse::<u64>() else {
        return Ok(None);
    };
    if file.is_empty() {
        return Ok(None);
    }
    Ok(Some(BinlogPosition {
        file,
        pos,
        gtid: None,
    }))
}

/// The binary log files the server still holds, with their sizes, oldest first.
pub async fn files(conn: &mut Conn) -> mysql_async::Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// Bytes of binary log between `from` and the end of `files` (the server's list), when `from`'s
/// file is among them.
pub fn bytes_behind(from: &BinlogPosition, files: &[(String, u64)]) -> Option<u64> {
    let at = files.iter().position(|(f, _)| *f == from.file)?;
    let rest: u64 = files[at + 1..].iter().map(|(_, size)| size).sum();
    Some(files[at].1.saturating_sub(from.pos) + rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: file.into(),
            pos,
            gtid: None,
        }
    }

    #[test]
    fn positions_order_by_file_number_then_offset() {
        assert_eq!(
            at("bin.000009", 900).order(&at("bin.000010", 4)),
            Ordering::Less
        );
        assert_eq!(
            at("bin.000010", 900).order(&at("bin.000010", 4)),
            Ordering::Greater
        );
        // Numbers past the padding still order numerically.
        assert_eq!(
            at("bin.999999", 4).order(&at("bin.1000000", 4)),
            Ordering::Less
        );
        let early = at("bin.000002", 77);
        assert_eq!(at("bin.000003", 4).earliest(early.clone()), early);
        assert_eq!(early.clone().earliest(at("bin.000003", 4)), early);
    }

    #[test]
    fn positions_round_trip_through_the_catalog_form() {
        let p = BinlogPosition {
            file: "mysql-bin.000001".into(),
            pos: 1234,
            gtid: Some("0-1-55".into()),
        };
        assert_eq!(BinlogPosition::from_stream(&p.to_stream()), Some(p));
        let other = StreamPosition(serde_json::json!({"offset": 5}));
        assert_eq!(BinlogPosition::from_stream(&other), None);
    }

    #[test]
    fn bytes_behind_counts_the_rest_of_the_file_and_the_later_files() {
        let files = vec![
            ("bin.000001".to_string(), 1000),
            ("bin.000002".to_string(), 500),
            ("bin.000003".to_string(), 300),
        ];
        assert_eq!(bytes_behind(&at("bin.000002", 400), &files), Some(400));
        assert_eq!(bytes_behind(&at("bin.000003", 300), &files), Some(0));
        assert_eq!(bytes_behind(&at("bin.000000", 4), &files), None);
    }
}
