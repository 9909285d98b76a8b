//! Readers that opened a file before it was overwritten through the mount keep
//! reading the bytes they opened. Before an upload replaces the object, the
//! versions that open handles read are fetched whole onto NVMe and held there;
//! a version that is no longer current is dropped when its last handle closes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::FsResult;
use crate::model::version::{FileId, FileVersion, OpenVersions};
use crate::tiers::reader::TieredReader;

pub struct KeptVersions {
    reader: Arc<TieredReader>,
    open: Arc<dyn OpenVersions>,
    /// Versions held on NVMe for their readers.
    held: Mutex<HashMap<FileId, Arc<FileVersion>>>,
    /// Versions no longer current, dropped once no handle reads them.
    retired: Mutex<HashSet<FileId>>,
}

impl KeptVersions {
    pub fn new(reader: Arc<TieredReader>, open: Arc<dyn OpenVersions>) -> KeptVersions {
        KeptVersions {
            reader,
            open,
            held: Mutex::default(),
            retired: Mutex::default(),
        }
    }

    /// Before an upload replaces the object at `key`: the versions of it that
    /// open handles read are fetched whole and held until their last handle
    /// closes. Best effort: a chunk that cannot be fetched is logged, and a
    /// reader that needs it later gets EIO rather than new bytes.
    pub async fn keep_for_readers(&self, key: &str) {
        let versions: Vec<Arc<FileVersion>> = self
            .open
            .open_versions_of(key)
            .into_iter()
            .filter(|v| {
                let newly = self.held.lock().insert(v.id, v.clone()).is_none();
                if newly {
                    self.reader.nvme().hold(v.id);
                }
                newly
            })
            .collect();
        for version in versions {
            match self.reader.load_whole(&version).await {
                Ok(()) => {
                    tracing::debug!(path = %version.path, "kept the version open readers read")
                }
                Err(e) => {
                    tracing::warn!(path = %version.path, "cannot keep the version open readers read: {e}")
                }
            }
        }
    }

    /// Version `id` is no longer current: its chunks go now, or when the last
    /// handle reading it closes.
    pub fn retire(&self, id: FileId) -> FsResult<()> {
        if self.open.is_open(id) {
            self.retired.lock().insert(id);
            return Ok(());
        }
        self.drop_version(id)
    }

    /// A handle reading version `id` closed; once it was the last one, the
    /// version's hold ends and a retired version goes.
    pub fn closed(&self, id: FileId) {
        if self.open.is_open(id) {
            return;
        }
        if self.held.lock().remove(&id).is_some() {
            self.reader.nvme().unhold(id);
        }
        if self.retired.lock().remove(&id)
            && let Err(e) = self.drop_version(id)
        {
            tracing::warn!("dropping an old version failed: {e}");
        }
    }

    fn drop_version(&self, id: FileId) -> FsResult<()> {
        self.reader.forget_ram(id);
        self.reader.nvme().drop_file(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::testing::{Fixture, OpenSet, fetch_to_nvme};

    #[tokio::test]
    async fn a_version_open_readers_read_is_kept_whole_until_its_last_reader_closes() {
        let f = Fixture::new();
        let old = f.object("model.bin", 2 * 4096 + 10).await;
        let open = Arc::new(OpenSet::default());
        open.0.lock().push(old.clone());
        let kept = KeptVersions::new(f.reader.clone(), open.clone());

        // Before an upload replaces the object: the open version is fetched whole.
        kept.keep_for_readers("model.bin").await;
        // Its chunks reach NVMe behind the load.
        let settle = std::time::Duration::from_secs(10);
        f.reader.settle_nvme(old.id, old.size, settle).await;
        assert_eq!(f.reader.nvme().bytes_of(old.id), old.size);
        // Retired while open: it stays for its reader.
        kept.retire(old.id).unwrap();
        kept.closed(old.id);
        assert_eq!(f.reader.nvme().bytes_of(old.id), old.size, "still open");
        // The last reader closes: it goes.
        open.0.lock().clear();
        kept.closed(old.id);
        assert_eq!(f.reader.nvme().bytes_of(old.id), 0);
    }

    #[tokio::test]
    async fn a_version_no_one_reads_goes_when_it_is_retired() {
        let f = Fixture::new();
        let old = f.object("w.bin", 4096).await;
        fetch_to_nvme(&f.reader, &old).await;
        let kept = KeptVersions::new(f.reader.clone(), Arc::new(OpenSet::default()));
        kept.retire(old.id).unwrap();
        assert_eq!(f.reader.nvme().bytes_of(old.id), 0);
    }
}
