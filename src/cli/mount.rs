//! `tierfs mount`: check everything that can be checked before mounting, then mount
//! in this process (`--foreground`) or in a background child that reports back once
//! the kernel has accepted the mount.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::engine::fuse_bridge::FuseBridge;
use crate::engine::{EngineConfig, EngineCore};
use crate::error::error_chain;
use crate::model::options::MountOptions;
use crate::model::paths;
use crate::store::{StoreClient, StoreLocation};

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// A local directory or file:// URL, or s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix]
    pub store: String,
    /// An existing empty directory
    pub mountpoint: PathBuf,
    /// Mount options, k=v separated by commas (see README); may repeat
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Stay in the foreground instead of returning once the mount is ready
    #[arg(short, long)]
    pub foreground: bool,
}

/// The descriptor on which a background child says "ready" or why it failed.
const READY_FD_ENV: &str = "TIERFS_READY_FD";
const READY: &str = "ready";

/// Everything a mount needs, checked.
pub struct Prepared {
    pub location: StoreLocation,
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
}

pub fn run(args: &MountArgs) -> Result<(), String> {
    let prepared = prepare(args)?;
    let runtime = runtime()?;
    let store = runtime.block_on(connect(&prepared))?;
    if args.foreground || std::env::var_os(READY_FD_ENV).is_some() {
        serve(prepared, store, runtime)
    } else {
        drop(runtime);
        spawn_background(args, &prepared.cache_dir)
    }
}

/// Parses and checks the arguments without touching the store.
pub fn prepare(args: &MountArgs) -> Result<Prepared, String> {
    let options = MountOptions::parse(&args.options).map_err(|e| e.to_string())?;
    let location = StoreLocation::parse(&args.store).map_err(|e| e.to_string())?;
    check_mountpoint(&args.mountpoint)?;
    // Absolute before mounting: resolving it later would ask the mount itself.
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", args.mountpoint.display()))?;
    let cache_dir = match &options.cache_dir {
        Some(dir) => dir.clone(),
        None => paths::default_cache_dir(),
    };
    check_cache_dir(&cache_dir)?;
    Ok(Prepared {
        location,
        options,
        mountpoint,
        cache_dir,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tierfs-rt")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Builds the store client and makes one request with a short retry budget, so
/// that a missing bucket or a dead endpoint is an error before mounting.
pub async fn connect(p: &Prepared) -> Result<StoreClient, String> {
    let probe_timeout = p.options.fetch_timeout.min(Duration::from_secs(10));
    let probe = p
        .location
        .build(&p.options, 1, probe_timeout)
        .map_err(|e| e.to_string())?;
    p.location
        .probe(probe.objects.as_ref(), &p.options)
        .await
        .map_err(|e| e.to_string())?;
    p.location
        .build(&p.options, p.options.fetch_retries, p.options.fetch_timeout)
        .map_err(|e| e.to_string())
}

fn check_mountpoint(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mountpoint {} is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("mountpoint {} does not exist", path.display()))
        }
        Err(e) => Err(format!("mountpoint {}: {e}", path.display())),
    }
}

fn check_cache_dir(dir: &Path) -> Result<(), String> {
    let not_writable =
        |e: std::io::Error| format!("cache_dir {} is not writable: {e}", dir.display());
    if dir.exists() && !dir.is_dir() {
        return Err(format!("cache_dir {} is not a directory", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    let probe = dir.join(format!(".tierfs-write-check-{}", std::process::id()));
    File::create(&probe).map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)?;
    Ok(())
}

/// Re-runs this command as a detached child and waits until it reports the mount
/// ready or says why it failed.
fn spawn_background(args: &MountArgs, cache_dir: &Path) -> Result<(), String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let log_path = paths::log_path(cache_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the tierfs binary: {e}"))?;
    let mut command = Command::new(exe);
    command.arg("mount").arg(&args.store).arg(&args.mountpoint);
    for o in &args.options {
        command.arg("-o").arg(o);
    }
    let child_fd: RawFd = 3;
    let write_raw = fds[1];
    command
        .env(READY_FD_ENV, child_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(write_raw, child_fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    drop(write_end);
    let mut message = String::new();
    let _ = read_end.read_to_string(&mut message);
    let message = message.trim();
    if message == READY {
        return Ok(());
    }
    let _ = child.wait();
    if message.is_empty() {
        Err(format!(
            "the mount process exited; see {}",
            log_path.display()
        ))
    } else {
        Err(message.to_string())
    }
}

/// Tells a waiting parent (if any) how the mount went.
fn report(text: &str) {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    // SAFETY: the parent handed us this descriptor for exactly this message.
    let mut pipe = unsafe { File::from_raw_fd(fd) };
    let _ = pipe.write_all(text.as_bytes());
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIERFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Mounts in this process and serves until unmounted or signalled.
fn serve(p: Prepared, store: StoreClient, runtime: tokio::runtime::Runtime) -> Result<(), String> {
    init_logging();
    let result = serve_inner(p, store, &runtime);
    if let Err(message) = &result {
        report(message);
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

fn serve_inner(
    p: Prepared,
    store: StoreClient,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let store_id = p.location.identity(&p.options);
    // Uploads found in the registry are resumed on the runtime.
    let _runtime = runtime.enter();
    let core = EngineCore::start(EngineConfig {
        store,
        store_id,
        cache_dir: p.cache_dir.clone(),
        options: p.options.clone(),
    })
    .map_err(|e| format!("cannot open the cache in {}: {e}", p.cache_dir.display()))?;
    let socket = runtime
        .block_on(crate::control::server::start(core.clone(), &p.cache_dir))
        .map_err(|e| {
            format!(
                "cannot start the control socket in {}: {e}",
                p.cache_dir.display()
            )
        })?;
    tracing::info!(socket = %socket.display(), "control API listening");
    let engine = FuseBridge::new(core, runtime.handle().clone());
    let config = tierfs_fuse::MountConfig {
        mountpoint: p.mountpoint.clone(),
        fsname: fsname(&p),
        read_only: p.options.read_only,
        allow_other: p.options.allow_other,
        threads: p.options.fuse_threads,
        // Room for the kernel readahead of as many chunks as are fetched at once.
        max_background: (p.options.fetch_concurrency.saturating_mul(4)).clamp(16, 1024) as u16,
    };
    raise_max_pages();
    // Handlers are in place before the mount is, so that a signal sent as soon as
    // the mount appears unmounts it instead of killing the daemon.
    let signals = listen_for_signals();
    let session = tierfs_fuse::mount(engine, &config).map_err(|e| {
        format!(
            "cannot mount at {}: {}",
            p.mountpoint.display(),
            error_chain(&e)
        )
    })?;
    tracing::info!(mountpoint = %p.mountpoint.display(), cache_dir = %p.cache_dir.display(), "mounted");
    raise_readahead(&p.mountpoint, p.options.chunk_size);
    report(READY);
    let mountpoint = p.mountpoint.clone();
    runtime.spawn(async move {
        wait_for_signal(signals).await;
        tracing::info!("signal received, unmounting");
        unmount(&mountpoint);
    });
    session
        .run()
        .map_err(|e| format!("FUSE session ended: {e}"))?;
    tracing::info!("unmounted");
    Ok(())
}

/// Largest FUSE request tierfs asks the kernel to allow, in pages (16 MiB).
const MAX_PAGES: u64 = 4096;

/// The kernel caps every FUSE request at /proc/sys/fs/fuse/max_pages_limit pages,
/// 1 MiB by default; fewer, larger requests cost fewer round trips through the
/// daemon. As root, raise the cap to 16 MiB before mounting (the kernel reads it
/// when the session starts); it only lets FUSE servers ask for more. Best effort.
fn raise_max_pages() {
    const KNOB: &str = "/proc/sys/fs/fuse/max_pages_limit";
    let Ok(limit) = std::fs::read_to_string(KNOB) else {
        return;
    };
    let Ok(limit) = limit.trim().parse::<u64>() else {
        return;
    };
    if limit >= MAX_PAGES {
        tracing::info!(max_pages_limit = limit, "largest FUSE request");
        return;
    }
    match std::fs::write(KNOB, MAX_PAGES.to_string()) {
        Ok(()) => tracing::info!(
            from = limit,
            to = MAX_PAGES,
            "raised {KNOB} for larger FUSE requests"
        ),
        Err(e) => tracing::info!(
            max_pages_limit = limit,
            "largest FUSE request is {limit} pages; cannot raise {KNOB} ({e})"
        ),
    }
}

/// The kernel reads ahead only 128 KiB on a new FUSE mount; one chunk ahead lets
/// sequential readers keep several requests in flight. Needs root; best effort.
fn raise_readahead(mountpoint: &Path, chunk_size: u64) {
    // The device number comes from mountinfo: a stat of the mountpoint would wait
    // for this very process to answer it.
    let wanted = mountpoint.display().to_string();
    let Some(device) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .rfind(|f| f.len() > 4 && f[4] == wanted)
                .map(|f| f[2].to_string())
        })
    else {
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let kb = (chunk_size / 1024).max(128);
    match std::fs::write(&knob, kb.to_string()) {
        Ok(()) => tracing::info!(read_ahead_kb = kb, "kernel readahead raised"),
        Err(e) => tracing::debug!("cannot raise kernel readahead through {knob}: {e}"),
    }
}

fn fsname(p: &Prepared) -> String {
    match &p.location {
        StoreLocation::Local(dir) => format!("tierfs:{}", dir.display()),
        StoreLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        StoreLocation::Gcs { bucket, prefix } => format!("gs://{bucket}/{prefix}"),
        StoreLocation::Azure { container, prefix } => format!("az://{container}/{prefix}"),
    }
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// Takes SIGTERM and SIGINT over from their default (exit); inside the runtime.
fn listen_for_signals() -> Signals {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot handle SIGTERM and SIGINT ({e}); unmount with fusermount3 -u");
            None
        }
    }
}

async fn wait_for_signal(signals: Signals) {
    let Some((mut term, mut int)) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Unmounts lazily: as root with umount2, otherwise with fusermount3.
pub fn unmount(mountpoint: &Path) {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).ok();
    // SAFETY: a valid NUL-terminated path.
    let done = c.is_some_and(|c| unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0);
    if !done {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mountpoint)
            .status();
    }
}
