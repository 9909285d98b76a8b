//! Object keys that cannot be file names, on a real S3 server (moto) through a real
//! mount: they are left out or their directory refuses to list, the rest of the
//! tree stays readable, nothing crashes, and each is logged once.

mod common;

use common::*;

#[test]
fn keys_that_cannot_be_file_names_are_skipped_and_logged_once() {
    let moto = MotoServer::start();
    let long = format!("long/{}", "n".repeat(300));
    moto.put_raw(
        "odd",
        &[
            ("good/a.bin", 3),
            ("conflict", 4),
            ("conflict/inner.bin", 5),
            (&long, 6),
            ("long/short.bin", 7),
            ("dots/./x.bin", 8),
            ("empty//x.bin", 9),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let opts = format!(
        "cache_dir={},endpoint={}",
        cache.path().display(),
        moto.endpoint()
    );
    let out = run_tierfs(&[
        "mount",
        "s3://odd",
        mnt.path().to_str().unwrap(),
        "-o",
        &opts,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = mnt.path();
    let ls = |rel: &str| {
        std::fs::read_dir(root.join(rel)).map(|d| {
            let mut names: Vec<String> = d
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        })
    };
    assert_eq!(
        ls("").unwrap(),
        ["conflict", "dots", "empty", "good", "long"]
    );
    // The prefix wins over the object of the same name.
    assert!(root.join("conflict").is_dir());
    assert_eq!(
        std::fs::read(root.join("conflict/inner.bin")).unwrap(),
        b"kkkkk"
    );
    // A 300-byte name is left out; its sibling is there.
    assert_eq!(ls("long").unwrap(), ["short.bin"]);
    // Dot and empty segments: the directory cannot be listed, and says so with EIO.
    for dir in ["dots", "empty"] {
        for _ in 0..2 {
            let err = ls(dir).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{dir}: {err}");
        }
    }
    assert_eq!(std::fs::read(root.join("good/a.bin")).unwrap(), b"kkk");
    let _ = ls("long");
    let _ = ls("");
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(root)
        .status();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = std::fs::read_to_string(cache.path().join("tierfs.log")).unwrap();
    for needle in [
        "both an object and a prefix",
        "limited to 255 bytes",
        "key=\"dots\"",
        "key=\"empty\"",
    ] {
        let count = log.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count, 1, "'{needle}' logged {count} times:\n{log}");
    }
}
