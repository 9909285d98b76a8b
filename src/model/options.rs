//! Mount options: `-o k=v,...` on the command line, in fstab, or in a TOML file given
//! by `config=`. All three go through [`MountOptions::apply`], so they cannot drift.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::units::{format_duration, format_size, parse_duration, parse_size};

/// A mount option that could not be taken, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown mount option '{0}'")]
    Unknown(String),
    #[error("mount option '{name}': {reason}")]
    Invalid { name: String, reason: String },
    #[error("config file {path}: {reason}")]
    ConfigFile { path: String, reason: String },
}

/// When `fsync` on a file written through the mount returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once the staged bytes and their upload job are durable on local disk.
    Local,
    /// Once the object is uploaded and verified in the store.
    Remote,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Where the NVMe tier and the registry live; a per-user default when unset.
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    /// The NVMe tier evicts to keep at least this much free on the cache's disk.
    pub cache_min_free: u64,
    pub ram_size: u64,
    pub chunk_size: u64,
    pub metadata_ttl: Duration,
    pub fetch_timeout: Duration,
    pub fetch_retries: u32,
    /// Most chunks on their way ahead of one sequential reader.
    pub prefetch_max: u32,
    /// Most ranged GETs in flight at once, demand and readahead together.
    pub fetch_concurrency: u32,
    pub fuse_threads: usize,
    /// Let the kernel read files wholly on NVMe, and write staged files, directly
    /// (FUSE passthrough).
    pub passthrough: bool,
    /// Read and write modes, owners and times in object metadata (s3fs's
    /// headers); off, every file shows the mount's defaults and no HEAD is
    /// made per file.
    pub posix_metadata: bool,
    pub read_only: bool,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub durability: Durability,
    /// Parts (chunks) uploaded at once, over all files.
    pub upload_concurrency: u32,
    /// Upload bandwidth in bytes per second; 0 is unlimited.
    pub upload_bandwidth: u64,
    /// How long a write waits for uploads to make room when the cache is full of
    /// data not yet in the store, before it fails with ENOSPC.
    pub dirty_wait: Duration,
    /// Local copies of files not read for this long are removed (the store keeps
    /// them); zero keeps them until the cache needs the room.
    pub idle_demote: Duration,
    /// Local copies of files whose version is older than this are removed; zero
    /// never.
    pub age_demote: Duration,
    /// Bandwidth of fetches for pins, placements and prefetches, bytes per
    /// second; 0 is unlimited.
    pub pin_bandwidth: u64,
    /// Bandwidth of background promotions of hot files; 0 is unlimited.
    pub promote_bandwidth: u64,
    /// A TCP address that serves `/metrics` (the control socket always does).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long after its last close a file read into the kernel's page cache
    /// through tierfs waits before its NVMe copy takes that place (read into the
    /// page cache, the tierfs file's pages dropped, later opens passed through);
    /// zero never.
    pub page_cache_handover: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_dir: None,
            cache_size: 10 << 30,
            cache_min_free: 1 << 30,
            ram_size: 1 << 30,
            chunk_size: 8 << 20,
            metadata_ttl: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(30),
            fetch_retries: 3,
            prefetch_max: 16,
            fetch_concurrency: 16,
            fuse_threads: 8,
            passthrough: true,
            posix_metadata: true,
            read_only: false,
            allow_other: false,
            uid: None,
            gid: None,
            endpoint: None,
            region: None,
            durability: Durability::Local,
            upload_concurrency: 8,
            upload_bandwidth: 0,
            dirty_wait: Duration::from_secs(60),
            idle_demote: Duration::ZERO,
            age_demote: Duration::ZERO,
            pin_bandwidth: 0,
            promote_bandwidth: 0,
            metrics_addr: None,
            page_cache_handover: Duration::from_secs(2),
        }
    }
}

/// Options that fstab and mount(8) pass along and that mean nothing to tierfs.
const PASSED_BY_MOUNT: [&str; 9] = [
    "rw", "defaults", "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser",
];

const MIN_CHUNK: u64 = 64 << 10;
const MAX_CHUNK: u64 = 1 << 30;

fn invalid(name: &str, reason: impl Into<String>) -> OptionError {
    OptionError::Invalid {
        name: name.to_string(),
        reason: reason.into(),
    }
}

impl MountOptions {
    /// Parses `-o` arguments (each a comma-separated list), reading a `config=` file
    /// first so that options on the command line override it.
    pub fn parse(lists: &[String]) -> Result<MountOptions, OptionError> {
        let pairs: Vec<(String, Option<String>)> = lists
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (item.to_string(), None),
            })
            .collect();
        let mut options = MountOptions::default();
        for (key, value) in &pairs {
            if key == "config" {
                let path = value
                    .as_deref()
                    .ok_or_else(|| invalid("config", "needs a file path"))?;
                options.apply_config_file(path)?;
            }
        }
        for (key, value) in &pairs {
            if key != "config" {
                options.apply(key, value.as_deref())?;
            }
        }
        Ok(options)
    }

    fn apply_config_file(&mut self, path: &str) -> Result<(), OptionError> {
        let file_error = |reason: String| OptionError::ConfigFile {
            path: path.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(e.message().to_string()))?;
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(true) => {
                    self.apply(&key, None)?;
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                other => {
                    return Err(file_error(format!(
                        "'{key}' must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            self.apply(&key, Some(&text))?;
        }
        Ok(())
    }

    /// Applies one option; `value` is `None` for a bare flag such as `ro`.
    pub fn apply(&mut self, name: &str, value: Option<&str>) -> Result<(), OptionError> {
        let flag = |value: Option<&str>| match value {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(v) => Err(invalid(name, format!("'{v}' is not true or false"))),
        };
        if PASSED_BY_MOUNT.contains(&name) || name.starts_with("x-") {
            return Ok(());
        }
        match name {
            "ro" => self.read_only = flag(value)?,
            "allow_other" => self.allow_other = flag(value)?,
            "passthrough" => self.passthrough = flag(value)?,
            "posix_metadata" => self.posix_metadata = flag(value)?,
            _ => {
                let v = value.ok_or_else(|| invalid(name, "needs a value (name=value)"))?;
                if v.is_empty() {
                    return Err(invalid(name, "needs a value (name=value)"));
                }
                self.apply_valued(name, v)?
            }
        }
        Ok(())
    }

    fn apply_valued(&mut self, name: &str, v: &str) -> Result<(), OptionError> {
        let size = |v: &str| parse_size(v).map_err(|r| invalid(name, r));
        let duration = |v: &str| parse_duration(v).map_err(|r| invalid(name, r));
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| invalid(name, format!("'{v}' is not a whole number")))
        };
        match name {
            "cache_dir" => self.cache_dir = Some(PathBuf::from(v)),
            "cache_size" => self.cache_size = size(v)?,
            "cache_min_free" => self.cache_min_free = size(v)?,
            "ram_size" => self.ram_size = size(v)?,
            "chunk_size" => {
                let n = size(v)?;
                if !(MIN_CHUNK..=MAX_CHUNK).contains(&n) || n % 4096 != 0 {
                    return Err(invalid(
                        name,
                        format!("'{v}' must be a multiple of 4K between 64K and 1G"),
                    ));
                }
                self.chunk_size = n;
            }
            "metadata_ttl" => self.metadata_ttl = duration(v)?,
            "fetch_timeout" => {
                let d = duration(v)?;
                if d.is_zero() {
                    return Err(invalid(name, "must be longer than zero"));
                }
                self.fetch_timeout = d;
            }
            "fetch_retries" => self.fetch_retries = number(v)?,
            "prefetch_max" => self.prefetch_max = number(v)?,
            "fetch_concurrency" => {
                let n = number(v)?;
                if !(1..=1024).contains(&n) {
                    return Err(invalid(name, format!("'{v}' must be between 1 and 1024")));
                }
                self.fetch_concurrency = n;
            }
            "fuse_threads" => {
                let n = number(v)?;
                if !(1..=256).contains(&n) {
                    return Err(invalid(name, format!("'{v}' must be between 1 and 256")));
                }
                self.fuse_threads = n as usize;
            }
            "uid" => self.uid = Some(number(v)?),
            "gid" => self.gid = Some(number(v)?),
            "endpoint" => {
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(invalid(
                        name,
                        format!("'{v}' must be a URL starting with http:// or https://"),
                    ));
                }
                self.endpoint = Some(v.to_string())
            }
            "region" => self.region = Some(v.to_string()),
            "durability" => {
                self.durability = match v {
                    "local" => Durability::Local,
                    "remote" => Durability::Remote,
                    _ => return Err(invalid(name, format!("'{v}' is not local or remote"))),
                }
            }
            "upload_concurrency" => {
                let n = number(v)?;
                if !(1..=256).contains(&n) {
                    return Err(invalid(name, format!("'{v}' must be between 1 and 256")));
                }
                self.upload_concurrency = n;
            }
            "upload_bandwidth" => self.upload_bandwidth = size(v)?,
            "dirty_wait" => self.dirty_wait = duration(v)?,
            "idle_demote" => self.idle_demote = duration(v)?,
            "age_demote" => self.age_demote = duration(v)?,
            "page_cache_handover" => self.page_cache_handover = duration(v)?,
            "pin_bandwidth" => self.pin_bandwidth = size(v)?,
            "promote_bandwidth" => self.promote_bandwidth = size(v)?,
            "metrics_addr" => {
                let addr = v.parse().map_err(|_| {
                    invalid(
                        name,
                        format!("'{v}' is not an address such as 127.0.0.1:9100"),
                    )
                })?;
                self.metrics_addr = Some(addr)
            }
            _ => return Err(OptionError::Unknown(name.to_string())),
        }
        Ok(())
    }

    /// The options as one `-o` list that [`MountOptions::parse`] reads back equal.
    pub fn to_option_string(&self) -> String {
        let mut items = vec![
            format!("cache_size={}", format_size(self.cache_size)),
            format!("cache_min_free={}", format_size(self.cache_min_free)),
            format!("ram_size={}", format_size(self.ram_size)),
            format!("chunk_size={}", format_size(self.chunk_size)),
            format!("metadata_ttl={}", format_duration(self.metadata_ttl)),
            format!("fetch_timeout={}", format_duration(self.fetch_timeout)),
            format!("fetch_retries={}", self.fetch_retries),
            format!("prefetch_max={}", self.prefetch_max),
            format!("fetch_concurrency={}", self.fetch_concurrency),
            format!("fuse_threads={}", self.fuse_threads),
            format!(
                "durability={}",
                match self.durability {
                    Durability::Local => "local",
                    Durability::Remote => "remote",
                }
            ),
            format!("upload_concurrency={}", self.upload_concurrency),
            format!("upload_bandwidth={}", format_size(self.upload_bandwidth)),
            format!("dirty_wait={}", format_duration(self.dirty_wait)),
            format!("idle_demote={}", format_duration(self.idle_demote)),
            format!("age_demote={}", format_duration(self.age_demote)),
            format!(
                "page_cache_handover={}",
                format_duration(self.page_cache_handover)
            ),
            format!("pin_bandwidth={}", format_size(self.pin_bandwidth)),
            format!("promote_bandwidth={}", format_size(self.promote_bandwidth)),
        ];
        items.extend(self.metrics_addr.map(|a| format!("metrics_addr={a}")));
        if let Some(dir) = &self.cache_dir {
            items.push(format!("cache_dir={}", dir.display()));
        }
        if self.read_only {
            items.push("ro".into());
        }
        if self.allow_other {
            items.push("allow_other".into());
        }
        if !self.passthrough {
            items.push("passthrough=false".into());
        }
        if !self.posix_metadata {
            items.push("posix_metadata=false".into());
        }
        items.extend(self.uid.map(|u| format!("uid={u}")));
        items.extend(self.gid.map(|g| format!("gid={g}")));
        items.extend(self.endpoint.as_ref().map(|e| format!("endpoint={e}")));
        items.extend(self.region.as_ref().map(|r| format!("region={r}")));
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<MountOptions, OptionError> {
        MountOptions::parse(&[s.to_string()])
    }

    #[test]
    fn defaults_and_overrides() {
        let o = parse("cache_size=50G,ram_size=4G,ro,endpoint=http://127.0.0.1:9000").unwrap();
        assert_eq!(o.cache_size, 50 << 30);
        assert_eq!(o.ram_size, 4 << 30);
        assert!(o.read_only);
        assert_eq!(o.chunk_size, 8 << 20);
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn fstab_options_are_accepted() {
        assert_eq!(
            parse("_netdev,defaults,rw,x-systemd.automount"),
            Ok(MountOptions::default())
        );
    }

    #[test]
    fn garbage_is_rejected_with_the_option_named() {
        let cases = [
            ("bogus=1", "unknown mount option 'bogus'"),
            (
                "cache_size=lots",
                "mount option 'cache_size': 'lots' is not a size",
            ),
            ("cache_size", "mount option 'cache_size': needs a value"),
            ("ram_size=", "mount option 'ram_size': needs a value"),
            ("chunk_size=1000", "must be a multiple of 4K"),
            (
                "ro=maybe",
                "mount option 'ro': 'maybe' is not true or false",
            ),
            ("fetch_timeout=0", "must be longer than zero"),
            ("uid=-1", "'-1' is not a whole number"),
            (
                "endpoint=127.0.0.1:9000",
                "must be a URL starting with http://",
            ),
            ("fuse_threads=0", "must be between 1 and 256"),
            ("fetch_concurrency=0", "must be between 1 and 1024"),
            ("prefetch_max=-3", "'-3' is not a whole number"),
            ("durability=cloud", "'cloud' is not local or remote"),
            ("upload_concurrency=0", "must be between 1 and 256"),
            ("upload_bandwidth=fast", "'fast' is not a size"),
            ("idle_demote=soon", "'soon' is not a duration"),
            ("metrics_addr=localhost", "'localhost' is not an address"),
            ("pin_bandwidth=lots", "'lots' is not a size"),
        ];
        for (input, expected) in cases {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn config_file_is_read_and_overridden_by_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tierfs.toml");
        std::fs::write(
            &path,
            "cache_size = \"20G\"\nram_size = \"2G\"\nro = true\nfetch_retries = 5\n",
        )
        .unwrap();
        let o = parse(&format!("config={},ram_size=3G", path.display())).unwrap();
        assert_eq!(o.cache_size, 20 << 30);
        assert_eq!(o.ram_size, 3 << 30);
        assert_eq!(o.fetch_retries, 5);
        assert!(o.read_only);

        std::fs::write(&path, "cache_size = [1]\n").unwrap();
        let err = parse(&format!("config={}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'cache_size' must be a string, number or boolean"),
            "{err}"
        );
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = parse(&format!("config={}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown mount option 'bogus'"), "{err}");
        std::fs::write(&path, "cache_size = \n").unwrap();
        let err = parse(&format!("config={}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config file"), "{err}");
        let err = parse("config=/nonexistent/tierfs.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tierfs.toml"), "{err}");
    }

    fn any_options() -> impl Strategy<Value = MountOptions> {
        (
            (0u64..1 << 45, 0u64..1 << 40, 0u64..1 << 40, 16u64..=262_144),
            (0u64..100_000, 1u64..100_000, 0u32..50, 1usize..=256),
            (0u32..1000, 1u32..=1024),
            (
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(0u32..70_000),
                any::<bool>(),
            ),
            proptest::option::of("[a-z0-9/_]{1,20}"),
            proptest::option::of("http://[a-z0-9.]{1,12}:[0-9]{2,5}"),
            proptest::option::of("[a-z]{2}-[a-z]{4,9}-[1-3]"),
            (any::<bool>(), 1u32..=256, 0u64..1 << 40, 0u64..100_000),
            (
                0u64..1 << 36,
                0u64..1 << 36,
                0u64..1 << 40,
                0u64..1 << 40,
                proptest::option::of(1024u16..),
            ),
        )
            .prop_map(
                |(sizes, times, fetch, flags, dir, endpoint, region, upload, demote)| {
                    MountOptions {
                        cache_dir: dir.map(|d| PathBuf::from(format!("/{d}"))),
                        cache_size: sizes.0,
                        cache_min_free: sizes.1,
                        ram_size: sizes.2,
                        chunk_size: sizes.3 * 4096,
                        metadata_ttl: Duration::from_millis(times.0),
                        fetch_timeout: Duration::from_millis(times.1),
                        fetch_retries: times.2,
                        fuse_threads: times.3,
                        prefetch_max: fetch.0,
                        fetch_concurrency: fetch.1,
                        passthrough: flags.3,
                        posix_metadata: !flags.3,
                        read_only: flags.0,
                        allow_other: flags.1,
                        uid: flags.2,
                        gid: flags.2.map(|g| g / 2),
                        endpoint,
                        region,
                        durability: if upload.0 {
                            Durability::Remote
                        } else {
                            Durability::Local
                        },
                        upload_concurrency: upload.1,
                        upload_bandwidth: upload.2,
                        dirty_wait: Duration::from_millis(upload.3),
                        idle_demote: Duration::from_millis(demote.0),
                        age_demote: Duration::from_millis(demote.1),
                        pin_bandwidth: demote.2,
                        promote_bandwidth: demote.3,
                        page_cache_handover: Duration::from_millis(times.0 / 3),
                        metrics_addr: demote
                            .4
                            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_option_round_trips(options in any_options()) {
            prop_assert_eq!(parse(&options.to_option_string()), Ok(options));
        }

        #[test]
        fn parse_never_panics(s in "[a-z_=,0-9GM]{0,40}") {
            let _ = parse(&s);
        }
    }
}
