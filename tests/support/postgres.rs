//! A throw-away PostgreSQL server for the tests of the bank's database (`etc/sql/`) and of the
//! sink: `initdb` into a temp dir, `pg_ctl start` on a free loopback port with its socket in
//! that dir, stopped by the PID in `postmaster.pid` when dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root: then the server's own
//! programs (`initdb`, `pg_ctl`, `postgres`) run as an unprivileged user through `runuser`,
//! `sipedge-test` (made by tests/setup.sh) or else `nobody`, and the temp dir belongs to it.
//! The clients (`psql`, `pg_dump`) run as the test itself.
//!
//! Authentication is what the bank would have over TCP: the superuser `postgres` is trusted
//! (on the socket and on 127.0.0.1), every other role logs in with its SCRAM password, which
//! the harness must know to put it in [`Postgres::url`]: make such roles with
//! [`Postgres::create_login_role`], or tell the harness with [`Postgres::remember_password`].
//!
//! Settings are for speed, not safety (`fsync=off`, small buffers): the cluster is gone when
//! the test ends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::ports::free_port;
use super::{require_tool, wait_until};

/// The superuser `initdb` makes, whoever runs it.
pub const SUPERUSER: &str = "postgres";

/// Unprivileged users the server runs as when the tests run as root, first existing one wins.
const RUN_AS: [&str; 2] = ["sipedge-test", "nobody"];

/// The oldest PostgreSQL the DDL supports.
const OLDEST_MAJOR: u32 = 14;

/// How long a fast shutdown may take before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A running throw-away PostgreSQL server; stopped when dropped, its log printed then if the
/// test is failing.
#[derive(Debug)]
pub struct Postgres {
    /// `data/` (the cluster), `sock/` (the Unix socket), `server.log`; removed on drop.
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl`, `postgres`, `psql` and `pg_dump` are, all of one version.
    bin: PathBuf,
    /// The TCP port on 127.0.0.1, kept over [`Postgres::start_again`].
    port: u16,
    /// The OS user the server runs as, when the tests run as root.
    run_as: Option<String>,
    /// Passwords of the login roles the harness knows, for URLs and `psql` over TCP.
    passwords: Mutex<HashMap<String, String>>,
    /// Whether the server is up (between a start and a stop).
    running: bool,
}

impl Postgres {
    /// A new cluster, started. Panics naming the missing program when PostgreSQL (14 or
    /// later) is not installed.
    pub fn start() -> Postgres {
        let bin = server_bin();
        let run_as = if rustix::process::geteuid().is_root() {
            require_tool("runuser", "--version", "util-linux");
            Some(unprivileged_user())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("sipedge-pg")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            run_as,
            passwords: Mutex::new(HashMap::new()),
            running: false,
        };
        pg.chown_dir();
        pg.initdb();
        pg.start_again();
        pg
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket (`host` for clients that use one).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// `postgres://USER[:PASSWORD]@127.0.0.1:PORT/DB`, with the password the harness knows
    /// for `user` (none for the superuser).
    pub fn url(&self, db: &str, user: &str) -> String {
        let credentials = match self.password(user) {
            Some(password) => format!("{}:{}", percent_encode(user), percent_encode(&password)),
            None => percent_encode(user),
        };
        format!(
            "postgres://{credentials}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// Runs `sql` (any number of statements) in `db` as the superuser through
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1`; returns its stdout, panics on any error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_with(db, SUPERUSER, &[], sql)
            .unwrap_or_else(|e| panic!("psql in database {db} failed: {e}\n----- SQL:\n{sql}"))
    }

    /// Runs `sql` in `db` as `user` (over TCP with its password, or as the superuser on the
    /// socket); `Err` carries psql's stderr, for tests that expect a refusal.
    pub fn psql_as(&self, db: &str, user: &str, sql: &str) -> Result<String, String> {
        self.psql_with(db, user, &[], sql)
    }

    /// As [`Postgres::psql_as`], with psql variables (`-v NAME=VALUE`), which `sql` uses as
    /// `:NAME` or `:'NAME'` (quoted as a literal by psql).
    pub fn psql_with(
        &self,
        db: &str,
        user: &str,
        vars: &[(&str, &str)],
        sql: &str,
    ) -> Result<String, String> {
        let mut command = self.client("psql", db, user);
        command.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]);
        for (name, value) in vars {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        command.args(["-f", "-"]);
        let out = run_with_stdin(&mut command, sql);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Runs the SQL file at `path` in `db` as the superuser (`psql -f`, stopping at the first
    /// error, each file as the DBA would run it); panics on failure.
    pub fn psql_file(&self, db: &str, path: &Path) {
        let out = self
            .client("psql", db, SUPERUSER)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(path)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -f {} in database {db} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates the database `name`, owned by the superuser.
    pub fn create_database(&self, name: &str) {
        self.psql(SUPERUSER, &format!("CREATE DATABASE {};", ident(name)));
    }

    /// Applies `etc/sql/postgres.sql` (the schema a new database gets) to `db`.
    pub fn apply_schema(&self, db: &str) {
        self.psql_file(db, &sql_dir().join("postgres.sql"));
    }

    /// Applies every `etc/sql/migrations/NNNN_*.sql` to `db` in order, as an upgrade from
    /// nothing would.
    pub fn apply_migrations(&self, db: &str) {
        for migration in migrations() {
            self.psql_file(db, &migration);
        }
    }

    /// `pg_dump --schema-only` of `db`: the catalog as text, to compare two databases
    /// (without the `\restrict` lines, whose key pg_dump draws at random on each run).
    pub fn schema_dump(&self, db: &str) -> String {
        let out = self
            .client("pg_dump", db, SUPERUSER)
            .args(["--schema-only", "--no-owner"])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump of database {db} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// Creates a role that can log in with `password` and remembers the password for
    /// [`Postgres::url`] and [`Postgres::psql_as`].
    pub fn create_login_role(&self, name: &str, password: &str) {
        self.psql(
            SUPERUSER,
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD {};",
                ident(name),
                literal(password)
            ),
        );
        self.remember_password(name, password);
    }

    /// Tells the harness the password of a role made some other way (e.g. by the README's
    /// SQL).
    pub fn remember_password(&self, user: &str, password: &str) {
        self.passwords
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned(), password.to_owned());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the server is up.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (fast shutdown: open sessions are ended, nothing committed is lost),
    /// for outage tests; [`Postgres::start_again`] brings it back.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let Some(pid) = self.postmaster_pid() else {
            panic!(
                "no postmaster.pid in the data dir of a running server\n{}",
                self.log()
            )
        };
        signal(pid, "INT");
        if !wait_until(STOP_LIMIT, || !is_alive(pid)) {
            signal(pid, "KILL");
            panic!(
                "PostgreSQL (pid {pid}) did not stop within {STOP_LIMIT:?} of SIGINT; killed\n{}",
                self.log()
            );
        }
    }

    /// Starts the server again on the same data dir and port (or the first time).
    pub fn start_again(&mut self) {
        assert!(!self.running, "start of a PostgreSQL server that runs");
        let out = self
            .server("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-s", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}):\n{}\n----- server log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn initdb(&self) {
        let out = self
            .server("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let hba = format!(
            "local all all trust\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n"
        );
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = String::new();
        let settings = [
            ("listen_addresses", "'127.0.0.1'".to_owned()),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                literal(&self.socket_dir().to_string_lossy()),
            ),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("shared_buffers", "'16MB'".to_owned()),
            ("max_connections", "40".to_owned()),
            ("timezone", "'UTC'".to_owned()),
            ("password_encryption", "'scram-sha-256'".to_owned()),
        ];
        for (key, value) in settings {
            let _ = writeln!(conf, "{key} = {value}");
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("open postgresql.conf");
        file.write_all(conf.as_bytes())
            .expect("write postgresql.conf");
        self.chown_dir();
    }

    /// Gives the temp dir to the server's user, when there is one.
    fn chown_dir(&self) {
        let Some(user) = &self.run_as else { return };
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(self.dir.path())
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown of {} to {user} failed: {}",
            self.dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One of the server's programs, as the server's user.
    fn server(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        // The caller's directory may be closed to the server's user.
        command.current_dir(self.dir.path());
        command
    }

    /// A client program connected to `db` as `user`: the superuser on the socket, anyone
    /// else over TCP with the password the harness knows.
    fn client(&self, program: &str, db: &str, user: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGOPTIONS",
        ] {
            command.env_remove(var);
        }
        command.env("PGCONNECT_TIMEOUT", "10");
        if user == SUPERUSER {
            command.arg("-h").arg(self.socket_dir());
        } else {
            command.args(["-h", "127.0.0.1"]);
            if let Some(password) = self.password(user) {
                command.env("PGPASSWORD", password);
            }
            // Never wait for a password on a terminal.
            command.arg("-w");
        }
        command
            .args(["-p", &self.port.to_string(), "-U", user, "-d", db])
            .current_dir(self.dir.path());
        command
    }

    fn password(&self, user: &str) -> Option<String> {
        self.passwords
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- PostgreSQL server log:\n{}\n----- end", self.log());
        }
        if self.running {
            self.running = false;
            if let Some(pid) = self.postmaster_pid() {
                signal(pid, "INT");
                if !wait_until(STOP_LIMIT, || !is_alive(pid)) {
                    signal(pid, "KILL");
                }
            }
        }
    }
}

/// The directory of the shipped SQL, `etc/sql/`.
pub fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/sql")
}

/// The migrations of `etc/sql/migrations/`, in the order they apply (their `NNNN_` prefix).
pub fn migrations() -> Vec<PathBuf> {
    let dir = sql_dir().join("migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no migrations in {}", dir.display());
    files
}

/// `name` as an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The directory of the newest installed PostgreSQL's programs: Debian's
/// `/usr/lib/postgresql/N/bin`, else wherever `initdb` on PATH really is.
fn server_bin() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max();
    let bin = match debian {
        Some((major, bin)) => {
            assert!(
                major >= OLDEST_MAJOR,
                "PostgreSQL {major} in {} is older than {OLDEST_MAJOR}, the oldest the DDL \
                 supports; install a newer one (Debian: `apt-get install -y postgresql`)",
                bin.display()
            );
            bin
        }
        None => on_path("initdb")
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL's `initdb` is neither in /usr/lib/postgresql/*/bin nor on PATH; \
                     these tests run a real PostgreSQL server. Install it (Debian: \
                     `apt-get install -y postgresql`, or tests/setup.sh) and run again."
                )
            }),
    };
    for program in ["initdb", "pg_ctl", "postgres", "psql", "pg_dump"] {
        assert!(
            bin.join(program).is_file(),
            "PostgreSQL's `{program}` is missing from {} (beside its initdb); install the \
             complete server (Debian: `apt-get install -y postgresql`, or tests/setup.sh)",
            bin.display()
        );
    }
    bin
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The first of [`RUN_AS`] that exists on this machine.
fn unprivileged_user() -> String {
    RUN_AS
        .iter()
        .find(|user| {
            Command::new("id")
                .args(["-u", user])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(|user| (*user).to_owned())
        .unwrap_or_else(|| {
            panic!(
                "running as root, and none of the users {RUN_AS:?} exists to run PostgreSQL \
                 (it refuses root); run tests/setup.sh, which makes `sipedge-test`"
            )
        })
}

fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_owned();
    // A writer thread: psql may fill its stdout pipe before it has read all its input.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for psql");
    let _ = writer.join();
    out
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Whether `pid` is a live process (a zombie left for init to reap counts as gone).
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
