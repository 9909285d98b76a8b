//! Replays checkpoint workloads against one cache tier at a time and prints the
//! byte hit ratio of the tierfs policy, LRU, moka and Belady's optimum.
//!
//! `tierfs-sim` runs the synthetic workloads (see `sim::workloads`);
//! `tierfs-sim TRACE.csv RAM_BYTES NVME_BYTES` replays a trace
//! (`time,file,offset,length,size`). `--scale F` shrinks the synthetic
//! workloads; `--chunk BYTES` sets the chunk size (64 MiB).

use tierfs_policy::Decay;
use tierfs_policy::sim::{self, workloads};

fn main() {
    if let Err(e) = run() {
        eprintln!("tierfs-sim: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| -> Result<Option<String>, String> {
        match args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < args.len() => {
                let v = args.remove(i + 1);
                args.remove(i);
                Ok(Some(v))
            }
            Some(_) => Err(format!("{flag} needs a value")),
            None => Ok(None),
        }
    };
    let number = |v: String, what: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|n| *n > 0.0)
            .ok_or(format!("{what} '{v}' is not a positive number"))
    };
    let scale = take("--scale")?
        .map(|v| number(v, "--scale"))
        .transpose()?
        .unwrap_or(1.0);
    let chunk = take("--chunk")?
        .map(|v| number(v, "--chunk"))
        .transpose()?
        .unwrap_or((64u64 << 20) as f64) as u64;
    let workloads: Vec<workloads::Workload> =
        match args.as_slice() {
            [] => workloads::all(scale.min(1.0)),
            [trace, ram, nvme] => {
                let text = std::fs::read_to_string(trace).map_err(|e| format!("{trace}: {e}"))?;
                vec![workloads::Workload {
                    name: "trace",
                    events: sim::parse_trace(&text)?,
                    ram: number(ram.clone(), "RAM_BYTES")? as u64,
                    nvme: number(nvme.clone(), "NVME_BYTES")? as u64,
                }]
            }
            _ => return Err(
                "usage: tierfs-sim [--scale F] [--chunk BYTES] [TRACE.csv RAM_BYTES NVME_BYTES]"
                    .into(),
            ),
        };
    println!(
        "| workload | tier | capacity (GiB) | tierfs | LRU | moka | Belady | tierfs / Belady | goal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut short = Vec::new();
    for w in &workloads {
        let accesses = sim::accesses(&w.events, chunk);
        for (tier, capacity) in [("ram", w.ram), ("nvme", w.nvme)] {
            let r = sim::compare(&accesses, capacity, Decay::default());
            let verdict = if r.meets_goal() { "met" } else { "missed" };
            if !r.meets_goal() {
                short.push(format!("{}/{tier}", w.name));
            }
            println!(
                "| {} | {tier} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {verdict} |",
                w.name,
                capacity as f64 / (1u64 << 30) as f64,
                r.tierfs,
                r.lru,
                r.moka,
                r.belady,
                if r.belady > 0.0 {
                    r.tierfs / r.belady
                } else {
                    1.0
                },
            );
        }
    }
    println!();
    if short.is_empty() {
        println!("Goal (>= 0.95 of Belady and >= the best of LRU and moka) met everywhere.");
    } else {
        println!(
            "Goal (>= 0.95 of Belady and >= the best of LRU and moka) missed on: {}",
            short.join(", ")
        );
    }
    Ok(())
}
