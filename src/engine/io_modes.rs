//! How the kernel serves each open inode. It reads and writes an inode either
//! through tierfs (cached) or straight from one backing file (FUSE passthrough),
//! never both, and it takes one backing file per inode at a time: it fails an
//! open of the other kind, or with another backing file, with EIO. This table
//! keeps every handle tierfs hands out within those rules.

use std::collections::HashMap;

use parking_lot::Mutex;
use tierfs_fuse::{Backing, FileIdentity};

use crate::error::{FsError, FsResult};

#[derive(Debug, Default)]
struct InodeHandles {
    /// Handles read and written through tierfs.
    cached: usize,
    /// The backing file of the passthrough handles, and how many there are.
    backing: Option<(FileIdentity, usize)>,
}

#[derive(Default)]
pub struct InodeIoModes {
    inodes: Mutex<HashMap<u64, InodeHandles>>,
}

impl InodeIoModes {
    /// Counts a new handle on `ino`. `offer` is asked for a backing file only
    /// while no handle on the inode goes through tierfs, and is told the backing
    /// file the inode already has: it must offer that one or none. A handle
    /// without a backing file goes through tierfs, which an inode with a backing
    /// file cannot have: that open fails with [`FsError::Busy`].
    pub fn add(
        &self,
        ino: u64,
        offer: impl FnOnce(Option<FileIdentity>) -> FsResult<Option<Backing>>,
    ) -> FsResult<Option<Backing>> {
        let mut inodes = self.inodes.lock();
        let handles = inodes.entry(ino).or_default();
        if handles.cached > 0 {
            handles.cached += 1;
            return Ok(None);
        }
        let live = handles.backing.map(|(identity, _)| identity);
        let offered = match offer(live) {
            Ok(offered) => offered,
            Err(e) => {
                drop_if_unused(&mut inodes, ino);
                return Err(e);
            }
        };
        let handles = inodes.get_mut(&ino).expect("entry made above");
        match (offered, &mut handles.backing) {
            (Some(backing), Some((identity, count))) if backing.identity == *identity => {
                *count += 1;
                Ok(Some(backing))
            }
            (Some(backing), None) => {
                handles.backing = Some((backing.identity, 1));
                Ok(Some(backing))
            }
            (None, None) => {
                handles.cached += 1;
                Ok(None)
            }
            (_, Some(_)) => Err(backing_in_use(ino)),
        }
    }

    /// The backing file the kernel reads `ino` from, while a handle uses it.
    pub fn live_backing(&self, ino: u64) -> Option<FileIdentity> {
        self.inodes
            .lock()
            .get(&ino)
            .and_then(|h| h.backing.map(|(identity, _)| identity))
    }

    /// Whether `ino` has exactly one handle, read and written through tierfs.
    pub fn sole_cached_handle(&self, ino: u64) -> bool {
        self.inodes
            .lock()
            .get(&ino)
            .is_some_and(|h| h.cached == 1 && h.backing.is_none())
    }

    /// A handle offered a backing file goes through tierfs after all (the
    /// kernel refused the backing file).
    pub fn passthrough_refused(&self, ino: u64) {
        let mut inodes = self.inodes.lock();
        let handles = inodes.entry(ino).or_default();
        drop_backing_handle(handles);
        handles.cached += 1;
    }

    /// A handle is released; true when it was the inode's last.
    pub fn release(&self, ino: u64, passthrough: bool) -> bool {
        let mut inodes = self.inodes.lock();
        let Some(handles) = inodes.get_mut(&ino) else {
            return true;
        };
        if passthrough {
            drop_backing_handle(handles);
        } else {
            handles.cached = handles.cached.saturating_sub(1);
        }
        drop_if_unused(&mut inodes, ino);
        !inodes.contains_key(&ino)
    }
}

/// The error for an open that cannot share the backing file in use, logged.
pub fn backing_in_use(ino: u64) -> FsError {
    let e = FsError::Busy(
        "the kernel reads this file from a local copy that open handles still use; \
         it can be opened this way once they are closed"
            .into(),
    );
    tracing::info!(ino, "open refused: {e}");
    e
}

fn drop_backing_handle(handles: &mut InodeHandles) {
    if let Some((_, count)) = &mut handles.backing {
        *count -= 1;
        if *count == 0 {
            handles.backing = None;
        }
    }
}

fn drop_if_unused(inodes: &mut HashMap<u64, InodeHandles>, ino: u64) {
    if inodes
        .get(&ino)
        .is_some_and(|h| h.cached == 0 && h.backing.is_none())
    {
        inodes.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn backing(file: &File) -> Backing {
        Backing::new(file.try_clone().unwrap()).unwrap()
    }

    #[test]
    fn handles_of_an_inode_share_one_backing_file_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let a = File::create(dir.path().join("a")).unwrap();
        let b = File::create(dir.path().join("b")).unwrap();
        let modes = InodeIoModes::default();

        // The first handle sets the backing file; the next is told of it.
        assert!(
            modes
                .add(1, |live| Ok(live.map_or(Some(backing(&a)), |_| None)))
                .unwrap()
                .is_some()
        );
        let told = std::cell::Cell::new(None);
        let shared = modes
            .add(1, |live| {
                told.set(live);
                Ok(Some(backing(&a)))
            })
            .unwrap();
        assert!(shared.is_some());
        assert_eq!(told.get(), Some(FileIdentity::of(&a).unwrap()));

        // Another file, or none, cannot join while the backing file is in use.
        let other = modes.add(1, |_| Ok(Some(backing(&b))));
        assert!(matches!(other, Err(FsError::Busy(_))), "{other:?}");
        let cached = modes.add(1, |_| Ok(None));
        assert_eq!(cached.unwrap_err().errno().0, libc::ETXTBSY);

        // Once both handles are released the inode may go through tierfs.
        modes.release(1, true);
        assert!(modes.live_backing(1).is_some());
        modes.release(1, true);
        assert_eq!(modes.live_backing(1), None);
        assert!(modes.add(1, |_| Ok(None)).unwrap().is_none());

        // A handle through tierfs keeps every later one there: none is asked.
        let asked = modes.add(1, |_| panic!("offer asked while a handle is cached"));
        assert!(asked.unwrap().is_none());
        modes.release(1, false);
        modes.release(1, false);
        assert!(modes.add(1, |_| Ok(Some(backing(&b)))).unwrap().is_some());
    }

    #[test]
    fn a_refused_backing_file_makes_the_handle_cached() {
        let dir = tempfile::tempdir().unwrap();
        let a = File::create(dir.path().join("a")).unwrap();
        let modes = InodeIoModes::default();
        assert!(modes.add(7, |_| Ok(Some(backing(&a)))).unwrap().is_some());
        modes.passthrough_refused(7);
        assert_eq!(modes.live_backing(7), None);
        assert!(modes.add(7, |_| panic!("asked")).unwrap().is_none());
        modes.release(7, false);
        modes.release(7, false);
        assert!(modes.inodes.lock().is_empty());
    }
}
