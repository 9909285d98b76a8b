//! The kernel's backing files for passthrough handles, shared per inode, and the
//! notices that drop an inode's page cache.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use fuser::{BackingId, INodeNo, Notifier};

use crate::engine::{Backing, FileIdentity, KernelNotices};

/// Work for the notice thread once an inode's page cache is dropped.
type AfterDrop = Box<dyn FnOnce() + Send>;

/// Part of an inode's page cache to drop: `len` bytes from `offset`, all of it
/// when `len` is 0.
struct PageCacheDrop {
    ino: INodeNo,
    offset: u64,
    len: u64,
    then: Option<AfterDrop>,
}

/// Backing ids the kernel gave for passthrough opens, kept until release.
#[derive(Default)]
pub(crate) struct Passthrough {
    pub(crate) enabled: AtomicBool,
    table: Mutex<BackingTable>,
    /// Inodes whose page cache to drop, for the thread that tells the kernel;
    /// set once the session exists.
    page_cache_drops: OnceLock<mpsc::Sender<PageCacheDrop>>,
}

impl Passthrough {
    /// Starts the thread that sends the kernel notices to drop page caches: the
    /// kernel does the work inside the notice's write, which must not hold up a
    /// FUSE worker. It ends with the session, when this is dropped.
    pub(crate) fn start_notices(&self, notifier: Notifier) -> io::Result<()> {
        let (sender, drops) = mpsc::channel::<PageCacheDrop>();
        std::thread::Builder::new()
            .name("tierfs-notify".into())
            .spawn(move || {
                for PageCacheDrop {
                    ino,
                    offset,
                    len,
                    then,
                } in drops
                {
                    // The inode may be gone already (ENOENT): nothing is cached then.
                    match notifier.inval_inode(ino, offset as i64, len as i64) {
                        Ok(()) => tracing::debug!(ino = ino.0, offset, len, "page cache dropped"),
                        Err(e) => tracing::debug!(ino = ino.0, "page cache not dropped: {e}"),
                    }
                    if let Some(then) = then {
                        then();
                    }
                }
            })?;
        let _ = self.page_cache_drops.set(sender);
        Ok(())
    }

    /// Has an inode's page cache dropped in the background, when its next open
    /// will pass through.
    pub(crate) fn drop_page_cache(&self, ino: INodeNo) {
        self.send_drop(ino, 0, 0, None);
    }

    /// Has `len` bytes from `offset` of an inode's page cache dropped in the
    /// background.
    pub(crate) fn drop_page_cache_range(&self, ino: INodeNo, offset: u64, len: u64) {
        if len > 0 {
            self.send_drop(ino, offset, len, None);
        }
    }

    /// Has an inode's page cache dropped, then runs `then` (a reply that waits
    /// for the drop); runs it at once when nothing can be dropped.
    pub(crate) fn drop_page_cache_then(&self, ino: INodeNo, then: impl FnOnce() + Send + 'static) {
        self.send_drop(ino, 0, 0, Some(Box::new(then)));
    }

    fn send_drop(&self, ino: INodeNo, offset: u64, len: u64, then: Option<AfterDrop>) {
        let drops = self
            .page_cache_drops
            .get()
            .filter(|_| self.enabled.load(Ordering::Relaxed));
        let unsent = match drops {
            Some(drops) => drops
                .send(PageCacheDrop {
                    ino,
                    offset,
                    len,
                    then,
                })
                .err()
                .and_then(|e| e.0.then),
            None => then,
        };
        if let Some(then) = unsent {
            then();
        }
    }

    /// The backing id for a handle the engine offered passthrough: shared with
    /// the inode's other passthrough handles of the same file, registered with
    /// the kernel otherwise. None when it cannot be had (another file is passed
    /// through, or the kernel refuses backing files, which turns passthrough off);
    /// the handle then goes through tierfs.
    pub(crate) fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        backing: &Backing,
        register: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut table = self.table.lock().unwrap();
        match table.add(ino, fh, backing.identity, || register(&backing.file)) {
            Ok(Some(id)) => Some(id),
            Ok(None) => {
                // The engine offers the file the inode's handles use, and the
                // table forgets a handle before the engine does: this happens
                // only if the two disagree. The kernel would refuse a second
                // backing file.
                tracing::warn!(
                    ino,
                    "another backing file is passed through; going through tierfs"
                );
                None
            }
            Err(e) => {
                // Unprivileged mounts cannot register backing files: stop
                // offering them, read and write through tierfs.
                tracing::info!("FUSE passthrough unavailable ({e}); going through tierfs");
                self.enabled.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// A handle is released: its inode's backing id is closed with its last
    /// passthrough handle.
    pub(crate) fn release(&self, fh: u64) {
        self.table.lock().unwrap().release(fh);
    }
}

/// The kernel allows one backing file per inode at a time, so every passthrough
/// open of an inode shares one backing id. An inode's entry lives exactly as
/// long as its passthrough handles, counted here: a reference to the id that
/// outlives its handle (a reply still being sent) must not make the inode look
/// in use to the next open, which the engine may have offered another file.
pub(crate) struct BackingTable<Id = BackingId> {
    /// The inode of each passthrough handle.
    by_handle: HashMap<u64, u64>,
    by_inode: HashMap<u64, InodeBacking<Id>>,
}

/// The backing file an inode's passthrough handles share.
struct InodeBacking<Id> {
    identity: FileIdentity,
    id: Arc<Id>,
    handles: usize,
}

impl<Id> Default for BackingTable<Id> {
    fn default() -> Self {
        BackingTable {
            by_handle: HashMap::new(),
            by_inode: HashMap::new(),
        }
    }
}

impl<Id> BackingTable<Id> {
    /// Counts handle `fh` on `ino`, passed through the file `identity`: the id
    /// the inode's handles share, or a new one from `register` when it has none.
    /// None when the inode's handles use another file.
    fn add(
        &mut self,
        ino: u64,
        fh: u64,
        identity: FileIdentity,
        register: impl FnOnce() -> io::Result<Id>,
    ) -> io::Result<Option<Arc<Id>>> {
        let id = match self.by_inode.get_mut(&ino) {
            Some(live) if live.identity == identity => {
                live.handles += 1;
                live.id.clone()
            }
            Some(_) => return Ok(None),
            None => {
                let id = Arc::new(register()?);
                let live = InodeBacking {
                    identity,
                    id: id.clone(),
                    handles: 1,
                };
                self.by_inode.insert(ino, live);
                id
            }
        };
        self.by_handle.insert(fh, ino);
        Ok(Some(id))
    }

    /// Forgets handle `fh`, and its inode's id with the inode's last handle.
    fn release(&mut self, fh: u64) {
        let Some(ino) = self.by_handle.remove(&fh) else {
            return;
        };
        if let Some(live) = self.by_inode.get_mut(&ino) {
            live.handles -= 1;
            if live.handles == 0 {
                self.by_inode.remove(&ino);
            }
        }
    }
}

impl KernelNotices for Passthrough {
    fn drop_page_cache(&self, ino: u64) {
        Passthrough::drop_page_cache(self, INodeNo(ino));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVME: FileIdentity = FileIdentity { dev: 1, ino: 10 };
    const RAM: FileIdentity = FileIdentity { dev: 2, ino: 20 };

    #[test]
    fn handles_of_one_file_share_its_id_and_other_files_wait_for_them() {
        let mut table = BackingTable::<u32>::default();
        let a = table.add(7, 1, NVME, || Ok(100)).unwrap().unwrap();
        let b = table
            .add(7, 2, NVME, || panic!("registered twice"))
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(table.add(7, 3, RAM, || Ok(200)).unwrap().is_none());
        table.release(1);
        assert!(table.add(7, 3, RAM, || Ok(200)).unwrap().is_none());
        table.release(2);
        let c = table.add(7, 3, RAM, || Ok(200)).unwrap().unwrap();
        assert_eq!(*c, 200);
        // A refused registration counts no handle.
        let refused = table.add(8, 4, NVME, || Err(io::Error::other("no")));
        assert!(refused.is_err());
        assert!(table.add(8, 5, RAM, || Ok(300)).unwrap().is_some());
    }

    #[test]
    fn an_id_still_held_after_its_last_handle_is_released_leaves_the_inode_free() {
        let mut table = BackingTable::<u32>::default();
        // The reply that opened handle 1 still holds the id when the handle
        // is released: the next open may pass through another file.
        let held = table.add(7, 1, NVME, || Ok(100)).unwrap().unwrap();
        table.release(1);
        let next = table.add(7, 2, RAM, || Ok(200)).unwrap();
        assert_eq!(next.as_deref(), Some(&200));
        drop(held);
        // Releasing an unknown or already released handle changes nothing.
        table.release(1);
        table.release(99);
        let shared = table.add(7, 3, RAM, || panic!("registered twice")).unwrap();
        assert_eq!(shared.as_deref(), Some(&200));
    }
}
