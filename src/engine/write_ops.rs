//! Writes through the mount: staging a file for a write, writes, truncation,
//! sealing on release and fsync, and waiting for room; see [`crate::write`]
//! for the staged files and their uploads.

use std::sync::Arc;
use std::time::Instant;

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};
use crate::io::blocking::run_blocking;
use crate::io::chunk_file;
use crate::model::options::Durability;
use crate::namespace::Node;
use crate::write::path::StagedFile;
use crate::write::registry::{SealedUpload, StagedRecord};
use crate::write::staging::seal_digests;
use tierfs_fuse::Opened;

/// How many more bytes may be staged.
pub(crate) fn room_left(core: &EngineCore) -> u64 {
    core.options()
        .cache_size
        .saturating_sub(core.writes().dirty_bytes())
}

/// One try at the staged file behind a node.
enum StagingTry {
    Got(Arc<StagedFile>),
    /// The node changed meanwhile: try again with it as it is now.
    Retry(Node),
    /// Opened for reading, and no longer staged: its upload was adopted.
    Unstaged,
}

impl EngineCore {
    /// Opens a file through its staging file, staging it first for a write.
    /// None for a read when the file stopped being staged meanwhile (its upload
    /// was adopted and the staging file removed): the caller opens the object.
    pub(super) async fn open_staged(
        &self,
        node: Node,
        write: bool,
        truncate: bool,
    ) -> FsResult<Option<Opened>> {
        let mut node = node;
        let staged = loop {
            match self.try_staged(&node, write, truncate).await? {
                StagingTry::Unstaged => return Ok(None),
                StagingTry::Retry(now) => node = now,
                StagingTry::Got(staged) => {
                    if !write || self.add_writer(&staged) {
                        break staged;
                    }
                    // Uploaded and adopted just now: stage it again from the store.
                    node = self.node(node.ino)?;
                }
            }
        };
        if truncate && staged.size() > 0 {
            self.truncate_staged(&staged, 0)?;
        }
        self.add_staged_handle(node.ino, staged, write).map(Some)
    }

    /// The staged file behind `node`: the one it has, or a new one.
    async fn try_staged(&self, node: &Node, write: bool, truncate: bool) -> FsResult<StagingTry> {
        match node.staged {
            Some(id) => self.join_staged(node, id, write),
            None => self.stage_node(node, truncate).await,
        }
    }

    /// Staged file `id`, which `node` showed; when it is gone, what the node
    /// shows now.
    fn join_staged(&self, node: &Node, id: u64, write: bool) -> FsResult<StagingTry> {
        match self.staged_file(id, node.ino) {
            Ok(staged) => Ok(StagingTry::Got(staged)),
            Err(e) => {
                let now = self.node(node.ino)?;
                if now.staged == Some(id) {
                    return Err(e);
                }
                if !write && now.staged.is_none() {
                    return Ok(StagingTry::Unstaged);
                }
                Ok(StagingTry::Retry(now))
            }
        }
    }

    /// Stages a node that has no staged file: from its NVMe copy that readers
    /// pass through, else from the store (or empty, when it is truncated).
    async fn stage_node(&self, node: &Node, truncate: bool) -> FsResult<StagingTry> {
        let staged = match self.stage_from_passthrough_copy(node) {
            Ok(Some(staged)) => staged,
            Ok(None) => {
                self.stage_new(node.ino, &node.path, (!truncate).then_some(node))
                    .await?
            }
            Err(e) => {
                // Another writer took the copy over just now: join it.
                let now = self.node(node.ino)?;
                if now.staged.is_none() {
                    return Err(e);
                }
                return Ok(StagingTry::Retry(now));
            }
        };
        self.ns().update(node.ino, |n| n.staged = Some(staged.id));
        Ok(StagingTry::Got(staged))
    }

    pub(crate) fn writable(&self) -> FsResult<()> {
        if self.options().read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The staged file `id` of inode `ino`, opened again after a restart.
    pub(crate) fn staged_file(&self, id: u64, ino: u64) -> FsResult<Arc<StagedFile>> {
        let mut files = self.writes().files.lock();
        if let Some(staged) = files.get(&id) {
            return Ok(staged.clone());
        }
        let file = self.writes().staging.open_file(id)?;
        let size = file.metadata()?.len();
        let staged = Arc::new(StagedFile::new(id, ino, file, size));
        files.insert(id, staged.clone());
        Ok(staged)
    }

    /// A new staging file recorded under `key`, its contents `initial` bytes of
    /// the object's current version when the write does not truncate.
    pub(crate) async fn stage_new(
        &self,
        ino: u64,
        key: &str,
        copy_from: Option<&crate::namespace::Node>,
    ) -> FsResult<Arc<StagedFile>> {
        let (id, file) = self.writes().staging.create()?;
        if let Some(node) = copy_from.filter(|n| n.size > 0) {
            if node.size > room_left(self) {
                self.writes().staging.remove(id);
                return Err(FsError::NoSpace(format!(
                    "no room to stage a copy of {} ({} bytes) for writing",
                    node.path, node.size
                )));
            }
            let version = self.version_of(node)?;
            let step = self.options().chunk_size;
            let mut offset = 0;
            while offset < version.size {
                let data = self.reader().read(&version, offset, step).await?;
                chunk_file::write_all_at(&file, &data, offset)?;
                offset += data.len() as u64;
                if data.is_empty() {
                    break;
                }
            }
        }
        self.register_staged(id, ino, key, file)
    }

    /// Records a new staging file and counts its bytes as not yet in the store.
    pub(crate) fn register_staged(
        &self,
        id: u64,
        ino: u64,
        key: &str,
        file: std::fs::File,
    ) -> FsResult<Arc<StagedFile>> {
        // What the node shows (the creator's, or the object's when an
        // existing file is written) is what the object is uploaded with.
        let posix = self.ns().node(ino).map(|n| n.posix).unwrap_or_default();
        let record = StagedRecord {
            key: key.to_string(),
            sealed: None,
            posix,
        };
        self.writes().registry.put(id, &record, false)?;
        let size = file.metadata()?.len();
        self.writes().add_dirty(size as i64);
        let staged = Arc::new(StagedFile::new(id, ino, file, size));
        // The copy is a change to seal even when nothing else is written.
        staged.state.lock().generation = 1;
        self.writes().files.lock().insert(id, staged.clone());
        Ok(staged)
    }

    /// A staged file found at start: sealed at `generation`, not yet verified.
    pub(crate) fn note_recovered(&self, staged: &StagedFile, generation: u64) {
        let mut state = staged.state.lock();
        state.generation = generation;
        state.sealed = generation;
        self.writes().add_dirty(state.size as i64);
    }

    /// Counts a writer; false when the file was uploaded and adopted meanwhile,
    /// and the writer must stage the file anew.
    pub(crate) fn add_writer(&self, staged: &StagedFile) -> bool {
        let mut state = staged.state.lock();
        if state.adopted {
            return false;
        }
        state.writers += 1;
        true
    }

    /// Writes at `offset`; fails with ENOSPC when the bytes would not fit in the
    /// cache next to the data not yet uploaded (the caller waits and retries).
    pub(crate) fn write_staged(
        &self,
        staged: &StagedFile,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        let end = offset + data.len() as u64;
        let growth = end.saturating_sub(staged.size());
        if growth > 0 && growth > room_left(self) {
            return Err(FsError::NoSpace(format!(
                "the cache holds {} bytes not yet in the store (cache_size {})",
                self.writes().dirty_bytes(),
                self.options().cache_size
            )));
        }
        if growth > 0 {
            self.room_on_nvme(growth);
        }
        chunk_file::write_all_at(&staged.file, data, offset)?;
        let size = {
            let mut state = staged.state.lock();
            state.generation += 1;
            if end > state.size {
                self.writes().add_dirty((end - state.size) as i64);
                state.size = end;
            }
            state.size
        };
        self.show_size(staged.ino, size);
        Ok(data.len() as u32)
    }

    /// A staged file changed: the mount shows its new size, modified now.
    pub(crate) fn show_size(&self, ino: u64, size: u64) {
        self.ns().update(ino, |n| {
            n.size = size;
            n.modified(std::time::SystemTime::now());
        });
    }

    /// Makes disk room for staged bytes growing by `growth`.
    pub(crate) fn room_on_nvme(&self, growth: u64) {
        self.reader()
            .make_disk_room(self.writes().dirty_bytes(), growth);
    }

    /// Waits up to `dirty_wait` for uploads to make room, then writes.
    pub(crate) async fn write_when_room(
        &self,
        staged: &StagedFile,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        let deadline = Instant::now() + self.options().dirty_wait;
        loop {
            let notified = self.writes().room_freed();
            match self.write_staged(staged, offset, data) {
                Err(FsError::NoSpace(why)) => {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            "write refused after waiting {:?} for uploads: {why}",
                            self.options().dirty_wait
                        );
                        return Err(FsError::NoSpace(why));
                    }
                    let _ = tokio::time::timeout_at(deadline.into(), notified).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn truncate_staged(&self, staged: &StagedFile, size: u64) -> FsResult<()> {
        staged.file.set_len(size)?;
        let mut state = staged.state.lock();
        self.writes().add_dirty(size as i64 - state.size as i64);
        state.size = size;
        state.generation += 1;
        drop(state);
        self.show_size(staged.ino, size);
        Ok(())
    }

    /// Hashes the staged file and records it, with its upload job, in one write;
    /// `durable` makes the bytes and the record survive a power cut first.
    pub(crate) async fn seal(
        self: &Arc<Self>,
        staged: &Arc<StagedFile>,
        durable: bool,
    ) -> FsResult<()> {
        let generation = {
            let state = staged.state.lock();
            if state.gone {
                return Ok(());
            }
            state.generation
        };
        let chunk_size = self.options().chunk_size;
        let worker = staged.clone();
        let digests = run_blocking(move || {
            // The bytes go to disk while they are hashed; the record is written
            // once both are done.
            std::thread::scope(|s| {
                let synced = durable.then(|| s.spawn(|| worker.file.sync_data()));
                let digests = seal_digests(&worker.file, chunk_size);
                if let Some(synced) = synced {
                    synced
                        .join()
                        .map_err(|_| std::io::Error::other("sync failed"))??;
                }
                digests
            })
        })
        .await?;
        let mut replaced = None;
        // The record goes with the upload as the mount shows it (written to
        // since it was created, changed by chmod).
        let shown = self.ns().node(staged.ino).map(|n| n.posix);
        let record = self.writes().registry.update(staged.id, durable, |r| {
            if let Some(posix) = shown {
                r.posix = posix;
            }
            // Seals run concurrently (a close, then another writer's close): one
            // that hashed an older generation must not replace a newer seal,
            // whose upload would then never be asked for.
            if r.sealed.as_ref().is_some_and(|s| s.generation > generation) {
                return false;
            }
            let mut new = SealedUpload::new(digests, chunk_size, generation);
            match r.sealed.take() {
                // The same bytes sealed again (a close after fsync): the upload
                // under way, or done, stands for this seal too.
                Some(old) if old.same_content(new.size, new.digest) => {
                    new.upload_id = old.upload_id;
                    new.parts = old.parts;
                    new.verified_etag = old.verified_etag;
                }
                old => replaced = old,
            }
            r.sealed = Some(new);
            true
        })?;
        let Some(record) = record else {
            return Ok(());
        };
        if let Some(old) = replaced.filter(|old| old.upload_id.is_some()) {
            let uploader = self.writes().uploader.clone();
            let key = record.key.clone();
            tokio::spawn(async move { uploader.abort_recorded(&key, &old).await });
        }
        {
            let mut state = staged.state.lock();
            state.sealed = state.sealed.max(generation);
        }
        self.queue_upload(staged.id);
        Ok(())
    }

    /// A handle on a staged file closed.
    pub(crate) fn release_staged(self: &Arc<Self>, staged: &Arc<StagedFile>, writer: bool) {
        let (last, dirty) = {
            let mut state = staged.state.lock();
            if writer {
                state.writers -= 1;
            }
            (
                state.writers == 0 && !state.gone,
                state.generation != state.sealed,
            )
        };
        tracing::debug!(id = staged.id, writer, last, dirty, "staged file released");
        if !last {
            return;
        }
        if dirty {
            let core = self.clone();
            let staged = staged.clone();
            tokio::spawn(async move {
                if let Err(e) = core.seal(&staged, false).await {
                    tracing::error!(id = staged.id, "cannot seal a written file: {e}");
                }
            });
        } else {
            // An upload verified while the file was open can finish now.
            self.queue_upload(staged.id);
        }
    }

    /// fsync: seal what was written; with durability=remote, wait until the
    /// store has it verified.
    pub(crate) async fn fsync_staged(self: &Arc<Self>, staged: &Arc<StagedFile>) -> FsResult<()> {
        let (generation, dirty) = {
            let state = staged.state.lock();
            (state.generation, state.generation != state.sealed)
        };
        if dirty {
            self.seal(staged, true).await?;
        } else {
            let worker = staged.clone();
            run_blocking(move || worker.file.sync_data()).await?;
        }
        if self.options().durability == Durability::Remote {
            let mut verified = staged.verified.subscribe();
            tracing::debug!(id = staged.id, "fsync waits for the verified upload");
            verified
                .wait_for(|v| *v >= generation)
                .await
                .map_err(|_| FsError::Store("the upload was dropped".into()))?;
        }
        Ok(())
    }

    /// Marks a staged file gone (unlinked or replaced) and forgets its record.
    pub(crate) fn drop_staged(&self, id: u64) -> FsResult<()> {
        if let Some(staged) = self.writes().files.lock().remove(&id) {
            staged.state.lock().gone = true;
        }
        let registry = &self.writes().registry;
        let record = registry.locked(|| -> FsResult<_> {
            let record = registry.get(id)?;
            registry.delete(id)?;
            Ok(record)
        })?;
        let size = std::fs::metadata(self.writes().staging.path(id))
            .map(|m| m.len())
            .unwrap_or(0);
        self.writes().staging.remove(id);
        self.writes().add_dirty(-(size as i64));
        if let Some(StagedRecord {
            key,
            sealed: Some(sealed),
            ..
        }) = record
            && sealed.upload_id.is_some()
        {
            let uploader = self.writes().uploader.clone();
            tokio::spawn(async move { uploader.abort_recorded(&key, &sealed).await });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testing::{CHUNK, EngineFixture, ME, errno};
    use crate::namespace::ROOT_INO;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_fsynced_file_is_in_the_store_and_reads_back() {
        let f = EngineFixture::new();
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 251) as u8).collect();
        let node = f.write_file(ROOT_INO, "w.bin", &data).await;
        assert_eq!(f.stored("w.bin").unwrap(), data);
        assert_eq!(node.size, data.len() as u64);
        assert_eq!(f.core.dirty_bytes(), 0);
        let fh = f.open("w.bin").await;
        let got = f.core.read(fh, CHUNK - 2, 4).await.unwrap();
        assert_eq!(&got[..], &data[CHUNK as usize - 2..CHUNK as usize + 2]);
        f.core.release(fh);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_past_the_cache_size_wait_with_enospc() {
        let f = EngineFixture::with(|o| o.cache_size = 4 * CHUNK);
        let (node, staged) = f.core.create(ROOT_INO, "big", ME).await.unwrap();
        f.core
            .write_staged(&staged, 0, &vec![1u8; (3 * CHUNK) as usize])
            .unwrap();
        let more = f
            .core
            .write_staged(&staged, 3 * CHUNK, &vec![1u8; (2 * CHUNK) as usize]);
        assert_eq!(errno(more), libc::ENOSPC);
        // Nothing of the refused write shows.
        assert_eq!(f.core.node(node.ino).unwrap().size, 3 * CHUNK);
        f.core.truncate_staged(&staged, CHUNK).unwrap();
        assert_eq!(f.core.node(node.ino).unwrap().size, CHUNK);
    }
}
