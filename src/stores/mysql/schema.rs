//! What the MySQL store knows about a table (columns, key, how to select and write it), and
//! the DDL statements it reads from the source and replays on the target.

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::values::ColumnClass;

/// Quote an identifier with backticks.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quote a string as a SQL literal (for DDL and account statements that take no parameters).
pub fn quote(text: &str) -> String {
    let mut out = String::new();
    super::values::push_literal(
        &mut out,
        &mysql_async::Value::Bytes(text.as_bytes().to_vec()),
        ColumnClass::Text,
    );
    out
}

/// Databases that belong to the server itself and are never copied.
pub const SYSTEM_DATABASES: [&str; 4] =
    ["mysql", "sys", "performance_schema", "information_schema"];

/// A column as copied: its name and how its values are written.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub class: ColumnClass,
    /// Generated columns are read (for digests and keys) but never written.
    pub generated: bool,
    /// Whether `LOAD DATA` must convert this column's value from utf8mb4 (the copy session's
    /// character set) rather than store the bytes as they come: text in another character set,
    /// and MySQL 8's JSON type, which refuses binary strings.
    pub convert: bool,
}

/// A table's copy plan: the columns read, the key used to walk it, and the statement prefixes.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub columns: Vec<Column>,
    /// Positions in `columns` of the key that orders the walk (primary key, or a unique key on
    /// NOT NULL columns); empty for a keyless table.
    pub key: Vec<usize>,
    /// `db`.`table`
    pub qualified: String,
    /// `a`, `b`, ... in `columns` order.
    pub select_list: String,
    /// `REPLACE INTO db.t (writable columns) VALUES ` (or INSERT for keyless tables).
    pub insert_prefix: String,
    /// `LOAD DATA LOCAL INFILE ... REPLACE INTO TABLE db.t ...` for the data [`push_field`]
    /// writes (without REPLACE for keyless tables).
    ///
    /// [`push_field`]: super::values::push_field
    pub load_sql: String,
}

impl TableInfo {
    /// Position and class of every column the copy writes (all but generated ones).
    pub fn writable(&self) -> Vec<(usize, ColumnClass)> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.generated)
            .map(|(i, c)| (i, c.class))
            .collect()
    }

    /// Read a table's columns and best key from `information_schema`.
    pub async fn load(conn: &mut Conn, db: &str, table: &str) -> mysql_async::Result<TableInfo> {
        let cols: Vec<(String, String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, EXTRA, CHARACTER_SET_NAME FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .await?;
        let columns: Vec<Column> = cols
            .into_iter()
            .map(|(name, data_type, extra, charset)| {
                let extra = extra.to_ascii_uppercase();
                let class = ColumnClass::from_data_type(&data_type);
                Column {
                    name,
                    class,
                    generated: extra.contains("GENERATED")
                        || extra.contains("VIRTUAL")
                        || extra.contains("PERSISTENT")
                        || extra.contains("STORED"),
                    convert: data_type.eq_ignore_ascii_case("json")
                        || (class == ColumnClass::Text
                            && !charset.as_deref().is_some_and(same_bytes_as_utf8mb4)),
                }
            })
            .collect();
        // Candidate keys: the primary key first, then unique keys whose columns are all NOT NULL.
        let keys: Vec<(String, String, i64, String)> = conn
            .exec(
                "SELECT s.INDEX_NAME, s.COLUMN_NAME, s.SEQ_IN_INDEX, c.IS_NULLABLE
                 FROM information_schema.STATISTICS s
                 JOIN information_schema.COLUMNS c
                   ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME
                  AND c.COLUMN_NAME = s.COLUMN_NAME
                 WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.NON_UNIQUE = 0
                   AND s.SUB_PART IS NULL
                 ORDER BY (s.INDEX_NAME = 'PRIMARY') DESC, s.INDEX_NAME, s.SEQ_IN_INDEX",
                (db, table),
            )
            .await?;
        let mut key: Vec<usize> = Vec::new();
        let mut current: Option<String> = None;
        let mut candidate: Vec<usize> = Vec::new();
        let mut usable = true;
        let finish = |candidate: &mut Vec<usize>, usable: bool, key: &mut Vec<usize>| {
            if key.is_empty() && usable && !candidate.is_empty() {
                *key = std::mem::take(candidate);
            }
            candidate.clear();
        };
        for (index, column, _, nullable) in keys {
            if current.as_deref() != Some(index.as_str()) {
                finish(&mut candidate, usable, &mut key);
                current = Some(index);
                usable = true;
            }
            match columns.iter().position(|c| c.name == column) {
                Some(pos) if nullable == "NO" => candidate.push(pos),
                _ => usable = false,
            }
        }
        finish(&mut candidate, usable, &mut key);

        let qualified = format!("{}.{}", ident(db), ident(table));
        let select_list = columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let writable = columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let verb = if key.is_empty() { "INSERT" } else { "REPLACE" };
        let insert_prefix = format!("{verb} INTO {qualified} ({writable}) VALUES ");
        let load_sql = load_data_sql(&qualified, &columns, !key.is_empty());
        Ok(TableInfo {
            columns,
            key,
            qualified,
            select_list,
            insert_prefix,
            load_sql,
        })
    }

    pub fn keyless(&self) -> bool {
        self.key.is_empty()
    }

    /// The walk key's values in a row (all its columns), `None` for a keyless table.
    pub fn key_of(&self, row: &[mysql_async::Value]) -> Option<Vec<mysql_async::Value>> {
        (!self.keyless()).then(|| self.key.iter().map(|&k| row[k].clone()).collect())
    }

    fn key_name(&self, i: usize) -> String {
        ident(&self.columns[self.key[i]].name)
    }

    /// `WHERE` conditions and their parameters for keys after `after` and up to `upto`.
    pub fn range_condition(
        &self,
        after: Option<&[mysql_async::Value]>,
        upto: Option<&[mysql_async::Value]>,
    ) -> (String, Vec<mysql_async::Value>) {
        let mut parts = Vec::new();
        let mut params = Vec::new();
        if let Some(after) = after {
            let (sql, p) = self.compare(after, ">", false);
            parts.push(sql);
            params.extend(p);
        }
        if let Some(upto) = upto {
            let (sql, p) = self.compare(upto, "<", true);
            parts.push(sql);
            params.extend(p);
        }
        if parts.is_empty() {
            (String::new(), params)
        } else {
            (format!(" WHERE {}", parts.join(" AND ")), params)
        }
    }

    /// Lexicographic comparison of the key with `values`: `op` is `>` or `<`, `or_equal` adds the
    /// all-equal case. The leading column gets a plain range condition the optimizer can use.
    fn compare(
        &self,
        values: &[mysql_async::Value],
        op: &str,
        or_equal: bool,
    ) -> (String, Vec<mysql_async::Value>) {
        let n = self.key.len().min(values.len());
        if n == 1 {
            let op = if or_equal { "<=" } else { op };
            return (
                format!("{} {op} ?", self.key_name(0)),
                vec![values[0].clone()],
            );
        }
        let mut params = Vec::new();
        let lead_op = if op == ">" { ">=" } else { "<=" };
        let mut sql = format!("{} {lead_op} ? AND (", self.key_name(0));
        params.push(values[0].clone());
        let mut alternatives = Vec::new();
        for i in 0..n {
            let mut terms = Vec::new();
            for (j, value) in values.iter().enumerate().take(i) {
                terms.push(format!("{} = ?", self.key_name(j)));
                params.push(value.clone());
            }
            terms.push(format!("{} {op} ?", self.key_name(i)));
            params.push(values[i].clone());
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        if or_equal {
            let terms: Vec<String> = (0..n)
                .map(|j| format!("{} = ?", self.key_name(j)))
                .collect();
            params.extend(values.iter().take(n).cloned());
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        sql.push_str(&alternatives.join(" OR "));
        sql.push(')');
        (sql, params)
    }

    /// `ORDER BY` the key (empty for keyless tables).
    pub fn order_by(&self) -> String {
        if self.key.is_empty() {
            String::new()
        } else {
            let cols: Vec<String> = (0..self.key.len()).map(|i| self.key_name(i)).collect();
            format!(" ORDER BY {}", cols.join(", "))
        }
    }

    /// A readable rendering of key values, `id=42` or `course_id='x', user_id=7`.
    pub fn display_key(&self, values: &[mysql_async::Value]) -> String {
        self.key
            .iter()
            .zip(values)
            .map(|(&i, v)| {
                format!(
                    "{}={}",
                    self.columns[i].name,
                    super::values::display_value(v)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Character sets in which every value read through a utf8mb4 session has the same bytes, so
/// `LOAD DATA ... CHARACTER SET binary` can store them unconverted.
fn same_bytes_as_utf8mb4(charset: &str) -> bool {
    matches!(
        charset.to_ascii_lowercase().as_str(),
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary"
    )
}

/// The `LOAD DATA LOCAL INFILE` statement for a table's writable columns. The file name is a
/// placeholder: the data comes from the connection's infile handler, never from disk. Columns
/// that need conversion go through a user variable and `SET col = CONVERT(@v USING utf8mb4)`.
pub fn load_data_sql(qualified: &str, columns: &[Column], replace: bool) -> String {
    let mut targets = Vec::new();
    let mut sets = Vec::new();
    for (i, c) in columns.iter().enumerate().filter(|(_, c)| !c.generated) {
        if c.convert {
            targets.push(format!("@v{i}"));
            sets.push(format!("{} = CONVERT(@v{i} USING utf8mb4)", ident(&c.name)));
        } else {
            targets.push(ident(&c.name));
        }
    }
    let mut sql = format!(
        "LOAD DATA LOCAL INFILE 'offload-stream' {}INTO TABLE {qualified} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        if replace { "REPLACE " } else { "" },
        targets.join(", ")
    );
    if !sets.is_empty() {
        sql.push_str(" SET ");
        sql.push_str(&sets.join(", "));
    }
    sql
}

/// A `CREATE TABLE` split for fast loading: the table with its primary key (which `REPLACE` and
/// the copy walk rely on; unique keys too when there is no primary key), and the secondary
/// indexes and foreign keys, which InnoDB builds much faster in one sorted pass after the data
/// than row by row during it.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitTable {
    pub create: String,
    /// `(index name, clause)`, e.g. `("idx", "KEY `idx` (`a`)")`.
    pub indexes: Vec<(String, String)>,
    /// `(constraint name, clause)` of foreign keys.
    pub foreign_keys: Vec<(String, String)>,
}

/// The first backtick-quoted identifier in `text`, unescaped.
fn first_ident(text: &str) -> Option<String> {
    let start = text.find('`')? + 1;
    let mut out = String::new();
    let mut chars = text[start..].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' {
            if chars.peek() == Some(&'`') {
                chars.next();
                out.push('`');
                continue;
            }
            return Some(out);
        }
        out.push(c);
    }
    None
}

/// Split `SHOW CREATE TABLE` output (one definition per line, as servers print it). Tables whose
/// AUTO_INCREMENT column is not led by the primary key keep all their indexes inline, since the
/// server requires that column to be indexed from the start.
pub fn split_secondary(ddl: &str) -> SplitTable {
    let keep_all = SplitTable {
        create: ddl.to_string(),
        indexes: Vec::new(),
        foreign_keys: Vec::new(),
    };
    let lines: Vec<&str> = ddl.lines().collect();
    let auto_column = lines
        .iter()
        .find(|l| l.trim_start().starts_with('`') && l.contains(" AUTO_INCREMENT"))
        .and_then(|l| first_ident(l));
    if let Some(col) = &auto_column {
        let primary = lines
            .iter()
            .find(|l| l.trim_start().starts_with("PRIMARY KEY"));
        let leads = primary
            .and_then(|l| first_ident(l.trim_start().trim_start_matches("PRIMARY KEY")))
            .is_some_and(|first| &first == col);
        if !leads {
            return keep_all;
        }
    }
    // With a primary key, replaying a batch collides on it, so unique keys are not needed for
    // REPLACE and are built after the data too; without one, the walk key is a unique key.
    let has_primary = lines
        .iter()
        .any(|l| l.trim_start().starts_with("PRIMARY KEY "));
    let mut kept: Vec<String> = Vec::new();
    let mut indexes = Vec::new();
    let mut foreign_keys = Vec::new();
    for line in &lines {
        let t = line.trim_start();
        let clause = t.trim_end_matches(',').to_string();
        let is_index = t.starts_with("KEY ")
            || t.starts_with("FULLTEXT KEY ")
            || t.starts_with("SPATIAL KEY ")
            || (has_primary && t.starts_with("UNIQUE KEY "));
        let is_fk = t.starts_with("CONSTRAINT ") && t.contains(" FOREIGN KEY ");
        if is_index {
            match first_ident(t) {
                Some(name) => indexes.push((name, clause)),
                None => return keep_all,
            }
        } else if is_fk {
            match first_ident(t) {
                Some(name) => foreign_keys.push((name, clause)),
                None => return keep_all,
            }
        } else {
            kept.push(line.to_string());
        }
    }
    // The definition before the closing `) ENGINE=...` line must not end with a comma.
    if let Some(close) = kept.iter().rposition(|l| l.starts_with(')')) {
        if close > 0 {
            let prev = &mut kept[close - 1];
            if prev.ends_with(',') {
                prev.pop();
            }
        }
    }
    SplitTable {
        create: kept.join("\n"),
        indexes,
        foreign_keys,
    }
}

/// `SHOW CREATE TABLE` output without the AUTO_INCREMENT counter (which is data, not shape).
pub fn normalize_table_ddl(ddl: &str) -> String {
    let mut out = String::with_capacity(ddl.len());
    let mut rest = ddl;
    while let Some(pos) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + " AUTO_INCREMENT=".len()..];
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Remove a `DEFINER=user@host` clause, for targets where that account does not exist.
pub fn strip_definer(ddl: &str) -> String {
    let Some(start) = ddl.find("DEFINER=") else {
        return ddl.to_string();
    };
    let tail = &ddl[start + "DEFINER=".len()..];
    // user@host, each part quoted with backticks or quotes, or bare up to a space.
    let mut end = 0;
    let bytes = tail.as_bytes();
    let mut parts = 0;
    while parts < 2 && end < bytes.len() {
        let q = bytes[end];
        if q == b'`' || q == b'\'' || q == b'"' {
            end += 1;
            while end < bytes.len() {
                if bytes[end] == q {
                    if bytes.get(end + 1) == Some(&q) {
                        end += 2;
                        continue;
                    }
                    break;
                }
                end += 1;
            }
            end += 1;
        } else {
            while end < bytes.len() && bytes[end] != b'@' && bytes[end] != b' ' {
                end += 1;
            }
        }
        parts += 1;
        if parts == 1 && end < bytes.len() && bytes[end] == b'@' {
            end += 1;
        } else {
            break;
        }
    }
    let rest = tail[end.min(tail.len())..].trim_start();
    format!("{}{}", &ddl[..start], rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_data_statement_converts_only_what_needs_it() {
        let col = |name: &str, generated: bool, convert: bool| Column {
            name: name.into(),
            class: ColumnClass::Text,
            generated,
            convert,
        };
        let cols = [
            col("id", false, false),
            col("g", true, false),
            col("l`1", false, true),
        ];
        assert_eq!(
            load_data_sql("`d`.`t`", &cols, true),
            "LOAD DATA LOCAL INFILE 'offload-stream' REPLACE INTO TABLE `d`.`t` CHARACTER SET binary \
             FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (`id`, @v2) \
             SET `l``1` = CONVERT(@v2 USING utf8mb4)"
        );
        let keyless = load_data_sql("`d`.`t`", &cols[..1], false);
        assert!(keyless.contains("'offload-stream' INTO TABLE"), "{keyless}");
        assert!(!keyless.contains(") SET "), "{keyless}");
    }

    #[test]
    fn auto_increment_is_not_shape() {
        let a = "CREATE TABLE `t` (\n `id` int\n) ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT CHARSET=utf8mb4";
        let b = "CREATE TABLE `t` (\n `id` int\n) ENGINE=InnoDB AUTO_INCREMENT=7 DEFAULT CHARSET=utf8mb4";
        assert_eq!(normalize_table_ddl(a), normalize_table_ddl(b));
        assert!(!normalize_table_ddl(a).contains("AUTO_INCREMENT"));
    }

    #[test]
    fn secondary_indexes_and_foreign_keys_are_split_off() {
        let ddl = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `u` int(11) NOT NULL,\n  `body` text,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `uq` (`u`),\n  KEY `by``u` (`u`,`id`),\n  FULLTEXT KEY `ft` (`body`),\n  CONSTRAINT `fk_u` FOREIGN KEY (`u`) REFERENCES `users` (`id`) ON DELETE CASCADE,\n  CONSTRAINT `chk` CHECK (`u` > 0)\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8mb4";
        let split = split_secondary(ddl);
        assert_eq!(
            split.create,
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `u` int(11) NOT NULL,\n  `body` text,\n  PRIMARY KEY (`id`),\n  CONSTRAINT `chk` CHECK (`u` > 0)\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8mb4"
        );
        assert_eq!(
            split.indexes,
            vec![
                ("uq".to_string(), "UNIQUE KEY `uq` (`u`)".to_string()),
                ("by`u".to_string(), "KEY `by``u` (`u`,`id`)".to_string()),
                ("ft".to_string(), "FULLTEXT KEY `ft` (`body`)".to_string())
            ]
        );
        assert_eq!(split.foreign_keys.len(), 1);
        assert_eq!(split.foreign_keys[0].0, "fk_u");
    }

    #[test]
    fn without_a_primary_key_unique_keys_stay() {
        let ddl = "CREATE TABLE `t` (\n  `a` int NOT NULL,\n  `b` int,\n  UNIQUE KEY `a` (`a`),\n  KEY `b` (`b`)\n) ENGINE=InnoDB";
        let split = split_secondary(ddl);
        assert_eq!(
            split.create,
            "CREATE TABLE `t` (\n  `a` int NOT NULL,\n  `b` int,\n  UNIQUE KEY `a` (`a`)\n) ENGINE=InnoDB"
        );
        assert_eq!(
            split.indexes,
            vec![("b".to_string(), "KEY `b` (`b`)".to_string())]
        );
    }

    #[test]
    fn auto_increment_outside_the_primary_key_keeps_every_index() {
        let ddl = "CREATE TABLE `t` (\n  `a` int NOT NULL,\n  `n` int NOT NULL AUTO_INCREMENT,\n  PRIMARY KEY (`a`),\n  KEY `n` (`n`)\n) ENGINE=InnoDB";
        assert_eq!(split_secondary(ddl).create, ddl);
    }

    #[test]
    fn definer_is_stripped() {
        assert_eq!(
            strip_definer("CREATE DEFINER=`root`@`localhost` TRIGGER `t` BEFORE INSERT"),
            "CREATE TRIGGER `t` BEFORE INSERT"
        );
        assert_eq!(
            strip_definer(
                "CREATE ALGORITHM=UNDEFINED DEFINER=`a``b`@`%` SQL SECURITY DEFINER VIEW `v`"
            ),
            "CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v`"
        );
        assert_eq!(strip_definer("CREATE VIEW v"), "CREATE VIEW v");
    }
}
