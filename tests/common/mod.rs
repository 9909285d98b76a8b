//! Shared pieces of the integration tests: a real S3 server (s3s-fs) on 127.0.0.1,
//! a client for putting test data in through the S3 API, and real FUSE mounts of
//! the `tierfs` binary.
#![allow(dead_code)]

pub mod engine_kit;
pub mod proxy;

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub const ACCESS_KEY: &str = "tierfs-test-key";
pub const SECRET_KEY: &str = "tierfs-test-secret";
pub const BUCKET: &str = "ckpt";

pub fn tierfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tierfs")
}

/// A tool the test setup installs (`tests/setup.sh`): found on PATH or in the
/// tools folder the setup fills.
pub fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("TIERFS_TOOLS")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tierfs-tools")));
    for dir in dirs {
        for candidate in [dir.join("bin").join(name), dir.join("venv/bin").join(name)] {
            if candidate.exists() {
                return candidate;
            }
        }
    }
    if let Ok(out) = Command::new("which").arg(name).output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "{name} is not installed: run `bash tests/setup.sh` first (the README's test command does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// s3s-fs serving a temporary folder on 127.0.0.1; stopped when dropped.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub data: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(BUCKET)).unwrap();
        let mut server = S3Server {
            child: None,
            port: free_port(),
            data,
        };
        // A port picked free may be taken (as a client's local port, say)
        // before the server binds it; the server then exits: try another.
        for _ in 0..5 {
            server.restart();
            std::thread::sleep(Duration::from_millis(100));
            let exited = server
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if !exited {
                return server;
            }
            server.port = free_port();
        }
        panic!("s3s-fs did not stay up on any port tried");
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the server (again) on the same port and data.
    pub fn restart(&mut self) {
        let child = Command::new(tool("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            // Exited: the port was taken; `start` tries another.
            if exited {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Multipart uploads started and neither completed nor aborted. s3s-fs does not
    /// answer ListMultipartUploads; it keeps one `.upload-<id>.json` in its data
    /// folder for each open upload, removed on completion or abort.
    pub fn open_multipart_uploads(&self) -> Vec<String> {
        let mut open: Vec<String> = std::fs::read_dir(self.data.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(".upload-") && name.ends_with(".json"))
            .collect();
        open.sort();
        open
    }

    /// A client for putting test data in through the S3 API.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a test keeps its objects: a local directory, or a bucket on s3s-fs.
pub enum Backend {
    Local(tempfile::TempDir),
    S3(S3Server),
}

impl Backend {
    pub fn local() -> Backend {
        Backend::Local(tempfile::tempdir().unwrap())
    }

    pub fn s3() -> Backend {
        Backend::S3(S3Server::start())
    }

    /// The STORE argument and the options it needs.
    pub fn store_arg(&self) -> (String, Vec<String>) {
        match self {
            Backend::Local(dir) => (dir.path().display().to_string(), vec![]),
            Backend::S3(s) => (
                format!("s3://{BUCKET}/models"),
                vec![
                    format!("endpoint={}", s.endpoint()),
                    "region=us-east-1".into(),
                ],
            ),
        }
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        match self {
            Backend::Local(dir) => {
                let path = dir.path().join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
            Backend::S3(s) => {
                let client = s.client();
                let path = ObjectPath::parse(format!("models/{key}")).unwrap();
                let payload = PutPayload::from(data.to_vec());
                block_on(async move { client.put(&path, payload).await.unwrap() });
            }
        }
    }

    pub fn s3_server(&mut self) -> &mut S3Server {
        match self {
            Backend::S3(s) => s,
            Backend::Local(_) => panic!("not an S3 backend"),
        }
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Random bytes from a seed, so a failure can be reproduced.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A mount of the `tierfs` binary, unmounted when dropped.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub cache_dir: PathBuf,
}

pub fn run_tierfs(args: &[&str]) -> Output {
    Command::new(tierfs_bin())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("TIERFS_LOG", "info,tierfs=debug")
        .output()
        .unwrap()
}

impl Mount {
    /// Mounts `backend` with `options` (in addition to the store's own) and a cache
    /// in `cache_dir`, in the background as a user would.
    pub fn new(backend: &Backend, cache_dir: &Path, options: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut opts) = backend.store_arg();
        opts.push(format!("cache_dir={}", cache_dir.display()));
        opts.extend(options.iter().map(|s| s.to_string()));
        let opts = opts.join(",");
        let out = run_tierfs(&["mount", &store, dir.path().to_str().unwrap(), "-o", &opts]);
        assert!(
            out.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(cache_dir.join("tierfs.log")).unwrap_or_default()
        );
        Mount {
            dir,
            cache_dir: cache_dir.to_path_buf(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cache_dir.join("tierfs.log")).unwrap_or_default()
    }

    pub fn unmount(&self) {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
        // The daemon exits once the kernel lets go; wait for the mount to vanish
        // and the daemon with it, so that the cache can be mounted again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while (is_mounted(self.dir.path()) || daemon_pid(self.dir.path()).is_some())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The tierfs daemon serving `mountpoint`.
pub fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    let needle = mountpoint.display().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.first().is_some_and(|a| a.ends_with("tierfs")) && args.contains(&needle))
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(self.dir.path()) {
            self.unmount();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// Runs a shell command and returns its stdout, failing the test on a non-zero exit.
pub fn sh(command: &str) -> String {
    run_script(Path::new("bash"), command, &format!("`{command}` failed"))
}

/// The moto S3 server on 127.0.0.1, for keys that s3s-fs cannot hold (a key that is
/// also a prefix, empty or dot segments); stopped when dropped.
pub struct MotoServer {
    child: Child,
    pub port: u16,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = free_port();
        let child = Command::new(tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port, "moto_server");
        MotoServer { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Puts raw keys with boto3, which sends them as they are.
    pub fn put_raw(&self, bucket: &str, keys: &[(&str, usize)]) {
        let list: Vec<String> = keys.iter().map(|(k, n)| format!("({k:?}, {n})")).collect();
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\n\
             s3.create_bucket(Bucket='{bucket}')\n\
             for key, n in [{}]:\n    s3.put_object(Bucket='{bucket}', Key=key, Body=b'k' * n)\n",
            self.endpoint(),
            list.join(", ")
        );
        run_python(&script, "");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python script in the test venv and returns its stdout; on failure the
/// test fails with the script's stderr and `context` (a log, say).
pub fn run_python(script: &str, context: &str) -> String {
    run_script(&tool("python"), script, context)
}

/// Runs `interpreter -c script` and returns its stdout; a non-zero exit fails the
/// test with `context` and the script's stderr.
fn run_script(interpreter: &Path, script: &str, context: &str) -> String {
    let out = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{context}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Backend {
    /// The bytes of an object, or None when the store does not have it.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Backend::Local(dir) => std::fs::read(dir.path().join(key)).ok(),
            Backend::S3(s) => {
                let client = s.client();
                let path = ObjectPath::parse(format!("models/{key}")).unwrap();
                block_on(async move {
                    let got = client.get(&path).await.ok()?;
                    Some(got.bytes().await.ok()?.to_vec())
                })
            }
        }
    }

    /// Every key in the store, sorted.
    pub fn keys(&self) -> Vec<String> {
        use futures::TryStreamExt;
        match self {
            Backend::Local(dir) => {
                let out = sh(&format!(
                    "cd {} && find . -type f | sed 's|^./||' | sort",
                    dir.path().display()
                ));
                out.lines().map(str::to_string).collect()
            }
            Backend::S3(s) => {
                let client = s.client();
                let prefix = ObjectPath::parse("models").unwrap();
                let mut keys: Vec<String> = block_on(async move {
                    client
                        .list(Some(&prefix))
                        .map_ok(|m| m.location.to_string()["models/".len()..].to_string())
                        .try_collect()
                        .await
                        .unwrap()
                });
                keys.sort();
                keys
            }
        }
    }
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `path` again and again (after `prepare` each time) until an open
/// raises `count` (of lines in the mount's log, say), and returns that handle
/// still open; None if none did within `timeout`.
pub fn open_when_counted(
    path: &Path,
    timeout: Duration,
    mut prepare: impl FnMut(),
    count: impl Fn() -> usize,
) -> Option<std::fs::File> {
    let mut opened = None;
    wait_for(timeout, || {
        prepare();
        let before = count();
        let f = std::fs::File::open(path).unwrap();
        opened = (count() > before).then_some(f);
        opened.is_some()
    });
    opened
}

/// Polls `done` until it holds; fails the test after 30 seconds.
pub fn wait_until(done: impl FnMut() -> bool) {
    assert!(wait_for(Duration::from_secs(30), done), "timed out waiting");
}

/// The NVMe tier's cache file under `cache`, where one file has one.
pub fn cache_file(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache.join("chunks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .expect("no cache file")
}

/// Bytes held in the NVMe tier's cache files under `cache`.
pub fn cached_bytes(cache: &Path) -> u64 {
    std::fs::read_dir(cache.join("chunks"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    // Allocated bytes: sparse holes do not count.
                    use std::os::unix::fs::MetadataExt;
                    e.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Has the kernel let go of its page cache of `path`, as memory pressure or
/// drop_caches would.
pub fn drop_kernel_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: plain syscall on a descriptor that stays open across it.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(
        rc,
        0,
        "posix_fadvise: {}",
        std::io::Error::from_raw_os_error(rc)
    );
}

/// Which pages of `file`'s first `len` bytes the kernel's page cache holds.
pub fn resident_pages(file: &File, len: usize) -> Vec<bool> {
    let page = 4096;
    // SAFETY: a fresh read-only shared mapping that nothing reads through; it
    // only asks mincore(2) which of the file's pages are cached, and is unmapped
    // before returning.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let mut pages = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(map, len, pages.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(map, len);
        assert_eq!(rc, 0, "{err}");
        pages.into_iter().map(|p| p & 1 == 1).collect()
    }
}

/// Fails unless the page cache holds at least 90% of `file`'s first `len`
/// bytes (the kernel may let go of a stray page at any time).
pub fn assert_mostly_cached(file: &File, len: usize) {
    let resident = resident_pages(file, len);
    let kept = resident.iter().filter(|&&r| r).count();
    assert!(
        kept * 10 >= resident.len() * 9,
        "{kept} of {} pages cached",
        resident.len()
    );
}
