//! The engine as the FUSE adapter sees it: each [`FsEngine`] call becomes an
//! [`EngineCore`] operation on the tokio runtime, answered when it finishes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tierfs_fuse::{
    AttrChange, Creator, DirEntry, Entry, Errno, Flushed, FsEngine, KernelNotices, OpenMode,
    Opened, ReadData, Released, Reply, StatFs,
};
use tracing::Instrument;

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};

/// The engine as the FUSE adapter sees it: each call runs on the runtime.
#[derive(Clone)]
pub struct FuseBridge {
    core: Arc<EngineCore>,
    runtime: tokio::runtime::Handle,
    /// Unsupported operations already logged.
    refused: Arc<Mutex<HashSet<&'static str>>>,
}

impl FuseBridge {
    pub fn new(core: Arc<EngineCore>, runtime: tokio::runtime::Handle) -> FuseBridge {
        FuseBridge {
            core,
            runtime,
            refused: Arc::default(),
        }
    }

    /// Runs `work` on the runtime and answers with its result; its latency counts
    /// under `op`.
    fn spawn<T, F>(
        &self,
        op: &'static str,
        reply: Reply<T>,
        work: impl FnOnce(Arc<EngineCore>) -> F,
    ) where
        T: Send + 'static,
        F: Future<Output = FsResult<T>> + Send + 'static,
    {
        let fut = work(self.core.clone());
        let span = tracing::Span::current();
        let core = self.core.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(
            async move {
                let result = fut.await;
                core.stats.fuse_latency.observe(op, started.elapsed());
                answer(reply, result)
            }
            .instrument(span),
        );
    }
}

fn answer<T>(reply: Reply<T>, result: FsResult<T>) {
    if let Err(e) = &result {
        match e {
            FsError::NotFound
            | FsError::NoAttribute
            | FsError::Unlistable(_)
            | FsError::Exists
            | FsError::NotEmpty => {
                tracing::debug!("{e}")
            }
            _ => tracing::warn!("{e}"),
        }
    }
    reply(result.map_err(|e| e.errno()))
}

/// A name to look up: one that is not UTF-8 cannot name an object, so is absent.
fn existing_name(name: &OsStr) -> FsResult<String> {
    name.to_str().map(str::to_string).ok_or(FsError::NotFound)
}

/// A name to create: one that is not UTF-8 cannot become an object key.
fn new_name(name: &OsStr) -> FsResult<String> {
    name.to_str()
        .map(str::to_string)
        .ok_or_else(|| FsError::InvalidName("not UTF-8".into()))
}

impl FsEngine for FuseBridge {
    fn attach_kernel(&self, notices: Arc<dyn KernelNotices>) {
        self.core.attach_kernel(notices);
    }

    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply<Entry>) {
        let name = existing_name(name);
        self.spawn("lookup", reply, |core| async move {
            let node = core.lookup(parent, &name?).await?;
            Ok(core.entry(&node))
        });
    }

    fn forget(&self, _ino: u64, _nlookup: u64) {
        // Inode numbers live as long as the mount (see namespace.rs).
    }

    fn getattr(&self, ino: u64, reply: Reply<Entry>) {
        match self.core.node(ino) {
            // A version whose record is not read yet: read it first.
            Ok(node) if !node.posix_known => self.spawn("getattr", reply, |core| async move {
                let node = core.with_posix(node).await?;
                Ok(core.entry(&node))
            }),
            found => answer(reply, found.map(|n| self.core.entry(&n))),
        }
    }

    fn opendir(&self, ino: u64, reply: Reply<u64>) {
        self.spawn(
            "opendir",
            reply,
            |core| async move { core.opendir(ino).await },
        );
    }

    fn readdir(&self, _ino: u64, fh: u64, reply: Reply<Arc<[DirEntry]>>) {
        answer(reply, self.core.readdir(fh));
    }

    fn releasedir(&self, _ino: u64, fh: u64) {
        self.core.releasedir(fh);
    }

    fn open(&self, ino: u64, mode: OpenMode, reply: Reply<Opened>) {
        self.spawn("open", reply, |core| async move {
            core.open(ino, mode.write, mode.truncate).await
        });
    }

    fn create(&self, parent: u64, name: &OsStr, creator: Creator, reply: Reply<(Entry, Opened)>) {
        let name = new_name(name);
        self.spawn("create", reply, |core| async move {
            let (node, staged) = core.create(parent, &name?, creator).await?;
            let opened = core.add_staged_handle(node.ino, staged, true)?;
            Ok((core.entry(&node), opened))
        });
    }

    fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        reply: Reply<u32>,
    ) {
        // A write to the local staging file is answered here, on the dispatch
        // thread; only a write that must wait for room goes to the runtime.
        let staged = match self.core.writable_handle(fh) {
            Ok(staged) => staged,
            Err(e) => return answer(reply, Err(e)),
        };
        if kill_suidgid && let Err(e) = self.core.kill_suidgid(ino) {
            return answer(reply, Err(e));
        }
        match self.core.write_staged(&staged, offset, data) {
            Err(FsError::NoSpace(_)) => {
                let data = data.to_vec();
                self.spawn("write", reply, |core| async move {
                    core.write_when_room(&staged, offset, &data).await
                });
            }
            result => answer(reply, result),
        }
    }

    fn setattr(&self, ino: u64, fh: Option<u64>, change: AttrChange, reply: Reply<Entry>) {
        self.spawn("setattr", reply, |core| async move {
            let node = core.setattr(ino, fh, change).await?;
            Ok(core.entry(&node))
        });
    }

    fn fsync(&self, _ino: u64, fh: u64, reply: Reply<()>) {
        self.spawn("fsync", reply, |core| async move { core.fsync(fh).await });
    }

    fn mkdir(&self, parent: u64, name: &OsStr, creator: Creator, reply: Reply<Entry>) {
        let name = new_name(name);
        self.spawn("mkdir", reply, |core| async move {
            let node = core.mkdir(parent, &name?, creator).await?;
            Ok(core.entry(&node))
        });
    }

    fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        creator: Creator,
        reply: Reply<Entry>,
    ) {
        let name = new_name(name);
        let target = new_name(target.as_os_str());
        self.spawn("symlink", reply, |core| async move {
            let node = core.symlink(parent, &name?, &target?, creator).await?;
            Ok(core.entry(&node))
        });
    }

    fn readlink(&self, ino: u64, reply: Reply<Vec<u8>>) {
        self.spawn(
            "readlink",
            reply,
            |core| async move { core.readlink(ino).await },
        );
    }

    fn unlink(&self, parent: u64, name: &OsStr, reply: Reply<()>) {
        let name = existing_name(name);
        self.spawn("unlink", reply, |core| async move {
            core.unlink(parent, &name?).await
        });
    }

    fn rmdir(&self, parent: u64, name: &OsStr, reply: Reply<()>) {
        let name = existing_name(name);
        self.spawn("rmdir", reply, |core| async move {
            core.rmdir(parent, &name?).await
        });
    }

    fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        target: &OsStr,
        no_replace: bool,
        reply: Reply<()>,
    ) {
        // Either name not in UTF-8 is refused as a name the store cannot hold.
        let (name, target) = (new_name(name), new_name(target));
        self.spawn("rename", reply, |core| async move {
            core.rename(parent, &name?, new_parent, &target?, no_replace)
                .await
        });
    }

    fn unsupported(&self, what: &'static str) -> Errno {
        if self.refused.lock().insert(what) {
            tracing::info!("{what} are not supported by tierfs");
        }
        FsError::Unsupported(what.to_string()).errno()
    }

    fn read(&self, _ino: u64, fh: u64, offset: u64, size: u32, reply: Reply<ReadData>) {
        self.spawn("read", reply, |core| async move {
            core.kernel_read(fh, offset, size).await
        });
    }

    fn flush(&self, _ino: u64, fh: u64, reply: Reply<Flushed>) {
        self.spawn("flush", reply, |core| async move { core.flush(fh).await });
    }

    fn release(&self, _ino: u64, fh: u64, reply: Reply<Released>) {
        let _runtime = self.runtime.enter();
        answer(reply, Ok(self.core.release(fh)));
    }

    fn passthrough_refused(&self, fh: u64) {
        self.core.end_passthrough(fh);
    }

    fn passthrough_unavailable(&self) {
        self.core.passthrough_unavailable();
    }

    fn statfs(&self, reply: Reply<StatFs>) {
        answer(reply, Ok(self.core.statfs()));
    }

    fn getxattr(&self, ino: u64, name: &OsStr, reply: Reply<Vec<u8>>) {
        // Names tierfs does not know (security.*, system.* ...) need no runtime.
        let Some(name) = name.to_str().filter(|n| n.starts_with("user.tierfs.")) else {
            return answer(reply, self.core.node(ino).and(Err(FsError::NoAttribute)));
        };
        let name = name.to_string();
        self.spawn("getxattr", reply, |core| async move {
            core.get_xattr(ino, &name).await
        });
    }

    fn listxattr(&self, ino: u64, reply: Reply<Vec<u8>>) {
        answer(reply, self.core.list_xattr(ino));
    }

    fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], reply: Reply<()>) {
        let name = name.to_string_lossy().into_owned();
        let value = value.to_vec();
        self.spawn("setxattr", reply, |core| async move {
            core.set_xattr(ino, &name, &value).await
        });
    }

    fn removexattr(&self, ino: u64, name: &OsStr, reply: Reply<()>) {
        let name = name.to_string_lossy().into_owned();
        answer(reply, self.core.remove_xattr(ino, &name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn a_name_that_is_not_utf8_is_absent_and_cannot_be_created() {
        let bad = OsStr::from_bytes(b"caf\xe9");
        assert_eq!(existing_name(bad).unwrap_err().errno().0, libc::ENOENT);
        assert_eq!(new_name(bad).unwrap_err().errno().0, libc::EINVAL);
        assert_eq!(new_name(OsStr::new("café")).unwrap(), "café");
    }
}
