//! Waiting for a version's NVMe writes in flight: a file opened again right after
//! its cold read gets passthrough once the last of them land.

use crate::model::version::FileId;
use std::time::Duration;

use super::TieredReader;
use crate::model::chunk::ChunkLayout;

impl TieredReader {
    /// One NVMe write of a version is over, landed or not: wakes whoever waits
    /// for its writes.
    pub(super) fn nvme_write_done(&self, file: FileId) {
        let mut pending = self.nvme_pending.lock();
        if let Some(n) = pending.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&file);
            }
        }
        drop(pending);
        self.nvme_landed.notify_waiters();
    }

    /// A version's NVMe writes in flight, and whether the file is whole on NVMe
    /// once they land.
    fn nvme_outlook(&self, file: FileId, size: u64) -> (u64, bool) {
        let chunks = ChunkLayout::new(self.chunk_size, size).chunk_count();
        let pending = self.nvme_pending.lock().get(&file).copied().unwrap_or(0);
        let whole = chunks > 0 && self.nvme.verified_count(file) + pending >= chunks;
        (pending, whole)
    }

    /// Whether a version is, or is about to be once the NVMe writes in flight
    /// land, whole on NVMe.
    pub fn nvme_whole_soon(&self, file: FileId, size: u64) -> bool {
        self.nvme_outlook(file, size).1
    }

    /// Waits, up to `limit`, for the NVMe writes of a version still in flight,
    /// when they are all that keeps it from being whole on NVMe: a file opened
    /// again right after a cold read then gets passthrough instead of missing it
    /// by the last few writes. Returns at once when nothing is pending or more
    /// than the pending chunks is missing.
    pub async fn settle_nvme(&self, file: FileId, size: u64, limit: Duration) {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let mut waited_for = 0;
        loop {
            let landed = self.nvme_landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            let (pending, whole) = self.nvme_outlook(file, size);
            let done = pending == 0 || !whole;
            if !done {
                waited_for = waited_for.max(pending);
            }
            if done || tokio::time::timeout_at(deadline, landed).await.is_err() {
                if waited_for > 0 {
                    tracing::debug!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        writes = waited_for,
                        landed = done,
                        "waited for NVMe writes"
                    );
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::reader;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_open_waits_for_the_last_nvme_writes_only_when_they_complete_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let reader = reader(dir.path());
        let file = FileId(7);
        let start = tokio::time::Instant::now();
        let limit = Duration::from_secs(5);
        // Nothing pending: no wait.
        reader.settle_nvme(file, 4096, limit).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // One chunk of one is on its way: wait until it lands.
        *reader.nvme_pending.lock().entry(file).or_default() += 1;
        let landing = reader.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            landing.nvme_write_done(file);
        });
        reader.settle_nvme(file, 4096, limit).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert!(reader.nvme_pending.lock().is_empty());
        // One of three chunks pending, two missing: the file will not be whole.
        *reader.nvme_pending.lock().entry(file).or_default() += 1;
        reader.settle_nvme(file, 3 * 4096, limit).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // A write that never lands is waited for no longer than the limit.
        reader.settle_nvme(file, 4096, limit).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100) + limit);
    }
}
