//! [`ConfigError`]: why a configuration could not be used, located in its
//! file (`agent.toml:7: devices[2].interval: ...`) or at a flag.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {error}", path.display())]
    Read {
        path: PathBuf,
        /// Named in the message, so not returned as `source()` too.
        error: std::io::Error,
    },
    /// The file is not valid TOML, or not a valid configuration.
    #[error("{file}:{line}: {}{message}", key_prefix(key))]
    Invalid {
        /// The file as it was named.
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Key path such as `devices[2].interval`; empty for the top level.
        key: String,
        message: String,
    },
    /// A problem with a command-line flag or a default.
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

impl ConfigError {
    /// A problem with the flag `flag` (such as `--listen`).
    pub fn flag(flag: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Flag {
            flag: flag.into(),
            message: message.into(),
        }
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}
