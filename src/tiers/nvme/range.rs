//! Reads of a few pages of an NVMe copy, for a kernel page cache that lost them.

use crate::model::version::FileId;
use bytes::Bytes;

use super::NvmeTier;
use crate::io::chunk_file::read_exact_at;

use crate::error::FsResult;

impl NvmeTier {
    /// Bytes `[offset, offset + len)` of `file`'s copy, read as they are, when
    /// every chunk they touch is on disk and was written or digest-checked by
    /// this process; `None` otherwise.
    ///
    /// No digest is checked, which would mean reading whole chunks: these are the
    /// chunks passthrough hands the kernel unchecked too. A chunk evicted during
    /// the read loses its mark before its blocks go, so the marks are looked at
    /// again after the read, and bytes read while one went are thrown away.
    /// Blocking.
    pub fn read_checked_range(
        &self,
        file: FileId,
        offset: u64,
        len: u64,
    ) -> FsResult<Option<Bytes>> {
        if len == 0 {
            return Ok(Some(Bytes::new()));
        }
        let chunks = offset / self.chunk_size..(offset + len).div_ceil(self.chunk_size);
        let all_checked = || {
            self.verified
                .lock()
                .get(&file)
                .is_some_and(|set| chunks.clone().all(|index| set.contains(&index)))
        };
        if !all_checked() {
            return Ok(None);
        }
        let handle = match self.file(file, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; len as usize];
        match read_exact_at(&handle, &mut buf, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if !all_checked() {
            return Ok(None);
        }
        self.stats
            .range_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use crate::tiers::nvme::tests::{key, tier};

    use super::*;
    use crate::model::digest::digest;

    #[test]
    fn reads_ranges_of_checked_chunks_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 1 << 20);
        let first = [1u8; 16];
        let second: Vec<u8> = (0..16).collect();
        t.write(&key(3, 0), &first, digest(&first)).unwrap();
        t.write(&key(3, 1), &second, digest(&second)).unwrap();
        let got = t.read_checked_range(FileId(3), 12, 8).unwrap().unwrap();
        assert_eq!(&got[..], &[1, 1, 1, 1, 0, 1, 2, 3]);
        assert_eq!(
            t.stats
                .range_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A range that reaches a chunk not on disk is not read.
        assert!(t.read_checked_range(FileId(3), 20, 16).unwrap().is_none());
        assert!(t.read_checked_range(FileId(4), 0, 4).unwrap().is_none());
        // A chunk dropped from the tier is not read either.
        t.drop_file(FileId(3)).unwrap();
        assert!(t.read_checked_range(FileId(3), 0, 4).unwrap().is_none());
    }
}
