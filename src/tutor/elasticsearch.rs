//! The Elasticsearch era (Tutor 15 to 18): what cutover writes to `config.yml` for an external
//! Elasticsearch, which indexes that platform has, and the Tutor commands that rebuild them on the
//! new server, since search indexes are rebuilt from MySQL and MongoDB, never copied.
//!
//! Checked against Tutor 18.2.2 and tutor-forum 18.1.1 from PyPI, and Tutor's git tags 15.0.0 to
//! 18.2.2: `ELASTICSEARCH_SCHEME`, `ELASTICSEARCH_HOST` and `ELASTICSEARCH_PORT` are the only keys
//! the templates read for the connection (`ELASTIC_SEARCH_CONFIG` in the LMS and CMS settings,
//! `SEARCH_SERVER` for the forum); there is none for a user, a password or a CA.

use std::fmt::Write as _;

use super::rewrite::ConfigEdits;
use super::{TutorConfig, TutorError};

/// The external Elasticsearch that replaces Tutor's `elasticsearch` container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticsearchTarget {
    /// `http` or `https`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The user the platform connects as; empty for none. The password is not offload's to
    /// hold: Tutor has no setting for it (see [`settings_patch`]).
    pub username: String,
    /// Where the CA bundle that signed the server's certificate is inside the Open edX
    /// containers; empty for the image's default trust store.
    pub ca_certs: String,
}

/// One index of an Elasticsearch-era platform and who builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EsIndex {
    pub name: &'static str,
    /// What the index holds.
    pub holds: &'static str,
    /// The command that rebuilds it on a new server (`tutor local ...`).
    pub rebuilt_by: &'static str,
    /// The plugin that must be enabled for the index to exist, if any.
    pub plugin: Option<&'static str>,
}

const REINDEX_COURSES: &str = "tutor local run cms ./manage.py cms reindex_course --all --setup";
const REINDEX_LIBRARIES: &str = "tutor local run cms ./manage.py cms reindex_library --all";
const REINDEX_FORUM: &str = "tutor local do init --limit=forum";

/// The indexes the Open edX of Tutor 15 to 18 creates in Elasticsearch (edx-platform's
/// `cms/djangoapps/contentstore/courseware_index.py`: `courseware_content`, `course_info` written
/// with it, `library_index`; cs_comments_service, through tutor-forum: `comments` and
/// `comment_threads`, aliases of timestamped indexes).
pub const ES_INDEXES: &[EsIndex] = &[
    EsIndex {
        name: "courseware_content",
        holds: "course content (courseware search)",
        rebuilt_by: REINDEX_COURSES,
        plugin: None,
    },
    EsIndex {
        name: "course_info",
        holds: "course about pages (course discovery)",
        rebuilt_by: REINDEX_COURSES,
        plugin: None,
    },
    EsIndex {
        name: "library_index",
        holds: "content libraries (v1)",
        rebuilt_by: REINDEX_LIBRARIES,
        plugin: None,
    },
    EsIndex {
        name: "comments",
        holds: "forum responses and comments",
        rebuilt_by: REINDEX_FORUM,
        plugin: Some("forum"),
    },
    EsIndex {
        name: "comment_threads",
        holds: "forum threads",
        rebuilt_by: REINDEX_FORUM,
        plugin: Some("forum"),
    },
];

/// The indexes this platform has: the forum's only when the `forum` plugin is enabled.
pub fn platform_indexes(cfg: &TutorConfig) -> Vec<EsIndex> {
    let plugins = cfg.plugins();
    ES_INDEXES
        .iter()
        .filter(|i| i.plugin.is_none_or(|p| plugins.iter().any(|q| q == p)))
        .copied()
        .collect()
}

pub(super) fn plan_elasticsearch(
    t: &ElasticsearchTarget,
    edits: &mut ConfigEdits,
    warnings: &mut Vec<String>,
) -> Result<(), TutorError> {
    super::cutover::check_host("Elasticsearch", "host", &t.host)?;
    super::cutover::check_port("Elasticsearch", t.port)?;
    if !matches!(t.scheme.as_str(), "http" | "https") {
        return Err(super::cutover::target_error(
            "Elasticsearch",
            "the scheme must be http or https",
        ));
    }
    if !t.ca_certs.is_empty() && t.scheme != "https" {
        return Err(super::cutover::target_error(
            "Elasticsearch",
            "a CA bundle only makes sense with an https:// target",
        ));
    }
    edits
        .set("RUN_ELASTICSEARCH", false)
        .set("ELASTICSEARCH_SCHEME", t.scheme.as_str())
        .set("ELASTICSEARCH_HOST", t.host.as_str())
        .set("ELASTICSEARCH_PORT", t.port);
    if settings_patch(t).is_some() {
        warnings.push(
            "Tutor 15 to 18 have no setting for an Elasticsearch user, password or CA bundle: \
             config.yml gets only the scheme, host and port; the runbook shows the settings patch \
             (a Tutor YAML plugin) that adds the rest for the LMS and CMS. tutor-forum 18 builds \
             SEARCH_SERVER from the same three settings and has none either: the forum reaches \
             the new server only if it accepts it without them"
                .to_owned(),
        );
    }
    Ok(())
}

/// The Python lines for the `openedx-common-settings` patch that give the LMS and CMS what
/// Tutor has no key for: the user (with a placeholder where the password goes) and the CA bundle.
/// `None` when the target needs neither.
pub fn settings_patch(t: &ElasticsearchTarget) -> Option<String> {
    if t.username.is_empty() && t.ca_certs.is_empty() {
        return None;
    }
    let py = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut entry = format!("\"host\": {}, \"port\": {}", py(&t.host), t.port);
    if t.scheme == "https" {
        entry.insert_str(0, "\"use_ssl\": True, ");
    }
    if !t.username.is_empty() {
        let _ = write!(
            entry,
            ", \"http_auth\": {}",
            py(&format!("{}:<password>", t.username))
        );
    }
    if !t.ca_certs.is_empty() {
        let _ = write!(
            entry,
            ", \"verify_certs\": True, \"ca_certs\": {}",
            py(&t.ca_certs)
        );
    }
    Some(format!("ELASTIC_SEARCH_CONFIG = [{{{entry}}}]"))
}

/// The runbook step that rebuilds the indexes on the new Elasticsearch, for `plugins`.
pub(super) fn reindex_step(plugins: &[String], step: usize) -> String {
    let mut out = format!(
        "{step}. Rebuild the search indexes on the new Elasticsearch (search indexes are rebuilt \
         from MySQL and MongoDB, never copied; run these once the platform is up):\n"
    );
    let mut seen: Vec<&str> = Vec::new();
    for index in ES_INDEXES {
        if index
            .plugin
            .is_some_and(|p| !plugins.iter().any(|q| q == p))
            || seen.contains(&index.rebuilt_by)
        {
            continue;
        }
        seen.push(index.rebuilt_by);
        let names: Vec<&str> = ES_INDEXES
            .iter()
            .filter(|i| i.rebuilt_by == index.rebuilt_by)
            .map(|i| i.name)
            .collect();
        let prompt = if index.rebuilt_by == REINDEX_LIBRARIES {
            " (answer y to its prompt)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "     {}    # {}{prompt}",
            index.rebuilt_by,
            names.join(", ")
        );
    }
    let k8s: Vec<String> = seen
        .iter()
        .map(|c| {
            c.replace("tutor local run cms ", "tutor k8s exec cms ")
                .replace("tutor local do ", "tutor k8s do ")
        })
        .collect();
    let _ = writeln!(out, "     (Kubernetes: {})", k8s.join("; "));
    out
}

/// The runbook step that adds the settings Tutor has no key for, when the target needs any.
pub(super) fn patch_step(t: &ElasticsearchTarget, step: usize) -> Option<String> {
    let patch = settings_patch(t)?;
    let mut out = format!(
        "{step}. Add what Tutor has no setting for (Elasticsearch {}) with a Tutor YAML plugin, \
         before `tutor config save`: write $(tutor plugins printroot)/offload_elasticsearch.yml \
         (mode 0600{}) holding\n",
        match (t.username.is_empty(), t.ca_certs.is_empty()) {
            (false, false) => "user, password and CA bundle",
            (false, true) => "user and password",
            _ => "CA bundle",
        },
        if t.username.is_empty() {
            ""
        } else {
            ", with the real password in place of <password>"
        }
    );
    let _ = writeln!(out, "       name: offload_elasticsearch");
    let _ = writeln!(out, "       version: 1.0.0");
    let _ = writeln!(out, "       patches:");
    let _ = writeln!(out, "         openedx-common-settings: |");
    let _ = writeln!(out, "           {patch}");
    let _ = writeln!(
        out,
        "     then: tutor plugins enable offload_elasticsearch{}",
        if t.ca_certs.is_empty() {
            String::new()
        } else {
            format!(
                "\n     and make {} exist in the lms, cms and their workers (e.g. a mount, \
                 tutor mounts add)",
                t.ca_certs
            )
        }
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(username: &str, ca: &str) -> ElasticsearchTarget {
        ElasticsearchTarget {
            scheme: "https".into(),
            host: "es.internal".into(),
            port: 9243,
            username: username.into(),
            ca_certs: ca.into(),
        }
    }

    #[test]
    fn the_patch_holds_a_placeholder_never_a_password() {
        assert_eq!(settings_patch(&target("", "")), None);
        let patch = settings_patch(&target("openedx", "/openedx/ca.pem")).unwrap();
        assert_eq!(
            patch,
            "ELASTIC_SEARCH_CONFIG = [{\"use_ssl\": True, \"host\": \"es.internal\", \"port\": 9243, \
             \"http_auth\": \"openedx:<password>\", \"verify_certs\": True, \"ca_certs\": \"/openedx/ca.pem\"}]"
        );
    }

    #[test]
    fn the_reindex_step_names_the_forum_only_with_its_plugin() {
        let without = reindex_step(&[], 7);
        assert!(without.starts_with("7. Rebuild"), "{without}");
        assert!(
            without.contains("reindex_course --all --setup    # courseware_content, course_info")
        );
        assert!(without.contains("reindex_library --all    # library_index (answer y"));
        assert!(!without.contains("forum"), "{without}");
        let with = reindex_step(&["forum".to_owned()], 7);
        assert!(
            with.contains("tutor local do init --limit=forum    # comments, comment_threads"),
            "{with}"
        );
        assert!(with.contains("tutor k8s do init --limit=forum"), "{with}");
    }

    #[test]
    fn a_plain_http_target_with_a_ca_is_refused() {
        let mut t = target("", "/ca.pem");
        t.scheme = "http".into();
        let err = plan_elasticsearch(&t, &mut ConfigEdits::new(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        t.scheme = "ftp".into();
        assert!(plan_elasticsearch(&t, &mut ConfigEdits::new(), &mut Vec::new()).is_err());
    }
}
