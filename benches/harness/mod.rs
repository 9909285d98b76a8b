//! What the benchmarks share: a row of the results table, medians, dropping the
//! page cache, and writing a benchmark's section of BENCHMARKS.md.
#![allow(dead_code)]

use std::process::Command;

pub const MB: f64 = 1e6;

#[derive(Default)]
pub struct Row {
    pub case: String,
    pub tierfs: f64,
    pub baseline_name: String,
    pub baseline: f64,
    pub unit: &'static str,
    pub goal: &'static str,
    pub rss_mib: Option<f64>,
    /// The median of per-run ratios, where tierfs and its baseline ran side by
    /// side in each run: steadier than the ratio of medians on a host whose
    /// speed drifts.
    pub paired_ratio: Option<f64>,
}

/// The median of `tierfs[i] / baseline[i]`.
pub fn paired_ratio(tierfs: &[f64], baseline: &[f64]) -> Option<f64> {
    (tierfs.len() == baseline.len() && !tierfs.is_empty())
        .then(|| median(tierfs.iter().zip(baseline).map(|(t, b)| t / b).collect()))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time this virtual machine's host has taken from it so far (steal time,
/// summed over its CPUs), in seconds; 0 where the kernel does not report it.
pub fn steal_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    ticks / ticks_per_second()
}

/// The unit of the kernel's CPU time counters.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time (user and system) process `pid` has used so far, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / ticks_per_second())
}

/// CPU seconds used by a set of processes between two points.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: f64,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        let pids = pids.to_vec();
        let start = Self::total(&pids);
        CpuMeter { pids, start }
    }

    pub fn seconds(&self) -> f64 {
        Self::total(&self.pids) - self.start
    }

    fn total(pids: &[u32]) -> f64 {
        pids.iter().filter_map(|p| process_cpu_seconds(*p)).sum()
    }
}

/// Runs `read` and returns its result with the steal time it saw.
pub fn with_steal(read: impl FnOnce() -> f64) -> (f64, f64) {
    let before = steal_seconds();
    let speed = read();
    (speed, steal_seconds() - before)
}

pub fn drop_page_cache() -> bool {
    Command::new("sync").status().ok();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Faults in up to `bytes` of fresh anonymous memory (at most half of what the
/// kernel counts as available) and frees it again; the bytes it touched.
///
/// A virtual machine that reports free pages to its host (virtio-balloon free
/// page reporting) has the host take back the memory behind them, and the first
/// write to such a page after it is handed out again stops the VM while the host
/// backs it. The page cache a read fills is fresh memory of that kind after a
/// drop of the page cache; a client that reuses its buffers never touches any.
/// The pages freed here are the first the next allocations get, so a read that
/// follows at once fills memory the host backs, as on a machine whose memory
/// stays its own (one with a GPU passed through to it has all of it pinned).
pub fn back_free_memory(bytes: u64) -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10);
    let len = bytes.min(available / 2) as usize;
    if len == 0 {
        return 0;
    }
    // One allocation, faulted in whole by the kernel in one call; dropping it
    // frees it. The advice covers the whole pages inside it.
    let mut memory: Vec<u8> = Vec::with_capacity(len);
    let page = 4096;
    let start = (memory.as_mut_ptr() as usize).next_multiple_of(page);
    let pages = (len - (start - memory.as_ptr() as usize)) / page * page;
    // SAFETY: [start, start + pages) lies within the vector's allocation.
    let populated =
        unsafe { libc::madvise(start as *mut libc::c_void, pages, libc::MADV_POPULATE_WRITE) };
    drop(memory);
    if populated != 0 {
        return 0;
    }
    len as u64
}

/// Restricts every thread of process `pid` to `cpus` (threads it starts later
/// inherit that); false when the kernel refused it for any of them.
pub fn pin_process(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes one bit of `set`, a valid cpu_set_t.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok())
        // Every thread is tried, whether or not one before it was refused.
        .filter(|&tid| {
            // SAFETY: `set` is a valid cpu_set_t of the size passed.
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) != 0 }
        })
        .count()
        == 0
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed, for the call to fill.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of `set`; cpu is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Whether this machine is a VM whose balloon device takes reports of free pages
/// from it (virtio device 5 with feature bit 5, VIRTIO_BALLOON_F_REPORTING).
pub fn free_page_reporting() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap_or_default();
        read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
    })
}

/// A benchmark's size and runs: the full figures under `cargo bench`, a smoke
/// run otherwise (as `cargo test --all-targets` runs it).
pub struct Scale {
    pub full: bool,
    pub file_mb: usize,
    pub runs: usize,
}

impl Scale {
    pub fn from_env(smoke_mb: usize) -> Scale {
        let full = std::env::args().any(|a| a == "--bench");
        Scale {
            full,
            file_mb: env_num("TIERFS_BENCH_FILE_MB", if full { 1024 } else { smoke_mb }),
            runs: env_num("TIERFS_BENCH_RUNS", if full { 3 } else { 1 }),
        }
    }
}

/// The number in environment variable `name`, or `default` when it is unset.
pub fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a whole number")),
        Err(_) => default,
    }
}

/// The results as a Markdown table with the ratio of each row to its baseline.
pub fn render_table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| case | tierfs | baseline | baseline | ratio | goal | daemon peak RSS (MiB) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let (ratio, baseline) = if r.baseline.is_finite() {
            (
                format!("{:.2}", r.paired_ratio.unwrap_or(r.tierfs / r.baseline)),
                format!("{:.0} {}", r.baseline, r.unit),
            )
        } else {
            ("-".into(), "-".into())
        };
        let rss = r
            .rss_mib
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "| {} | {:.0} {} | {} | {} | {} | {} | {} |\n",
            r.case, r.tierfs, r.unit, r.baseline_name, baseline, ratio, r.goal, rss
        ));
    }
    out
}

/// The machine in one line.
pub fn machine() -> String {
    let sh_out = |c: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(c)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} CPUs ({}), {} memory, kernel {}",
        sh_out("nproc"),
        sh_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs"),
        sh_out("free -h | awk '/Mem:/{print $2}'"),
        sh_out("uname -r")
    )
}

/// Replaces benchmark `name`'s section of BENCHMARKS.md (between
/// `<!-- name -->` and `<!-- /name -->`), or adds it before the hand-written
/// analysis; everything else in the file stays.
pub fn write_section(name: &str, body: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let section = format!("{open}\n{}\n{close}", body.trim_end());
    let new = match (old.find(&open), old.find(&close)) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{section}{}", &old[..start], &old[end + close.len()..])
        }
        _ => match old.find("\n## Analysis") {
            Some(at) => format!("{}\n{section}\n{}", &old[..at], &old[at..]),
            None => format!("{}\n{section}\n", old.trim_end()),
        },
    };
    std::fs::write(path, new).unwrap();
    println!("wrote the {name} section of BENCHMARKS.md");
}
