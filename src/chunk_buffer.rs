//! Memory for whole chunks, mapped and faulted in with one call when it is made
//! instead of one page fault per 4 KiB while it is filled, and returned to the
//! system whole when the last slice of it is dropped.

use std::io;
use std::ptr::NonNull;

use bytes::Bytes;

/// A fixed-capacity, page-aligned byte buffer, filled from the front.
pub struct ChunkBuffer {
    /// Start of the mapping, page-aligned.
    data: NonNull<u8>,
    len: usize,
    capacity: usize,
    map_len: usize,
}

// SAFETY: the buffer owns its mapping outright; nothing else points into it.
unsafe impl Send for ChunkBuffer {}
// SAFETY: shared access is read-only (`AsRef<[u8]>`).
unsafe impl Sync for ChunkBuffer {}

impl ChunkBuffer {
    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> io::Result<ChunkBuffer> {
        let map_len = capacity.max(1);
        // SAFETY: an anonymous private mapping; the result is checked below.
        // MAP_POPULATE: one call faults in every page, instead of one fault per
        // 4 KiB page while the body is copied in. Transparent huge pages are left
        // out on purpose: on virtual machines that hand freed memory back to the
        // host, fresh 2 MiB pages cost far more to zero than 4 KiB ones.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
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
        Ok(ChunkBuffer {
            data,
            len: 0,
            capacity,
            map_len,
        })
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
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.data.as_ptr().add(self.len),
                bytes.len(),
            )
        };
        self.len += bytes.len();
        Ok(())
    }

    /// The unfilled rest, for reads straight into the buffer; mark what was
    /// filled with [`ChunkBuffer::advance`].
    pub fn spare(&mut self) -> &mut [u8] {
        // SAFETY: inside the mapping; anonymous memory is zeroed, so initialised.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data.as_ptr().add(self.len),
                self.capacity - self.len,
            )
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
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `with_capacity`.
        unsafe { libc::munmap(self.data.as_ptr().cast(), self.map_len) };
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
}
