//! The NVMe copy taking over from the kernel's page cache of a tierfs file.
//!
//! After a cold read, the one copy of a file in memory is the kernel's page
//! cache of the tierfs file (see `KernelPageCache`), and reopens are served
//! from it. A mapping of a FUSE file's page cache is slower to fault in than one
//! of a local file's, whose page cache is built of large folios that each fault
//! maps whole: a warm mmap load (safetensors `safe_open`) runs faster passed
//! through to a cache file in the page cache. So once a file has been left
//! alone for `page_cache_handover` after its last close, the cache file is
//! read into the page cache, the kernel drops the tierfs file's pages, and
//! later opens pass through to it. Any open in between puts the handover off
//! until the next last close: the reader is served from the page cache it
//! has, and the handover does not compete with it for the disk. Nor does it
//! with cold reads of other files: it waits while chunks are being fetched.

use crate::model::version::FileVersion;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tierfs_fuse::KernelNotices;

use super::page_cache::HandoverTicket;
use super::{EngineCore, NVME_SETTLE};

impl EngineCore {
    /// The mount is up: its kernel takes notices to drop page caches.
    pub fn attach_kernel(&self, notices: Arc<dyn KernelNotices>) {
        let _ = self.kernel.set(notices);
    }

    /// The last handle on `ino` that read `version` through tierfs closed:
    /// plans the handover of its page cache to the NVMe copy, when the page
    /// cache holds it and later opens could pass through.
    pub(super) fn plan_handover(self: &Arc<Self>, ino: u64, version: &Arc<FileVersion>) {
        let delay = self.options.page_cache_handover;
        if delay.is_zero() || !self.passthrough() || self.kernel.get().is_none() {
            return;
        }
        let Some(ticket) = self.kernel_cache.handover_ticket(ino, version.id) else {
            return;
        };
        let (core, version) = (Arc::downgrade(self), version.clone());
        tokio::spawn(async move {
            // Background work: it waits while chunks are being fetched, so as
            // to take neither disk, CPU nor memory from readers.
            loop {
                tokio::time::sleep(delay).await;
                let Some(core) = core.upgrade() else { return };
                if !core.kernel_cache.ticket_valid(ino, ticket) {
                    return;
                }
                if core.reader.in_flight_bytes() == 0 {
                    core.hand_over(ino, &version, ticket).await;
                    return;
                }
            }
        });
    }

    async fn hand_over(
        self: Arc<Self>,
        ino: u64,
        version: &Arc<FileVersion>,
        ticket: HandoverTicket,
    ) {
        // A file held whole in RAM passes through to its RAM copy instead.
        if self.reader.whole_in_ram(version.id) {
            return;
        }
        // The turn first: a handover waiting for it does not keep its file
        // from eviction meanwhile.
        let Ok(_turn) = self.handovers.acquire().await else {
            return;
        };
        self.reader
            .settle_nvme(version.id, version.size, NVME_SETTLE)
            .await;
        let file = match self.reader.hold_nvme_copy(version) {
            Ok(Some(file)) => file,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(path = %version.path, "no page cache handover: {e}");
                return;
            }
        };
        let (core, size) = (self.clone(), version.size);
        let loaded =
            tokio::task::spawn_blocking(move || core.load_page_cache(&file, size, ino, ticket))
                .await;
        self.reader.end_whole_copy(version.id);
        match loaded {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return,
            Ok(Err(e)) => {
                tracing::warn!(path = %version.path, "reading the cache file for a page cache handover failed: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!("page cache handover: {e}");
                return;
            }
        }
        if self.kernel_cache.hand_over(ino, ticket)
            && let Some(kernel) = self.kernel.get()
        {
            kernel.drop_page_cache(ino);
            tracing::info!(path = %version.path, "the NVMe copy took over from the page cache");
        }
    }

    /// Reads `size` bytes of a cache file through the page cache, a chunk at a
    /// time; false when an open of the inode came first.
    ///
    /// The chunks pass through one buffer from the chunk buffer pool (an idle
    /// one, faulted in already, once reads have run), and handovers run one at
    /// a time: they add at most one chunk to the daemon's footprint.
    fn load_page_cache(
        &self,
        file: &File,
        size: u64,
        ino: u64,
        ticket: HandoverTicket,
    ) -> std::io::Result<bool> {
        let piece = self.options.chunk_size as usize;
        let mut buf = self.reader.brief_buffer()?;
        let mut offset = 0;
        while offset < size {
            if !self.kernel_cache.ticket_valid(ino, ticket) {
                return Ok(false);
            }
            let n = (size - offset).min(piece as u64) as usize;
            file.read_exact_at(&mut buf.spare()[..n], offset)?;
            offset += n as u64;
        }
        Ok(true)
    }
}
