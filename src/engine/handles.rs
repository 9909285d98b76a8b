//! Open handles: the files behind them, whether the kernel serves each from a
//! backing file, and what closing one leaves to do.

use crate::model::tier::Tier;
use crate::model::version::ChunkKey;
use crate::model::version::FileVersion;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tierfs_fuse::{Backing, FileIdentity, Flushed, Opened, Released};
use tierfs_policy::{ReadaheadState, page_cache_behind};

use super::open_files::{OpenFile, OpenTarget, VersionHandle};
use super::{EngineCore, NVME_SETTLE};

use crate::error::{FsError, FsResult};

use crate::write::path::StagedFile;

/// How many chunks ahead of the application the kernel's own readahead may
/// have sent requests: two windows of the mount's read_ahead_kb, one chunk
/// (see `cli::mount::raise_readahead`). The page cache there is not left behind yet.
const KERNEL_READAHEAD_CHUNKS: u64 = 2;

impl EngineCore {
    /// Whether handles may be offered backing files (FUSE passthrough): the
    /// `passthrough` option is on and the kernel has not refused them. Nothing
    /// waits for, or drops page cache for, a passthrough that cannot happen.
    pub(crate) fn passthrough(&self) -> bool {
        self.options.passthrough && !self.passthrough_unavailable.load(Ordering::Relaxed)
    }

    /// The kernel takes no backing files on this mount (it lacks FUSE
    /// passthrough, or the daemon lacks the privilege): every handle goes
    /// through tierfs from now on. (The adapter logs why.)
    pub fn passthrough_unavailable(&self) {
        self.passthrough_unavailable.store(true, Ordering::Relaxed);
    }

    /// The backing file for a new handle on `version`: the file's memfd when it
    /// is held whole in RAM, else (when `nvme`) its NVMe copy when complete, or
    /// whichever of them is `live` (the one the inode's other handles use).
    pub(super) fn version_backing(
        &self,
        version: &FileVersion,
        live: Option<FileIdentity>,
        nvme: bool,
    ) -> FsResult<Option<Backing>> {
        if !self.passthrough() {
            return Ok(None);
        }
        let offered = self.reader.hold_whole_copy(version, nvme, |file| {
            let backing = Backing::new(file)?;
            Ok(live
                .is_none_or(|id| id == backing.identity)
                .then_some(backing))
        })?;
        Ok(offered.map(|(backing, tier)| {
            match tier {
                Tier::Ram => {
                    tracing::debug!(path = %version.path, "offering the RAM copy as backing file")
                }
                _ => {
                    tracing::debug!(path = %version.path, "offering the NVMe copy as backing file")
                }
            }
            backing
        }))
    }

    /// Registers a handle and decides whether the kernel serves it from a backing
    /// file, as [`InodeIoModes::add`] allows; a handle without one is served
    /// through tierfs.
    pub(super) fn add_handle(
        &self,
        open: OpenFile,
        offer: impl FnOnce(Option<FileIdentity>) -> FsResult<Option<Backing>>,
    ) -> FsResult<(u64, Option<Backing>)> {
        let backing = self.io_modes.add(open.ino, offer)?;
        open.passthrough.store(backing.is_some(), Ordering::Relaxed);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Arc::new(open));
        Ok((fh, backing))
    }

    pub(crate) fn add_staged_handle(
        &self,
        ino: u64,
        staged: Arc<StagedFile>,
        writer: bool,
    ) -> FsResult<Opened> {
        self.last_opened.lock().remove(&ino);
        let open = OpenFile::staged(ino, staged.clone(), writer);
        let (fh, backing) =
            self.add_handle(open, |live| Ok(self.staged_backing(&staged, writer, live)))?;
        Ok(Opened {
            fh,
            keep_cache: false,
            backing,
        })
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(FsError::BadHandle(fh))
    }

    /// The staged file a handle writes, for the write path.
    pub(crate) fn writable_handle(&self, fh: u64) -> FsResult<Arc<StagedFile>> {
        let open = self.handle(fh)?;
        match &open.target {
            OpenTarget::Staged {
                staged,
                writer: true,
            } => Ok(staged.clone()),
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    /// A handle offered passthrough reads through tierfs after all.
    pub fn end_passthrough(&self, fh: u64) {
        let open = self.files.get(fh);
        let Some(open) = open.filter(|o| o.passthrough.swap(false, Ordering::Relaxed)) else {
            return;
        };
        match &open.target {
            OpenTarget::Version(reading) => self.reader.end_whole_copy(reading.version.id),
            OpenTarget::Staged { staged, .. } => staged.drop_direct_handle(),
        }
        self.io_modes.passthrough_refused(open.ino);
    }

    /// Bytes of the kernel's page cache of `open`'s file that its sequential
    /// reader has left behind (see [`page_cache_behind`]), when later opens read
    /// them from the NVMe copy instead: passthrough is on, those chunks are on
    /// NVMe, no other handle reads the file through tierfs, and the kernel's
    /// page cache is not what later opens read (see `KernelPageCache`). Keeping
    /// them would hold the same bytes twice in the page cache until the next
    /// open drops them, and that open would wait for the drop. The chunks left
    /// behind leave the RAM tier's cache either way: nothing would read them
    /// there, and their memory goes back to the buffer pool for the chunks the
    /// reader fetches next.
    pub(super) fn page_cache_left_behind(
        &self,
        ino: u64,
        reading: &VersionHandle,
        state: ReadaheadState,
    ) -> Option<(u64, u64)> {
        let file = &reading.version;
        if !self.passthrough() {
            return None;
        }
        let from = reading.dropped_below.load(Ordering::Relaxed);
        let behind = page_cache_behind(state, from, KERNEL_READAHEAD_CHUNKS);
        if behind.is_empty() || !self.io_modes.sole_cached_handle(ino) {
            return None;
        }
        // Kept in the page cache, the chunks need not wait for their NVMe copy
        // to leave RAM.
        let kept = self.kernel_cache.holds(ino, file.id);
        let end = if kept {
            behind.end
        } else {
            behind
                .clone()
                .find(|&index| {
                    !self.reader.on_nvme(&ChunkKey {
                        file: file.id,
                        index,
                    })
                })
                .unwrap_or(behind.end)
        };
        if end == from
            || reading
                .dropped_below
                .compare_exchange(from, end, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        self.reader.let_go_of_ram(file.id, from..end);
        if kept {
            return None;
        }
        let chunk_size = self.options.chunk_size;
        Some((from * chunk_size, (end - from) * chunk_size))
    }

    /// A close of the last handle that reads a file through tierfs, once the
    /// file is whole on NVMe when the writes in flight land: waits for those
    /// writes and has the page cache dropped before the close returns, so that
    /// an open right after it passes through at once rather than waiting for
    /// both. (close(2) waits for flush; release comes after it returns.)
    pub async fn flush(&self, fh: u64) -> FsResult<Flushed> {
        // Nothing to flush is no reason to fail a close.
        let Ok(open) = self.handle(fh) else {
            return Ok(Flushed::default());
        };
        let Some(version) = open.read_version() else {
            return Ok(Flushed::default());
        };
        // A passthrough handle is never the inode's sole cached one.
        if !self.io_modes.sole_cached_handle(open.ino)
            || !self.next_open_passes_through(open.ino, version)
        {
            return Ok(Flushed::default());
        }
        self.reader
            .settle_nvme(version.id, version.size, NVME_SETTLE)
            .await;
        self.kernel_cache.forget(open.ino);
        Ok(Flushed {
            drop_page_cache: true,
        })
    }

    pub fn release(self: &Arc<Self>, fh: u64) -> Released {
        let Some(open) = self.files.remove(fh) else {
            return Released::default();
        };
        let passthrough = open.passthrough.load(Ordering::Relaxed);
        let last_on_inode = self.io_modes.release(open.ino, passthrough);
        let reading = match &open.target {
            OpenTarget::Version(reading) => reading,
            OpenTarget::Staged { staged, writer } => {
                if passthrough {
                    if *writer {
                        self.end_direct_writes(staged);
                    } else {
                        staged.drop_direct_handle();
                    }
                }
                self.release_staged(staged, *writer);
                return Released::default();
            }
        };
        let version = &reading.version;
        self.kept.closed(version.id);
        tracing::debug!(
            path = %version.path,
            widest_readahead = reading.widest_window.load(Ordering::Relaxed),
            passthrough,
            "file closed"
        );
        if passthrough {
            self.reader.end_whole_copy(version.id);
            return Released::default();
        }
        // The last handle read through tierfs: the kernel drops the page cache
        // that reads through tierfs filled now rather than in the next open.
        let drop_page_cache = last_on_inode && self.next_open_passes_through(open.ino, version);
        if drop_page_cache {
            self.kernel_cache.forget(open.ino);
        } else if last_on_inode {
            self.plan_handover(open.ino, version);
        }
        Released { drop_page_cache }
    }

    /// Whether the next open of `ino` at `version` passes through: backing
    /// files can be had, and the file is held whole in RAM, or is (or is about
    /// to be, once the NVMe writes in flight land) whole on NVMe while the
    /// kernel's page cache does not hold it. The page cache that reads through
    /// tierfs filled is then not read again.
    fn next_open_passes_through(&self, ino: u64, version: &FileVersion) -> bool {
        self.passthrough()
            && (self.reader.whole_in_ram(version.id)
                || (!self.kernel_cache.holds(ino, version.id)
                    && self.reader.nvme_whole_soon(version.id, version.size)))
    }

    /// The backing file the kernel reads `ino` from, while a handle uses it.
    pub(crate) fn live_backing(&self, ino: u64) -> Option<FileIdentity> {
        self.io_modes.live_backing(ino)
    }

    /// The file version an open handle reads, for tests and tools.
    pub fn handle_version(&self, fh: u64) -> Option<Arc<FileVersion>> {
        self.files
            .get(fh)
            .and_then(|open| open.read_version().cloned())
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testing::{CHUNK, EngineFixture, errno};
    use crate::model::tier::Tier;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_handle_is_ebadf_and_a_read_handle_is_not_writable() {
        let f = EngineFixture::new();
        f.put("a.bin", b"abc");
        let fh = f.open("a.bin").await;
        assert_eq!(errno(f.core.read(fh + 1, 0, 1).await), libc::EBADF);
        assert_eq!(errno(f.core.writable_handle(fh + 1)), libc::EBADF);
        assert_eq!(errno(f.core.writable_handle(fh)), libc::EBADF);
        assert_eq!(f.core.handle_version(fh).unwrap().size, 3);
        f.core.release(fh);
        assert!(f.core.handle_version(fh).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_whole_on_nvme_is_offered_as_backing_file_and_held_while_open() {
        let f = EngineFixture::with(|o| o.passthrough = true);
        f.put("a.bin", &vec![3u8; (2 * CHUNK) as usize]);
        // On NVMe without a read through tierfs, which would leave the file
        // in the kernel's page cache instead.
        let node = f.node("a.bin").await;
        let version = f.core.version_of(&node).unwrap();
        for index in 0..2 {
            let reader = f.core.reader();
            reader
                .chunk_into(Tier::Nvme, &version, index)
                .await
                .unwrap();
        }
        let ino = node.ino;
        let opened = f.core.open(ino, false, false).await.unwrap();
        assert!(opened.backing.is_some(), "a whole NVMe copy passes through");
        // Held while the kernel reads it: eviction passes it by.
        f.core.reader().make_disk_room(0, u64::MAX / 2);
        assert_eq!(f.core.reader().nvme_bytes_of(version.id), 2 * CHUNK);
        f.core.release(opened.fh);
        f.core.reader().make_disk_room(0, u64::MAX / 2);
        assert_eq!(f.core.reader().nvme_bytes_of(version.id), 0);
    }
}
