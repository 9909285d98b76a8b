//! Changes made through the mount: files and directories that exist only in this
//! cache until the store has them, renames and removals.

use std::time::SystemTime;

use tierfs_fuse::{DirEntry, FileKind};

use super::{Found, Namespace, Node, ROOT_INO, Tables, join, unusable_name};
use crate::error::{FsError, FsResult};
use crate::model::posix::PosixAttrs;

/// Checks a name given by a creating call (create, mkdir, rename target).
pub fn valid_name(name: &str) -> FsResult<()> {
    if name.len() > super::MAX_NAME {
        return Err(FsError::NameTooLong);
    }
    if name.contains('/') {
        return Err(FsError::InvalidName(format!(
            "'{name}' cannot hold a slash"
        )));
    }
    match unusable_name(name) {
        Some(why) => Err(FsError::InvalidName(format!("'{name}': {why}"))),
        None => Ok(()),
    }
}

impl Tables {
    /// The node of `ino`, which must be known.
    fn known(&self, ino: u64) -> FsResult<Node> {
        self.nodes.get(&ino).cloned().ok_or(FsError::NotFound)
    }

    /// Children made through the mount in `dir`, over what the store listed.
    pub(super) fn add_local_children(&self, dir: u64, found: &mut Found) {
        let Some(local) = self.local.get(&dir) else {
            return;
        };
        for (name, ino) in local {
            if let Some(kind) = self.nodes.get(ino).map(|n| n.kind) {
                found.add(name, *ino, kind);
            }
        }
    }

    pub(super) fn local_child(&self, dir: u64, name: &str) -> Option<Node> {
        let ino = self.local.get(&dir)?.get(name)?;
        self.nodes.get(ino).cloned()
    }

    /// Puts a child into the overlay and into the directory's cached listing.
    /// A directory's entries changed now: its times move.
    fn entries_changed(&mut self, dir: u64) {
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.modified(SystemTime::now());
        }
    }

    fn link_child(&mut self, dir: u64, name: &str, ino: u64, kind: FileKind) {
        self.entries_changed(dir);
        self.local
            .entry(dir)
            .or_default()
            .insert(name.to_string(), ino);
        if let Some(listing) = self.listings.get_mut(&dir) {
            let mut entries: Vec<DirEntry> = listing
                .entries
                .iter()
                .filter(|e| e.name != name || e.name == "." || e.name == "..")
                .cloned()
                .collect();
            entries.push(DirEntry {
                ino,
                name: name.to_string(),
                kind,
            });
            listing.entries = entries.into();
            listing.children.insert(name.to_string(), ino);
        }
    }

    fn unlink_child(&mut self, dir: u64, name: &str) {
        self.entries_changed(dir);
        if let Some(local) = self.local.get_mut(&dir) {
            local.remove(name);
        }
        if let Some(listing) = self.listings.get_mut(&dir)
            && listing.children.remove(name).is_some()
        {
            let entries: Vec<DirEntry> = listing
                .entries
                .iter()
                .filter(|e| e.name != name)
                .cloned()
                .collect();
            listing.entries = entries.into();
        }
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

impl Namespace {
    /// Adds a file or directory made through the mount under `parent`.
    pub fn add_local(
        &self,
        parent: u64,
        name: &str,
        kind: FileKind,
        staged: Option<u64>,
        size: u64,
    ) -> FsResult<Node> {
        let mut tables = self.tables.lock();
        let dir = tables.known(parent)?;
        let path = join(&dir.path, name);
        let key = (path.clone(), super::path_kind(kind));
        let ino = match tables.by_path.get(&key) {
            Some(ino) => *ino,
            None => tables.allocate_ino(key),
        };
        let node = Node {
            ino,
            parent,
            path,
            kind,
            size,
            mtime: SystemTime::now(),
            etag: None,
            staged,
            posix: PosixAttrs::default(),
            posix_known: true,
        };
        tables.nodes.insert(ino, node.clone());
        tables.link_child(parent, name, ino, kind);
        Ok(node)
    }

    /// The inode of `path`, making local directories for it and every parent
    /// that is not known yet (a restart rebuilding what was written).
    pub fn ensure_local(
        &self,
        path: &str,
        kind: FileKind,
        staged: Option<u64>,
        size: u64,
    ) -> FsResult<Node> {
        let mut parent = ROOT_INO;
        let parts: Vec<&str> = path.split('/').collect();
        for dir in &parts[..parts.len() - 1] {
            let existing = self.tables.lock().local_child(parent, dir);
            parent = match existing {
                Some(node) => node.ino,
                None => {
                    self.add_local(parent, dir, FileKind::Directory, None, 0)?
                        .ino
                }
            };
        }
        self.add_local(parent, parts[parts.len() - 1], kind, staged, size)
    }

    /// Forgets a child: unlinked or removed. Open handles keep their node.
    pub fn remove_child(&self, parent: u64, name: &str) {
        let mut tables = self.tables.lock();
        let Some(node) = tables.local_child(parent, name).or_else(|| {
            let ino = tables.listings.get(&parent)?.children.get(name)?;
            tables.nodes.get(ino).cloned()
        }) else {
            return;
        };
        tables.unlink_child(parent, name);
        tables
            .by_path
            .remove(&(node.path.clone(), super::path_kind(node.kind)));
        tables.listings.remove(&node.ino);
    }

    pub fn update(&self, ino: u64, change: impl FnOnce(&mut Node)) -> Option<Node> {
        let mut tables = self.tables.lock();
        let node = tables.nodes.get_mut(&ino)?;
        change(node);
        Some(node.clone())
    }

    /// The inode showing staged file `id`.
    pub fn node_by_staged(&self, id: u64) -> Option<u64> {
        let tables = self.tables.lock();
        tables
            .nodes
            .values()
            .find(|n| n.staged == Some(id))
            .map(|n| n.ino)
    }

    /// A staged file is in the store now: it shows the object from here on.
    pub fn mark_uploaded(&self, ino: u64, size: u64, etag: Option<String>) {
        let mut tables = self.tables.lock();
        let Some(node) = tables.nodes.get_mut(&ino) else {
            return;
        };
        node.staged = None;
        node.size = size;
        node.etag = etag;
        let (parent, path) = (node.parent, node.path.clone());
        let (_, name) = split(&path);
        if let Some(local) = tables.local.get_mut(&parent)
            && local.get(name) == Some(&ino)
        {
            local.remove(name);
        }
    }

    /// Moves `ino` to `new_parent/new_name`, its descendants with it. Returns
    /// the old and new path of every node that moved, `ino` first.
    pub fn rename(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &str,
    ) -> FsResult<Vec<(String, String)>> {
        let mut tables = self.tables.lock();
        let node = tables.known(ino)?;
        let target_dir = tables.known(new_parent)?;
        let new_path = join(&target_dir.path, new_name);
        let (_, old_name) = split(&node.path);
        tables.unlink_child(node.parent, old_name);
        let old_prefix = format!("{}/", node.path);
        let mut moved = Vec::new();
        let inos: Vec<u64> = tables
            .nodes
            .values()
            .filter(|n| n.ino == ino || (n.ino != ROOT_INO && n.path.starts_with(&old_prefix)))
            .map(|n| n.ino)
            .collect();
        for moving in inos {
            let n = tables.nodes.get_mut(&moving).expect("listed above");
            let old = n.path.clone();
            n.path = if moving == ino {
                new_path.clone()
            } else {
                format!("{new_path}{}", &old[node.path.len()..])
            };
            if moving == ino {
                n.parent = new_parent;
            }
            let (kind, path) = (super::path_kind(n.kind), n.path.clone());
            if tables.by_path.get(&(old.clone(), kind)) == Some(&moving) {
                tables.by_path.remove(&(old.clone(), kind));
            }
            tables.by_path.insert((path.clone(), kind), moving);
            if moving == ino {
                moved.insert(0, (old, path));
            } else {
                moved.push((old, path));
            }
        }
        tables.link_child(new_parent, new_name, ino, node.kind);
        if node.staged.is_none()
            && node.kind != FileKind::Directory
            && let Some(local) = tables.local.get_mut(&new_parent)
        {
            // An object renamed in the store is listed from there again.
            local.remove(new_name);
        }
        Ok(moved)
    }
}
