//! Modes, owners, times and links over a local-directory store: set through
//! one engine, seen by another with a cache of its own.

use std::time::{Duration, UNIX_EPOCH};

use tierfs_fuse::{AttrChange, Creator, FileKind};

use crate::engine::testing::{EngineFixture, ME, errno};
use crate::model::posix::{S_IFLNK, S_IFREG};
use crate::namespace::ROOT_INO;
use crate::store::posix_metadata::read_local_posix;

const ALICE: Creator = Creator {
    uid: 1000,
    gid: 100,
    mode: 0o750,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_its_creators_with_its_mode_in_the_store_and_in_another_mount() {
    let f = EngineFixture::new();
    let node = f
        .write_file_as(ROOT_INO, "run.sh", b"#!/bin/sh\n", ALICE)
        .await;
    let attr = f.core.entry(&node).attr;
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o750, 1000, 100));
    let stored = read_local_posix(&f.store.path().join("run.sh"));
    assert_eq!(stored.mode, Some(S_IFREG | 0o750));
    assert_eq!((stored.uid, stored.gid), (Some(1000), Some(100)));

    let other = f.another_mount(|_| {});
    let seen = other.core.entry(&other.node("run.sh").await).attr;
    assert_eq!((seen.perm, seen.uid, seen.gid), (0o750, 1000, 100));
    assert_eq!(seen.mtime, attr.mtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chmod_chown_and_utimens_on_an_uploaded_file_change_only_its_record() {
    let f = EngineFixture::new();
    let node = f.write_file(ROOT_INO, "w.bin", b"weights").await;
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let change = AttrChange {
        mode: Some(0o4711),
        uid: Some(7),
        gid: Some(8),
        mtime: Some(when),
        atime: Some(when),
        ..AttrChange::default()
    };
    let changed = f.core.setattr(node.ino, None, change).await.unwrap();
    let attr = f.core.entry(&changed).attr;
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o4711, 7, 8));
    assert_eq!((attr.mtime, attr.atime), (when, when));
    assert!(attr.ctime > when);
    assert_eq!(f.stored("w.bin").unwrap(), b"weights");

    let other = f.another_mount(|_| {});
    let seen = other.core.entry(&other.node("w.bin").await).attr;
    assert_eq!(
        (seen.perm, seen.uid, seen.gid, seen.mtime),
        (0o4711, 7, 8, when)
    );
    // With the records off, the mount's defaults show.
    let plain = f.another_mount(|o| o.posix_metadata = false);
    let seen = plain.core.entry(&plain.node("w.bin").await).attr;
    assert_eq!(
        (seen.perm, seen.uid),
        (
            0o644,
            plain
                .core
                .entry(&plain.core.node(ROOT_INO).unwrap())
                .attr
                .uid
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_set_before_the_upload_goes_with_it() {
    let f = EngineFixture::new();
    let (node, staged) = f.core.create(ROOT_INO, "late.bin", ME).await.unwrap();
    let opened = f
        .core
        .add_staged_handle(node.ino, staged.clone(), true)
        .unwrap();
    f.core.write_staged(&staged, 0, b"abc").unwrap();
    let chmod = AttrChange {
        mode: Some(0o600),
        ..AttrChange::default()
    };
    f.core
        .setattr(node.ino, Some(opened.fh), chmod)
        .await
        .unwrap();
    f.core.fsync(opened.fh).await.unwrap();
    f.core.release(opened.fh);
    f.settled().await;
    let stored = read_local_posix(&f.store.path().join("late.bin"));
    assert_eq!(stored.mode, Some(S_IFREG | 0o600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_is_an_object_holding_its_target() {
    let f = EngineFixture::new();
    let link = f
        .core
        .symlink(ROOT_INO, "latest", "step-1000/model.safetensors", ME)
        .await
        .unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    let attr = f.core.entry(&link).attr;
    assert_eq!((attr.perm, attr.size), (0o777, 27));
    assert_eq!(f.stored("latest").unwrap(), b"step-1000/model.safetensors");
    assert_eq!(
        read_local_posix(&f.store.path().join("latest")).mode,
        Some(S_IFLNK | 0o777)
    );
    assert_eq!(
        f.core.readlink(link.ino).await.unwrap(),
        b"step-1000/model.safetensors"
    );
    assert_eq!(
        errno(f.core.symlink(ROOT_INO, "latest", "x", ME).await),
        libc::EEXIST
    );

    let other = f.another_mount(|_| {});
    let seen = other.node("latest").await;
    assert_eq!(seen.kind, FileKind::Symlink);
    assert_eq!(
        other.core.readlink(seen.ino).await.unwrap(),
        b"step-1000/model.safetensors"
    );
    let fh = other.core.opendir(ROOT_INO).await.unwrap();
    let listed = other.core.readdir(fh).unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e.name == "latest" && e.kind == FileKind::Symlink)
    );
    // A link renamed stays a link.
    other
        .core
        .rename(ROOT_INO, "latest", ROOT_INO, "current", false)
        .await
        .unwrap();
    let third = f.another_mount(|_| {});
    assert_eq!(third.node("current").await.kind, FileKind::Symlink);
    let file = f.write_file(ROOT_INO, "plain", b"x").await;
    assert_eq!(errno(f.core.readlink(file.ino).await), libc::EINVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_keys_too_long_are_enametoolong_before_the_store_sees_them() {
    let f = EngineFixture::new();
    let long = "n".repeat(256);
    assert_eq!(
        errno(f.core.lookup(ROOT_INO, &long).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.core.create(ROOT_INO, &long, ME).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.core.mkdir(ROOT_INO, &long, ME).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.core.symlink(ROOT_INO, &long, "t", ME).await),
        libc::ENAMETOOLONG
    );
    // Five directories of 200 bytes leave no room for a 30-byte name.
    let mut dir = ROOT_INO;
    for i in 0..5 {
        let name = format!("{i}{}", "d".repeat(199));
        dir = f.core.mkdir(dir, &name, ME).await.unwrap().ino;
    }
    let name = "f".repeat(30);
    assert_eq!(
        errno(f.core.create(dir, &name, ME).await),
        libc::ENAMETOOLONG
    );
    f.write_file(ROOT_INO, "short", b"x").await;
    assert_eq!(
        errno(f.core.rename(ROOT_INO, "short", dir, &name, false).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(f.stored("short").unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_without_a_record_and_directories_show_the_defaults_until_changed() {
    let f = EngineFixture::new();
    f.put("m/a.bin", b"abc");
    let a = f.node("m/a.bin").await;
    let attr = f.core.entry(&a).attr;
    assert_eq!(attr.perm, 0o644);
    assert_eq!(attr.mtime, a.mtime);
    let dir = f.core.mkdir(ROOT_INO, "d", ALICE).await.unwrap();
    assert_eq!(f.core.entry(&dir).attr.perm, 0o750);
    let chmod = AttrChange {
        mode: Some(0o700),
        ..AttrChange::default()
    };
    let dir = f.core.setattr(dir.ino, None, chmod).await.unwrap();
    assert_eq!(f.core.entry(&dir).attr.perm, 0o700);
    assert_eq!(f.core.entry(&dir).attr.kind, FileKind::Directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_takes_the_set_id_bits_of_a_file() {
    let f = EngineFixture::new();
    let node = f.write_file(ROOT_INO, "tool", b"x").await;
    let set = |mode| AttrChange {
        mode: Some(mode),
        ..AttrChange::default()
    };
    let chown = AttrChange {
        uid: Some(5),
        ..AttrChange::default()
    };
    f.core.setattr(node.ino, None, set(0o6755)).await.unwrap();
    let after = f.core.setattr(node.ino, None, chown).await.unwrap();
    assert_eq!(f.core.entry(&after).attr.perm, 0o755);
    // Without group execution the set-group-ID bit stays.
    f.core.setattr(node.ino, None, set(0o6745)).await.unwrap();
    let after = f.core.setattr(node.ino, None, chown).await.unwrap();
    assert_eq!(f.core.entry(&after).attr.perm, 0o2745);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_must_clear_set_id_bits_clears_them_and_is_not_passed_through() {
    let f = EngineFixture::with(|o| o.passthrough = true);
    let (node, staged) = f.core.create(ROOT_INO, "suid", ME).await.unwrap();
    let chmod = AttrChange {
        mode: Some(0o4777),
        ..AttrChange::default()
    };
    f.core.setattr(node.ino, None, chmod).await.unwrap();
    assert!(f.core.staged_backing(&staged, true, None).is_none());
    assert!(f.core.staged_backing(&staged, false, None).is_some());
    f.core.kill_suidgid(node.ino).unwrap();
    let after = f.core.node(node.ino).unwrap();
    assert_eq!(f.core.entry(&after).attr.perm, 0o777);
    let record = f.core.writes().registry.get(staged.id).unwrap().unwrap();
    assert_eq!(record.posix.mode, Some(S_IFREG | 0o777));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_new_entries_move_the_times_and_the_upload_keeps_the_last_write() {
    let f = EngineFixture::new();
    let (node, staged) = f.core.create(ROOT_INO, "w.bin", ME).await.unwrap();
    let created = f.core.entry(&f.core.node(node.ino).unwrap()).attr.mtime;
    std::thread::sleep(Duration::from_millis(20));
    f.core.write_staged(&staged, 0, b"abc").unwrap();
    let written = f.core.entry(&f.core.node(node.ino).unwrap()).attr;
    assert!(written.mtime > created && written.ctime >= written.mtime);
    let opened = f.core.add_staged_handle(node.ino, staged, true).unwrap();
    f.core.fsync(opened.fh).await.unwrap();
    f.core.release(opened.fh);
    f.settled().await;
    let stored = read_local_posix(&f.store.path().join("w.bin"));
    let shown = f.core.entry(&f.core.node(node.ino).unwrap()).attr.mtime;
    assert!(shown >= written.mtime);
    assert_eq!(stored.mtime, Some(shown));

    let root = f.core.entry(&f.core.node(ROOT_INO).unwrap()).attr;
    std::thread::sleep(Duration::from_millis(20));
    f.core.mkdir(ROOT_INO, "d", ME).await.unwrap();
    let after = f.core.entry(&f.core.node(ROOT_INO).unwrap()).attr;
    assert!(after.mtime > root.mtime && after.ctime > root.ctime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_store_keeps_directories_with_their_records_through_renames_and_deletes() {
    let f = EngineFixture::new();
    let dir = f.core.mkdir(ROOT_INO, "ckpt", ALICE).await.unwrap();
    let empty = f.core.mkdir(dir.ino, "empty", ALICE).await.unwrap();
    let chmod = AttrChange {
        mode: Some(0o700),
        ..AttrChange::default()
    };
    f.core.setattr(empty.ino, None, chmod).await.unwrap();
    f.write_file(dir.ino, "w.bin", b"w").await;
    let stored = read_local_posix(&f.store.path().join("ckpt"));
    assert_eq!(stored.mode, Some(crate::model::posix::S_IFDIR | 0o750));
    // The last file leaving keeps the directory and its record.
    f.core.unlink(dir.ino, "w.bin").await.unwrap();
    assert!(f.store.path().join("ckpt").is_dir());

    f.core
        .rename(ROOT_INO, "ckpt", ROOT_INO, "moved", false)
        .await
        .unwrap();
    assert!(!f.store.path().join("ckpt").exists());
    let other = f.another_mount(|_| {});
    let moved = other.core.entry(&other.node("moved").await).attr;
    assert_eq!((moved.perm, moved.uid, moved.gid), (0o750, 1000, 100));
    assert_eq!(
        other.core.entry(&other.node("moved/empty").await).attr.perm,
        0o700
    );

    f.core
        .rmdir(f.node("moved").await.ino, "empty")
        .await
        .unwrap();
    assert!(!f.store.path().join("moved/empty").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_counts_count_subdirectories_and_drop_to_zero_for_an_unlinked_open_file() {
    let f = EngineFixture::new();
    let d = f.core.mkdir(ROOT_INO, "d", ME).await.unwrap();
    assert_eq!(f.core.entry(&d).attr.nlink, 2);
    f.core.mkdir(d.ino, "a", ME).await.unwrap();
    f.core.mkdir(d.ino, "b", ME).await.unwrap();
    let file = f.write_file(d.ino, "w.bin", b"w").await;
    assert_eq!(f.core.entry(&f.core.node(d.ino).unwrap()).attr.nlink, 4);
    assert_eq!(f.core.entry(&file).attr.nlink, 1);
    let fh = f.open("d/w.bin").await;
    f.core.unlink(d.ino, "w.bin").await.unwrap();
    assert_eq!(f.core.entry(&f.core.node(file.ino).unwrap()).attr.nlink, 0);
    f.core.release(fh);
    f.core.rmdir(d.ino, "a").await.unwrap();
    assert_eq!(f.core.entry(&f.core.node(d.ino).unwrap()).attr.nlink, 3);
}
