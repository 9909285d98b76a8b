//! Positional reads and writes of cache files: reads through io-uring where the
//! kernel allows it, plain pread where it does not (old kernels, seccomp filters in
//! containers); writes in pieces small enough for cheap page-cache folios, or
//! around the page cache (O_DIRECT) where nothing will read them from it.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{IoUring, opcode, types};

static URING_BROKEN: AtomicBool = AtomicBool::new(false);
static DIRECT_BROKEN: AtomicBool = AtomicBool::new(false);

/// The alignment O_DIRECT asks of buffers, offsets and lengths (a page: every
/// disk's logical block fits in one).
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    // One small ring per blocking thread: rings are not shared, so no locking.
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    if !URING_BROKEN.load(Ordering::Relaxed) {
        match RING.with(|ring| uring_read_exact(&mut ring.borrow_mut(), file, buf, offset)) {
            Ok(()) => return Ok(()),
            Err(UringError::Unavailable(e)) => {
                tracing::info!("io_uring is not available ({e}); reading the cache with pread");
                URING_BROKEN.store(true, Ordering::Relaxed);
            }
            Err(UringError::Io(e)) => return Err(e),
        }
    }
    file.read_exact_at(buf, offset)
}

/// The largest piece [`write_all_at`] hands the kernel in one call.
pub const WRITE_PIECE: usize = 1 << 20;

/// Writes all of `data` at `offset`, in pieces of at most [`WRITE_PIECE`] bytes.
///
/// The kernel sizes the page-cache folios of a buffered write from the length of
/// the write: one big write gets 2 MiB folios. Those come from the high-order free
/// blocks that a virtual machine's balloon (free page reporting) has handed back to
/// its host, and filling them costs the host a fault per page: on such a VM, 8 MiB
/// writes of fresh cache took 3 to 4.7 CPU-seconds per GiB against 0.3 for 1 MiB
/// writes. Smaller writes cost a few more syscalls and nothing else.
pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Writes all of `data` at `offset` of the file at `path` (also open as
/// `file`) without passing through the page cache: the page-aligned part with
/// O_DIRECT, the rest (an unaligned buffer, offset or tail) through `file`.
///
/// For copies that are read back rarely, and then through a page cache of
/// their own: filling fresh page-cache pages costs more CPU than the copy
/// itself (on a VM that hands free memory back to its host, a host fault per
/// page; 0.6 to 1.7 CPU-seconds per GiB here, against 0.05 for O_DIRECT, which
/// the disk's DMA reads straight from `data`). Falls back to [`write_all_at`]
/// where the filesystem takes no O_DIRECT (tmpfs).
pub fn write_uncached_at(
    path: &std::path::Path,
    file: &File,
    data: &[u8],
    offset: u64,
) -> io::Result<()> {
    let aligned = if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
        && !DIRECT_BROKEN.load(Ordering::Relaxed)
    {
        data.len() / DIRECT_ALIGN * DIRECT_ALIGN
    } else {
        0
    };
    let mut done = 0;
    if aligned > 0 {
        match direct_write(path, &data[..aligned], offset) {
            Ok(()) => done = aligned,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    "the cache's filesystem takes no O_DIRECT writes ({e}); writing through the page cache"
                );
                DIRECT_BROKEN.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    write_all_at(file, &data[done..], offset + done as u64)
}

fn direct_write(path: &std::path::Path, data: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?
        .write_all_at(data, offset)
}

enum UringError {
    Unavailable(io::Error),
    Io(io::Error),
}

fn uring_read_exact(
    ring: &mut Option<IoUring>,
    file: &File,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), UringError> {
    if ring.is_none() {
        *ring = Some(IoUring::new(4).map_err(UringError::Unavailable)?);
    }
    let ring = ring.as_mut().expect("set above");
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let len = rest.len().min(1 << 30) as u32;
        let entry = opcode::Read::new(types::Fd(file.as_raw_fd()), rest.as_mut_ptr(), len)
            .offset(offset + done as u64)
            .build();
        // SAFETY: the buffer outlives the operation: we wait for its completion
        // below before touching or returning the buffer.
        unsafe { ring.submission().push(&entry) }
            .map_err(|e| UringError::Io(io::Error::other(e.to_string())))?;
        ring.submit_and_wait(1).map_err(UringError::Unavailable)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| UringError::Io(io::Error::other("io_uring returned no completion")))?;
        let n = cqe.result();
        if n < 0 {
            let e = io::Error::from_raw_os_error(-n);
            return Err(
                if matches!(-n, libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) {
                    UringError::Unavailable(e)
                } else {
                    UringError::Io(e)
                },
            );
        }
        if n == 0 {
            return Err(UringError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        done += n as usize;
    }
    Ok(())
}

/// Frees the disk blocks of a byte range without changing the file size.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
pub fn disk_free(path: &std::path::Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain old data, for which all zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and an out-struct of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_was_written_and_reports_eof() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let mut buf = vec![0u8; 5000];
        read_exact_at(&f, &mut buf, 1234).unwrap();
        assert_eq!(&buf[..], &data[1234..6234]);
        let err = read_exact_at(&f, &mut buf, 99_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        punch_hole(&f, 0, 8192).unwrap();
        read_exact_at(&f, &mut buf[..100], 0).unwrap();
        assert!(buf[..100].iter().all(|b| *b == 0));
        let big: Vec<u8> = (0..WRITE_PIECE * 2 + 77).map(|i| (i % 253) as u8).collect();
        write_all_at(&f, &big, 3).unwrap();
        let mut back = vec![0u8; big.len()];
        read_exact_at(&f, &mut back, 3).unwrap();
        assert_eq!(back, big);
    }

    /// `len` bytes starting at a page boundary of `backing` (as the buffer pool
    /// hands out).
    fn aligned(backing: &mut Vec<u8>, len: usize, seed: u8) -> &[u8] {
        backing.resize(len + DIRECT_ALIGN, 0);
        let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let buf = &mut backing[start..start + len];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ seed;
        }
        buf
    }

    #[test]
    fn uncached_writes_read_back_whole_aligned_or_not() {
        // On disk (O_DIRECT) and on tmpfs (no O_DIRECT: the page cache), an
        // aligned buffer with an unaligned tail, and an unaligned buffer.
        let dirs = [tempfile::tempdir(), tempfile::tempdir_in("/dev/shm")];
        for dir in dirs.iter().flatten() {
            let path = dir.path().join("c.data");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            let (mut one, mut two) = (Vec::new(), Vec::new());
            let data = aligned(&mut one, 3 * DIRECT_ALIGN + 100, 1);
            write_uncached_at(&path, &f, data, 8192).unwrap();
            let odd = aligned(&mut two, 2 * DIRECT_ALIGN + 1, 2);
            write_uncached_at(&path, &f, &odd[1..], 64 << 10).unwrap();
            let mut back = vec![0u8; data.len()];
            read_exact_at(&f, &mut back, 8192).unwrap();
            assert!(back[..] == data[..]);
            let mut back = vec![0u8; odd.len() - 1];
            read_exact_at(&f, &mut back, 64 << 10).unwrap();
            assert!(back[..] == odd[1..]);
        }
    }
}
