//! What offload tells before any work: both servers' versions and topology, whether the target
//! takes writes, what consistency the copy will have, what the source holds; and, after a copy,
//! how the two sides differ in shape (collection options, indexes, views).

use std::collections::{BTreeMap, BTreeSet};

use mongodb::bson::{doc, Document};

use super::shape::{self, CollectionSpec};
use super::MongoStore;
use crate::core::store::{Check, ShapeDifference, Survey};
use crate::core::{Side, StoreError, Unit};

/// Versions, topology and prerequisites of both sides, and what the source holds.
pub async fn survey(store: &MongoStore) -> Result<Survey, StoreError> {
    let mut survey = Survey::default();
    let mut hellos = BTreeMap::new();
    for side in [Side::Source, Side::Target] {
        let hello = store.hello(side).await?;
        let build = store.command(side, "admin", doc! {"buildInfo": 1}).await?;
        let version = build.get_str("version").unwrap_or("unknown").to_string();
        let topology = match hello.get_str("setName") {
            Ok(set) => format!("replica set `{set}`"),
            Err(_) if hello.get_str("msg") == Ok("isdbgrid") => "mongos (sharded)".into(),
            Err(_) => "standalone".into(),
        };
        let shown = format!("{version} ({topology})");
        let user = store
            .endpoint(side)
            .user
            .as_deref()
            .map(|u| {
                format!(
                    "as {u} (auth source {})",
                    store.endpoint(side).auth_source()
                )
            })
            .unwrap_or_else(|| "without authentication".into());
        survey.checks.push(Check::new(
            format!("{side} reachable"),
            true,
            format!("{} {user}: {shown}", store.endpoint(side).address()),
        ));
        match side {
            Side::Source => survey.source_version = shown,
            Side::Target => survey.target_version = shown,
        }
        hellos.insert(side.to_string(), hello);
    }

    let target_hello = &hellos["target"];
    let writable = target_hello
        .get_bool("isWritablePrimary")
        .or_else(|_| target_hello.get_bool("ismaster"))
        .unwrap_or(false);
    survey.checks.push(Check::new(
        "target writable",
        writable,
        if writable {
            "the target accepts writes (primary or standalone)"
        } else {
            "the target is not a writable primary (a secondary?): point --to-mongodb at the primary, or name the replica set with ?replicaSet="
        },
    ));

    survey.checks.push(Check::new(
        "target redundancy",
        true,
        redundancy(target_hello),
    ));

    let source_hello = &hellos["source"];
    let replica_set = source_hello.get_str("setName").is_ok();
    let stop = "stop the platform's writers first: `tutor local stop lms cms lms-worker cms-worker` (and the forum if it runs apart), then copy";
    let (ok, detail) = match (replica_set, store.options.snapshot) {
        (true, true) => (true, "every source read uses one cluster time (snapshot read concern): a point-in-time copy, if it finishes within the source's minSnapshotHistoryWindowInSeconds (default 300 s; raise it for a longer copy)".to_string()),
        (true, false) => (true, format!("each batch reads what is committed at that moment, not one point in time; for an exact copy {stop}, or pass --mongodb-snapshot")),
        (false, true) => (false, format!("--mongodb-snapshot needs a replica set, and the source is a standalone server, which has no snapshot reads. Without the flag the copy reads each batch as it is at that moment (no point in time across collections or batches): {stop}, and leave out --mongodb-snapshot")),
        (false, false) => (true, format!("the source is a standalone server: no snapshot across collections or batches, so each batch reads what is there at that moment; {stop}")),
    };
    survey
        .checks
        .push(Check::new("consistent read", ok, detail));
    survey.checks.push(change_stream_check(source_hello));

    let status = store
        .command(Side::Target, "admin", doc! {"connectionStatus": 1})
        .await?;
    let roles: Vec<String> = status
        .get_document("authInfo")
        .ok()
        .and_then(|a| a.get_array("authenticatedUserRoles").ok())
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_document())
                .map(|d| {
                    format!(
                        "{}@{}",
                        d.get_str("role").unwrap_or("?"),
                        d.get_str("db").unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let strong = [
        "root@",
        "restore@",
        "dbOwner@",
        "readWriteAnyDatabase@",
        "__system@",
    ];
    let enough = roles.is_empty()
        || roles
            .iter()
            .any(|r| strong.iter().any(|s| r.starts_with(s)) || r.starts_with("readWrite@"));
    survey.checks.push(Check::new(
        "target privileges",
        enough,
        if roles.is_empty() {
            "no authenticated user on the target (authentication off)".to_string()
        } else if enough {
            format!(
                "roles {}; creating indexes and bypassing validators needs dbAdmin or restore",
                roles.join(", ")
            )
        } else {
            format!(
                "roles {} cannot write: grant readWrite and dbAdmin on the databases (or restore)",
                roles.join(", ")
            )
        },
    ));

    let layout = store.source_layout().await?;
    let mut dbs = Vec::new();
    for (db, specs) in &layout {
        let skipped: Vec<&str> = specs
            .iter()
            .filter(|s| !s.is_data() && s.kind != "view")
            .map(|s| s.name.as_str())
            .collect();
        if !skipped.is_empty() {
            survey.notes.push(format!(
                "{db}: not copied (server-managed or time series): {}",
                skipped.join(", ")
            ));
        }
        let views = specs.iter().filter(|s| s.kind == "view").count();
        dbs.push(format!(
            "{db} ({} collection(s){})",
            specs.iter().filter(|s| s.is_data()).count(),
            if views > 0 {
                format!(", {views} view(s)")
            } else {
                String::new()
            }
        ));
    }
    survey.notes.push(format!(
        "databases: {}",
        if dbs.is_empty() {
            "(none)".to_string()
        } else {
            dbs.join(", ")
        }
    ));
    Ok(survey)
}

/// Differences of collection options, indexes and views between the two sides.
pub async fn compare_shape(
    store: &MongoStore,
    units: &[Unit],
) -> Result<Vec<ShapeDifference>, StoreError> {
    let mut out = Vec::new();
    let mut dbs = BTreeSet::new();
    for (db, coll) in MongoStore::collections_of(units) {
        dbs.insert(db.clone());
        let src = store.collections(Side::Source, &db, Some(&coll)).await?;
        let tgt = store.collections(Side::Target, &db, Some(&coll)).await?;
        let diff = |detail: String| ShapeDifference {
            container: db.clone(),
            object: coll.clone(),
            detail,
        };
        let (Some(s), Some(t)) = (src.first(), tgt.first()) else {
            if !src.is_empty() {
                out.push(diff("collection missing on the target".into()));
            }
            continue;
        };
        for d in shape::diff_fields("collection option", &s.options, &t.options, &[]) {
            out.push(diff(d));
        }
        let (si, ti) = (
            shape::list_indexes(&store.db(Side::Source, &db).await?, &coll)
                .await
                .map_err(|e| store.err(Side::Source, e))?,
            shape::list_indexes(&store.db(Side::Target, &db).await?, &coll)
                .await
                .map_err(|e| store.err(Side::Target, e))?,
        );
        for d in shape::diff_indexes(&si, &ti) {
            out.push(diff(d));
        }
    }
    for db in dbs {
        let views = |specs: Vec<CollectionSpec>| -> BTreeMap<String, Document> {
            specs
                .into_iter()
                .filter(|s| s.kind == "view")
                .map(|s| (s.name, s.options))
                .collect()
        };
        let src = views(store.collections(Side::Source, &db, None).await?);
        let tgt = views(store.collections(Side::Target, &db, None).await?);
        for (name, options) in &src {
            let detail = match tgt.get(name) {
                None => vec!["view missing on the target".to_string()],
                Some(t) => shape::diff_fields("view", options, t, &[]),
            };
            for d in detail {
                out.push(ShapeDifference {
                    container: db.clone(),
                    object: name.clone(),
                    detail: d,
                });
            }
        }
    }
    Ok(out)
}

/// Whether the source can be followed after the copy (information, never a failed check: the
/// delta pass is the fallback).
fn change_stream_check(source_hello: &Document) -> Check {
    let detail = if super::follow::has_change_stream(source_hello) {
        "the source has change streams (replica set): after the copy, `offload follow` keeps the target in step from the cluster time read before the copy's first read, and the final pass only catches up the last seconds".to_string()
    } else {
        "standalone: no change stream; the final pass uses the delta pass (every _id range compared, those that differ copied again). To follow the source instead, run it as a one-node replica set: start mongod with --replSet rs0, run rs.initiate() once, and add ?replicaSet=rs0 to the source URI".to_string()
    };
    Check::new("change stream", true, detail)
}

/// What the target's `hello` says about its redundancy: information for the plan, since Tutor's
/// scaling guide warns that a single MongoDB server is a single point of failure.
fn redundancy(hello: &Document) -> String {
    if hello.get_str("msg") == Ok("isdbgrid") {
        return "the target is a mongos router of a sharded cluster".into();
    }
    match hello.get_str("setName") {
        Ok(set) => {
            let members = hello.get_array("hosts").map(|h| h.len()).unwrap_or(0);
            if members > 1 {
                format!("the target is replica set `{set}` with {members} data-bearing members")
            } else {
                format!("the target is replica set `{set}` with one member: a single point of failure, as Tutor's scaling guide warns (information, not an error); add members for failover")
            }
        }
        Err(_) => "the target is a standalone server: a single point of failure, as Tutor's scaling guide warns (information, not an error); a replica set of three members gives failover".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redundancy_names_standalone_servers_and_one_member_sets_as_single_points_of_failure() {
        assert!(redundancy(&doc! {"isWritablePrimary": true}).contains("single point of failure"));
        let one = doc! {"setName": "rs0", "hosts": ["a:27017"]};
        assert!(redundancy(&one).contains("single point of failure"));
        let three = doc! {"setName": "rs0", "hosts": ["a:27017", "b:27017", "c:27017"]};
        assert!(redundancy(&three).contains("3 data-bearing members"));
        assert!(redundancy(&doc! {"msg": "isdbgrid"}).contains("sharded"));
    }

    #[test]
    fn the_plan_says_whether_the_source_can_be_followed() {
        let standalone = change_stream_check(&doc! {"isWritablePrimary": true});
        assert!(standalone.ok, "information, not a failure");
        assert!(standalone
            .detail
            .starts_with("standalone: no change stream; the final pass uses the delta pass"));
        assert!(standalone.detail.contains("one-node replica set"));
        let set = change_stream_check(&doc! {"setName": "rs0"});
        assert!(set.detail.contains("offload follow"));
    }
}
