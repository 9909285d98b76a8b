//! tierfs and s3fs on one bucket (s3s-fs on loopback): modes, owners, times
//! and symbolic links that one writes, the other shows.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ACCESS_KEY, BUCKET, Backend, Mount, SECRET_KEY};

/// An s3fs mount of the bucket's `models` prefix, unmounted when dropped.
struct S3fsMount {
    dir: tempfile::TempDir,
    _scratch: tempfile::TempDir,
}

impl S3fsMount {
    fn new(endpoint: &str) -> Option<S3fsMount> {
        if Command::new("s3fs").arg("--version").output().is_err() {
            eprintln!("skipped: s3fs is not installed (apt-get install s3fs)");
            return None;
        }
        let (dir, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let passwd = scratch.path().join("passwd");
        std::fs::write(&passwd, format!("{ACCESS_KEY}:{SECRET_KEY}")).unwrap();
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let options = format!(
            "passwd_file={},use_path_request_style,url={endpoint},endpoint=us-east-1,stat_cache_expire=1",
            passwd.display()
        );
        let status = Command::new("s3fs")
            .arg(format!("{BUCKET}:/models"))
            .arg(dir.path())
            .args(["-o", &options])
            .status()
            .unwrap();
        assert!(status.success(), "s3fs did not mount");
        Some(S3fsMount {
            dir,
            _scratch: scratch,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Waits for `rel` to show (s3fs answers before its first listing).
    fn wait_for(&self, rel: &str) {
        for _ in 0..250 {
            if std::fs::symlink_metadata(self.path(rel)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s3fs never showed {rel}");
    }
}

impl Drop for S3fsMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn what_tierfs_writes_s3fs_shows_and_the_other_way_round() {
    let backend = Backend::s3();
    let endpoint = match &backend {
        Backend::S3(server) => server.endpoint(),
        Backend::Local(_) => unreachable!(),
    };
    let cache = tempfile::tempdir().unwrap();
    let tierfs = Mount::new(&backend, cache.path(), &["durability=remote"]);
    let file = tierfs.path("train.sh");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::chown(&file, Some(1234), Some(567)).unwrap();
        f.sync_all().unwrap();
    }
    std::os::unix::fs::symlink("train.sh", tierfs.path("run")).unwrap();

    let Some(s3fs) = S3fsMount::new(&endpoint) else {
        return;
    };
    s3fs.wait_for("train.sh");
    let seen = std::fs::metadata(s3fs.path("train.sh")).unwrap();
    assert_eq!(seen.permissions().mode() & 0o7777, 0o750);
    assert_eq!((seen.uid(), seen.gid()), (1234, 567));
    assert_eq!(
        std::fs::read(s3fs.path("train.sh")).unwrap(),
        b"#!/bin/sh\n"
    );
    s3fs.wait_for("run");
    assert_eq!(
        std::fs::read_link(s3fs.path("run")).unwrap(),
        Path::new("train.sh")
    );

    // s3fs writes, a fresh tierfs mount shows.
    std::fs::write(s3fs.path("eval.sh"), b"echo eval\n").unwrap();
    std::fs::set_permissions(s3fs.path("eval.sh"), std::fs::Permissions::from_mode(0o701)).unwrap();
    std::os::unix::fs::symlink("eval.sh", s3fs.path("eval-latest")).unwrap();
    drop(s3fs);
    tierfs.unmount();
    let fresh = tempfile::tempdir().unwrap();
    let again = Mount::new(&backend, fresh.path(), &[]);
    assert_eq!(mode(&again.path("eval.sh")), 0o701, "{}", again.log());
    assert_eq!(
        std::fs::read(again.path("eval.sh")).unwrap(),
        b"echo eval\n"
    );
    assert!(
        std::fs::symlink_metadata(again.path("eval-latest"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(again.path("eval-latest")).unwrap(),
        Path::new("eval.sh")
    );
    again.unmount();
}
