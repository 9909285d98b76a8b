//! The RAM tier: a moka cache weighted by bytes for chunks that earn their place
//! by being read, and a held set outside it for the files the tier manager keeps
//! in RAM (pinned, or promoted for being hot). A file's whole size is reserved
//! when it is held and the cache shrinks by as much, so the cache and the held
//! set together never exceed the tier's size, and a held chunk is never evicted.
//! A held file's chunks live in one memfd ([`RamFile`]), which the kernel reads
//! directly (FUSE passthrough) once the whole file is in.

use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use moka::policy::EvictionPolicy;
use parking_lot::{Mutex, RwLock};

use crate::io::ram_file::RamFile;

/// Why a file is held in RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldKind {
    /// Promoted by the planner for being read often; released when it cools.
    Hot,
    /// Pinned by a user; released only by unpinning.
    Pin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub kind: HoldKind,
    /// Bytes reserved: the file's size.
    pub bytes: u64,
}

/// A hold that does not fit next to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub wanted: u64,
    pub free: u64,
}

type ChunkCache = moka::sync::Cache<ChunkKey, Bytes>;

pub struct RamTier {
    capacity: u64,
    cache: RwLock<ChunkCache>,
    held_chunks: RwLock<HashMap<ChunkKey, Bytes>>,
    holds: Mutex<HashMap<FileId, Hold>>,
    ram_files: Mutex<HashMap<FileId, Arc<RamFile>>>,
    chunk_size: u64,
}

fn new_cache(capacity: u64) -> ChunkCache {
    // LRU rather than moka's frequency-based admission: a chunk fetched ahead
    // of a reader has never been read, and must not be turned away for that.
    // Frequency counts where it pays: the planner holds hot files outside it.
    moka::sync::Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(EvictionPolicy::lru())
        .support_invalidation_closures()
        .weigher(|_k: &ChunkKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
        .build()
}

impl RamTier {
    pub fn new(capacity: u64, chunk_size: u64) -> RamTier {
        RamTier {
            capacity,
            cache: RwLock::new(new_cache(capacity)),
            held_chunks: RwLock::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            ram_files: Mutex::new(HashMap::new()),
            chunk_size,
        }
    }

    /// The chunk as a view of its file's memfd when the file has one.
    fn in_ram_file(&self, key: &ChunkKey, bytes: Bytes) -> Bytes {
        let ram_file = self.ram_files.lock().get(&key.file).cloned();
        ram_file
            .and_then(|f| f.put(key.index, &bytes))
            .unwrap_or(bytes)
    }

    /// The memfd holding all of a held file, for the kernel to serve it from.
    pub fn backing_file(&self, file: FileId) -> Option<std::fs::File> {
        let ram_file = self.ram_files.lock().get(&file).cloned()?;
        match ram_file.backing()? {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!("cannot share the RAM copy of {}: {e}", file.hex());
                None
            }
        }
    }

    /// Whether all of a held file is in its memfd.
    pub fn holds_whole(&self, file: FileId) -> bool {
        self.ram_files
            .lock()
            .get(&file)
            .is_some_and(|f| f.is_complete())
    }

    /// The tier's size: the cache and the held set together.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if let Some(bytes) = self.held_chunks.read().get(key) {
            return Some(bytes.clone());
        }
        self.cache.read().get(key)
    }

    /// Drops chunks `indexes` of a file from the cache (never from the held
    /// set), for a reader that has left them behind for good.
    pub fn let_go(&self, file: FileId, indexes: std::ops::Range<u64>) {
        let cache = self.cache.read();
        for index in indexes {
            cache.invalidate(&ChunkKey { file, index });
        }
        cache.run_pending_tasks();
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.held_chunks.read().contains_key(key) || self.cache.read().contains_key(key)
    }

    /// Keeps a chunk: in the held set when its file is held, in the cache otherwise.
    pub fn insert(&self, key: ChunkKey, bytes: Bytes) {
        if self.holds.lock().contains_key(&key.file) {
            let bytes = self.in_ram_file(&key, bytes);
            self.held_chunks.write().insert(key, bytes);
            // Cached before the hold by a reader that raced it.
            self.cache.read().invalidate(&key);
        } else {
            // The cache evicts, and lets go of what it evicts or invalidated,
            // only when its pending work runs: left to moka's own schedule that
            // is a few hundred milliseconds, in which a streaming reader puts
            // dozens of chunks past the tier's size.
            let cache = self.cache.read();
            cache.insert(key, bytes);
            cache.run_pending_tasks();
        }
    }

    /// Holds a file of `bytes` bytes (or changes its hold), moving the chunks the
    /// cache has of it into the held set. A pin is not downgraded to hot.
    pub fn hold(&self, file: FileId, kind: HoldKind, bytes: u64) -> Result<(), NoRoom> {
        let mut holds = self.holds.lock();
        let others: u64 = holds
            .iter()
            .filter(|(id, _)| **id != file)
            .map(|(_, h)| h.bytes)
            .sum();
        if others + bytes > self.capacity {
            return Err(NoRoom {
                wanted: bytes,
                free: self.capacity - others.min(self.capacity),
            });
        }
        let kind = holds.get(&file).map_or(kind, |h| h.kind.max(kind));
        let before = holds.insert(file, Hold { kind, bytes });
        let resized = before.map(|h| h.bytes) != Some(bytes);
        if resized {
            self.resize(self.capacity - (others + bytes));
            match RamFile::create(&file.hex(), bytes, self.chunk_size) {
                Ok(f) => self.ram_files.lock().insert(file, f),
                Err(e) => {
                    tracing::info!(
                        "no memfd for a RAM copy ({e}); the kernel will not read it directly"
                    );
                    self.ram_files.lock().remove(&file)
                }
            };
        }
        let cache = self.cache.read();
        let mut held = self.held_chunks.write();
        if resized {
            // Held already, as views of the memfd just replaced: copy them over.
            let mine: Vec<ChunkKey> = held.keys().filter(|k| k.file == file).copied().collect();
            for key in mine {
                if let Some(bytes) = held.remove(&key) {
                    held.insert(key, self.in_ram_file(&key, bytes));
                }
            }
        }
        let cached: Vec<ChunkKey> = cache
            .iter()
            .filter(|(k, _)| k.file == file)
            .map(|(k, _)| *k)
            .collect();
        for key in cached {
            if let Some(bytes) = cache.remove(&key) {
                held.insert(key, self.in_ram_file(&key, bytes));
            }
        }
        Ok(())
    }

    /// Ends a file's hold: its chunks go back to the cache, where they stay only
    /// while they are read. They are views of the file's memfd, which is freed
    /// once the last of them leaves (chunks of one file, put back together, leave
    /// the LRU together). Returns the hold ended.
    pub fn release(&self, file: FileId) -> Option<Hold> {
        let mut holds = self.holds.lock();
        let hold = holds.remove(&file)?;
        self.ram_files.lock().remove(&file);
        let reserved: u64 = holds.values().map(|h| h.bytes).sum();
        self.resize(self.capacity - reserved.min(self.capacity));
        let chunks: Vec<(ChunkKey, Bytes)> = {
            let mut held = self.held_chunks.write();
            let keys: Vec<ChunkKey> = held.keys().filter(|k| k.file == file).copied().collect();
            keys.into_iter()
                .filter_map(|k| held.remove(&k).map(|b| (k, b)))
                .collect()
        };
        let cache = self.cache.read();
        for (key, bytes) in chunks {
            cache.insert(key, bytes);
        }
        Some(hold)
    }

    /// Drops every chunk of a version, held or cached, and its hold.
    pub fn forget(&self, file: FileId) {
        self.release(file);
        if let Err(e) = self
            .cache
            .read()
            .invalidate_entries_if(move |k, _| k.file == file)
        {
            tracing::debug!("RAM tier invalidation: {e}");
        }
    }

    /// Applies the cache's pending evictions, so that what it reports is exact.
    pub fn settle(&self) {
        self.cache.read().run_pending_tasks();
    }

    /// The holds now.
    pub fn holds(&self) -> HashMap<FileId, Hold> {
        self.holds.lock().clone()
    }

    pub fn hold_of(&self, file: FileId) -> Option<Hold> {
        self.holds.lock().get(&file).copied()
    }

    /// Bytes reserved by holds of `kind`.
    pub fn reserved(&self, kind: HoldKind) -> u64 {
        self.holds
            .lock()
            .values()
            .filter(|h| h.kind == kind)
            .map(|h| h.bytes)
            .sum()
    }

    /// Bytes of chunks in the tier, held or cached.
    pub fn used(&self) -> u64 {
        let cache = self.cache.read();
        cache.run_pending_tasks();
        cache.weighted_size() + self.held_bytes()
    }

    /// Bytes of chunks in the held set.
    pub fn held_bytes(&self) -> u64 {
        self.held_chunks
            .read()
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }

    /// Builds the cache anew at `capacity`, keeping what fits. moka cannot change
    /// a cache's capacity, and holds change seldom (pins, promotions).
    fn resize(&self, capacity: u64) {
        let fresh = new_cache(capacity);
        let mut cache = self.cache.write();
        for (key, bytes) in cache.iter() {
            fresh.insert(*key, bytes);
        }
        fresh.run_pending_tasks();
        *cache = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(file: u128, index: u64) -> ChunkKey {
        ChunkKey {
            file: FileId(file),
            index,
        }
    }

    fn chunk(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn chunks_past_the_size_are_evicted_at_once_and_let_go_leaves_nothing() {
        let ram = RamTier::new(1000, 100);
        let cached = |ram: &RamTier| ram.cache.read().iter().count();
        // A stream of chunks through a tier of ten: the cache never holds more
        // than ten, not ten plus the dozens it has yet to get round to evicting.
        let mut most = 0;
        for i in 0..200 {
            ram.insert(key(1, i), chunk(100));
            most = most.max(cached(&ram));
        }
        assert_eq!(most, 10, "chunks held at most while streaming");
        ram.let_go(FileId(1), 0..200);
        assert_eq!(cached(&ram), 0);
        assert_eq!(ram.used(), 0);
    }

    #[test]
    fn held_chunks_stay_and_the_cache_gives_up_their_room() {
        let ram = RamTier::new(1000, 100);
        ram.hold(FileId(1), HoldKind::Pin, 600).unwrap();
        for i in 0..6 {
            ram.insert(key(1, i), chunk(100));
        }
        // A scan of another file through the cache cannot push the held file out.
        for i in 0..50 {
            ram.insert(key(2, i), chunk(100));
        }
        assert!((0..6).all(|i| ram.contains(&key(1, i))));
        assert!(ram.used() <= 1000, "{}", ram.used());
        assert_eq!(ram.held_bytes(), 600);
    }

    #[test]
    fn a_hold_past_the_capacity_has_no_room_and_changes_nothing() {
        let ram = RamTier::new(1000, 100);
        ram.hold(FileId(1), HoldKind::Pin, 700).unwrap();
        let err = ram.hold(FileId(2), HoldKind::Pin, 400).unwrap_err();
        assert_eq!(
            err,
            NoRoom {
                wanted: 400,
                free: 300
            }
        );
        assert_eq!(ram.reserved(HoldKind::Pin), 700);
        // Growing a hold counts only the others.
        ram.hold(FileId(1), HoldKind::Pin, 1000).unwrap();
    }

    #[test]
    fn held_chunks_live_in_a_memfd_that_backs_the_file_once_complete() {
        let ram = RamTier::new(1000, 100);
        ram.insert(key(1, 0), Bytes::from(vec![1u8; 100]));
        ram.hold(FileId(1), HoldKind::Hot, 250).unwrap();
        // A chunk cached before the hold moved into the held set.
        assert_eq!(ram.held_bytes(), 100);
        assert!(ram.backing_file(FileId(1)).is_none());
        ram.insert(key(1, 1), Bytes::from(vec![2u8; 100]));
        ram.insert(key(1, 2), Bytes::from(vec![3u8; 50]));
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut ram.backing_file(FileId(1)).unwrap(), &mut back).unwrap();
        assert_eq!(back.len(), 250);
        assert!(back[..100].iter().all(|b| *b == 1) && back[200..].iter().all(|b| *b == 3));
        assert_eq!(ram.get(&key(1, 1)).unwrap()[..], [2u8; 100][..]);
        // Released: back in the cache, no longer a backing file, and out under
        // pressure.
        assert_eq!(ram.release(FileId(1)).unwrap().kind, HoldKind::Hot);
        assert_eq!(ram.held_bytes(), 0);
        assert!(ram.contains(&key(1, 0)) && ram.backing_file(FileId(1)).is_none());
        for i in 0..30 {
            ram.insert(key(2, i), chunk(100));
            ram.get(&key(2, i));
        }
        ram.used();
        assert!(!ram.contains(&key(1, 0)) || !ram.contains(&key(1, 1)));
        assert!(ram.used() <= 1000);
    }

    #[test]
    fn a_pin_is_not_downgraded_and_forget_drops_everything() {
        let ram = RamTier::new(1000, 100);
        ram.hold(FileId(1), HoldKind::Pin, 100).unwrap();
        ram.hold(FileId(1), HoldKind::Hot, 100).unwrap();
        assert_eq!(ram.hold_of(FileId(1)).unwrap().kind, HoldKind::Pin);
        ram.insert(key(1, 0), chunk(100));
        ram.forget(FileId(1));
        assert!(!ram.contains(&key(1, 0)));
        assert!(ram.hold_of(FileId(1)).is_none());
    }
}
