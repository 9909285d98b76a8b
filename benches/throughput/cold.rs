//! The cold sequential rows: tierfs against the raw client with the same
//! concurrency and against the peers, all in each run, so that every ratio pairs
//! reads taken minutes apart at most (this host's speed drifts over a session).
//!
//! tierfs and the raw client read under four conditions in each run, to show
//! what this host adds to the gap between them:
//! - the store shares the CPUs with its clients, or has one of its own, as a
//!   remote store would take none of the client's CPU;
//! - memory is as the machine left it, or backed by the host first
//!   (`harness::back_free_memory`): a read through a file system fills fresh
//!   page cache, and on a VM that hands free pages back to its host each of them
//!   costs a fault in the host on first touch, which the raw client, reusing its
//!   buffers, does not pay.
//!
//! The first condition (shared CPUs, memory as left) is the one the goal is
//! judged on; the peers read under it.

use super::*;
use harness::{allowed_cpus, back_free_memory, pin_process};

/// CPU seconds one cold read took, of the store and of each process on the client
/// side.
#[derive(Clone, Copy)]
struct ColdCpu {
    store: f64,
    /// tierfs's daemon; 0 for the raw client.
    daemon: f64,
    /// The reading process: the one that read through the mount, or the raw
    /// client.
    reader: f64,
}

/// What one cold read measured: its MB/s with the steal time it saw, and its CPU.
type Measured = ((f64, f64), ColdCpu);

/// What a run's reads share besides the file.
#[derive(Clone, Copy)]
struct Condition {
    /// The store runs on the last CPU the benchmark may use, the clients on
    /// the others.
    own_cpu: bool,
    /// Memory is faulted in and freed just before each read.
    backed: bool,
    case: &'static str,
    goal: &'static str,
}

const CONDITIONS: [Condition; 4] = [
    Condition {
        own_cpu: false,
        backed: false,
        case: "cold sequential read",
        goal: ">= 0.9",
    },
    Condition {
        own_cpu: false,
        backed: true,
        case: "cold sequential read, memory backed first",
        goal: "",
    },
    Condition {
        own_cpu: true,
        backed: false,
        case: "cold sequential read, the store on a CPU of its own",
        goal: "",
    },
    Condition {
        own_cpu: true,
        backed: true,
        case: "cold sequential read, the store on a CPU of its own, memory backed first",
        goal: "",
    },
];

impl Condition {
    fn describe(&self) -> String {
        format!(
            "The store {}, memory {}",
            if self.own_cpu {
                "on a CPU of its own"
            } else {
                "sharing the CPUs"
            },
            if self.backed {
                "backed first"
            } else {
                "as the machine left it"
            }
        )
    }
}

/// tierfs's and the raw client's cold reads under one condition, per run.
#[derive(Default)]
struct ColdSeries {
    tierfs: Vec<Measured>,
    raw: Vec<Measured>,
}

impl ColdSeries {
    fn speeds(list: &[Measured]) -> Vec<f64> {
        list.iter().map(|((speed, _), _)| *speed).collect()
    }

    fn row(&self, condition: &Condition, rss: f64) -> Row {
        let (cold, raw) = (Self::speeds(&self.tierfs), Self::speeds(&self.raw));
        Row {
            case: condition.case.into(),
            tierfs: median(cold.clone()),
            baseline_name: "object_store parallel ranged GET (16)".into(),
            baseline: median(raw.clone()),
            unit: "MB/s",
            goal: condition.goal,
            rss_mib: Some(rss),
            paired_ratio: paired_ratio(&cold, &raw),
        }
    }

    /// Per run MB/s and steal time, and CPU seconds per GiB (medians of the runs).
    fn detail(&self, gib: f64) -> String {
        let runs = self
            .tierfs
            .iter()
            .zip(&self.raw)
            .map(|(((t, ts), _), ((r, rs), _))| format!("{t:.0} / {r:.0} ({ts:.1} / {rs:.1} s)"))
            .collect::<Vec<_>>()
            .join(", ");
        let per_gib = |list: &[Measured], part: fn(&ColdCpu) -> f64| {
            median(list.iter().map(|(_, c)| part(c)).collect()) / gib
        };
        format!(
            "{runs}; CPU seconds per GiB read, medians of the runs: the store {:.2} serving tierfs \
             and {:.2} serving the raw client; tierfs's daemon {:.2} and the process reading \
             through the mount {:.2}, the raw client {:.2}",
            per_gib(&self.tierfs, |c| c.store),
            per_gib(&self.raw, |c| c.store),
            per_gib(&self.tierfs, |c| c.daemon),
            per_gib(&self.tierfs, |c| c.reader),
            per_gib(&self.raw, |c| c.reader),
        )
    }
}

/// The cold rows (tierfs against the raw client under each condition this host
/// can set up, then against each peer installed) and a paragraph on each run's
/// figures.
pub(super) fn cold_rows(
    backend: &Backend,
    client: &dyn ObjectStore,
    size: u64,
    runs: usize,
    scratch: &Path,
) -> (Vec<Row>, String) {
    let Backend::S3(server) = backend else {
        unreachable!("the throughput benchmark runs against s3s-fs")
    };
    let peers: Vec<&str> = ["rclone", "s3fs"]
        .into_iter()
        .filter(|tool| {
            let found = installed(tool);
            if !found {
                println!("{tool} is not installed: its row is left out (apt-get install {tool})");
            }
            found
        })
        .collect();
    // The CPUs the benchmark may use: under the conditions that give the store
    // a CPU of its own, the store runs on the last and the clients on the rest.
    let cpus = allowed_cpus();
    let (client_cpus, store_cpu) = cpus.split_at(cpus.len().saturating_sub(1));
    let conditions: Vec<Condition> = CONDITIONS
        .into_iter()
        .filter(|c| !c.own_cpu || !client_cpus.is_empty())
        .collect();
    let mut peer_speeds: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); peers.len()];
    let mut series: Vec<ColdSeries> = conditions.iter().map(|_| ColdSeries::default()).collect();
    let mut rss = 0f64;
    let server_pid = server.pid().expect("s3s-fs is running");
    let this_process = std::process::id();
    // The page cache of the file read, the chunk buffers and some to spare.
    let to_back = 3 * size;
    let backed_bytes = std::cell::Cell::new(0);
    for run in 0..runs {
        for (condition, series) in conditions.iter().zip(series.iter_mut()) {
            // The client side is this process and the daemons it starts, which
            // inherit its CPUs.
            let (clients, store_cpus) = if condition.own_cpu {
                (client_cpus, store_cpu)
            } else {
                (&cpus[..], &cpus[..])
            };
            assert!(
                pin_process(this_process, clients) && pin_process(server_pid, store_cpus),
                "setting the CPUs of the store ({store_cpus:?}) and the clients ({clients:?}) failed"
            );
            let start = || {
                cold_start(backend, "big.bin");
                if condition.backed {
                    backed_bytes.set(back_free_memory(to_back));
                }
            };
            let raw_read = || {
                start();
                let store = CpuMeter::start(&[server_pid]);
                let client_side = CpuMeter::start(&[this_process]);
                let measured = with_steal(|| raw_parallel_get(client, "big.bin", size, 16));
                let cpu = ColdCpu {
                    store: store.seconds(),
                    daemon: 0.0,
                    reader: client_side.seconds(),
                };
                (measured, cpu)
            };
            let tierfs_read = |rss: &mut f64| {
                let cache = tempfile::tempdir().unwrap();
                let m = Mount::new(backend, cache.path(), &[]);
                start();
                let daemon = daemon_pid(m.dir.path()).expect("the mount's daemon is running");
                let store = CpuMeter::start(&[server_pid]);
                let daemon_side = CpuMeter::start(&[daemon]);
                // The reader is this process.
                let reader = CpuMeter::start(&[this_process]);
                let measured = with_steal(|| read_speed(&m.path("big.bin"), 1 << 20));
                let cpu = ColdCpu {
                    store: store.seconds(),
                    daemon: daemon_side.seconds(),
                    reader: reader.seconds(),
                };
                *rss = rss.max(daemon_peak_rss(m.dir.path()).unwrap_or(0.0));
                m.unmount();
                (measured, cpu)
            };
            // Which side reads first alternates, so that neither always gets the
            // host's quieter turn.
            let (t, r) = if run % 2 == 0 {
                let r = raw_read();
                (tierfs_read(&mut rss), r)
            } else {
                let t = tierfs_read(&mut rss);
                (t, raw_read())
            };
            series.tierfs.push(t);
            series.raw.push(r);
            pin_process(this_process, &cpus);
            pin_process(server_pid, &cpus);
            if condition.own_cpu || condition.backed {
                continue;
            }
            // The peers read under the first condition.
            for (tool, speeds) in peers.iter().zip(peer_speeds.iter_mut()) {
                if let Some(list) = speeds {
                    match peer_cold_read(backend, tool, scratch, run) {
                        Some(speed) => list.push(speed),
                        None => *speeds = None,
                    }
                }
            }
        }
    }
    let mut rows = vec![series[0].row(&conditions[0], rss)];
    let cold = ColdSeries::speeds(&series[0].tierfs);
    for (tool, speeds) in peers.iter().zip(peer_speeds) {
        let Some(speeds) = speeds else { continue };
        rows.push(Row {
            case: format!("cold sequential read vs {tool}"),
            tierfs: median(cold.clone()),
            baseline_name: format!("{tool} mount"),
            baseline: median(speeds.clone()),
            unit: "MB/s",
            goal: ">= 1.3",
            // The same tierfs runs as the first row.
            rss_mib: Some(rss),
            paired_ratio: paired_ratio(&cold, &speeds),
        });
    }
    rows.extend(
        conditions
            .iter()
            .zip(&series)
            .skip(1)
            .map(|(condition, series)| series.row(condition, rss)),
    );
    let gib = size as f64 / (1u64 << 30) as f64;
    let per_condition = conditions
        .iter()
        .zip(&series)
        .map(|(condition, series)| format!("{}: {}", condition.describe(), series.detail(gib)))
        .collect::<Vec<_>>()
        .join(". ");
    let detail = format!(
        "Cold sequential read per run, tierfs / raw client MB/s (in brackets, the CPU time \
         the host took from this VM during each read, its steal time). {per_condition}. \
         Backing memory first is faulting in {} MiB and freeing it just before each read; \
         this VM {} free pages to its host.",
        backed_bytes.get() >> 20,
        if harness::free_page_reporting() {
            "reports"
        } else {
            "does not report"
        },
    );
    (rows, detail)
}
