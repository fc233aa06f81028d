//! The indexes Open edX serves from Meilisearch and the settings its own code gives each one
//! (primary key, filterable, searchable and sortable attributes, ranking rules, distinct
//! attribute), so a rebuilt index behaves exactly like one the platform built.

use serde_json::{json, Value};

/// Which indexer builds an index's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    CourseInfo,
    CoursewareContent,
    StudioContent,
    CommentThreads,
    Comments,
}

impl IndexKind {
    pub const ALL: [IndexKind; 5] = [
        IndexKind::CourseInfo,
        IndexKind::CoursewareContent,
        IndexKind::StudioContent,
        IndexKind::CommentThreads,
        IndexKind::Comments,
    ];

    /// The index name without the prefix.
    pub fn name(self) -> &'static str {
        match self {
            IndexKind::CourseInfo => "course_info",
            IndexKind::CoursewareContent => "courseware_content",
            IndexKind::StudioContent => "studio_content",
            IndexKind::CommentThreads => "comment_threads",
            IndexKind::Comments => "comments",
        }
    }

    pub fn parse(name: &str) -> Option<IndexKind> {
        IndexKind::ALL.into_iter().find(|k| k.name() == name.trim())
    }

    /// What fills the index, for messages.
    pub fn source(self) -> &'static str {
        match self {
            IndexKind::CourseInfo => "course overviews and modes (MySQL), about blocks (MongoDB)",
            IndexKind::CoursewareContent => "published course structures (MongoDB)",
            IndexKind::StudioContent => "draft course structures (MongoDB)",
            IndexKind::CommentThreads => "forum_commentthread (MySQL)",
            IndexKind::Comments => "forum_comment (MySQL)",
        }
    }

    /// The settings the platform applies, as a `PATCH /indexes/{uid}/settings` body. Settings the
    /// platform leaves at Meilisearch's defaults are set to those defaults explicitly, so a
    /// reused index name carries nothing over.
    pub fn settings(self) -> IndexSettings {
        let defaults_searchable = vec!["*".to_string()];
        let default_ranking: Vec<String> = [
            "words",
            "typo",
            "proximity",
            "attribute",
            "sort",
            "exactness",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            // edx-search INDEX_FILTERABLES / INDEX_SORTABLES.
            IndexKind::CourseInfo => IndexSettings {
                primary_key: "_pk".into(),
                filterable: list(&[
                    "language",
                    "modes",
                    "org",
                    "catalog_visibility",
                    "enrollment_end",
                ]),
                searchable: defaults_searchable,
                sortable: list(&["start"]),
                ranking_rules: default_ranking,
                distinct: None,
            },
            IndexKind::CoursewareContent => IndexSettings {
                primary_key: "_pk".into(),
                filterable: list(&["_pk", "course", "org", "catalog_visibility", "start_date"]),
                searchable: defaults_searchable,
                sortable: list(&["start"]),
                ranking_rules: default_ranking,
                distinct: None,
            },
            // openedx-platform content/search/index_config.py.
            IndexKind::StudioContent => IndexSettings {
                primary_key: "id".into(),
                filterable: list(&[
                    "block_id",
                    "block_type",
                    "context_key",
                    "usage_key",
                    "org",
                    "tags",
                    "tags.taxonomy",
                    "tags.level0",
                    "tags.level1",
                    "tags.level2",
                    "tags.level3",
                    "collections",
                    "collections.display_name",
                    "collections.key",
                    "type",
                    "access_id",
                    "last_published",
                    "content.problem_types",
                    "publish_status",
                    "breadcrumbs.usage_key",
                ]),
                searchable: list(&[
                    "display_name",
                    "block_id",
                    "content",
                    "description",
                    "tags",
                    "collections",
                    "tags.taxonomy",
                    "tags.level0",
                    "tags.level1",
                    "tags.level2",
                    "tags.level3",
                    "collections.display_name",
                    "collections.key",
                    "published.display_name",
                    "published.description",
                ]),
                sortable: list(&["display_name", "created", "modified", "last_published"]),
                ranking_rules: list(&[
                    "sort",
                    "words",
                    "typo",
                    "proximity",
                    "attribute",
                    "exactness",
                ]),
                distinct: Some("usage_key".into()),
            },
            // openedx/forum forum/search/meilisearch.py: initialize_indices.
            IndexKind::CommentThreads | IndexKind::Comments => IndexSettings {
                primary_key: "_pk".into(),
                filterable: list(&["_pk", "context", "course_id", "commentable_id"]),
                searchable: defaults_searchable,
                sortable: Vec::new(),
                ranking_rules: default_ranking,
                distinct: None,
            },
        }
    }
}

/// The settings offload applies to (and compares on) one index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSettings {
    pub primary_key: String,
    pub filterable: Vec<String>,
    pub searchable: Vec<String>,
    pub sortable: Vec<String>,
    pub ranking_rules: Vec<String>,
    pub distinct: Option<String>,
}

impl IndexSettings {
    /// The body of `PATCH /indexes/{uid}/settings`.
    pub fn patch_body(&self) -> Value {
        json!({
            "filterableAttributes": self.filterable,
            "searchableAttributes": self.searchable,
            "sortableAttributes": self.sortable,
            "rankingRules": self.ranking_rules,
            "distinctAttribute": self.distinct,
        })
    }

    /// Read the compared settings back from `GET /indexes/{uid}/settings` and the index's primary key.
    pub fn from_server(primary_key: Option<&str>, settings: &Value) -> IndexSettings {
        let strings = |key: &str| -> Vec<String> {
            settings[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        IndexSettings {
            primary_key: primary_key.unwrap_or_default().to_string(),
            filterable: strings("filterableAttributes"),
            searchable: strings("searchableAttributes"),
            sortable: strings("sortableAttributes"),
            ranking_rules: strings("rankingRules"),
            distinct: settings["distinctAttribute"].as_str().map(str::to_string),
        }
    }

    /// The differences from `actual`, named: filterable and sortable attributes compare as sets
    /// (their order means nothing to a search; Meilisearch returns filterable ones in the order
    /// set and sortable ones sorted), searchable attributes and ranking rules in order.
    pub fn differences(&self, actual: &IndexSettings) -> Vec<String> {
        let mut out = Vec::new();
        let set = |v: &[String]| {
            let mut s = v.to_vec();
            s.sort();
            s.dedup();
            s
        };
        if self.primary_key != actual.primary_key {
            out.push(format!(
                "primary key: expected `{}`, found `{}`",
                self.primary_key, actual.primary_key
            ));
        }
        let mut compare = |name: &str, a: Vec<String>, b: Vec<String>| {
            if a != b {
                out.push(format!("{name}: expected {a:?}, found {b:?}"));
            }
        };
        compare(
            "filterableAttributes",
            set(&self.filterable),
            set(&actual.filterable),
        );
        compare(
            "searchableAttributes",
            self.searchable.clone(),
            actual.searchable.clone(),
        );
        compare(
            "sortableAttributes",
            set(&self.sortable),
            set(&actual.sortable),
        );
        compare(
            "rankingRules",
            self.ranking_rules.clone(),
            actual.ranking_rules.clone(),
        );
        if self.distinct != actual.distinct {
            out.push(format!(
                "distinctAttribute: expected {:?}, found {:?}",
                self.distinct, actual.distinct
            ));
        }
        out
    }
}
