//! Blocking file work (pread, fsync, hashing a file) run off the async runtime's
//! threads, with a task that died reported as a cache error.

use crate::error::{FsError, FsResult};

/// Runs `work` on the blocking pool and returns what it returned.
pub async fn run_blocking<T, E, F>(work: F) -> FsResult<T>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    FsError: From<E>,
{
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FsError::local("a blocking task stopped", e))?;
    Ok(done?)
}
