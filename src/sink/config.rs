//! The `[sink.postgres]` table: where the bank's database is and how hard to push it.
//!
//! The password is never in the file: `password_file` names a file readable by the service
//! alone (mode 0600), read once at start, so the configuration can be shown
//! (`check-config`) and kept in version control without the secret.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[sink]`: the sinks CDRs are shipped to. Only PostgreSQL today.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// The bank's PostgreSQL database; without it nothing is shipped and no outbox is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
}

impl SinkSection {
    pub fn is_empty(&self) -> bool {
        self.postgres.is_none()
    }
}

/// `[sink.postgres]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/dbname?options` (libpq form), or give `host` and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file holding the role's password (one line); none for trust or peer authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Connections kept open: the outbox is shipped this many batches at a time, and the
    /// backfill takes one between them.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// CDRs per INSERT (and per transaction).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The `sink_lag` alarm is raised when the oldest CDR waiting is older than this, and
    /// cleared when it is back under half of it.
    #[serde(default = "default_lag_alarm", with = "humantime_serde")]
    pub lag_alarm: Duration,
    /// CDRs per second at most when shipping a store that existed before the sink (so a
    /// year of records does not swamp the database).
    #[serde(default = "default_backfill_rate")]
    pub backfill_rate: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The server cancels a statement running longer (`statement_timeout`); the sink also
    /// gives up waiting on a batch after this plus `connect_timeout`.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
}

fn default_port() -> u16 {
    5432
}
fn default_pool_size() -> usize {
    2
}
fn default_batch_size() -> usize {
    1000
}
fn default_lag_alarm() -> Duration {
    Duration::from_secs(300)
}
fn default_backfill_rate() -> u32 {
    5000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Beyond this, one batch's arrays are megabytes and a refused batch retried row by row
/// takes minutes.
const MAX_BATCH: usize = 10_000;
const MAX_POOL: usize = 32;

impl PostgresConfig {
    /// Every problem, one line each naming its key (`sink.postgres.KEY`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let key = |k: &str| format!("sink.postgres.{k}");
        match (&self.url, &self.host) {
            (Some(_), Some(_)) => out.push(format!(
                "{}: give either url or host (with port, dbname, user), not both",
                key("url")
            )),
            (None, None) => out.push(format!(
                "{}: missing; give url = \"postgres://USER@HOST:PORT/DBNAME\" or host, dbname and user",
                key("url")
            )),
            (Some(url), None) => {
                if self.dbname.is_some() || self.user.is_some() {
                    out.push(format!(
                        "{}: dbname and user belong in the url when url is given",
                        key("url")
                    ));
                }
                match tokio_postgres::Config::from_str(url) {
                    Err(e) => out.push(format!(
                        "{}: {:?} is not a PostgreSQL URL: {e}",
                        key("url"),
                        redact(url)
                    )),
                    Ok(pg) => {
                        if pg.get_password().is_some() {
                            out.push(format!(
                                "{}: holds a password; put it in password_file instead",
                                key("url")
                            ));
                        }
                        if pg.get_user().is_none_or(str::is_empty) {
                            out.push(format!("{}: names no user (postgres://USER@…)", key("url")));
                        }
                        if pg.get_hosts().is_empty() {
                            out.push(format!("{}: names no host", key("url")));
                        }
                    }
                }
            }
            (None, Some(host)) => {
                if host.trim().is_empty() {
                    out.push(format!("{}: must not be empty", key("host")));
                }
                if self.port == 0 {
                    out.push(format!("{}: must be 1 to 65535", key("port")));
                }
                for (name, value) in [("dbname", &self.dbname), ("user", &self.user)] {
                    if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                        out.push(format!("{}: missing (needed with host)", key(name)));
                    }
                }
            }
        }
        if let Some(file) = &self.password_file
            && !file.is_absolute()
        {
            out.push(format!(
                "{}: {} must be an absolute path",
                key("password_file"),
                file.display()
            ));
        }
        if !(1..=MAX_POOL).contains(&self.pool_size) {
            out.push(format!("{}: must be 1 to {MAX_POOL}", key("pool_size")));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            out.push(format!("{}: must be 1 to {MAX_BATCH}", key("batch_size")));
        }
        if self.backfill_rate == 0 {
            out.push(format!(
                "{}: must be at least 1 CDR per second",
                key("backfill_rate")
            ));
        }
        for (name, value) in [
            ("lag_alarm", self.lag_alarm),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                out.push(format!("{}: must be longer than 0s", key(name)));
            }
        }
        if self.statement_timeout < Duration::from_millis(1) {
            out.push(format!(
                "{}: must be at least 1ms",
                key("statement_timeout")
            ));
        }
        out
    }

    /// The connection settings, with the password read from `password_file`; the error
    /// names the key and the file.
    pub fn connect_config(&self) -> Result<tokio_postgres::Config, String> {
        let mut pg = match (&self.url, &self.host) {
            (Some(url), _) => tokio_postgres::Config::from_str(url)
                .map_err(|e| format!("sink.postgres.url: {e}"))?,
            (None, host) => {
                let mut pg = tokio_postgres::Config::new();
                pg.host(host.as_deref().unwrap_or_default())
                    .port(self.port)
                    .dbname(self.dbname.as_deref().unwrap_or_default())
                    .user(self.user.as_deref().unwrap_or_default());
                pg
            }
        };
        if let Some(file) = &self.password_file {
            pg.password(read_password(file)?);
        }
        let statement_ms = self.statement_timeout.as_millis().max(1);
        pg.application_name("sipedge")
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(format!("-c statement_timeout={statement_ms}"));
        Ok(pg)
    }

    /// `host:port/dbname` as logs and `sink status` show the target (never a password).
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => redact(url),
            None => format!(
                "{}:{}/{}",
                self.host.as_deref().unwrap_or_default(),
                self.port,
                self.dbname.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// The first line of `file`, without its line end.
fn read_password(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "sink.postgres.password_file: cannot read {}: {e}",
            file.display()
        )
    })?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!(
            "sink.postgres.password_file: {} is empty",
            file.display()
        ));
    }
    Ok(line.to_owned())
}

/// A URL with whatever stands between `://` and `@` past a `:` replaced, so that a
/// password given by mistake is not echoed into the journal.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PostgresConfig, String> {
        let pg: PostgresConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        match pg.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(pg),
        }
    }

    #[test]
    fn table() {
        let url = "url = \"postgres://sipedge@127.0.0.1:5433/cdr\"\n";
        let ok = parse(url).unwrap();
        assert_eq!(ok.batch_size, 1000);
        assert_eq!(ok.pool_size, 2);
        assert_eq!(ok.lag_alarm, Duration::from_secs(300));
        let cases: &[(&str, Result<(), &str>)] = &[
            (url, Ok(())),
            (
                "host = \"db\"\nport = 6432\ndbname = \"cdr\"\nuser = \"sipedge\"\n",
                Ok(()),
            ),
            ("", Err("sink.postgres.url: missing")),
            ("url = \"mysql:://x\"", Err("sink.postgres.url")),
            (
                "url = \"postgres://\"",
                Err("sink.postgres.url: names no user"),
            ),
            (
                "url = \"postgres://u:hunter2@db/cdr\"",
                Err("sink.postgres.url: holds a password"),
            ),
            (
                &format!("{url}host = \"db\""),
                Err("sink.postgres.url: give either"),
            ),
            (
                &format!("{url}user = \"x\""),
                Err("sink.postgres.url: dbname and user"),
            ),
            ("host = \"db\"\nuser = \"u\"", Err("sink.postgres.dbname")),
            ("host = \"db\"\ndbname = \"d\"", Err("sink.postgres.user")),
            (
                "host = \"\"\ndbname = \"d\"\nuser = \"u\"",
                Err("sink.postgres.host"),
            ),
            (
                "host = \"db\"\nport = 0\ndbname = \"d\"\nuser = \"u\"",
                Err("sink.postgres.port"),
            ),
            (
                &format!("{url}batch_size = 0"),
                Err("sink.postgres.batch_size"),
            ),
            (
                &format!("{url}batch_size = 10001"),
                Err("sink.postgres.batch_size"),
            ),
            (
                &format!("{url}pool_size = 0"),
                Err("sink.postgres.pool_size"),
            ),
            (
                &format!("{url}backfill_rate = 0"),
                Err("sink.postgres.backfill_rate"),
            ),
            (
                &format!("{url}lag_alarm = \"0s\""),
                Err("sink.postgres.lag_alarm"),
            ),
            (&format!("{url}lag_alarm = \"soon\""), Err("lag_alarm")),
            (
                &format!("{url}connect_timeout = \"0s\""),
                Err("sink.postgres.connect_timeout"),
            ),
            (
                &format!("{url}statement_timeout = \"10us\""),
                Err("sink.postgres.statement_timeout"),
            ),
            (
                &format!("{url}password_file = \"pw.txt\""),
                Err("sink.postgres.password_file"),
            ),
            (&format!("{url}passwrd_file = \"/x\""), Err("passwrd_file")),
        ];
        for (text, expected) in cases {
            match (parse(text), expected) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(word)) => assert!(e.contains(word), "{text:?}: {e:?} lacks {word:?}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn redacts_passwords_and_reads_the_password_file() {
        for (url, shown) in [
            (
                "postgres://u:pw@db:5432/cdr",
                "postgres://u:***@db:5432/cdr",
            ),
            ("postgres://u@db/cdr", "postgres://u@db/cdr"),
            (
                "postgres://u:p@ss@db/cdr?x=1",
                "postgres://u:***@db/cdr?x=1",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), shown);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let mut pg: PostgresConfig =
            toml::from_str("url = \"postgres://sipedge@127.0.0.1/cdr\"").unwrap();
        pg.password_file = Some(file.clone());
        assert!(pg.connect_config().unwrap_err().contains("cannot read"));
        std::fs::write(&file, "\n").unwrap();
        assert!(pg.connect_config().unwrap_err().contains("is empty"));
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = pg.connect_config().unwrap();
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(config.get_dbname(), Some("cdr"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
    }
}
