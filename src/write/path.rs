//! The write path: files created or opened for writing go to a staging file in
//! `cache_dir`; release and fsync seal them (digests and an upload job in one
//! registry write); the uploader sends them to the store; once verified, the
//! staging file becomes the NVMe copy of the new object version. Until then the
//! bytes are dirty: no budget evicts them, and writes wait for room.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::write::registry::WriteRegistry;
use crate::write::staging::StagingArea;
use crate::write::uploader::Uploader;

/// One staged file, shared by every handle open on it.
pub struct StagedFile {
    pub id: u64,
    pub ino: u64,
    pub file: File,
    pub(crate) state: Mutex<StagedState>,
    /// The newest seal generation verified in the store.
    pub(crate) verified: watch::Sender<u64>,
}

#[derive(Default)]
pub(crate) struct StagedState {
    pub size: u64,
    /// Bumped by every change; a seal records the generation it hashed.
    pub generation: u64,
    pub sealed: u64,
    pub writers: usize,
    /// Handles the kernel serves straight from the staging file (FUSE
    /// passthrough); their writes are taken from the file itself.
    pub direct_handles: usize,
    /// Unlinked, or replaced by a rename: never sealed or uploaded again.
    pub gone: bool,
    /// Uploaded and made the cached copy of the object: a new writer stages
    /// a new file.
    pub adopted: bool,
}

impl StagedFile {
    pub(crate) fn new(id: u64, ino: u64, file: File, size: u64) -> StagedFile {
        StagedFile {
            id,
            ino,
            file,
            state: Mutex::new(StagedState {
                size,
                ..StagedState::default()
            }),
            verified: watch::channel(0).0,
        }
    }

    pub fn size(&self) -> u64 {
        self.state.lock().size
    }

    pub(crate) fn add_direct_handle(&self) {
        self.state.lock().direct_handles += 1;
    }

    pub(crate) fn drop_direct_handle(&self) {
        let mut state = self.state.lock();
        state.direct_handles = state.direct_handles.saturating_sub(1);
    }

    pub(crate) fn has_direct_handles(&self) -> bool {
        self.state.lock().direct_handles > 0
    }

    /// Counts writes that may have gone straight to the file: takes its size
    /// from disk and marks it changed, so that the next seal hashes what is
    /// there (a seal that finds the same bytes keeps the upload under way).
    /// Returns the size and the growth (negative when it shrank).
    pub(crate) fn absorb_direct_writes(&self) -> std::io::Result<(u64, i64)> {
        let size = self.file.metadata()?.len();
        let mut state = self.state.lock();
        let growth = size as i64 - state.size as i64;
        state.size = size;
        state.generation += 1;
        Ok((size, growth))
    }
}

/// The write path's share of the engine.
pub struct WriteSide {
    pub registry: Arc<WriteRegistry>,
    pub staging: Arc<StagingArea>,
    pub uploader: Arc<Uploader>,
    pub(crate) files: Mutex<HashMap<u64, Arc<StagedFile>>>,
    /// Staged files with an upload task; true asks it to run once more.
    pub(crate) uploads: Mutex<HashMap<u64, bool>>,
    /// Bytes staged and not yet verified in the store; the NVMe tier counts them
    /// against its budget and never evicts them.
    dirty: Arc<AtomicU64>,
    room: Notify,
}

impl WriteSide {
    pub fn new(
        registry: Arc<WriteRegistry>,
        staging: Arc<StagingArea>,
        uploader: Arc<Uploader>,
        dirty: Arc<AtomicU64>,
    ) -> WriteSide {
        WriteSide {
            registry,
            staging,
            uploader,
            files: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            dirty,
            room: Notify::new(),
        }
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }

    /// A staged file that is loaded (open, or with an upload running).
    pub(crate) fn loaded(&self, id: u64) -> Option<Arc<StagedFile>> {
        self.files.lock().get(&id).cloned()
    }

    /// Wakes when bytes leave the dirty count (an upload was verified, a file
    /// was removed): a write waiting for room tries again.
    pub(crate) fn room_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Uploads queued or running.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().len()
    }

    pub(crate) fn add_dirty(&self, delta: i64) {
        if delta >= 0 {
            self.dirty.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let _ = self
                .dirty
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d.saturating_sub(delta.unsigned_abs()))
                });
            self.room.notify_waiters();
        }
    }
}
