//! What comes after the rows: secondary indexes and foreign keys (a table's indexes as soon as
//! all its rows are copied, the rest at the end), views, routines, triggers and events replayed
//! from the source under the client character set and collation each was created with,
//! AUTO_INCREMENT counters, and the application users asked for.

use futures_util::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{Conn, Value};

use super::schema::{self, ident, quote};
use super::shape::{canonical_charset_name, ClientCharset};
use super::MysqlStore;
use crate::core::{Cursor, Side, StoreError, Unit};

/// A unit's key range as comparable text.
/// One range of a table's key as text: (after, up to), `None` for an open end.
pub(super) type KeyRange = (Option<String>, Option<String>);

pub(super) async fn finish_target(store: &MysqlStore) -> Result<Vec<String>, StoreError> {
    let mut notes: Vec<String> = store.snapshot_note().into_iter().collect();
    if let Some(reason) = store.load_data_refused.lock().expect("refusal").clone() {
        notes.push(format!("mysql: the target refused LOAD DATA LOCAL INFILE ({reason}); rows were sent as REPLACE statements instead"));
    }
    let dbs = store.databases().await?;
    let added = store.add_secondary_keys(&dbs).await?;
    if added > 0 {
        notes.push(format!(
            "mysql: {added} secondary index(es) and foreign key(s) built after the data"
        ));
    }
    for db in &dbs {
        // Views may depend on views: create in passes until no progress.
        let objects = store.objects(Side::Source, db).await?;
        let mut pending: Vec<(&str, String)> = objects.clone();
        let mut last_error = None;
        for _pass in 0..8 {
            let mut still = Vec::new();
            for (kind, name) in pending {
                let Some(object) = store.show_object(Side::Source, kind, db, &name).await? else {
                    continue;
                };
                let (ddl, drop) = if kind == "VIEW" {
                    (
                        object.ddl.replacen("CREATE ", "CREATE OR REPLACE ", 1),
                        None,
                    )
                } else {
                    let drop = format!("DROP {kind} IF EXISTS {}.{}", ident(db), ident(&name));
                    (object.ddl.clone(), Some(drop))
                };
                let session = ObjectSession {
                    sql_mode: object.sql_mode.as_deref(),
                    client: &object.client,
                };
                match store.replay_object(db, &ddl, &session, drop).await {
                    Ok(Some(note)) => notes.push(format!("mysql: {kind} {db}.{name} {note}")),
                    Ok(None) => {}
                    Err(e) => {
                        last_error = Some(e);
                        still.push((kind, name));
                    }
                }
            }
            if still.is_empty() {
                last_error = None;
                pending = still;
                break;
            }
            pending = still;
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        if !objects.is_empty() {
            notes.push(format!(
                "mysql: {} view(s), routine(s), trigger(s) and event(s) created in {db}",
                objects.len()
            ));
        }

        // AUTO_INCREMENT counters: carry the source's where it is ahead of the target's.
        let mut src = store.conn(Side::Source).await?;
        let _ = src
            .query_drop("SET SESSION information_schema_stats_expiry = 0")
            .await;
        let counters: Vec<(String, Option<u64>)> = src
            .exec(
                "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND AUTO_INCREMENT IS NOT NULL",
                (db.as_str(),),
            )
            .await
            .map_err(|e| store.err(Side::Source, e))?;
        drop(src);
        let mut tgt = store.conn(Side::Target).await?;
        for (table, counter) in counters {
            if let Some(counter) = counter {
                tgt.query_drop(format!(
                    "ALTER TABLE {}.{} AUTO_INCREMENT = {counter}",
                    ident(db),
                    ident(&table)
                ))
                .await
                .map_err(|e| store.err(Side::Target, e))?;
            }
        }
    }
    let mut tgt = store.conn(Side::Target).await?;
    for user in &store.options.create_users {
        let account = format!("{}@'%'", quote(&user.name));
        let password = quote(user.password.expose());
        let statements = [
            format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}"),
            format!("ALTER USER {account} IDENTIFIED BY {password}"),
            format!(
                "GRANT ALL PRIVILEGES ON {}.* TO {account}",
                ident(&user.database)
            ),
        ];
        for s in statements {
            // The statement holds a password: never let it reach an error message.
            tgt.query_drop(s).await.map_err(|e| {
                let mut err = store.err(Side::Target, e);
                err.detail = format!(
                    "creating user `{}` failed: {}",
                    user.name,
                    err.detail.replace(user.password.expose(), "********")
                );
                err
            })?;
        }
        notes.push(format!(
            "mysql: user `{}` can use database `{}` on the target",
            user.name, user.database
        ));
    }
    store.snapshot_note_given();
    Ok(notes)
}

pub(super) async fn pause_target_side_effects(store: &MysqlStore) -> Result<(), StoreError> {
    // Triggers on the target would fire on rows copied again; finish_target recreates them.
    let mut conn = store.conn(Side::Target).await?;
    for db in store.databases().await? {
        let triggers: Vec<String> = conn
            .exec(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?",
                (db.as_str(),),
            )
            .await
            .map_err(|e| store.err(Side::Target, e))?;
        for t in triggers {
            conn.query_drop(format!(
                "DROP TRIGGER IF EXISTS {}.{}",
                ident(&db),
                ident(&t)
            ))
            .await
            .map_err(|e| store.err(Side::Target, e))?;
        }
    }
    Ok(())
}

impl MysqlStore {
    /// Create (or replace) a schema object on the target from its source definition, in its
    /// database and under the session it was created in (sql_mode, client character set and
    /// collation, database collation); without the DEFINER clause when that account is missing.
    async fn replay_object(
        &self,
        db: &str,
        ddl: &str,
        session: &ObjectSession<'_>,
        drop: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn(Side::Target).await?;
        let drop = drop.as_deref();
        match replay_once(&mut conn, db, ddl, session, drop).await {
            Ok(()) => Ok(None),
            Err(mysql_async::Error::Server(s)) if [1449, 1227, 1045, 1044].contains(&s.code) => {
                replay_once(&mut conn, db, &schema::strip_definer(ddl), session, drop)
                    .await
                    .map_err(|e| self.err(Side::Target, e))?;
                Ok(Some(format!(
                    "created without its DEFINER in {db} ({}); it now runs as the migrating user",
                    s.message
                )))
            }
            Err(e) => Err(self.err(Side::Target, e)),
        }
    }

    /// What a target table lacks of the source's secondary indexes and foreign keys, as
    /// `ADD ...` clauses; `None` when the table is missing on either side or differs otherwise
    /// (left alone for verify to report).
    async fn missing_keys(
        &self,
        db: &str,
        table: &str,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, StoreError> {
        let Some((src, _)) = self
            .show_create(Side::Source, "TABLE", db, table, "Create Table")
            .await?
        else {
            return Ok(None);
        };
        let Some((tgt, _)) = self
            .show_create(Side::Target, "TABLE", db, table, "Create Table")
            .await?
        else {
            return Ok(None);
        };
        let (src, tgt) = (schema::split_secondary(&src), schema::split_secondary(&tgt));
        if schema::normalize_table_ddl(&src.create) != schema::normalize_table_ddl(&tgt.create) {
            return Ok(None);
        }
        let missing = |src: &[(String, String)], tgt: &[(String, String)]| -> Vec<String> {
            src.iter()
                .filter(|(n, _)| !tgt.iter().any(|(t, _)| t == n))
                .map(|(_, c)| format!("ADD {c}"))
                .collect()
        };
        Ok(Some((
            missing(&src.indexes, &tgt.indexes),
            missing(&src.foreign_keys, &tgt.foreign_keys),
        )))
    }

    /// Add what the target table lacks of its secondary indexes (`foreign_keys` false) or of its
    /// foreign keys, in one `ALTER TABLE`; returns how many were added. Idempotent: when another
    /// connection (say, a killed run's statement still finishing on the server) added one first,
    /// the plan is read again.
    async fn add_keys(
        &self,
        db: &str,
        table: &str,
        foreign_keys: bool,
    ) -> Result<usize, StoreError> {
        let mut attempt = 0;
        loop {
            let Some((indexes, fks)) = self.missing_keys(db, table).await? else {
                return Ok(0);
            };
            let clauses = if foreign_keys { fks } else { indexes };
            if clauses.is_empty() {
                return Ok(0);
            }
            let qualified = format!("{}.{}", ident(db), ident(table));
            tracing::debug!(store = "mysql", table = %qualified, count = clauses.len(), "building secondary keys");
            let mut conn = self.conn(Side::Target).await?;
            match conn
                .query_drop(format!("ALTER TABLE {qualified} {}", clauses.join(", ")))
                .await
            {
                Ok(()) => return Ok(clauses.len()),
                // Duplicate key name / foreign key name: it appeared meanwhile.
                Err(mysql_async::Error::Server(e))
                    if attempt == 0 && [1061, 1826, 1022].contains(&e.code) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(self.err(Side::Target, e)),
            }
        }
    }

    /// Add the secondary indexes, then the foreign keys, that `prepare` left out, to every
    /// target table offload created. Indexes of several tables are built at once (each is one
    /// sorted pass on one core); foreign keys come after all indexes, since one needs the
    /// referenced table's index.
    async fn add_secondary_keys(&self, dbs: &[String]) -> Result<usize, StoreError> {
        let mut tables = Vec::new();
        for db in dbs {
            for table in self
                .query_strings(
                    Side::Source,
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                    vec![Value::from(db.as_str())],
                )
                .await?
            {
                tables.push((db.clone(), table));
            }
        }
        let built: Vec<Result<usize, StoreError>> = futures_util::stream::iter(tables.clone())
            .map(|(db, table)| async move { self.add_keys(&db, &table, false).await })
            .buffer_unordered(self.parallel.max(1))
            .collect()
            .await;
        let mut added = 0;
        for b in built {
            added += b?;
        }
        for (db, table) in &tables {
            added += self.add_keys(db, table, true).await?;
        }
        Ok(added)
    }

    /// Note that a unit's rows are all on the target; when that completes its table in this run,
    /// build the table's secondary indexes now, while other tables still copy, instead of in the
    /// single-threaded tail of the copy. A failure here is left for `finish_target` to retry.
    pub(super) async fn unit_copied(&self, unit: &Unit) {
        let key = (unit.container.clone(), unit.object.clone());
        let complete = {
            let mut done = self.ranges_done.lock().expect("ranges");
            let ranges = done.entry(key).or_default();
            ranges.push(range_text(unit));
            covers_all(ranges)
        };
        if !complete {
            return;
        }
        if let Err(e) = self.add_keys(&unit.container, &unit.object, false).await {
            tracing::warn!(store = "mysql", unit = %unit.name, error = %e, "secondary indexes not built yet; the end of the copy tries again");
        }
    }
}

/// The session a schema object was created in on the source, to create it in again.
struct ObjectSession<'a> {
    sql_mode: Option<&'a str>,
    client: &'a ClientCharset,
}

/// The copy session's own character set, put back after each object.
const SESSION_NAMES: &str = "SET NAMES utf8mb4";

/// Run one DDL statement in `db` after an optional DROP, as mysqldump does: with the object's own
/// sql_mode, its client character set and connection collation, and (for routines, triggers and
/// events) its database collation set on the database for the moment of the CREATE. The
/// session and the database are put back afterwards, whether the statement worked or not.
async fn replay_once(
    conn: &mut Conn,
    db: &str,
    ddl: &str,
    session: &ObjectSession<'_>,
    drop: Option<&str>,
) -> mysql_async::Result<()> {
    conn.query_drop(format!("USE {}", ident(db))).await?;
    if let Some(mode) = session.sql_mode {
        conn.query_drop(format!("SET SESSION sql_mode = {}", quote(mode)))
            .await?;
    }
    if let Some(drop) = drop {
        conn.query_drop(drop).await?;
    }
    let database_default = match &session.client.database_collation {
        Some(wanted) => {
            let current: Option<(String, String)> = conn
                .exec_first(
                    "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                    (db,),
                )
                .await?;
            match current {
                Some((charset, collation))
                    if canonical_charset_name(&collation) != canonical_charset_name(wanted) =>
                {
                    conn.query_drop(format!(
                        "ALTER DATABASE {} COLLATE {}",
                        ident(db),
                        quote(wanted)
                    ))
                    .await?;
                    Some((charset, collation))
                }
                _ => None,
            }
        }
        None => None,
    };
    let result = async {
        let text =
            ddl_for_client(conn, ddl, session.client.character_set_client.as_deref()).await?;
        if let Some(charset) = &session.client.character_set_client {
            let mut set = format!(
                "SET character_set_client = {0}, character_set_results = {0}",
                quote(charset)
            );
            if let Some(collation) = &session.client.collation_connection {
                set.push_str(&format!(", collation_connection = {}", quote(collation)));
            }
            conn.query_drop(set).await?;
        }
        conn.query_drop(text).await
    }
    .await;
    conn.query_drop(SESSION_NAMES).await?;
    conn.query_drop("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'")
        .await?;
    if let Some((charset, collation)) = database_default {
        conn.query_drop(format!(
            "ALTER DATABASE {} CHARACTER SET {} COLLATE {}",
            ident(db),
            quote(&charset),
            quote(&collation)
        ))
        .await?;
    }
    result
}

/// The statement's bytes in the client character set it will be sent under. The text was read
/// through a utf8mb4 session: it goes as it is for the UTF-8 character sets and for ASCII text;
/// otherwise the target server converts it (the session still being utf8mb4 here).
async fn ddl_for_client(
    conn: &mut Conn,
    ddl: &str,
    charset: Option<&str>,
) -> mysql_async::Result<Vec<u8>> {
    let Some(charset) = charset else {
        return Ok(ddl.as_bytes().to_vec());
    };
    let utf8 = canonical_charset_name(charset).starts_with("utf8");
    let plain_name = charset
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if utf8 || ddl.is_ascii() || !plain_name {
        return Ok(ddl.as_bytes().to_vec());
    }
    let converted: Option<Vec<u8>> = conn
        .exec_first(
            format!("SELECT CAST(CONVERT(? USING {charset}) AS BINARY)"),
            (ddl,),
        )
        .await?;
    Ok(converted.unwrap_or_else(|| ddl.as_bytes().to_vec()))
}

fn range_text(unit: &Unit) -> KeyRange {
    let text = |c: &Option<Cursor>| c.as_ref().map(|c| c.0.to_string());
    (text(&unit.range.after), text(&unit.range.upto))
}

/// Whether key ranges chain from the start of the key space to its end.
fn covers_all(ranges: &[KeyRange]) -> bool {
    let mut at: Option<&String> = None;
    for _ in 0..=ranges.len() {
        match ranges.iter().find(|(after, _)| after.as_ref() == at) {
            Some((_, None)) => return true,
            Some((_, Some(upto))) => at = Some(upto),
            None => return false,
        }
    }
    false
}
#[cfg(test)]
mod tests {
    use super::covers_all;

    #[test]
    fn a_table_is_whole_when_its_ranges_chain_from_start_to_end() {
        let r = |a: Option<&str>, u: Option<&str>| (a.map(String::from), u.map(String::from));
        assert!(covers_all(&[r(None, None)]));
        let parts = [
            r(Some("2"), None),
            r(None, Some("1")),
            r(Some("1"), Some("2")),
        ];
        assert!(covers_all(&parts));
        assert!(!covers_all(&parts[..2]));
        assert!(!covers_all(&[r(Some("1"), None)]));
        assert!(!covers_all(&[]));
    }
}
