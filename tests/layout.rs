//! The subsystems of `src/` use each other in one direction only, as the README's
//! "Layout of the code" says: cli → control → engine → tier_manager, write →
//! tiers, namespace, store → meta, io → model (and `error` from anywhere). Test
//! modules may reach across.

use std::collections::BTreeSet;
use std::path::Path;

/// Each folder's level: a folder uses only folders of a higher level.
const LEVELS: [(&str, u32); 12] = [
    ("cli", 0),
    ("control", 1),
    ("engine", 2),
    ("tier_manager", 3),
    ("write", 3),
    ("tiers", 4),
    ("namespace", 4),
    ("store", 4),
    ("meta", 5),
    ("io", 5),
    ("model", 6),
    ("error", 7),
];

fn level(folder: &str) -> Option<u32> {
    LEVELS
        .iter()
        .find(|(name, _)| *name == folder)
        .map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::FOLDER` paths a file names outside its test module.
fn used_folders(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn subsystems_use_only_the_ones_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let folder = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = level(&folder) else {
            continue; // lib.rs, main.rs
        };
        for used in used_folders(&std::fs::read_to_string(file).unwrap()) {
            let Some(theirs) = level(&used) else {
                wrong.push(format!(
                    "{}: crate::{used} is no subsystem",
                    relative.display()
                ));
                continue;
            };
            if used != folder && theirs <= own {
                wrong.push(format!(
                    "{} ({folder}) uses crate::{used}",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    assert!(
        wrong.is_empty(),
        "uses against the layout:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_use_against_the_layout() {
    let text =
        "use crate::engine::EngineCore;\n#[cfg(test)]\nmod tests {\n    use crate::cli::main;\n}\n";
    let used = used_folders(text);
    assert_eq!(used, BTreeSet::from(["engine".to_string()]));
    assert!(
        level("engine") < level("tiers"),
        "tiers may not use the engine"
    );
}
