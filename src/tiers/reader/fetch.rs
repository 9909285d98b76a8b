//! Ranged GETs of whole chunks: the bytes of a chunk from the store, refused
//! when the store sends another version or another length, with its digest taken
//! as the body arrives.

use futures::StreamExt;
use object_store::{GetOptions, GetRange};

use super::{FileVersion, TieredReader};
use crate::error::{FsError, FsResult};
use crate::model::digest::DigestStream;
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl TieredReader {
    /// A chunk from the store, and its digest.
    pub(super) async fn fetch(
        &self,
        file: &FileVersion,
        index: u64,
        len: u64,
    ) -> FsResult<(Bytes, u128)> {
        let start = index * self.chunk_size;
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            if_match: file.etag.clone(),
            ..GetOptions::default()
        };
        let started = std::time::Instant::now();
        let too_long = |sent: String| {
            FsError::Stale(format!(
                "{}: expected {len} bytes of chunk {index}, the store sent {sent}",
                file.path
            ))
        };
        let get = async {
            let _slot = self.fetches.acquire().await;
            let result = self
                .store
                .get_opts(&file.path, options)
                .await
                .map_err(FsError::from_store)?;
            // Some servers ignore If-Match: a body of another version is refused
            // here, never served as this one.
            if let (Some(want), Some(got)) = (&file.etag, &result.meta.e_tag)
                && want != got
            {
                return Err(FsError::from_store(object_store::Error::Precondition {
                    path: file.path.to_string(),
                    source: format!("the object is at ETag {got}, not {want}").into(),
                }));
            }
            // Into a buffer of the chunk's size, faulted in already. The digest is
            // taken piece by piece, while each piece is still in the CPU's cache.
            let mut buffer = self.buffers.take(len as usize)?;
            let mut hasher = DigestStream::default();
            let mut body = result.into_stream();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(FsError::from_store)?;
                if buffer.extend_from_slice(&piece).is_err() {
                    return Err(too_long("more".into()));
                }
                hasher.update(&piece);
            }
            Ok((buffer.freeze(), hasher.finish()))
        };
        let (bytes, chunk_digest) = tokio::time::timeout(self.fetch_timeout, get)
            .await
            .map_err(|_| FsError::Timeout(self.fetch_timeout))??;
        if bytes.len() as u64 != len {
            return Err(too_long(bytes.len().to_string()));
        }
        self.fetch_latency.observe(started.elapsed().as_secs_f64());
        self.stats.store_fetches.fetch_add(1, Ordering::Relaxed);
        self.stats.store_bytes.fetch_add(len, Ordering::Relaxed);
        Ok((bytes, chunk_digest))
    }
}
