//! The one TOML file that configures sipedge (SPEC §2): loaded, validated, and shown.
//! Each crate owns the table of its part; this file composes them and adds `[node]` and
//! `[log]`, which belong to the process as a whole.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sipedge_http::account::AccountConfig;
use sipedge_http::api::ApiConfig;
use sipedge_http::cluster::ClusterConfig;
use sipedge_store::{Engine, StoreConfig};

/// The whole configuration file. Unknown keys anywhere are an error naming the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub account: AccountConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub log: LogConfig,
    /// The SIP edge proxy; without a `[sip]` table it is not started (the account responder
    /// and API alone, as in their tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<sipedge_sip::ProxyConfig>,
    /// Watched processes, the upstream probe, disk and store checks, alarms.
    #[serde(default)]
    pub monitor: crate::monitor::config::MonitorConfig,
    /// Where CDRs are shipped besides the store (`[sink.postgres]`, issue 12).
    #[serde(
        default,
        skip_serializing_if = "crate::sink::config::SinkSection::is_empty"
    )]
    pub sink: crate::sink::config::SinkSection,
    /// The HEP v3 listener (issue 14); off without the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hep: Option<crate::passive::hep_config::HepConfig>,
    /// The other nodes of the two-centre view and the secret the nodes share.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The `[store]` table: the engine, and the store crate's own settings (written out here
/// because the engine choice belongs beside them in the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `redb` (default) or `sled`; a data dir holds one kind.
    #[serde(default)]
    pub engine: Engine,
    /// How long CDRs are kept.
    #[serde(default = "default_cdr_retention", with = "humantime_serde")]
    pub cdr_retention: Duration,
    /// How long per-call SIP logs are kept.
    #[serde(default = "default_trace_retention", with = "humantime_serde")]
    pub trace_retention: Duration,
    /// What a kill -9 can lose at most: the longest a write waits for its commit.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
}

fn default_cdr_retention() -> Duration {
    StoreConfig::default().cdr_retention
}

fn default_trace_retention() -> Duration {
    StoreConfig::default().trace_retention
}

fn default_flush_interval() -> Duration {
    StoreConfig::default().flush_interval
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            engine: Engine::default(),
            cdr_retention: default_cdr_retention(),
            trace_retention: default_trace_retention(),
            flush_interval: default_flush_interval(),
        }
    }
}

impl StoreSection {
    /// The store crate's settings.
    pub fn settings(&self) -> StoreConfig {
        StoreConfig {
            cdr_retention: self.cdr_retention,
            trace_retention: self.trace_retention,
            flush_interval: self.flush_interval,
            ..StoreConfig::default()
        }
    }
}

/// The `[node]` table: what identifies this node and where it keeps its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stamped on every CDR and alarm, so the two data centres' records can be merged.
    pub name: String,
    /// Zone of `YYYYMMDDhhmmss` times, of "today" and of chart buckets, whatever the host's.
    #[serde(default = "default_timezone")]
    pub timezone: Zone,
    /// Where the embedded store and the flow-token key live.
    pub data_dir: PathBuf,
    /// The longest a graceful stop (SIGTERM) may take to drain, save calls and flush before
    /// the process exits anyway; keep it under systemd's `TimeoutStopSec`.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_timezone() -> Zone {
    Zone(chrono_tz::Asia::Shanghai)
}

/// An IANA time zone, written by name in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(pub Tz);

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<Tz>().map(Zone).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown time zone {name:?}; use an IANA name such as \"Asia/Shanghai\""
            ))
        })
    }
}

/// The `[log]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level such as `info`, or per-module directives.
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

/// `text` for people, `json` for the bank's log platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why a configuration cannot be used; always one line naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{location}: {message}")]
    Parse {
        path: PathBuf,
        location: Location,
        message: String,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// Where in the file a parse error is, when the parser knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location(pub Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, " line {line} column {column}"),
            None => Ok(()),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|(location, message)| ConfigError::Parse {
            path: path.to_owned(),
            location,
            message,
        })?;
        if let Some(problem) = config.problems().into_iter().next() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problem,
            });
        }
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, (Location, String)> {
        let locate =
            |err: &toml::de::Error| Location(err.span().map(|span| line_column(text, span.start)));
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| (locate(&err), one_line(err.message())))?;
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = one_line(inner.message());
            // The path names the key whose value is wrong; for an unknown key the message
            // names it and the path its table.
            let message = if path == "." {
                message
            } else {
                format!("{path}: {message}")
            };
            (locate(&inner), message)
        })
    }

    /// Every problem a person must fix, one line each; empty when the config can run.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.node.name.trim().is_empty() {
            problems.push("node.name: must not be empty".to_owned());
        }
        if self.node.stop_timeout.is_zero() {
            problems.push("node.stop_timeout: must be longer than 0s".to_owned());
        }
        if self.node.data_dir.as_os_str().is_empty() {
            problems.push("node.data_dir: must not be empty".to_owned());
        }
        problems.extend(self.account.problems());
        problems.extend(self.api.problems());
        if let Some(Err(err)) = self.sip.as_ref().map(sipedge_sip::ProxyConfig::validate) {
            problems.push(err.to_string());
        }
        problems.extend(self.monitor.problems());
        if let Some(pg) = &self.sink.postgres {
            problems.extend(pg.problems());
        }
        problems.extend(crate::passive::hep_config::problems(self));
        problems.extend(self.cluster.problems(&self.node.name));
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: {:?} is not a level or filter: {err}",
                self.log.level
            ));
        }
        problems
    }

    /// The store's settings: with a sink configured, the store keeps its outbox.
    pub fn store_settings(&self) -> StoreConfig {
        StoreConfig {
            outbox: self.sink.postgres.is_some(),
            ..self.store.settings()
        }
    }

    /// The effective configuration, defaults filled in, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot show: {err}\n"))
    }
}

/// toml's own Display draws the offending line over several lines; ops read journald one
/// line per event.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
name = "sh-01"
data_dir = "/tmp/x"
[account]
appids = ["a"]
account = "sipserver"
"#;

    fn check(text: &str, expected: Result<(), &str>) {
        let got = Config::parse(text)
            .map_err(|(loc, msg)| format!("{loc}: {msg}"))
            .and_then(|config| match config.problems().into_iter().next() {
                Some(problem) => Err(problem),
                None => Ok(()),
            });
        match expected {
            Ok(()) => assert!(got.is_ok(), "{text}\n=> {got:?}"),
            Err(word) => {
                let err = got.expect_err(text);
                assert!(err.contains(word), "{err:?} should mention {word:?}");
                assert!(!err.contains('\n'), "one line: {err:?}");
            }
        }
    }

    #[test]
    fn table() {
        check(MINIMAL, Ok(()));
        check(
            &format!("{MINIMAL}\n[log]\nlevel = \"debug\"\nformat = \"json\"\n"),
            Ok(()),
        );
        check(
            &MINIMAL.replace("[account]", "[account]\nmax_clock_skew = \"3600s\""),
            Ok(()),
        );
        check(
            &MINIMAL.replace("[account]", "[account]\nmax_clock_skew = \"an hour\""),
            Err("line 6"),
        );
        check(
            &MINIMAL.replace("[account]", "[account]\ncolour = 1"),
            Err("colour"),
        );
        check(&format!("{MINIMAL}\n[nodes]\n"), Err("nodes"));
        check(
            &MINIMAL.replace(
                "name = \"sh-01\"",
                "name = \"sh-01\"\ntimezone = \"Mars/Base\"",
            ),
            Err("Mars/Base"),
        );
        check(
            &MINIMAL.replace("name = \"sh-01\"", "name = \"\""),
            Err("node.name"),
        );
        check(
            &MINIMAL.replace("appids = [\"a\"]", "appids = []"),
            Err("account.appids"),
        );
        check(
            &MINIMAL.replace("account = \"sipserver\"", ""),
            Err("account"),
        );
        check(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"), Err("xml"));
        check(
            &MINIMAL.replace("[account]", "stop_timeout = \"30s\"\n[account]"),
            Ok(()),
        );
        check(
            &MINIMAL.replace("[account]", "stop_timeout = \"0s\"\n[account]"),
            Err("node.stop_timeout"),
        );
        check(
            &format!("{MINIMAL}\n[log]\nlevel = \"loud=[\"\n"),
            Err("log.level"),
        );
        check(
            &MINIMAL.replace("[account]", "[account]\nlisten = \"nowhere\""),
            Err("listen"),
        );
        check("this is = not = toml", Err("line 1"));
        let monitor = |text: &str| format!("{MINIMAL}\n[monitor]\n{text}\n");
        let process = |text: &str| monitor(&format!("[[monitor.process]]\nname = \"p\"\n{text}"));
        check(
            &monitor("interval = \"1s\"\nprobe_timeout = \"500ms\"\nprobe_upstream = false"),
            Ok(()),
        );
        check(
            &monitor("interval = \"1s\"\nprobe_timeout = \"1s\""),
            Err("monitor.probe_timeout"),
        );
        check(&monitor("interval = \"5 apples\""), Err("interval"));
        check(
            &monitor("probe_failures = 0"),
            Err("monitor.probe_failures"),
        );
        check(
            &monitor("disk_min_free_percent = 120.0"),
            Err("monitor.disk_min_free_percent"),
        );
        check(&monitor("webhook = \"https://x/\""), Err("monitor.webhook"));
        check(&monitor("colour = 1"), Err("colour"));
        check(&process("match_name = \"nginx\""), Ok(()));
        check(
            &process(
                "match_cmdline = \"java .*Sipserver\"\nmin_count = 2\nmax_cpu_percent = 300.0\nmax_rss_mb = 8192.0\ncritical = true",
            ),
            Ok(()),
        );
        check(&process("pidfile = \"/run/x.pid\""), Ok(()));
        check(
            &process(""),
            Err("monitor.process[0].name: give exactly one"),
        );
        check(
            &process("match_name = \"a\"\npidfile = \"/run/x.pid\""),
            Err("exactly one"),
        );
        check(
            &process("match_name = \"a-name-longer-than-15\""),
            Err("monitor.process[0].match_name"),
        );
        check(
            &process("match_cmdline = \"(unclosed\""),
            Err("monitor.process[0].match_cmdline"),
        );
        check(
            &process("pidfile = \"run/x.pid\""),
            Err("monitor.process[0].pidfile"),
        );
        check(
            &process("match_name = \"a\"\nmin_count = 0"),
            Err("monitor.process[0].min_count"),
        );
        check(
            &process("match_name = \"a\"\nmax_cpu_percent = 0.0"),
            Err("monitor.process[0].max_cpu_percent"),
        );
        check(
            &process("match_name = \"a\"\nmax_rss_mb = -1.0"),
            Err("monitor.process[0].max_rss_mb"),
        );
        check(&process("match_name = \"a\"\ncolor = 1"), Err("color"));
        check(
            &format!(
                "{}[[monitor.process]]\nname = \"p\"\nmatch_name = \"b\"\n",
                process("match_name = \"a\"\n")
            ),
            Err("monitor.process[1].name: \"p\" appears twice"),
        );
        check(
            &format!("{MINIMAL}\n[api]\nallow = [\"10.0.0.0/8\", \"::1/128\"]\n"),
            Ok(()),
        );
        check(
            &format!("{MINIMAL}\n[api]\nallow = [\"10.0.0.300/8\"]\n"),
            Err("allow"),
        );
        check(
            &format!("{MINIMAL}\n[[api.users]]\nname = \"ops\"\npassword_hash = \"secret\"\n"),
            Err("api.users[0].password_hash"),
        );
        check(
            &format!("{MINIMAL}\n[store]\nengine = \"sled\"\ncdr_retention = \"90d\"\n"),
            Ok(()),
        );
        check(
            &format!("{MINIMAL}\n[store]\nengine = \"lmdb\"\n"),
            Err("lmdb"),
        );
        let sink = |text: &str| format!("{MINIMAL}\n[sink.postgres]\n{text}\n");
        check(&sink("url = \"postgres://sipedge@db/cdr\""), Ok(()));
        check(
            &sink("url = \"postgres://sipedge@db/cdr\"\nbatch_size = 0"),
            Err("sink.postgres.batch_size"),
        );
        check(&sink(""), Err("sink.postgres.url"));
        check(&format!("{MINIMAL}\n[sink.mysql]\n"), Err("mysql"));
    }

    #[test]
    fn cluster_table() {
        let cluster = |text: &str| format!("{MINIMAL}\n[cluster]\n{text}\n");
        let secret = "secret = \"0123456789abcdef0123\"";
        check(&cluster(""), Ok(()));
        check(
            &cluster(&format!(
                "{secret}\ntimeout = \"1s\"\npeers = [{{ name = \"sz-01\", url = \"http://10.1.0.5:8068\" }}]"
            )),
            Ok(()),
        );
        check(
            &format!(
                "{MINIMAL}\n[cluster]\n{secret}\n[[cluster.peers]]\nname = \"sz-01\"\nurl = \"http://10.1.0.5:8068\"\ntimeout = \"3s\"\n"
            ),
            Ok(()),
        );
        check(&cluster("colour = 1"), Err("colour"));
        check(
            &cluster(&format!(
                "{secret}\npeers = [{{ name = \"a\", url = \"http://a:1\", weight = 1 }}]"
            )),
            Err("weight"),
        );
        check(&cluster("timeout = \"soon\""), Err("timeout"));
        check(
            &cluster("peers = [{ name = \"sz-01\", url = \"http://10.1.0.5:8068\" }]"),
            Err("cluster.secret_file"),
        );
        check(
            &cluster(&format!(
                "{secret}\npeers = [{{ name = \"sh-01\", url = \"http://a:1\" }}]"
            )),
            Err("cluster.peers[0].name"),
        );
        check(
            &cluster(&format!(
                "{secret}\npeers = [{{ name = \"sz-01\", url = \"10.1.0.5:8068\" }}]"
            )),
            Err("cluster.peers[0].url"),
        );
        check(
            &cluster("secret_file = \"/nonexistent/cluster.secret\""),
            Err("cluster.secret_file: cannot read"),
        );
        // The secret itself is never shown by check-config.
        let shown = Config::parse(&cluster(secret)).unwrap().to_toml();
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
    }

    #[test]
    fn effective_config_round_trips() {
        let config = Config::parse(MINIMAL).unwrap();
        let shown = config.to_toml();
        let again = Config::parse(&shown).unwrap();
        assert_eq!(again.to_toml(), shown);
        assert!(shown.contains("timezone = \"Asia/Shanghai\""), "{shown}");
        assert!(shown.contains("max_clock_skew = \"1h\""), "{shown}");
    }
}
