//! fuser `Filesystem` over an [`FsEngine`]: a span per operation, a call into the
//! engine, and the engine's answer turned into a reply.

use std::ffi::OsStr;
use std::io;
use std::time::SystemTime;

use std::sync::Arc;

use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug_span;

use crate::engine::{
    AttrChange, Creator, DirEntry, Entry, Flushed, FsEngine, OpenMode, Opened, ReadData, Released,
    StatFs,
};
use crate::passthrough::Passthrough;
use crate::replies::{ErrorReply, answer, errno, file_attr, file_type, reply_xattr, time};

/// The kernel's requests for one mount, handed to the engine.
pub(crate) struct FuseAdapter<E> {
    pub(crate) engine: E,
    pub(crate) max_background: u16,
    pub(crate) passthrough: Arc<Passthrough>,
}

impl<E: FsEngine + Clone> FuseAdapter<E> {
    /// Tells the engine that the kernel refused the backing file of a handle,
    /// which is read through the engine after all, and that no backing file
    /// can be had on this mount.
    fn engine_refusal(&self) -> impl FnOnce(u64) + Send + 'static {
        let engine = self.engine.clone();
        move |fh| {
            engine.passthrough_refused(fh);
            engine.passthrough_unavailable();
        }
    }
}

impl<E: FsEngine + Clone> Filesystem for FuseAdapter<E> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel clamps max_pages to /proc/sys/fs/fuse/max_pages_limit; asking for
        // the largest write size makes it grant the largest read size it allows.
        if let Err(nearest) = config.set_max_write(16 << 20) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(nearest);
        }
        if let Err(nearest) = config.set_max_background(self.max_background) {
            let _ = config.set_max_background(nearest);
        }
        // O_TRUNC arrives with open, so a truncating open never copies the old
        // contents first.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Files carry no set-id bits or capabilities, so there are no privileges
        // for a write to clear: without this the kernel asks for the
        // security.capability attribute before every write.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Passthrough needs the kernel's capability, and stacking depth for backing
        // files that may themselves sit on a stacked file system (overlayfs).
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        tracing::info!(passthrough, "FUSE session initialised");
        if !passthrough {
            self.engine.passthrough_unavailable();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = debug_span!("lookup", parent = parent.0, ?name).entered();
        self.engine.lookup(
            parent.0,
            name,
            answer(reply, |reply: ReplyEntry, e: Entry| {
                reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0))
            }),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _span = debug_span!("forget", ino = ino.0, nlookup).entered();
        self.engine.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = debug_span!("getattr", ino = ino.0).entered();
        self.engine.getattr(
            ino.0,
            answer(reply, |reply: ReplyAttr, e: Entry| {
                reply.attr(&e.ttl, &file_attr(&e.attr))
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = debug_span!("opendir", ino = ino.0).entered();
        self.engine.opendir(
            ino.0,
            answer(reply, |reply: ReplyOpen, fh: u64| {
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _span = debug_span!("readdir", ino = ino.0, fh = fh.0, offset).entered();
        self.engine.readdir(
            ino.0,
            fh.0,
            answer(
                reply,
                move |mut reply: ReplyDirectory, entries: Arc<[DirEntry]>| {
                    // Offsets are positions in the snapshot taken at opendir, so a
                    // listing read in many calls is consistent.
                    for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
                        let kind = file_type(entry.kind);
                        if reply.add(INodeNo(entry.ino), (i + 1) as u64, kind, &entry.name) {
                            break;
                        }
                    }
                    reply.ok()
                },
            ),
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("releasedir", ino = ino.0, fh = fh.0).entered();
        self.engine.releasedir(ino.0, fh.0);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = debug_span!("open", ino = ino.0, ?flags).entered();
        let mode = OpenMode {
            write: !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY),
            truncate: flags.0 & libc::O_TRUNC != 0,
        };
        let passthrough = self.passthrough.clone();
        let engine_refusal = self.engine_refusal();
        self.engine.open(
            ino.0,
            mode,
            answer(reply, move |reply: ReplyOpen, opened: Opened| {
                let mut fopen = FopenFlags::empty();
                if opened.keep_cache {
                    fopen |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                let fh = FileHandle(opened.fh);
                if let Some(backing) = opened.backing {
                    match passthrough.backing_for(ino.0, fh.0, &backing, |f| reply.open_backing(f))
                    {
                        Ok(id) => {
                            // The kernel caches through the backing file itself.
                            reply.opened_passthrough(fh, FopenFlags::empty(), &id);
                            tracing::debug!("opened with passthrough");
                            return;
                        }
                        Err(_) => engine_refusal(fh.0),
                    }
                }
                reply.opened(fh, fopen)
            }),
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = debug_span!("read", ino = ino.0, fh = fh.0, offset, size).entered();
        let passthrough = self.passthrough.clone();
        self.engine.read(
            ino.0,
            fh.0,
            offset,
            size,
            answer(reply, move |reply: ReplyData, read: ReadData| {
                reply.data(&read.data);
                if let Some((offset, len)) = read.drop_behind {
                    passthrough.drop_page_cache_range(ino, offset, len);
                }
            }),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("flush", ino = ino.0, fh = fh.0).entered();
        let passthrough = self.passthrough.clone();
        self.engine.flush(
            ino.0,
            fh.0,
            answer(reply, move |reply: ReplyEmpty, flushed: Flushed| {
                if flushed.drop_page_cache {
                    passthrough.drop_page_cache_then(ino, move || reply.ok());
                } else {
                    reply.ok();
                }
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span =
            debug_span!("write", ino = ino.0, fh = fh.0, offset, size = data.len()).entered();
        self.engine.write(
            ino.0,
            fh.0,
            offset,
            data,
            write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            answer(reply, |reply: ReplyWrite, n: u32| reply.written(n)),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("fsync", ino = ino.0, fh = fh.0, datasync).entered();
        self.engine.fsync(
            ino.0,
            fh.0,
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are recorded durably when they are made.
        let _span = debug_span!("fsyncdir", ino = ino.0, fh = fh.0).entered();
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("release", ino = ino.0, fh = fh.0).entered();
        self.passthrough.release(fh.0);
        let passthrough = self.passthrough.clone();
        self.engine.release(
            ino.0,
            fh.0,
            answer(reply, move |reply: ReplyEmpty, released: Released| {
                reply.ok();
                if released.drop_page_cache {
                    passthrough.drop_page_cache(ino);
                }
            }),
        );
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = debug_span!("statfs", ino = ino.0).entered();
        self.engine
            .statfs(answer(reply, |reply: ReplyStatfs, s: StatFs| {
                reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
                )
            }));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = debug_span!("getxattr", ino = ino.0, ?name, size).entered();
        self.engine.getxattr(ino.0, name, reply_xattr(reply, size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = debug_span!("listxattr", ino = ino.0, size).entered();
        self.engine.listxattr(ino.0, reply_xattr(reply, size));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions is set, so the kernel checks modes itself.
        let _span = debug_span!("access", ino = ino.0).entered();
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = debug_span!("setattr", ino = ino.0, ?size, ?mode, ?uid, ?gid, ?mtime).entered();
        let change = AttrChange {
            size,
            mtime: mtime.map(time),
            atime: atime.map(time),
            ctime,
            mode,
            uid,
            gid,
        };
        self.engine.setattr(
            ino.0,
            fh.map(|fh| fh.0),
            change,
            answer(reply, |reply: ReplyAttr, e: Entry| {
                reply.attr(&e.ttl, &file_attr(&e.attr))
            }),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = debug_span!("mkdir", parent = parent.0, ?name, mode).entered();
        self.engine.mkdir(
            parent.0,
            name,
            creator(req, mode),
            answer(reply, |reply: ReplyEntry, e: Entry| {
                reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0))
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = debug_span!("unlink", parent = parent.0, ?name).entered();
        self.engine.unlink(
            parent.0,
            name,
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = debug_span!("rmdir", parent = parent.0, ?name).entered();
        self.engine.rmdir(
            parent.0,
            name,
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname,
            ?flags
        )
        .entered();
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.fail(errno(self.engine.unsupported("exchanging renames")));
        }
        self.engine.rename(
            parent.0,
            name,
            newparent.0,
            newname,
            flags.contains(RenameFlags::RENAME_NOREPLACE),
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = debug_span!("create", parent = parent.0, ?name, mode).entered();
        let passthrough = self.passthrough.clone();
        let engine_refusal = self.engine_refusal();
        self.engine.create(
            parent.0,
            name,
            creator(req, mode),
            answer(
                reply,
                move |reply: ReplyCreate, (e, opened): (Entry, Opened)| {
                    let fh = FileHandle(opened.fh);
                    if let Some(backing) = opened.backing {
                        match passthrough
                            .backing_for(e.attr.ino, fh.0, &backing, |f| reply.open_backing(f))
                        {
                            Ok(id) => {
                                let attr = file_attr(&e.attr);
                                reply.created_passthrough(
                                    &e.ttl,
                                    &attr,
                                    Generation(0),
                                    fh,
                                    FopenFlags::empty(),
                                    &id,
                                );
                                tracing::debug!("created with passthrough");
                                return;
                            }
                            Err(_) => engine_refusal(fh.0),
                        }
                    }
                    reply.created(
                        &e.ttl,
                        &file_attr(&e.attr),
                        Generation(0),
                        fh,
                        FopenFlags::empty(),
                    )
                },
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span = debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        reply.fail(errno(self.engine.unsupported("hard links")))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _span = debug_span!("symlink", parent = parent.0, ?link_name, ?target).entered();
        self.engine.symlink(
            parent.0,
            link_name,
            target,
            creator(req, 0o777),
            answer(reply, |reply: ReplyEntry, e: Entry| {
                reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0))
            }),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = debug_span!("readlink", ino = ino.0).entered();
        self.engine.readlink(
            ino.0,
            answer(reply, |reply: ReplyData, target: Vec<u8>| {
                reply.data(&target)
            }),
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = debug_span!("mknod", parent = parent.0, ?name).entered();
        reply.fail(errno(self.engine.unsupported("device nodes and fifos")))
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("setxattr", ino = ino.0, ?name).entered();
        self.engine.setxattr(
            ino.0,
            name,
            value,
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = debug_span!("removexattr", ino = ino.0, ?name).entered();
        self.engine.removexattr(
            ino.0,
            name,
            answer(reply, |reply: ReplyEmpty, ()| reply.ok()),
        );
    }
}

/// The caller of a creating request, and the permission bits it asks for.
fn creator(req: &Request, mode: u32) -> Creator {
    Creator {
        uid: req.uid(),
        gid: req.gid(),
        mode: mode & 0o7777,
    }
}
