//! Modes, owners, times and symbolic links: what `stat` shows beyond a size,
//! and where each change is kept (see `store::posix_metadata` for the
//! conventions):
//!
//! - a file written through the mount and not yet uploaded: in its staged
//!   record, and the upload carries it;
//! - an object on a local-directory store: extended attributes on its file;
//! - an object on S3: its metadata, replaced in place by a copy of the object
//!   onto itself (no bytes pass through tierfs);
//! - a directory: extended attributes on it on a local-directory store, this
//!   mount's memory on S3 (a bucket keeps no directories).

use std::sync::Arc;
use std::time::SystemTime;

use object_store::{GetOptions, ObjectStoreExt, PutOptions, PutPayload};
use tierfs_fuse::{AttrChange, Creator, FileKind};

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};
use crate::model::posix::{PosixAttrs, S_IFDIR, S_IFLNK, S_IFREG};
use crate::namespace::{Node, join, object_path, valid_name};
use crate::store::posix_metadata::{add_posix_attributes, posix_of};

/// The longest key S3 takes, in bytes; longer ones are ENAMETOOLONG before
/// anything reaches the store.
pub const MAX_KEY: usize = 1024;

/// The file-type bits of a node's mode.
fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => S_IFREG,
        FileKind::Directory => S_IFDIR,
        FileKind::Symlink => S_IFLNK,
    }
}

/// The key `name` gets in directory `dir`: checked as a name, and against the
/// store's key length.
pub(crate) fn new_key(dir: &Node, name: &str) -> FsResult<String> {
    valid_name(name)?;
    let key = join(&dir.path, name);
    if key.len() > MAX_KEY {
        return Err(FsError::NameTooLong);
    }
    Ok(key)
}

/// The record of something `creator` makes, of type `kind_bits`, now.
pub(crate) fn created_by(creator: Creator, kind_bits: u32) -> PosixAttrs {
    let now = SystemTime::now();
    PosixAttrs {
        mode: Some(PosixAttrs::mode_of(kind_bits, creator.mode)),
        uid: Some(creator.uid),
        gid: Some(creator.gid),
        mtime: Some(now),
        ctime: Some(now),
        atime: None,
    }
}

/// A file mode without the bits a new owner or a write by another user takes
/// from it: set-user-ID, and set-group-ID when group execution is on
/// (without it, the bit marks mandatory locking).
pub(crate) fn without_set_id(mode: u32) -> u32 {
    let group_exec = mode & libc::S_IXGRP != 0;
    mode & !(libc::S_ISUID | if group_exec { libc::S_ISGID } else { 0 })
}

/// Whether a write by another user would change `mode` (see [`without_set_id`]).
pub(crate) fn has_set_id(mode: Option<u32>) -> bool {
    mode.is_some_and(|m| without_set_id(m) != m)
}

impl EngineCore {
    /// After a delete or a rename out of `dir` on a local store, whose client
    /// removes a directory its last object leaves: `dir` is made again with
    /// its record when it carries one.
    pub(crate) async fn keep_emptied_dir(&self, dir: u64) -> FsResult<()> {
        let node = self.node(dir)?;
        // Times alone move with every entry; a mode or an owner is a record
        // someone set.
        let set = node.posix.mode.is_some() || node.posix.uid.is_some() || node.posix.gid.is_some();
        if node.path.is_empty() || !set {
            return Ok(());
        }
        self.uploader()
            .client()
            .keep_dir_posix(&node.path, &node.posix)
            .await?;
        Ok(())
    }

    /// A write asked to clear the file's set-ID bits: done in the record of
    /// the staged file it writes (no store request; the upload carries it).
    pub(crate) fn kill_suidgid(&self, ino: u64) -> FsResult<()> {
        let node = self.node(ino)?;
        if !has_set_id(node.posix.mode) {
            return Ok(());
        }
        let posix = PosixAttrs {
            mode: node.posix.mode.map(without_set_id),
            ctime: Some(SystemTime::now()),
            ..node.posix
        };
        if let Some(id) = node.staged {
            self.record_staged_posix(id, posix)?;
        }
        self.ns().update(ino, |n| n.posix = posix);
        Ok(())
    }

    /// Keeps `posix` in the record of staged file `id`, which its upload
    /// carries; false when the record is gone (uploaded and adopted).
    fn record_staged_posix(&self, id: u64, posix: PosixAttrs) -> FsResult<bool> {
        let kept = self.writes().registry.update(id, false, |r| {
            r.posix = posix;
            true
        })?;
        Ok(kept.is_some())
    }

    /// `node` with its POSIX record, read from the store when the version it
    /// shows has not been read yet: a HEAD on S3, extended attributes on a
    /// local store. Unreachable, the node shows the defaults meanwhile.
    pub(crate) async fn with_posix(&self, node: Node) -> FsResult<Node> {
        if node.posix_known || node.staged.is_some() || !self.options().posix_metadata {
            return Ok(node);
        }
        // A local store keeps the records of files and directories alike.
        if let Some(posix) = self.uploader().client().local_posix(&node.path).await? {
            let shown = (node.size, node.etag.as_deref());
            return Ok(self.ns().set_posix(node.ino, shown, posix).unwrap_or(node));
        }
        if node.kind == FileKind::Directory {
            // A bucket's prefix has no object to carry a record: what this
            // mount was told (a chmod) stays, and nothing is read again.
            return Ok(self
                .ns()
                .update(node.ino, |n| n.posix_known = true)
                .unwrap_or(node));
        }
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store().get_opts(&object_path(&node.path)?, head).await {
            Ok(got) => {
                // Only the record is taken: the version a node shows is named
                // by what its listing gave (see `EngineCore::open`).
                let posix = posix_of(&got.attributes);
                let read = (got.meta.size, got.meta.e_tag.as_deref());
                Ok(self.ns().set_posix(node.ino, read, posix).unwrap_or(node))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.ns().invalidate(node.parent);
                Err(FsError::NotFound)
            }
            Err(e) => {
                tracing::info!(path = %node.path, "store unreachable, showing default modes: {e}");
                Ok(node)
            }
        }
    }

    /// Changes the size (truncate), times, mode or owner. The kernel checks
    /// who may (default_permissions); each change is kept where the file is.
    pub async fn setattr(
        self: &Arc<Self>,
        ino: u64,
        fh: Option<u64>,
        change: AttrChange,
    ) -> FsResult<Node> {
        if let Some(size) = change.size {
            self.truncate(ino, fh, size).await?;
        }
        let node = self.node(ino)?;
        let asked = PosixAttrs {
            mode: change
                .mode
                .map(|m| PosixAttrs::mode_of(type_bits(node.kind), m)),
            uid: change.uid,
            gid: change.gid,
            mtime: change.mtime,
            atime: change.atime,
            ctime: None,
        };
        if asked.is_empty() {
            return Ok(node);
        }
        self.writable()?;
        let node = self.with_posix(node).await?;
        let mut posix = PosixAttrs {
            ctime: Some(change.ctime.unwrap_or_else(SystemTime::now)),
            ..node.posix.changed_by(&asked)
        };
        let chown = change.uid.is_some() || change.gid.is_some();
        if chown && change.mode.is_none() && node.kind == FileKind::File {
            // As Linux does for a regular file: a new owner or group takes
            // the set-ID bits.
            posix.mode = posix.mode.map(without_set_id);
        }
        let etag = self.keep_posix(&node, posix).await?;
        self.ns()
            .update(ino, |n| {
                n.posix = posix;
                if let Some(mtime) = change.mtime {
                    n.mtime = mtime;
                }
                if let Some(etag) = etag {
                    n.etag = Some(etag);
                }
            })
            .ok_or(FsError::NotFound)
    }

    /// truncate(2): through the open handle, or by path (staged, changed, and
    /// sealed on release).
    async fn truncate(self: &Arc<Self>, ino: u64, fh: Option<u64>, size: u64) -> FsResult<()> {
        self.writable()?;
        if self.node(ino)?.kind != FileKind::File {
            return Err(FsError::IsADirectory);
        }
        if let Some(staged) = fh.and_then(|fh| self.writable_handle(fh).ok()) {
            return self.truncate_staged(&staged, size);
        }
        let opened = self.open(ino, true, size == 0).await?;
        let result = self
            .writable_handle(opened.fh)
            .and_then(|staged| self.truncate_staged(&staged, size));
        self.release(opened.fh);
        result
    }

    /// Keeps `posix` as the record of `node`; returns the object's ETag once
    /// it is kept (a copy in place may give it a new one).
    async fn keep_posix(&self, node: &Node, posix: PosixAttrs) -> FsResult<Option<String>> {
        if node.kind == FileKind::Directory {
            // Kept on a local store; in memory otherwise.
            self.uploader()
                .client()
                .keep_dir_posix(&node.path, &posix)
                .await?;
            return Ok(None);
        }
        let mut node = node.clone();
        if let Some(id) = node.staged {
            if self.record_staged_posix(id, posix)? {
                return Ok(None);
            }
            // Uploaded and adopted meanwhile: the object takes the change.
            node = self.node(node.ino)?;
        }
        let etag = self
            .uploader()
            .client()
            .keep_posix(
                &object_path(&node.path)?,
                node.size,
                node.etag.as_deref(),
                &posix,
            )
            .await?;
        Ok(etag)
    }

    /// Makes a symbolic link: an object whose body is the target and whose
    /// mode says S_IFLNK (s3fs's convention), written to the store at once.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        creator: Creator,
    ) -> FsResult<Node> {
        self.writable()?;
        let dir = self.dir_node(parent)?;
        let key = new_key(&dir, name)?;
        if target.is_empty() || target.len() > 4095 {
            return Err(FsError::InvalidArgument(
                "a link target is 1 to 4095 bytes".into(),
            ));
        }
        if self.lookup(parent, name).await.is_ok() {
            return Err(FsError::Exists);
        }
        // A link's own mode is always 0777 (the target's decides access).
        let posix = created_by(
            Creator {
                mode: 0o777,
                ..creator
            },
            S_IFLNK,
        );
        let path = object_path(&key)?;
        let client = self.uploader().client();
        let mut options = PutOptions::default();
        if client.local_root.is_none() {
            add_posix_attributes(&mut options.attributes, &posix);
        }
        let body = PutPayload::from(target.as_bytes().to_vec());
        let put = self
            .store()
            .put_opts(&path, body, options)
            .await
            .map_err(FsError::from_store)?;
        if client.local_root.is_some() {
            client
                .keep_posix(&path, target.len() as u64, put.e_tag.as_deref(), &posix)
                .await?;
        }
        let node =
            self.ns()
                .add_local(parent, name, FileKind::Symlink, None, target.len() as u64)?;
        // In the store already: listed from there from now on.
        self.ns()
            .mark_uploaded(node.ino, target.len() as u64, put.e_tag.clone());
        self.ns()
            .update(node.ino, |n| n.posix = posix)
            .ok_or(FsError::NotFound)
    }

    /// The target of a symbolic link, as stored.
    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.with_posix(self.node(ino)?).await?;
        if node.kind != FileKind::Symlink {
            return Err(FsError::InvalidArgument(format!(
                "/{} is not a symbolic link",
                node.path
            )));
        }
        let got = self
            .store()
            .get(&object_path(&node.path)?)
            .await
            .map_err(FsError::from_store)?;
        let target = got.bytes().await.map_err(FsError::from_store)?;
        Ok(target.to_vec())
    }
}

#[cfg(test)]
mod tests;
