//! `offload check`: ask the running platform, through the addresses and keys in its config.yml,
//! whether it works on the new servers (the job layer's `check` does the asking), print the
//! answers and exit 1 when something does not work.

use anyhow::Context;

use super::verify::check_output_path;
use super::{Outcome, Output};
use crate::cli::CheckArgs;
use crate::job::check::{check_platform, parse_platform_url, CheckOptions};
use crate::settings::tutor_root;
use crate::tutor::TutorConfig;
use crate::ui::{html, print};

pub async fn check(args: CheckArgs, out: Output) -> anyhow::Result<Outcome> {
    if let Some(path) = &args.report {
        check_output_path(path, "--report")?;
    }
    let options = CheckOptions {
        lms_url: parse_platform_url("--lms-url", &args.lms_url)?,
        cms_url: args
            .cms_url
            .as_deref()
            .map(|u| parse_platform_url("--cms-url", u))
            .transpose()?,
        timeout: args.timeout,
        celery_timeout: args.celery_timeout,
    };
    let root = tutor_root(args.tutor_root.as_deref());
    let cfg = TutorConfig::load(&root)?;
    let report = check_platform(&cfg, &options).await?;
    out.emit(&report, || print::check_report(&report));
    if let Some(path) = &args.report {
        let when = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let page = html::render_check(
            &report,
            &[
                ("Tutor root", report.tutor_root.clone()),
                ("LMS", options.lms_url.to_string()),
                (
                    "CMS",
                    options
                        .cms_url
                        .as_ref()
                        .map_or("not asked".into(), |u| u.to_string()),
                ),
                ("checked at", when),
                ("offload", env!("CARGO_PKG_VERSION").to_string()),
            ],
        );
        std::fs::write(path, page)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(if report.working {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}
