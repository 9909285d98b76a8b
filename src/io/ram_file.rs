//! A held file's copy in RAM as one memfd. The RAM tier's held chunks are views
//! of its mapping, and once every chunk is in, the kernel can serve the file from
//! it by FUSE passthrough: reads then cost what tmpfs reads cost, with no request
//! reaching tierfs and no second copy in the page cache. The memfd is only ever
//! written with a chunk's own bytes and never shrunk, so a passthrough handle that
//! outlives the hold still reads the right bytes (the kernel keeps the memfd open).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::model::chunk::ChunkLayout;

pub struct RamFile {
    memfd: File,
    map: Option<NonNull<u8>>,
    layout: ChunkLayout,
    filled: Mutex<HashSet<u64>>,
}

// SAFETY: the mapping is owned by the RamFile; writes go to disjoint chunk
// ranges with the same bytes every time, and views only read.
unsafe impl Send for RamFile {}
// SAFETY: as above.
unsafe impl Sync for RamFile {}

impl RamFile {
    /// A memfd of `size` bytes, mapped, with no chunk in yet.
    pub fn create(name: &str, size: u64, chunk_size: u64) -> io::Result<Arc<RamFile>> {
        let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(size)?;
        let map = if size == 0 {
            None
        } else {
            // SAFETY: a shared mapping of our own memfd, `size` bytes long.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    memfd.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            NonNull::new(ptr.cast::<u8>())
        };
        Ok(Arc::new(RamFile {
            memfd,
            map,
            layout: ChunkLayout::new(chunk_size, size),
            filled: Mutex::new(HashSet::new()),
        }))
    }

    /// Copies chunk `index` in and returns a view of it; None when the chunk does
    /// not fit the file (another version's length).
    pub fn put(self: &Arc<Self>, index: u64, bytes: &[u8]) -> Option<Bytes> {
        let expected = self.layout.chunk_len(index);
        if bytes.len() as u64 != expected || expected == 0 {
            return None;
        }
        let offset = self.layout.chunk_start(index);
        let map = self.map?;
        // SAFETY: [offset, offset + len) lies inside the mapping (checked above).
        let dst = unsafe { map.as_ptr().add(offset as usize) };
        // A view of this very chunk, put back (a held chunk read and kept
        // again), is already in place.
        if !std::ptr::eq(dst.cast_const(), bytes.as_ptr()) {
            // SAFETY: `dst` is inside the mapping; `bytes` is not this chunk's
            // range (checked above), and views of other chunks or other files
            // do not overlap it. Every writer of this range writes the same bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        }
        self.filled.lock().insert(index);
        Some(Bytes::from_owner(ChunkView {
            file: self.clone(),
            offset: offset as usize,
            len: bytes.len(),
        }))
    }

    /// Whether every chunk is in.
    pub fn is_complete(&self) -> bool {
        self.layout.file_size > 0 && self.filled.lock().len() as u64 == self.layout.chunk_count()
    }

    /// The memfd, for the kernel to read the file from; None until complete.
    pub fn backing(&self) -> Option<io::Result<File>> {
        self.is_complete().then(|| self.memfd.try_clone())
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        if let Some(map) = self.map {
            // SAFETY: unmaps the mapping made in `create`; no view outlives self.
            unsafe { libc::munmap(map.as_ptr().cast(), self.layout.file_size as usize) };
        }
    }
}

/// One chunk of a [`RamFile`], kept alive by the bytes that share it.
struct ChunkView {
    file: Arc<RamFile>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for ChunkView {
    fn as_ref(&self) -> &[u8] {
        let map = self.file.map.expect("a view exists only of a mapped file");
        // SAFETY: inside the mapping, which lives as long as `self.file`.
        unsafe { std::slice::from_raw_parts(map.as_ptr().add(self.offset), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn complete_once_every_chunk_is_in_and_reads_back_through_the_fd() {
        let file = RamFile::create("test", 250, 100).unwrap();
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let a = file.put(0, &data[..100]).unwrap();
        assert!(file.put(2, &data[200..]).is_some());
        assert!(file.backing().is_none());
        // A chunk of the wrong length, or past the end, is refused.
        assert!(file.put(1, &data[100..150]).is_none());
        assert!(file.put(3, &data[..10]).is_none());
        let b = file.put(1, &data[100..200]).unwrap();
        // Its own view put back is a no-op.
        assert_eq!(file.put(1, &b).unwrap(), b);
        let mut back = Vec::new();
        let mut fd = file.backing().unwrap().unwrap();
        fd.read_to_end(&mut back).unwrap();
        assert!(back == data);
        drop(file);
        // A view keeps the mapping alive on its own.
        assert_eq!(&a[..3], &[0, 1, 2]);
    }
}
