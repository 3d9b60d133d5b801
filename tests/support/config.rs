//! The config file a test runs sipedge on: the harness's defaults (a node with its data dir,
//! the account responder and the API on ports the kernel picks, read back from the log), an
//! optional SIP side on free ports, and whatever keys a test sets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::ports::{self, PROXY_IP, PortRange};

/// Where the proxy forwards requests from terminals (`sip.upstream`).
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    /// `"host"`: each listening port forwards to the same port on this address.
    SamePort(IpAddr),
    /// `"host:port"`: every port forwards to this one address.
    Fixed(SocketAddr),
}

impl Upstream {
    /// The `sip.upstream` value.
    fn config_value(&self) -> String {
        match self {
            Upstream::SamePort(ip) => ip.to_string(),
            Upstream::Fixed(addr) => addr.to_string(),
        }
    }
}

/// The SIP side: known before the start, because the upstream SIPp listens on the same
/// port numbers.
#[derive(Debug, Clone, Copy)]
pub struct Sip {
    /// The ports of `sip.ports`; every one gets UDP and TCP.
    pub ports: PortRange,
    /// `sip.upstream`.
    pub upstream: Upstream,
}

impl Sip {
    /// One fresh port, forwarding to the same port on the upstream address.
    pub fn one_port() -> Sip {
        Sip::range(1)
    }

    /// `len` fresh consecutive ports, each forwarding to the same port on the upstream.
    pub fn range(len: u16) -> Sip {
        Sip {
            ports: ports::free_range(len),
            upstream: Upstream::SamePort(ports::UPSTREAM_IP),
        }
    }

    /// The address terminals send to: the first SIP port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(PROXY_IP, self.ports.first)
    }

    /// The address terminals send to on another port of the range.
    pub fn addr_on(&self, port: u16) -> SocketAddr {
        assert!(
            self.ports.iter().any(|p| p == port),
            "port {port} is not in the proxy's range {:?}",
            self.ports
        );
        SocketAddr::new(PROXY_IP, port)
    }

    /// The upstream address for traffic sent to the first SIP port.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream_for(self.ports.first)
    }

    /// The upstream address for traffic that arrived on `port`.
    pub fn upstream_for(&self, port: u16) -> SocketAddr {
        match self.upstream {
            Upstream::SamePort(ip) => SocketAddr::new(ip, port),
            Upstream::Fixed(addr) => addr,
        }
    }
}

/// A sipedge config, written as TOML by [`Config::write`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `node.name`, which the API puts into CDRs and alarms.
    node: String,
    /// The `[sip]` table, when the test relays SIP.
    sip: Option<Sip>,
    /// Keys by section, written as given (TOML values: quote strings with [`quote`]); a key
    /// given here replaces the harness's own value for it.
    keys: BTreeMap<String, BTreeMap<String, String>>,
    /// Arrays of tables (`[[monitor.process]]`, `[[api.users]]`), written after the tables.
    tables: String,
}

impl Config {
    /// A node named `node` with the account responder (appid `test-appid`, account
    /// `sipserver`) and the API on loopback ports the kernel picks.
    pub fn new(node: &str) -> Config {
        Config {
            node: node.to_owned(),
            sip: None,
            keys: BTreeMap::new(),
            tables: String::new(),
        }
    }

    /// Adds the `[sip]` table for `sip`, with the upstream probe off: OPTIONS probes would
    /// reach a SIPp UAS as calls it does not expect (a test may set it on again).
    pub fn sip(mut self, sip: Sip) -> Config {
        self.sip = Some(sip);
        self
    }

    /// Sets `section.key = value` (a raw TOML value).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Config {
        self.keys
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds TOML text at the end: the arrays of tables a key cannot express.
    pub fn append(mut self, toml: &str) -> Config {
        self.tables.push_str(toml);
        self
    }

    /// The SIP side, if the config has one.
    pub fn sip_side(&self) -> Option<Sip> {
        self.sip
    }

    /// Writes `DIR/sipedge.toml` with its data dir `DIR/data`; returns the file's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("sipedge.toml");
        std::fs::write(&path, self.text(&dir.join("data"))).expect("write the sipedge config");
        path
    }

    /// The TOML text, with its data under `data_dir`.
    pub fn text(&self, data_dir: &Path) -> String {
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut put = |section: &str, key: &str, value: String| {
            sections
                .entry(section.to_owned())
                .or_default()
                .insert(key.to_owned(), value);
        };
        put("node", "name", quote(&self.node));
        put("node", "data_dir", quote(&data_dir.display().to_string()));
        put("account", "appids", "[\"test-appid\"]".to_owned());
        put("account", "account", quote("sipserver"));
        put("account", "listen", quote(&format!("{PROXY_IP}:0")));
        put("api", "listen", quote(&format!("{PROXY_IP}:0")));
        if let Some(sip) = &self.sip {
            put("sip", "listen", quote(&PROXY_IP.to_string()));
            put("sip", "ports", quote(&sip.ports.config_value()));
            put("sip", "upstream", quote(&sip.upstream.config_value()));
            put("monitor", "probe_upstream", "false".to_owned());
        }
        for (section, keys) in &self.keys {
            for (key, value) in keys {
                put(section, key, value.clone());
            }
        }
        let mut toml = String::new();
        for (section, keys) in &sections {
            toml.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                toml.push_str(&format!("{key} = {value}\n"));
            }
            toml.push('\n');
        }
        toml.push_str(&self.tables);
        toml
    }
}

/// A TOML basic string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
