//! The `user.tierfs.*` extended attributes through a real mount over s3s-fs on
//! 127.0.0.1, with the tools a user has: getfattr and setfattr.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn getfattr(path: &std::path::Path, name: &str) -> String {
    sh(&format!(
        "getfattr --only-values -n {name} {}",
        path.display()
    ))
}

/// Runs setfattr; Ok(()) or its error message.
fn setfattr(path: &std::path::Path, name: &str, value: &str) -> Result<(), String> {
    let out = Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn tier_attributes_show_placement_prefetch_and_digest() {
    let backend = Backend::s3();
    let data = random_bytes(4 << 20, 3);
    backend.put("m/model.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M", "prefetch_max=0"]);
    let model = mount.path("m/model.bin");

    // Cold: every byte is only in the store.
    assert_eq!(
        getfattr(&model, "user.tierfs.tier"),
        "ram 0% 0, nvme 0% 0, store 100% 4194304"
    );
    let names = sh(&format!("getfattr -m user.tierfs {}", model.display()));
    assert!(
        names.contains("user.tierfs.tier") && !names.contains("user.tierfs.digest"),
        "{names}"
    );

    // A one-off prefetch fills the tiers in the background.
    setfattr(&model, "user.tierfs.prefetch", "nvme").unwrap();
    let fetched = wait_for(Duration::from_secs(30), || {
        getfattr(&model, "user.tierfs.tier").contains("nvme 100% 4194304")
    });
    assert!(fetched, "{}", getfattr(&model, "user.tierfs.tier"));

    // Bad values are refused, and say why in the log.
    let err = setfattr(&model, "user.tierfs.prefetch", "disk").unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    let err = setfattr(&model, "user.tierfs.prefetch", "vram:0").unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(
        mount.log().contains("needs the GPU helper"),
        "{}",
        mount.log()
    );
    let err = setfattr(&model, "user.tierfs.tier", "ram").unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");
    let err = setfattr(&model, "user.other", "x").unwrap_err();
    assert!(err.contains("not supported"), "{err}");

    // An object tierfs did not write has no digest; one written through the mount
    // has the xxh3-128 of its bytes, before and after its upload.
    let out = Command::new("getfattr")
        .args(["-n", "user.tierfs.digest"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let written = random_bytes((2 << 20) + 5, 4);
    let want = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&written));
    std::fs::write(mount.path("m/new.bin"), &written).unwrap();
    let sealed = wait_for(Duration::from_secs(30), || {
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.tierfs.digest"])
            .arg(mount.path("m/new.bin"))
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout) == want)
    });
    assert!(sealed);
    assert!(wait_for(Duration::from_secs(60), || mount
        .log()
        .contains("uploaded and verified")));
    assert_eq!(
        getfattr(&mount.path("m/new.bin"), "user.tierfs.digest"),
        want
    );
    let dump = sh(&format!(
        "getfattr -d -m user.tierfs {}",
        mount.path("m/new.bin").display()
    ));
    assert!(
        dump.contains(&format!("user.tierfs.digest=\"{want}\""))
            && dump.contains("user.tierfs.tier=\"ram ")
            && dump.contains("store 100% 2097157\""),
        "{dump}"
    );
}
