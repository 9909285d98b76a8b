//! The chunk index: which chunks of which object versions are on the NVMe tier, with
//! their xxh3-128 digests, kept in RocksDB under `cache_dir` so that the cache
//! survives unmount and restart.

use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use std::path::Path;

use std::sync::Arc;

use crate::meta::db::{Batch, MetaDb, Table};

use crate::error::FsResult;

/// What the index knows about a chunk on NVMe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub digest: u128,
    pub len: u32,
    /// Seconds since the epoch of the last write or recorded access.
    pub last_access: u64,
}

const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 1 + 16 + 4 + 8;

pub fn encode_key(key: &ChunkKey) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(&key.file.0.to_be_bytes());
    out[16..].copy_from_slice(&key.index.to_be_bytes());
    out
}

pub fn decode_key(bytes: &[u8]) -> Option<ChunkKey> {
    let bytes: &[u8; 24] = bytes.try_into().ok()?;
    Some(ChunkKey {
        file: FileId(u128::from_be_bytes(bytes[..16].try_into().ok()?)),
        index: u64::from_be_bytes(bytes[16..].try_into().ok()?),
    })
}

pub fn encode_record(r: &ChunkRecord) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[0] = RECORD_VERSION;
    out[1..17].copy_from_slice(&r.digest.to_be_bytes());
    out[17..21].copy_from_slice(&r.len.to_be_bytes());
    out[21..].copy_from_slice(&r.last_access.to_be_bytes());
    out
}

/// Decodes a record; anything of another version or length is treated as absent,
/// so a damaged index entry costs one refetch, never wrong bytes.
pub fn decode_record(bytes: &[u8]) -> Option<ChunkRecord> {
    if bytes.len() != RECORD_LEN || bytes[0] != RECORD_VERSION {
        return None;
    }
    Some(ChunkRecord {
        digest: u128::from_be_bytes(bytes[1..17].try_into().ok()?),
        len: u32::from_be_bytes(bytes[17..21].try_into().ok()?),
        last_access: u64::from_be_bytes(bytes[21..].try_into().ok()?),
    })
}

/// The chunk records of the NVMe tier, and which version each object is at,
/// in the tables `chunks`, `objects` and `versions` of the [`MetaDb`].
pub struct ChunkIndex {
    db: Arc<MetaDb>,
}

impl ChunkIndex {
    pub fn new(db: Arc<MetaDb>) -> ChunkIndex {
        ChunkIndex { db }
    }

    /// A chunk index in a database of its own at `path` (tools and tests).
    pub fn open(path: &Path) -> FsResult<ChunkIndex> {
        Ok(ChunkIndex::new(Arc::new(MetaDb::open(path)?)))
    }

    /// The database the index keeps its tables in, for the other owners of tables.
    pub fn meta(&self) -> &Arc<MetaDb> {
        &self.db
    }

    /// Adds the records of chunks now on disk to a batch.
    pub(crate) fn put_chunks_in(&self, batch: &mut Batch, chunks: &[(ChunkKey, ChunkRecord)]) {
        for (key, record) in chunks {
            batch.put(Table::Chunks, encode_key(key), encode_record(record));
        }
    }

    /// Adds the binding of an object to its current version to a batch.
    pub(crate) fn bind_object_in(
        &self,
        batch: &mut Batch,
        object: u128,
        file: FileId,
        info: &VersionInfo,
    ) {
        batch.put(Table::Objects, object.to_be_bytes(), file.0.to_be_bytes());
        batch.put(Table::Versions, file.0.to_be_bytes(), info.encode());
    }

    pub fn version_info(&self, file: FileId) -> FsResult<Option<VersionInfo>> {
        let value = self.db.get(Table::Versions, file.0.to_be_bytes())?;
        Ok(value.and_then(|v| VersionInfo::decode(&v)))
    }

    pub fn forget_version(&self, file: FileId) -> FsResult<()> {
        self.db.delete(Table::Versions, file.0.to_be_bytes())
    }

    pub fn get(&self, key: &ChunkKey) -> FsResult<Option<ChunkRecord>> {
        let value = self.db.get(Table::Chunks, encode_key(key))?;
        Ok(value.and_then(|v| decode_record(&v)))
    }

    pub fn put(&self, key: &ChunkKey, record: &ChunkRecord) -> FsResult<()> {
        self.db
            .put(Table::Chunks, encode_key(key), encode_record(record))
    }

    pub fn delete(&self, key: &ChunkKey) -> FsResult<()> {
        self.db.delete(Table::Chunks, encode_key(key))
    }

    /// Every chunk record of one file version.
    pub fn chunks_of(&self, file: FileId) -> FsResult<Vec<(ChunkKey, ChunkRecord)>> {
        let start = encode_key(&ChunkKey { file, index: 0 });
        let iter = self.db.entries_from(Table::Chunks, &start);
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            match decode_key(&k) {
                Some(key) if key.file == file => {
                    if let Some(record) = decode_record(&v) {
                        out.push((key, record));
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every chunk record, for rebuilding the eviction order at start.
    pub fn all_chunks(&self) -> FsResult<Vec<(ChunkKey, ChunkRecord)>> {
        let mut out = Vec::new();
        for item in self.db.entries(Table::Chunks) {
            let (k, v) = item?;
            if let (Some(key), Some(record)) = (decode_key(&k), decode_record(&v)) {
                out.push((key, record));
            }
        }
        Ok(out)
    }

    /// The version the object named `object` is bound to.
    pub fn bound_version(&self, object: u128) -> FsResult<Option<FileId>> {
        Ok(self
            .db
            .get(Table::Objects, object.to_be_bytes())?
            .and_then(|v| <[u8; 16]>::try_from(&v[..]).ok())
            .map(|b| FileId(u128::from_be_bytes(b))))
    }

    /// Records that the object named `object` is now at version `file`, and returns
    /// the version it was at before when that differs.
    pub fn bind_object(
        &self,
        object: u128,
        file: FileId,
        info: &VersionInfo,
    ) -> FsResult<Option<FileId>> {
        let old = self.bound_version(object)?;
        if old == Some(file) && self.version_info(file)?.is_some() {
            return Ok(None);
        }
        let mut batch = Batch::default();
        self.bind_object_in(&mut batch, object, file, info);
        self.db.write(batch, false)?;
        Ok(old.filter(|old| *old != file))
    }
}

/// A cached version's birth (seconds since the epoch: the object's modification
/// time, or when it was uploaded through the mount) and its key, for demotion by
/// age and for naming it in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub created: u64,
    pub key: String,
    /// The whole-file digest, known for versions written through the mount.
    pub digest: Option<u128>,
}

impl VersionInfo {
    /// `created`, a digest flag and the digest when known, then the key.
    fn encode(&self) -> Vec<u8> {
        let mut out = self.created.to_be_bytes().to_vec();
        match self.digest {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(&d.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.key.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<VersionInfo> {
        let created = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let (digest, rest) = match bytes.get(8)? {
            0 => (None, &bytes[9..]),
            1 => (
                Some(u128::from_be_bytes(bytes.get(9..25)?.try_into().ok()?)),
                &bytes[25..],
            ),
            _ => return None,
        };
        let key = String::from_utf8(rest.to_vec()).ok()?;
        Some(VersionInfo {
            created,
            key,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(file in any::<u128>(), index in any::<u64>()) {
            let key = ChunkKey { file: FileId(file), index };
            prop_assert_eq!(decode_key(&encode_key(&key)), Some(key));
        }

        #[test]
        fn records_round_trip(digest in any::<u128>(), len in any::<u32>(), last_access in any::<u64>()) {
            let r = ChunkRecord { digest, len, last_access };
            prop_assert_eq!(decode_record(&encode_record(&r)), Some(r));
        }

        #[test]
        fn keys_sort_by_file_then_index(a in any::<(u128, u64)>(), b in any::<(u128, u64)>()) {
            let ka = ChunkKey { file: FileId(a.0), index: a.1 };
            let kb = ChunkKey { file: FileId(b.0), index: b.1 };
            prop_assert_eq!(encode_key(&ka).cmp(&encode_key(&kb)), ka.cmp(&kb));
        }

        #[test]
        fn damaged_records_are_absent(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(r) = decode_record(&bytes) {
                prop_assert_eq!(&encode_record(&r)[..], &bytes[..]);
            }
        }
    }

    #[test]
    fn index_persists_and_binds_versions() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileId::new("s", "k", "etag1", 8);
        let b = FileId::new("s", "k", "etag2", 8);
        assert_ne!(a, b);
        let key = ChunkKey { file: a, index: 3 };
        let info = VersionInfo {
            created: 1_700_000_000,
            key: "run/w.bin".into(),
            digest: Some(7),
        };
        let rec = ChunkRecord {
            digest: 42,
            len: 8,
            last_access: 7,
        };
        {
            let index = ChunkIndex::open(dir.path()).unwrap();
            index.put(&key, &rec).unwrap();
            index.put(&ChunkKey { file: b, index: 0 }, &rec).unwrap();
            assert_eq!(index.bind_object(1, a, &info).unwrap(), None);
            assert_eq!(index.bind_object(1, a, &info).unwrap(), None);
        }
        let index = ChunkIndex::open(dir.path()).unwrap();
        assert_eq!(index.get(&key).unwrap(), Some(rec));
        assert_eq!(index.chunks_of(a).unwrap(), vec![(key, rec)]);
        assert_eq!(index.all_chunks().unwrap().len(), 2);
        assert_eq!(index.version_info(a).unwrap(), Some(info.clone()));
        assert_eq!(index.bind_object(1, b, &info).unwrap(), Some(a));
        index.forget_version(a).unwrap();
        assert_eq!(index.version_info(a).unwrap(), None);
        index.delete(&key).unwrap();
        assert!(index.chunks_of(a).unwrap().is_empty());
    }
}
