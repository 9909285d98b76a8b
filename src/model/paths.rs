//! Where each part of a mount lives under `cache_dir`: every path below it is
//! named here, so that the subsystems that share the folder cannot collide.

use std::path::{Path, PathBuf};

/// The one RocksDB (chunk index, registry, pins, access statistics).
pub fn index_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("index")
}

/// The NVMe tier's cache files, one per object version.
pub fn chunks_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("chunks")
}

/// Staging files of files written through the mount.
pub fn staging_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("staging")
}

/// The folder of the control socket, which only the owner may enter.
pub fn control_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("control")
}

/// The control API's Unix socket.
pub fn socket_path(cache_dir: &Path) -> PathBuf {
    control_dir(cache_dir).join("tierfs.sock")
}

/// The log of a mount that runs in the background.
pub fn log_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("tierfs.log")
}

/// `cache_dir` when no option names one: `/var/cache/tierfs` as root, else
/// `$XDG_CACHE_HOME/tierfs` or `~/.cache/tierfs`.
pub fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/tierfs");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("tierfs")
}
