//! The mover's queue: jobs that copy files into a tier or drop their copies
//! there, run one at a time in priority order. Explicit requests (pins,
//! placements, prefetches) come first, those with a deadline earliest deadline
//! first; then background promotion; then demotion. Demand reads are never
//! queued: background jobs wait while readers wait (see `mover`). Each job
//! keeps its progress, which the control API and `user.tierfs.tier` report.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use tierfs_policy::Priority;

use crate::model::tier::Tier;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use crate::io::rate_limit::RateLimiter;

/// What a job does to each of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "tier")]
pub enum JobAction {
    /// Copy into the tier and hold it there: for a pin, or a hot file.
    Hold(Tier),
    /// Copy into the tier once; the tier keeps it while it is used.
    Fetch(Tier),
    /// End the hold in the tier (the copy stays as ordinary cache).
    Release(Tier),
    /// Remove the copy from the tier.
    Drop(Tier),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed(String),
}

/// A job and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub class: Priority,
    #[serde(flatten)]
    pub action: JobAction,
    /// Object keys, relative to the mount's root.
    pub paths: Vec<String>,
    /// Seconds since the epoch by which an explicit job should be done.
    pub deadline: Option<u64>,
    pub reason: String,
    pub state: JobState,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub files_done: usize,
    /// Seconds since the epoch when it finished.
    pub finished_at: Option<u64>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Done | JobState::Failed(_))
    }

    /// Queue order: class, then deadline (none last), then age.
    fn order(&self) -> (Priority, u64, u64) {
        (self.class, self.deadline.unwrap_or(u64::MAX), self.id)
    }
}

/// Bytes moved, per direction.
#[derive(Debug, Default)]
pub struct MoverStats {
    /// Copied into a faster tier.
    pub bytes_up: AtomicU64,
    /// Released or dropped from a tier.
    pub bytes_down: AtomicU64,
    /// Copies whose digest did not match, dropped again.
    pub verify_failures: AtomicU64,
}

/// Finished jobs kept for their status.
const KEEP_FINISHED: usize = 256;

pub struct JobQueue {
    jobs: Mutex<BTreeMap<u64, Job>>,
    next_id: AtomicU64,
    pub wake: Notify,
    pub stats: MoverStats,
    /// Bandwidth of explicit jobs and of background promotions.
    limits: HashMap<Priority, RateLimiter>,
}

impl JobQueue {
    pub fn new(explicit_bandwidth: u64, promote_bandwidth: u64) -> JobQueue {
        let limits = [
            (Priority::Explicit, RateLimiter::new(explicit_bandwidth)),
            (Priority::Promotion, RateLimiter::new(promote_bandwidth)),
        ]
        .into_iter()
        .filter_map(|(class, limit)| limit.map(|l| (class, l)))
        .collect();
        JobQueue {
            jobs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            wake: Notify::new(),
            stats: MoverStats::default(),
            limits,
        }
    }

    pub fn limit(&self, class: Priority) -> Option<&RateLimiter> {
        self.limits.get(&class)
    }

    /// Queues a job unless one that does the same is queued or running (moves are
    /// idempotent; asking twice does it once). Returns the job's id.
    pub fn submit(
        &self,
        class: Priority,
        action: JobAction,
        paths: Vec<String>,
        deadline: Option<u64>,
        reason: &str,
    ) -> u64 {
        let mut jobs = self.jobs.lock();
        if let Some(same) = jobs.values_mut().find(|j| {
            !j.is_finished() && j.action == action && j.paths == paths && j.class <= class
        }) {
            // An earlier deadline tightens the one queued.
            same.deadline = match (same.deadline, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            return same.id;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        jobs.insert(
            id,
            Job {
                id,
                class,
                action,
                paths,
                deadline,
                reason: reason.to_string(),
                state: JobState::Queued,
                bytes_total: 0,
                bytes_done: 0,
                files_done: 0,
                finished_at: None,
            },
        );
        let finished: Vec<u64> = jobs
            .values()
            .filter(|j| j.is_finished())
            .map(|j| j.id)
            .collect();
        for old in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            jobs.remove(old);
        }
        drop(jobs);
        self.wake.notify_one();
        id
    }

    /// Takes the first queued job and marks it running.
    pub fn next(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock();
        let job = jobs
            .values_mut()
            .filter(|j| j.state == JobState::Queued)
            .min_by_key(|j| j.order())?;
        job.state = JobState::Running;
        Some(job.clone())
    }

    /// Whether a queued job should run before `running`.
    pub fn outranked(&self, running: &Job) -> bool {
        self.jobs
            .lock()
            .values()
            .any(|j| j.state == JobState::Queued && j.order() < running.order())
    }

    /// Puts a running job back in the queue, keeping its progress.
    pub fn requeue(&self, id: u64) {
        self.update(id, |j| j.state = JobState::Queued);
        self.wake.notify_one();
    }

    pub fn update(&self, id: u64, change: impl FnOnce(&mut Job)) {
        if let Some(job) = self.jobs.lock().get_mut(&id) {
            change(job);
        }
    }

    pub fn job(&self, id: u64) -> Option<Job> {
        self.jobs.lock().get(&id).cloned()
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().values().cloned().collect()
    }

    /// Jobs queued or running.
    pub fn depth(&self) -> usize {
        self.jobs
            .lock()
            .values()
            .filter(|j| !j.is_finished())
            .count()
    }

    /// Ends a job as done, or failed with the reason.
    pub fn finish(&self, id: u64, outcome: Result<(), String>, now: u64) {
        self.update(id, |j| {
            j.state = match outcome {
                Ok(()) => JobState::Done,
                Err(why) => JobState::Failed(why),
            };
            j.finished_at = Some(now);
        });
    }

    /// Whether a job for `path` with `action` failed at or after `since`: the
    /// planner waits before asking again.
    pub fn failed_since(&self, path: &str, action: JobAction, since: u64) -> bool {
        self.jobs.lock().values().any(|j| {
            matches!(j.state, JobState::Failed(_))
                && j.finished_at.is_some_and(|t| t >= since)
                && j.action == action
                && j.paths.iter().any(|p| p == path)
        })
    }

    /// Whether a job for `path` with `action` is queued or running.
    pub fn pending(&self, path: &str, action: JobAction) -> bool {
        self.jobs
            .lock()
            .values()
            .any(|j| !j.is_finished() && j.action == action && j.paths.iter().any(|p| p == path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &str) -> Vec<String> {
        vec![p.to_string()]
    }

    #[test]
    fn explicit_jobs_run_first_earliest_deadline_first() {
        let mover = JobQueue::new(0, 0);
        let fetch = JobAction::Fetch(Tier::Ram);
        let demote = mover.submit(
            Priority::Demotion,
            JobAction::Drop(Tier::Ram),
            paths("c"),
            None,
            "cold",
        );
        let promote = mover.submit(
            Priority::Promotion,
            JobAction::Hold(Tier::Ram),
            paths("b"),
            None,
            "hot",
        );
        let late = mover.submit(Priority::Explicit, fetch, paths("x"), Some(200), "");
        let soon = mover.submit(Priority::Explicit, fetch, paths("y"), Some(100), "");
        let whenever = mover.submit(Priority::Explicit, fetch, paths("z"), None, "");
        let order: Vec<u64> = std::iter::from_fn(|| mover.next().map(|j| j.id)).collect();
        assert_eq!(order, [soon, late, whenever, promote, demote]);
    }

    #[test]
    fn the_same_job_is_queued_once_and_a_higher_class_outranks_a_running_one() {
        let mover = JobQueue::new(0, 0);
        let hold = JobAction::Hold(Tier::Ram);
        let a = mover.submit(Priority::Promotion, hold, paths("a"), None, "hot");
        assert_eq!(
            mover.submit(Priority::Promotion, hold, paths("a"), None, "hot"),
            a
        );
        let running = mover.next().unwrap();
        assert!(!mover.outranked(&running));
        let pin = mover.submit(Priority::Explicit, hold, paths("a"), Some(5), "pin");
        assert_ne!(pin, a, "a pin is not folded into a background job");
        assert!(mover.outranked(&running));
        mover.requeue(a);
        assert_eq!(mover.next().unwrap().id, pin);
        assert_eq!(mover.depth(), 2);
        mover.finish(pin, Ok(()), 10);
        assert_eq!(mover.depth(), 1);
        assert!(mover.pending("a", hold));
        mover.next();
        mover.finish(a, Err("store unreachable".into()), 20);
        assert!(mover.failed_since("a", hold, 15));
        assert!(!mover.failed_since("a", hold, 21));
    }
}
