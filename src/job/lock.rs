//! One process per job: an exclusive advisory lock on the file `lock` in the job folder, taken by
//! every command that writes to the job and held until it ends, so a second `copy --resume` on a
//! job that is running is refused instead of copying the same units again. The file names the
//! holder (pid, host, start time) for that refusal and for `status`, which reads it without
//! taking the lock. The operating system drops the lock when the process ends, however it ends
//! (`kill -9` included), so a file left behind never blocks anyone.
//!
//! On Linux the lock is an open-file-description lock (`F_OFD_SETLK`), which can be tested without
//! being taken (`F_OFD_GETLK`); elsewhere it is `flock`, tested by taking and releasing it. Both
//! belong to one open file, not to the process: a second open of the file in the same process
//! conflicts too, and closing some other handle on the file never releases it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file's name in a job folder.
pub const LOCK_FILE: &str = "lock";

/// The process that holds a job, as it wrote itself into the lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// 0 when the holder has not written its details yet (it took the lock an instant ago).
    pub pid: u32,
    pub host: String,
    /// When it took the lock, RFC 3339.
    pub started: String,
}

impl Holder {
    fn this_process() -> Holder {
        Holder {
            pid: std::process::id(),
            host: host_name(),
            started: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }
    }

    fn read(path: &Path) -> Holder {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(text.trim()).ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", held_message(job, *pid, host, started))]
    Held {
        job: String,
        pid: u32,
        host: String,
        started: String,
    },

    #[error("cannot lock the job folder {job}: {detail}")]
    Io { job: String, detail: String },
}

fn held_message(job: &str, pid: u32, host: &str, started: &str) -> String {
    if pid == 0 {
        return format!(
            "the job in {job} is in use by another offload process that is just starting: wait for it, or stop it; `offload status --job {job}` shows its progress"
        );
    }
    format!(
        "the job in {job} is in use by offload process {pid} on {host} (since {started}): wait for it, or stop it (kill {pid}); `offload status --job {job}` shows its progress"
    )
}

/// The exclusive lock on a job folder, held until this value is dropped (or the process ends).
#[derive(Debug)]
pub struct JobLock {
    /// The open lock file: the lock lives as long as this handle.
    _file: File,
    path: PathBuf,
    holder: Holder,
}

impl JobLock {
    /// Take the job in `job_dir` for this process (creating the folder when missing) and write
    /// this process's pid, host name and start time into its lock file. Fails at once, naming the
    /// holder, when another process (or another handle in this one) holds it.
    pub fn acquire(job_dir: &Path) -> Result<JobLock, LockError> {
        let io = |e: std::io::Error| LockError::Io {
            job: job_dir.display().to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(job_dir).map_err(io)?;
        let path = job_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !os::try_lock(&file).map_err(io)? {
            let holder = Holder::read(&path);
            return Err(LockError::Held {
                job: job_dir.display().to_string(),
                pid: holder.pid,
                host: holder.host,
                started: holder.started,
            });
        }
        let holder = Holder::this_process();
        // Written over the old content from the start, then cut to length: a reader sees the
        // previous holder or this one, never an empty file (but a new file is empty until here).
        let text = format!(
            "{}\n",
            serde_json::to_string(&holder).expect("holder serializes")
        );
        file.write_all_at(text.as_bytes(), 0).map_err(io)?;
        file.set_len(text.len() as u64).map_err(io)?;
        Ok(JobLock {
            _file: file,
            path,
            holder,
        })
    }

    /// Who holds the job in `job_dir`, without taking it: `None` when no process does (or there
    /// is no job folder).
    pub fn holder(job_dir: &Path) -> Option<Holder> {
        let path = job_dir.join(LOCK_FILE);
        let file = File::open(&path).ok()?;
        match os::held_elsewhere(&file) {
            Ok(true) => Some(Holder::read(&path)),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(lock = %path.display(), error = %e, "cannot test the job lock");
                None
            }
        }
    }

    /// This process, as written into the lock file.
    pub fn holder_info(&self) -> &Holder {
        &self.holder
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(target_os = "linux")]
use ofd as os;

#[cfg(not(target_os = "linux"))]
use flock as os;

/// Open-file-description locks (Linux 3.15 and later).
#[cfg(target_os = "linux")]
mod ofd {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    fn whole_file() -> libc::flock {
        // SAFETY: `flock` is a plain C struct; all zeroes is a valid value (and l_pid must be 0).
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = libc::F_WRLCK as libc::c_short;
        l.l_whence = libc::SEEK_SET as libc::c_short;
        l
    }

    /// Take the exclusive lock on the whole file; `false` when someone else holds it.
    pub fn try_lock(file: &File) -> io::Result<bool> {
        let mut l = whole_file();
        // SAFETY: fcntl reads the struct we own; the descriptor is open for as long as `file`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut l) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(e),
        }
    }

    /// Whether another open file holds a lock that would keep `file` from taking it.
    pub fn held_elsewhere(file: &File) -> io::Result<bool> {
        let mut l = whole_file();
        // SAFETY: as above; F_OFD_GETLK only writes into the struct we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(l.l_type != libc::F_UNLCK as libc::c_short)
    }
}

/// `flock` locks, for systems without open-file-description locks (also built, and tested, on
/// Linux).
#[cfg_attr(target_os = "linux", allow(dead_code))]
mod flock {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// Take the exclusive lock; `false` when someone else holds it.
    pub fn try_lock(file: &File) -> io::Result<bool> {
        // SAFETY: flock(2) on a descriptor open for as long as `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(false),
            _ => Err(e),
        }
    }

    /// Whether another open file holds the lock: take it and let it go at once (for that instant
    /// a process taking it would be refused).
    pub fn held_elsewhere(file: &File) -> io::Result<bool> {
        if !try_lock(file)? {
            return Ok(true);
        }
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        assert_eq!(JobLock::holder(&job), None, "no folder, no holder");

        let first = JobLock::acquire(&job).unwrap();
        assert!(
            job.join(LOCK_FILE).is_file(),
            "the folder and file are made"
        );
        let me = first.holder_info().clone();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.host.is_empty());
        assert!(
            time::OffsetDateTime::parse(
                &me.started,
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{}",
            me.started
        );

        // Another handle in this same process conflicts: the lock belongs to the open file.
        let err = JobLock::acquire(&job).unwrap_err();
        match &err {
            LockError::Held {
                pid, host, started, ..
            } => {
                assert_eq!(*pid, me.pid);
                assert_eq!(host, &me.host);
                assert_eq!(started, &me.started);
            }
            other => panic!("{other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("kill {}", me.pid)) && message.contains("offload status"),
            "{message}"
        );

        // Reading who holds it does not take it, and does not release it either.
        assert_eq!(JobLock::holder(&job), Some(me.clone()));
        assert_eq!(JobLock::holder(&job), Some(me));
        assert!(matches!(
            JobLock::acquire(&job),
            Err(LockError::Held { .. })
        ));

        drop(first);
        assert_eq!(JobLock::holder(&job), None, "dropped, nobody holds it");
        let again = JobLock::acquire(&job).unwrap();
        assert_eq!(
            JobLock::holder(&job).map(|h| h.pid),
            Some(std::process::id())
        );
        drop(again);
    }

    #[test]
    fn a_left_behind_file_does_not_block_and_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!(
            "{{\"pid\":99999,\"host\":\"{}\",\"started\":\"x\"}}\n",
            "h".repeat(300)
        );
        std::fs::write(dir.path().join(LOCK_FILE), &long).unwrap();
        assert_eq!(JobLock::holder(dir.path()), None);
        let lock = JobLock::acquire(dir.path()).unwrap();
        let written: Holder =
            serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
        assert_eq!(
            &written,
            lock.holder_info(),
            "the old, longer content is gone"
        );
    }

    #[test]
    fn an_unwritten_holder_is_named_without_a_pid_to_kill() {
        let message = held_message("/j", 0, "", "");
        assert!(!message.contains("kill"), "{message}");
        assert!(message.contains("offload status --job /j"), "{message}");
    }

    #[test]
    fn flock_locks_conflict_between_two_handles_and_test_without_keeping_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        assert!(!flock::held_elsewhere(&b).unwrap());
        assert!(flock::try_lock(&a).unwrap());
        assert!(
            !flock::try_lock(&b).unwrap(),
            "per open file, not per process"
        );
        assert!(flock::held_elsewhere(&b).unwrap());
        drop(a);
        assert!(!flock::held_elsewhere(&b).unwrap());
        assert!(flock::try_lock(&b).unwrap(), "testing left it free");
    }
}
