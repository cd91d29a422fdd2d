//! The file work of one `download` or `upload` stage, run in groups on
//! tokio's blocking pool.
//!
//! Each message's file work (write and sync a body, rename it into place;
//! move a cached file to its target) is a job. A job does its own work and
//! names the directories whose entries it changed ([`DirSyncs`]) instead of
//! syncing them. A *drainer*, a blocking-pool task, takes the jobs queued at
//! that moment (up to [`MAX_GROUP`]), runs them one after the other, syncs
//! each directory they named once, and only then answers each job: a job's
//! `Ok` still means its files and their directory entries are on disk.
//!
//! Under load, one hand-off to the blocking pool and one directory sync
//! serve a whole group instead of each message. A job's own failure is its
//! own: the others of its group are unaffected, and a directory that fails
//! to sync fails only the jobs that named it (`StageError::Io`, retried).
//! A device failure (EIO, ENOSPC, EDQUOT, EROFS: [`device_failure`]) is
//! remembered and fails every later job that names that directory as an
//! *outage* (`StageError::Storage`: the message waits in place, never
//! dead-lettered) until the stage is rebuilt by a reload or a restart: the
//! kernel reports a failed sync once, and a later sync that succeeds does
//! not mean the entries of the failed one are on disk. A job that panics is
//! answered with a `StageError::Panic` (dead-lettered, as a stage's panic
//! is).
//!
//! [`KeyLocks`] lets one job at a time work on a name (a cache file, an
//! object): its guard is owned, so file work that outlives a cancelled
//! message still holds the name until it ends.
//!
//! **Quick jobs and slow ones** ([`more_drainers`], [`group_size`]): the
//! queue keeps a moving average of the time per job, its share of the
//! group's directory syncs included. While jobs are quick (a memory file
//! system, a warm cache) one drainer takes groups of up to [`GROUP_BUDGET`]
//! of work, and another starts only when a queued job has waited [`SLOW`].
//! When jobs take [`SLOW`] or more (syncs on a real disk, where the kernel
//! merges syncs that overlap but not syncs made one after the other), each
//! job gets a drainer of its own, up to [`MAX_DRAINERS`]: the work overlaps
//! as it would with one blocking call per message.

use crate::fsync::DirSyncs;
use crate::stages::StageError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most jobs one drainer runs before syncing and answering.
pub const MAX_GROUP: usize = 32;
/// The work one group may take, by the average time per job.
pub const GROUP_BUDGET: Duration = Duration::from_millis(2);
/// Most drainers at once, per stage.
pub const MAX_DRAINERS: usize = 64;
/// A job that takes this long, or a queued job that has waited this long,
/// is slow.
pub const SLOW: Duration = Duration::from_micros(500);

/// Called with the group's directory syncs' outcome: answers the job.
type Answer = Box<dyn FnOnce(&Result<(), StageError>) + Send>;
type Job = Box<dyn FnOnce(&mut DirSyncs) -> Answer + Send>;

struct Queued {
    since: Instant,
    job: Job,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    drainers: usize,
    /// Moving average of the time per job (1/8 per group).
    per_job: Duration,
    /// Directories whose sync failed with a device failure.
    failed: HashSet<PathBuf>,
}

/// One stage's file work (cheap to share: the stage holds one).
#[derive(Default, Clone)]
pub struct FileWork {
    state: Arc<Mutex<State>>,
}

/// Whether a job just queued needs a new drainer: none is running, or
/// fewer than `MAX_DRAINERS` run and jobs are slow (`per_job`) or the
/// oldest queued job has waited `SLOW`.
pub fn more_drainers(drainers: usize, oldest_wait: Duration, per_job: Duration) -> bool {
    drainers == 0 || (drainers < MAX_DRAINERS && (per_job >= SLOW || oldest_wait >= SLOW))
}

/// How many of `queued` jobs a drainer takes as one group: what fits
/// `GROUP_BUDGET` at `per_job` each (at least one, at most `MAX_GROUP`);
/// one when jobs are slow.
pub fn group_size(queued: usize, per_job: Duration) -> usize {
    let fit = if per_job >= SLOW {
        1
    } else {
        usize::try_from(GROUP_BUDGET.as_nanos() / per_job.as_nanos().max(1)).unwrap_or(MAX_GROUP).max(1)
    };
    queued.min(MAX_GROUP).min(fit)
}

/// The moving average after a group of `n` jobs took `took`.
fn average(per_job: Duration, took: Duration, n: usize) -> Duration {
    let sample = took / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    (per_job * 7 + sample) / 8
}

impl FileWork {
    /// Runs `f` in a group; its result once the directories it named are
    /// synced.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DirSyncs) -> Result<T, StageError> + Send + 'static,
    ) -> Result<T, StageError> {
        let (job, answer) = job(f);
        if self.queue(job, Instant::now()) {
            let drainer = Drainer { state: self.state.clone(), ended: false };
            tokio::task::spawn_blocking(move || drain(drainer));
        }
        answer.await.map_err(|_| StageError::Panic("the file work panicked".into()))?
    }

    /// Queues `job` at `now`; true when the caller must start a drainer.
    fn queue(&self, job: Job, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = s.queue.front().map_or(Duration::ZERO, |q| now.saturating_duration_since(q.since));
        s.queue.push_back(Queued { since: now, job });
        let more = more_drainers(s.drainers, oldest, s.per_job);
        if more {
            s.drainers += 1;
        }
        more
    }
}

/// `f` as a job, and where its answer comes.
fn job<T: Send + 'static>(
    f: impl FnOnce(&mut DirSyncs) -> Result<T, StageError> + Send + 'static,
) -> (Job, tokio::sync::oneshot::Receiver<Result<T, StageError>>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |dirs: &mut DirSyncs| {
        let r = f(dirs);
        Box::new(move |synced: &Result<(), StageError>| {
            let _ = tx.send(synced.clone().and(r));
        })
    });
    (job, rx)
}

/// A running drainer, counted in `State::drainers` until it ends: also
/// when its task is dropped without running (a runtime shutting down) or
/// unwinds.
struct Drainer {
    state: Arc<Mutex<State>>,
    ended: bool,
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if !self.ended {
            self.state.lock().unwrap_or_else(PoisonError::into_inner).drainers -= 1;
        }
    }
}

/// Runs groups until the queue is empty.
fn drain(mut d: Drainer) {
    let mut last: Option<(Duration, usize)> = None;
    loop {
        let group: Vec<Job> = {
            let mut s = d.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((took, n)) = last {
                s.per_job = average(s.per_job, took, n);
            }
            // the check and the count change under one lock: a job queued
            // after it starts a drainer of its own
            if s.queue.is_empty() {
                s.drainers -= 1;
                d.ended = true;
                return;
            }
            let n = group_size(s.queue.len(), s.per_job);
            s.queue.drain(..n).map(|q| q.job).collect()
        };
        let (start, n) = (Instant::now(), group.len());
        // a job that panics drops its sender: its caller gets an error
        let done: Vec<(Answer, DirSyncs)> = group
            .into_iter()
            .filter_map(|job| {
                let mut dirs = DirSyncs::default();
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut dirs))).ok()?;
                Some((answer, dirs))
            })
            .collect();
        let failures = sync_once(&d.state, done.iter().flat_map(|(_, dirs)| dirs.dirs()), crate::fsync::sync_dir);
        last = Some((start.elapsed(), n));
        for (answer, dirs) in done {
            let failed = dirs.dirs().iter().find_map(|dir| failures.get(dir));
            answer(&failed.map_or(Ok(()), |e| Err(e.clone())));
        }
    }
}

/// Whether a failed sync says the device lost or refused writes (its
/// entries may be lost, and a later sync would not tell), rather than
/// that the directory cannot be opened.
pub fn device_failure(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::IO | Errno::NOSPC | Errno::DQUOT | Errno::ROFS))
}

/// Syncs each distinct directory of `dirs` once with `sync`; the ones that
/// failed, now or before (see the module docs), with the error to answer.
fn sync_once<'a>(
    state: &Mutex<State>,
    dirs: impl Iterator<Item = &'a PathBuf>,
    sync: impl Fn(&Path) -> std::io::Result<()>,
) -> HashMap<PathBuf, StageError> {
    let mut seen = HashSet::new();
    let mut failures = HashMap::new();
    let mut lost = Vec::new();
    for dir in dirs {
        if !seen.insert(dir) {
            continue;
        }
        if let Err(e) = sync(dir) {
            let why = format!("syncing directory {}: {e}", dir.display());
            if device_failure(&e) {
                lost.push(dir);
                failures.insert(dir.clone(), StageError::Storage(why));
            } else {
                failures.insert(dir.clone(), StageError::Io(why));
            }
        }
    }
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.failed.extend(lost.into_iter().cloned());
    for dir in seen {
        if s.failed.contains(dir) {
            failures.entry(dir.clone()).or_insert_with(|| {
                StageError::Storage(format!(
                    "syncing directory {} failed before: its entries may not be on disk (reload or restart once the storage is mended)",
                    dir.display()
                ))
            });
        }
    }
    failures
}

/// One holder at a time per key (see the module docs).
#[derive(Default, Clone)]
pub struct KeyLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

/// Holds a key of [`KeyLocks`] until dropped (share it with `Arc`: the key
/// is free once every clone is gone).
pub struct KeyGuard {
    locks: KeyLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits for `key`, then holds it.
    pub async fn lock(&self, key: &str) -> Arc<KeyGuard> {
        let lock = self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(key.to_string()).or_default().clone();
        // made before waiting: a caller dropped while waiting cleans up too
        let mut g = KeyGuard { locks: self.clone(), key: key.to_string(), lock, held: None };
        g.held = Some(g.lock.clone().lock_owned().await);
        Arc::new(g)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.locks.0.lock().unwrap_or_else(PoisonError::into_inner);
        // the map's reference and this one: nobody else holds or waits
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_jobs_share_a_drainer_and_slow_ones_get_their_own() {
        let (us, ms, zero) = (Duration::from_micros, Duration::from_millis, Duration::ZERO);
        let quick = us(30);
        // (drainers, oldest queued job's wait, time per job, want another drainer)
        let table = [
            (0, zero, zero, true),
            (0, ms(5), quick, true),
            (1, zero, quick, false),
            (1, SLOW - Duration::from_nanos(1), quick, false),
            (1, SLOW, quick, true),
            (1, zero, SLOW, true),
            (MAX_DRAINERS - 1, zero, ms(3), true),
            (MAX_DRAINERS, ms(5), ms(3), false),
        ];
        for (drainers, wait, per_job, want) in table {
            assert_eq!(
                more_drainers(drainers, wait, per_job),
                want,
                "{drainers} drainers, {wait:?} waited, {per_job:?} per job"
            );
        }
        // (queued, time per job, group size)
        let table = [
            (1, zero, 1),
            (100, zero, MAX_GROUP),
            (5, zero, 5),
            (100, quick, 66.min(MAX_GROUP)),
            (100, us(400), 5),
            (100, SLOW, 1),
            (100, ms(3), 1),
            (0, quick, 0),
        ];
        for (queued, per_job, want) in table {
            assert_eq!(group_size(queued, per_job), want, "{queued} queued, {per_job:?} per job");
        }
        // the average follows the groups: jobs of 2 ms after quick ones are
        // seen as slow at the third group
        let mut avg = quick;
        for _ in 0..2 {
            avg = average(avg, ms(2), 1);
        }
        assert!(avg < SLOW, "{avg:?}");
        avg = average(avg, ms(2), 1);
        assert!(avg >= SLOW, "{avg:?}");
        assert_eq!(average(zero, us(800), 8), us(100) / 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_jobs_at_once_are_each_answered_and_the_drainers_end() {
        let dir = tempfile::tempdir().unwrap();
        let work = FileWork::default();
        let jobs = (0..200).map(|i| {
            let (work, d) = (work.clone(), dir.path().to_path_buf());
            tokio::spawn(async move {
                work.run(move |dirs| {
                    crate::fsync::write(&d.join(format!("{i}.tmp")), b"x")
                        .map_err(|e| StageError::Io(e.to_string()))?;
                    crate::fsync::rename_deferred(&d.join(format!("{i}.tmp")), &d.join(i.to_string()), dirs)
                        .map_err(|e| StageError::Io(e.to_string()))?;
                    Ok(i)
                })
                .await
            })
        });
        let got: Vec<usize> = futures::future::join_all(jobs).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 200);
        idle(&work).await;
    }

    /// Waits until the drainers have ended (each ends with the queue, just
    /// after answering its last group).
    async fn idle(work: &FileWork) {
        for _ in 0..5000 {
            if work.state.lock().unwrap().drainers == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the drainers did not end with the queue");
    }

    fn drainer(work: &FileWork) -> Drainer {
        Drainer { state: work.state.clone(), ended: false }
    }

    #[tokio::test]
    async fn a_failed_job_a_panic_or_a_failed_directory_fails_only_its_own_jobs() {
        let work = FileWork::default();
        assert!(
            matches!(work.run(|_| Err::<(), _>(StageError::Io("no".into()))).await, Err(StageError::Io(m)) if m == "no")
        );
        let panicked = work.run(|_| -> Result<(), StageError> { panic!("boom") }).await.unwrap_err();
        assert!(matches!(panicked, StageError::Panic(_)), "{panicked:?}");
        assert_eq!(work.run(|_| Ok(7)).await.unwrap(), 7, "the drainer survives a panic");
        idle(&work).await;
        // one group (queued by hand at one instant and drained here): the
        // job whose directory cannot be synced fails, its companions do not
        let dir = tempfile::tempdir().unwrap();
        let (good_dir, bad_dir) = (dir.path().to_path_buf(), dir.path().join("nonexistent"));
        let names = |d: Vec<PathBuf>| {
            job(move |dirs| {
                d.iter().for_each(|d| dirs.dir(d));
                Ok(())
            })
        };
        let (bad, bad_answer) = names(vec![good_dir.clone(), bad_dir.clone()]);
        let (plain, plain_answer) = names(vec![]);
        let (good, good_answer) = names(vec![good_dir.clone()]);
        let work = FileWork::default();
        let now = Instant::now();
        assert!(work.queue(bad, now), "the first queued job needs a drainer");
        assert!(!work.queue(plain, now), "a quick queue needs only one");
        assert!(!work.queue(good, now));
        drain(drainer(&work));
        let bad = bad_answer.await.unwrap().unwrap_err();
        assert!(matches!(&bad, StageError::Io(m) if m.contains("nonexistent")), "{bad:?}");
        plain_answer.await.unwrap().unwrap();
        good_answer.await.unwrap().unwrap();
        assert_eq!(work.state.lock().unwrap().drainers, 0);
        // a drainer dropped without running (a runtime shutting down) is
        // not counted: the next job starts one
        let (lost, _) = names(vec![]);
        assert!(work.queue(lost, Instant::now()));
        drop(drainer(&work));
        let (next, next_answer) = names(vec![]);
        assert!(work.queue(next, Instant::now()), "no drainer is left counted");
        drain(drainer(&work));
        next_answer.await.unwrap().unwrap();
    }

    #[test]
    fn a_device_failure_is_an_outage_and_is_remembered() {
        use std::io::Error;
        // (errno, a device failure)
        let table = [(5, true), (28, true), (122, true), (30, true), (2, false), (13, false), (20, false)];
        for (errno, want) in table {
            assert_eq!(device_failure(&Error::from_raw_os_error(errno)), want, "errno {errno}");
        }
        let state = Mutex::new(State::default());
        let (a, b, c) = (PathBuf::from("/a"), PathBuf::from("/b"), PathBuf::from("/c"));
        let first = sync_once(&state, [&a, &b, &c, &a].into_iter(), |d| match d.to_str() {
            Some("/a") => Err(Error::from_raw_os_error(5)),
            Some("/b") => Err(Error::from_raw_os_error(13)),
            _ => Ok(()),
        });
        assert!(matches!(&first[&a], e @ StageError::Storage(_) if e.is_outage()), "{first:?}");
        assert!(matches!(&first[&b], e @ StageError::Io(_) if !e.is_outage()), "{first:?}");
        assert!(!first.contains_key(&c));
        // later syncs succeed: /a stays failed (its entries may be lost), /b does not
        let later = sync_once(&state, [&a, &b].into_iter(), |_| Ok(()));
        assert!(matches!(&later[&a], StageError::Storage(m) if m.contains("failed before")), "{later:?}");
        assert!(!later.contains_key(&b));
    }

    #[tokio::test]
    async fn a_key_has_one_holder_and_work_that_outlives_its_caller_keeps_it() {
        let locks = KeyLocks::default();
        let held = locks.lock("k").await;
        // a waiter dropped while waiting leaves nothing behind
        let waiting = tokio::time::timeout(Duration::from_millis(20), locks.lock("k")).await;
        assert!(waiting.is_err(), "the key is held");
        // work that outlives its caller holds a clone
        let work = held.clone();
        drop(held);
        assert!(tokio::time::timeout(Duration::from_millis(20), locks.lock("k")).await.is_err());
        assert!(locks.lock("other").await.key == "other");
        drop(work);
        let again = locks.lock("k").await;
        drop(again);
        assert_eq!(locks.len(), 0, "no entry is left behind");
    }
}
