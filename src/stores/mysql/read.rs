//! Reading a table's rows in key order on either side: the range query after and up to a
//! cursor, cursors read back, and a key range put in words for reports.

use futures_util::StreamExt;
use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value};

use super::schema::TableInfo;
use super::values::decode_cursor;
use super::MysqlStore;
use crate::core::{Cursor, ErrorKind, Side, StoreError, StoreKind, Unit};

impl MysqlStore {
    /// The range query of a table: rows after `after`, up to `upto`, in key order, at most `limit`.
    pub(super) fn range_query(
        &self,
        side: Side,
        table: &TableInfo,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
    ) -> Result<(String, Vec<Value>), StoreError> {
        let after_v = after.map(|c| self.decode(c, side)).transpose()?;
        let upto_v = upto.map(|c| self.decode(c, side)).transpose()?;
        let (cond, params) = table.range_condition(after_v.as_deref(), upto_v.as_deref());
        let limit_sql = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let sql = format!(
            "SELECT {} FROM {}{cond}{}{limit_sql}",
            table.select_list,
            table.qualified,
            table.order_by()
        );
        Ok((sql, params))
    }

    pub(super) fn no_result_set(&self, side: Side) -> StoreError {
        StoreError::new(
            StoreKind::Mysql,
            self.endpoint(side).address(),
            ErrorKind::Query,
            "the range query returned no result set",
            "report this as a bug",
        )
    }

    /// Run the unit's range query on one side and feed each row to `each`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scan(
        &self,
        conn: &mut Conn,
        side: Side,
        table: &TableInfo,
        after: Option<&Cursor>,
        upto: Option<&Cursor>,
        limit: Option<u64>,
        mut each: impl FnMut(Vec<Value>),
    ) -> Result<(), StoreError> {
        let (sql, params) = self.range_query(side, table, after, upto, limit)?;
        let mut result = conn
            .exec_iter(sql, params)
            .await
            .map_err(|e| self.err(side, e))?;
        let mut stream = result
            .stream::<Row>()
            .await
            .map_err(|e| self.err(side, e))?
            .ok_or_else(|| self.no_result_set(side))?;
        while let Some(row) = stream.next().await {
            each(row.map_err(|e| self.err(side, e))?.unwrap());
        }
        Ok(())
    }

    pub(super) fn decode(&self, c: &Cursor, side: Side) -> Result<Vec<Value>, StoreError> {
        decode_cursor(c).ok_or_else(|| {
            StoreError::new(
                StoreKind::Mysql,
                self.endpoint(side).address(),
                ErrorKind::Input,
                format!("unreadable cursor {}", c.0),
                "the job folder was written by another version; start over with --restart",
            )
        })
    }
}

pub(super) fn render_range(
    store: &MysqlStore,
    unit: &Unit,
    after: Option<&Cursor>,
    upto: Option<&Cursor>,
) -> String {
    let info = store
        .tables
        .lock()
        .expect("table cache")
        .get(&(unit.container.clone(), unit.object.clone()))
        .cloned();
    let Some(info) = info else {
        return format!("{}.{}", unit.container, unit.object);
    };
    if info.keyless() {
        return format!("{}.{} (whole table, no key)", unit.container, unit.object);
    }
    let show = |c: Option<&Cursor>| c.and_then(decode_cursor).map(|v| info.display_key(&v));
    let mut parts = Vec::new();
    if let Some(a) = show(after) {
        parts.push(format!("after ({a})"));
    }
    if let Some(u) = show(upto) {
        parts.push(format!("up to ({u})"));
    }
    let range = if parts.is_empty() {
        "all rows".to_string()
    } else {
        parts.join(" ")
    };
    format!("{}.{} {range}", unit.container, unit.object)
}
