//! Schema objects beside the rows (views, routines, triggers, events) and the `SHOW CREATE`
//! texts of objects on either side; and, after a copy, how the two sides differ in shape.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::*;
use mysql_async::{Row, Value};

use super::schema::{self, ident};
use super::MysqlStore;
use crate::core::store::ShapeDifference;
use crate::core::{Side, StoreError, Unit};

impl MysqlStore {
    /// `SHOW CREATE ...` text of an object, from the named result column.
    pub(super) async fn show_create(
        &self,
        side: Side,
        what: &str,
        db: &str,
        name: &str,
        column: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let mut conn = self.conn(side).await?;
        let sql = format!("SHOW CREATE {what} {}.{}", ident(db), ident(name));
        let row: Option<Row> = match conn.query_first(sql).await {
            Ok(r) => r,
            Err(mysql_async::Error::Server(s))
                if [1146, 1305, 1539, 1360, 1347].contains(&s.code) =>
            {
                None
            }
            Err(e) => return Err(self.err(side, e)),
        };
        Ok(row.and_then(|r| {
            let text: Option<String> = r.get(column);
            let mode: Option<String> = r.get("sql_mode");
            text.map(|t| (t, mode))
        }))
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
            let col = MysqlStore::create_column(kind);
            let a = store
                .show_create(Side::Source, kind, &db, name, col)
                .await?;
            let b = store
                .show_create(Side::Target, kind, &db, name, col)
                .await?;
            let norm =
                |x: Option<(String, Option<String>)>| x.map(|(t, _)| schema::strip_definer(&t));
            if norm(a) != norm(b) {
                out.push(ShapeDifference {
                    container: db.clone(),
                    object: name.clone(),
                    detail: format!("{} definition differs", kind.to_lowercase()),
                });
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
