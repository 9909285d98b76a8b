//! The trait the engine implements, in plain types with no fuser in them.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A positive errno value, as the kernel expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

/// How the engine answers a request: once, possibly from another thread.
///
/// Every operation gets one, so that the engine can answer from memory at once or
/// hand slow work (object-store requests) to its runtime without ever blocking the
/// FUSE dispatch thread.
pub type Reply<T> = Box<dyn FnOnce(Result<T, Errno>) + Send>;

/// Wraps a closure as a [`Reply`].
pub fn reply_fn<T>(f: impl FnOnce(Result<T, Errno>) + Send + 'static) -> Reply<T> {
    Box::new(f)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// Attributes of one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    /// Hard links: 1 for a file (0 once unlinked while open), 2 plus its
    /// subdirectories for a directory.
    pub nlink: u32,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// Who makes a new inode, and its permission bits (the umask applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creator {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The answer to a lookup: attributes plus how long the kernel may trust them.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// One directory entry; `.` and `..` are included by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: FileKind,
}

/// An opened file: the handle and how the kernel should cache it.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// Keep the kernel page cache from an earlier open: the object has not changed.
    pub keep_cache: bool,
    /// A local file holding the same bytes, for the kernel to read directly
    /// (FUSE passthrough) when it allows that.
    pub backing: Option<Backing>,
}

/// What the kernel may do once a handle is released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// The inode's page cache will not be read again: its next open gets a
    /// backing file, and the kernel drops the page cache at that open. Dropping
    /// it now, in the background, spares that open the wait.
    pub drop_page_cache: bool,
}

/// The bytes of a read, and what the kernel may drop of the inode's page cache.
#[derive(Debug, Clone, Default)]
pub struct ReadData {
    pub data: Bytes,
    /// `(offset, len)`: bytes of the page cache that a sequential reader has
    /// left behind and that later opens read from a backing file: dropped in
    /// the background rather than kept twice (here and in the backing file's
    /// page cache).
    pub drop_behind: Option<(u64, u64)>,
}

/// What the kernel may do before a close(2) that flushed a handle returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// The inode's page cache will not be read again (as for
    /// [`Released::drop_page_cache`]): dropped before the close returns, so
    /// that an open right after it does not wait for the kernel to drop it.
    pub drop_page_cache: bool,
}

/// A local file holding a file's bytes, for the kernel to read and write directly.
#[derive(Debug)]
pub struct Backing {
    /// The kernel takes one backing file per inode, so opens of an inode share
    /// it only while they name the same file.
    pub identity: FileIdentity,
    pub file: std::fs::File,
}

impl Backing {
    pub fn new(file: std::fs::File) -> std::io::Result<Backing> {
        Ok(Backing {
            identity: FileIdentity::of(&file)?,
            file,
        })
    }
}

/// A local file as the kernel knows it: its device and inode numbers, which
/// stay with it across renames and hard links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    pub fn of(file: &std::fs::File) -> std::io::Result<FileIdentity> {
        Ok(FileIdentity::from(&file.metadata()?))
    }
}

impl From<&std::fs::Metadata> for FileIdentity {
    fn from(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenMode {
    pub write: bool,
    /// O_TRUNC: the file starts empty.
    pub truncate: bool,
}

/// The attributes a setattr changes; the rest are left as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrChange {
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    /// chmod: the permission bits.
    pub mode: Option<u32>,
    /// chown: the new owner and group.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Notices the engine sends the kernel on its own, outside any request.
pub trait KernelNotices: Send + Sync {
    /// Has the kernel drop an inode's page cache, in the background.
    fn drop_page_cache(&self, ino: u64);
}

/// The filesystem operations tierfs serves. Inode 1 is the root.
pub trait FsEngine: Send + Sync + 'static {
    /// The mount is up: `notices` reach its kernel from now on.
    fn attach_kernel(&self, notices: Arc<dyn KernelNotices>);
    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply<Entry>);
    fn forget(&self, ino: u64, nlookup: u64);
    fn getattr(&self, ino: u64, reply: Reply<Entry>);
    fn opendir(&self, ino: u64, reply: Reply<u64>);
    /// The whole snapshot of a directory taken at `opendir`; the adapter pages it.
    fn readdir(&self, ino: u64, fh: u64, reply: Reply<Arc<[DirEntry]>>);
    fn releasedir(&self, ino: u64, fh: u64);
    fn open(&self, ino: u64, mode: OpenMode, reply: Reply<Opened>);
    /// Creates a file (or truncates one the kernel did not know) and opens it
    /// for writing.
    fn create(&self, parent: u64, name: &OsStr, creator: Creator, reply: Reply<(Entry, Opened)>);
    /// `kill_suidgid`: the kernel asks the write to clear the file's set-ID
    /// bits (the writer may not keep them).
    fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        reply: Reply<u32>,
    );
    /// `fh` is the handle the change came through, when it came through one.
    fn setattr(&self, ino: u64, fh: Option<u64>, change: AttrChange, reply: Reply<Entry>);
    fn fsync(&self, ino: u64, fh: u64, reply: Reply<()>);
    fn mkdir(&self, parent: u64, name: &OsStr, creator: Creator, reply: Reply<Entry>);
    /// Makes a symbolic link `name` to `target`, which the engine never follows.
    fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        creator: Creator,
        reply: Reply<Entry>,
    );
    fn readlink(&self, ino: u64, reply: Reply<Vec<u8>>);
    fn unlink(&self, parent: u64, name: &OsStr, reply: Reply<()>);
    fn rmdir(&self, parent: u64, name: &OsStr, reply: Reply<()>);
    /// `no_replace`: RENAME_NOREPLACE, fail when the target exists.
    fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
        reply: Reply<()>,
    );
    /// The errno for an operation tierfs does not offer (hard links, device
    /// nodes, fifos), logged once per kind.
    fn unsupported(&self, what: &'static str) -> Errno;
    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32, reply: Reply<ReadData>);
    /// A file descriptor of the handle is closed; close(2) waits for the reply.
    fn flush(&self, ino: u64, fh: u64, reply: Reply<Flushed>);
    fn release(&self, ino: u64, fh: u64, reply: Reply<Released>);
    /// The kernel refused passthrough for a handle that offered a backing file;
    /// it is read through `read` instead.
    fn passthrough_refused(&self, fh: u64);
    /// The kernel takes no backing files on this mount: no handle is offered
    /// one from now on.
    fn passthrough_unavailable(&self);
    fn statfs(&self, reply: Reply<StatFs>);
    fn getxattr(&self, ino: u64, name: &OsStr, reply: Reply<Vec<u8>>);
    /// Names, each followed by a NUL byte, as listxattr(2) returns them.
    fn listxattr(&self, ino: u64, reply: Reply<Vec<u8>>);
    fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], reply: Reply<()>);
    fn removexattr(&self, ino: u64, name: &OsStr, reply: Reply<()>);
}
