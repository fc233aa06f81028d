//! Reads the platform's source of truth for the indexes: course overviews, modes, the split
//! modulestore's course index and the forum's posts from MySQL, course structures and definitions
//! from MongoDB. Forum posts are read in key order, a page at a time; structures one course at a
//! time, so memory follows the largest course, not the platform.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mysql_async::prelude::*;
use mysql_async::Row;

use super::documents::{
    Block, CourseMode, CourseOverview, CourseTree, ForumComment, ForumThread, Micros,
};
use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::stores::mongodb::{map_error, MongoEndpoint};
use crate::stores::mysql::{MysqlEndpoint, SettledPool};

/// One course in the split modulestore's course index (MySQL).
#[derive(Debug, Clone, PartialEq)]
pub struct CourseIndexEntry {
    pub course_id: String,
    pub published_version: String,
    pub draft_version: String,
}

/// Where the source of truth is read.
pub struct SourceReader {
    pool: SettledPool,
    mysql_address: String,
    database: String,
    /// The modulestore's database, with its endpoint and side for messages.
    mongo: Option<MongoSource>,
}

/// The MongoDB database course structures are read from.
pub struct MongoSource {
    pub database: mongodb::Database,
    pub endpoint: MongoEndpoint,
    /// Which server of the migration it is.
    pub side: Side,
}

impl MongoSource {
    /// Connect to `database` on `endpoint` (through the MongoDB store's client and messages).
    pub async fn connect(
        endpoint: &MongoEndpoint,
        side: Side,
        database: &str,
    ) -> Result<MongoSource, StoreError> {
        let client = endpoint.client(side, 2).await?;
        Ok(MongoSource {
            database: client.database(database),
            endpoint: endpoint.clone(),
            side,
        })
    }

    fn error(&self, e: mongodb::error::Error) -> StoreError {
        let mut err = map_error(self.side, &self.endpoint, e);
        err.detail = format!("reading course structures: {}", err.detail);
        err
    }
}

/// A datetime column as microseconds since the epoch, computed by the server (no time zone involved).
fn micros(column: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', `{column}`)")
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl SourceReader {
    /// Open MySQL (`database` holds the platform's tables), with the modulestore's MongoDB
    /// when there is one.
    pub fn new(mysql: &MysqlEndpoint, database: &str, mongo: Option<MongoSource>) -> SourceReader {
        let setup = vec![
            "SET NAMES utf8mb4".to_string(),
            "SET time_zone = '+00:00'".to_string(),
        ];
        SourceReader {
            pool: SettledPool::new(mysql, setup, 2),
            mysql_address: mysql.address(),
            database: database.to_string(),
            mongo,
        }
    }

    /// `host:port` of MySQL and MongoDB, for reports.
    pub fn describe(&self) -> String {
        match &self.mongo {
            Some(m) => format!(
                "MySQL {} (database {}), MongoDB {} (database {})",
                self.mysql_address,
                self.database,
                m.endpoint.address(),
                m.database.name()
            ),
            None => format!("MySQL {} (database {})", self.mysql_address, self.database),
        }
    }

    fn mysql_error(&self, e: mysql_async::Error) -> StoreError {
        let mut err =
            crate::stores::mysql::map_error(crate::core::Side::Source, &self.mysql_address, e);
        err.detail = format!(
            "reading the source of truth for Meilisearch: {}",
            err.detail
        );
        err
    }

    async fn rows(
        &self,
        sql: String,
        params: Vec<mysql_async::Value>,
    ) -> Result<Vec<Row>, StoreError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| self.mysql_error(e))?;
        conn.exec(sql, params)
            .await
            .map_err(|e| self.mysql_error(e))
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", ident(&self.database), ident(name))
    }

    /// Whether a table exists in the platform's database.
    pub async fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        let rows = self
            .rows(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?"
                    .into(),
                vec![self.database.clone().into(), name.into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Courses (not libraries) of the split modulestore's course index, by course id.
    pub async fn course_index(&self) -> Result<Vec<CourseIndexEntry>, StoreError> {
        Ok(self
            .course_index_versions()
            .await?
            .into_iter()
            .filter(|(id, _)| id.starts_with("course-v1:"))
            .map(
                |(course_id, [draft_version, published_version, _])| CourseIndexEntry {
                    course_id,
                    published_version,
                    draft_version,
                },
            )
            .collect())
    }

    /// Every course overview, by course id.
    pub async fn course_overviews(&self) -> Result<HashMap<String, CourseOverview>, StoreError> {
        let sql = format!(
            "SELECT id, display_name, {}, {}, {}, {}, advertised_start, course_image_url, effort,
                    short_description, language, invitation_only, catalog_visibility
             FROM {} ORDER BY id",
            micros("start"),
            micros("end"),
            micros("enrollment_start"),
            micros("enrollment_end"),
            self.table("course_overviews_courseoverview")
        );
        let mut out = HashMap::new();
        for mut r in self.rows(sql, vec![]).await? {
            let o = CourseOverview {
                id: r.take(0).unwrap_or_default(),
                display_name: r.take(1).unwrap_or(None),
                start: r.take(2).unwrap_or(None),
                end: r.take(3).unwrap_or(None),
                enrollment_start: r.take(4).unwrap_or(None),
                enrollment_end: r.take(5).unwrap_or(None),
                advertised_start: r.take(6).unwrap_or(None),
                course_image_url: r.take(7).unwrap_or_default(),
                effort: r.take(8).unwrap_or(None),
                short_description: r.take(9).unwrap_or(None),
                language: r.take(10).unwrap_or(None),
                invitation_only: r.take::<Option<i64>, _>(11).flatten().unwrap_or(0) != 0,
                catalog_visibility: r.take(12).unwrap_or(None),
            };
            out.insert(o.id.clone(), o);
        }
        Ok(out)
    }

    /// Every course mode, by course id.
    pub async fn course_modes(&self) -> Result<HashMap<String, Vec<CourseMode>>, StoreError> {
        let sql = format!(
            "SELECT course_id, mode_slug, currency, {} FROM {} ORDER BY id",
            micros("expiration_datetime"),
            self.table("course_modes_coursemode")
        );
        let mut out: HashMap<String, Vec<CourseMode>> = HashMap::new();
        for r in self.rows(sql, vec![]).await? {
            let (course, slug, currency, expiration): (String, String, String, Option<Micros>) =
                mysql_async::from_row(r);
            out.entry(course).or_default().push(CourseMode {
                slug,
                currency,
                expiration,
            });
        }
        Ok(out)
    }

    /// Studio's `SearchAccess` ids by course, when the table exists.
    pub async fn access_ids(&self) -> Result<Option<HashMap<String, i64>>, StoreError> {
        if !self.has_table("search_searchaccess").await? {
            return Ok(None);
        }
        let rows = self
            .rows(
                format!(
                    "SELECT context_key, id FROM {}",
                    self.table("search_searchaccess")
                ),
                vec![],
            )
            .await?;
        Ok(Some(
            rows.into_iter()
                .map(mysql_async::from_row::<(String, i64)>)
                .collect(),
        ))
    }

    /// Forum threads with an id above `after`, at most `limit`, in id order.
    pub async fn threads(&self, after: i64, limit: u64) -> Result<Vec<ForumThread>, StoreError> {
        let sql = format!(
            "SELECT id, course_id, title, body, context, commentable_id FROM {} WHERE id > ? ORDER BY id LIMIT {limit}",
            self.table("forum_commentthread")
        );
        Ok(self
            .rows(sql, vec![after.into()])
            .await?
            .into_iter()
            .map(|r| {
                let (id, course_id, title, body, context, commentable_id) =
                    mysql_async::from_row(r);
                ForumThread {
                    id,
                    course_id,
                    title,
                    body,
                    context,
                    commentable_id,
                }
            })
            .collect())
    }

    /// Forum comments with an id above `after`, at most `limit`, in id order.
    pub async fn comments(&self, after: i64, limit: u64) -> Result<Vec<ForumComment>, StoreError> {
        let sql = format!(
            "SELECT id, course_id, body, comment_thread_id FROM {} WHERE id > ? ORDER BY id LIMIT {limit}",
            self.table("forum_comment")
        );
        Ok(self
            .rows(sql, vec![after.into()])
            .await?
            .into_iter()
            .map(|r| {
                let (id, course_id, body, comment_thread_id) = mysql_async::from_row(r);
                ForumComment {
                    id,
                    course_id,
                    body,
                    comment_thread_id,
                }
            })
            .collect())
    }

    /// Every entry of the split modulestore's course index (courses and libraries) with its
    /// `(draft, published, library)` versions, `""` where a branch is absent.
    pub async fn course_index_versions(&self) -> Result<Vec<(String, [String; 3])>, StoreError> {
        let rows = self
            .rows(
                format!(
                    "SELECT course_id, draft_version, published_version, library_version FROM {} ORDER BY course_id",
                    self.table("split_modulestore_django_splitmodulestorecourseindex")
                ),
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                type Versions = (String, Option<String>, Option<String>, Option<String>);
                let (id, draft, published, library): Versions = mysql_async::from_row(r);
                let v = |x: Option<String>| x.unwrap_or_default();
                (id, [v(draft), v(published), v(library)])
            })
            .collect())
    }

    /// MongoDB's `modulestore.active_versions`: `(org, course, run)` to the
    /// `(draft-branch, published-branch, library)` versions in hex, `""` where absent.
    pub async fn active_versions(
        &self,
    ) -> Result<HashMap<(String, String, String), [String; 3]>, StoreError> {
        let m = self.mongo()?;
        let db = &m.database;
        let mut cursor = db
            .collection::<Document>("modulestore.active_versions")
            .find(doc! {})
            .projection(doc! {"org": 1, "course": 1, "run": 1, "versions": 1})
            .await
            .map_err(|e| m.error(e))?;
        let mut out = HashMap::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| m.error(e))? {
            let text = |k: &str| d.get_str(k).unwrap_or_default().to_string();
            let versions = d.get_document("versions").ok();
            let version = |branch: &str| {
                versions
                    .and_then(|v| v.get_object_id(branch).ok())
                    .map(|o| o.to_hex())
                    .unwrap_or_default()
            };
            out.insert(
                (text("org"), text("course"), text("run")),
                [
                    version("draft-branch"),
                    version("published-branch"),
                    version("library"),
                ],
            );
        }
        Ok(out)
    }

    /// Row count of a table (forum tables), for plans and checks.
    pub async fn count(&self, table: &str) -> Result<u64, StoreError> {
        let rows = self
            .rows(
                format!("SELECT COUNT(*) FROM {}", self.table(table)),
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(mysql_async::from_row::<u64>)
            .unwrap_or(0))
    }

    fn mongo(&self) -> Result<&MongoSource, StoreError> {
        self.mongo.as_ref().ok_or_else(|| {
            StoreError::new(
                StoreKind::Mongodb,
                "?",
                ErrorKind::Input,
                "no MongoDB to read course structures from",
                "pass --to-mongodb URL (or --from-mongodb with --meilisearch-source source)",
            )
        })
    }

    /// A course's structure at `version` (a structure ObjectId in hex), with the definition data
    /// of the blocks whose content is indexed. `None` when the version is empty or missing.
    pub async fn course_tree(
        &self,
        course_id: &str,
        version: &str,
    ) -> Result<Option<CourseTree>, StoreError> {
        let m = self.mongo()?;
        let db = &m.database;
        let Ok(oid) = ObjectId::parse_str(version) else {
            return Ok(None);
        };
        let structure = db
            .collection::<Document>("modulestore.structures")
            .find_one(doc! {"_id": oid})
            .await
            .map_err(|e| m.error(e))?;
        let Some(structure) = structure else {
            return Ok(None);
        };
        let pair = |v: &Bson| -> Option<(String, String)> {
            let a = v.as_array()?;
            Some((
                a.first()?.as_str()?.to_string(),
                a.get(1)?.as_str()?.to_string(),
            ))
        };
        let root = structure
            .get("root")
            .and_then(pair)
            .unwrap_or(("course".into(), "course".into()));
        let mut blocks = HashMap::new();
        let mut definitions: HashMap<ObjectId, (String, String)> = HashMap::new();
        for b in structure
            .get_array("blocks")
            .map(|a| a.as_slice())
            .unwrap_or(&[])
        {
            let Some(b) = b.as_document() else { continue };
            let (Ok(block_type), Ok(block_id)) = (b.get_str("block_type"), b.get_str("block_id"))
            else {
                continue;
            };
            let fields = b.get_document("fields").ok();
            let field_str = |k: &str| fields.and_then(|f| f.get_str(k).ok()).map(str::to_string);
            let block = Block {
                block_type: block_type.to_string(),
                block_id: block_id.to_string(),
                display_name: field_str("display_name"),
                start: fields
                    .and_then(|f| f.get_datetime("start").ok())
                    .map(|d| d.timestamp_millis() * 1000),
                children: fields
                    .and_then(|f| f.get_array("children").ok())
                    .map(|a| a.iter().filter_map(pair).collect())
                    .unwrap_or_default(),
                data: None,
                edited_on: b
                    .get_document("edit_info")
                    .ok()
                    .and_then(|e| e.get_datetime("edited_on").ok())
                    .map(|d| d.timestamp_millis() * 1000),
            };
            if matches!(block_type, "html" | "problem" | "about") {
                if let Ok(def) = b.get_object_id("definition") {
                    definitions.insert(def, (block_type.to_string(), block_id.to_string()));
                }
            }
            blocks.insert((block.block_type.clone(), block.block_id.clone()), block);
        }
        let ids: Vec<ObjectId> = definitions.keys().copied().collect();
        for chunk in ids.chunks(1000) {
            let mut cursor = db
                .collection::<Document>("modulestore.definitions")
                .find(doc! {"_id": {"$in": chunk.to_vec()}})
                .projection(doc! {"fields.data": 1})
                .await
                .map_err(|e| m.error(e))?;
            while let Some(def) = cursor.try_next().await.map_err(|e| m.error(e))? {
                let (Ok(id), Ok(fields)) = (def.get_object_id("_id"), def.get_document("fields"))
                else {
                    continue;
                };
                if let (Some(key), Ok(data)) = (definitions.get(&id), fields.get_str("data")) {
                    if let Some(block) = blocks.get_mut(key) {
                        block.data = Some(data.to_string());
                    }
                }
            }
        }
        Ok(Some(CourseTree {
            course_id: course_id.to_string(),
            root,
            blocks,
        }))
    }
}
