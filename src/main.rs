//! `sipedge`: the command line. Parsing arguments and choosing exit codes is all this file
//! does; the work is in the modules it calls.
#![forbid(unsafe_code)]

mod config;
mod logging;
mod serve;
mod shutdown;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    },
    /// Print a valid account-request body for an appid.
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve::main(&config),
        Command::CheckConfig { config } => match config::Config::load(&config) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
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
