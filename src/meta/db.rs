//! The one RocksDB under `cache_dir`, as tables. Each subsystem owns its tables
//! and their byte codecs; this module only stores bytes under keys, so the
//! RocksDB handle and its column families never leave it.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::error::FsResult;

/// The tables of the database, one column family each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Chunk records of the NVMe tier (see `ChunkIndex`).
    Chunks,
    /// Each object's current version.
    Objects,
    /// What is known of a cached version beyond its chunks (when it was made, its key).
    Versions,
    /// Files written through the mount and not yet verified in the store (write registry).
    Staged,
    /// Directories made through the mount (the store has no empty directories).
    Dirs,
    /// Pinned paths and their tiers (pins).
    Pins,
    /// Access statistics per path (access table).
    Access,
}

impl Table {
    const ALL: [Table; 7] = [
        Table::Chunks,
        Table::Objects,
        Table::Versions,
        Table::Staged,
        Table::Dirs,
        Table::Pins,
        Table::Access,
    ];

    /// The column family's name: stable, as it is on disk.
    fn name(self) -> &'static str {
        match self {
            Table::Chunks => "chunks",
            Table::Objects => "objects",
            Table::Versions => "versions",
            Table::Staged => "staged",
            Table::Dirs => "dirs",
            Table::Pins => "pins",
            Table::Access => "access",
        }
    }
}

/// A key and its value as stored.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// One change of a batch: a key set to a value, or deleted (None).
type Change = (Table, Box<[u8]>, Option<Box<[u8]>>);

/// Changes to several tables written at once, all or none.
#[derive(Default)]
pub struct Batch {
    changes: Vec<Change>,
}

impl Batch {
    pub fn put(&mut self, table: Table, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.changes
            .push((table, key.as_ref().into(), Some(value.as_ref().into())));
    }

    pub fn delete(&mut self, table: Table, key: impl AsRef<[u8]>) {
        self.changes.push((table, key.as_ref().into(), None));
    }
}

pub struct MetaDb {
    db: DB,
}

impl MetaDb {
    /// Opens the database at `path`, creating it and any missing table.
    pub fn open(path: &Path) -> FsResult<MetaDb> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = Table::ALL
            .into_iter()
            .map(|t| ColumnFamilyDescriptor::new(t.name(), Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families)?;
        Ok(MetaDb { db })
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("column family created at open")
    }

    pub fn get(&self, table: Table, key: impl AsRef<[u8]>) -> FsResult<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(table), key)?
            .map(|v| v.to_vec()))
    }

    pub fn put(
        &self,
        table: Table,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> FsResult<()> {
        self.db.put_cf(self.cf(table), key, value)?;
        Ok(())
    }

    pub fn delete(&self, table: Table, key: impl AsRef<[u8]>) -> FsResult<()> {
        self.db.delete_cf(self.cf(table), key)?;
        Ok(())
    }

    /// Every entry of a table, in key order.
    pub fn entries(&self, table: Table) -> impl Iterator<Item = FsResult<Entry>> + '_ {
        self.db
            .iterator_cf(self.cf(table), IteratorMode::Start)
            .map(|item| Ok(item?))
    }

    /// The entries of a table from `start` on, in key order.
    pub fn entries_from(
        &self,
        table: Table,
        start: &[u8],
    ) -> impl Iterator<Item = FsResult<Entry>> + '_ {
        self.db
            .iterator_cf(
                self.cf(table),
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|item| Ok(item?))
    }

    /// Writes a batch; `durable` waits until it is on disk (fsync of the log),
    /// else it survives a crash of the process but not of the machine.
    pub fn write(&self, batch: Batch, durable: bool) -> FsResult<()> {
        let mut write = WriteBatch::default();
        for (table, key, value) in batch.changes {
            match value {
                Some(value) => write.put_cf(self.cf(table), key, value),
                None => write.delete_cf(self.cf(table), key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(durable);
        self.db.write_opt(write, &options)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keep_their_entries_apart_and_batches_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = MetaDb::open(dir.path()).unwrap();
            db.put(Table::Pins, b"a", b"1").unwrap();
            let mut batch = Batch::default();
            batch.put(Table::Dirs, b"a", b"");
            batch.put(Table::Dirs, b"b", b"");
            batch.delete(Table::Pins, b"a");
            db.write(batch, true).unwrap();
        }
        let db = MetaDb::open(dir.path()).unwrap();
        assert_eq!(db.get(Table::Pins, b"a").unwrap(), None);
        let dirs: Vec<Entry> = db.entries(Table::Dirs).map(Result::unwrap).collect();
        assert_eq!(dirs.len(), 2);
        let from_b: Vec<Entry> = db
            .entries_from(Table::Dirs, b"b")
            .map(Result::unwrap)
            .collect();
        assert_eq!(&*from_b[0].0, b"b");
        assert_eq!(db.entries(Table::Access).count(), 0);
    }
}
