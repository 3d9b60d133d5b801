//! The store's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the store, worded for the operator who reads the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {engine} store failed to {action}: {source}")]
    Engine {
        engine: &'static str,
        action: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "{} holds a {found} store but store.engine is {configured}: set store.engine = \"{found}\" \
         or point node.data_dir elsewhere",
        dir.display()
    )]
    OtherEngine {
        dir: PathBuf,
        configured: &'static str,
        found: &'static str,
    },
    #[error(
        "the store's schema version is {found}, this build reads version {supported}: \
         use a matching sipedge build or a new data directory"
    )]
    SchemaVersion { found: u32, supported: u32 },
    #[error(
        "another process has the store in {} open (a running sipedge?); stop it first",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("a stored {what} cannot be read ({detail}); the store may be damaged")]
    Corrupt { what: &'static str, detail: String },
    #[error("bucket edges must be at least two times in increasing order")]
    BadBuckets,
    #[error("cannot start the store's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the store's writer has stopped, so nothing more can be written")]
    WriterStopped,
    #[error(
        "the store did not confirm the flush within {0:?}; it keeps retrying in the background"
    )]
    FlushTimeout(std::time::Duration),
}
