//! Holding the source's writers off for the final pass with `read_only` (and MySQL 8's
//! `super_read_only`), and letting them in again.

use mysql_async::prelude::*;

use super::MysqlStore;
use crate::core::{Side, StoreError};

pub(super) async fn freeze_source(
    store: &MysqlStore,
    left_by_earlier_run: bool,
) -> Result<Option<String>, StoreError> {
    let mut conn = store.conn(Side::Source).await?;
    let was: Option<Option<String>> = conn
        .query_first("SELECT @@GLOBAL.read_only")
        .await
        .map_err(|e| store.err(Side::Source, e))?;
    let was_on = matches!(was.flatten().as_deref(), Some("1") | Some("ON"));
    if was_on && left_by_earlier_run {
        *store.frozen.lock().expect("freeze flag") = true;
        return Ok(Some(format!(
            "mysql: source {} is still read_only from an earlier run of this job that was stopped; this run sets it back when it ends",
            store.source.address()
        )));
    }
    if was_on {
        return Ok(Some(
            "mysql: the source was already read_only before offload (left so at the end)".into(),
        ));
    }
    conn.query_drop("SET GLOBAL read_only = ON")
        .await
        .map_err(|e| store.err(Side::Source, e))?;
    // MySQL 8 also blocks SUPER users with super_read_only; MariaDB has no such variable.
    let _ = conn.query_drop("SET GLOBAL super_read_only = ON").await;
    *store.frozen.lock().expect("freeze flag") = true;
    tracing::warn!(store = "mysql", host = %store.source.address(), "source set read_only; offload sets it back when it ends (if offload is killed: SET GLOBAL read_only = OFF)");
    Ok(Some(format!(
        "mysql: source {} is read_only until offload ends",
        store.source.address()
    )))
}

pub(super) async fn thaw_source(store: &MysqlStore) -> Result<(), StoreError> {
    let frozen = std::mem::take(&mut *store.frozen.lock().expect("freeze flag"));
    if !frozen {
        return Ok(());
    }
    let mut conn = store.conn(Side::Source).await?;
    let _ = conn.query_drop("SET GLOBAL super_read_only = OFF").await;
    conn.query_drop("SET GLOBAL read_only = OFF")
        .await
        .map_err(|e| {
            let mut err = store.err(Side::Source, e);
            err.hint = format!(
                "run SET GLOBAL read_only = OFF on the source ({}) as an administrator",
                store.source.address()
            );
            err
        })?;
    tracing::info!(store = "mysql", host = %store.source.address(), "source writable again");
    Ok(())
}
