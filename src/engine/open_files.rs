//! The open files of the mount, by handle: what each reads or writes, and the
//! one table of which versions are open (see [`OpenVersions`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::Mutex;
use tierfs_policy::ReadaheadState;

use crate::model::version::{FileId, FileVersion, OpenVersions};
use crate::write::path::StagedFile;

/// An open file: the version it reads and how its reader moves through it, or
/// the staged file it reads and writes.
pub(super) struct OpenFile {
    pub(super) ino: u64,
    pub(super) version: Option<Arc<FileVersion>>,
    pub(super) staged: Option<Arc<StagedFile>>,
    /// Opened for writing: counts as a writer of the staged file.
    pub(super) writer: bool,
    pub(super) readahead: Mutex<ReadaheadState>,
    /// The widest readahead window this handle reached, in chunks.
    pub(super) widest_window: AtomicU64,
    /// The kernel serves it from a backing file (FUSE passthrough): the NVMe
    /// copy, held against eviction, or the staging file.
    pub(super) passthrough: AtomicBool,
    /// The chunks below this one had their page cache dropped behind the reader.
    pub(super) dropped_below: AtomicU64,
    /// Opened to be served from the kernel's page cache, which held the file
    /// (see `KernelPageCache`): a read that reaches tierfs shows it no longer does.
    pub(super) from_page_cache: bool,
}

impl OpenFile {
    pub(super) fn new(
        ino: u64,
        version: Option<Arc<FileVersion>>,
        staged: Option<Arc<StagedFile>>,
        writer: bool,
    ) -> OpenFile {
        OpenFile {
            ino,
            version,
            staged,
            writer,
            readahead: Mutex::new(ReadaheadState::default()),
            widest_window: AtomicU64::new(0),
            passthrough: AtomicBool::new(false),
            dropped_below: AtomicU64::new(0),
            from_page_cache: false,
        }
    }
}

/// Every open file, by handle.
#[derive(Default)]
pub(crate) struct OpenFiles(Mutex<HashMap<u64, Arc<OpenFile>>>);

impl OpenFiles {
    pub(super) fn insert(&self, fh: u64, open: Arc<OpenFile>) {
        self.0.lock().insert(fh, open);
    }

    pub(super) fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.0.lock().get(&fh).cloned()
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.0.lock().remove(&fh)
    }

    fn versions(&self) -> Vec<Arc<FileVersion>> {
        self.0
            .lock()
            .values()
            .filter_map(|open| open.version.clone())
            .collect()
    }
}

impl OpenVersions for OpenFiles {
    fn open_versions(&self) -> HashSet<FileId> {
        self.versions().iter().map(|v| v.id).collect()
    }

    fn is_open(&self, id: FileId) -> bool {
        self.0
            .lock()
            .values()
            .any(|open| open.version.as_ref().is_some_and(|v| v.id == id))
    }

    fn open_versions_of(&self, key: &str) -> Vec<Arc<FileVersion>> {
        self.versions()
            .into_iter()
            .filter(|v| v.path.as_ref() == key)
            .collect()
    }
}
