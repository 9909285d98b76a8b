//! Tools users run on a mount: the Python safetensors loader (both `load_file` and
//! the mmap-based `safe_open`), and ls/stat/find over a tree of thousands of objects.

mod common;

use common::*;

fn safetensors_round_trip(backend: Backend, scratch: &std::path::Path) {
    // The file is written by the safetensors package itself, then put in the store.
    let src = scratch.join("model.safetensors");
    let script = format!(
        r#"
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(5)
tensors = {{f"layer{{i}}.weight": rng.standard_normal((256, 512 + i), dtype=np.float32) for i in range(24)}}
tensors["embed"] = rng.integers(0, 1000, size=(3000, 77), dtype=np.int64)
save_file(tensors, "{}", metadata={{"step": "100"}})
"#,
        src.display()
    );
    run_python(&script, "");
    backend.put(
        "model/step-100/model.safetensors",
        &std::fs::read(&src).unwrap(),
    );

    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let through = mount.path("model/step-100/model.safetensors");
    let check = format!(
        r#"
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
want = load_file("{src}")
got = load_file("{through}")
assert want.keys() == got.keys(), (want.keys(), got.keys())
for k in want:
    assert np.array_equal(want[k], got[k]), k
with safe_open("{through}", framework="numpy") as f:
    assert f.metadata() == {{"step": "100"}}, f.metadata()
    assert set(f.keys()) == set(want.keys())
    for k in f.keys():
        assert np.array_equal(f.get_tensor(k), want[k]), k
print("ok", len(want))
"#,
        src = src.display(),
        through = through.display()
    );
    let out = run_python(&check, &mount.log());
    assert_eq!(out.trim(), "ok 25");
    mount.unmount();

    // safe_open alone on a fresh mount: its page faults reach tierfs as reads a
    // little out of order, and must still be seen as sequential.
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let mmap_only = format!(
        "from safetensors import safe_open\nwith safe_open('{}', framework='numpy') as f:\n    print(sum(f.get_tensor(k).nbytes for k in f.keys()))\n",
        mount.path("model/step-100/model.safetensors").display()
    );
    run_python(&mmap_only, &mount.log());
    // The kernel sends the release after close() returns: wait for it.
    wait_for(std::time::Duration::from_secs(10), || {
        mount
            .log()
            .lines()
            .any(|l| l.contains("file closed") && l.contains("model.safetensors"))
    });
    mount.unmount();
    let log = mount.log();
    let widest: u64 = log
        .lines()
        .filter(|l| l.contains("file closed") && l.contains("model.safetensors"))
        .filter_map(|l| {
            l.split("widest_readahead=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or_else(|| panic!("no close logged:\n{log}"));
    assert!(
        widest >= 2,
        "safe_open got a readahead window of {widest} chunks"
    );
}

#[test]
fn local_safetensors_load_file_and_safe_open() {
    let scratch = tempfile::tempdir().unwrap();
    safetensors_round_trip(Backend::local(), scratch.path());
}

#[test]
fn s3_safetensors_load_file_and_safe_open() {
    let scratch = tempfile::tempdir().unwrap();
    safetensors_round_trip(Backend::s3(), scratch.path());
}

/// Lists the tree with ls -lR, stat and find and checks every object is there
/// with its size.
fn check_tree(mount: &Mount, expected: &[(String, usize)]) {
    let root = mount.dir.path().display().to_string();
    let found = sh(&format!(
        "cd {root} && find . -type f -printf '%P %s\\n' | sort"
    ));
    let mut want: Vec<String> = expected
        .iter()
        .map(|(k, len)| format!("{k} {len}"))
        .collect();
    want.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), want);
    let ls = sh(&format!("ls -lR {root}"));
    let files_listed = ls.lines().filter(|l| l.starts_with('-')).count();
    assert_eq!(files_listed, expected.len());
    let (key, len) = &expected[expected.len() / 2];
    let size = sh(&format!("stat -c %s {root}/{key}"));
    assert_eq!(size.trim(), len.to_string());
    let dirs = sh(&format!("find {root} -type d | wc -l"));
    assert!(dirs.trim().parse::<usize>().unwrap() > 1);
}

#[test]
fn local_tree_of_ten_thousand_objects_in_one_directory() {
    let backend = Backend::local();
    let Backend::Local(dir) = &backend else {
        unreachable!()
    };
    let mut expected = Vec::new();
    std::fs::create_dir_all(dir.path().join("big")).unwrap();
    for i in 0..10_000 {
        let key = format!("big/shard-{i:05}.bin");
        std::fs::write(dir.path().join(&key), vec![b'x'; i % 7]).unwrap();
        expected.push((key, i % 7));
    }
    for d in 0..20 {
        for f in 0..10 {
            let key = format!("nested/d{d}/sub/f{f}.pt");
            backend.put(&key, &vec![1u8; d + f]);
            expected.push((key, d + f));
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &[]);
    check_tree(&mount, &expected);
}

#[test]
fn s3_tree_of_thousands_of_objects() {
    let backend = Backend::s3();
    let client = backend_client(&backend);
    let mut expected = Vec::new();
    // More than one listing page (1,000 keys) in one directory, plus a deep tree.
    for i in 0..1_500 {
        expected.push((format!("flat/part-{i:04}"), i % 5));
    }
    for d in 0..30 {
        for f in 0..20 {
            expected.push((format!("tree/d{d:02}/s/f{f}.bin"), (d + f) % 9));
        }
    }
    block_on(async {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        futures::stream::iter(expected.iter())
            .for_each_concurrent(32, |(key, len)| {
                let client = client.clone();
                async move {
                    let path = object_store::path::Path::parse(format!("models/{key}")).unwrap();
                    client.put(&path, vec![7u8; *len].into()).await.unwrap();
                }
            })
            .await;
    });
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &[]);
    check_tree(&mount, &expected);
}

fn backend_client(backend: &Backend) -> std::sync::Arc<dyn object_store::ObjectStore> {
    match backend {
        Backend::S3(s) => s.client(),
        Backend::Local(_) => unreachable!(),
    }
}

/// Checkpoint writers that save through numpy.memmap (a shared writable mapping)
/// and through safetensors' save_file, straight into the mount: the store ends
/// with the same bytes, and a fresh mount loads them.
#[test]
fn numpy_memmap_and_safetensors_save_into_the_mount() {
    let backend = Backend::s3();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let dir = mount.path("run");
    std::fs::create_dir(&dir).unwrap();
    let script = format!(
        r#"
import numpy as np
from safetensors.numpy import save_file
m = np.memmap("{dir}/state.npy", dtype=np.float32, mode="w+", shape=(3, 1 << 20))
m[:] = np.arange(3 << 20, dtype=np.float32).reshape(3, 1 << 20)
m.flush()
del m
rng = np.random.default_rng(9)
save_file({{"w": rng.standard_normal((512, 1024), dtype=np.float32)}}, "{dir}/model.safetensors")
"#,
        dir = dir.display()
    );
    run_python(&script, &mount.log());
    let state = std::fs::read(dir.join("state.npy")).unwrap();
    let want: Vec<u8> = (0..(3u32 << 20))
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    assert!(state == want, "memmap bytes through the mount");
    let model = std::fs::read(dir.join("model.safetensors")).unwrap();
    for (key, bytes) in [("run/state.npy", &state), ("run/model.safetensors", &model)] {
        let arrived = wait_for(std::time::Duration::from_secs(60), || {
            backend.get(key).as_deref() == Some(bytes.as_slice())
        });
        assert!(arrived, "{key} did not reach the store\n{}", mount.log());
    }
    mount.unmount();
    let cache2 = tempfile::tempdir().unwrap();
    let again = Mount::new(&backend, cache2.path(), &["chunk_size=1M"]);
    let check = format!(
        r#"
import numpy as np
from safetensors.numpy import load_file
m = np.memmap("{0}/state.npy", dtype=np.float32, mode="r", shape=(3, 1 << 20))
assert m[2, 5] == float(2 * (1 << 20) + 5), m[2, 5]
assert load_file("{0}/model.safetensors")["w"].shape == (512, 1024)
"#,
        again.path("run").display()
    );
    run_python(&check, &again.log());
}
