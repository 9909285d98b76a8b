//! The safetensors rows: a model loaded with `safe_open`, cold, warm and settled,
//! through the mount against the same file on local disk.

use super::*;

/// A safetensors model loaded tensor by tensor with safe_open (mmap), cold and
/// warm, through the mount vs from local disk; MB/s of tensor bytes.
pub(super) fn safetensors_rows(
    backend: &Backend,
    client: &dyn ObjectStore,
    scratch: &Path,
    model_mb: usize,
    runs: usize,
) -> Vec<Row> {
    let model = scratch.join("model.safetensors");
    // Tensors of 16 MiB each.
    let layers = (model_mb / 16).max(1);
    run_python(
        &format!(
            "import numpy as np\nfrom safetensors.numpy import save_file\nrng = np.random.default_rng(1)\n\
         save_file({{f'l{{i}}': rng.standard_normal((2048, 2048), dtype=np.float32) for i in range({layers})}}, '{}')\n",
            model.display()
        ),
        "",
    );
    put_file(client, "st/model.safetensors", &model);
    let load = |path: &Path| -> f64 {
        let out = run_python(
            &format!(
                "import time\nfrom safetensors import safe_open\nt = time.perf_counter(); n = 0\n\
             with safe_open('{}', framework='numpy') as f:\n    for k in f.keys():\n        n += f.get_tensor(k).nbytes\n\
             print(n / 1e6 / (time.perf_counter() - t))\n",
                path.display()
            ),
            "",
        );
        out.trim().parse().unwrap()
    };
    let model_size = std::fs::metadata(&model).unwrap().len();
    let (mut cold, mut warm, mut settled, mut disk) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The daemon's peak over the cold and the warm load, the highest of the runs.
    let mut rss = None::<f64>;
    for _ in 0..runs {
        let cache = tempfile::tempdir().unwrap();
        let m = Mount::new(backend, cache.path(), &[]);
        cold_start(backend, "st");
        cold.push(load(&m.path("st/model.safetensors")));
        warm.push(load(&m.path("st/model.safetensors")));
        // Once the cold load's NVMe copy has landed and been written back, as
        // the local file's has, and the daemon has handed the page cache of the
        // tierfs file over to it (`page_cache_handover` after the last close).
        wait_for_cache(cache.path(), model_size);
        std::process::Command::new("sync").status().unwrap();
        assert!(
            wait_for(std::time::Duration::from_secs(60), || m
                .log()
                .contains("took over from the page cache")),
            "the page cache was never handed over to the NVMe copy"
        );
        // The local file's first load reads it from disk. Then the settled file
        // and the local one take turns, twice each: single loads on this host
        // swing by a tenth from one to the next.
        load(&model);
        let (mut tierfs_total, mut disk_total) = (0.0, 0.0);
        for _ in 0..2 {
            tierfs_total += load(&m.path("st/model.safetensors"));
            disk_total += load(&model);
        }
        settled.push(tierfs_total / 2.0);
        disk.push(disk_total / 2.0);
        if let Some(peak) = daemon_peak_rss(m.dir.path()) {
            rss = Some(rss.map_or(peak, |r| r.max(peak)));
        }
    }
    let row = |case: &str, speeds: &[f64], goal: &'static str| Row {
        case: format!("safetensors safe_open, {case}"),
        tierfs: median(speeds.to_vec()),
        baseline_name: "local disk, warm".into(),
        baseline: median(disk.clone()),
        unit: "MB/s",
        goal,
        rss_mib: rss,
        paired_ratio: paired_ratio(speeds, &disk),
    };
    vec![
        row("cold", &cold, ""),
        row("warm, right after the cold load", &warm, ">= 0.9"),
        row("warm, settled on NVMe and handed over", &settled, ">= 0.9"),
    ]
}
