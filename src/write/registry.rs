//! The write registry: what the write path must not forget across a crash, in the
//! same RocksDB as the chunk index. A record per staged file (its key, and once
//! sealed, its digests and the state of its upload), and the directories made
//! through the mount.

use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsResult};
use crate::meta::chunk_index::{ChunkIndex, ChunkRecord, VersionInfo};
use crate::meta::db::{Batch, MetaDb, Table};
use crate::model::posix::PosixAttrs;
use crate::write::staging::SealedDigests;

/// A file written through the mount whose bytes are only local.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// The object key it will have, relative to the store's prefix.
    pub key: String,
    /// None while the file is open for writing and not yet sealed.
    pub sealed: Option<SealedUpload>,
    /// Mode, owner and times the object is uploaded with (records written
    /// before they were kept have none: the defaults show).
    #[serde(default)]
    pub posix: PosixAttrs,
}

/// A sealed file and its upload job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedUpload {
    pub size: u64,
    pub chunk_size: u64,
    pub digest: u128,
    pub chunk_digests: Vec<u128>,
    /// Counts seals of this staged file, so that an upload of an older seal is
    /// never taken for the newest one.
    pub generation: u64,
    /// The store's id of a multipart upload in progress.
    pub upload_id: Option<String>,
    /// Content ids of the parts uploaded so far, by part number.
    pub parts: Vec<Option<String>>,
    /// The ETag of the verified object, when it is in the store but the local
    /// copy could not become the cached copy yet (a writer had the file open).
    pub verified_etag: Option<String>,
}

impl SealedUpload {
    /// Whether two seals hashed the same bytes: an upload of one stands for the
    /// other, whatever their generations.
    pub fn same_content(&self, size: u64, digest: u128) -> bool {
        self.size == size && self.digest == digest
    }

    pub fn new(sealed: SealedDigests, chunk_size: u64, generation: u64) -> SealedUpload {
        SealedUpload {
            size: sealed.size,
            chunk_size,
            digest: sealed.digest,
            chunk_digests: sealed.chunks,
            generation,
            upload_id: None,
            parts: Vec::new(),
            verified_etag: None,
        }
    }
}

fn encode(record: &StagedRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

fn decode(id: u64, bytes: &[u8]) -> FsResult<StagedRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| FsError::local(format!("staged file {id}: unreadable record"), e))
}

pub struct WriteRegistry {
    db: Arc<MetaDb>,
    index: Arc<ChunkIndex>,
    /// Serialises read-modify-write of records (uploader progress against
    /// renames and unlinks).
    lock: Mutex<()>,
}

impl WriteRegistry {
    pub fn new(index: Arc<ChunkIndex>) -> WriteRegistry {
        WriteRegistry {
            db: index.meta().clone(),
            index,
            lock: Mutex::new(()),
        }
    }

    /// Changes a record in place; `change` returns false to leave it as it was.
    /// Returns the record as it is afterwards, or None when there is none.
    pub fn update(
        &self,
        id: u64,
        durable: bool,
        change: impl FnOnce(&mut StagedRecord) -> bool,
    ) -> FsResult<Option<StagedRecord>> {
        let _guard = self.lock.lock();
        let Some(mut record) = self.get(id)? else {
            return Ok(None);
        };
        if change(&mut record) {
            self.put(id, &record, durable)?;
        }
        Ok(Some(record))
    }

    /// Runs `f` with record changes held off.
    pub fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = self.lock.lock();
        f()
    }

    fn write(&self, batch: Batch, durable: bool) -> FsResult<()> {
        self.db.write(batch, durable)
    }

    /// Writes a record; `durable` syncs the write-ahead log (fsync semantics).
    pub fn put(&self, id: u64, record: &StagedRecord, durable: bool) -> FsResult<()> {
        self.put_all(&[(id, record.clone())], durable)
    }

    /// Writes several records in one batch: all of them or none survive a crash.
    pub fn put_all(&self, records: &[(u64, StagedRecord)], durable: bool) -> FsResult<()> {
        let mut batch = Batch::default();
        for (id, record) in records {
            batch.put(Table::Staged, id.to_be_bytes(), encode(record));
        }
        self.write(batch, durable)
    }

    pub fn get(&self, id: u64) -> FsResult<Option<StagedRecord>> {
        match self.db.get(Table::Staged, id.to_be_bytes())? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn delete(&self, id: u64) -> FsResult<()> {
        let mut batch = Batch::default();
        batch.delete(Table::Staged, id.to_be_bytes());
        self.write(batch, true)
    }

    pub fn all(&self) -> FsResult<Vec<(u64, StagedRecord)>> {
        let mut out = Vec::new();
        for item in self.db.entries(Table::Staged) {
            let (k, v) = item?;
            let Ok(bytes) = <[u8; 8]>::try_from(&k[..]) else {
                continue;
            };
            let id = u64::from_be_bytes(bytes);
            out.push((id, decode(id, &v)?));
        }
        Ok(out)
    }

    /// The verified upload of a staged file, in one batch: the record goes, the
    /// chunks become the cached copy of the object's new version.
    pub fn commit_upload(
        &self,
        id: u64,
        object: u128,
        file: (FileId, &VersionInfo),
        chunks: &[(ChunkKey, ChunkRecord)],
    ) -> FsResult<()> {
        let mut batch = Batch::default();
        batch.delete(Table::Staged, id.to_be_bytes());
        self.index.put_chunks_in(&mut batch, chunks);
        self.index
            .bind_object_in(&mut batch, object, file.0, file.1);
        self.write(batch, true)
    }

    pub fn put_dir(&self, path: &str) -> FsResult<()> {
        let mut batch = Batch::default();
        batch.put(Table::Dirs, path, b"");
        self.write(batch, true)
    }

    /// Renames directories and re-keys staged files in one batch, so that a
    /// renamed tree is wholly at its old or wholly at its new name after a crash.
    pub fn move_tree(
        &self,
        dirs: &[(String, String)],
        records: &[(u64, StagedRecord)],
    ) -> FsResult<()> {
        let mut batch = Batch::default();
        for (from, to) in dirs {
            batch.delete(Table::Dirs, from);
            batch.put(Table::Dirs, to, b"");
        }
        for (id, record) in records {
            batch.put(Table::Staged, id.to_be_bytes(), encode(record));
        }
        self.write(batch, true)
    }

    pub fn delete_dir(&self, path: &str) -> FsResult<()> {
        let mut batch = Batch::default();
        batch.delete(Table::Dirs, path);
        self.write(batch, true)
    }

    pub fn dirs(&self) -> FsResult<Vec<String>> {
        let mut out = Vec::new();
        for item in self.db.entries(Table::Dirs) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(
            key in "[a-z/._-]{1,40}",
            digest in any::<u128>(),
            chunks in proptest::collection::vec(any::<u128>(), 0..5),
            parts in proptest::collection::vec(proptest::option::of("[A-Za-z0-9\"-]{0,20}"), 0..5),
            upload_id in proptest::option::of("[A-Za-z0-9_.-]{1,60}"),
        ) {
            let record = StagedRecord {
                key,
                sealed: Some(SealedUpload {
                    size: 77,
                    chunk_size: 8,
                    digest,
                    chunk_digests: chunks,
                    generation: 3,
                    upload_id,
                    parts,
                    verified_etag: None,
                }),
                posix: PosixAttrs::default(),
            };
            prop_assert_eq!(decode(1, &encode(&record)).unwrap(), record);
        }
    }

    #[test]
    fn records_and_dirs_persist() {
        let dir = tempfile::tempdir().unwrap();
        let open_record = StagedRecord {
            key: "a/b.bin".into(),
            sealed: None,
            posix: PosixAttrs::default(),
        };
        {
            let reg = WriteRegistry::new(Arc::new(ChunkIndex::open(dir.path()).unwrap()));
            reg.put(5, &open_record, true).unwrap();
            reg.put_dir("a").unwrap();
            reg.put_dir("a/c").unwrap();
            let moved = StagedRecord {
                key: "z/b.bin".into(),
                sealed: None,
                posix: PosixAttrs::default(),
            };
            reg.move_tree(&[("a".into(), "z".into())], &[(5, moved)])
                .unwrap();
        }
        let reg = WriteRegistry::new(Arc::new(ChunkIndex::open(dir.path()).unwrap()));
        assert_eq!(reg.get(5).unwrap().unwrap().key, "z/b.bin");
        assert_eq!(
            reg.dirs().unwrap(),
            vec!["a/c".to_string(), "z".to_string()]
        );
        assert_eq!(reg.all().unwrap().len(), 1);
        reg.delete(5).unwrap();
        reg.delete_dir("z").unwrap();
        assert!(reg.get(5).unwrap().is_none());
        assert_eq!(reg.dirs().unwrap(), vec!["a/c".to_string()]);
        assert!(decode(9, b"{garbage").is_err());
    }
}
