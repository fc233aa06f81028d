//! What offload tells before any work: both servers' versions, the privileges of both users,
//! whether the source can be read from one snapshot, whether the target takes writes and knows
//! the source's collations, which databases will be copied, and whether they include every
//! enabled Tutor plugin's own database.

use std::collections::BTreeSet;

use mysql_async::prelude::*;

use super::{MysqlStore, PluginDatabase};
use crate::core::store::{Check, Survey};
use crate::core::{Side, StoreError};

pub(super) async fn survey(store: &MysqlStore) -> Result<Survey, StoreError> {
    let mut survey = Survey::default();
    for side in [Side::Source, Side::Target] {
        let version = store
            .variable(side, "version")
            .await?
            .unwrap_or_else(|| "unknown".into());
        let comment = store
            .variable(side, "version_comment")
            .await?
            .unwrap_or_default();
        let shown = format!("{version} ({comment})");
        survey.checks.push(Check::new(
            format!("{side} reachable"),
            true,
            format!(
                "{} as {}: {shown}",
                store.endpoint(side).address(),
                store.endpoint(side).user
            ),
        ));
        survey.notes.push(format!(
            "{side} connection: {}",
            store.tls_note(side).await?
        ));
        match side {
            Side::Source => survey.source_version = shown,
            Side::Target => survey.target_version = shown,
        }
    }

    let source_grants = store.grants(Side::Source).await?;
    let all = |g: &str| g.contains("ALL PRIVILEGES ON *.*");
    let can_read = all(&source_grants) || source_grants.contains("SELECT");
    survey.checks.push(Check::new(
        "source privileges",
        can_read,
        if can_read {
            "can read every table"
        } else {
            "the source user lacks SELECT: grant SELECT, SHOW VIEW, TRIGGER, EVENT on the databases"
        },
    ));
    let can_lock = all(&source_grants) || source_grants.contains("RELOAD");
    survey.checks.push(Check::new(
        "consistent snapshot",
        true,
        if can_lock {
            "RELOAD granted: all workers read one snapshot (FLUSH TABLES WITH READ LOCK held only while the snapshot opens)"
        } else {
            "RELOAD not granted: each worker reads its own snapshot; stop the platform's writers (LMS, CMS, workers) before copying"
        },
    ));

    let target_grants = store.grants(Side::Target).await?;
    let needed = [
        "CREATE",
        "INSERT",
        "DELETE",
        "DROP",
        "ALTER",
        "CREATE VIEW",
        "TRIGGER",
        "CREATE ROUTINE",
        "EVENT",
    ];
    let missing: Vec<&str> = if all(&target_grants) {
        Vec::new()
    } else {
        needed
            .iter()
            .filter(|p| !target_grants.contains(*p))
            .copied()
            .collect()
    };
    survey.checks.push(Check::new(
        "target privileges",
        missing.is_empty(),
        if missing.is_empty() {
            "can create databases, tables, views, routines, triggers and events".to_string()
        } else {
            format!(
                "the target user may lack: {}; grant them (or ALL PRIVILEGES on the databases)",
                missing.join(", ")
            )
        },
    ));
    let read_only = store
        .variable(Side::Target, "read_only")
        .await?
        .unwrap_or_default();
    let writable = !read_only.eq_ignore_ascii_case("ON") && read_only != "1";
    survey.checks.push(Check::new(
        "target writable",
        writable,
        if writable {
            "read_only is OFF".to_string()
        } else {
            "the target has read_only=ON: it may be a replica; point --to-mysql at the primary"
                .to_string()
        },
    ));

    // Character sets and collations the source uses must exist on the target.
    let dbs = store.databases().await?;
    let mut used: BTreeSet<String> = BTreeSet::new();
    for db in &dbs {
        let mut conn = store.conn(Side::Source).await?;
        let cols: Vec<String> = conn
            .exec(
                "SELECT DISTINCT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND COLLATION_NAME IS NOT NULL
                 UNION SELECT DISTINCT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_COLLATION IS NOT NULL
                 UNION SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (db, db, db),
            )
            .await
            .map_err(|e| store.err(Side::Source, e))?;
        used.extend(cols);
    }
    let available: BTreeSet<String> = store
        .query_strings(
            Side::Target,
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS",
            vec![],
        )
        .await?
        .into_iter()
        .collect();
    let unknown: Vec<&String> = used.iter().filter(|c| !available.contains(*c)).collect();
    survey.checks.push(Check::new(
        "character sets",
        unknown.is_empty(),
        if unknown.is_empty() {
            format!("the target knows every collation in use ({})", used.iter().cloned().collect::<Vec<_>>().join(", "))
        } else {
            format!("the target lacks collations {}: use a target server of the same family and version (MySQL 8 collations like utf8mb4_0900_ai_ci do not exist on MariaDB)", unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        },
    ));
    let packet = store
        .variable(Side::Target, "max_allowed_packet")
        .await?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let packet_ok = packet >= (store.options.statement_bytes as u64) * 2;
    survey.checks.push(Check::new(
        "max_allowed_packet",
        packet_ok,
        if packet_ok {
            format!("target accepts statements up to {} MiB", packet / (1024 * 1024))
        } else {
            format!("target max_allowed_packet is {} KiB; raise it to at least 16M (rows larger than it cannot be copied)", packet / 1024)
        },
    ));
    let local_infile = if store.options.local_infile {
        // MySQL 8 and MariaDB both name it local_infile; an older server may not have it.
        store
            .variable(Side::Target, "local_infile")
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    survey.checks.push(Check::new(
        "local_infile",
        true,
        match local_infile.as_deref() {
            _ if !store.options.local_infile => "not used (OFFLOAD_MYSQL_LOCAL_INFILE=off): rows are sent as multi-row REPLACE statements, about half as fast".to_string(),
            Some("1") | Some("ON") => "ON: rows stream into LOAD DATA LOCAL INFILE (no file is written)".to_string(),
            Some(v) => format!("{v} on the target: rows are sent as multi-row REPLACE statements, about half as fast; SET GLOBAL local_infile = 1 on the target (a parameter on managed services) to stream them with LOAD DATA LOCAL INFILE"),
            None => "unknown on the target: offload tries LOAD DATA LOCAL INFILE and falls back to multi-row REPLACE statements if it is refused".to_string(),
        },
    ));
    survey.checks.push(Check::new(
        "free space",
        true,
        "cannot be read over SQL: make sure the target has room for the bytes below plus indexes",
    ));
    survey.checks.push(Check::new(
        "target redundancy",
        true,
        target_redundancy(store).await?,
    ));
    survey.notes.push(format!(
        "databases: {}",
        if dbs.is_empty() {
            "(none)".to_string()
        } else {
            dbs.join(", ")
        }
    ));
    plugin_checks(store, &dbs, &mut survey).await?;
    Ok(survey)
}

/// One check per enabled Tutor plugin with a database of its own: the copy must take that
/// database along, since the cutover points the plugin at the new server too.
async fn plugin_checks(
    store: &MysqlStore,
    chosen: &[String],
    survey: &mut Survey,
) -> Result<(), StoreError> {
    if store.options.plugins.is_empty() {
        survey
            .notes
            .extend(store.options.plugin_notes.iter().cloned());
        return Ok(());
    }
    let on_source: BTreeSet<String> = store
        .query_strings(
            Side::Source,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
            vec![],
        )
        .await?
        .into_iter()
        .collect();
    for p in &store.options.plugins {
        let (ok, detail) = plugin_database_status(p, chosen, &on_source, &store.options);
        survey
            .checks
            .push(Check::new(format!("plugin {}", p.plugin), ok, detail));
    }
    survey
        .notes
        .extend(store.options.plugin_notes.iter().cloned());
    Ok(())
}

/// Whether the copy takes a plugin's database along, and what the plan says about it.
fn plugin_database_status(
    p: &PluginDatabase,
    chosen: &[String],
    on_source: &BTreeSet<String>,
    options: &super::MysqlOptions,
) -> (bool, String) {
    let (db, user, plugin) = (&p.database, &p.user, &p.plugin);
    if chosen.contains(db) {
        let users = if options.create_users.iter().any(|u| &u.name == user) {
            format!("user `{user}` is created on the target with its grants (--create-users)")
        } else {
            format!(
                "user `{user}` is created on the target by `offload copy --create-users`, or \
                 by `tutor local do init --limit={plugin}` after cutover"
            )
        };
        return (true, format!("database `{db}` is copied; {users}"));
    }
    if !on_source.contains(db) {
        return (
            true,
            format!(
                "database `{db}` is not on the source (the plugin's init has not run there): \
                 nothing to copy; `tutor local do init --limit={plugin}` after cutover creates \
                 it and user `{user}` on the new server"
            ),
        );
    }
    let why = if options.exclude.contains(db) {
        "--exclude leaves it out"
    } else {
        "--databases does not name it"
    };
    (
        false,
        format!(
            "database `{db}` is on the source but {why}: after cutover {plugin} would use the \
             new server and find no data. Add `{db}` to --databases (or drop it from \
             --exclude), or disable the plugin (`tutor plugins disable {plugin}`) if it is no \
             longer used"
        ),
    )
}

/// Whether the target server reports replicas or cluster peers: information for the plan, since
/// Tutor's scaling guide warns that a single database server is a single point of failure.
async fn target_redundancy(store: &MysqlStore) -> Result<String, StoreError> {
    let mut conn = store.conn(Side::Target).await?;
    // Each query is tried in turn and any refusal ignored: which ones exist depends on the
    // server (Galera, Group Replication, MySQL 8.0.22+, MariaDB) and on the user's privileges.
    let galera: Option<(String, u64)> = conn
        .query_first("SHOW STATUS LIKE 'wsrep_cluster_size'")
        .await
        .ok()
        .flatten();
    if let Some((_, nodes)) = galera.filter(|(_, n)| *n > 1) {
        return Ok(format!("the target is a Galera cluster of {nodes} nodes"));
    }
    let group: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM performance_schema.replication_group_members WHERE MEMBER_STATE = 'ONLINE'")
        .await
        .ok()
        .flatten();
    if let Some(members) = group.filter(|n| *n > 1) {
        return Ok(format!(
            "the target is a Group Replication member with {members} members online"
        ));
    }
    let mut listed = false;
    for sql in ["SHOW REPLICAS", "SHOW REPLICA HOSTS", "SHOW SLAVE HOSTS"] {
        if let Ok(rows) = conn.query::<mysql_async::Row, _>(sql).await {
            if !rows.is_empty() {
                return Ok(format!(
                    "{} replica(s) are registered with the target ({sql})",
                    rows.len()
                ));
            }
            listed = true;
            break;
        }
    }
    let seen = if listed {
        "no replica is registered with the target and it is in no cluster"
    } else {
        "offload could not list the target's replicas (listing them needs REPLICATION SLAVE or REPLICATION MASTER ADMIN), and it is in no cluster"
    };
    Ok(format!(
        "{seen}: if it has no standby, it is a single point of failure, as Tutor's scaling guide warns (information, not an error; a managed service's standby, e.g. RDS Multi-AZ, is not visible over SQL)"
    ))
}

impl MysqlStore {
    async fn grants(&self, side: Side) -> Result<String, StoreError> {
        let grants = self.query_strings(side, "SHOW GRANTS", vec![]).await?;
        Ok(grants.join("\n").to_ascii_uppercase())
    }

    /// How the connection to one side is protected: the session's cipher and what its
    /// ssl-mode verified, or why it is plain.
    pub(super) async fn tls_note(&self, side: Side) -> Result<String, StoreError> {
        let mut conn = self.conn(side).await?;
        let row: Option<(String, String)> = conn
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .await
            .map_err(|e| self.err(side, e))?;
        let pool = match side {
            Side::Source => &self.source_pool,
            Side::Target => &self.target_pool,
        };
        Ok(self
            .endpoint(side)
            .tls_description(row.as_ref().map(|(_, c)| c.as_str()), pool.settled()))
    }

    pub(super) async fn variable(
        &self,
        side: Side,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn(side).await?;
        // Variable names are offload's own constants, never user input.
        let value: Option<Option<String>> = conn
            .query_first(format!("SELECT @@{name}"))
            .await
            .map_err(|e| self.err(side, e))?;
        Ok(value.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::stores::mysql::{AppUser, MysqlOptions};

    #[test]
    fn a_plugin_database_left_out_of_the_copy_fails_its_check() {
        let p = PluginDatabase {
            plugin: "discovery".into(),
            database: "discovery".into(),
            user: "disco".into(),
        };
        let on_source: BTreeSet<String> = ["openedx", "discovery"].map(String::from).into();
        let mut options = MysqlOptions::default();
        let chosen = ["openedx".to_string(), "discovery".to_string()];

        let (ok, detail) = plugin_database_status(&p, &chosen, &on_source, &options);
        assert!(ok && detail.contains("is copied"), "{detail}");
        assert!(detail.contains("--limit=discovery"), "{detail}");
        options.create_users.push(AppUser {
            name: "disco".into(),
            password: Secret::new("pw"),
            database: "discovery".into(),
        });
        let (_, detail) = plugin_database_status(&p, &chosen, &on_source, &options);
        assert!(
            detail.contains("with its grants (--create-users)"),
            "{detail}"
        );

        let (ok, detail) = plugin_database_status(&p, &chosen[..1], &on_source, &options);
        assert!(
            !ok && detail.contains("--databases does not name it"),
            "{detail}"
        );
        options.exclude.push("discovery".into());
        let (ok, detail) = plugin_database_status(&p, &chosen[..1], &on_source, &options);
        assert!(
            !ok && detail.contains("--exclude leaves it out"),
            "{detail}"
        );

        let (ok, detail) = plugin_database_status(&p, &chosen[..1], &BTreeSet::new(), &options);
        assert!(ok && detail.contains("not on the source"), "{detail}");
    }
}
