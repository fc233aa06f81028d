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
//!
//! A lock taken for a job that is not created yet ([`JobLock::acquire_for_new_job`]) removes the
//! file (and the folder) it created when it is dropped before [`JobLock::keep`]: a run refused
//! before its job exists leaves the folder as it found it. The file is removed while still
//! locked, and whoever takes a lock checks that the file it locked is still the one at the path,
//! so a process that opened the removed file never holds a lock nobody else sees.

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

    #[error("cannot lock the job folder {job}: {detail}. Check that the folder can be written (its permissions, a read-only mount), or point --job elsewhere")]
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
    /// What taking the lock created, removed again on drop unless [`JobLock::keep`] was called.
    created: Option<Created>,
}

/// What [`JobLock::acquire_for_new_job`] created.
#[derive(Debug, Clone, Copy)]
struct Created {
    folder: bool,
    file: bool,
}

/// Attempts at locking a lock file that another process removes each time (it gave up on a job
/// it had not created) before this one is refused.
const LOCK_ATTEMPTS: usize = 8;

impl JobLock {
    /// Take the job in `job_dir` for this process (creating the folder when missing) and write
    /// this process's pid, host name and start time into its lock file. Fails at once, naming the
    /// holder, when another process (or another handle in this one) holds it.
    pub fn acquire(job_dir: &Path) -> Result<JobLock, LockError> {
        Self::take(job_dir, false)
    }

    /// [`JobLock::acquire`] for a job that is not created yet: the lock file, and the folder when
    /// it was missing, are removed again when the lock is dropped, unless [`JobLock::keep`] was
    /// called once the job exists.
    pub fn acquire_for_new_job(job_dir: &Path) -> Result<JobLock, LockError> {
        Self::take(job_dir, true)
    }

    /// The job now exists: dropping the lock leaves its file and folder in place.
    pub fn keep(&mut self) {
        self.created = None;
    }

    fn take(job_dir: &Path, provisional: bool) -> Result<JobLock, LockError> {
        let io = |e: std::io::Error| LockError::Io {
            job: job_dir.display().to_string(),
            detail: e.to_string(),
        };
        let folder_created = !job_dir.is_dir();
        std::fs::create_dir_all(job_dir).map_err(io)?;
        let path = job_dir.join(LOCK_FILE);
        let mut attempts = 0;
        let (file, file_created) = loop {
            attempts += 1;
            let (file, created) = open_lock_file(&path).map_err(io)?;
            if !os::try_lock(&file).map_err(io)? {
                let holder = Holder::read(&path);
                return Err(LockError::Held {
                    job: job_dir.display().to_string(),
                    pid: holder.pid,
                    host: holder.host,
                    started: holder.started,
                });
            }
            // Locked; but a process giving up on a new job may have removed the file after this
            // one opened it: then the lock is on a file nobody else sees, and it is taken again.
            if still_at(&file, &path).map_err(io)? || attempts >= LOCK_ATTEMPTS {
                break (file, created);
            }
        };
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
            created: provisional.then_some(Created {
                folder: folder_created,
                file: file_created,
            }),
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

impl Drop for JobLock {
    /// For a job never created: remove what taking the lock created, while the lock is still held
    /// (the file handle closes after this).
    fn drop(&mut self) {
        let Some(created) = self.created else {
            return;
        };
        if created.file {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::debug!(lock = %self.path.display(), error = %e, "cannot remove the lock file of a job not created");
            }
        }
        if created.folder {
            if let Some(folder) = self.path.parent() {
                // Only when empty: anything else in it is not this process's to remove.
                let _ = std::fs::remove_dir(folder);
            }
        }
    }
}

/// Open (creating when missing) the lock file; whether this call created it.
fn open_lock_file(path: &Path) -> std::io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match options.clone().create_new(true).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match options.open(path) {
            Ok(file) => return Ok((file, false)),
            // Removed in between by a process giving up on a new job: create it then.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < LOCK_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `file` is still the file at `path` (not removed, nor replaced by another).
fn still_at(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(named) => Ok((named.dev(), named.ino()) == (open.dev(), open.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
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
    fn a_lock_for_a_job_never_created_leaves_the_folder_as_it_found_it() {
        let dir = tempfile::tempdir().unwrap();

        // A missing folder: made for the lock, and gone with it.
        let job = dir.path().join("new");
        drop(JobLock::acquire_for_new_job(&job).unwrap());
        assert!(!job.exists(), "the folder it made is removed");

        // A folder that was there stays, without the lock file it did not have.
        let job = dir.path().join("made-by-hand");
        std::fs::create_dir(&job).unwrap();
        let lock = JobLock::acquire_for_new_job(&job).unwrap();
        assert!(job.join(LOCK_FILE).is_file());
        drop(lock);
        assert!(job.is_dir());
        assert_eq!(std::fs::read_dir(&job).unwrap().count(), 0, "left empty");

        // A lock file that was there is not this process's to remove.
        std::fs::write(job.join(LOCK_FILE), "").unwrap();
        drop(JobLock::acquire_for_new_job(&job).unwrap());
        assert!(job.join(LOCK_FILE).is_file());

        // Kept once the job exists: file and folder stay.
        let job = dir.path().join("kept");
        let mut lock = JobLock::acquire_for_new_job(&job).unwrap();
        std::fs::write(job.join("catalog.sqlite"), "").unwrap();
        lock.keep();
        drop(lock);
        assert!(job.join(LOCK_FILE).is_file());
    }

    #[test]
    fn a_lock_on_a_removed_file_is_taken_again_on_the_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let (stale, created) = open_lock_file(&path).unwrap();
        assert!(created);
        std::fs::remove_file(&path).unwrap();
        assert!(!still_at(&stale, &path).unwrap());
        let lock = JobLock::acquire(dir.path()).unwrap();
        assert!(still_at(&stale, &path).is_ok_and(|same| !same));
        assert_eq!(
            JobLock::holder(dir.path()).map(|h| h.pid),
            Some(lock.holder_info().pid)
        );
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
