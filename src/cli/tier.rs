//! `tierfs status`, `pin`, `unpin` and `prefetch`: the tier manager from the
//! command line, through extended attributes and the control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::control::client::{find_mount, mounts, request_json, socket_of};
use crate::control::status::Status;
use crate::engine::xattrs::{PIN, PREFETCH, TIER};
use crate::model::tier_report::TierReport;

const POLL: Duration = Duration::from_millis(200);

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// `tierfs status [MOUNTPOINT]`: a table per mount, or the JSON the API gives.
pub fn status(mountpoint: Option<&Path>, as_json: bool) -> Result<(), String> {
    let roots = match mountpoint {
        Some(m) => vec![find_mount(m)?.0],
        None => mounts(),
    };
    if roots.is_empty() {
        return Err("no tierfs mount found".into());
    }
    let rt = runtime()?;
    for root in roots {
        let socket = socket_of(&root)?;
        let status: Status = rt.block_on(request_json(&socket, Method::GET, "/status", None))?;
        if as_json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
            );
        } else {
            print!("{}", status.render(&root.display().to_string()));
        }
    }
    Ok(())
}

fn os_error(what: &str, path: &Path, e: std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSPC) => " (it does not fit next to the other pins; see `tierfs status`)",
        Some(libc::EINVAL) => " (the tier must be ram or nvme)",
        Some(libc::ENODATA) => " (no pin of its own)",
        _ => "",
    };
    format!("{what} {}: {e}{hint}", path.display())
}

/// `tierfs pin PATH --tier T [--wait]`.
pub fn pin(path: &Path, tier: &str, wait: bool) -> Result<(), String> {
    xattr::set(path, PIN, tier.as_bytes()).map_err(|e| os_error("pin", path, e))?;
    if wait {
        wait_for_pin(path)?;
    }
    Ok(())
}

/// `tierfs unpin PATH`.
pub fn unpin(path: &Path) -> Result<(), String> {
    xattr::remove(path, PIN).map_err(|e| os_error("unpin", path, e))
}

/// Every file at or below `path`.
fn files_below(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| files_below(&e.path()))
        .collect()
}

/// The share of a file its pin has in place, from `user.tierfs.tier`'s
/// trailing `pin TIER P%`.
fn pin_percent(file: &Path) -> Option<u64> {
    let report = xattr::get(file, TIER).ok()??;
    let report: TierReport = String::from_utf8_lossy(&report).parse().ok()?;
    report.pin.map(|(_, percent)| percent)
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Waits until every file the pin covers is wholly in its tier.
fn wait_for_pin(path: &Path) -> Result<(), String> {
    let files: Vec<(PathBuf, u64)> = files_below(path)
        .into_iter()
        .filter_map(|f| std::fs::metadata(&f).ok().map(|m| (f, m.len())))
        .collect();
    let total = files.iter().map(|(_, s)| s).sum();
    let progress = bar(total);
    loop {
        let mut done = 0u64;
        let mut all = true;
        for (file, size) in &files {
            let percent = pin_percent(file).unwrap_or(0);
            all &= percent >= 100;
            done += size * percent / 100;
        }
        progress.set_position(done);
        if all {
            progress.finish_with_message("pinned");
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// `tierfs prefetch PATH --tier T [--wait]`: without `--wait` through the
/// attribute; with it as a job of the control API, followed to its end.
pub fn prefetch(path: &Path, tier: &str, wait: bool) -> Result<(), String> {
    if !wait {
        return xattr::set(path, PREFETCH, tier.as_bytes())
            .map_err(|e| os_error("prefetch", path, e));
    }
    let (root, key) = find_mount(path)?;
    let socket = socket_of(&root)?;
    let rt = runtime()?;
    let body = json!({ "paths": [key], "tier": tier });
    let answer: serde_json::Value = rt.block_on(request_json(
        &socket,
        Method::POST,
        "/placement",
        Some(body),
    ))?;
    let id = answer["job"]
        .as_u64()
        .ok_or("the control API gave no job id")?;
    let progress = bar(0);
    loop {
        let job: serde_json::Value = rt.block_on(request_json(
            &socket,
            Method::GET,
            &format!("/jobs/{id}"),
            None,
        ))?;
        progress.set_length(job["bytes_total"].as_u64().unwrap_or(0));
        progress.set_position(job["bytes_done"].as_u64().unwrap_or(0));
        match &job["state"] {
            serde_json::Value::String(s) if s == "done" => {
                progress.finish_with_message("fetched");
                return Ok(());
            }
            serde_json::Value::Object(o) if o.contains_key("failed") => {
                progress.abandon();
                return Err(format!("prefetch {}: {}", path.display(), o["failed"]));
            }
            _ => std::thread::sleep(POLL),
        }
    }
}
