//! The kernel's backing ids for the backing files the engine offers, and the
//! notices that drop an inode's page cache. The engine alone decides which
//! handle passes through which file (one per inode); this module only caches
//! the id the kernel gave for each file while handles use it.

use std::collections::HashMap;
use std::io;
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
        let unsent = match self.page_cache_drops.get() {
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

    /// The backing id for a handle the engine offered passthrough: the one the
    /// file's other passthrough handles on the inode share, registered with the
    /// kernel otherwise. An error when the kernel refuses backing files (an
    /// unprivileged mount); the handle then goes through tierfs, and so should
    /// every later one.
    pub(crate) fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        backing: &Backing,
        register: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> io::Result<Arc<BackingId>> {
        let mut table = self.table.lock().unwrap();
        table
            .add(ino, fh, backing.identity, || register(&backing.file))
            .inspect_err(|e| {
                tracing::info!("FUSE passthrough unavailable ({e}); going through tierfs")
            })
    }

    /// A handle is released: its inode's backing id is closed with its last
    /// passthrough handle.
    pub(crate) fn release(&self, fh: u64) {
        self.table.lock().unwrap().release(fh);
    }
}

/// The ids of the backing files in use, by inode and file. An entry lives
/// exactly as long as its passthrough handles, counted here: a reference to the
/// id that outlives its handle (a reply still being sent) must not keep the id
/// for the next open, which the engine may have offered another file. Which
/// file an inode passes through is the engine's to decide; an id is only ever
/// reused for the same file.
pub(crate) struct BackingTable<Id = BackingId> {
    /// The entry of each passthrough handle.
    by_handle: HashMap<u64, (u64, FileIdentity)>,
    by_file: HashMap<(u64, FileIdentity), SharedId<Id>>,
}

/// A backing id and the handles that use it.
struct SharedId<Id> {
    id: Arc<Id>,
    handles: usize,
}

impl<Id> Default for BackingTable<Id> {
    fn default() -> Self {
        BackingTable {
            by_handle: HashMap::new(),
            by_file: HashMap::new(),
        }
    }
}

impl<Id> BackingTable<Id> {
    /// Counts handle `fh` on `ino`, passed through the file `identity`: the id
    /// the file's handles on the inode share, or a new one from `register`.
    fn add(
        &mut self,
        ino: u64,
        fh: u64,
        identity: FileIdentity,
        register: impl FnOnce() -> io::Result<Id>,
    ) -> io::Result<Arc<Id>> {
        let key = (ino, identity);
        let id = match self.by_file.get_mut(&key) {
            Some(shared) => {
                shared.handles += 1;
                shared.id.clone()
            }
            None => {
                let id = Arc::new(register()?);
                let shared = SharedId {
                    id: id.clone(),
                    handles: 1,
                };
                self.by_file.insert(key, shared);
                id
            }
        };
        self.by_handle.insert(fh, key);
        Ok(id)
    }

    /// Forgets handle `fh`, and its file's id with the last handle using it.
    fn release(&mut self, fh: u64) {
        let Some(key) = self.by_handle.remove(&fh) else {
            return;
        };
        if let Some(shared) = self.by_file.get_mut(&key) {
            shared.handles -= 1;
            if shared.handles == 0 {
                self.by_file.remove(&key);
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
    fn handles_of_one_file_share_its_id_and_another_file_gets_its_own() {
        let mut table = BackingTable::<u32>::default();
        let a = table.add(7, 1, NVME, || Ok(100)).unwrap();
        let b = table
            .add(7, 2, NVME, || panic!("registered twice"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Which file the inode passes through is the engine's to decide: a
        // file offered is never given another file's id.
        assert_eq!(*table.add(7, 3, RAM, || Ok(200)).unwrap(), 200);
        table.release(1);
        table.release(2);
        let c = table.add(7, 4, NVME, || Ok(300)).unwrap();
        assert_eq!(*c, 300, "the last handle closed the first id");
        // A refused registration counts no handle.
        let refused = table.add(8, 5, NVME, || Err(io::Error::other("no")));
        assert!(refused.is_err());
        assert_eq!(*table.add(8, 6, NVME, || Ok(400)).unwrap(), 400);
    }

    #[test]
    fn an_id_still_held_after_its_last_handle_is_released_leaves_the_inode_free() {
        let mut table = BackingTable::<u32>::default();
        // The reply that opened handle 1 still holds the id when the handle
        // is released: the next open may pass through another file.
        let held = table.add(7, 1, NVME, || Ok(100)).unwrap();
        table.release(1);
        let next = table.add(7, 2, RAM, || Ok(200)).unwrap();
        assert_eq!(*next, 200);
        drop(held);
        // Releasing an unknown or already released handle changes nothing.
        table.release(1);
        table.release(99);
        let shared = table.add(7, 3, RAM, || panic!("registered twice")).unwrap();
        assert_eq!(*shared, 200);
    }
}
