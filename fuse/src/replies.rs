//! The engine's answers turned into fuser replies, and fuser's types into the
//! engine's.

use std::time::SystemTime;

use fuser::{
    FileAttr, FileType, INodeNo, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, TimeOrNow,
};

use crate::engine::{Attr, Errno, FileKind, Reply};

pub(crate) fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

/// fuser's name for a kind of inode.
pub(crate) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

pub(crate) fn file_attr(attr: &Attr) -> FileAttr {
    let kind = file_type(attr.kind);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// A fuser reply that can carry an error.
pub(crate) trait ErrorReply: Send + 'static {
    fn fail(self, e: fuser::Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn fail(self, e: fuser::Errno) {
                self.error(e)
            }
        }
    )*};
}
error_reply!(
    ReplyCreate,
    ReplyEntry,
    ReplyAttr,
    ReplyOpen,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Builds the engine callback for one request: a value goes to `on_ok` with the
/// reply, an error becomes the reply's errno.
pub(crate) fn answer<R: ErrorReply, T: 'static>(
    reply: R,
    on_ok: impl FnOnce(R, T) + Send + 'static,
) -> Reply<T> {
    Box::new(move |result| match result {
        Ok(value) => on_ok(reply, value),
        Err(e) => {
            tracing::debug!(errno = e.0, "request failed");
            reply.fail(errno(e))
        }
    })
}

/// Sends an extended attribute value or its size, as the caller's buffer asks.
pub(crate) fn reply_xattr(reply: ReplyXattr, size: u32) -> Reply<Vec<u8>> {
    answer(reply, move |reply: ReplyXattr, value: Vec<u8>| {
        if size == 0 {
            reply.size(value.len() as u32)
        } else if value.len() > size as usize {
            reply.error(fuser::Errno::ERANGE)
        } else {
            reply.data(&value)
        }
    })
}

pub(crate) fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}
