//! The kernel mount: its options, and the session that serves it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::adapter::FuseAdapter;
use crate::engine::FsEngine;
use crate::passthrough::Passthrough;

/// How the kernel mount is set up.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// Shown as the source in /proc/mounts.
    pub fsname: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// FUSE dispatch threads, each with its own cloned /dev/fuse descriptor.
    pub threads: usize,
    /// Requests the kernel may have in flight in the background (readahead).
    pub max_background: u16,
}

/// A mounted filesystem; `run` serves it until it is unmounted.
pub struct MountedSession<E: FsEngine + Clone> {
    session: Session<FuseAdapter<E>>,
}

impl<E: FsEngine + Clone> MountedSession<E> {
    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// Mounts `engine` and completes the FUSE handshake, so that the mount is ready
/// when this returns.
pub fn mount<E: FsEngine + Clone>(
    engine: E,
    config: &MountConfig,
) -> io::Result<MountedSession<E>> {
    let mut options = vec![
        MountOption::FSName(config.fsname.clone()),
        MountOption::Subtype("tierfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    options.push(if config.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.threads.max(1));
    fuse_config.clone_fd = config.threads > 1;
    let attached = engine.clone();
    let adapter = FuseAdapter {
        engine,
        max_background: config.max_background,
        passthrough: Arc::new(Passthrough::default()),
    };
    let passthrough = adapter.passthrough.clone();
    let session = Session::new(adapter, &config.mountpoint, &fuse_config)?;
    passthrough.start_notices(session.notifier())?;
    attached.attach_kernel(passthrough);
    Ok(MountedSession { session })
}
