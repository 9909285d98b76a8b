//! Modes, owners, times and symbolic links through a real mount, over a local
//! directory and over S3 (s3s-fs): they survive a fresh mount with an empty
//! cache, and the kernel enforces them for other users.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Backend, Mount};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the modification time with nanoseconds (`touch -d @SEC.NSEC`).
fn set_mtime(path: &Path, when: &str) {
    let status = Command::new("touch")
        .args(["-m", "-h", "-d", &format!("@{when}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes a file and waits until the store has it and the mount shows the
/// object (no longer the staged copy).
fn write_uploaded(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(data).unwrap();
    // durability=remote: fsync returns once the object is in the store.
    file.sync_all().unwrap();
    drop(file);
    for _ in 0..500 {
        let tier = xattr::get(path, "user.tierfs.tier")
            .unwrap()
            .unwrap_or_default();
        if String::from_utf8_lossy(&tier).contains("store 100%") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never showed as uploaded", path.display());
}

fn survives_a_fresh_mount(backend: &Backend) {
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(backend, cache.path(), &["durability=remote"]);
    let script = mount.path("run.sh");
    std::fs::write(&script, b"#!/bin/sh\necho ok\n").unwrap();
    chmod(&script, 0o750);
    std::os::unix::fs::chown(&script, Some(1000), Some(100)).unwrap();
    set_mtime(&script, "1600000000.25");
    std::fs::create_dir(mount.path("step-1000")).unwrap();
    std::fs::create_dir(mount.path("empty")).unwrap();
    chmod(&mount.path("empty"), 0o710);
    std::os::unix::fs::symlink("step-1000/model.bin", mount.path("latest")).unwrap();
    // A change after the upload is kept too.
    write_uploaded(&mount.path("step-1000/model.bin"), b"weights");
    chmod(&mount.path("step-1000/model.bin"), 0o600);
    let long = mount.path(&"n".repeat(256));
    let err = std::fs::write(&long, b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    write_uploaded(&mount.path("done"), b"");
    std::fs::File::open(&script).unwrap().sync_all().unwrap();
    mount.unmount();

    let fresh = tempfile::tempdir().unwrap();
    let again = Mount::new(backend, fresh.path(), &[]);
    let meta = std::fs::metadata(again.path("run.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750, "{}", again.log());
    assert_eq!((meta.uid(), meta.gid()), (1000, 100));
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
    let model = std::fs::metadata(again.path("step-1000/model.bin")).unwrap();
    assert_eq!(model.permissions().mode() & 0o7777, 0o600);
    let link = std::fs::symlink_metadata(again.path("latest")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(again.path("latest")).unwrap(),
        Path::new("step-1000/model.bin")
    );
    assert_eq!(std::fs::read(again.path("latest")).unwrap(), b"weights");
    // A local store keeps directories with their records; S3 keeps none yet.
    if matches!(backend, Backend::Local(_)) {
        assert_eq!(mode(&again.path("empty")), 0o710);
    }
    let out = Command::new(again.path("run.sh")).output().unwrap();
    assert_eq!(out.stdout, b"ok\n");
    again.unmount();
}

#[test]
fn modes_owners_times_and_links_survive_a_fresh_mount_of_a_local_store() {
    survives_a_fresh_mount(&Backend::local());
}

#[test]
fn modes_owners_times_and_links_survive_a_fresh_mount_of_s3() {
    survives_a_fresh_mount(&Backend::s3());
}

/// Runs `sh -c script` as user `nobody` (65534).
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

#[test]
fn another_user_gets_only_what_the_modes_allow_with_allow_other() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let backend = Backend::local();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["allow_other"]);
    // The mount point itself must be reachable by the other user.
    chmod(mount.dir.path(), 0o755);
    let secret = mount.path("secret.bin");
    std::fs::write(&secret, b"s3cr3t").unwrap();
    chmod(&secret, 0o600);
    let shared = mount.dir.path().display().to_string();
    let denied = as_nobody(&format!("cat {shared}/secret.bin"));
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    chmod(&secret, 0o644);
    std::thread::sleep(Duration::from_millis(50));
    let allowed = as_nobody(&format!("cat {shared}/secret.bin"));
    assert_eq!(allowed.stdout, b"s3cr3t");
    // A directory writable by all: the other user's new file is theirs.
    std::fs::create_dir(mount.path("drop")).unwrap();
    chmod(&mount.path("drop"), 0o777);
    let made = as_nobody(&format!(
        "echo hi > {shared}/drop/mine && stat -c %u {shared}/drop/mine"
    ));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&made.stdout).trim(), "65534");
    // Only the owner (or root) may change the mode.
    let chmod_other = as_nobody(&format!("chmod 777 {shared}/secret.bin"));
    assert!(!chmod_other.status.success());
    mount.unmount();
}
