//! Other FUSE clients of the same bucket (rclone, s3fs), read cold like tierfs.

use super::*;

pub(super) fn installed(tool: &str) -> bool {
    Command::new("which")
        .arg(tool)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Cold sequential read of big.bin through another FUSE client of the same bucket,
/// mounted afresh with an empty cache; MB/s, or None when it cannot be mounted.
pub(super) fn peer_cold_read(
    backend: &Backend,
    tool: &str,
    scratch: &Path,
    run: usize,
) -> Option<f64> {
    let Backend::S3(server) = backend else {
        unreachable!()
    };
    let mnt = scratch.join(format!("{tool}-mnt-{run}"));
    let cache = scratch.join(format!("{tool}-cache-{run}"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let ok = match tool {
        "rclone" => Command::new("rclone")
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_S3_PROVIDER", "Other")
            .env("RCLONE_S3_FORCE_PATH_STYLE", "true")
            .env("RCLONE_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("RCLONE_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RCLONE_S3_ENDPOINT", server.endpoint())
            .args(["mount", &format!(":s3:{BUCKET}/models")])
            .arg(&mnt)
            .args(["--vfs-cache-mode", "full", "--cache-dir"])
            .arg(&cache)
            .arg("--daemon")
            .status(),
        _ => {
            let pw = scratch.join("s3fs.passwd");
            std::fs::write(&pw, format!("{ACCESS_KEY}:{SECRET_KEY}")).unwrap();
            std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            Command::new("s3fs")
                .arg(format!("{BUCKET}:/models"))
                .arg(&mnt)
                .args(["-o", &format!("passwd_file={},use_path_request_style,url={},endpoint=us-east-1,use_cache={}", pw.display(), server.endpoint(), cache.display())])
                .status()
        }
    };
    if !ok.is_ok_and(|s| s.success()) {
        return None;
    }
    let file = mnt.join("big.bin");
    for _ in 0..500 {
        if file.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !file.exists() {
        println!("{tool} mounted but does not show big.bin: its row is left out");
        Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&mnt)
            .status()
            .ok();
        return None;
    }
    cold_start(backend, "big.bin");
    let speed = read_speed(&file, 1 << 20);
    Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .ok();
    // Each run starts with an empty cache anyway; the next runs need the disk.
    let _ = std::fs::remove_dir_all(&cache);
    Some(speed)
}
