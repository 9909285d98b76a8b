//! A trace simulator: replays accesses to checkpoint files against one cache
//! tier of a given size and reports the byte hit ratio of the tierfs policy,
//! LRU, moka's own policy and Belady's offline optimum.
//!
//! A trace is a CSV file with the header `time,file,offset,length,size`: seconds,
//! a file name, the byte range read or written, and the file's size. Reads are
//! counted per chunk touched, with the bytes of the chunk the range covers.

pub mod caches;
pub mod workloads;

use std::collections::HashMap;

use caches::{Belady, Lru, Moka, SimCache, Tierfs};

use crate::stats::Decay;

/// A chunk: a file number and the chunk's index in it.
pub type ChunkId = (u32, u64);

/// One chunk touched at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub time: u64,
    pub chunk: ChunkId,
    /// Size of the chunk (the last one of a file is shorter).
    pub bytes: u64,
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub time: u64,
    pub file: String,
    pub offset: u64,
    pub length: u64,
    pub size: u64,
}

/// Parses a trace; errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceEvent>, String> {
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("time,") {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |why: &str| format!("line {}: {why}: '{line}'", n + 1);
        let [time, file, offset, length, size] = fields[..] else {
            return Err(bad("expected time,file,offset,length,size"));
        };
        let number = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(&format!("{what} is not a whole number")))
        };
        let event = TraceEvent {
            time: number(time, "time")?,
            file: file.to_string(),
            offset: number(offset, "offset")?,
            length: number(length, "length")?,
            size: number(size, "size")?,
        };
        if event.offset.saturating_add(event.length) > event.size {
            return Err(bad("the range ends past the file's size"));
        }
        events.push(event);
    }
    Ok(events)
}

/// The chunk accesses of a trace, in time order (stable for equal times).
pub fn accesses(events: &[TraceEvent], chunk_size: u64) -> Vec<Access> {
    let mut files: HashMap<&str, u32> = HashMap::new();
    let mut out = Vec::new();
    let mut sorted: Vec<&TraceEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.time);
    for e in sorted {
        if e.length == 0 {
            continue;
        }
        let next = files.len() as u32;
        let file = *files.entry(e.file.as_str()).or_insert(next);
        let first = e.offset / chunk_size;
        let last = (e.offset + e.length - 1) / chunk_size;
        for index in first..=last {
            let start = index * chunk_size;
            let bytes = chunk_size.min(e.size - start);
            out.push(Access {
                time: e.time,
                chunk: (file, index),
                bytes,
            });
        }
    }
    out
}

/// Byte hit ratios of the four policies at one capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    pub tierfs: f64,
    pub lru: f64,
    pub moka: f64,
    pub belady: f64,
}

impl Ratios {
    /// Whether tierfs reaches 0.95 of Belady and at least the best other policy.
    pub fn meets_goal(&self) -> bool {
        self.tierfs >= 0.95 * self.belady && self.tierfs >= self.lru.max(self.moka) - 1e-9
    }
}

fn byte_hit_ratio(cache: &mut dyn SimCache, accesses: &[Access]) -> f64 {
    let (mut hit, mut total) = (0u64, 0u64);
    for (i, a) in accesses.iter().enumerate() {
        total += a.bytes;
        if cache.access(i, a) {
            hit += a.bytes;
        }
    }
    if total == 0 {
        0.0
    } else {
        hit as f64 / total as f64
    }
}

/// Replays `accesses` against each policy with `capacity` bytes.
pub fn compare(accesses: &[Access], capacity: u64, decay: Decay) -> Ratios {
    Ratios {
        tierfs: byte_hit_ratio(&mut Tierfs::new(capacity, decay), accesses),
        lru: byte_hit_ratio(&mut Lru::new(capacity), accesses),
        moka: byte_hit_ratio(&mut Moka::new(capacity), accesses),
        belady: byte_hit_ratio(&mut Belady::new(capacity, accesses), accesses),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_and_split_into_chunks() {
        let text = "time,file,offset,length,size\n0,a,0,10,25\n5,a,8,17,25\n";
        let events = parse_trace(text).unwrap();
        let got = accesses(&events, 8);
        let chunks: Vec<(ChunkId, u64)> = got.iter().map(|a| (a.chunk, a.bytes)).collect();
        assert_eq!(
            chunks,
            vec![
                ((0, 0), 8),
                ((0, 1), 8),
                ((0, 1), 8),
                ((0, 2), 8),
                ((0, 3), 1)
            ]
        );
        let err = parse_trace("0,a,20,10,25\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("past the file's size"),
            "{err}"
        );
        assert!(
            parse_trace("x,a,0,1,2\n")
                .unwrap_err()
                .contains("time is not")
        );
    }

    /// The synthetic workloads at a small scale (the simulator's smoke run):
    /// every ratio is a ratio, Belady is never beaten, and the tierfs policy
    /// meets its goal where it does at full scale.
    #[test]
    fn synthetic_workloads_smoke() {
        for w in workloads::all(0.05) {
            let a = accesses(&w.events, 64 << 20);
            assert!(!a.is_empty(), "{}", w.name);
            for capacity in [w.ram, w.nvme] {
                let r = compare(&a, capacity, Decay::default());
                for v in [r.tierfs, r.lru, r.moka, r.belady] {
                    assert!((0.0..=1.0).contains(&v), "{}: {r:?}", w.name);
                }
                assert!(r.belady + 1e-9 >= r.tierfs.max(r.lru), "{}: {r:?}", w.name);
                assert!(r.tierfs + 1e-9 >= r.lru, "{}: {r:?}", w.name);
                if w.name != "fleet" {
                    assert!(r.meets_goal(), "{}: {r:?}", w.name);
                }
            }
        }
    }

    #[test]
    fn belady_is_never_beaten_on_a_small_trace() {
        let mut text = String::new();
        for t in 0..400u64 {
            let file = [0, 1, 0, 2, 0, 1, 3, 0][(t % 8) as usize] + (t / 100) as u32;
            text.push_str(&format!("{t},f{file},0,30,30\n"));
        }
        let a = accesses(&parse_trace(&text).unwrap(), 10);
        let r = compare(&a, 60, Decay::default());
        assert!(
            r.belady >= r.lru && r.belady >= r.tierfs && r.belady >= r.moka,
            "{r:?}"
        );
        assert!(r.tierfs > 0.0 && r.lru > 0.0);
    }
}
