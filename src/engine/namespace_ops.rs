//! Namespace changes through the mount: create, mkdir, unlink, rmdir, rename,
//! and rebuilding what was written but not uploaded after a restart.

use crate::namespace::is_below;
use crate::namespace::is_within;
use crate::namespace::object_path;
use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tierfs_fuse::{Creator, FileKind};

use crate::engine::EngineCore;
use crate::engine::attributes::{created_by, new_key};
use crate::error::{FsError, FsResult};
use crate::model::posix::{S_IFDIR, S_IFREG};
use crate::namespace::Node;
use crate::write::path::StagedFile;
use crate::write::registry::{SealedUpload, StagedRecord};
use crate::write::staging::seal_digests;

impl EngineCore {
    /// The child `name` of `parent`, if there is one.
    async fn child(&self, parent: u64, name: &str) -> FsResult<Option<Node>> {
        match self.lookup(parent, name).await {
            Ok(node) => Ok(Some(node)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates (or truncates) a file; it is staged until uploaded.
    /// Creates (or truncates) a file; it is staged until uploaded. A new file
    /// is `creator`'s, with its mode; an existing one keeps its own.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        creator: Creator,
    ) -> FsResult<(Node, Arc<StagedFile>)> {
        self.writable()?;
        let dir = self.dir_node(parent)?;
        let key = new_key(&dir, name)?;
        let mut posix = created_by(creator, S_IFREG);
        if let Some(existing) = self.child(parent, name).await? {
            if existing.kind == FileKind::Directory {
                return Err(FsError::IsADirectory);
            }
            if let Some(id) = existing.staged {
                self.drop_staged(id)?;
            }
            posix = existing.posix;
        }
        let node = self.ns().add_local(parent, name, FileKind::File, None, 0)?;
        self.ns().update(node.ino, |n| n.posix = posix);
        let staged = self.stage_new(node.ino, &key, None).await?;
        // A new file cannot have been uploaded yet.
        self.add_writer(&staged);
        let node = self
            .ns()
            .update(node.ino, |n| n.staged = Some(staged.id))
            .ok_or(FsError::NotFound)?;
        Ok((node, staged))
    }

    /// Makes a directory; its mode and owner are kept in this mount's memory.
    pub async fn mkdir(&self, parent: u64, name: &str, creator: Creator) -> FsResult<Node> {
        self.writable()?;
        let dir = self.dir_node(parent)?;
        let key = new_key(&dir, name)?;
        if self.child(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        self.writes().registry.put_dir(&key)?;
        let posix = created_by(creator, S_IFDIR);
        // A local store keeps the directory and its record.
        self.writes()
            .uploader
            .client()
            .keep_dir_posix(&key, &posix)
            .await?;
        let node = self
            .ns()
            .add_local(parent, name, FileKind::Directory, None, 0)?;
        self.ns()
            .update(node.ino, |n| n.posix = posix)
            .ok_or(FsError::NotFound)
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let node = self.child(parent, name).await?.ok_or(FsError::NotFound)?;
        if node.kind == FileKind::Directory {
            return Err(FsError::IsADirectory);
        }
        if let Some(id) = node.staged {
            self.drop_staged(id)?;
        }
        // An older version may be in the store even when the file is staged.
        let path = object_path(&node.path)?;
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(FsError::from_store(e)),
        }
        self.ns().remove_child(parent, name);
        self.keep_emptied_dir(parent).await
    }

    /// Whether a directory has entries, in the store or only here.
    async fn is_empty_dir(&self, dir: &Node) -> FsResult<bool> {
        let fh = self.opendir(dir.ino).await?;
        let entries = self.readdir(fh);
        self.releasedir(fh);
        Ok(entries?.len() <= 2)
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let node = self.child(parent, name).await?.ok_or(FsError::NotFound)?;
        if node.kind != FileKind::Directory {
            return Err(FsError::NotADirectory);
        }
        // A fresh listing: another client may have put objects below.
        self.ns().invalidate(node.ino);
        if !self.is_empty_dir(&node).await? {
            return Err(FsError::NotEmpty);
        }
        self.writes().registry.delete_dir(&node.path)?;
        self.writes().uploader.client().remove_dir(&node.path)?;
        self.ns().remove_child(parent, name);
        Ok(())
    }

    /// Renames a file or a directory. Staged files move by changing their record
    /// (all of a directory's in one batch); objects already in the store are
    /// copied and deleted there before the rename is answered.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.writable()?;
        let node = self.child(parent, name).await?.ok_or(FsError::NotFound)?;
        let target_dir = self.dir_node(new_parent)?;
        let new_path = new_key(&target_dir, new_name)?;
        if new_path == node.path {
            return Ok(());
        }
        if node.kind == FileKind::Directory && is_below(&new_path, &node.path) {
            return Err(FsError::InvalidArgument(
                "cannot move a directory into itself".into(),
            ));
        }
        if let Some(target) = self.child(new_parent, new_name).await? {
            if no_replace {
                return Err(FsError::Exists);
            }
            let is_dir = |kind| kind == FileKind::Directory;
            match (is_dir(node.kind), is_dir(target.kind)) {
                (false, true) => return Err(FsError::IsADirectory),
                (true, false) => return Err(FsError::NotADirectory),
                (true, true) => {
                    self.ns().invalidate(target.ino);
                    if !self.is_empty_dir(&target).await? {
                        return Err(FsError::NotEmpty);
                    }
                    self.writes().registry.delete_dir(&target.path)?;
                }
                (false, false) => {
                    // Readers of the replaced file keep its bytes.
                    self.kept().keep_for_readers(&target.path).await;
                    if let Some(id) = target.staged {
                        self.drop_staged(id)?;
                    }
                }
            }
            self.ns().remove_child(new_parent, new_name);
        }
        let tree = node.kind == FileKind::Directory;
        let client = self.writes().uploader.client();
        if tree {
            // Directories first, each with its record: moving the objects
            // removes the ones they leave empty.
            client.move_dirs(&node.path, &new_path).await?;
        }
        self.move_objects(&node.path, &new_path, tree).await?;
        self.ns().rename(node.ino, new_parent, new_name)?;
        self.keep_emptied_dir(parent).await
    }

    /// Moves everything at `from` (a key, or every key below it for a
    /// directory) to `to`: store objects first, then the records in one batch.
    async fn move_objects(&self, from: &str, to: &str, tree: bool) -> FsResult<()> {
        let registry = &self.writes().registry;
        let staged: Vec<(u64, StagedRecord)> = registry
            .all()?
            .into_iter()
            .filter(|(_, r)| moves(&r.key, from, tree))
            .collect();
        let staged_keys: HashSet<String> = staged.iter().map(|(_, r)| r.key.clone()).collect();
        let moved: Vec<String> = self
            .objects_to_move(from, tree)
            .await?
            .into_iter()
            .filter(|k| !staged_keys.contains(k))
            .collect();
        futures::stream::iter(moved.clone())
            .map(|key| async move {
                let dest = renamed(&key, from, to);
                self.rename_object(&key, &dest).await
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        let client = self.writes().uploader.client();
        for key in &moved {
            client.prune_empty_parents(key);
        }
        let uploaded_meanwhile = self.move_records(&staged, from, to, tree)?;
        // Files whose upload completed while this rename ran are objects now.
        for key in uploaded_meanwhile {
            match self.rename_object(&key, &renamed(&key, from, to)).await {
                Ok(()) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
            client.prune_empty_parents(&key);
        }
        Ok(())
    }

    /// The keys in the store at `from`: the object, or every object below it.
    async fn objects_to_move(&self, from: &str, tree: bool) -> FsResult<Vec<String>> {
        if tree {
            let prefix = object_path(from)?;
            return self
                .store()
                .list(Some(&prefix))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .map_err(FsError::from_store);
        }
        match self.store().head(&object_path(from)?).await {
            Ok(_) => Ok(vec![from.to_string()]),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(FsError::from_store(e)),
        }
    }

    async fn rename_object(&self, key: &str, dest: &str) -> FsResult<()> {
        self.store()
            .rename(&object_path(key)?, &object_path(dest)?)
            .await
            .map_err(FsError::from_store)
    }

    /// Renames the made directories and re-keys the staged records at `from` in
    /// one batch. Returns the keys of staged files whose upload completed (and
    /// whose record went) since `staged` was read.
    fn move_records(
        &self,
        staged: &[(u64, StagedRecord)],
        from: &str,
        to: &str,
        tree: bool,
    ) -> FsResult<Vec<String>> {
        let registry = &self.writes().registry;
        let dirs: Vec<(String, String)> = registry
            .dirs()?
            .into_iter()
            .filter(|d| moves(d, from, tree))
            .map(|d| {
                let dest = renamed(&d, from, to);
                (d, dest)
            })
            .collect();
        registry.locked(|| {
            // Records read again under the lock: the uploader may have moved on.
            let mut rekeyed = Vec::new();
            let mut gone = Vec::new();
            for (id, before) in staged {
                match registry.get(*id)? {
                    Some(mut record) => {
                        record.key = renamed(&record.key, from, to);
                        rekeyed.push((*id, record));
                    }
                    None => gone.push(before.key.clone()),
                }
            }
            registry.move_tree(&dirs, &rekeyed)?;
            Ok(gone)
        })
    }

    /// After a restart: shows staged files and made directories again, seals
    /// files that were open when the daemon stopped, and resumes their uploads.
    pub(crate) fn recover_writes(self: &Arc<Self>) -> FsResult<()> {
        let writes = self.writes();
        for dir in writes.registry.dirs()? {
            self.ns().ensure_local(&dir, FileKind::Directory, None, 0)?;
        }
        let mut live = HashSet::new();
        let mut queue = Vec::new();
        for (id, mut record) in writes.registry.all()? {
            writes.staging.reserve_above(id);
            let file = match writes.staging.open_file(id) {
                Ok(file) => file,
                Err(e) => {
                    tracing::error!(key = %record.key, "staged file lost ({e}); its record is dropped");
                    writes.registry.delete(id)?;
                    continue;
                }
            };
            live.insert(id);
            if record.sealed.is_none() {
                // Open for writing when the daemon stopped: keep what reached the disk.
                let digests = seal_digests(&file, self.options().chunk_size)?;
                record.sealed = Some(SealedUpload::new(digests, self.options().chunk_size, 1));
                writes.registry.put(id, &record, true)?;
            }
            let size = file.metadata()?.len();
            let node = self
                .ns()
                .ensure_local(&record.key, FileKind::File, Some(id), size)?;
            let staged = self.staged_file(id, node.ino)?;
            self.note_recovered(&staged, record.sealed.as_ref().map_or(0, |s| s.generation));
            queue.push(id);
        }
        let removed = writes.staging.sweep(&live)?;
        if removed > 0 {
            tracing::info!(removed, "removed staging files whose uploads had completed");
        }
        if !queue.is_empty() {
            tracing::info!(files = queue.len(), "resuming uploads");
        }
        for id in queue {
            self.queue_upload(id);
        }
        Ok(())
    }
}

/// `key` (at or below `from`) as it is named once `from` is renamed to `to`.
fn renamed(key: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &key[from.len()..])
}

fn moves(key: &str, from: &str, tree: bool) -> bool {
    if tree {
        is_within(key, from)
    } else {
        key == from
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testing::{EngineFixture, ME, errno};
    use crate::namespace::ROOT_INO;
    use tierfs_fuse::FileKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rename_of_a_directory_moves_every_object_below_it() {
        let f = EngineFixture::new();
        f.put("a/x.bin", b"x");
        f.put("a/sub/y.bin", b"y");
        f.node("a").await;
        f.core.mkdir(ROOT_INO, "b", ME).await.unwrap();
        let b = f.node("b").await;
        f.core
            .rename(ROOT_INO, "a", b.ino, "moved", false)
            .await
            .unwrap();
        assert_eq!(f.stored("b/moved/x.bin").unwrap(), b"x");
        assert_eq!(f.stored("b/moved/sub/y.bin").unwrap(), b"y");
        assert!(f.stored("a/x.bin").is_none());
        assert_eq!(errno(f.core.lookup(ROOT_INO, "a").await), libc::ENOENT);
        assert_eq!(f.node("b/moved/sub").await.kind, FileKind::Directory);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removing_answers_as_posix_says() {
        let f = EngineFixture::new();
        f.put("d/x.bin", b"x");
        f.node("d").await;
        assert_eq!(errno(f.core.rmdir(ROOT_INO, "d").await), libc::ENOTEMPTY);
        assert_eq!(errno(f.core.unlink(ROOT_INO, "d").await), libc::EISDIR);
        let d = f.node("d").await;
        assert_eq!(errno(f.core.rmdir(d.ino, "x.bin").await), libc::ENOTDIR);
        assert_eq!(errno(f.core.mkdir(ROOT_INO, "d", ME).await), libc::EEXIST);
        f.core.unlink(d.ino, "x.bin").await.unwrap();
        assert!(f.stored("d/x.bin").is_none());
        f.core.rmdir(ROOT_INO, "d").await.unwrap();
        assert_eq!(errno(f.core.lookup(ROOT_INO, "d").await), libc::ENOENT);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_mount_changes_nothing() {
        let f = EngineFixture::with(|o| o.read_only = true);
        f.put("d/x.bin", b"x");
        let d = f.node("d").await;
        assert_eq!(errno(f.core.create(d.ino, "new", ME).await), libc::EROFS);
        assert_eq!(errno(f.core.mkdir(d.ino, "new", ME).await), libc::EROFS);
        assert_eq!(errno(f.core.unlink(d.ino, "x.bin").await), libc::EROFS);
        assert_eq!(
            errno(f.core.rename(d.ino, "x.bin", d.ino, "y", false).await),
            libc::EROFS
        );
        assert_eq!(f.stored("d/x.bin").unwrap(), b"x");
    }
}
