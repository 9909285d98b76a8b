//! Writes at local-disk speed: a handle opened for writing may be given the
//! staging file as its FUSE passthrough backing, so that the kernel writes into
//! it directly instead of sending every write through the daemon. tierfs then
//! learns of the writes from the file itself when the handle is flushed,
//! fsynced or released, and sizes reported in between are read from it.
//!
//! A new writer is offered passthrough only while the cache has room to spare
//! (more than a quarter of `cache_size` free of bytes not yet in the store): a
//! direct write cannot be made to wait for uploads, so near the limit writes go
//! through the daemon, which waits for room and fails with ENOSPC after
//! `dirty_wait`. The kernel keeps an inode either passed through or cached, never
//! both (it fails the other kind of open with EIO), so once a staged file has a
//! passthrough handle every new handle on it, reader or writer, shares it.

use std::sync::Arc;

use tierfs_fuse::{Backing, FileIdentity};

use crate::engine::EngineCore;
use crate::engine::attributes::has_set_id;
use crate::engine::io_modes::backing_in_use;
use crate::engine::write_ops::room_left;
use crate::error::FsResult;
use crate::namespace::Node;
use crate::write::path::StagedFile;

impl EngineCore {
    /// The backing file for a new handle on `staged` whose inode has no handle
    /// read through tierfs, when passthrough may carry it: the staging file,
    /// unless the inode's other handles use another one (`live`). Handles that
    /// share it already get it regardless of room, since the kernel serves them
    /// no other way.
    pub(crate) fn staged_backing(
        &self,
        staged: &Arc<StagedFile>,
        writer: bool,
        live: Option<FileIdentity>,
    ) -> Option<Backing> {
        if !self.passthrough() {
            return None;
        }
        // Writes that pass through never reach tierfs, so they could not clear
        // set-ID bits that a write by another user must clear.
        let set_id = self
            .node(staged.ino)
            .is_ok_and(|n| has_set_id(n.posix.mode));
        if writer && set_id {
            return None;
        }
        let backing = match staged.file.try_clone().and_then(Backing::new) {
            Ok(backing) => backing,
            Err(e) => {
                tracing::debug!("no passthrough for a staged file: {e}");
                return None;
            }
        };
        let shared = match live {
            Some(identity) if identity != backing.identity => return None,
            Some(_) => true,
            None => staged.has_direct_handles(),
        };
        if !shared && writer && room_left(self) <= self.options().cache_size / 4 {
            return None;
        }
        staged.add_direct_handle();
        Some(backing)
    }

    /// Takes in what direct writes changed: the size from the file, the dirty
    /// bytes, and a new generation so that the next seal hashes them.
    pub(crate) fn absorb_direct_writes(&self, staged: &StagedFile) {
        match staged.absorb_direct_writes() {
            Ok((size, growth)) => {
                self.writes().add_dirty(growth);
                if growth > 0 {
                    self.room_on_nvme(0);
                }
                self.show_size(staged.ino, size);
            }
            Err(e) => tracing::warn!(id = staged.id, "cannot read a staged file's size: {e}"),
        }
    }

    /// The size of a staged file that the kernel writes directly, read from
    /// the file, since tierfs sees none of those writes.
    pub(crate) fn direct_size(&self, node: &Node) -> Option<u64> {
        let staged = self.writes().loaded(node.staged?)?;
        if !staged.has_direct_handles() {
            return None;
        }
        staged.file.metadata().ok().map(|m| m.len())
    }

    /// A write handle with passthrough is done writing (released, or refused
    /// passthrough by the kernel).
    pub(crate) fn end_direct_writes(&self, staged: &StagedFile) {
        self.absorb_direct_writes(staged);
        staged.drop_direct_handle();
    }

    /// Stages a file for writing by taking over the NVMe copy that its open
    /// readers get from the kernel by passthrough, when they do: the kernel
    /// would refuse a second backing file for the inode, and this way the
    /// readers see the writes, as readers of a local file do. None when the
    /// inode has no such readers; `FsError::Busy` when they read another
    /// copy (the RAM one), which a writer cannot share.
    pub(crate) fn stage_from_passthrough_copy(
        &self,
        node: &Node,
    ) -> FsResult<Option<Arc<StagedFile>>> {
        let Some(live) = self.live_backing(node.ino) else {
            return Ok(None);
        };
        let version = self.version_of(node)?;
        let (id, path) = self.writes().staging.reserve();
        if !self.reader().surrender_nvme_copy(version.id, live, &path)? {
            return Err(backing_in_use(node.ino));
        }
        let file = self.writes().staging.open_file(id)?;
        if file.metadata()?.len() != version.size {
            file.set_len(version.size)?;
        }
        tracing::debug!(path = %node.path, "staged from the copy its readers pass through");
        let staged = self.register_staged(id, node.ino, &node.path, file)?;
        Ok(Some(staged))
    }
}
