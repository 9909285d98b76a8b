//! Upload jobs of staged files: one task per file runs the uploader with
//! retries and backoff, follows renames and unlinks that happen meanwhile, and
//! makes the verified upload the cached copy of the object's new version. The
//! engine tells it how the namespace names the file ([`UploadedFiles`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use object_store::ObjectStoreExt;
use parking_lot::MutexGuard;

use crate::error::{FsError, FsResult};
use crate::meta::chunk_index::{ChunkIndex, VersionInfo};
use crate::model::chunk::ChunkLayout;
use crate::model::clock::now_secs;
use crate::model::posix::PosixAttrs;
use crate::model::version::FileId;
use crate::namespace::object_path;
use crate::tiers::kept_versions::KeptVersions;
use crate::tiers::reader::TieredReader;
use crate::write::path::{StagedFile, StagedState, WriteSide};
use crate::write::registry::{SealedUpload, StagedRecord};
use crate::write::uploader::{UploadOutcome, Uploaded};

/// The longest wait between two tries of one upload.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What an upload needs of the namespace, which the engine keeps.
pub trait UploadedFiles: Send + Sync {
    /// The inode (0 when none shows it) and the cache's name for the version a
    /// verified upload of staged file `id` makes, as reads will name it.
    fn named_upload(&self, id: u64, staged: Option<&StagedFile>, up: &Uploaded) -> (u64, FileId);

    /// Names an object (not a version of it) in the chunk index.
    fn object_id(&self, key: &str) -> u128;

    /// The namespace shows the object at `ino` now, no longer the staged file.
    fn show_uploaded(&self, ino: u64, size: u64, etag: Option<String>);

    /// A verified object is now at `key` (a pin above it covers it now).
    fn uploaded_at(&self, key: &str);
}

/// The upload tasks of staged files.
pub struct UploadJobs {
    pub writes: Arc<WriteSide>,
    pub kept: Arc<KeptVersions>,
    pub reader: Arc<TieredReader>,
    pub index: Arc<ChunkIndex>,
}

impl UploadJobs {
    /// Starts the upload of a staged file, or asks the running one to go again.
    pub fn queue(self: &Arc<Self>, id: u64, files: Arc<dyn UploadedFiles>) {
        {
            let mut uploads = self.writes.uploads.lock();
            if let Some(again) = uploads.get_mut(&id) {
                *again = true;
                return;
            }
            uploads.insert(id, false);
        }
        let jobs = self.clone();
        tokio::spawn(async move { jobs.upload_task(id, files.as_ref()).await });
    }

    async fn upload_task(self: Arc<Self>, id: u64, files: &dyn UploadedFiles) {
        if let Ok(Some(record)) = self.writes.registry.get(id) {
            self.kept.keep_for_readers(&record.key).await;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = match self.writes.uploader.upload(id).await {
                Ok(UploadOutcome::Uploaded(uploaded)) => {
                    self.finish_upload(id, uploaded, files).await
                }
                Ok(UploadOutcome::NothingToDo | UploadOutcome::Changed) => Ok(()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    let mut uploads = self.writes.uploads.lock();
                    if uploads.get(&id) == Some(&true) {
                        uploads.insert(id, false);
                        continue;
                    }
                    uploads.remove(&id);
                    return;
                }
                Err(e) => {
                    self.writes
                        .uploader
                        .stats
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    // Transient failures are retried soon, growing; a refusal
                    // (credentials, permissions) waits the longest between tries
                    // until someone fixes it. The bytes stay staged either way.
                    if matches!(e, FsError::Denied(_)) {
                        backoff = MAX_BACKOFF;
                        tracing::error!(
                            id,
                            "upload refused by the store, retrying in {backoff:?}: {e}"
                        );
                    } else {
                        tracing::warn!(id, "upload failed, retrying in {backoff:?}: {e}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Follows renames and unlinks that happened during the upload, then makes
    /// the staging file the cached copy of the verified object.
    async fn finish_upload(
        &self,
        id: u64,
        mut up: Uploaded,
        files: &dyn UploadedFiles,
    ) -> FsResult<()> {
        let client = self.writes.uploader.client().clone();
        loop {
            let record = self.writes.registry.get(id)?;
            let Some(StagedRecord {
                key,
                sealed: Some(sealed),
                posix,
            }) = record
            else {
                // Unlinked during the upload: take back what was put.
                let path = object_path(&up.key)?;
                if let Err(e) = client.objects.delete(&path).await
                    && !matches!(e, object_store::Error::NotFound { .. })
                {
                    return Err(FsError::from_store(e));
                }
                return Ok(());
            };
            if !sealed.same_content(up.size, up.digest) {
                if key != up.key {
                    self.remove_superseded(&up).await;
                }
                return Ok(());
            }
            if key != up.key {
                let (from, to) = (object_path(&up.key)?, object_path(&key)?);
                self.kept.keep_for_readers(&key).await;
                client
                    .objects
                    .rename(&from, &to)
                    .await
                    .map_err(FsError::from_store)?;
                client.prune_empty_parents(&up.key);
                let etag = self.writes.uploader.verify(&key, &sealed, None).await?;
                up.key = key;
                up.etag = etag;
                continue;
            }
            if posix_pending(&up, &posix) {
                // Changed (chmod, utimens) while the bytes were on their way.
                let path = object_path(&up.key)?;
                let etag = up.etag.as_deref();
                up.etag = client.keep_posix(&path, up.size, etag, &posix).await?;
                up.posix = Some(posix);
                continue;
            }
            if self.adopt(id, &up, &sealed, files)? {
                files.uploaded_at(&up.key);
                return Ok(());
            }
        }
    }

    /// Makes a verified upload the cached copy of the object's new version,
    /// unless the file is still being written (then only the verified ETag is
    /// recorded). Returns false when the record moved meanwhile and the caller
    /// must look again.
    fn adopt(
        &self,
        id: u64,
        up: &Uploaded,
        sealed: &SealedUpload,
        files: &dyn UploadedFiles,
    ) -> FsResult<bool> {
        let registry = self.writes.registry.clone();
        registry.locked(|| {
            let Some(mut record) = registry.get(id)? else {
                return Ok(false);
            };
            let Some(generation) = record
                .sealed
                .as_ref()
                .filter(|s| record.key == up.key && s.same_content(up.size, up.digest))
                .map(|s| s.generation)
            else {
                return Ok(false);
            };
            if posix_pending(up, &record.posix) {
                // A chmod or utimens came in since: keep it first.
                return Ok(false);
            }
            let staged = self.writes.loaded(id);
            // Held until the copy is adopted, so that no writer slips in.
            let state = staged.as_ref().map(|s| s.state.lock());
            let busy = state
                .as_ref()
                .is_some_and(|st| st.writers > 0 || st.generation != generation);
            if let Some(s) = &staged {
                s.verified.send_replace(generation);
            }
            tracing::debug!(id, busy, generation, "upload verified");
            if busy {
                // Still open for writing: the object stays as it is verified, and
                // the copy becomes clean when the last writer closes unchanged.
                if let Some(s) = record.sealed.as_mut() {
                    s.verified_etag = up.etag.clone();
                }
                registry.put(id, &record, true)?;
                return Ok(true);
            }
            let (ino, file) = files.named_upload(id, staged.as_deref(), up);
            self.adopt_copy(id, up, sealed, (ino, file), state, files)?;
            Ok(true)
        })
    }

    /// The staging file becomes the NVMe copy of `node`'s version (a hard link),
    /// recorded with the registry's change in one write; the version it replaces
    /// is retired, and the namespace shows the object.
    fn adopt_copy(
        &self,
        id: u64,
        up: &Uploaded,
        sealed: &SealedUpload,
        (ino, file): (u64, FileId),
        mut state: Option<MutexGuard<'_, StagedState>>,
        files: &dyn UploadedFiles,
    ) -> FsResult<()> {
        let layout = ChunkLayout::new(sealed.chunk_size, sealed.size);
        let nvme = self.reader.nvme();
        let chunks = nvme.link_copy(
            file,
            &self.writes.staging.path(id),
            layout,
            &sealed.chunk_digests,
        )?;
        let info = VersionInfo {
            created: now_secs(),
            key: up.key.clone(),
            digest: Some(sealed.digest),
        };
        let object = files.object_id(&up.key);
        let previous = self.index.bound_version(object)?;
        self.writes
            .registry
            .commit_upload(id, object, (file, &info), &chunks)?;
        if let Some(previous) = previous.filter(|p| *p != file) {
            self.kept.retire(previous)?;
        }
        if let Some(st) = state.as_mut() {
            st.adopted = true;
        }
        drop(state);
        nvme.adopted(&chunks);
        // Shown as the object before the staging file goes, so that an open
        // in between reads the adopted copy instead of a missing file.
        files.show_uploaded(ino, up.size, up.etag.clone());
        self.writes.files.lock().remove(&id);
        self.writes.staging.remove(id);
        self.writes.add_dirty(-(up.size as i64));
        tracing::info!(key = %up.key, size = up.size, "uploaded and verified");
        Ok(())
    }

    /// A superseded upload finished under a name its file no longer has (it was
    /// renamed and changed meanwhile): the object it left there is removed,
    /// unless a file now claims that name or the object there is another one.
    async fn remove_superseded(&self, up: &Uploaded) {
        let claimed = self
            .writes
            .registry
            .all()
            .map(|all| all.iter().any(|(_, r)| r.key == up.key))
            .unwrap_or(true);
        let Ok(path) = object_path(&up.key) else {
            return;
        };
        if claimed || up.etag.is_none() {
            return;
        }
        let store = &self.writes.uploader.client().objects;
        match store.head(&path).await {
            // A local store removes the directories the delete leaves empty.
            Ok(meta) if meta.e_tag == up.etag => match store.delete(&path).await {
                Ok(()) => {
                    tracing::info!(key = %up.key, "removed the object of a superseded upload");
                }
                Err(e) => tracing::warn!(key = %up.key, "cannot remove a superseded upload: {e}"),
            },
            _ => {}
        }
    }
}
/// Whether the record holds a POSIX change the uploaded object lacks.
fn posix_pending(up: &Uploaded, posix: &PosixAttrs) -> bool {
    match up.posix {
        Some(uploaded) => uploaded != *posix,
        None => !posix.is_empty(),
    }
}
