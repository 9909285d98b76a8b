//! The open files of the mount, by handle: what each reads or writes, and the
//! one table of which versions are open (see [`OpenVersions`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::Mutex;
use tierfs_policy::ReadaheadState;

use crate::model::version::{FileId, FileVersion, OpenVersions};
use crate::write::path::StagedFile;

/// An open file: an object version read through the tiers, or a staged file.
pub(super) struct OpenFile {
    pub(super) ino: u64,
    /// The kernel serves it from a backing file (FUSE passthrough): the NVMe
    /// copy, held against eviction, or the staging file.
    pub(super) passthrough: AtomicBool,
    pub(super) target: OpenTarget,
}

pub(super) enum OpenTarget {
    /// A version of an object, read through the tiers.
    Version(VersionHandle),
    /// A file written through the mount and not yet verified in the store.
    Staged {
        staged: Arc<StagedFile>,
        /// Opened for writing: counts as a writer of the staged file.
        writer: bool,
    },
}

/// A handle reading an object version, and how its reader moves through it.
pub(super) struct VersionHandle {
    pub(super) version: Arc<FileVersion>,
    pub(super) readahead: Mutex<ReadaheadState>,
    /// The widest readahead window this handle reached, in chunks.
    pub(super) widest_window: AtomicU64,
    /// The chunks below this one had their page cache dropped behind the reader.
    pub(super) dropped_below: AtomicU64,
    /// Opened to be served from the kernel's page cache, which held the file
    /// (see `KernelPageCache`): a read that reaches tierfs shows it no longer does.
    pub(super) from_page_cache: bool,
}

impl OpenFile {
    pub(super) fn version(ino: u64, version: Arc<FileVersion>, from_page_cache: bool) -> OpenFile {
        OpenFile::new(
            ino,
            OpenTarget::Version(VersionHandle {
                version,
                readahead: Mutex::new(ReadaheadState::default()),
                widest_window: AtomicU64::new(0),
                dropped_below: AtomicU64::new(0),
                from_page_cache,
            }),
        )
    }

    pub(super) fn staged(ino: u64, staged: Arc<StagedFile>, writer: bool) -> OpenFile {
        OpenFile::new(ino, OpenTarget::Staged { staged, writer })
    }

    fn new(ino: u64, target: OpenTarget) -> OpenFile {
        OpenFile {
            ino,
            passthrough: AtomicBool::new(false),
            target,
        }
    }

    /// The version the handle reads, unless it is a staged file.
    pub(super) fn read_version(&self) -> Option<&Arc<FileVersion>> {
        match &self.target {
            OpenTarget::Version(handle) => Some(&handle.version),
            OpenTarget::Staged { .. } => None,
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
            .filter_map(|open| open.read_version().cloned())
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
            .any(|open| open.read_version().is_some_and(|v| v.id == id))
    }

    fn open_versions_of(&self, key: &str) -> Vec<Arc<FileVersion>> {
        self.versions()
            .into_iter()
            .filter(|v| v.path.as_ref() == key)
            .collect()
    }
}
