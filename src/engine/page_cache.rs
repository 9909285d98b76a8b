//! What the kernel's page cache of each tierfs file holds of the bytes that
//! reads through tierfs gave it.

use crate::model::version::FileId;
use crate::model::version::FileVersion;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::EngineCore;

use crate::error::FsResult;

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
    /// Opens of the inode so far: a handover planned before one is put off.
    opens: u64,
}

impl Held {
    fn ticket(&self) -> HandoverTicket {
        HandoverTicket {
            version: self.version,
            opens: self.opens,
        }
    }
}

/// What a planned handover of an inode's page cache checks before each step:
/// that the page cache still holds that version and no open came since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandoverTicket {
    version: FileId,
    opens: u64,
}

impl KernelPageCache {
    /// A read through tierfs filled part of `ino`'s page cache with `version`.
    pub(crate) fn filled(&self, ino: u64, version: FileId) {
        let mut holds = self.holds.lock();
        if holds.get(&ino).is_none_or(|h| h.version != version) {
            holds.insert(
                ino,
                Held {
                    version,
                    missed: 0,
                    opens: 0,
                },
            );
        }
    }

    /// The kernel asked tierfs for `len` bytes of `ino` (of `size` bytes) that
    /// its page cache was trusted to hold; whether it still counts as holding
    /// `version` after that.
    pub(crate) fn missed(&self, ino: u64, version: FileId, len: u64, size: u64) -> bool {
        let mut holds = self.holds.lock();
        let Some(held) = holds.get_mut(&ino) else {
            return false;
        };
        held.missed += len;
        if held.missed > size / LOST_SHARE {
            holds.remove(&ino);
            return false;
        }
        held.version == version
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

    /// An open of `ino` at `version`: whether the page cache holds that
    /// version, so that the open is served from it.
    pub(crate) fn opened(&self, ino: u64, version: FileId) -> bool {
        let mut holds = self.holds.lock();
        let Some(held) = holds.get_mut(&ino) else {
            return false;
        };
        held.opens += 1;
        held.version == version
    }

    /// A ticket to hand `ino`'s page cache of `version` over to the NVMe copy
    /// later; `None` when it does not hold that version.
    pub(crate) fn handover_ticket(&self, ino: u64, version: FileId) -> Option<HandoverTicket> {
        let holds = self.holds.lock();
        holds
            .get(&ino)
            .filter(|h| h.version == version)
            .map(Held::ticket)
    }

    /// Whether a handover may go on: nothing opened the inode or changed what
    /// its page cache holds since the ticket was taken.
    pub(crate) fn ticket_valid(&self, ino: u64, ticket: HandoverTicket) -> bool {
        self.holds
            .lock()
            .get(&ino)
            .is_some_and(|h| h.ticket() == ticket)
    }

    /// Ends a handover: the page cache no longer counts as holding the file,
    /// when the ticket is still valid. Whether it was.
    pub(crate) fn hand_over(&self, ino: u64, ticket: HandoverTicket) -> bool {
        let mut holds = self.holds.lock();
        let valid = holds.get(&ino).is_some_and(|h| h.ticket() == ticket);
        if valid {
            holds.remove(&ino);
        }
        valid
    }
}

impl EngineCore {
    /// A read through an open trusted to find the file in the kernel's page
    /// cache: pages it lost, a few at a time. They are read from RAM when their
    /// chunks are there, else just those bytes from the NVMe copy: a whole
    /// chunk read, and readahead after it, for every stray page would make a
    /// warm mmap load wait on the disk for megabytes it has in memory. `None`
    /// when a chunk they touch is in neither, for the usual read to load.
    pub(super) async fn read_lost_pages(
        &self,
        file: &Arc<FileVersion>,
        offset: u64,
        size: u32,
    ) -> FsResult<Option<Bytes>> {
        self.reader
            .read_resident(file, offset, u64::from(size))
            .await
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
        assert!(cache.missed(5, FileId(3), 4096, 80 << 10));
        assert!(cache.missed(5, FileId(3), 4096, 80 << 10));
        assert!(!cache.missed(5, FileId(4), 0, 80 << 10), "another version");
        assert!(cache.holds(5, FileId(3)));
        cache.filled(5, FileId(3));
        assert!(!cache.missed(5, FileId(3), 4096, 80 << 10));
        assert!(!cache.holds(5, FileId(3)), "12 KiB of 80 KiB missed");
    }

    #[test]
    fn a_handover_goes_through_only_if_nothing_opened_or_changed_the_file() {
        let cache = KernelPageCache::default();
        assert!(cache.handover_ticket(7, FileId(1)).is_none());
        cache.filled(7, FileId(1));
        assert!(cache.handover_ticket(7, FileId(2)).is_none());
        let ticket = cache.handover_ticket(7, FileId(1)).unwrap();
        assert!(cache.ticket_valid(7, ticket));
        assert!(cache.opened(7, FileId(1)), "served from the page cache");
        assert!(!cache.ticket_valid(7, ticket), "an open came since");
        assert!(!cache.hand_over(7, ticket));
        assert!(cache.holds(7, FileId(1)));

        let ticket = cache.handover_ticket(7, FileId(1)).unwrap();
        assert!(cache.hand_over(7, ticket));
        assert!(!cache.holds(7, FileId(1)), "later opens pass through");
        assert!(!cache.opened(7, FileId(1)));

        cache.filled(7, FileId(1));
        let ticket = cache.handover_ticket(7, FileId(1)).unwrap();
        cache.filled(7, FileId(2));
        assert!(!cache.hand_over(7, ticket), "another version was read");
        cache.forget(7);
        assert!(!cache.ticket_valid(7, ticket));
    }
}
