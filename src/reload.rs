//! `systemctl reload` (SIGHUP): re-read the file and apply what can change while calls and
//! connections go on — the account, appids and clock skew, the API's users and networks, the
//! log level, the watched processes, the per-source SIP limits. Whatever else changed is named
//! as needing a restart; a file that does not load changes nothing, the log says why and the
//! `config_invalid` alarm stays raised until a reload succeeds.

use std::path::PathBuf;
use std::sync::Arc;

use sipedge_http::access::Access;
use sipedge_http::account::AccountState;
use sipedge_sip::limit::SourceLimiter;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use toml::Value;

use crate::config::Config;
use crate::logging::LevelHandle;
use crate::monitor::Control;

/// Keys applied live; every other key that differs from the running process needs a restart.
const LIVE_KEYS: &[(&str, &str)] = &[
    ("account", "appids"),
    ("account", "account"),
    ("account", "max_clock_skew"),
    ("account", "body_timeout"),
    ("account", "source_rate_limit"),
    ("account", "source_rate_burst"),
    ("api", "allow"),
    ("api", "users"),
    ("log", "level"),
    ("monitor", "process"),
    ("sip", "source_rate_limit"),
    ("sip", "source_rate_burst"),
];

/// The running parts whose settings a reload replaces.
#[derive(Debug)]
pub struct Live {
    /// The account responder's state (its `[account]` table is swapped).
    pub account: Arc<AccountState>,
    /// The API listener's access rules.
    pub access: Arc<Access>,
    /// The logger's level.
    pub log: LevelHandle,
    /// The monitor: its watch list, and the alarm of a file that did not load.
    pub monitor: Control,
    /// The SIP proxy's per-source limits, when a proxy runs.
    pub limiter: Option<Arc<SourceLimiter>>,
}

/// Applies each SIGHUP's file to `live`; `started` is what the process runs with for the keys
/// that need a restart. Ends when the stop begins: a reload then would tell systemd
/// `READY=1` in the middle of the drain.
pub fn spawn(
    path: PathBuf,
    started: Config,
    live: Live,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hup.recv() => if received.is_none() { break },
                () = stop.cancelled() => break,
            }
            crate::notify::reloading();
            let loaded = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Config::load(&path)).await
            };
            let refused = match loaded {
                Ok(Ok(config)) => {
                    apply(&started, &config, &live).await;
                    None
                }
                Ok(Err(err)) => Some(err.to_string()),
                Err(err) => Some(format!("loading the file stopped unexpectedly: {err}")),
            };
            if let Some(why) = &refused {
                tracing::error!(
                    error = %why,
                    "reload refused: the running configuration stays in force"
                );
            }
            live.monitor.reloaded(&path, refused).await;
            crate::notify::ready("serving");
        }
    });
    Ok(())
}

async fn apply(started: &Config, new: &Config, live: &Live) {
    live.account.set_config(new.account.clone());
    live.access.replace(new.api.allow.clone(), &new.api.users);
    live.monitor.watch(new.monitor.processes.clone()).await;
    if let (Some(limiter), Some(sip)) = (&live.limiter, &new.sip) {
        limiter.set(sip.source_rate_limit, sip.source_rate_burst);
    }
    let restart = restart_needed(started, new);
    if !restart.is_empty() {
        tracing::warn!(
            keys = %restart.join(", "),
            "changed settings that take effect only after a restart (systemctl restart sipedge)"
        );
    }
    tracing::info!(
        appids = new.account.appids.len(),
        api_users = new.api.users.len(),
        watched_processes = new.monitor.processes.len(),
        level = %new.log.level,
        "configuration reloaded"
    );
    // Last, so that the lines above are filtered by the level they were written under.
    if let Err(why) = live.log.set(&new.log.level) {
        tracing::warn!(reason = %why, "log.level not changed");
    }
}

/// The dotted keys, other than the live ones, whose values differ between the two configs.
fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Table(mut running)), Ok(Value::Table(mut new))) =
        (Value::try_from(running), Value::try_from(new))
    else {
        return vec!["(the configuration cannot be compared)".to_owned()];
    };
    for (table, key) in LIVE_KEYS {
        for side in [&mut running, &mut new] {
            if let Some(Value::Table(t)) = side.get_mut(*table) {
                t.remove(*key);
            }
        }
    }
    let mut keys = Vec::new();
    differences("", &Value::Table(running), &Value::Table(new), &mut keys);
    keys
}

fn differences(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Table(a), Value::Table(b)) => {
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => differences(&key, x, y, out),
                    _ => out.push(key),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
name = "sh-01"
data_dir = "/tmp/x"
[account]
listen = "127.0.0.1:14700"
appids = ["a"]
account = "sipserver"
[api]
listen = "127.0.0.1:8068"
[log]
level = "info"
"#;

    fn config(text: &str) -> Config {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), text).unwrap();
        Config::load(path.path()).unwrap()
    }

    fn check(edit: (&str, &str), expected: &[&str]) {
        check_from(BASE, edit, expected);
    }

    /// The keys named when the file `base` is reloaded with `edit` (from, to) made.
    fn check_from(base: &str, edit: (&str, &str), expected: &[&str]) {
        let running = config(base);
        let new = config(&base.replace(edit.0, edit.1));
        assert_eq!(restart_needed(&running, &new), expected, "{edit:?}");
    }

    #[test]
    fn restart_needed_table() {
        check(("", ""), &[]);
        check(("appids = [\"a\"]", "appids = [\"a\", \"b\"]"), &[]);
        check(("account = \"sipserver\"", "account = \"other\""), &[]);
        check(
            (
                "account = \"sipserver\"",
                "account = \"o\"\nmax_clock_skew = \"5s\"",
            ),
            &[],
        );
        check(("level = \"info\"", "level = \"debug\""), &[]);
        check(("[api]", "[api]\nallow = [\"10.0.0.0/8\"]"), &[]);
        check(("127.0.0.1:14700", "127.0.0.1:14701"), &["account.listen"]);
        check(
            (
                "data_dir = \"/tmp/x\"",
                "data_dir = \"/tmp/y\"\nstop_timeout = \"3s\"",
            ),
            &["node.data_dir", "node.stop_timeout"],
        );
        check(("level = \"info\"", "format = \"json\""), &["log.format"]);
        check(
            ("[log]", "[store]\nengine = \"sled\"\n[log]"),
            &["store.engine"],
        );
        check(
            ("[log]", "[sip]\nupstream = \"127.0.0.1:5060\"\n[log]"),
            &["sip"],
        );
        let watch = "[[monitor.process]]\nname = \"db\"\nmatch_name = \"postgres\"\n[log]";
        check(("[log]", watch), &[]);
        check(
            ("[log]", "[monitor]\ninterval = \"10s\"\n[log]"),
            &["monitor.interval"],
        );
        let with_sip = format!("{BASE}[sip]\nupstream = \"127.0.0.1:5060\"\n");
        check_from(
            &with_sip,
            (
                "[sip]",
                "[sip]\nsource_rate_limit = 5\nsource_rate_burst = 10",
            ),
            &[],
        );
        check_from(
            &with_sip,
            (
                "[sip]",
                "[sip]\nsource_rate_limit = 5\ncall_timeout = \"1h\"",
            ),
            &["sip.call_timeout"],
        );
        check_from(
            &with_sip,
            ("[sip]\nupstream = \"127.0.0.1:5060\"\n", ""),
            &["sip"],
        );
    }
}
