//! The tier manager: pins resolved to the files they cover, the planner asked
//! each tick what should move, and the jobs that carry it out resolved for the
//! mover. It names versions through [`VersionNaming`], which the engine
//! implements, as reads name them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore};
use tierfs_policy::{Action, Budgets, Candidate, PlanConfig, Priority, Reason, plan};

use crate::error::{FsError, FsResult};
use crate::meta::chunk_index::ChunkIndex;
use crate::model::clock::now_secs;
use crate::model::tier::Tier;
use crate::model::units::format_size;
use crate::model::version::FileVersion;
use crate::namespace::{is_within, object_path};
use crate::store::digest_metadata::{head_digest, parse_digest};
use crate::tier_manager::access::AccessTable;
use crate::tier_manager::demotion::Demoter;
use crate::tier_manager::job_queue::{Job, JobAction, JobQueue};
use crate::tier_manager::mover::{JobFile, Mover};
use crate::tier_manager::pins::PinTable;
use crate::tier_manager::placement::{PinnedFile, Placement, RESOLVE_EVERY, RETRY_AFTER_SECS};
use crate::tiers::access::TierAccess;
use crate::tiers::ram::HoldKind;
use crate::tiers::reader::TieredReader;

/// How the tier manager names the version of a listed object: as reads name
/// it (the namespace's node when it knows the file, bound as the object's
/// current version in the chunk index). The engine implements it.
pub trait VersionNaming: Send + Sync {
    fn version_of_listed(&self, meta: &ObjectMeta) -> FsResult<Arc<FileVersion>>;
}

pub struct TierManager {
    pub pins: PinTable,
    pub jobs: Arc<JobQueue>,
    pub mover: Mover,
    pub demoter: Demoter,
    pub placement: Placement,
    pub plan_config: PlanConfig,
    pub store: Arc<dyn ObjectStore>,
    pub reader: Arc<TieredReader>,
    pub index: Arc<ChunkIndex>,
    pub access: Arc<AccessTable>,
    /// What the NVMe tier may hold (`cache_size`).
    pub nvme_budget: u64,
}

impl TierManager {
    /// The objects a path names: the file, or every file below the directory.
    /// Listings only, so that versions are named as the namespace names them.
    pub async fn objects_at(&self, path: &str) -> FsResult<Vec<ObjectMeta>> {
        if !path.is_empty() {
            let parent = path
                .rsplit_once('/')
                .map(|(p, _)| object_path(p))
                .transpose()?;
            let listing = self
                .store
                .list_with_delimiter(parent.as_ref())
                .await
                .map_err(FsError::from_store)?;
            if let Some(meta) = listing
                .objects
                .into_iter()
                .find(|m| m.location.as_ref() == path)
            {
                return Ok(vec![meta]);
            }
        }
        let prefix = (!path.is_empty()).then(|| object_path(path)).transpose()?;
        self.store
            .list(prefix.as_ref())
            .try_filter(|m| std::future::ready(!m.location.as_ref().ends_with('/')))
            .try_collect()
            .await
            .map_err(FsError::from_store)
    }

    /// The whole-file digest the store keeps in the object's metadata.
    async fn stored_digest(&self, version: &FileVersion) -> Option<u128> {
        if let Some(d) = self.index.version_info(version.id).ok()??.digest {
            return Some(d);
        }
        let text = head_digest(self.store.as_ref(), &version.path)
            .await
            .ok()??;
        parse_digest(&text)
    }

    /// Bytes the pins of `tier` cover now, except those below `except`.
    pub fn pinned_bytes(&self, tier: Tier, except: Option<&str>) -> u64 {
        let below = |key: &str| except.is_some_and(|p| is_within(key, p));
        self.placement
            .pinned
            .lock()
            .iter()
            .filter(|(k, f)| f.tier == tier && !below(k))
            .map(|(_, f)| f.version.size)
            .sum()
    }

    /// What a tier may hold in pins.
    pub fn pin_budget(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Ram => self.reader.ram().capacity(),
            Tier::Nvme => self.nvme_budget,
            Tier::Vram => 0,
        }
    }

    /// Pins `path` (a file or a directory) to `tier`, if what it covers fits in
    /// the tier next to the other pins; the mover starts fetching at once.
    pub async fn pin(&self, path: &str, tier: Tier) -> FsResult<()> {
        let bytes: u64 = self.objects_at(path).await?.iter().map(|m| m.size).sum();
        let others = self.pinned_bytes(tier, Some(path));
        let budget = self.pin_budget(tier);
        if others + bytes > budget {
            return Err(FsError::NoSpace(format!(
                "pinning /{path} to {} needs {}, and {} of the tier's {} is free of pins",
                tier.name(),
                format_size(bytes),
                format_size(budget.saturating_sub(others)),
                format_size(budget)
            )));
        }
        self.pins.set(path, tier)?;
        tracing::info!(path = %path, "pinned to {} ({})", tier.name(), format_size(bytes));
        self.placement_changed();
        Ok(())
    }

    /// Removes the pin set on `path`; its files stay where they are until the
    /// tiers need the room.
    pub fn unpin(&self, path: &str) -> FsResult<()> {
        if !self.pins.remove(path)? {
            let why = match self.pins.effective(path) {
                Some((dir, _)) => format!("/{path} has no pin of its own; /{dir} pins it"),
                None => format!("/{path} is not pinned"),
            };
            tracing::info!("{why}");
            return Err(FsError::NoAttribute);
        }
        tracing::info!(path = %path, "unpinned");
        // Files no pin covers any more are let go at once; those now under
        // another pin are moved there by the next resolution.
        let manager = self;
        let freed: Vec<PinnedFile> = {
            let mut pinned = manager.placement.pinned.lock();
            let gone: Vec<String> = pinned
                .keys()
                .filter(|k| manager.pins.effective(k).is_none())
                .cloned()
                .collect();
            gone.iter().filter_map(|k| pinned.remove(k)).collect()
        };
        for file in &freed {
            self.end_pin(file);
        }
        self.placement_changed();
        Ok(())
    }

    /// Pins or the files under them changed: resolve them at once.
    pub fn placement_changed(&self) {
        let manager = self;
        manager.placement.stale.store(true, Ordering::Relaxed);
        manager.jobs.wake.notify_one();
    }

    /// Resolves every pin to the files it covers now, and ends the holds of
    /// files no longer pinned (or pinned at an older version).
    async fn resolve_pins(&self, names: &dyn VersionNaming) -> FsResult<()> {
        let manager = self;
        let mut found = HashMap::new();
        for (path, _) in manager.pins.all() {
            for meta in self.objects_at(&path).await? {
                let key = meta.location.to_string();
                // The nearest pin decides: a file pinned itself inside a pinned
                // directory keeps its own tier.
                let Some((_, tier)) = manager.pins.effective(&key) else {
                    continue;
                };
                found.insert(key, (tier, meta));
            }
        }
        let old = manager.placement.pinned.lock().clone();
        let mut pinned = HashMap::new();
        for (key, (tier, meta)) in found {
            let version = match old.get(&key) {
                Some(f) if f.version.etag == meta.e_tag && f.version.size == meta.size => {
                    f.version.clone()
                }
                _ => names.version_of_listed(&meta)?,
            };
            let kept = old.get(&key).filter(|f| f.version.id == version.id);
            let digest = match kept {
                Some(f) => f.digest,
                None => self.stored_digest(&version).await,
            };
            pinned.insert(
                key,
                PinnedFile {
                    tier,
                    nvme_held: kept.is_some_and(|f| f.nvme_held && f.tier == tier),
                    version,
                    digest,
                },
            );
        }
        for (key, before) in &old {
            let same = pinned
                .get(key)
                .is_some_and(|now| now.version.id == before.version.id && now.tier == before.tier);
            if !same {
                self.end_pin(before);
            }
        }
        *manager.placement.pinned.lock() = pinned;
        Ok(())
    }

    /// Ends the holds a pin kept; the bytes stay as ordinary cache.
    fn end_pin(&self, file: &PinnedFile) {
        let (id, tiers) = (file.version.id, &self.reader);
        let bytes = tiers.release(Tier::Ram, id, HoldKind::Pin);
        self.jobs
            .stats
            .bytes_down
            .fetch_add(bytes, Ordering::Relaxed);
        if file.nvme_held {
            tiers.release(Tier::Nvme, id, HoldKind::Pin);
        }
    }

    /// Whether a pinned file is wholly in its tier, and held there.
    fn pin_in_place(&self, file: &PinnedFile) -> bool {
        let v = &file.version;
        match file.tier {
            Tier::Ram => {
                self.reader.ram().hold_of(v.id).is_some()
                    && self.reader.ram_bytes_of(v.id, v.size) == v.size
            }
            Tier::Nvme => file.nvme_held && self.reader.nvme().bytes_of(v.id) == v.size,
            Tier::Vram => true,
        }
    }

    /// One tick of the tier manager: pins resolved when stale, pinned files not
    /// in place queued, and the planner's promotions and demotions of hot files
    /// queued. Statistics are written to the registry.
    pub async fn plan_tick(&self, names: &dyn VersionNaming) {
        let manager = self;
        let due = manager
            .placement
            .last_resolved
            .lock()
            .is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
        if due || manager.placement.stale.swap(false, Ordering::Relaxed) {
            match self.resolve_pins(names).await {
                Ok(()) => *manager.placement.last_resolved.lock() = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!("cannot resolve pins, keeping the files last seen: {e}");
                    manager.placement.stale.store(true, Ordering::Relaxed);
                }
            }
        }
        let pinned = manager.placement.pinned.lock().clone();
        let now = now_secs();
        let retry = now.saturating_sub(RETRY_AFTER_SECS);
        for (key, file) in &pinned {
            if file.tier == Tier::Vram {
                // Nothing below holds GPU memory yet; such pins are refused.
                continue;
            }
            let action = JobAction::Hold(file.tier);
            if !self.pin_in_place(file) && !manager.jobs.failed_since(key, action, retry) {
                manager.jobs.submit(
                    Priority::Explicit,
                    action,
                    vec![key.clone()],
                    None,
                    "pinned",
                );
            }
        }
        self.plan_hot_files(&pinned, now);
        if let Err(e) = self.access.persist(now) {
            tracing::warn!("cannot keep access statistics: {e}");
        }
    }

    /// Asks the planner which files earn a place in RAM by being read, and
    /// queues their promotion, or the release of those that cooled down. NVMe
    /// fills from reads and is kept to its budget by eviction and the demotion
    /// rule, so the planner's NVMe moves are not carried out here.
    fn plan_hot_files(&self, pinned: &HashMap<String, PinnedFile>, now: u64) {
        let manager = self;
        let ram = self.reader.ram();
        let holds = ram.holds();
        let mut candidates = Vec::new();
        for (key, access) in self.access.live(now) {
            let Some(version) = pinned
                .get(&key)
                .map(|f| f.version.clone())
                .or(access.version.clone())
            else {
                continue;
            };
            candidates.push(Candidate {
                key,
                bytes: version.size,
                present: [
                    false,
                    holds.contains_key(&version.id),
                    self.reader.nvme().bytes_of(version.id) == version.size,
                ],
                stats: access.stats,
                pin: pinned.get(version.path.as_ref()).map(|f| f.tier),
                dirty: false,
            });
        }
        let pinned_ram = ram.reserved(HoldKind::Pin);
        let budgets = Budgets {
            vram: 0,
            // Hot files get half of what pins leave: the rest stays a cache for
            // readahead and one-off reads.
            ram: pinned_ram + (ram.capacity().saturating_sub(pinned_ram)) / 2,
            nvme: self.nvme_budget,
        };
        for step in plan(&candidates, budgets, now, &manager.plan_config) {
            let hot = step.reason == Reason::Hot;
            let hold = JobAction::Hold(Tier::Ram);
            match step.action {
                Action::Promote(Tier::Ram)
                    if hot
                        && !manager.jobs.failed_since(
                            &step.key,
                            hold,
                            now.saturating_sub(RETRY_AFTER_SECS),
                        ) =>
                {
                    manager
                        .jobs
                        .submit(step.priority, hold, vec![step.key], None, "read often");
                }
                Action::Demote(Tier::Ram) if step.reason == Reason::Cold => {
                    let held_hot = candidates.iter().any(|c| {
                        c.key == step.key && c.pin != Some(Tier::Ram) && c.is_in(Tier::Ram)
                    });
                    if held_hot {
                        manager.jobs.submit(
                            step.priority,
                            JobAction::Release(Tier::Ram),
                            vec![step.key],
                            None,
                            "no longer read often",
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// The versions a job's path covers: pinned files as resolved, files read
    /// here at the version last opened, anything else as the store has it now.
    async fn versions_at(
        &self,
        path: &str,
        names: &dyn VersionNaming,
    ) -> FsResult<Vec<(Arc<FileVersion>, Option<u128>)>> {
        if let Some(f) = self.placement.pinned.lock().get(path) {
            return Ok(vec![(f.version.clone(), f.digest)]);
        }
        if let Some(v) = self.access.get(path).and_then(|a| a.version) {
            return Ok(vec![(v, None)]);
        }
        let mut out = Vec::new();
        for meta in self.objects_at(path).await? {
            let version = names.version_of_listed(&meta)?;
            let digest = self.stored_digest(&version).await;
            out.push((version, digest));
        }
        Ok(out)
    }

    /// Resolves a job's paths and has the mover run it.
    pub async fn run_job(&self, job: Job, names: &dyn VersionNaming) {
        let mover = &self.mover;
        match self.job_files(&job, names).await {
            Ok(files) => mover.run(&job, &files).await,
            Err(e) => mover.fail(&job, e),
        }
    }

    async fn job_files(&self, job: &Job, names: &dyn VersionNaming) -> FsResult<Vec<JobFile>> {
        let mut files = Vec::new();
        for path in &job.paths {
            for (version, whole) in self.versions_at(path, names).await? {
                let pinned_to = self.pinned_tier(&version, job.action);
                files.push(JobFile {
                    version,
                    whole,
                    pinned_to,
                });
            }
        }
        Ok(files)
    }

    /// The tier a pin keeps `version` in. A job that holds a pinned file on
    /// NVMe takes the pin's NVMe hold here, once, so that eviction passes the
    /// file by while its chunks arrive.
    fn pinned_tier(&self, version: &FileVersion, action: JobAction) -> Option<Tier> {
        let mut pinned = self.placement.pinned.lock();
        let file = pinned
            .get_mut(version.path.as_ref())
            .filter(|f| f.version.id == version.id)?;
        if action == JobAction::Hold(Tier::Nvme) && !file.nvme_held {
            self.reader.nvme().hold(version.id);
            file.nvme_held = true;
        }
        Some(file.tier)
    }
}
