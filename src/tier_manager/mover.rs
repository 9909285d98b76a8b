//! How the mover carries out a job: each file copied chunk by chunk into its
//! tier (paced by the class's bandwidth, yielding to demand reads and to more
//! urgent jobs, each copy checked against the recorded digests), or released
//! or dropped there.

use crate::model::clock::now_secs;
use crate::model::version::ChunkKey;
use crate::model::version::FileVersion;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use crate::model::chunk::ChunkLayout;

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};
use crate::model::digest::digest;
use crate::tier_manager::job_queue::{Job, JobAction, JobClass};

use crate::io::rate_limit::pace_opt;
use crate::model::units::format_size;
use crate::tiers::ram::HoldKind;

use crate::model::tier::Tier;

/// The longest a background job waits for demand reads before it takes one step.
const MOST_BACKOFF: Duration = Duration::from_secs(2);
const BACKOFF_STEP: Duration = Duration::from_millis(10);

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Finished,
    /// A more urgent job came: this one goes back to the queue.
    Preempted,
}

impl EngineCore {
    pub(crate) async fn run_job(&self, job: Job) {
        let mover = self.manager().mover.clone();
        match self.run_job_steps(&job).await {
            Ok(Outcome::Finished) => mover.finish(job.id, Ok(()), now_secs()),
            Ok(Outcome::Preempted) => mover.requeue(job.id),
            Err(e) => {
                tracing::warn!(job = job.id, paths = ?job.paths, "{} failed: {e}", job.reason);
                mover.finish(job.id, Err(e.to_string()), now_secs());
            }
        }
    }

    async fn run_job_steps(&self, job: &Job) -> FsResult<Outcome> {
        let mover = self.manager().mover.clone();
        let mut files = Vec::new();
        for path in &job.paths {
            files.extend(self.versions_at(path).await?);
        }
        let total = files.iter().map(|(v, _)| v.size).sum();
        let before: u64 = files.iter().take(job.files_done).map(|(v, _)| v.size).sum();
        mover.update(job.id, |j| {
            j.bytes_total = total;
            j.bytes_done = before;
        });
        for (n, (version, whole)) in files.iter().enumerate().skip(job.files_done) {
            let id = version.id;
            let ram = self.reader().ram();
            match job.action {
                JobAction::Hold(tier) | JobAction::Fetch(tier) => {
                    let hold = matches!(job.action, JobAction::Hold(_));
                    if self.copy_file(job, version, *whole, tier, hold).await? == Outcome::Preempted
                    {
                        return Ok(Outcome::Preempted);
                    }
                }
                JobAction::Release(Tier::Ram) => {
                    // A pin is ended by unpinning, never by the planner.
                    if ram.hold_of(id).is_some_and(|h| h.kind == HoldKind::Hot)
                        && let Some(hold) = ram.release(id)
                    {
                        mover
                            .stats
                            .bytes_down
                            .fetch_add(hold.bytes, Ordering::Relaxed);
                    }
                }
                JobAction::Release(Tier::Nvme) => {}
                JobAction::Drop(Tier::Ram) => {
                    if self.is_pinned_to(version, Tier::Ram) {
                        return Err(FsError::InvalidArgument(format!(
                            "/{} is pinned to ram; unpin it first",
                            version.path
                        )));
                    }
                    let bytes = self.reader().ram_bytes_of(id, version.size);
                    ram.forget(id);
                    mover.stats.bytes_down.fetch_add(bytes, Ordering::Relaxed);
                }
                JobAction::Drop(Tier::Nvme) => {
                    let bytes = self.reader().nvme().demote(id)?;
                    mover.stats.bytes_down.fetch_add(bytes, Ordering::Relaxed);
                }
                JobAction::Release(Tier::Vram) | JobAction::Drop(Tier::Vram) => {
                    return Err(no_gpu_tier());
                }
            }
            mover.update(job.id, |j| {
                j.files_done = n + 1;
                if !matches!(job.action, JobAction::Hold(_) | JobAction::Fetch(_)) {
                    j.bytes_done += version.size;
                }
            });
        }
        Ok(Outcome::Finished)
    }

    fn is_pinned_to(&self, version: &FileVersion, tier: Tier) -> bool {
        self.manager()
            .placement
            .pinned
            .lock()
            .get(version.path.as_ref())
            .is_some_and(|f| f.tier == tier && f.version.id == version.id)
    }

    /// Takes the holds a file needs in `tier` before its chunks arrive.
    fn hold_in(&self, version: &FileVersion, tier: Tier) -> FsResult<()> {
        match tier {
            Tier::Ram => {
                let kind = if self.is_pinned_to(version, Tier::Ram) {
                    HoldKind::Pin
                } else {
                    HoldKind::Hot
                };
                self.reader()
                    .ram()
                    .hold(version.id, kind, version.size)
                    .map_err(|no| {
                        FsError::NoSpace(format!(
                            "/{} ({}) does not fit in RAM: {} is free of holds",
                            version.path,
                            format_size(no.wanted),
                            format_size(no.free)
                        ))
                    })
            }
            Tier::Nvme => {
                let mut pinned = self.manager().placement.pinned.lock();
                if let Some(f) = pinned.get_mut(version.path.as_ref())
                    && f.version.id == version.id
                    && !f.nvme_held
                {
                    self.reader().nvme().hold(version.id);
                    f.nvme_held = true;
                }
                Ok(())
            }
            Tier::Vram => Err(no_gpu_tier()),
        }
    }

    /// Copies every chunk of a file into `tier`, checking each against its
    /// recorded digest and the whole file against `whole` when known.
    async fn copy_file(
        &self,
        job: &Job,
        version: &Arc<FileVersion>,
        whole: Option<u128>,
        tier: Tier,
        hold: bool,
    ) -> FsResult<Outcome> {
        if hold {
            self.hold_in(version, tier)?;
        }
        let mover = self.manager().mover.clone();
        let reader = self.reader().clone();
        let layout = ChunkLayout::new(self.options().chunk_size, version.size);
        let mut hasher = whole.map(|_| Xxh3::new());
        for index in 0..layout.chunk_count() {
            let key = ChunkKey {
                file: version.id,
                index,
            };
            let len = layout.chunk_len(index);
            let present = match tier {
                Tier::Ram => reader.ram().contains(&key),
                Tier::Nvme => reader.nvme().has(&key),
                Tier::Vram => return Err(no_gpu_tier()),
            };
            if !present {
                self.yield_to_readers(job.class).await;
                pace_opt(mover.limit(job.class), len).await;
            }
            let bytes = match tier {
                Tier::Ram => reader.chunk_for_mover(version, index).await?,
                Tier::Nvme => reader.chunk_to_nvme(version, index).await?,
                Tier::Vram => return Err(no_gpu_tier()),
            };
            self.verify_chunk(version, &key, &bytes)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&bytes);
            }
            if !present {
                mover.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
            }
            mover.update(job.id, |j| j.bytes_done += len);
            if mover.outranked(job) {
                return Ok(Outcome::Preempted);
            }
        }
        if let (Some(want), Some(h)) = (whole, hasher) {
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

    /// Checks a copied chunk against the digest recorded when it was fetched.
    fn verify_chunk(&self, version: &FileVersion, key: &ChunkKey, bytes: &Bytes) -> FsResult<()> {
        if let Some(record) = self.index().get(key)?
            && record.digest != digest(bytes)
        {
            return Err(self.copy_was_bad(
                version,
                format!("chunk {} does not match its recorded digest", key.index),
            ));
        }
        Ok(())
    }

    /// Drops the local copies of a file whose copy failed verification, so that
    /// the next read fetches it again from the store.
    fn copy_was_bad(&self, version: &FileVersion, why: String) -> FsError {
        self.manager()
            .mover
            .stats
            .verify_failures
            .fetch_add(1, Ordering::Relaxed);
        self.reader().forget_ram(version.id);
        if let Err(e) = self.reader().nvme().drop_file(version.id) {
            tracing::warn!("cannot drop the bad copy of /{}: {e}", version.path);
        }
        tracing::error!(path = %version.path, "copy failed verification, local copies dropped: {why}");
        FsError::Cache(format!("/{}: {why}", version.path))
    }

    /// Background jobs wait while readers wait for chunks, for a while.
    async fn yield_to_readers(&self, class: JobClass) {
        if class == JobClass::Explicit {
            return;
        }
        let mut waited = Duration::ZERO;
        while self.reader().demand_waiting() > 0 && waited < MOST_BACKOFF {
            tokio::time::sleep(BACKOFF_STEP).await;
            waited += BACKOFF_STEP;
        }
    }
}

/// Jobs name tiers this build cannot hold only if a caller skipped
/// [`parse_tier`](crate::model::tier::parse_tier), which refuses them.
fn no_gpu_tier() -> FsError {
    FsError::InvalidArgument(
        "the vram tier needs the GPU helper, which this build does not have yet".into(),
    )
}
