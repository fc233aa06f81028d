//! Schema objects beside the rows (views, routines, triggers, events) and the `SHOW CREATE`
//! texts of objects on either side with the client character set and collation each was created
//! under; and, after a copy, how the two sides differ in shape.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::*;
use mysql_async::{Row, Value};

use super::schema::{self, ident};
use super::MysqlStore;
use crate::core::store::ShapeDifference;
use crate::core::{Side, StoreError, Unit};

/// What the server records of the session that created a view, routine, trigger or event, and
/// which `SHOW CREATE` returns beside its text: the client's character set and the connection's
/// collation (which decide how the body's string literals are read), and for all but views the
/// database's default collation at the time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ClientCharset {
    pub character_set_client: Option<String>,
    pub collation_connection: Option<String>,
    pub database_collation: Option<String>,
}

impl ClientCharset {
    /// Each recorded value by the name `SHOW CREATE` gives it.
    fn named(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("character_set_client", self.character_set_client.as_deref()),
            ("collation_connection", self.collation_connection.as_deref()),
            ("database collation", self.database_collation.as_deref()),
        ]
    }

    /// The values that differ from `target`'s, as `(name, source, target)`. MySQL 8's `utf8`
    /// and MariaDB's `utf8mb3` are one character set under two names.
    pub(super) fn differences(
        &self,
        target: &ClientCharset,
    ) -> Vec<(&'static str, String, String)> {
        let norm = |v: Option<&str>| v.map(canonical_charset_name);
        self.named()
            .into_iter()
            .zip(target.named())
            .filter(|((_, a), (_, b))| norm(*a) != norm(*b))
            .map(|((name, a), (_, b))| {
                let show = |v: Option<&str>| v.unwrap_or("(none)").to_string();
                (name, show(a), show(b))
            })
            .collect()
    }
}

/// A character set or collation name with `utf8` spelled `utf8mb3`, lowercase.
pub(super) fn canonical_charset_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower == "utf8" {
        "utf8mb3".to_string()
    } else if let Some(rest) = lower.strip_prefix("utf8_") {
        format!("utf8mb3_{rest}")
    } else {
        lower
    }
}

/// A schema object's definition as `SHOW CREATE` gives it.
#[derive(Debug, Clone)]
pub(super) struct ObjectDefinition {
    pub ddl: String,
    pub sql_mode: Option<String>,
    pub client: ClientCharset,
}

impl MysqlStore {
    /// `SHOW CREATE ...` text of an object, from the named result column, with its sql_mode.
    pub(super) async fn show_create(
        &self,
        side: Side,
        what: &str,
        db: &str,
        name: &str,
        column: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(self
            .show_create_row(side, what, db, name)
            .await?
            .and_then(|r| {
                let text: Option<String> = r.get(column);
                let mode: Option<String> = r.get("sql_mode");
                text.map(|t| (t, mode))
            }))
    }

    /// A view's, routine's, trigger's or event's definition with what the server recorded of the
    /// session that created it.
    pub(super) async fn show_object(
        &self,
        side: Side,
        kind: &str,
        db: &str,
        name: &str,
    ) -> Result<Option<ObjectDefinition>, StoreError> {
        let column = MysqlStore::create_column(kind);
        Ok(self
            .show_create_row(side, kind, db, name)
            .await?
            .and_then(|r| {
                let text = |c: &str| -> Option<String> { r.get_opt(c).and_then(|v| v.ok()) };
                Some(ObjectDefinition {
                    ddl: text(column)?,
                    sql_mode: text("sql_mode"),
                    client: ClientCharset {
                        character_set_client: text("character_set_client"),
                        collation_connection: text("collation_connection"),
                        database_collation: text("Database Collation"),
                    },
                })
            }))
    }

    async fn show_create_row(
        &self,
        side: Side,
        what: &str,
        db: &str,
        name: &str,
    ) -> Result<Option<Row>, StoreError> {
        let mut conn = self.conn(side).await?;
        let sql = format!("SHOW CREATE {what} {}.{}", ident(db), ident(name));
        match conn.query_first(sql).await {
            Ok(r) => Ok(r),
            Err(mysql_async::Error::Server(s))
                if [1146, 1305, 1539, 1360, 1347].contains(&s.code) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(side, e)),
        }
    }

    pub(super) async fn objects(
        &self,
        side: Side,
        db: &str,
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        let mut out = Vec::new();
        let p = || vec![Value::from(db)];
        for v in self
            .query_strings(side, "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME", p())
            .await?
        {
            out.push(("VIEW", v));
        }
        let mut conn = self.conn(side).await?;
        let routines: Vec<(String, String)> = conn
            .exec(
                "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                (db,),
            )
            .await
            .map_err(|e| self.err(side, e))?;
        drop(conn);
        for (kind, name) in routines {
            out.push((
                if kind == "FUNCTION" {
                    "FUNCTION"
                } else {
                    "PROCEDURE"
                },
                name,
            ));
        }
        for t in self
            .query_strings(side, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY TRIGGER_NAME", p())
            .await?
        {
            out.push(("TRIGGER", t));
        }
        for e in self
            .query_strings(side, "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME", p())
            .await?
        {
            out.push(("EVENT", e));
        }
        Ok(out)
    }

    pub(super) fn create_column(kind: &str) -> &'static str {
        match kind {
            "VIEW" => "Create View",
            "FUNCTION" => "Create Function",
            "PROCEDURE" => "Create Procedure",
            "TRIGGER" => "SQL Original Statement",
            _ => "Create Event",
        }
    }
}

pub(super) async fn compare_shape(
    store: &MysqlStore,
    units: &[Unit],
) -> Result<Vec<ShapeDifference>, StoreError> {
    let mut out = Vec::new();
    for (db, table) in MysqlStore::tables_of(units) {
        let src = store
            .show_create(Side::Source, "TABLE", &db, &table, "Create Table")
            .await?;
        let tgt = store
            .show_create(Side::Target, "TABLE", &db, &table, "Create Table")
            .await?;
        match (src, tgt) {
            (Some((a, _)), Some((b, _))) => {
                let (a, b) = (
                    schema::normalize_table_ddl(&a),
                    schema::normalize_table_ddl(&b),
                );
                if a != b {
                    let line = a
                        .lines()
                        .zip(b.lines())
                        .find(|(x, y)| x != y)
                        .map(|(x, y)| format!("source `{}`, target `{}`", x.trim(), y.trim()))
                        .unwrap_or_else(|| "definitions differ in length".into());
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: table.clone(),
                        detail: format!("table definition differs: {line}"),
                    });
                }
            }
            (Some(_), None) => out.push(ShapeDifference {
                container: db.clone(),
                object: table.clone(),
                detail: "table missing on the target".into(),
            }),
            _ => {}
        }
    }
    for db in MysqlStore::databases_of(units) {
        let src = store.objects(Side::Source, &db).await?;
        let tgt = store.objects(Side::Target, &db).await?;
        let tgt_set: BTreeMap<(&str, &str), ()> =
            tgt.iter().map(|(k, n)| ((*k, n.as_str()), ())).collect();
        for (kind, name) in &src {
            if !tgt_set.contains_key(&(*kind, name.as_str())) {
                out.push(ShapeDifference {
                    container: db.clone(),
                    object: name.clone(),
                    detail: format!("{} missing on the target", kind.to_lowercase()),
                });
                continue;
            }
            let a = store.show_object(Side::Source, kind, &db, name).await?;
            let b = store.show_object(Side::Target, kind, &db, name).await?;
            let norm =
                |x: &Option<ObjectDefinition>| x.as_ref().map(|d| schema::strip_definer(&d.ddl));
            if norm(&a) != norm(&b) {
                out.push(ShapeDifference {
                    container: db.clone(),
                    object: name.clone(),
                    detail: format!("{} definition differs", kind.to_lowercase()),
                });
            }
            if let (Some(a), Some(b)) = (&a, &b) {
                for (value, source, target) in a.client.differences(&b.client) {
                    out.push(ShapeDifference {
                        container: db.clone(),
                        object: name.clone(),
                        detail: format!(
                            "{} {value} differs: source `{source}`, target `{target}`",
                            kind.to_lowercase()
                        ),
                    });
                }
            }
        }
        let src_set: BTreeSet<(&str, &str)> = src.iter().map(|(k, n)| (*k, n.as_str())).collect();
        for (kind, name) in &tgt {
            if !src_set.contains(&(*kind, name.as_str())) {
                out.push(ShapeDifference {
                    container: db.clone(),
                    object: name.clone(),
                    detail: format!("{} on the target is not on the source", kind.to_lowercase()),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charset(client: &str, connection: &str, database: Option<&str>) -> ClientCharset {
        ClientCharset {
            character_set_client: Some(client.into()),
            collation_connection: Some(connection.into()),
            database_collation: database.map(String::from),
        }
    }

    #[test]
    fn client_charset_differences_are_named_with_both_values() {
        let source = charset("utf8mb3", "utf8mb3_general_ci", Some("utf8mb4_general_ci"));
        assert!(source.differences(&source.clone()).is_empty());
        let mysql8 = charset("utf8", "utf8_general_ci", Some("utf8mb4_general_ci"));
        assert!(source.differences(&mysql8).is_empty(), "utf8 is utf8mb3");
        let target = charset("latin1", "utf8mb3_general_ci", Some("latin1_swedish_ci"));
        assert_eq!(
            source.differences(&target),
            vec![
                ("character_set_client", "utf8mb3".into(), "latin1".into()),
                (
                    "database collation",
                    "utf8mb4_general_ci".into(),
                    "latin1_swedish_ci".into()
                ),
            ]
        );
    }
}
