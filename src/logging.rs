//! Structured logs to stderr, one line per event, for journald or the bank's log platform.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the level of the running logger (`log.level` on reload).
#[derive(Debug, Clone)]
pub struct LevelHandle {
    /// The filter layer's reload handle.
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over the file, on reload as at start.
    from_env: bool,
}

impl LevelHandle {
    /// Applies `level` (already validated); says why it did not when `RUST_LOG` rules.
    pub fn set(&self, level: &str) -> Result<(), String> {
        if self.from_env {
            return Err("RUST_LOG is set and wins over log.level".to_owned());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

pub fn init(config: &LogConfig) -> LevelHandle {
    // `RUST_LOG` wins over the file so that a developer can turn one module up without
    // editing the deployed configuration.
    let from_env = EnvFilter::try_from_default_env();
    let is_env = from_env.is_ok();
    let filter = from_env
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = match config.format {
        LogFormat::Text => (
            Some(
                fmt::layer()
                    .with_writer(crate::logwriter::stderr())
                    .with_ansi(ansi),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(crate::logwriter::stderr())
                    .with_ansi(ansi),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    LevelHandle {
        handle,
        from_env: is_env,
    }
}
