//! The POSIX attributes a file, directory or symbolic link carries in the
//! store: its mode (with the file-type bits, as `st_mode`), owner and times.
//! Each is optional: an object written by a tool that keeps none shows the
//! mount's defaults for what it lacks.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The file-type bits of a mode.
pub const S_IFMT: u32 = libc::S_IFMT;
pub const S_IFREG: u32 = libc::S_IFREG;
pub const S_IFDIR: u32 = libc::S_IFDIR;
pub const S_IFLNK: u32 = libc::S_IFLNK;

/// The permission bits of a mode (with set-id and sticky bits).
pub const PERMISSION_BITS: u32 = 0o7777;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PosixAttrs {
    /// `st_mode`: the file type and permission bits.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

impl PosixAttrs {
    /// No attribute at all: the object shows the defaults.
    pub fn is_empty(&self) -> bool {
        *self == PosixAttrs::default()
    }

    /// The permission bits, if a mode is set.
    pub fn perm(&self) -> Option<u16> {
        self.mode.map(|m| (m & PERMISSION_BITS) as u16)
    }

    /// Whether the mode says symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & S_IFMT == S_IFLNK)
    }

    /// These attributes with every one that `change` sets taken from it.
    pub fn changed_by(self, change: &PosixAttrs) -> PosixAttrs {
        PosixAttrs {
            mode: change.mode.or(self.mode),
            uid: change.uid.or(self.uid),
            gid: change.gid.or(self.gid),
            mtime: change.mtime.or(self.mtime),
            ctime: change.ctime.or(self.ctime),
            atime: change.atime.or(self.atime),
        }
    }

    /// A mode of file type `kind_bits` with the permission bits of `mode`.
    pub fn mode_of(kind_bits: u32, mode: u32) -> u32 {
        kind_bits | (mode & PERMISSION_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_overrides_only_what_it_sets() {
        let now = SystemTime::now();
        let old = PosixAttrs {
            mode: Some(S_IFREG | 0o644),
            uid: Some(1),
            mtime: Some(now),
            ..PosixAttrs::default()
        };
        let change = PosixAttrs {
            mode: Some(S_IFREG | 0o750),
            gid: Some(2),
            ..PosixAttrs::default()
        };
        let new = old.changed_by(&change);
        assert_eq!(new.perm(), Some(0o750));
        assert_eq!((new.uid, new.gid, new.mtime), (Some(1), Some(2), Some(now)));
        assert!(!new.is_symlink());
        assert!(PosixAttrs::default().is_empty());
        let link = PosixAttrs {
            mode: Some(PosixAttrs::mode_of(S_IFLNK, 0o777)),
            ..PosixAttrs::default()
        };
        assert!(link.is_symlink());
    }
}
