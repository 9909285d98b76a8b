//! What the kernel's page cache of each tierfs file holds of the bytes that
//! reads through tierfs gave it.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::chunk_index::FileId;

/// Inodes whose page cache in the kernel holds what reads through tierfs
/// filled it with, and the version those reads were of.
///
/// The NVMe copy of a fetched chunk is written around the page cache
/// (`chunk_file::write_uncached_at`), so after a cold read the one copy in
/// memory is the kernel's page cache of the tierfs file. An open of the same
/// version is then served from it (FOPEN_KEEP_CACHE, no backing file) rather
/// than passed through to the NVMe copy, whose reads would go to the disk; and
/// nothing drops it behind the reader or at close. A read that reaches tierfs
/// through such an open shows that the kernel no longer holds that part
/// (memory pressure, drop_caches): from then on opens pass through again.
#[derive(Debug, Default)]
pub(crate) struct KernelPageCache {
    holds: Mutex<HashMap<u64, FileId>>,
}

impl KernelPageCache {
    /// A read through tierfs filled part of `ino`'s page cache with `version`.
    pub(crate) fn filled(&self, ino: u64, version: FileId) {
        let mut holds = self.holds.lock();
        if holds.get(&ino) != Some(&version) {
            holds.insert(ino, version);
        }
    }

    /// The kernel asked tierfs for bytes of `ino` that its page cache was
    /// trusted to hold, or is about to drop them: it no longer holds the file.
    pub(crate) fn lost(&self, ino: u64) {
        self.holds.lock().remove(&ino);
    }

    /// Whether `ino`'s page cache holds what reads of `version` put there.
    pub(crate) fn holds(&self, ino: u64, version: FileId) -> bool {
        self.holds.lock().get(&ino) == Some(&version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_version_read_until_lost() {
        let cache = KernelPageCache::default();
        assert!(!cache.holds(5, FileId(1)));
        cache.filled(5, FileId(1));
        assert!(cache.holds(5, FileId(1)));
        assert!(!cache.holds(5, FileId(2)), "another version is not held");
        assert!(!cache.holds(6, FileId(1)), "another inode is not held");
        cache.filled(5, FileId(2));
        assert!(cache.holds(5, FileId(2)) && !cache.holds(5, FileId(1)));
        cache.lost(5);
        assert!(!cache.holds(5, FileId(2)));
    }
}
