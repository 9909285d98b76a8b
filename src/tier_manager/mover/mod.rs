//! How the mover carries out a job: each file copied chunk by chunk into its
//! tier (paced by the class's bandwidth, yielding to demand reads and to more
//! urgent jobs, each copy checked against the recorded digests), or released
//! or dropped there. It reaches the tiers only through [`TierAccess`], so it
//! runs, and is tested, without the engine.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tierfs_policy::Priority;
use xxhash_rust::xxh3::Xxh3;

use crate::error::{FsError, FsResult};
use crate::io::rate_limit::pace_opt;
use crate::model::chunk::ChunkLayout;
use crate::model::clock::now_secs;
use crate::model::digest::digest;
use crate::model::tier::Tier;
use crate::model::tier::no_gpu_tier;
use crate::model::version::{ChunkKey, FileVersion};
use crate::tier_manager::job_queue::{Job, JobAction, JobQueue};
use crate::tiers::access::TierAccess;
use crate::tiers::ram::HoldKind;

/// The longest a background job waits for demand reads before it takes one step.
const MOST_BACKOFF: Duration = Duration::from_secs(2);
const BACKOFF_STEP: Duration = Duration::from_millis(10);

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Finished,
    /// A more urgent job came: this one goes back to the queue.
    Preempted,
}

/// A file of a job, as the tier manager resolved it.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub version: Arc<FileVersion>,
    /// The whole-file digest, when the store's metadata has it.
    pub whole: Option<u128>,
    /// The tier a pin keeps this version in, if any.
    pub pinned_to: Option<Tier>,
}

/// Runs the jobs of a [`JobQueue`] against the tiers.
pub struct Mover {
    jobs: Arc<JobQueue>,
    tiers: Arc<dyn TierAccess>,
    chunk_size: u64,
}

impl Mover {
    pub fn new(jobs: Arc<JobQueue>, tiers: Arc<dyn TierAccess>, chunk_size: u64) -> Mover {
        Mover {
            jobs,
            tiers,
            chunk_size,
        }
    }

    /// Runs `job` over `files` (its paths resolved), and records how it ended:
    /// finished, failed, or back in the queue behind a more urgent job.
    pub async fn run(&self, job: &Job, files: &[JobFile]) {
        match self.run_steps(job, files).await {
            Ok(Outcome::Finished) => self.jobs.finish(job.id, Ok(()), now_secs()),
            Ok(Outcome::Preempted) => self.jobs.requeue(job.id),
            Err(e) => self.fail(job, e),
        }
    }

    /// Records that `job` failed.
    pub fn fail(&self, job: &Job, e: FsError) {
        tracing::warn!(job = job.id, paths = ?job.paths, "{} failed: {e}", job.reason);
        self.jobs.finish(job.id, Err(e.to_string()), now_secs());
    }

    async fn run_steps(&self, job: &Job, files: &[JobFile]) -> FsResult<Outcome> {
        let stats = &self.jobs.stats;
        let total = files.iter().map(|f| f.version.size).sum();
        let before: u64 = files
            .iter()
            .take(job.files_done)
            .map(|f| f.version.size)
            .sum();
        self.jobs.update(job.id, |j| {
            j.bytes_total = total;
            j.bytes_done = before;
        });
        for (n, file) in files.iter().enumerate().skip(job.files_done) {
            let version = &file.version;
            match job.action {
                JobAction::Hold(tier) | JobAction::Fetch(tier) => {
                    let hold = matches!(job.action, JobAction::Hold(_));
                    if self.copy_file(job, file, tier, hold).await? == Outcome::Preempted {
                        return Ok(Outcome::Preempted);
                    }
                }
                JobAction::Release(Tier::Ram) => {
                    // A pin is ended by unpinning, never by the planner.
                    let bytes = self.tiers.release(Tier::Ram, version.id, HoldKind::Hot);
                    stats.bytes_down.fetch_add(bytes, Ordering::Relaxed);
                }
                JobAction::Release(Tier::Nvme) => {}
                JobAction::Drop(tier @ (Tier::Ram | Tier::Nvme)) => {
                    if tier == Tier::Ram && file.pinned_to == Some(Tier::Ram) {
                        return Err(FsError::InvalidArgument(format!(
                            "/{} is pinned to ram; unpin it first",
                            version.path
                        )));
                    }
                    let bytes = self.tiers.drop_copy(tier, version)?;
                    stats.bytes_down.fetch_add(bytes, Ordering::Relaxed);
                }
                JobAction::Release(Tier::Vram) | JobAction::Drop(Tier::Vram) => {
                    return Err(no_gpu_tier());
                }
            }
            self.jobs.update(job.id, |j| {
                j.files_done = n + 1;
                if !matches!(job.action, JobAction::Hold(_) | JobAction::Fetch(_)) {
                    j.bytes_done += version.size;
                }
            });
        }
        Ok(Outcome::Finished)
    }

    /// Copies every chunk of a file into `tier`, checking each against its
    /// recorded digest and the whole file against its digest when known.
    async fn copy_file(
        &self,
        job: &Job,
        file: &JobFile,
        tier: Tier,
        hold: bool,
    ) -> FsResult<Outcome> {
        let version = &file.version;
        // On NVMe a pin's hold is the tier manager's, taken as it resolves pins.
        if hold && tier != Tier::Nvme {
            let kind = if file.pinned_to == Some(tier) {
                HoldKind::Pin
            } else {
                HoldKind::Hot
            };
            self.tiers.hold(tier, version, kind)?;
        }
        let layout = ChunkLayout::new(self.chunk_size, version.size);
        let mut hasher = file.whole.map(|_| Xxh3::new());
        for index in 0..layout.chunk_count() {
            let key = ChunkKey {
                file: version.id,
                index,
            };
            let len = layout.chunk_len(index);
            let present = self.tiers.has_chunk(tier, &key);
            if !present {
                self.yield_to_readers(job.class).await;
                pace_opt(self.jobs.limit(job.class), len).await;
            }
            let bytes = self.tiers.load_into(tier, version, index).await?;
            if let Some(recorded) = self.tiers.recorded_digest(&key)?
                && recorded != digest(&bytes)
            {
                return Err(self.copy_was_bad(
                    version,
                    format!("chunk {index} does not match its recorded digest"),
                ));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&bytes);
            }
            if !present {
                self.jobs.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
            }
            self.jobs.update(job.id, |j| j.bytes_done += len);
            if self.jobs.outranked(job) {
                return Ok(Outcome::Preempted);
            }
        }
        if let (Some(want), Some(h)) = (file.whole, hasher) {
            let got = h.digest128();
            if got != want {
                return Err(self.copy_was_bad(
                    version,
                    format!("the whole file's digest is {got:032x}, the store says {want:032x}"),
                ));
            }
        }
        Ok(Outcome::Finished)
    }

    /// Drops the local copies of a file whose copy failed verification, so that
    /// the next read fetches it again from the store.
    fn copy_was_bad(&self, version: &FileVersion, why: String) -> FsError {
        self.jobs
            .stats
            .verify_failures
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tiers.drop_all(version.id) {
            tracing::warn!("cannot drop the bad copy of /{}: {e}", version.path);
        }
        tracing::error!(path = %version.path, "copy failed verification, local copies dropped: {why}");
        FsError::Cache(format!("/{}: {why}", version.path))
    }

    /// Background jobs wait while readers wait for chunks, for a while.
    async fn yield_to_readers(&self, class: Priority) {
        if class == Priority::Explicit {
            return;
        }
        let mut waited = Duration::ZERO;
        while self.tiers.demand_waiting() > 0 && waited < MOST_BACKOFF {
            tokio::time::sleep(BACKOFF_STEP).await;
            waited += BACKOFF_STEP;
        }
    }
}

#[cfg(test)]
mod tests;
