//! Bad input on the command line: each class of mistake is one clear line and a
//! non-zero exit, before anything is mounted.

mod common;

use common::*;

fn fails_with(args: &[&str], expected: &str) {
    let out = run_tierfs(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected '{expected}' in: {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
}

struct Dirs {
    store: tempfile::TempDir,
    mnt: tempfile::TempDir,
    cache: tempfile::TempDir,
}

fn dirs() -> Dirs {
    Dirs {
        store: tempfile::tempdir().unwrap(),
        mnt: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    }
}

fn p(d: &tempfile::TempDir) -> &str {
    d.path().to_str().unwrap()
}

#[test]
fn options_that_are_unknown_or_malformed() {
    let d = dirs();
    let cache = format!("cache_dir={}", p(&d.cache));
    let mount = |o: &str| {
        vec!["mount", p(&d.store), p(&d.mnt), "-o", &cache, "-o", o]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let cases = [
        ("colour=blue", "unknown mount option 'colour'"),
        (
            "cache_size=big",
            "mount option 'cache_size': 'big' is not a size",
        ),
        (
            "ram_size=12Q",
            "mount option 'ram_size': '12Q' is not a size",
        ),
        (
            "chunk_size=100",
            "mount option 'chunk_size': '100' must be a multiple of 4K",
        ),
        (
            "metadata_ttl=soon",
            "mount option 'metadata_ttl': 'soon' is not a duration",
        ),
        ("endpoint", "mount option 'endpoint': needs a value"),
    ];
    for (option, expected) in cases {
        let args = mount(option);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, expected);
    }
}

#[test]
fn mountpoint_missing_or_not_a_directory() {
    let d = dirs();
    let cache = format!("cache_dir={}", p(&d.cache));
    let missing = d.mnt.path().join("nope");
    fails_with(
        &[
            "mount",
            p(&d.store),
            missing.to_str().unwrap(),
            "-o",
            &cache,
        ],
        "does not exist",
    );
    let file = d.mnt.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    fails_with(
        &["mount", p(&d.store), file.to_str().unwrap(), "-o", &cache],
        "is not a directory",
    );
}

#[test]
fn cache_dir_not_writable() {
    let d = dirs();
    let blocker = d.cache.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let cache = format!("cache_dir={}/sub", blocker.display());
    fails_with(
        &["mount", p(&d.store), p(&d.mnt), "-o", &cache],
        "is not writable",
    );
}

#[test]
fn stores_that_do_not_exist_or_cannot_be_reached() {
    let d = dirs();
    let cache = format!("cache_dir={}", p(&d.cache));
    let missing = d.store.path().join("nope");
    fails_with(
        &["mount", missing.to_str().unwrap(), p(&d.mnt), "-o", &cache],
        "store directory",
    );
    fails_with(
        &["mount", "ftp://host/x", p(&d.mnt), "-o", &cache],
        "unsupported store scheme 'ftp://'",
    );
    fails_with(
        &["mount", "s3://Not_A_Bucket/x", p(&d.mnt), "-o", &cache],
        "is not a valid bucket name",
    );

    // An endpoint where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("{cache},endpoint=http://127.0.0.1:{port},fetch_timeout=2s");
    fails_with(
        &["mount", "s3://ckpt/x", p(&d.mnt), "-o", &dead],
        "cannot reach the object store at http://127.0.0.1",
    );

    // A real server without that bucket.
    let server = S3Server::start();
    let live = format!("{cache},endpoint={}", server.endpoint());
    fails_with(
        &["mount", "s3://no-such-bucket/x", p(&d.mnt), "-o", &live],
        "bucket 'no-such-bucket' does not exist",
    );
    assert!(!is_mounted(d.mnt.path()));
}

#[test]
fn secrets_stay_out_of_the_log() {
    let server = S3Server::start();
    let d = dirs();
    let backend = Backend::S3(server);
    let mount = Mount::new(&backend, d.cache.path(), &[]);
    let _ = std::fs::read_dir(mount.dir.path()).unwrap().count();
    mount.unmount();
    let log = mount.log();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains(SECRET_KEY));
}

#[test]
fn foreground_mount_stays_attached_and_unmounts_on_sigterm() {
    let d = dirs();
    std::fs::write(d.store.path().join("a.bin"), b"hello").unwrap();
    let cache = format!("cache_dir={}", p(&d.cache));
    let mut child = std::process::Command::new(tierfs_bin())
        .args([
            "mount",
            p(&d.store),
            p(&d.mnt),
            "-o",
            &cache,
            "--foreground",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_mounted(d.mnt.path()) {
        assert!(std::time::Instant::now() < deadline, "never mounted");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before mounting"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(d.mnt.path().join("a.bin")).unwrap(), b"hello");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(d.mnt.path()));
}
