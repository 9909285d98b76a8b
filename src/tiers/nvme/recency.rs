//! Recency order of the chunks on the NVMe tier, for eviction, and what each file
//! holds there, for demotion by idle time.

use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use std::collections::{BTreeMap, HashMap};

/// One file's share of the tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileUse {
    pub chunks: u32,
    pub bytes: u64,
    /// Seconds since the epoch of the last read or write of any of its chunks.
    pub last_access: u64,
}

#[derive(Default)]
pub struct ChunkRecency {
    order: BTreeMap<(u64, ChunkKey), u64>,
    tick_of: HashMap<ChunkKey, u64>,
    files: HashMap<FileId, FileUse>,
    next_tick: u64,
    used: u64,
}

impl ChunkRecency {
    /// Makes `key` (of `len` bytes) the most recently used chunk, used at `at`.
    pub fn touch(&mut self, key: ChunkKey, len: u64, at: u64) {
        self.forget(&key);
        self.next_tick += 1;
        self.order.insert((self.next_tick, key), len);
        self.tick_of.insert(key, self.next_tick);
        self.used += len;
        let file = self.files.entry(key.file).or_default();
        file.chunks += 1;
        file.bytes += len;
        file.last_access = file.last_access.max(at);
    }

    /// Drops a chunk; true when its file has no chunk left.
    pub fn remove(&mut self, key: &ChunkKey) -> bool {
        self.forget(key);
        !self.files.contains_key(&key.file)
    }

    fn forget(&mut self, key: &ChunkKey) {
        let Some(tick) = self.tick_of.remove(key) else {
            return;
        };
        let Some(len) = self.order.remove(&(tick, *key)) else {
            return;
        };
        self.used -= len;
        if let Some(file) = self.files.get_mut(&key.file) {
            file.chunks -= 1;
            file.bytes -= len;
            if file.chunks == 0 {
                self.files.remove(&key.file);
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.tick_of.contains_key(key)
    }

    /// Chunks and their sizes, least recently used first.
    pub fn oldest(&self) -> impl Iterator<Item = (ChunkKey, u64)> + '_ {
        self.order.iter().map(|((_, key), len)| (*key, *len))
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, FileUse)> + '_ {
        self.files.iter().map(|(id, u)| (*id, *u))
    }

    pub fn file(&self, id: FileId) -> Option<FileUse> {
        self.files.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(f: u128, index: u64) -> ChunkKey {
        ChunkKey {
            file: FileId(f),
            index,
        }
    }

    #[test]
    fn files_track_their_chunks_and_last_access() {
        let mut r = ChunkRecency::default();
        r.touch(key(1, 0), 10, 100);
        r.touch(key(1, 1), 10, 50);
        r.touch(key(2, 0), 5, 70);
        r.touch(key(1, 0), 10, 120);
        assert_eq!(r.used(), 25);
        assert_eq!(
            r.file(FileId(1)),
            Some(FileUse {
                chunks: 2,
                bytes: 20,
                last_access: 120
            })
        );
        let order: Vec<ChunkKey> = r.oldest().map(|(k, _)| k).collect();
        assert_eq!(order, vec![key(1, 1), key(2, 0), key(1, 0)]);
        assert!(!r.remove(&key(1, 0)));
        assert!(r.remove(&key(1, 1)));
        assert_eq!(r.file(FileId(1)), None);
        assert_eq!(r.used(), 5);
    }

    proptest! {
        #[test]
        fn totals_match_the_chunks(ops in proptest::collection::vec((0u128..4, 0u64..4, 1u64..100, any::<bool>()), 0..60)) {
            let mut r = ChunkRecency::default();
            let mut model: HashMap<ChunkKey, u64> = HashMap::new();
            for (f, i, len, add) in ops {
                if add {
                    r.touch(key(f, i), len, 0);
                    model.insert(key(f, i), len);
                } else {
                    r.remove(&key(f, i));
                    model.remove(&key(f, i));
                }
            }
            prop_assert_eq!(r.used(), model.values().sum::<u64>());
            for (id, u) in r.files() {
                let mine: Vec<u64> = model.iter().filter(|(k, _)| k.file == id).map(|(_, l)| *l).collect();
                prop_assert_eq!(u.chunks as usize, mine.len());
                prop_assert_eq!(u.bytes, mine.iter().sum::<u64>());
            }
            prop_assert_eq!(r.oldest().count(), model.len());
        }
    }
}
