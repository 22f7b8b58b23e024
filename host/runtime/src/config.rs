//! Settings: [`RuntimeConfig`] for the whole runtime, [`BackendSpec`] with its [`HostGrant`]s
//! and [`Limits`] for one backend.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the whole runtime (one wasmtime engine).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components (`.cwasm`) are cached, keyed by the driver's sha256 and the
    /// engine's compatibility hash. Created if missing.
    pub cache_dir: PathBuf,
    /// How many driver instances can be alive at once over all backends (sizes the pooling
    /// allocator). Default 256.
    pub max_instances: u32,
    /// How often the engine's epoch advances: the granularity of CPU budgets. Default 10 ms.
    pub epoch_tick: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: std::env::temp_dir().join("elara-driver-cache"),
            max_instances: 256,
            epoch_tick: Duration::from_millis(10),
        }
    }
}

/// One backend: a named, configured sandbox of a driver.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// The backend's name (used in logs and errors).
    pub name: String,
    /// The host directory the driver sees as `/pool` (created if missing). Nothing else of the
    /// host filesystem is visible.
    pub pool_dir: PathBuf,
    /// The configuration handed to `configure` on every fresh instance.
    pub config: Vec<(String, String)>,
    /// Hosts the driver may reach over HTTP(S) and TCP. Nothing else is reachable.
    pub grants: Vec<HostGrant>,
    /// Resource limits of every instance of this backend.
    pub limits: Limits,
}

/// Permission to reach one host, over HTTP(S) (`wasi:http`) and TCP (`wasi:sockets`).
///
/// Parsed from `host[:port]`: `s3.example.com`, `10.0.0.5:2049`, `[fd00::1]:443`. Without a
/// port every port of that host is granted. A host name grants the addresses it resolves to at
/// the time of each connection; the runtime connects only to those addresses.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct HostGrant {
    /// A DNS name (lowercase) or an IP address literal (IPv6 without brackets).
    pub host: String,
    /// The only port granted, or every port if `None`.
    pub port: Option<u16>,
}

impl HostGrant {
    /// Whether a request to `host` (name or IP literal, any case, IPv6 with or without
    /// brackets) on `port` is covered by this grant, by name.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let same_host = match (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.host.eq_ignore_ascii_case(host),
        };
        same_host && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}"),
        }
    }
}

/// Why a `host[:port]` grant was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("invalid host grant `{input}`: {reason}")]
pub struct HostGrantError {
    /// The text that was parsed.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

impl FromStr for HostGrant {
    type Err = HostGrantError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| HostGrantError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty; expected host[:port]"));
        }
        if s.contains("://") || s.contains('/') {
            return Err(err("give a host name or address with an optional port, not a URL"));
        }
        if s.contains('@') {
            return Err(err("user info (`user@`) is not allowed; expected host[:port]"));
        }
        let parse_port = |p: &str| -> Result<u16, HostGrantError> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(err("port must be a number from 1 to 65535")),
                Ok(p) => Ok(p),
            }
        };
        // [v6]:port or [v6]
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, tail) = rest
                .split_once(']')
                .ok_or_else(|| err("missing `]` after an IPv6 address"))?;
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| err("not a valid IPv6 address inside `[...]`"))?;
            let port = match tail {
                "" => None,
                t => Some(parse_port(
                    t.strip_prefix(':').ok_or_else(|| err("expected `:port` after `]`"))?,
                )?),
            };
            return Ok(HostGrant {
                host: ip.to_string(),
                port,
            });
        }
        // bare IPv6 (more than one colon): no port possible
        if s.matches(':').count() > 1 {
            let ip: std::net::Ipv6Addr = s
                .parse()
                .map_err(|_| err("not a valid IPv6 address; write IPv6 with a port as [addr]:port"))?;
            return Ok(HostGrant {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        if host.parse::<IpAddr>().is_err() {
            if host.len() > 253 {
                return Err(err("host name longer than 253 characters"));
            }
            let ok_label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !host.trim_end_matches('.').split('.').all(ok_label) {
                return Err(err(
                    "host must be a DNS name (letters, digits, `-`, `_`, dot-separated labels) or an IP address",
                ));
            }
        }
        Ok(HostGrant {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
        })
    }
}

/// Resource limits of a backend's instances.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Linear memory of one instance, in bytes; growing past it traps. Default 256 MiB.
    pub memory_bytes: u64,
    /// Guest execution time allowed per call (time blocked in host calls does not count).
    /// Default 10 s. A call that reports advancing progress (`log.progress`) gets a fresh budget
    /// for each further `progress_bytes_per_renewal` it reports, up to the size the call can move
    /// and `max_call`: the budget then bounds the work between advances.
    pub cpu_budget: Duration,
    /// Wall-clock time allowed per call, host waits included. Default 300 s. Renewed like
    /// `cpu_budget` by the call's progress, up to `max_call` per call in all.
    pub call_timeout: Duration,
    /// The longest a call may run however it advances: after this no progress renews the budget
    /// or the timeout, and the call is stopped. Default 2 h.
    #[serde(default = "default_max_call")]
    pub max_call: Duration,
    /// Bytes of further progress a call must report for each renewal of its budget and timeout,
    /// so a call of `total` bytes gets at most `total / progress_bytes_per_renewal` renewals
    /// however often it reports. Default 64 MiB.
    #[serde(default = "default_progress_bytes_per_renewal")]
    pub progress_bytes_per_renewal: u64,
    /// The most a call whose arguments give no size (a snapshot of a volume of unknown size) may
    /// claim to move in its progress reports. Default 16 TiB.
    #[serde(default = "default_max_progress_bytes")]
    pub max_progress_bytes: u64,
    /// Host objects one instance may hold at once: open files and directories, sockets, streams,
    /// HTTP requests and responses (the entries of its WASI resource table). Opening one more
    /// traps the call. Bounds the file descriptors a driver can take from the daemon. Default
    /// 1024: an S3 copy at its highest `copy_concurrency` (64 requests in flight, about ten
    /// objects each) fits.
    #[serde(default = "default_max_open_resources")]
    pub max_open_resources: usize,
    /// Pools one `pools` report may name; a longer report is refused whole. Default 256.
    #[serde(default = "default_max_pools")]
    pub max_pools: usize,
    /// Bytes of log messages and stdout/stderr kept per call; the rest is dropped with one
    /// `log capped` warning. Default 64 KiB.
    pub log_bytes_per_call: usize,
    /// Bytes of data the host copies out of the guest for one value: a call's return value,
    /// or the arguments of one host import call (a log message, a path). Counted as the host
    /// would allocate them, so strings that alias one guest buffer cannot multiply. More traps
    /// the call. Default 64 MiB.
    #[serde(default = "default_transfer_bytes")]
    pub max_transfer_bytes: usize,
}

fn default_transfer_bytes() -> usize {
    64 << 20
}

fn default_max_call() -> Duration {
    Duration::from_secs(2 * 3600)
}

fn default_progress_bytes_per_renewal() -> u64 {
    64 << 20
}

fn default_max_progress_bytes() -> u64 {
    16 << 40
}

fn default_max_open_resources() -> usize {
    1024
}

fn default_max_pools() -> usize {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_budget: Duration::from_secs(10),
            call_timeout: Duration::from_secs(300),
            log_bytes_per_call: 64 << 10,
            max_transfer_bytes: default_transfer_bytes(),
            max_call: default_max_call(),
            progress_bytes_per_renewal: default_progress_bytes_per_renewal(),
            max_progress_bytes: default_max_progress_bytes(),
            max_open_resources: default_max_open_resources(),
            max_pools: default_max_pools(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse() {
        let g: HostGrant = "S3.Example.com:443".parse().unwrap();
        assert_eq!(
            g,
            HostGrant {
                host: "s3.example.com".into(),
                port: Some(443)
            }
        );
        let g: HostGrant = "10.0.0.5".parse().unwrap();
        assert_eq!(g.port, None);
        let g: HostGrant = "[fd00::1]:2049".parse().unwrap();
        assert_eq!(
            g,
            HostGrant {
                host: "fd00::1".into(),
                port: Some(2049)
            }
        );
        assert_eq!(g.to_string(), "[fd00::1]:2049");
        let g: HostGrant = "fd00::1".parse().unwrap();
        assert_eq!(g.port, None);
        assert!(g.matches("[fd00::1]", 80));
    }

    #[test]
    fn grants_reject_with_reasons() {
        for (bad, why) in [
            ("", "empty"),
            ("http://x.example", "not a URL"),
            ("x.example:0", "port must be"),
            ("x.example:99999", "port must be"),
            ("x.example:abc", "port must be"),
            ("user@x.example", "user info"),
            (":80", "host is empty"),
            ("bad host", "DNS name"),
            ("[::1", "missing `]`"),
        ] {
            let e = bad.parse::<HostGrant>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn grant_matching() {
        let g: HostGrant = "api.example:8443".parse().unwrap();
        assert!(g.matches("API.example", 8443));
        assert!(!g.matches("api.example", 443));
        assert!(!g.matches("api.example.evil", 8443));
        let any: HostGrant = "127.0.0.1".parse().unwrap();
        assert!(any.matches("127.0.0.1", 1));
    }
}
