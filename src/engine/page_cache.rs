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
/// nothing drops it behind the reader or at close. Reads that reach tierfs
/// through such an open show that the kernel no longer holds those parts: a
/// stray page now and then is fetched back through tierfs, but once they add
/// up to [`LOST_SHARE`] of the file (memory pressure, drop_caches), opens pass
/// through again.
#[derive(Debug, Default)]
pub(crate) struct KernelPageCache {
    holds: Mutex<HashMap<u64, Held>>,
}

/// The share of a file (1/8) that reads through opens trusted to find it in
/// the page cache may ask for before the page cache no longer counts as holding it.
const LOST_SHARE: u64 = 8;

#[derive(Debug, Clone, Copy)]
struct Held {
    version: FileId,
    /// Bytes asked for through opens trusted to find them in the page cache.
    missed: u64,
}

impl KernelPageCache {
    /// A read through tierfs filled part of `ino`'s page cache with `version`.
    pub(crate) fn filled(&self, ino: u64, version: FileId) {
        let mut holds = self.holds.lock();
        if holds.get(&ino).is_none_or(|h| h.version != version) {
            holds.insert(ino, Held { version, missed: 0 });
        }
    }

    /// The kernel asked tierfs for `len` bytes of `ino` (of `size` bytes) that
    /// its page cache was trusted to hold.
    pub(crate) fn missed(&self, ino: u64, len: u64, size: u64) {
        let mut holds = self.holds.lock();
        if let Some(held) = holds.get_mut(&ino) {
            held.missed += len;
            if held.missed > size / LOST_SHARE {
                holds.remove(&ino);
            }
        }
    }

    /// The kernel is about to drop `ino`'s page cache.
    pub(crate) fn forget(&self, ino: u64) {
        self.holds.lock().remove(&ino);
    }

    /// Whether `ino`'s page cache holds what reads of `version` put there.
    pub(crate) fn holds(&self, ino: u64, version: FileId) -> bool {
        self.holds
            .lock()
            .get(&ino)
            .is_some_and(|h| h.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_version_read_until_forgotten_or_an_eighth_is_missed() {
        let cache = KernelPageCache::default();
        assert!(!cache.holds(5, FileId(1)));
        cache.filled(5, FileId(1));
        assert!(cache.holds(5, FileId(1)));
        assert!(!cache.holds(5, FileId(2)), "another version is not held");
        assert!(!cache.holds(6, FileId(1)), "another inode is not held");
        cache.filled(5, FileId(2));
        assert!(cache.holds(5, FileId(2)) && !cache.holds(5, FileId(1)));
        cache.forget(5);
        assert!(!cache.holds(5, FileId(2)));

        // Stray pages are fetched back; an eighth of the file is not.
        cache.filled(5, FileId(3));
        cache.missed(5, 4096, 80 << 10);
        cache.missed(5, 4096, 80 << 10);
        assert!(cache.holds(5, FileId(3)));
        cache.filled(5, FileId(3));
        cache.missed(5, 4096, 80 << 10);
        assert!(!cache.holds(5, FileId(3)), "12 KiB of 80 KiB missed");
    }
}
