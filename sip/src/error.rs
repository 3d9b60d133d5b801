//! Why the proxy could not start. The relay path itself never fails: it drops and counts.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A start-up failure of the SIP proxy, worded for the operator who must fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[sip]` key has a value that cannot work together with the others.
    #[error("config key {key}: {reason}")]
    Config {
        /// The full key name, as written in the file.
        key: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// A port of the range could not be bound (in use, or not permitted).
    #[error("cannot bind SIP {transport} {addr}: {source} (is another process using the port?)")]
    Bind {
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// The address that failed.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The upstream host name did not resolve.
    #[error("cannot resolve sip.upstream `{host}`: {reason}")]
    Resolve {
        /// The configured host.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The flow-token key file could not be read or created.
    #[error("flow key file {path}: {reason}")]
    KeyFile {
        /// The file in `node.data_dir`.
        path: PathBuf,
        /// What went wrong with it.
        reason: String,
    },
}
