//! Readying the target before any rows: which tables already hold rows, databases created with
//! the source's options (and, with `--if-exists replace`, occupied tables dropped), and each
//! table created without its secondary keys.

use std::collections::BTreeSet;

use mysql_async::prelude::*;

use super::schema::{self, ident};
use super::MysqlStore;
use crate::core::{ErrorKind, IfExists, Side, StoreError, StoreKind, Unit};

pub(super) async fn occupied(
    store: &MysqlStore,
    units: &[Unit],
) -> Result<Vec<String>, StoreError> {
    let mut conn = store.conn(Side::Target).await?;
    let mut busy = BTreeSet::new();
    for (db, table) in MysqlStore::tables_of(units) {
        let sql = format!("SELECT 1 FROM {}.{} LIMIT 1", ident(&db), ident(&table));
        match conn.query_first::<i64, _>(sql).await {
            Ok(Some(_)) => {
                busy.insert((db, table));
            }
            Ok(None) => {}
            Err(mysql_async::Error::Server(s)) if s.code == 1146 || s.code == 1049 => {}
            Err(e) => return Err(store.err(Side::Target, e)),
        }
    }
    Ok(Unit::names_within(units, &busy))
}

pub(super) async fn prepare_target(
    store: &MysqlStore,
    units: &[Unit],
    policy: IfExists,
    occupied: &[String],
) -> Result<(), StoreError> {
    let mut target = store.conn(Side::Target).await?;
    for db in MysqlStore::databases_of(units) {
        let mut src = store.conn(Side::Source).await?;
        let row: Option<(String, String)> = src
            .query_first(format!("SHOW CREATE DATABASE {}", ident(&db)))
            .await
            .map_err(|e| store.err(Side::Source, e))?;
        let create = row
            .map(|(_, c)| c)
            .unwrap_or_else(|| format!("CREATE DATABASE {}", ident(&db)));
        let create = create.replacen("CREATE DATABASE ", "CREATE DATABASE IF NOT EXISTS ", 1);
        let create = create.replacen(
            "IF NOT EXISTS /*!32312 IF NOT EXISTS*/ ",
            "IF NOT EXISTS ",
            1,
        );
        target
            .query_drop(create)
            .await
            .map_err(|e| store.err(Side::Target, e))?;
    }
    if policy == IfExists::Replace {
        let doomed: BTreeSet<(String, String)> = units
            .iter()
            .filter(|u| occupied.contains(&u.name))
            .map(|u| (u.container.clone(), u.object.clone()))
            .collect();
        for (db, table) in doomed {
            tracing::warn!(store = "mysql", database = %db, table = %table, "dropping the target table, as --if-exists replace asks");
            target
                .query_drop(format!(
                    "DROP TABLE IF EXISTS {}.{}",
                    ident(&db),
                    ident(&table)
                ))
                .await
                .map_err(|e| store.err(Side::Target, e))?;
        }
    }
    Ok(())
}

pub(super) async fn prepare_table(store: &MysqlStore, unit: &Unit) -> Result<(), StoreError> {
    let (db, table) = store.unit_table(unit);
    let (ddl, _) = store
        .show_create(Side::Source, "TABLE", db, table, "Create Table")
        .await?
        .ok_or_else(|| {
            StoreError::new(
                StoreKind::Mysql,
                store.source.address(),
                ErrorKind::Input,
                format!("table {db}.{table} is gone from the source"),
                "the source changed since the plan; start the job again with --restart",
            )
            .in_unit(&unit.name)
        })?;
    // Secondary indexes and foreign keys are added by finish_target, after the data.
    let ddl = schema::split_secondary(&ddl).create.replacen(
        "CREATE TABLE ",
        "CREATE TABLE IF NOT EXISTS ",
        1,
    );
    let mut conn = store.conn(Side::Target).await?;
    conn.query_drop(format!("USE {}", ident(db)))
        .await
        .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
    conn.query_drop(ddl)
        .await
        .map_err(|e| store.err(Side::Target, e).in_unit(&unit.name))?;
    Ok(())
}
