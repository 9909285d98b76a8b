//! pjdfstest, the POSIX suite, inside tierfs mounts over a local directory and
//! over s3s-fs, for the operations tierfs serves (open, mkdir, rmdir, unlink,
//! rename, truncate, ftruncate, chmod, chown, utimensat, symlink). Checks
//! expected to fail are listed, with why, in `tests/pjdfstest/expected-failures.txt`;
//! any other failing check fails the run. A check on the list that passes is
//! reported, so the list can shrink.
//!
//! The suite's source is in `../shared/third_party/` next to the checkout
//! (tests/setup.sh builds it into $TIERFS_TOOLS); without it the test skips
//! and says so. `TIERFS_PJDFSTEST_RECORD=FILE` writes this run's failures in
//! the list's format, each classified, for reviewing a new list.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Backend, Mount};

const GROUPS: [&str; 11] = [
    "open",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "truncate",
    "ftruncate",
    "chmod",
    "chown",
    "utimensat",
    "symlink",
];

const EXPECTED: &str = include_str!("pjdfstest/expected-failures.txt");

/// The built suite, if setup found its source.
fn suite() -> Option<PathBuf> {
    let tools = std::env::var_os("TIERFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tierfs-tools")
        });
    let dir = tools.join("pjdfstest");
    dir.join("pjdfstest").is_file().then_some(dir)
}

/// One failed check: its file (`chmod/00.t`), number and TAP line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Failure {
    file: String,
    check: u32,
    line: String,
}

/// Runs every test file of the groups in `work`; returns checks run per
/// group and the failures.
fn run_groups(suite: &Path, work: &Path) -> (BTreeMap<String, (u32, u32)>, Vec<Failure>) {
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    for group in GROUPS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(suite.join("tests").join(group))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "t"))
            .collect();
        files.sort();
        let (mut run, mut failed) = (0, 0);
        for file in files {
            let name = format!("{group}/{}", file.file_name().unwrap().to_string_lossy());
            let out = Command::new("timeout")
                .args(["600", "sh"])
                .arg(&file)
                .current_dir(work)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                let (ok, rest) = if let Some(rest) = line.strip_prefix("ok ") {
                    (true, rest)
                } else if let Some(rest) = line.strip_prefix("not ok ") {
                    (false, rest)
                } else {
                    continue;
                };
                let Some(check) = rest.split_whitespace().next().and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                run += 1;
                if !ok {
                    failed += 1;
                    failures.push(Failure {
                        file: name.clone(),
                        check,
                        line: line.to_string(),
                    });
                }
            }
        }
        counts.insert(group.to_string(), (run, failed));
    }
    (counts, failures)
}

/// The checks the list expects to fail on `backend`: (file, check).
fn expected(backend: &str) -> BTreeSet<(String, u32)> {
    let mut set = BTreeSet::new();
    for line in EXPECTED.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, ' ');
        let (Some(on), Some(file), Some(ranges)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad line in the expected failures: {line}");
        };
        if on != backend && on != "all" {
            continue;
        }
        for range in ranges.split(',') {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            let (from, to): (u32, u32) = (from.parse().unwrap(), to.parse().unwrap());
            set.extend((from..=to).map(|n| (file.to_string(), n)));
        }
    }
    set
}

/// Why a check fails, as far as its TAP line tells: the operations tierfs
/// refuses by design, checks that fail only because one of those did, and
/// the rest by what was answered.
fn classify(failures: &[Failure]) -> Vec<(Failure, String)> {
    let refused = |line: &str| {
        ["'mknod ", "'mkfifo ", "'bind ", "'link "]
            .iter()
            .find(|op| line.contains(*op))
            .map(|op| op.trim_matches(|c| c == '\'' || c == ' ').to_string())
    };
    let mut refused_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for f in failures {
        let why = if let Some(op) = refused(&f.line) {
            // The name the refused call was to make, which later checks use.
            let words: Vec<&str> = f.line.split_whitespace().collect();
            let at = words.iter().position(|w| w.trim_start_matches('\'') == op);
            if let Some(name) = at.and_then(|i| words.get(i + 1)) {
                refused_names
                    .entry(f.file.clone())
                    .or_default()
                    .insert(name.trim_end_matches(['\'', ',']).to_string());
            }
            match op.as_str() {
                "link" => "hard links answer EPERM by design".to_string(),
                _ => "FIFOs, sockets and device nodes answer EPERM by design".to_string(),
            }
        } else if refused_names
            .get(&f.file)
            .is_some_and(|names| names.iter().any(|n| f.line.contains(n.as_str())))
        {
            "follows from a FIFO, socket, device node or hard link that was refused".to_string()
        } else if f.file.ends_with("/03.t") || f.file == "rename/02.t" {
            // These files make paths of PATH_MAX (4,096) bytes.
            "a path of PATH_MAX bytes is over S3's 1,024-byte key limit (ENAMETOOLONG)".to_string()
        } else if !f.line.contains(" - tried ") {
            // A comparison the script makes itself, with no message.
            if refused_names.contains_key(&f.file) {
                "a comparison in the script, in a loop over file types after a refused FIFO, socket or device node".to_string()
            } else {
                "a comparison in the script (times, link counts or inode numbers) that does not hold".to_string()
            }
        } else {
            let answered = f.line.rsplit("got ").next().unwrap_or("?");
            format!("not met: answers {answered}")
        };
        out.push((f.clone(), why));
    }
    out
}

/// The failures in the list's format: a line per file and reason, checks as
/// ranges.
fn record(backend: &str, classified: &[(Failure, String)]) -> String {
    let mut by: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
    for (f, why) in classified {
        by.entry((f.file.clone(), why.clone()))
            .or_default()
            .push(f.check);
    }
    let mut text = String::new();
    for ((file, why), mut checks) in by {
        checks.sort();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for c in checks {
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == c => *to = c,
                _ => ranges.push((c, c)),
            }
        }
        let ranges: Vec<String> = ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        writeln!(text, "{backend} {file} {} {why}", ranges.join(",")).unwrap();
    }
    text
}

fn conformance(backend: &Backend, name: &str) {
    let Some(suite) = suite() else {
        eprintln!(
            "skipped: pjdfstest is not built; tests/setup.sh builds it from \
             ../shared/third_party/pjdfstest-*.tar.gz when that folder is next to the checkout"
        );
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(backend, cache.path(), &["allow_other"]);
    // The suite switches to other users: they must reach the mount.
    std::fs::set_permissions(mount.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = mount.path("pjdfstest");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (counts, failures) = run_groups(&suite, &work);
    mount.unmount();

    let mut table = format!("pjdfstest over {name}: group, checks, passed, failed\n");
    for (group, (run, failed)) in &counts {
        writeln!(table, "| {group} | {run} | {} | {failed} |", run - failed).unwrap();
    }
    println!("{table}");
    let classified = classify(&failures);
    if let Some(path) = std::env::var_os("TIERFS_PJDFSTEST_RECORD") {
        let path = PathBuf::from(path).with_extension(name);
        std::fs::write(&path, record(name, &classified)).unwrap();
        println!("failures recorded in {}", path.display());
    }
    let expected = expected(name);
    let unexpected: Vec<&(Failure, String)> = classified
        .iter()
        .filter(|(f, _)| !expected.contains(&(f.file.clone(), f.check)))
        .collect();
    let failed: BTreeSet<(String, u32)> =
        failures.iter().map(|f| (f.file.clone(), f.check)).collect();
    let now_passing = expected.difference(&failed).count();
    if now_passing > 0 {
        println!("{now_passing} checks listed as failing pass now: the list can shrink");
    }
    assert!(
        unexpected.is_empty(),
        "{} checks failed that are not expected to:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .take(40)
            .map(|(f, why)| format!("{} {}: {why}", f.file, f.line))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn pjdfstest_over_a_local_directory() {
    conformance(&Backend::local(), "local");
}

#[test]
fn pjdfstest_over_s3() {
    conformance(&Backend::s3(), "s3");
}
