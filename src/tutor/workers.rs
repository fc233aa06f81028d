//! How many web workers the LMS and CMS should run on a host, in the keys of the installed Tutor.
//! Once the data stores live elsewhere, the host's CPUs and memory are the web processes' own,
//! and Tutor's default of two uWSGI processes each leaves most of a larger host idle (Tutor's
//! scaling guide: raise the worker counts once the stores are offloaded).
//!
//! The keys are Tutor's: OPENEDX_LMS_UWSGI_WORKERS and OPENEDX_CMS_UWSGI_WORKERS, each
//! defaulting to 2, defined in `templates/config/defaults.yml` of every release from 15 (checked
//! on 15.3.9) to 22 (checked on 22.0.3), and handed to uWSGI's `processes` as UWSGI_WORKERS.
//! The arithmetic is a starting point, said as such: uWSGI processes are synchronous, so about
//! two per CPU keeps the CPUs busy while some wait on the database (the usual `2 x CPUs + 1`),
//! and each needs memory of its own.

use std::fmt::Write as _;

use super::TutorConfig;

/// Memory kept for everything on the host but the web workers: the OS, Docker, Caddy, the MFE
/// server and the two Celery workers.
pub const RESERVED_BYTES: u64 = 2 << 30;
/// Resident memory of one LMS or CMS uWSGI process, an estimate to check with `docker stats`.
pub const BYTES_PER_WORKER: u64 = 512 << 20;
/// Tutor's default for each of the two keys.
pub const TUTOR_DEFAULT_WORKERS: u64 = 2;

/// The host the platform runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u64,
    pub memory_bytes: u64,
}

/// Worker counts for a host, in Tutor's keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerAdvice {
    pub lms_key: &'static str,
    pub cms_key: &'static str,
    pub lms: u64,
    pub cms: u64,
    /// What config.yml sets now (Tutor's default when it sets nothing).
    pub current_lms: u64,
    pub current_cms: u64,
    /// Why these numbers, in one line.
    pub reasoning: String,
}

/// The worker-count keys of a Tutor major, when offload knows them.
pub fn web_worker_keys(major: Option<u32>) -> Option<(&'static str, &'static str)> {
    match major {
        // No version recorded: the keys of the Tutor offload writes for.
        None | Some(15..=22) => Some(("OPENEDX_LMS_UWSGI_WORKERS", "OPENEDX_CMS_UWSGI_WORKERS")),
        Some(_) => None,
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The arithmetic: the smaller of what the CPUs and what the memory allow, at least one worker
/// each, split two to one between the LMS (learners) and the CMS (course authors).
pub fn suggest(host: HostResources) -> (u64, u64, String) {
    let cpus = host.cpus.max(1);
    let by_cpu = 2 * cpus + 1;
    let spare = host.memory_bytes.saturating_sub(RESERVED_BYTES);
    let by_memory = spare / BYTES_PER_WORKER;
    let total = by_cpu.min(by_memory).max(2);
    let lms = ((total * 2 + 1) / 3).max(1);
    let cms = (total - lms).max(1);
    let limit = if by_cpu <= by_memory { "CPU" } else { "memory" };
    let floor = if by_cpu.min(by_memory) < 2 {
        " (raised to one each, the least that serves)"
    } else {
        ""
    };
    let reasoning = format!(
        "{cpus} CPU(s) keep {by_cpu} synchronous uWSGI processes busy (2 per CPU + 1); {} of memory less {} for the OS, Caddy and the Celery workers fits {by_memory} at ~{} MiB each; {limit} is the tighter bound, so {total}{floor}, split 2:1 between LMS (learners) and CMS (authors)",
        gib(host.memory_bytes),
        gib(RESERVED_BYTES),
        BYTES_PER_WORKER >> 20,
    );
    (lms, cms, reasoning)
}

/// Worker counts for `host` in the keys of the Tutor that rendered `cfg`'s root, or `None` when
/// offload does not know that Tutor's keys.
pub fn advise(cfg: &TutorConfig, host: HostResources) -> Option<WorkerAdvice> {
    let major = cfg.tutor_version_hint().and_then(|v| {
        v.trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
    });
    let (lms_key, cms_key) = web_worker_keys(major)?;
    let current = |key: &str| {
        cfg.get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or(TUTOR_DEFAULT_WORKERS)
    };
    let (lms, cms, reasoning) = suggest(host);
    Some(WorkerAdvice {
        lms_key,
        cms_key,
        lms,
        cms,
        current_lms: current(lms_key),
        current_cms: current(cms_key),
        reasoning,
    })
}

impl WorkerAdvice {
    /// The runbook step's text (without its number): the host, the command, and why.
    pub fn step_text(&self, host: HostResources) -> String {
        let mut out = format!(
            "Size the web workers for this host ({} CPU(s), {}):\n",
            host.cpus,
            gib(host.memory_bytes)
        );
        if (self.lms, self.cms) == (self.current_lms, self.current_cms) {
            let _ = writeln!(
                out,
                "     {}={} and {}={} already fit it; nothing to change",
                self.lms_key, self.lms, self.cms_key, self.cms
            );
        } else {
            let _ = writeln!(
                out,
                "     tutor config save --set {}={} --set {}={} && tutor local start -d\n     (now {} and {})",
                self.lms_key, self.lms, self.cms_key, self.cms, self.current_lms, self.current_cms
            );
        }
        let _ = writeln!(out, "     why: {}", self.reasoning);
        let _ = write!(
            out,
            "     (a starting point: watch memory with `docker stats`; on Kubernetes these are per pod, and pods scale instead)"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(cpus: u64, gib: u64) -> HostResources {
        HostResources {
            cpus,
            memory_bytes: gib * GIB,
        }
    }

    #[test]
    fn cpus_bound_a_host_with_memory_to_spare() {
        // 4 CPUs: 9 processes; 16 GiB - 2 GiB = 14 GiB fits 28.
        let (lms, cms, why) = suggest(host(4, 16));
        assert_eq!((lms, cms), (6, 3));
        assert!(why.contains("4 CPU(s) keep 9"), "{why}");
        assert!(why.contains("fits 28"), "{why}");
        assert!(why.contains("CPU is the tighter bound, so 9"), "{why}");
    }

    #[test]
    fn memory_bounds_a_host_with_many_cpus() {
        // 16 CPUs: 33 processes; 8 GiB - 2 GiB = 6 GiB fits 12.
        let (lms, cms, why) = suggest(host(16, 8));
        assert_eq!((lms, cms), (8, 4));
        assert!(why.contains("memory is the tighter bound, so 12"), "{why}");
    }

    #[test]
    fn a_small_host_keeps_one_worker_each() {
        // 2 GiB leaves nothing once the reserve is kept: still one LMS and one CMS worker.
        let (lms, cms, why) = suggest(host(1, 2));
        assert_eq!((lms, cms), (1, 1));
        assert!(why.contains("raised to one each"), "{why}");
        let (lms, cms, _) = suggest(HostResources {
            cpus: 0,
            memory_bytes: 0,
        });
        assert_eq!((lms, cms), (1, 1));
    }

    #[test]
    fn splits_two_to_one_rounding_towards_the_lms() {
        // 2 CPUs: 5 processes, memory to spare: LMS 3 (2/3 of 5, rounded), CMS 2.
        assert_eq!(suggest(host(2, 64)).0, 3);
        assert_eq!(suggest(host(2, 64)).1, 2);
        // 3 GiB: 1 GiB spare fits 2: one each.
        assert_eq!((suggest(host(8, 3)).0, suggest(host(8, 3)).1), (1, 1));
    }

    #[test]
    fn keys_are_the_installed_tutors() {
        assert_eq!(
            web_worker_keys(Some(22)),
            Some(("OPENEDX_LMS_UWSGI_WORKERS", "OPENEDX_CMS_UWSGI_WORKERS"))
        );
        assert_eq!(web_worker_keys(Some(15)), web_worker_keys(None));
        assert_eq!(web_worker_keys(Some(14)), None);
        assert_eq!(web_worker_keys(Some(23)), None);
    }

    #[test]
    fn advice_reads_the_current_counts_and_says_when_nothing_changes() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("config.yml"),
            "OPENEDX_LMS_UWSGI_WORKERS: 6\n",
        )
        .unwrap();
        let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
        let h = host(4, 16);
        let advice = advise(&cfg, h).unwrap();
        assert_eq!((advice.current_lms, advice.current_cms), (6, 2));
        let text = advice.step_text(h);
        assert!(
            text.contains("--set OPENEDX_LMS_UWSGI_WORKERS=6 --set OPENEDX_CMS_UWSGI_WORKERS=3"),
            "{text}"
        );
        assert!(text.contains("why: 4 CPU(s)"), "{text}");

        std::fs::write(
            root.path().join("config.yml"),
            "OPENEDX_LMS_UWSGI_WORKERS: 6\nOPENEDX_CMS_UWSGI_WORKERS: 3\n",
        )
        .unwrap();
        let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
        let text = advise(&cfg, h).unwrap().step_text(h);
        assert!(text.contains("already fit it"), "{text}");

        // A Tutor whose keys offload does not know gets no advice.
        std::fs::create_dir_all(root.path().join("env")).unwrap();
        std::fs::write(root.path().join("env/version"), "23.0.0\n").unwrap();
        let cfg = TutorConfig::load_with_env(root.path(), []).unwrap();
        assert!(advise(&cfg, h).is_none());
    }
}
