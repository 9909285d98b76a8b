//! The fuser adapter of tierfs.
//!
//! This crate only translates kernel requests into calls on [`FsEngine`] and the
//! engine's answers into fuser replies. It holds no filesystem logic: inode numbers,
//! handles, caching and errno choice all belong to the engine behind the trait.

#![deny(clippy::undocumented_unsafe_blocks)]

mod adapter;
mod engine;
mod passthrough;
mod replies;
mod session;

pub use engine::{
    Attr, AttrChange, Backing, Creator, DirEntry, Entry, Errno, FileIdentity, FileKind, Flushed,
    FsEngine, KernelNotices, OpenMode, Opened, ReadData, Released, Reply, StatFs, reply_fn,
};
pub use session::{MountConfig, MountedSession, mount};
