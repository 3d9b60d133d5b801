//! The `[sip]` table of the configuration file (SPEC §2, §4, §10).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Settings of the SIP edge proxy. Every key has a default except `upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the UDP and TCP sockets bind; `0.0.0.0` serves every interface.
    #[serde(default = "default_listen")]
    pub listen: IpAddr,
    /// Port range bound on UDP and TCP alike; the bank's firewall opens exactly this range.
    #[serde(default)]
    pub ports: PortRange,
    /// The Sipserver: `host` forwards each port to the same port there, `host:port` sends
    /// everything to one port.
    pub upstream: Upstream,
    /// Address written into Via and Record-Route when the bound one is not what peers reach
    /// (NAT, `0.0.0.0`). Without it: `listen`, or for `0.0.0.0` the interface address that
    /// routes towards the upstream.
    #[serde(default)]
    pub advertise: Option<IpAddr>,
    /// Larger messages are refused with 413 (UDP and TCP): bounds memory per message.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A call with no BYE is closed as `timeout` after this; read by call tracking.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// A TCP connection that receives nothing for this long is closed, so dead NAT flows do
    /// not pile up. Terminals keep theirs open with CRLF keep-alives.
    #[serde(default = "default_tcp_idle_timeout", with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Cap on inbound TCP connections over all ports; more are closed on accept so that a
    /// flood of connections cannot exhaust file descriptors.
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// Cap on inbound TCP connections from one source IP; more are closed on accept, so that
    /// one address cannot take the whole of `tcp_max_connections`. Generous by default: a
    /// carrier-NAT address may hide many terminals. The upstream is not held to it.
    #[serde(default = "default_tcp_max_connections_per_source")]
    pub tcp_max_connections_per_source: usize,
    /// Cap on bytes buffered per TCP connection waiting for a message end; a stream that
    /// exceeds it is closed (an endless stream without a message end must not grow memory).
    #[serde(default = "default_tcp_max_buffer_bytes")]
    pub tcp_max_buffer_bytes: usize,
    /// Cap on bytes queued to send on one TCP connection beyond what its socket took (a
    /// peer that stops reading). A message that does not fit is dropped and the connection
    /// closed: in a stream a lost message cannot be told apart from a late one, and a closed
    /// flow is what RFC 5626 terminals notice and recover from.
    #[serde(default = "default_tcp_max_write_queue_bytes")]
    pub tcp_max_write_queue_bytes: usize,
    /// Cap on calls in progress: a new INVITE from a terminal (no To tag) past it gets a
    /// stateless 503 with Retry-After; requests within calls, calls under way, and the
    /// retransmissions or post-challenge retries of INVITEs let through lately go on. The
    /// relay reads call tracking's count, which lags by what is in the hand-off queue, so a
    /// burst may pass it by up to that many calls; call tracking's own hard cap sits a
    /// quarter above it.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Cap on log entries kept for one call (its messages and sipedge's words about them);
    /// past it, one "log truncated" event is logged, the rest is not. The CDR is unaffected.
    #[serde(default = "default_max_log_entries_per_call")]
    pub max_log_entries_per_call: usize,
    /// Cap on bytes of log kept for one call, counted as for `max_log_entries_per_call`.
    #[serde(default = "default_max_log_bytes_per_call")]
    pub max_log_bytes_per_call: usize,
    /// How long a TCP connect to the upstream may take before the request gets a 503.
    #[serde(default = "default_upstream_connect_timeout", with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Messages per second accepted from one source IP (terminal side only; the upstream is
    /// never limited), so that a flood from one address cannot starve the others. 0 = off.
    /// Generous by default: many mobile terminals may share one carrier-NAT address.
    #[serde(default = "default_source_rate_limit")]
    pub source_rate_limit: u32,
    /// Burst above `source_rate_limit` tolerated from one source IP (call set-up comes in
    /// bursts: INVITE, ACK, re-INVITE, BYE within a second).
    #[serde(default = "default_source_rate_burst")]
    pub source_rate_burst: u32,
    /// Depth of the hand-off queue to call tracking; when full, observations are dropped
    /// and counted rather than making forwarding wait.
    #[serde(default = "default_handoff_queue")]
    pub handoff_queue: usize,
    /// Bytes of messages the hand-off queue may hold (each message is copied into it), so
    /// that call tracking falling behind costs at most this much; past it, observations are
    /// dropped and counted like a full queue. At least `max_message_bytes`.
    #[serde(default = "default_handoff_queue_bytes")]
    pub handoff_queue_bytes: usize,
}

/// Highest `sip.max_calls` accepted: call tracking holds every call in memory (about 5 KB
/// each with its recently ended key: benches/call_memory.sh), so this is already a few gigabytes.
const MAX_CALLS_LIMIT: usize = 1_000_000;

fn default_listen() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_max_message_bytes() -> usize {
    65535
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_tcp_max_connections() -> usize {
    10_000
}
fn default_tcp_max_connections_per_source() -> usize {
    256
}
fn default_tcp_max_buffer_bytes() -> usize {
    256 * 1024
}
fn default_tcp_max_write_queue_bytes() -> usize {
    1024 * 1024
}
fn default_max_calls() -> usize {
    crate::call::DEFAULT_MAX_CALLS
}
fn default_max_log_entries_per_call() -> usize {
    crate::call::logcap::DEFAULT_LOG_CAP.max_entries as usize
}
fn default_max_log_bytes_per_call() -> usize {
    crate::call::logcap::DEFAULT_LOG_CAP.max_bytes as usize
}
fn default_upstream_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_source_rate_limit() -> u32 {
    2000
}
fn default_source_rate_burst() -> u32 {
    4000
}
fn default_handoff_queue() -> usize {
    65_536
}
fn default_handoff_queue_bytes() -> usize {
    64 * 1024 * 1024
}

impl ProxyConfig {
    /// A configuration with every default and the given upstream (for tests and tools).
    pub fn with_upstream(upstream: Upstream) -> ProxyConfig {
        ProxyConfig {
            listen: default_listen(),
            ports: PortRange::default(),
            upstream,
            advertise: None,
            max_message_bytes: default_max_message_bytes(),
            call_timeout: default_call_timeout(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            tcp_max_connections: default_tcp_max_connections(),
            tcp_max_connections_per_source: default_tcp_max_connections_per_source(),
            tcp_max_buffer_bytes: default_tcp_max_buffer_bytes(),
            tcp_max_write_queue_bytes: default_tcp_max_write_queue_bytes(),
            max_calls: default_max_calls(),
            max_log_entries_per_call: default_max_log_entries_per_call(),
            max_log_bytes_per_call: default_max_log_bytes_per_call(),
            upstream_connect_timeout: default_upstream_connect_timeout(),
            source_rate_limit: default_source_rate_limit(),
            source_rate_burst: default_source_rate_burst(),
            handoff_queue: default_handoff_queue(),
            handoff_queue_bytes: default_handoff_queue_bytes(),
        }
    }

    /// Checks relations between keys that serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &'static str, reason: String| Err(Error::Config { key, reason });
        if self.max_message_bytes < 512 {
            return bad("sip.max_message_bytes", "must be at least 512".into());
        }
        if self.tcp_max_buffer_bytes < self.max_message_bytes {
            return bad(
                "sip.tcp_max_buffer_bytes",
                format!(
                    "must be at least sip.max_message_bytes ({})",
                    self.max_message_bytes
                ),
            );
        }
        let at_least_a_message = [
            (
                "sip.tcp_max_write_queue_bytes",
                self.tcp_max_write_queue_bytes,
            ),
            ("sip.max_log_bytes_per_call", self.max_log_bytes_per_call),
            ("sip.handoff_queue_bytes", self.handoff_queue_bytes),
        ];
        for (key, value) in at_least_a_message {
            if value < self.max_message_bytes {
                return bad(
                    key,
                    format!(
                        "must be at least sip.max_message_bytes ({})",
                        self.max_message_bytes
                    ),
                );
            }
        }
        let at_least_one = [
            ("sip.tcp_max_connections", self.tcp_max_connections),
            (
                "sip.tcp_max_connections_per_source",
                self.tcp_max_connections_per_source,
            ),
            ("sip.max_calls", self.max_calls),
            (
                "sip.max_log_entries_per_call",
                self.max_log_entries_per_call,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.max_calls > MAX_CALLS_LIMIT {
            return bad(
                "sip.max_calls",
                format!("must be at most {MAX_CALLS_LIMIT} (each call tracked costs about 5 KB)"),
            );
        }
        if self.handoff_queue == 0 {
            return bad("sip.handoff_queue", "must be at least 1".into());
        }
        if self.tcp_idle_timeout.is_zero() {
            return bad("sip.tcp_idle_timeout", "must be longer than 0s".into());
        }
        if self.upstream_connect_timeout.is_zero() {
            return bad(
                "sip.upstream_connect_timeout",
                "must be longer than 0s".into(),
            );
        }
        if self.source_rate_limit > 0 && self.source_rate_burst == 0 {
            return bad(
                "sip.source_rate_burst",
                "must be at least 1 when sip.source_rate_limit is set".into(),
            );
        }
        Ok(())
    }
}

/// An inclusive range of ports, written `first-last` (or a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port bound.
    pub first: u16,
    /// Highest port bound (inclusive, as operators write ranges).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is one of ours.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Every port of the range, in order.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    /// How many ports the range holds.
    pub fn len(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never true (a range holds at least one port); present because `len` is.
    pub fn is_empty(self) -> bool {
        false
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 14500,
            last: 14699,
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port number (1-65535)"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(format!("`{s}`: the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The Sipserver's address as configured: a host, with a port when every sipedge port
/// forwards to one port there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// IP address or DNS name, resolved once at start.
    pub host: String,
    /// `None`: each sipedge port forwards to the same port on the host.
    pub port: Option<u16>,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Upstream {
                host: addr.ip().to_string(),
                port: Some(addr.port()),
            });
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Upstream {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: `{p}` is not a port number"))?;
                (h, Some(port))
            }
            None => (s, None),
        };
        let valid_name = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid_name {
            return Err(format!("`{s}` is not `host` or `host:port`"));
        }
        Ok(Upstream {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = self.host.contains(':');
        match (self.port, v6) {
            (Some(p), true) => write!(f, "[{}]:{p}", self.host),
            (Some(p), false) => write!(f, "{}:{p}", self.host),
            (None, _) => f.write_str(&self.host),
        }
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ports(input: &str, expected: Result<(u16, u16), ()>) {
        let got = input.parse::<PortRange>().map(|r| (r.first, r.last));
        assert_eq!(got.map_err(|_| ()), expected, "input {input:?}");
    }

    #[test]
    fn port_ranges() {
        check_ports("14500-14699", Ok((14500, 14699)));
        check_ports("5060", Ok((5060, 5060)));
        check_ports(" 1 - 2 ", Ok((1, 2)));
        check_ports("14699-14500", Err(()));
        check_ports("0-10", Err(()));
        check_ports("1-65536", Err(()));
        check_ports("a-b", Err(()));
        check_ports("", Err(()));
        check_ports("1-2-3", Err(()));
    }

    fn check_upstream(input: &str, expected: Result<(&str, Option<u16>), ()>) {
        let got = input.parse::<Upstream>();
        let got = got.as_ref().map(|u| (u.host.as_str(), u.port));
        assert_eq!(got.map_err(|_| ()), expected, "input {input:?}");
    }

    #[test]
    fn upstreams() {
        check_upstream("10.0.0.5", Ok(("10.0.0.5", None)));
        check_upstream("10.0.0.5:5060", Ok(("10.0.0.5", Some(5060))));
        check_upstream("[::1]:5060", Ok(("::1", Some(5060))));
        check_upstream("::1", Ok(("::1", None)));
        check_upstream("sipserver.local", Ok(("sipserver.local", None)));
        check_upstream("sipserver:5070", Ok(("sipserver", Some(5070))));
        check_upstream("sipserver:0", Err(()));
        check_upstream("sip server", Err(()));
        check_upstream("", Err(()));
        check_upstream("host:port", Err(()));
    }

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let cfg: ProxyConfig = toml::from_str("upstream = \"127.0.0.1:5060\"").unwrap();
        assert_eq!(
            cfg,
            ProxyConfig::with_upstream("127.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(cfg.call_timeout, Duration::from_secs(14400));
        cfg.validate().unwrap();

        let cfg: ProxyConfig =
            toml::from_str("upstream = \"h\"\ncall_timeout = \"5s\"\nports = \"1-2\"").unwrap();
        assert_eq!(cfg.call_timeout, Duration::from_secs(5));
        assert_eq!(cfg.ports.len(), 2);

        let err = toml::from_str::<ProxyConfig>("upstream = \"h\"\nlisten_port = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        let err = toml::from_str::<ProxyConfig>("upstream = \"h\"\nports = \"9-1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("9-1"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = ProxyConfig::with_upstream("h".parse().unwrap());
        cfg.tcp_max_buffer_bytes = 1000;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("sip.tcp_max_buffer_bytes"), "{err}");
    }

    /// Each bound of memory, set from TOML as an operator writes it: good values pass, bad
    /// ones name their key.
    #[test]
    fn memory_bounds_are_validated() {
        let cases: [(&str, Result<(), &str>); 18] = [
            ("handoff_queue_bytes = 65535", Ok(())),
            (
                "handoff_queue_bytes = 1000",
                Err("sip.handoff_queue_bytes: must be at least sip.max_message_bytes"),
            ),
            ("tcp_max_connections_per_source = 1", Ok(())),
            ("tcp_max_connections_per_source = 100000", Ok(())),
            (
                "tcp_max_connections_per_source = 0",
                Err("sip.tcp_max_connections_per_source: must be at least 1"),
            ),
            ("tcp_max_write_queue_bytes = 65535", Ok(())),
            (
                "tcp_max_write_queue_bytes = 65534",
                Err(
                    "sip.tcp_max_write_queue_bytes: must be at least sip.max_message_bytes (65535)",
                ),
            ),
            (
                "max_message_bytes = 4096\ntcp_max_write_queue_bytes = 4096",
                Ok(()),
            ),
            ("max_calls = 1", Ok(())),
            ("max_calls = 1000000", Ok(())),
            ("max_calls = 0", Err("sip.max_calls: must be at least 1")),
            (
                "max_calls = 1000001",
                Err("sip.max_calls: must be at most 1000000"),
            ),
            ("max_log_entries_per_call = 1", Ok(())),
            (
                "max_log_entries_per_call = 0",
                Err("sip.max_log_entries_per_call: must be at least 1"),
            ),
            ("max_log_bytes_per_call = 65535", Ok(())),
            (
                "max_log_bytes_per_call = 100",
                Err("sip.max_log_bytes_per_call: must be at least sip.max_message_bytes"),
            ),
            (
                "tcp_max_connections = 0",
                Err("sip.tcp_max_connections: must be at least 1"),
            ),
            ("max_log_bytes_per_call = -1", Err("invalid value")),
        ];
        for (keys, expected) in cases {
            let text = format!("upstream = \"h\"\n{keys}");
            let got = toml::from_str::<ProxyConfig>(&text)
                .map_err(|e| e.to_string())
                .and_then(|cfg| cfg.validate().map_err(|e| e.to_string()));
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(err), Err(want)) => assert!(err.contains(want), "{keys}: {err}"),
                (got, want) => panic!("{keys}: got {got:?}, expected {want:?}"),
            }
        }
        let cfg = ProxyConfig::with_upstream("h".parse().unwrap());
        assert_eq!(
            (
                cfg.tcp_max_connections_per_source,
                cfg.tcp_max_write_queue_bytes,
                cfg.max_calls,
                cfg.max_log_entries_per_call,
                cfg.max_log_bytes_per_call
            ),
            (256, 1 << 20, 20_000, 2000, 2 << 20)
        );
    }
}
