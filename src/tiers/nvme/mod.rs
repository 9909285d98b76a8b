//! The NVMe tier: one sparse file per object version under `cache_dir/chunks`, a
//! chunk at `index * chunk_size`, its presence and digest in the [`ChunkIndex`].
//! Every read is checked against the digest; a mismatch is dropped so that the
//! caller fetches the chunk again.

use crate::model::clock::now_secs;
use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tierfs_fuse::FileIdentity;

use crate::error::FsResult;
use crate::io::chunk_buffer::BufferPool;
use crate::io::chunk_file::{self, disk_free, punch_hole, read_exact_at};
use crate::meta::chunk_index::{ChunkIndex, ChunkRecord};
use crate::model::chunk::ChunkLayout;
use crate::model::digest::digest;
use crate::tiers::nvme::recency::{ChunkRecency, FileUse};

mod range;
pub mod recency;

/// A chunk's recorded access time is rewritten when it is older than this, so
/// that idle times survive a restart without a write for every read.
const ACCESS_RECORD_STEP: u64 = 60;

/// Counters of the NVMe tier.
#[derive(Debug, Default)]
pub struct NvmeStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub healed: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub demoted_bytes: AtomicU64,
    pub skipped_full: AtomicU64,
    /// Reads of a few pages for a kernel page cache that lost them.
    pub range_reads: AtomicU64,
}

pub struct NvmeTier {
    dir: PathBuf,
    index: Arc<ChunkIndex>,
    chunk_size: u64,
    budget: u64,
    min_free: u64,
    /// Bytes written through the mount and not yet in the store: they share the
    /// budget and the disk, and no eviction may touch them.
    dirty: Arc<AtomicU64>,
    recency: Mutex<ChunkRecency>,
    files: Mutex<HashMap<FileId, Arc<File>>>,
    /// Files the kernel reads directly (FUSE passthrough): never evicted while held.
    held: Mutex<HashMap<FileId, usize>>,
    /// Chunks whose bytes on disk were written or digest-checked by this process.
    /// Passthrough reads skip the digest check, so only files whose every chunk
    /// is in here are offered for it.
    verified: Mutex<HashMap<FileId, HashSet<u64>>>,
    pub stats: NvmeStats,
}

impl NvmeTier {
    pub fn open(
        cache_dir: &Path,
        index: Arc<ChunkIndex>,
        chunk_size: u64,
        budget: u64,
        min_free: u64,
        dirty: Arc<AtomicU64>,
    ) -> FsResult<NvmeTier> {
        let dir = crate::model::paths::chunks_dir(cache_dir);
        std::fs::create_dir_all(&dir)?;
        let mut recency = ChunkRecency::default();
        let mut known = index.all_chunks()?;
        // Oldest first, so that the rebuilt order matches the recorded one.
        known.sort_by_key(|(key, r)| (r.last_access, *key));
        for (key, record) in known {
            recency.touch(key, record.len as u64, record.last_access);
        }
        remove_unrecorded_files(&dir, &recency);
        Ok(NvmeTier {
            dir,
            index,
            chunk_size,
            budget,
            min_free,
            dirty,
            recency: Mutex::new(recency),
            files: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            stats: NvmeStats::default(),
        })
    }

    pub fn used(&self) -> u64 {
        self.recency.lock().used()
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn path_of(&self, file: FileId) -> PathBuf {
        self.dir.join(format!("{}.data", file.hex()))
    }

    fn file(&self, file: FileId, create: bool) -> std::io::Result<Arc<File>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(&file) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(self.path_of(file))?,
        );
        files.insert(file, f.clone());
        Ok(f)
    }

    /// Reads a chunk if it is on disk and its digest matches, into a buffer
    /// from `buffers`. Blocking.
    pub fn read(&self, key: &ChunkKey, buffers: &Arc<BufferPool>) -> FsResult<Option<Bytes>> {
        match self.record(key)? {
            Some(record) => self.read_recorded(key, record, buffers),
            None => Ok(None),
        }
    }

    /// The digest recorded for a chunk when it was fetched or written, whether
    /// or not it is on disk now; no hit or miss is counted.
    pub fn recorded_digest(&self, key: &ChunkKey) -> FsResult<Option<u128>> {
        Ok(self.index.get(key)?.map(|r| r.digest))
    }

    /// What the index records of a chunk; a miss when it has no record. An
    /// index lookup: the caller need not leave the runtime for it, only for
    /// [`NvmeTier::read_recorded`].
    pub fn record(&self, key: &ChunkKey) -> FsResult<Option<ChunkRecord>> {
        let record = self.index.get(key)?;
        if record.is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        Ok(record)
    }

    /// Reads a chunk that `record` describes if it is on disk and its digest
    /// matches, into a buffer from `buffers`. Blocking.
    pub fn read_recorded(
        &self,
        key: &ChunkKey,
        record: ChunkRecord,
        buffers: &Arc<BufferPool>,
    ) -> FsResult<Option<Bytes>> {
        let file = match self.file(key.file, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget_chunk(key);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut buf = buffers.take(record.len as usize)?;
        let offset = key.index * self.chunk_size;
        let valid = match read_exact_at(&file, buf.spare(), offset) {
            Ok(()) => {
                buf.advance(record.len as usize);
                digest(buf.as_ref()) == record.digest
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e.into()),
        };
        if !valid {
            tracing::warn!(file = %key.file.hex(), chunk = key.index, "cached chunk failed its digest check; fetching it again");
            self.stats.healed.fetch_add(1, Ordering::Relaxed);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            self.remove(key);
            return Ok(None);
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let now = now_secs();
        self.recency.lock().touch(*key, record.len as u64, now);
        if now.saturating_sub(record.last_access) >= ACCESS_RECORD_STEP {
            let record = ChunkRecord {
                last_access: now,
                ..record
            };
            if let Err(e) = self.index.put(key, &record) {
                tracing::debug!("recording an access failed: {e}");
            }
        }
        self.mark_verified(key);
        Ok(Some(buf.freeze()))
    }

    /// Stores a chunk, evicting least recently used chunks to stay inside the
    /// budget and above the free-space floor. Blocking. Returns false when the
    /// chunk could not be given room.
    pub fn write(&self, key: &ChunkKey, data: &[u8], chunk_digest: u128) -> FsResult<bool> {
        let len = data.len() as u64;
        if !self.make_room(len)? {
            self.stats.skipped_full.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        // Data first, record second: a crash in between leaves bytes that no
        // record points to, never a record that points to missing bytes.
        self.index.delete(key)?;
        let file = self.file(key.file, true)?;
        // Around the page cache: readers of this copy either have the bytes in
        // the page cache of the tierfs file already or come later (see
        // `chunk_file::write_uncached_at`).
        let path = self.path_of(key.file);
        chunk_file::write_uncached_at(&path, &file, data, key.index * self.chunk_size)?;
        let record = ChunkRecord {
            digest: chunk_digest,
            len: data.len() as u32,
            last_access: now_secs(),
        };
        self.index.put(key, &record)?;
        self.recency.lock().touch(*key, len, record.last_access);
        self.mark_verified(key);
        Ok(true)
    }

    /// Evicts least recently used chunks until `incoming` more bytes fit in the
    /// budget (next to the dirty bytes) and above the free-space floor. False when
    /// not enough can be evicted.
    pub fn make_room(&self, incoming: u64) -> FsResult<bool> {
        loop {
            let victims = {
                let recency = self.recency.lock();
                let need = tierfs_policy::bytes_to_free(
                    recency.used() + self.dirty.load(Ordering::Relaxed),
                    incoming,
                    self.budget,
                    disk_free(&self.dir)?,
                    self.min_free,
                );
                if need == 0 {
                    return Ok(true);
                }
                let held = self.held.lock();
                let oldest = recency
                    .oldest()
                    .filter(|(k, _)| !held.contains_key(&k.file));
                tierfs_policy::lru_victims(oldest, need)
            };
            if victims.is_empty() {
                return Ok(false);
            }
            for key in &victims {
                let len = self.index.get(key)?.map(|r| r.len as u64).unwrap_or(0);
                self.remove(key);
                self.stats.evicted_bytes.fetch_add(len, Ordering::Relaxed);
            }
        }
    }

    /// Drops one chunk: its record, its blocks, and the file once it is empty.
    fn remove(&self, key: &ChunkKey) {
        self.forget_chunk(key);
        if let Ok(file) = self.file(key.file, false)
            && let Err(e) = punch_hole(&file, key.index * self.chunk_size, self.chunk_size)
        {
            tracing::debug!("punch hole: {e}");
        }
        if self.recency.lock().file(key.file).is_none() {
            self.files.lock().remove(&key.file);
            let _ = std::fs::remove_file(self.path_of(key.file));
        }
    }

    fn mark_verified(&self, key: &ChunkKey) {
        self.verified
            .lock()
            .entry(key.file)
            .or_default()
            .insert(key.index);
    }

    fn forget_chunk(&self, key: &ChunkKey) {
        if let Some(set) = self.verified.lock().get_mut(&key.file) {
            set.remove(&key.index);
        }
        if let Err(e) = self.index.delete(key) {
            tracing::warn!("chunk index delete failed: {e}");
        }
        self.recency.lock().remove(key);
    }

    /// Drops every chunk of a file version, as when its object changed in the
    /// store or its local copy is demoted. Records first, data second: a crash in
    /// between leaves a file that no record points to, removed at the next start.
    pub fn drop_file(&self, file: FileId) -> FsResult<()> {
        self.forget_file(file)?;
        match std::fs::remove_file(self.path_of(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn forget_file(&self, file: FileId) -> FsResult<()> {
        for (key, _) in self.index.chunks_of(file)? {
            self.forget_chunk(&key);
        }
        self.index.forget_version(file)?;
        self.files.lock().remove(&file);
        Ok(())
    }

    /// Hands a version's cache file over to become a staging file at `to`, when
    /// it is the file `expected` names; false otherwise. It is renamed, so open
    /// descriptors and the kernel's backing file follow it. The version is no
    /// longer cached here: its bytes are about to change. Records go first, as
    /// in [`NvmeTier::drop_file`].
    pub fn surrender(&self, file: FileId, expected: FileIdentity, to: &Path) -> FsResult<bool> {
        let path = self.path_of(file);
        let same = std::fs::metadata(&path).is_ok_and(|m| FileIdentity::from(&m) == expected);
        if !same {
            return Ok(false);
        }
        self.forget_file(file)?;
        std::fs::rename(&path, to)?;
        Ok(true)
    }

    /// Opens the cache file of a version whose every chunk is on disk and was
    /// written or digest-checked by this process, and holds
    /// it against eviction until [`NvmeTier::unhold`], so that the kernel can read
    /// it directly. `None` when a chunk is missing.
    pub fn hold_complete(&self, file: FileId, layout: ChunkLayout) -> FsResult<Option<File>> {
        let count = layout.chunk_count() as usize;
        if count == 0 {
            return Ok(None);
        }
        if self.verified_count(file) != count as u64 {
            return Ok(None);
        }
        let records = self.index.chunks_of(file)?;
        let complete = records.len() == count
            && records
                .iter()
                .all(|(k, r)| layout.chunk_len(k.index) == r.len as u64);
        if !complete {
            return Ok(None);
        }
        self.hold(file);
        match File::open(self.path_of(file)) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.unhold(file);
                Err(e.into())
            }
        }
    }

    /// Chunks of a version on disk and checked by this process.
    pub fn verified_count(&self, file: FileId) -> u64 {
        self.verified
            .lock()
            .get(&file)
            .map_or(0, |set| set.len() as u64)
    }

    /// Keeps a file's chunks from eviction until [`NvmeTier::unhold`].
    pub fn hold(&self, file: FileId) {
        *self.held.lock().entry(file).or_default() += 1;
    }

    pub fn unhold(&self, file: FileId) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                held.remove(&file);
            }
        }
    }

    /// Makes a staged file the cache file of version `file` (a hard link, no
    /// copy) and returns the chunk records to commit with the upload. The chunks
    /// count once committed and passed to [`NvmeTier::adopted`].
    pub fn link_copy(
        &self,
        file: FileId,
        staged: &Path,
        layout: ChunkLayout,
        digests: &[u128],
    ) -> FsResult<Vec<(ChunkKey, ChunkRecord)>> {
        self.files.lock().remove(&file);
        let target = self.path_of(file);
        match std::fs::remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        std::fs::hard_link(staged, &target)?;
        let now = now_secs();
        Ok(digests
            .iter()
            .enumerate()
            .map(|(index, digest)| {
                let index = index as u64;
                (
                    ChunkKey { file, index },
                    ChunkRecord {
                        digest: *digest,
                        len: layout.chunk_len(index) as u32,
                        last_access: now,
                    },
                )
            })
            .collect())
    }

    /// Counts chunks committed by [`NvmeTier::link_copy`], and evicts others if
    /// they pushed the tier over its budget.
    pub fn adopted(&self, chunks: &[(ChunkKey, ChunkRecord)]) {
        for (key, record) in chunks {
            self.recency
                .lock()
                .touch(*key, record.len as u64, record.last_access);
            self.mark_verified(key);
        }
        if let Err(e) = self.make_room(0) {
            tracing::warn!("eviction after an upload failed: {e}");
        }
    }

    /// Every file with chunks here: its share, and whether the kernel reads it
    /// directly (so it must stay).
    pub fn cached_files(&self) -> Vec<(FileId, FileUse, bool)> {
        let recency = self.recency.lock();
        let held = self.held.lock();
        recency
            .files()
            .map(|(id, usage)| (id, usage, held.contains_key(&id)))
            .collect()
    }

    /// Whether a chunk is on this tier (recorded; reads still check its digest).
    pub fn has(&self, key: &ChunkKey) -> bool {
        self.index.get(key).ok().flatten().is_some()
    }

    /// Bytes of a version on this tier.
    pub fn bytes_of(&self, file: FileId) -> u64 {
        self.recency.lock().file(file).map_or(0, |u| u.bytes)
    }

    /// Removes a file's local copy unless the kernel holds it; the bytes freed.
    pub fn demote(&self, file: FileId) -> FsResult<u64> {
        if self.held.lock().contains_key(&file) {
            return Ok(0);
        }
        let bytes = self.bytes_of(file);
        self.drop_file(file)?;
        self.stats.demoted_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// The cache file of a version, for tests and tools that inspect the cache.
    pub fn data_path(&self, file: FileId) -> PathBuf {
        self.path_of(file)
    }
}

/// Removes cache files that no chunk record points to: left by a crash between
/// dropping a file's records and its data.
fn remove_unrecorded_files(dir: &Path, recency: &ChunkRecency) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".data"))
            .and_then(|hex| u128::from_str_radix(hex, 16).ok());
        if let Some(id) = id
            && recency.file(FileId(id)).is_none()
        {
            tracing::debug!(file = ?entry.path(), "removing a cache file without records");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tier(dir: &Path, budget: u64) -> NvmeTier {
        let index = Arc::new(ChunkIndex::open(&dir.join("index")).unwrap());
        NvmeTier::open(dir, index, 16, budget, 0, Arc::default()).unwrap()
    }

    /// A read through a pool of the tier's chunk size, as the read path does.
    fn read(t: &NvmeTier, key: &ChunkKey) -> Option<Bytes> {
        t.read(key, &BufferPool::new(16, 64, u64::MAX)).unwrap()
    }

    pub(super) fn key(f: u128, index: u64) -> ChunkKey {
        ChunkKey {
            file: FileId(f),
            index,
        }
    }

    #[test]
    fn dirty_bytes_take_room_that_only_clean_chunks_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(ChunkIndex::open(&dir.path().join("index")).unwrap());
        let dirty = Arc::new(AtomicU64::new(0));
        let t = NvmeTier::open(dir.path(), index, 16, 64, 0, dirty.clone()).unwrap();
        for i in 0..4 {
            let d = [i as u8; 16];
            assert!(t.write(&key(1, i), &d, digest(&d)).unwrap());
        }
        // 32 bytes staged: two clean chunks must go to keep the sum in budget.
        dirty.store(32, Ordering::Relaxed);
        assert!(t.make_room(0).unwrap());
        assert_eq!(t.used(), 32);
        // Staged bytes alone fill the budget: nothing more is cached.
        dirty.store(64, Ordering::Relaxed);
        let d = [9u8; 16];
        assert!(!t.write(&key(2, 0), &d, digest(&d)).unwrap());
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn a_cache_file_without_records_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let orphan = {
            let t = tier(dir.path(), 1000);
            let d = [1u8; 16];
            t.write(&key(3, 0), &d, digest(&d)).unwrap();
            t.write(&key(4, 0), &d, digest(&d)).unwrap();
            // As if killed between dropping the records and the data.
            t.index.delete(&key(4, 0)).unwrap();
            t.data_path(FileId(4))
        };
        let t = tier(dir.path(), 1000);
        assert!(!orphan.exists());
        assert!(t.data_path(FileId(3)).exists());
        assert_eq!(t.used(), 16);
    }

    #[test]
    fn write_read_and_heal() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 1000);
        let data = b"0123456789abcdef";
        assert!(t.write(&key(1, 2), data, digest(data)).unwrap());
        assert_eq!(read(&t, &key(1, 2)).as_deref(), Some(&data[..]));
        assert_eq!(read(&t, &key(1, 0)), None);
        // Flip one byte on disk: the read refuses it and forgets the chunk.
        let f = OpenOptions::new()
            .write(true)
            .open(t.data_path(FileId(1)))
            .unwrap();
        chunk_file::write_all_at(&f, b"X", 2 * 16 + 5).unwrap();
        assert_eq!(read(&t, &key(1, 2)), None);
        assert_eq!(t.stats.healed.load(Ordering::Relaxed), 1);
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn evicts_least_recently_used_within_budget_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = tier(dir.path(), 48);
            for i in 0..3 {
                let d = [i as u8; 16];
                t.write(&key(7, i), &d, digest(&d)).unwrap();
            }
            assert!(read(&t, &key(7, 0)).is_some()); // 0 is now the newest
            let d = [9u8; 16];
            t.write(&key(8, 0), &d, digest(&d)).unwrap();
            assert_eq!(t.used(), 48);
            assert!(read(&t, &key(7, 1)).is_none(), "oldest evicted");
            assert!(read(&t, &key(7, 0)).is_some());
        }
        let t = tier(dir.path(), 48);
        assert_eq!(t.used(), 48);
        assert!(read(&t, &key(8, 0)).is_some());
        t.drop_file(FileId(7)).unwrap();
        assert_eq!(t.used(), 16);
        assert!(!t.data_path(FileId(7)).exists());
    }
}
