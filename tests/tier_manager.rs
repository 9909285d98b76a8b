//! The tier manager through a real mount over s3s-fs on 127.0.0.1: pins set
//! with setfattr and `tierfs pin`, promotion of hot files and demotion of idle
//! ones, persistence across a restart, `tierfs status` and `/metrics`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::{Fault, FaultProxy};
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn getfattr(path: &Path, name: &str) -> String {
    sh(&format!(
        "getfattr --only-values -n {name} {}",
        path.display()
    ))
}

fn tier(path: &Path) -> String {
    getfattr(path, "user.tierfs.tier")
}

/// Runs a tool; Ok(stdout) or Err(stderr).
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn tierfs(args: &[&str]) -> Result<String, String> {
    run(tierfs_bin(), args)
}

fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The share of a file in `tier_name`, from `user.tierfs.tier`.
fn percent_in(path: &Path, tier_name: &str) -> u64 {
    let report = tier(path);
    report
        .split(", ")
        .find_map(|part| part.strip_prefix(&format!("{tier_name} ")))
        .and_then(|rest| rest.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no {tier_name} share in '{report}'"))
}

#[test]
fn a_file_pinned_to_ram_is_read_with_the_store_unreachable() {
    let mut backend = Backend::s3();
    let data = random_bytes((6 << 20) + 5, 1);
    backend.put("ckpt/model.bin", &data);
    // Every request line ends so.
    let proxy = FaultProxy::start(backend.s3_server().port, " HTTP/1.1\r\n");
    let cache = tempfile::tempdir().unwrap();
    let endpoint = format!("endpoint={}", proxy.endpoint());
    let port = free_port();
    let metrics_addr = format!("metrics_addr=127.0.0.1:{port}");
    let mount = Mount::new(
        &backend,
        cache.path(),
        &[
            "chunk_size=1M",
            "ram_size=32M",
            "fetch_concurrency=4",
            "metadata_ttl=1h",
            "fetch_timeout=2s",
            endpoint.as_str(),
            metrics_addr.as_str(),
        ],
    );
    let model = mount.path("ckpt/model.bin");
    std::fs::metadata(&model).unwrap();

    // `tierfs pin --wait` returns once the whole file is held in RAM.
    tierfs(&["pin", model.to_str().unwrap(), "--tier", "ram", "--wait"]).unwrap();
    let report = tier(&model);
    assert!(report.contains("ram 100% 6291461"), "{report}");
    assert!(report.ends_with("pin ram 100%"), "{report}");
    let dump = sh(&format!("getfattr -d -m user.tierfs {}", model.display()));
    assert!(dump.contains("user.tierfs.pin=\"ram\""), "{dump}");
    assert!(
        dump.contains("user.tierfs.tier=\"ram 100% 6291461"),
        "{dump}"
    );

    // The store goes away: every request is reset. The pinned bytes are read
    // without a single request reaching it.
    proxy.set(Fault::Reset);
    let before = proxy.count();
    let ram_hits = || {
        parse_metrics(&scrape(port))
            .into_iter()
            .find(|(name, _)| name == "tierfs_tier_hits_total{tier=\"ram\"}")
            .map(|(_, v)| v)
            .expect("/metrics has no RAM hits")
    };
    let hits_before = ram_hits();
    // Nor does the NVMe copy serve it: take it away.
    for e in std::fs::read_dir(cache.path().join("chunks"))
        .unwrap()
        .flatten()
    {
        std::fs::remove_file(e.path()).unwrap();
    }
    drop_page_cache();
    let got = read(&model);
    assert!(got == data, "the pinned file read back different bytes");
    assert_eq!(proxy.count(), before, "a request reached the store");
    // Held whole in RAM, the file is read by the kernel from its memfd
    // (passthrough, as root): no read reaches tierfs.
    assert_eq!(
        ram_hits(),
        hits_before,
        "reads of the pinned file went through tierfs"
    );
    proxy.set(Fault::None);
}

/// Opens of a file whose handles the kernel serves from its NVMe copy keep
/// sharing that copy after the file is pinned to RAM (the kernel takes one
/// backing file per inode), instead of failing. Once those handles are closed,
/// opens get the RAM copy; a writer cannot join readers of it, and its open
/// fails with ETXTBSY without changing the file.
#[test]
fn opens_of_a_file_pinned_while_open_share_the_backing_file_in_use() {
    let backend = Backend::local();
    let data = random_bytes(3 << 20, 9);
    backend.put("p.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let path = mount.path("p.bin");
    let offered = |from: &str| {
        mount
            .log()
            .matches(&format!("offering the {from} copy"))
            .count()
    };
    // Read (and let go of the page cache that serves reopens) until an open
    // gets the NVMe copy, and kept open.
    let first = open_when_counted(
        &path,
        WAIT,
        || {
            assert!(read(&path) == data);
            drop_kernel_cache(&path);
        },
        || offered("NVMe"),
    );
    assert!(first.is_some(), "{}", mount.log());
    run(
        "setfattr",
        &["-n", "user.tierfs.pin", "-v", "ram", path.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        wait_for(WAIT, || tier(&path).ends_with("pin ram 100%")),
        "{}",
        tier(&path)
    );
    let before = offered("NVMe");
    assert!(read(&path) == data);
    assert!(offered("NVMe") > before, "{}", mount.log());
    drop(first);

    // The kernel sends release after close returns: opens get the RAM copy soon.
    let reader = open_when_counted(&path, WAIT, || (), || offered("RAM"));
    assert!(reader.is_some(), "{}", mount.log());
    let appended = std::fs::OpenOptions::new().append(true).open(&path);
    let errno = appended.as_ref().err().and_then(|e| e.raw_os_error());
    assert_eq!(errno, Some(libc::ETXTBSY), "{appended:?}\n{}", mount.log());
    assert!(read(&path) == data);
    drop(reader);
}

#[test]
fn directory_pins_cover_new_files_and_pins_past_the_budget_fail() {
    let backend = Backend::s3();
    backend.put("run/step1.bin", &random_bytes(3 << 20, 2));
    backend.put("big.bin", &random_bytes(40 << 20, 3));
    backend.put("scan.bin", &random_bytes(40 << 20, 4));
    let cache = tempfile::tempdir().unwrap();
    // RAM tier: 32 MiB less 4 chunks in flight, 28 MiB.
    let mount = Mount::new(
        &backend,
        cache.path(),
        &[
            "chunk_size=1M",
            "ram_size=32M",
            "fetch_concurrency=4",
            "passthrough=false",
        ],
    );
    let run_dir = mount.path("run");
    run(
        "setfattr",
        &[
            "-n",
            "user.tierfs.pin",
            "-v",
            "ram",
            run_dir.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(getfattr(&run_dir, "user.tierfs.pin"), "ram");
    let step1 = mount.path("run/step1.bin");
    assert!(
        wait_for(WAIT, || tier(&step1).ends_with("pin ram 100%")),
        "{}",
        tier(&step1)
    );

    // A checkpoint written later into the pinned directory joins the pin once
    // it is in the store.
    let step2_data = random_bytes((5 << 20) + 7, 5);
    let step2 = mount.path("run/step2.bin");
    let mut f = std::fs::File::create(&step2).unwrap();
    f.write_all(&step2_data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(getfattr(&step2, "user.tierfs.pin"), "ram");
    assert!(
        wait_for(WAIT, || tier(&step2).ends_with("pin ram 100%")),
        "{}",
        tier(&step2)
    );

    // 40 MiB does not fit in the RAM tier: ENOSPC, and nothing is pinned.
    let big = mount.path("big.bin");
    let err = run(
        "setfattr",
        &["-n", "user.tierfs.pin", "-v", "ram", big.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(mount.log().contains("needs 40M"), "{}", mount.log());
    assert!(
        run(
            "getfattr",
            &["-n", "user.tierfs.pin", big.to_str().unwrap()]
        )
        .is_err()
    );
    let err = run(
        "setfattr",
        &["-n", "user.tierfs.pin", "-v", "disk", big.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(err.contains("Invalid argument"), "{err}");

    // A file under a pinned directory has no pin of its own to remove.
    let err = tierfs(&["unpin", step1.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("no pin of its own"), "{err}");

    // Unpinned, the files stay as cache, and leave RAM once a scan needs the room.
    tierfs(&["unpin", run_dir.to_str().unwrap()]).unwrap();
    assert!(
        run(
            "getfattr",
            &["-n", "user.tierfs.pin", run_dir.to_str().unwrap()]
        )
        .is_err()
    );
    assert!(wait_for(WAIT, || !tier(&step1).contains("pin ")));
    assert_eq!(percent_in(&step1, "ram"), 100);
    drop_page_cache();
    read(&mount.path("scan.bin"));
    assert!(
        percent_in(&step1, "ram") < 100 || percent_in(&step2, "ram") < 100,
        "{} / {}",
        tier(&step1),
        tier(&step2)
    );
}

#[test]
fn hot_files_are_promoted_by_reads_and_idle_ones_demoted() {
    let backend = Backend::s3();
    let hot = random_bytes(4 << 20, 6);
    backend.put("hot.bin", &hot);
    backend.put("scan.bin", &random_bytes(40 << 20, 7));
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(
        &backend,
        cache.path(),
        &[
            "chunk_size=1M",
            "ram_size=32M",
            "fetch_concurrency=4",
            "passthrough=false",
            "idle_demote=8s",
        ],
    );
    let hot_path = mount.path("hot.bin");
    for _ in 0..3 {
        drop_page_cache();
        assert!(read(&hot_path) == hot);
    }
    // The planner promotes it: a job for it ends, and a one-off scan larger
    // than the RAM tier leaves it there.
    let socket = cache.path().join("control/tierfs.sock");
    let promoted = wait_for(WAIT, || {
        let jobs = curl_unix(&socket, "/jobs");
        jobs.contains("\"reason\":\"read often\"") && jobs.contains("\"state\":\"done\"")
    });
    assert!(promoted, "{}", curl_unix(&socket, "/jobs"));
    drop_page_cache();
    read(&mount.path("scan.bin"));
    assert_eq!(percent_in(&hot_path, "ram"), 100, "{}", tier(&hot_path));

    // Idle for longer than idle_demote: its local copies go, the store keeps it.
    let demoted = wait_for(WAIT, || {
        percent_in(&hot_path, "ram") == 0 && percent_in(&hot_path, "nvme") == 0
    });
    assert!(demoted, "{}", tier(&hot_path));
    drop_page_cache();
    assert!(read(&hot_path) == hot);
}

/// GET over the control socket, as a user would with curl.
fn curl_unix(socket: &Path, uri: &str) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET {uri} HTTP/1.1\r\nHost: tierfs\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap()
}

/// Parses Prometheus text format: every sample is `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line '{l}'"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in '{l}'"));
            (name.to_string(), value)
        })
        .collect()
}

#[test]
fn pins_and_statistics_survive_a_restart_and_status_and_metrics_show_them() {
    let backend = Backend::s3();
    let pinned = random_bytes(3 << 20, 8);
    backend.put("keep/pinned.bin", &pinned);
    backend.put("read/often.bin", &random_bytes(2 << 20, 9));
    backend.put("later/prefetched.bin", &random_bytes(2 << 20, 10));
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_addr = format!("metrics_addr=127.0.0.1:{port}");
    // The RAM tier gets 24M: 8M go to chunks in flight (twice fetch_concurrency).
    let options = [
        "chunk_size=1M",
        "ram_size=32M",
        "fetch_concurrency=4",
        metrics_addr.as_str(),
    ];
    {
        let mount = Mount::new(&backend, cache.path(), &options);
        let keep = mount.path("keep");
        tierfs(&["pin", keep.to_str().unwrap(), "--tier", "nvme", "--wait"]).unwrap();
        for _ in 0..3 {
            read(&mount.path("read/often.bin"));
        }
        // Statistics reach the registry on the mover's tick.
        std::thread::sleep(Duration::from_secs(2));
        mount.unmount();
    }
    let mount = Mount::new(&backend, cache.path(), &options);
    let keep = mount.path("keep");
    let pinned_path = mount.path("keep/pinned.bin");
    assert_eq!(getfattr(&keep, "user.tierfs.pin"), "nvme");
    assert!(
        wait_for(WAIT, || tier(&pinned_path).ends_with("pin nvme 100%")),
        "{}",
        tier(&pinned_path)
    );

    // `tierfs prefetch --wait` follows its job to the end.
    let later = mount.path("later/prefetched.bin");
    tierfs(&[
        "prefetch",
        later.to_str().unwrap(),
        "--tier",
        "nvme",
        "--wait",
    ])
    .unwrap();
    assert_eq!(percent_in(&later, "nvme"), 100);

    let status = tierfs(&["status", mount.path("").to_str().unwrap()]).unwrap();
    for expected in [
        "TIER",
        "ram",
        "nvme",
        "24M",
        "nvme   /keep",
        "(3 reads) /read/often.bin",
    ] {
        assert!(status.contains(expected), "'{expected}' not in:\n{status}");
    }
    let json = tierfs(&["status", "--json", mount.path("keep").to_str().unwrap()]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["tiers"][1]["name"], "nvme");
    assert_eq!(parsed["tiers"][1]["pinned"], 3 << 20);

    // Bad requests to the control API are refused with a reason.
    let socket = cache.path().join("control/tierfs.sock");
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0,
        "the control socket is open to others"
    );
    assert!(curl_unix(&socket, "/jobs/999999").contains("404"));

    let text = scrape(port);
    let samples = parse_metrics(&text);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(
        value("tierfs_tier_budget_bytes{tier=\"ram\"}"),
        (24 << 20) as f64
    );
    assert_eq!(
        value("tierfs_tier_pinned_bytes{tier=\"nvme\"}"),
        (3 << 20) as f64
    );
    assert!(value("tierfs_store_fetched_bytes_total") >= (2 << 20) as f64);
    assert!(value("tierfs_mover_moved_bytes_total{direction=\"up\"}") >= (2 << 20) as f64);
    assert!(value("tierfs_fetch_latency_seconds_count") >= 2.0);
    assert!(value("tierfs_fuse_op_latency_seconds_count{op=\"lookup\"}") >= 1.0);
    for name in [
        "tierfs_tier_hits_total{tier=\"ram\"}",
        "tierfs_tier_misses_total{tier=\"nvme\"}",
        "tierfs_tier_used_bytes{tier=\"nvme\"}",
        "tierfs_prefetch_resets_total",
        "tierfs_mover_queue_depth",
        "tierfs_uploads_pending",
    ] {
        value(name);
    }
}
