//! The mover driven over a table of tiers of its own: what it copies, holds,
//! checks and drops, with no engine, store or disk.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use object_store::path::Path;
use parking_lot::Mutex;

use super::*;
use crate::model::version::FileId;
use crate::tier_manager::job_queue::JobState;
use crate::tiers::access::ChunkLoad;

const CHUNK: u64 = 4;

/// Tiers as sets of chunks; the "store" is the bytes each chunk index has.
#[derive(Default)]
struct TableTiers {
    store: HashMap<u64, Bytes>,
    recorded: HashMap<ChunkKey, u128>,
    present: Mutex<HashSet<(Tier, ChunkKey)>>,
    holds: Mutex<Vec<(Tier, FileId, HoldKind)>>,
    dropped: Mutex<Vec<FileId>>,
}

impl TierAccess for TableTiers {
    fn has_chunk(&self, tier: Tier, key: &ChunkKey) -> bool {
        self.present.lock().contains(&(tier, *key))
    }

    fn bytes_in(&self, tier: Tier, version: &FileVersion) -> u64 {
        let present = self.present.lock();
        let layout = ChunkLayout::new(CHUNK, version.size);
        (0..layout.chunk_count())
            .filter(|&index| {
                present.contains(&(
                    tier,
                    ChunkKey {
                        file: version.id,
                        index,
                    },
                ))
            })
            .map(|index| layout.chunk_len(index))
            .sum()
    }

    fn hold(&self, tier: Tier, version: &FileVersion, kind: HoldKind) -> FsResult<()> {
        self.holds.lock().push((tier, version.id, kind));
        Ok(())
    }

    fn release(&self, tier: Tier, id: FileId, kind: HoldKind) -> u64 {
        let mut holds = self.holds.lock();
        let before = holds.len();
        holds.retain(|h| *h != (tier, id, kind));
        (before - holds.len()) as u64 * 100
    }

    fn drop_copy(&self, tier: Tier, version: &FileVersion) -> FsResult<u64> {
        let bytes = self.bytes_in(tier, version);
        self.present
            .lock()
            .retain(|(t, k)| !(*t == tier && k.file == version.id));
        Ok(bytes)
    }

    fn drop_all(&self, id: FileId) -> FsResult<()> {
        self.present.lock().retain(|(_, k)| k.file != id);
        self.dropped.lock().push(id);
        Ok(())
    }

    fn load_into<'a>(
        &'a self,
        tier: Tier,
        version: &'a Arc<FileVersion>,
        index: u64,
    ) -> ChunkLoad<'a> {
        Box::pin(async move {
            let key = ChunkKey {
                file: version.id,
                index,
            };
            self.present.lock().insert((tier, key));
            Ok(self.store[&index].clone())
        })
    }

    fn recorded_digest(&self, key: &ChunkKey) -> FsResult<Option<u128>> {
        Ok(self.recorded.get(key).copied())
    }

    fn demand_waiting(&self) -> u64 {
        0
    }
}

/// A file of 10 bytes: chunks of 4, 4 and 2, each with its digest recorded.
fn file() -> (Arc<FileVersion>, TableTiers) {
    let version = Arc::new(FileVersion {
        path: Path::from("model/w.bin"),
        id: FileId(7),
        size: 10,
        etag: None,
    });
    let mut tiers = TableTiers::default();
    for (index, bytes) in [&b"abcd"[..], b"efgh", b"ij"].into_iter().enumerate() {
        let index = index as u64;
        tiers.store.insert(index, Bytes::from_static(bytes));
        tiers.recorded.insert(
            ChunkKey {
                file: version.id,
                index,
            },
            digest(bytes),
        );
    }
    (version, tiers)
}

fn whole_digest() -> u128 {
    digest(b"abcdefghij")
}

/// Queues one explicit job and runs it to its end.
async fn run(tiers: TableTiers, action: JobAction, file: JobFile) -> Ran {
    run_as(tiers, Priority::Explicit, action, file).await
}

type Ran = (Arc<JobQueue>, Arc<TableTiers>, Job);

/// Queues one job of `class` and runs it to its end (or its preemption).
async fn run_as(tiers: TableTiers, class: Priority, action: JobAction, file: JobFile) -> Ran {
    let jobs = Arc::new(JobQueue::new(0, 0));
    let tiers = Arc::new(tiers);
    let mover = Mover::new(jobs.clone(), tiers.clone(), CHUNK);
    jobs.submit(
        class,
        action,
        vec![file.version.path.to_string()],
        None,
        "test",
    );
    let job = jobs.next().unwrap();
    mover.run(&job, &[file]).await;
    let job = jobs.job(job.id).unwrap();
    (jobs, tiers, job)
}

/// Asserts that `job` failed, for a reason that says `words`.
fn assert_failed(job: &Job, words: &str) {
    match &job.state {
        JobState::Failed(why) => assert!(why.contains(words), "{why}"),
        other => panic!("the job should fail ({words}): {other:?}"),
    }
}

/// Puts chunk `index` of `version` in `tier`.
fn put(tiers: &TableTiers, tier: Tier, version: &FileVersion, index: u64) {
    let key = ChunkKey {
        file: version.id,
        index,
    };
    tiers.present.lock().insert((tier, key));
}

/// A file no pin keeps and whose whole digest is unknown.
fn plain(version: &Arc<FileVersion>) -> JobFile {
    job_file(version, None, None)
}

fn job_file(version: &Arc<FileVersion>, whole: Option<u128>, pinned_to: Option<Tier>) -> JobFile {
    JobFile {
        version: version.clone(),
        whole,
        pinned_to,
    }
}

#[tokio::test]
async fn a_fetch_copies_every_chunk_checked_and_counts_its_bytes() {
    let (version, tiers) = file();
    let (jobs, tiers, job) = run(
        tiers,
        JobAction::Fetch(Tier::Nvme),
        job_file(&version, Some(whole_digest()), None),
    )
    .await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(
        (job.bytes_done, job.bytes_total, job.files_done),
        (10, 10, 1)
    );
    assert_eq!(tiers.bytes_in(Tier::Nvme, &version), 10);
    assert_eq!(tiers.bytes_in(Tier::Ram, &version), 0);
    assert_eq!(jobs.stats.bytes_up.load(Ordering::Relaxed), 10);
    assert!(tiers.holds.lock().is_empty(), "a fetch holds nothing");
}

#[tokio::test]
async fn a_hold_in_ram_is_a_pin_for_a_pinned_file_and_hot_otherwise() {
    for (pinned_to, kind) in [(Some(Tier::Ram), HoldKind::Pin), (None, HoldKind::Hot)] {
        let (version, tiers) = file();
        let (_, tiers, job) = run(
            tiers,
            JobAction::Hold(Tier::Ram),
            job_file(&version, None, pinned_to),
        )
        .await;
        assert_eq!(job.state, JobState::Done);
        assert_eq!(*tiers.holds.lock(), vec![(Tier::Ram, version.id, kind)]);
    }
}

#[tokio::test]
async fn a_chunk_unlike_its_recorded_digest_fails_the_job_and_drops_the_copies() {
    let (version, mut tiers) = file();
    tiers.store.insert(1, Bytes::from_static(b"EFGH"));
    let (jobs, tiers, job) = run(tiers, JobAction::Fetch(Tier::Ram), plain(&version)).await;
    assert_failed(&job, "chunk 1 does not match");
    assert_eq!(*tiers.dropped.lock(), vec![version.id]);
    assert_eq!(tiers.bytes_in(Tier::Ram, &version), 0);
    assert_eq!(jobs.stats.verify_failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_whole_file_unlike_the_stores_digest_fails_the_job() {
    let (version, tiers) = file();
    let (jobs, tiers, job) = run(
        tiers,
        JobAction::Fetch(Tier::Ram),
        job_file(&version, Some(whole_digest() ^ 1), None),
    )
    .await;
    assert_failed(&job, "whole file's digest");
    assert_eq!(*tiers.dropped.lock(), vec![version.id]);
    assert_eq!(jobs.stats.verify_failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_ram_copy_that_a_pin_keeps_is_not_dropped() {
    let (version, tiers) = file();
    put(&tiers, Tier::Ram, &version, 0);
    let (_, tiers, job) = run(
        tiers,
        JobAction::Drop(Tier::Ram),
        job_file(&version, None, Some(Tier::Ram)),
    )
    .await;
    assert_failed(&job, "pinned to ram");
    assert_eq!(tiers.bytes_in(Tier::Ram, &version), 4, "the copy stays");
}

#[tokio::test]
async fn a_drop_frees_the_tiers_copy_and_a_release_ends_only_a_hot_hold() {
    let (version, tiers) = file();
    put(&tiers, Tier::Nvme, &version, 2);
    let (jobs, tiers, job) = run_as(
        tiers,
        Priority::Demotion,
        JobAction::Drop(Tier::Nvme),
        plain(&version),
    )
    .await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(tiers.bytes_in(Tier::Nvme, &version), 0);
    assert_eq!(jobs.stats.bytes_down.load(Ordering::Relaxed), 2);

    let (version, tiers) = file();
    tiers
        .holds
        .lock()
        .extend([(Tier::Ram, version.id, HoldKind::Pin)]);
    let (jobs, tiers, job) = run_as(
        tiers,
        Priority::Demotion,
        JobAction::Release(Tier::Ram),
        job_file(&version, None, Some(Tier::Ram)),
    )
    .await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(
        tiers.holds.lock().len(),
        1,
        "a pin's hold is not the planner's to end"
    );
    assert_eq!(jobs.stats.bytes_down.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_more_urgent_job_sends_a_running_one_back_to_the_queue() {
    let (version, tiers) = file();
    let jobs = Arc::new(JobQueue::new(0, 0));
    let tiers = Arc::new(tiers);
    let mover = Mover::new(jobs.clone(), tiers.clone(), CHUNK);
    let hold = JobAction::Hold(Tier::Ram);
    jobs.submit(
        Priority::Promotion,
        hold,
        vec!["model/w.bin".into()],
        None,
        "hot",
    );
    let job = jobs.next().unwrap();
    jobs.submit(
        Priority::Explicit,
        JobAction::Fetch(Tier::Nvme),
        vec!["other".into()],
        None,
        "pin",
    );
    mover.run(&job, &[plain(&version)]).await;
    let after = jobs.job(job.id).unwrap();
    assert_eq!(after.state, JobState::Queued);
    assert_eq!(
        (after.bytes_done, after.files_done),
        (4, 0),
        "one chunk, then it yields"
    );
}

#[tokio::test]
async fn the_gpu_tier_is_refused_without_touching_the_others() {
    let (version, tiers) = file();
    let (_, tiers, job) = run(tiers, JobAction::Drop(Tier::Vram), plain(&version)).await;
    assert_failed(&job, "GPU helper");
    assert!(tiers.present.lock().is_empty());
}
