//! Checks that span stores of a Tutor platform, run by a job after verify: the split
//! modulestore's course index in MySQL against MongoDB's `modulestore.active_versions`, and each
//! search index's document count against the entities it is built from.

use std::collections::HashMap;

use super::Job;
use crate::core::verify::CrossCheck;
use crate::search::source::SourceReader;
use crate::search::specs::IndexKind;
use crate::search::{index_uid, ReindexReport};

const COURSE_INDEX_TABLE: &str = "split_modulestore_django_splitmodulestorecourseindex";
const COURSE_INDEX_CHECK: &str = "course index: MySQL vs MongoDB active_versions";

/// `(org, course, run)` of a course key as `modulestore.active_versions` stores it: runs of
/// `course-v1:ORG+COURSE+RUN`, and `library` for `library-v1:ORG+LIB`.
pub fn active_versions_key(course_id: &str) -> Option<(String, String, String)> {
    if let Some(rest) = course_id.strip_prefix("course-v1:") {
        let mut parts = rest.splitn(3, '+');
        let (org, course, run) = (parts.next()?, parts.next()?, parts.next()?);
        return Some((org.into(), course.into(), run.into()));
    }
    let rest = course_id.strip_prefix("library-v1:")?;
    let (org, library) = rest.split_once('+')?;
    Some((org.into(), library.into(), "library".into()))
}

/// Compare the course index (`course id` → draft, published, library versions) with
/// `active_versions`; returns the differences in words, each naming its course.
pub fn compare_course_index(
    index: &[(String, [String; 3])],
    active: &HashMap<(String, String, String), [String; 3]>,
) -> Vec<String> {
    const BRANCHES: [&str; 3] = ["draft-branch", "published-branch", "library"];
    let mut out = Vec::new();
    for (course_id, versions) in index {
        let Some(key) = active_versions_key(course_id) else {
            out.push(format!(
                "{course_id}: not a course or library key offload understands"
            ));
            continue;
        };
        let Some(mongo) = active.get(&key) else {
            out.push(format!(
                "{course_id}: missing from modulestore.active_versions"
            ));
            continue;
        };
        for (i, branch) in BRANCHES.iter().enumerate() {
            if versions[i] != mongo[i] {
                let show = |v: &str| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.to_string()
                    }
                };
                out.push(format!(
                    "{course_id}: {branch} is {} in MySQL but {} in MongoDB",
                    show(&versions[i]),
                    show(&mongo[i])
                ));
            }
        }
    }
    out
}

fn summarize(problems: &[String], of: usize) -> String {
    const SHOWN: usize = 10;
    let mut text = format!("{} of {of} course index entr(ies) differ: ", problems.len());
    text.push_str(
        &problems
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    if problems.len() > SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    text
}

async fn course_index_check(source: &SourceReader) -> CrossCheck {
    let check = |ok: bool, detail: String| CrossCheck {
        name: COURSE_INDEX_CHECK.into(),
        ok,
        detail,
    };
    match source.has_table(COURSE_INDEX_TABLE).await {
        Ok(true) => {}
        Ok(false) => {
            return check(true, format!("not applicable: MySQL has no {COURSE_INDEX_TABLE} table (the course index lives in MongoDB only, which its verify covers)"));
        }
        Err(e) => return check(false, format!("could not read MySQL: {e}")),
    }
    let index = match source.course_index_versions().await {
        Ok(i) => i,
        Err(e) => return check(false, format!("could not read the MySQL course index: {e}")),
    };
    let active = match source.active_versions().await {
        Ok(a) => a,
        Err(e) => {
            return check(
                false,
                format!("could not read modulestore.active_versions: {e}"),
            )
        }
    };
    let problems = compare_course_index(&index, &active);
    if problems.is_empty() {
        check(true, format!("all {} course index entr(ies) name the same versions in MySQL and MongoDB (on the targets)", index.len()))
    } else {
        check(false, format!("{}. The platform would open different course versions than Studio shows: compare the two on the source, fix the source, then copy again", summarize(&problems, index.len())))
    }
}

/// Counts the search indexes must hold, read from MySQL independently of the index builder where
/// a table holds one document per entity.
async fn expected_counts(source: &SourceReader) -> HashMap<IndexKind, u64> {
    let mut out = HashMap::new();
    for (kind, table) in [
        (IndexKind::CommentThreads, "forum_commentthread"),
        (IndexKind::Comments, "forum_comment"),
    ] {
        if !matches!(source.has_table(table).await, Ok(true)) {
            continue;
        }
        if let Ok(n) = source.count(table).await {
            out.insert(kind, n);
        }
    }
    out
}

async fn search_count_checks(
    source: &SourceReader,
    report: &ReindexReport,
    prefix: &str,
) -> Vec<CrossCheck> {
    let expected = expected_counts(source).await;
    IndexKind::ALL
        .iter()
        .filter_map(|kind| {
            let uid = index_uid(prefix, *kind);
            let index = report.indexes.iter().find(|i| i.index == uid)?;
            let (want, from) = match expected.get(kind) {
                Some(n) => (*n, format!("rows of {}", kind.source())),
                None => (index.documents, format!("entities read from {}", kind.source())),
            };
            let ok = index.live_documents == want;
            Some(CrossCheck {
                name: format!("search index {uid}: count vs source"),
                ok,
                detail: if ok {
                    format!("{want} document(s), as many as {from}")
                } else {
                    format!("the live index holds {} document(s), the source has {want} ({from}); run `offload reindex` again and check its report", index.live_documents)
                },
            })
        })
        .collect()
}

impl Job {
    /// Every cross-store check that applies to this job; `reindexed` is the reindex phase's
    /// report, when it ran.
    pub async fn cross_checks(&self, reindexed: Option<&ReindexReport>) -> Vec<CrossCheck> {
        let settings = &self.settings;
        let both = settings.mysql().is_some() && settings.mongodb().is_some();
        if !both && reindexed.is_none() {
            return Vec::new();
        }
        let source = match super::source_of_truth(settings).await {
            Ok(s) => s,
            Err(e) => {
                return vec![CrossCheck {
                    name: "cross-store checks".into(),
                    ok: false,
                    detail: format!("could not open the migrated MySQL and MongoDB: {e}"),
                }]
            }
        };
        let mut out = Vec::new();
        if both {
            out.push(course_index_check(&source).await);
        }
        if let (Some(report), Some(m)) = (reindexed, &settings.meilisearch) {
            out.extend(search_count_checks(&source, report, &m.prefix).await);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn course_and_library_keys_map_to_active_versions_fields() {
        assert_eq!(
            active_versions_key("course-v1:Org-With.Dots+Course~Tilde+Run:Colon"),
            Some(key("Org-With.Dots", "Course~Tilde", "Run:Colon"))
        );
        assert_eq!(
            active_versions_key("library-v1:OpenedX+Bibliothèque"),
            Some(key("OpenedX", "Bibliothèque", "library"))
        );
        assert_eq!(active_versions_key("block-v1:x+y+z"), None);
        assert_eq!(active_versions_key("course-v1:only+two"), None);
    }

    #[test]
    fn differences_name_the_course_and_branch() {
        let v = |d: &str, p: &str| [d.to_string(), p.to_string(), String::new()];
        let index = vec![
            ("course-v1:A+B+C".to_string(), v("d1", "p1")),
            ("course-v1:A+B+D".to_string(), v("d2", "p2")),
            ("course-v1:A+B+E".to_string(), v("d3", "p3")),
        ];
        let mut active = HashMap::new();
        active.insert(key("A", "B", "C"), v("d1", "p1"));
        active.insert(key("A", "B", "D"), v("d2", "OTHER"));
        let problems = compare_course_index(&index, &active);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("course-v1:A+B+D") && problems[0].contains("published-branch")
        );
        assert!(problems[1].contains("course-v1:A+B+E") && problems[1].contains("missing"));
    }
}
