//! `sipedge`: the command line. Parsing arguments and choosing exit codes is all this file
//! does; the work is in the modules it calls.
#![forbid(unsafe_code)]

mod cdrs;
mod config;
mod live;
mod logging;
mod logwriter;
mod metrics;
mod monitor;
mod notify;
mod passive;
mod reload;
mod serve;
mod shutdown;
mod sink;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// glibc's malloc was a fifth of the CPU of a relayed call with its record (perf, issue 4):
// every message, log entry and redb page is a short-lived allocation across threads, which
// is the case mimalloc is built for. Built without transparent huge pages (`no_thp`): with
// them, each fresh mimalloc page faulted in 2 MiB the kernel had to zero (7 % of the CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a configuration or start-up problem the operator must fix (sysexits EX_USAGE),
/// so systemd and scripts can tell it from a crash.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "sipedge",
    version,
    about = "SIP edge proxy with call records for a Sipserver node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service in the foreground (systemd style; logs to stderr).
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print nothing when the file is valid (the unit's ExecStartPre: the effective
        /// configuration holds password hashes, which do not belong in the journal).
        #[arg(long)]
        quiet: bool,
    },
    /// List the stored CDRs offline, newest first (refused while a running sipedge holds the
    /// store).
    Cdrs(cdrs::CdrsArgs),
    /// The bank's database sink (`[sink.postgres]`).
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Print a valid account-request body for an appid.
    Token(token::TokenArgs),
    /// Read a password on stdin and print its argon2id hash for an `[[api.users]]` entry.
    HashPassword,
    /// Build CDRs from pcap/pcapng captures with the proxy's call tracking, into the store
    /// (or printed); a summary of what was read and skipped goes to stderr.
    ImportPcap(passive::import::ImportArgs),
}

#[derive(Debug, Subcommand)]
enum SinkCommand {
    /// Show the running server's sink: outbox depth and lag, last error and success,
    /// backfill progress (exit 1 when no server has updated it lately).
    Status(sink::status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve::main(&config),
        Command::CheckConfig { config, quiet } => match config::Config::load(&config) {
            Ok(config) => {
                if !quiet {
                    print!("{}", config.to_toml());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sipedge: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::HashPassword => hash_password(),
        Command::ImportPcap(args) => passive::import::main(&args),
        Command::Cdrs(args) => match cdrs::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("sipedge: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Sink(SinkCommand::Status(args)) => match sink::status::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!(
                    "sipedge: the sink status is stale: sipedge serve is not running the sink"
                );
                ExitCode::FAILURE
            }
            Err(err) => {
                eprintln!("sipedge: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Token(args) => match token::run(&args) {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sipedge: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// The first line of stdin (without its line end) → its PHC hash on stdout.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut line) {
        eprintln!("sipedge: cannot read the password from stdin: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("sipedge: the password on stdin is empty");
        return ExitCode::from(EXIT_CONFIG);
    }
    match sipedge_http::access::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sipedge: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
