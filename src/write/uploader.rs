//! The uploader: sends sealed staged files to the store and verifies them.
//!
//! A file of one part goes up in one PUT; a bigger one as a multipart upload with
//! one part per chunk (several chunks per part when chunks are smaller than the
//! store's 5 MiB minimum). The upload id and each finished part are recorded in
//! the write registry as they happen, so that after a restart the upload resumes
//! where it stopped, or is aborted when its file changed. Every part is read back
//! from the staging file and checked against the digest taken at sealing, so a file
//! changed after sealing is never uploaded under the old digest.

use crate::namespace::object_path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload};
use tokio::sync::Semaphore;

use crate::error::{FsError, FsResult};
use crate::io::blocking::run_blocking;
use crate::io::rate_limit::{RateLimiter, pace};
use crate::model::chunk::ChunkLayout;
use crate::model::posix::PosixAttrs;
use crate::store::StoreClient;
use crate::store::digest_metadata::{digest_attributes, digest_text};
use crate::store::posix_metadata::{add_posix_attributes, write_local_posix};
use crate::write::registry::{SealedUpload, StagedRecord, WriteRegistry};
use crate::write::staging::{StagingArea, read_at};

/// S3's smallest part but the last.
pub const MIN_PART: u64 = 5 << 20;

/// A verified object in the store, made from one seal of a staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub key: String,
    pub generation: u64,
    pub size: u64,
    /// The whole-file digest of the bytes uploaded.
    pub digest: u128,
    pub etag: Option<String>,
    /// The POSIX record the object carries; None when not known here (an
    /// upload verified by an earlier seal).
    pub posix: Option<PosixAttrs>,
}

impl Uploaded {
    fn of(
        key: String,
        sealed: &SealedUpload,
        etag: Option<String>,
        posix: Option<PosixAttrs>,
    ) -> Uploaded {
        Uploaded {
            key,
            generation: sealed.generation,
            size: sealed.size,
            digest: sealed.digest,
            etag,
            posix,
        }
    }
}

/// Counters shown by the status of the mount.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub in_flight: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub completed: AtomicU64,
    pub bytes_uploaded: AtomicU64,
}

pub struct Uploader {
    client: StoreClient,
    registry: Arc<WriteRegistry>,
    staging: Arc<StagingArea>,
    parts: Semaphore,
    concurrency: usize,
    bandwidth: Option<RateLimiter>,
    pub stats: UploadStats,
}

/// How an upload ended, when nothing failed.
pub enum UploadOutcome {
    /// The object is in the store and verified.
    Uploaded(Uploaded),
    /// The record is gone (unlinked) or not sealed: nothing to upload.
    NothingToDo,
    /// The file changed after it was sealed; a newer seal will upload it.
    Changed,
}

/// A multipart upload of one seal of a staged file, as its steps see it.
#[derive(Clone, Copy)]
struct MultipartUpload<'a> {
    id: u64,
    path: &'a Path,
    sealed: &'a SealedUpload,
    posix: &'a PosixAttrs,
    multipart: &'a Arc<dyn MultipartStore>,
    part_count: usize,
}

/// The metadata an uploaded object carries: its digest, and its mode, owner
/// and times in s3fs's headers.
fn object_attributes(sealed: &SealedUpload, posix: &PosixAttrs) -> object_store::Attributes {
    let mut attributes = digest_attributes(sealed.digest);
    add_posix_attributes(&mut attributes, posix);
    attributes
}

/// How sending the bytes ended, when nothing failed.
enum Sent {
    /// The store has the object, with this ETag when it gives one.
    Stored(Option<String>),
    /// The file changed while it was sent: the upload was given up.
    Changed,
}

impl Uploader {
    pub fn new(
        client: StoreClient,
        registry: Arc<WriteRegistry>,
        staging: Arc<StagingArea>,
        concurrency: u32,
        bandwidth: u64,
    ) -> Uploader {
        Uploader {
            client,
            registry,
            staging,
            parts: Semaphore::new(concurrency as usize),
            concurrency: concurrency as usize,
            bandwidth: RateLimiter::new(bandwidth),
            stats: UploadStats::default(),
        }
    }

    pub fn client(&self) -> &StoreClient {
        &self.client
    }

    /// Uploads and verifies the sealed state of staged file `id`.
    pub async fn upload(&self, id: u64) -> FsResult<UploadOutcome> {
        let Some(StagedRecord {
            key,
            sealed: Some(sealed),
            posix,
        }) = self.registry.get(id)?
        else {
            return Ok(UploadOutcome::NothingToDo);
        };
        if let Some(etag) = &sealed.verified_etag {
            let etag = Some(etag.clone());
            return Ok(UploadOutcome::Uploaded(Uploaded::of(
                key, &sealed, etag, None,
            )));
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.send(id, &key, &sealed, &posix).await;
        let sent = started.elapsed();
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let etag = match result? {
            Sent::Stored(etag) => etag,
            Sent::Changed => return Ok(UploadOutcome::Changed),
        };
        let etag = self.verify(&key, &sealed, etag.as_deref()).await?;
        tracing::debug!(key, ?sent, verified = ?started.elapsed() - sent, "upload timing");
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        Ok(UploadOutcome::Uploaded(Uploaded::of(
            key,
            &sealed,
            etag,
            Some(posix),
        )))
    }

    fn chunks_per_part(sealed: &SealedUpload) -> u64 {
        MIN_PART.div_ceil(sealed.chunk_size).max(1)
    }

    /// The bytes of part `part`, checked against the digests taken at sealing;
    /// None when the staged file no longer holds them.
    async fn read_part(
        &self,
        id: u64,
        sealed: &SealedUpload,
        part: u64,
    ) -> FsResult<Option<Bytes>> {
        let per_part = Self::chunks_per_part(sealed);
        let layout = ChunkLayout::new(sealed.chunk_size, sealed.size);
        let first = part * per_part;
        let last = (first + per_part).min(layout.chunk_count());
        let file = self.staging.open_file(id)?;
        let chunk_size = sealed.chunk_size;
        let digests = sealed.chunk_digests[first as usize..last as usize].to_vec();
        let size = sealed.size;
        let data = run_blocking(move || -> FsResult<Option<Vec<u8>>> {
            let start = first * chunk_size;
            let end = (last * chunk_size).min(size);
            let data = read_at(&file, start, end - start)?;
            if data.len() as u64 != end - start {
                return Ok(None);
            }
            for (i, want) in digests.iter().enumerate() {
                let from = i * chunk_size as usize;
                let to = (from + chunk_size as usize).min(data.len());
                if xxhash_rust::xxh3::xxh3_128(&data[from..to]) != *want {
                    return Ok(None);
                }
            }
            Ok(Some(data))
        })
        .await?;
        Ok(data.map(Bytes::from))
    }

    async fn pace(&self, bytes: u64) {
        pace(&self.bandwidth, bytes).await;
        self.stats
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn part_count(sealed: &SealedUpload) -> u64 {
        let chunks = ChunkLayout::new(sealed.chunk_size, sealed.size).chunk_count();
        chunks.div_ceil(Self::chunks_per_part(sealed))
    }

    /// Puts the object; returns the ETag the store answered with.
    async fn send(
        &self,
        id: u64,
        key: &str,
        sealed: &SealedUpload,
        posix: &PosixAttrs,
    ) -> FsResult<Sent> {
        let path = object_path(key)?;
        let parts = Self::part_count(sealed);
        match (&self.client.multipart, parts) {
            (Some(multipart), 2..) => {
                self.send_multipart(id, &path, (sealed, posix), multipart)
                    .await
            }
            (Some(_), _) => {
                let payload = if parts == 0 {
                    Bytes::new()
                } else {
                    match self.read_part(id, sealed, 0).await? {
                        Some(data) => data,
                        None => return Ok(Sent::Changed),
                    }
                };
                let _permit = self.parts.acquire().await;
                self.pace(payload.len() as u64).await;
                let options = PutOptions {
                    attributes: object_attributes(sealed, posix),
                    ..PutOptions::default()
                };
                let result = self
                    .client
                    .objects
                    .put_opts(&path, PutPayload::from(payload), options)
                    .await
                    .map_err(FsError::from_store)?;
                Ok(Sent::Stored(result.e_tag))
            }
            (None, _) => self.send_local(id, &path, sealed, posix).await,
        }
    }

    /// A local directory store: the store client writes a hidden `key#N` file and
    /// renames it into place on completion; one left by a crash is removed first.
    async fn send_local(
        &self,
        id: u64,
        path: &Path,
        sealed: &SealedUpload,
        posix: &PosixAttrs,
    ) -> FsResult<Sent> {
        if let Some(root) = &self.client.local_root {
            remove_unfinished_local_uploads(root, path.as_ref());
        }
        let mut upload = self
            .client
            .objects
            .put_multipart(path)
            .await
            .map_err(FsError::from_store)?;
        for part in 0..Self::part_count(sealed) {
            let Some(data) = self.read_part(id, sealed, part).await? else {
                let _ = upload.abort().await;
                return Ok(Sent::Changed);
            };
            self.pace(data.len() as u64).await;
            if let Err(e) = upload.put_part(PutPayload::from(data)).await {
                let _ = upload.abort().await;
                return Err(FsError::from_store(e));
            }
        }
        let result = upload.complete().await.map_err(FsError::from_store)?;
        if let Some(root) = &self.client.local_root
            && !posix.is_empty()
        {
            let (file, posix) = (root.join(path.as_ref()), *posix);
            run_blocking(move || write_local_posix(&file, &posix)).await?;
        }
        Ok(Sent::Stored(result.e_tag))
    }

    async fn send_multipart(
        &self,
        id: u64,
        path: &Path,
        (sealed, posix): (&SealedUpload, &PosixAttrs),
        multipart: &Arc<dyn MultipartStore>,
    ) -> FsResult<Sent> {
        let upload = MultipartUpload {
            id,
            path,
            sealed,
            posix,
            multipart,
            part_count: Self::part_count(sealed) as usize,
        };
        let upload_id = match &sealed.upload_id {
            Some(upload_id) => upload_id.clone(),
            None => match self.start_multipart(&upload).await? {
                Some(upload_id) => upload_id,
                None => return Ok(Sent::Changed),
            },
        };
        let mut parts: Vec<Option<String>> = (0..upload.part_count)
            .map(|i| sealed.parts.get(i).cloned().flatten())
            .collect();
        let missing: Vec<usize> = (0..upload.part_count)
            .filter(|i| parts[*i].is_none())
            .collect();
        let uploaded = futures::stream::iter(missing)
            .map(|part| self.send_part(&upload, &upload_id, part))
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        if uploaded.iter().any(Option::is_none) {
            self.abandon(id, path, &upload_id, multipart).await;
            return Ok(Sent::Changed);
        }
        for (part, content_id) in uploaded.into_iter().flatten() {
            parts[part] = Some(content_id);
        }
        self.complete_multipart(&upload, &upload_id, parts).await
    }

    /// Creates the multipart upload and records its id with the seal it sends;
    /// None (and the upload aborted) when the file changed meanwhile.
    async fn start_multipart(&self, upload: &MultipartUpload<'_>) -> FsResult<Option<String>> {
        let MultipartUpload {
            id,
            path,
            sealed,
            posix,
            multipart,
            part_count,
        } = *upload;
        let options = PutMultipartOptions {
            attributes: object_attributes(sealed, posix),
            ..PutMultipartOptions::default()
        };
        let upload_id = multipart
            .create_multipart_opts(path, options)
            .await
            .map_err(FsError::from_store)?;
        let recorded = self
            .registry
            .update(id, true, |r| match r.sealed.as_mut() {
                Some(s) if s.same_content(sealed.size, sealed.digest) => {
                    s.upload_id = Some(upload_id.clone());
                    s.parts = vec![None; part_count];
                    true
                }
                _ => false,
            })?;
        let ours = recorded
            .as_ref()
            .and_then(|r| r.sealed.as_ref())
            .is_some_and(|s| {
                s.same_content(sealed.size, sealed.digest)
                    && s.upload_id.as_ref() == Some(&upload_id)
            });
        if !ours {
            let _ = multipart.abort_multipart(path, &upload_id).await;
            return Ok(None);
        }
        Ok(Some(upload_id))
    }

    /// Sends one part and records it as finished; None when the staged file no
    /// longer holds the sealed bytes.
    async fn send_part(
        &self,
        upload: &MultipartUpload<'_>,
        upload_id: &String,
        part: usize,
    ) -> FsResult<Option<(usize, String)>> {
        let Some(data) = self
            .read_part(upload.id, upload.sealed, part as u64)
            .await?
        else {
            return Ok(None);
        };
        let _permit = self.parts.acquire().await;
        self.pace(data.len() as u64).await;
        let part_id = upload
            .multipart
            .put_part(upload.path, upload_id, part, PutPayload::from(data))
            .await
            .map_err(FsError::from_store)?;
        self.registry
            .update(upload.id, false, |r| match r.sealed.as_mut() {
                Some(s) if s.upload_id.as_ref() == Some(upload_id) => {
                    s.parts.resize(upload.part_count, None);
                    s.parts[part] = Some(part_id.content_id.clone());
                    true
                }
                _ => false,
            })?;
        Ok(Some((part, part_id.content_id)))
    }

    /// Completes the upload from its parts; a store that lost the upload has it
    /// started over.
    async fn complete_multipart(
        &self,
        upload: &MultipartUpload<'_>,
        upload_id: &String,
        parts: Vec<Option<String>>,
    ) -> FsResult<Sent> {
        let parts: Vec<PartId> = parts
            .into_iter()
            .map(|content_id| PartId {
                content_id: content_id.unwrap_or_default(),
            })
            .collect();
        let (path, multipart) = (upload.path, upload.multipart);
        let completing = Instant::now();
        let completed = multipart.complete_multipart(path, upload_id, parts).await;
        tracing::debug!(key = %path, completion = ?completing.elapsed(), "multipart upload completed");
        match completed {
            Ok(result) => Ok(Sent::Stored(result.e_tag)),
            Err(e) => {
                // A store that lost the upload (expired, or aborted by hand)
                // answers the same way every time: start over.
                if matches!(e, object_store::Error::NotFound { .. }) {
                    self.abandon(upload.id, path, upload_id, multipart).await;
                }
                Err(FsError::from_store(e))
            }
        }
    }

    /// Aborts a multipart upload and forgets it in the record.
    async fn abandon(
        &self,
        id: u64,
        path: &Path,
        upload_id: &String,
        multipart: &Arc<dyn MultipartStore>,
    ) {
        if let Err(e) = multipart.abort_multipart(path, upload_id).await {
            tracing::warn!(key = %path, "cannot abort multipart upload: {e}");
        }
        let _ = self.registry.update(id, true, |r| match r.sealed.as_mut() {
            Some(s) if s.upload_id.as_ref() == Some(upload_id) => {
                s.upload_id = None;
                s.parts.clear();
                true
            }
            _ => false,
        });
    }

    /// Aborts the multipart upload a record names, for a staged file that is gone.
    pub async fn abort_recorded(&self, key: &str, sealed: &SealedUpload) {
        if let (Some(multipart), Some(upload_id)) = (&self.client.multipart, &sealed.upload_id)
            && let Ok(path) = Path::parse(key)
            && let Err(e) = multipart.abort_multipart(&path, upload_id).await
        {
            tracing::warn!(key, "cannot abort multipart upload: {e}");
        }
    }

    /// Checks that the store holds the sealed bytes at `key`: the size, the
    /// digest (object metadata, or the bytes themselves in a local directory) and
    /// the ETag the upload was answered with. Returns the object's ETag.
    pub async fn verify(
        &self,
        key: &str,
        sealed: &SealedUpload,
        put_etag: Option<&str>,
    ) -> FsResult<Option<String>> {
        let path = object_path(key)?;
        let head = self
            .client
            .objects
            .get_opts(
                &path,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(FsError::from_store)?;
        let failed = |why: String| Err(FsError::Store(format!("verifying {key}: {why}")));
        if head.meta.size != sealed.size {
            return failed(format!(
                "the store has {} bytes, {} were written",
                head.meta.size, sealed.size
            ));
        }
        if let (Some(want), Some(have)) = (put_etag, head.meta.e_tag.as_deref())
            && want != have
        {
            return failed(format!(
                "ETag {have} is not the uploaded {want}: the object was replaced meanwhile"
            ));
        }
        let want = format!("{:032x}", sealed.digest);
        let digest = match &self.client.local_root {
            Some(root) => {
                let file = root.join(path.as_ref());
                run_blocking(move || file_digest(&file)).await?
            }
            None => digest_text(&head.attributes).unwrap_or_default(),
        };
        if digest != want {
            return failed(format!("digest {digest:?} is not the written {want}"));
        }
        Ok(head.meta.e_tag)
    }
}

/// The whole-file digest of a local file, as hex.
fn file_digest(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// Removes `key#N` files that a local-directory upload left when it was killed.
fn remove_unfinished_local_uploads(root: &std::path::Path, key: &str) {
    let target = root.join(key);
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let prefix = format!("{}#", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(suffix) = entry_name.strip_prefix(&prefix)
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
