//! The `[monitor]` table (SPEC §2, §7): what is watched, how often, and the limits.

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Settings of the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// How often processes, the disk and the store are checked and the upstream probed.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Whether the upstream Sipserver gets SIP OPTIONS probes; without a `[sip]` table there
    /// is no upstream and nothing is probed.
    #[serde(default = "default_true")]
    pub probe_upstream: bool,
    /// How long a probe waits for any reply; shorter than `interval`.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Consecutive unanswered probes before the upstream is down (alarm, health down).
    #[serde(default = "default_probe_failures")]
    pub probe_failures: u32,
    /// `disk_low` below this many free megabytes in `node.data_dir` (0 = no limit).
    #[serde(default = "default_disk_min_free_mb")]
    pub disk_min_free_mb: u64,
    /// `disk_low` below this percentage of free space in `node.data_dir` (0 = no limit).
    #[serde(default = "default_disk_min_free_percent")]
    pub disk_min_free_percent: f64,
    /// An `http://host:port/path` URL that receives every alarm change as a JSON POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Alarm changes held for the webhook while its receiver is away; past it the oldest
    /// are dropped and counted.
    #[serde(default = "default_webhook_queue")]
    pub webhook_queue: usize,
    /// The processes to watch.
    #[serde(default, rename = "process")]
    pub processes: Vec<ProcessWatch>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: default_interval(),
            probe_upstream: true,
            probe_timeout: default_probe_timeout(),
            probe_failures: default_probe_failures(),
            disk_min_free_mb: default_disk_min_free_mb(),
            disk_min_free_percent: default_disk_min_free_percent(),
            webhook: None,
            webhook_queue: default_webhook_queue(),
            processes: Vec::new(),
        }
    }
}

fn default_webhook_queue() -> usize {
    1000
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_probe_failures() -> u32 {
    3
}
fn default_disk_min_free_mb() -> u64 {
    1024
}
fn default_disk_min_free_percent() -> f64 {
    5.0
}
fn default_min_count() -> usize {
    1
}

/// One `[[monitor.process]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessWatch {
    /// What alarms and `/api/processes` call it; unique.
    pub name: String,
    /// Matches processes whose name (`/proc/PID/comm`, at most 15 bytes) is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A regular expression searched in the command line (arguments joined by spaces), so
    /// a plain word matches as a substring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_cmdline: Option<String>,
    /// A file holding the process id, as daemons write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// Fewer matching processes than this is `process_missing`.
    #[serde(default = "default_min_count")]
    pub min_count: usize,
    /// CPU of all matching processes together, 100 = one core; over it is `process_cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f64>,
    /// Resident memory of all matching processes together; over it is `process_memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_mb: Option<f64>,
    /// Missing makes the node unhealthy: `/healthz` and the account responder answer 503.
    #[serde(default)]
    pub critical: bool,
}

/// How a watched process is recognised, checked and compiled.
#[derive(Debug, Clone)]
pub enum Matcher {
    Name(String),
    Cmdline(Regex),
    Pidfile(PathBuf),
}

impl Matcher {
    /// As shown by `/api/processes`.
    pub fn describe(&self) -> String {
        match self {
            Matcher::Name(name) => format!("name {name}"),
            Matcher::Cmdline(re) => format!("cmdline /{}/", re.as_str()),
            Matcher::Pidfile(path) => format!("pidfile {}", path.display()),
        }
    }
}

impl ProcessWatch {
    /// The one matcher the entry names, or why it does not name exactly one.
    pub fn matcher(&self, index: usize) -> Result<Matcher, String> {
        let key = |k: &str| format!("monitor.process[{index}].{k}");
        let given = [
            self.match_name.is_some(),
            self.match_cmdline.is_some(),
            self.pidfile.is_some(),
        ]
        .iter()
        .filter(|&&g| g)
        .count();
        if given != 1 {
            return Err(format!(
                "{}: give exactly one of match_name, match_cmdline, pidfile ({given} given)",
                key("name")
            ));
        }
        if let Some(name) = &self.match_name {
            if name.is_empty() || name.len() > 15 {
                return Err(format!(
                    "{}: {name:?} must be 1 to 15 bytes (the kernel keeps 15 of a process name)",
                    key("match_name")
                ));
            }
            return Ok(Matcher::Name(name.clone()));
        }
        if let Some(pattern) = &self.match_cmdline {
            return Regex::new(pattern)
                .map(Matcher::Cmdline)
                .map_err(|e| format!("{}: {}", key("match_cmdline"), one_line(&e.to_string())));
        }
        match &self.pidfile {
            Some(path) if path.is_absolute() => Ok(Matcher::Pidfile(path.clone())),
            Some(path) => Err(format!(
                "{}: {} must be an absolute path",
                key("pidfile"),
                path.display()
            )),
            None => Err(format!("{}: no matcher", key("name"))),
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl MonitorConfig {
    /// Problems a person must fix, one line each, naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interval < Duration::from_millis(100) {
            problems.push("monitor.interval: must be at least 100ms".to_owned());
        }
        if self.webhook_queue == 0 {
            problems.push("monitor.webhook_queue: must be at least 1".to_owned());
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.interval {
            problems.push(format!(
                "monitor.probe_timeout: must be longer than 0s and shorter than monitor.interval ({})",
                humantime::format_duration(self.interval)
            ));
        }
        if self.probe_failures == 0 {
            problems.push("monitor.probe_failures: must be at least 1".to_owned());
        }
        if !(0.0..=100.0).contains(&self.disk_min_free_percent) {
            problems.push("monitor.disk_min_free_percent: must be between 0 and 100".to_owned());
        }
        if let Some(url) = &self.webhook
            && let Err(e) = WebhookUrl::parse(url)
        {
            problems.push(format!("monitor.webhook: {e}"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, watch) in self.processes.iter().enumerate() {
            if watch.name.trim().is_empty() {
                problems.push(format!("monitor.process[{i}].name: must not be empty"));
            } else if !names.insert(watch.name.as_str()) {
                problems.push(format!(
                    "monitor.process[{i}].name: {:?} appears twice",
                    watch.name
                ));
            }
            if let Err(e) = watch.matcher(i) {
                problems.push(e);
            }
            if watch.min_count == 0 {
                problems.push(format!(
                    "monitor.process[{i}].min_count: must be at least 1"
                ));
            }
            if watch
                .max_cpu_percent
                .is_some_and(|c| !c.is_finite() || c <= 0.0)
            {
                problems.push(format!(
                    "monitor.process[{i}].max_cpu_percent: must be above 0"
                ));
            }
            if watch.max_rss_mb.is_some_and(|m| !m.is_finite() || m <= 0.0) {
                problems.push(format!("monitor.process[{i}].max_rss_mb: must be above 0"));
            }
        }
        problems
    }
}

/// A webhook address split for a plain HTTP/1.1 client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address to connect to (IPv6 without brackets).
    pub host: String,
    /// 80 unless the URL names one.
    pub port: u16,
    /// What the `Host` header says: the URL's authority as written.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookUrl {
    /// Accepts `http://host[:port][/path]`; TLS is left to a local relay, which keeps the
    /// monitor free of a TLS stack.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad = || format!("{url:?} has no usable host[:port]");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, p)) => (host, p.parse::<u16>().map_err(|_| bad())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || port == 0 || host.contains(['@', ' ']) {
            return Err(bad());
        }
        if path.contains([' ', '\r', '\n']) {
            return Err(format!(
                "{url:?}: the path must not contain spaces or line breaks"
            ));
        }
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_url(url: &str, expected: Result<(&str, u16, &str), &str>) {
        let got = WebhookUrl::parse(url);
        match expected {
            Ok((host, port, path)) => {
                let got = got.unwrap();
                assert_eq!(
                    (got.host.as_str(), got.port, got.path.as_str()),
                    (host, port, path)
                );
            }
            Err(word) => {
                let err = got.expect_err(url);
                assert!(err.contains(word), "{err} should mention {word}");
            }
        }
    }

    #[test]
    fn webhook_urls() {
        check_url(
            "http://127.0.0.1:9000/alarms",
            Ok(("127.0.0.1", 9000, "/alarms")),
        );
        check_url("http://hooks.bank.local", Ok(("hooks.bank.local", 80, "/")));
        check_url("http://[::1]:81/a?b=c", Ok(("::1", 81, "/a?b=c")));
        check_url("https://x/", Err("http://"));
        check_url("http://:80/", Err("host"));
        check_url("http://x:99999/", Err("host"));
        check_url("http://u@x/", Err("host"));
        check_url("http://x/a b", Err("path"));
    }
}
