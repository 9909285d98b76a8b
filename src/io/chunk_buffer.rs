//! Memory for whole chunks, mapped and faulted in with one call when it is made
//! instead of one page fault per 4 KiB while it is filled. A buffer from a
//! [`BufferPool`] goes back to it when the last slice of it is dropped, so that
//! a reader streaming through a file refills the same few mappings instead of
//! faulting in fresh memory for every chunk; other buffers are returned to the
//! system whole.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

/// One private anonymous mapping, unmapped when dropped.
struct Mapping {
    /// Start of the mapping, page-aligned.
    data: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned outright; nothing else points into it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping; the result is checked below.
        // MAP_POPULATE: one call faults in every page, instead of one fault per
        // 4 KiB page while the body is copied in. Transparent huge pages are left
        // out on purpose: on virtual machines that hand freed memory back to the
        // host, fresh 2 MiB pages cost far more to zero than 4 KiB ones.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let data = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { data, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Mapping::new`.
        unsafe { libc::munmap(self.data.as_ptr().cast(), self.len) };
    }
}

/// Mappings of one size (a whole chunk) kept for reuse, up to two limits. A
/// pooled mapping is only ever one that a buffer in use held a moment before, so
/// the pool never makes the process hold more memory than its busiest moment
/// did. `max_kept` bounds what it keeps after that moment has passed, and
/// `max_live` bounds its mappings in use and idle together: an idle mapping is
/// memory the process holds as surely as one in use, so it is kept only while
/// the two together stay within the memory budget.
pub struct BufferPool {
    size: usize,
    max_kept: usize,
    max_live: u64,
    free: Mutex<Vec<Mapping>>,
    /// Bytes of the pool's mappings, in use or idle.
    live: AtomicU64,
    reused: AtomicU64,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that keeps at most `max_idle` bytes of them
    /// idle, and none once its mappings in use and idle pass `max_live` bytes.
    pub fn new(size: usize, max_idle: u64, max_live: u64) -> Arc<BufferPool> {
        let max_kept = usize::try_from(max_idle / size.max(1) as u64).unwrap_or(usize::MAX);
        Arc::new(BufferPool {
            size,
            max_kept,
            max_live,
            free: Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        })
    }

    /// An empty buffer for `capacity` bytes: a pooled mapping when `capacity` is
    /// the pool's size, a fresh one otherwise (a file's short last chunk must not
    /// hold a whole chunk's memory).
    pub fn take(self: &Arc<Self>, capacity: usize) -> io::Result<ChunkBuffer> {
        if capacity != self.size {
            return ChunkBuffer::with_capacity(capacity);
        }
        self.pooled(capacity)
    }

    /// A buffer for at most `capacity` bytes that live briefly (a read joined
    /// from two chunks): a pooled mapping when they fill a good part of one,
    /// since nothing keeps them long enough for the rest to be wasted; memory
    /// of their own size when they are small, or more than a chunk.
    pub fn take_brief(self: &Arc<Self>, capacity: usize) -> io::Result<ChunkBuffer> {
        if self.brief_footprint(capacity) != self.size {
            return ChunkBuffer::with_capacity(capacity);
        }
        self.pooled(capacity)
    }

    /// Bytes of memory that [`BufferPool::take_brief`] maps for `capacity` bytes.
    pub fn brief_footprint(&self, capacity: usize) -> usize {
        if capacity < self.size / 4 || capacity > self.size {
            capacity
        } else {
            self.size
        }
    }

    /// A buffer for `capacity` bytes, at most the pool's size, in a pooled
    /// mapping of the pool's size (reused, or new).
    fn pooled(self: &Arc<Self>, capacity: usize) -> io::Result<ChunkBuffer> {
        debug_assert!(capacity <= self.size);
        let reused = self.free.lock().pop();
        let map = match reused {
            Some(map) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                map
            }
            None => {
                let map = Mapping::new(self.size)?;
                self.live.fetch_add(self.size as u64, Ordering::Relaxed);
                map
            }
        };
        Ok(ChunkBuffer {
            map: Some(map),
            len: 0,
            capacity,
            pool: Some(self.clone()),
        })
    }

    /// Bytes of idle mappings held for reuse.
    pub fn idle_bytes(&self) -> u64 {
        (self.free.lock().len() * self.size) as u64
    }

    /// Bytes of the pool's mappings, in use or idle.
    pub fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Buffers handed out that reused a mapping.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    fn give_back(&self, map: Mapping) {
        let mut free = self.free.lock();
        if free.len() < self.max_kept && self.live.load(Ordering::Relaxed) <= self.max_live {
            free.push(map);
        } else {
            drop(free);
            self.live.fetch_sub(self.size as u64, Ordering::Relaxed);
        }
    }
}

/// A fixed-capacity, page-aligned byte buffer, filled from the front.
pub struct ChunkBuffer {
    /// Always `Some` until the buffer is dropped.
    map: Option<Mapping>,
    len: usize,
    capacity: usize,
    pool: Option<Arc<BufferPool>>,
}

// SAFETY: shared access is read-only (`AsRef<[u8]>`).
unsafe impl Sync for ChunkBuffer {}

impl ChunkBuffer {
    /// An empty buffer with room for `capacity` bytes, returned to the system
    /// when dropped.
    pub fn with_capacity(capacity: usize) -> io::Result<ChunkBuffer> {
        Ok(ChunkBuffer {
            map: Some(Mapping::new(capacity)?),
            len: 0,
            capacity,
            pool: None,
        })
    }

    fn start(&self) -> *mut u8 {
        self.map
            .as_ref()
            .expect("a live buffer has its mapping")
            .data
            .as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes`; fails, appending nothing, when they do not fit.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if bytes.len() > self.capacity - self.len {
            return Err(Overflow {
                capacity: self.capacity,
            });
        }
        // SAFETY: the destination lies inside the mapping (checked above) and
        // cannot overlap `bytes`, which the caller borrows from elsewhere.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.start().add(self.len), bytes.len())
        };
        self.len += bytes.len();
        Ok(())
    }

    /// The unfilled rest, for reads straight into the buffer; mark what was
    /// filled with [`ChunkBuffer::advance`].
    pub fn spare(&mut self) -> &mut [u8] {
        // SAFETY: inside the mapping, which is initialised: zeroed when it was
        // made, and written since when it comes from a pool.
        unsafe {
            std::slice::from_raw_parts_mut(self.start().add(self.len), self.capacity - self.len)
        }
    }

    /// Counts `n` more bytes of the spare room as filled.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.capacity - self.len, "advanced past the capacity");
        self.len += n;
    }

    /// The filled bytes, shared without a copy.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are inside the mapping and were written.
        unsafe { std::slice::from_raw_parts(self.start(), self.len) }
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        if let (Some(map), Some(pool)) = (self.map.take(), &self.pool) {
            pool.give_back(map);
        }
    }
}

/// More bytes than a buffer was made for.
#[derive(Debug, thiserror::Error)]
#[error("more bytes than the {capacity}-byte buffer holds")]
pub struct Overflow {
    pub capacity: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_to_capacity_and_refuses_more() {
        let mut b = ChunkBuffer::with_capacity(8 << 20).unwrap();
        assert!(b.is_empty());
        b.extend_from_slice(&[7u8; 5000]).unwrap();
        b.extend_from_slice(&vec![9u8; (8 << 20) - 5000]).unwrap();
        assert!(b.extend_from_slice(&[1]).is_err());
        let bytes = b.freeze();
        assert_eq!(bytes.len(), 8 << 20);
        assert_eq!(bytes[4999], 7);
        assert_eq!(bytes[5000], 9);
    }

    #[test]
    fn small_buffers_are_page_aligned_and_slices_outlive_nothing() {
        let mut b = ChunkBuffer::with_capacity(10).unwrap();
        b.spare()[..3].copy_from_slice(b"abc");
        b.advance(3);
        assert_eq!(b.len(), 3);
        let bytes = b.freeze();
        let tail = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&tail[..], b"bc");
        assert!((tail.as_ptr() as usize - 1).is_multiple_of(4096));
    }

    #[test]
    fn a_pool_reuses_whole_chunk_mappings_and_keeps_no_more_than_its_limit() {
        let pool = BufferPool::new(1 << 20, 2 << 20, u64::MAX);
        let mut first = pool.take(1 << 20).unwrap();
        first.extend_from_slice(&[5u8; 100]).unwrap();
        let first = first.freeze();
        let address = first.as_ptr();
        let slice = first.slice(10..20);
        drop(first);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[5u8; 10]);
        drop(slice);
        assert_eq!(pool.idle_bytes(), 1 << 20);

        let again = pool.take(1 << 20).unwrap();
        assert_eq!(again.as_ref().as_ptr(), address, "the mapping is reused");
        assert_eq!(pool.reused(), 1);
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);

        // A short last chunk gets memory of its own size, never a pooled chunk.
        drop(pool.take(4096).unwrap());
        assert_eq!(pool.idle_bytes(), 0);
        drop(again);
        // A brief buffer of a good part of a chunk does, and holds no more than
        // asked for; a small one does not.
        drop(pool.take_brief(4096).unwrap());
        assert_eq!(pool.reused(), 1);
        let mut brief = pool.take_brief(300 << 10).unwrap();
        assert_eq!(pool.reused(), 2);
        assert!(
            brief
                .extend_from_slice(&vec![1u8; (300 << 10) + 1])
                .is_err()
        );
        brief.extend_from_slice(&vec![1u8; 300 << 10]).unwrap();
        drop(brief);
        assert_eq!(pool.idle_bytes(), 1 << 20);

        let again = pool.take(1 << 20).unwrap();
        let more: Vec<ChunkBuffer> = (0..3).map(|_| pool.take(1 << 20).unwrap()).collect();
        drop(again);
        drop(more);
        assert_eq!(
            pool.idle_bytes(),
            2 << 20,
            "kept up to the limit, the rest unmapped"
        );
        assert_eq!(pool.live_bytes(), 2 << 20);
    }

    #[test]
    fn idle_mappings_are_kept_only_while_the_pool_stays_within_its_memory() {
        let pool = BufferPool::new(1 << 20, 8 << 20, 3 << 20);
        let held: Vec<ChunkBuffer> = (0..4).map(|_| pool.take(1 << 20).unwrap()).collect();
        assert_eq!(pool.live_bytes(), 4 << 20);
        let mut held = held.into_iter();
        // Four in use, over the three allowed: the first two returned are unmapped.
        drop(held.next());
        assert_eq!((pool.idle_bytes(), pool.live_bytes()), (0, 3 << 20));
        drop(held.next());
        assert_eq!((pool.idle_bytes(), pool.live_bytes()), (1 << 20, 3 << 20));
        drop(held.next());
        assert_eq!((pool.idle_bytes(), pool.live_bytes()), (2 << 20, 3 << 20));
        // Taking reuses an idle mapping without growing the pool.
        let again = pool.take(1 << 20).unwrap();
        assert_eq!((pool.idle_bytes(), pool.live_bytes()), (1 << 20, 3 << 20));
        drop(again);
        drop(held);
        assert_eq!((pool.idle_bytes(), pool.live_bytes()), (3 << 20, 3 << 20));
    }
}
