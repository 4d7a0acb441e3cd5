//! Errors of the write side ([`StoreError`]; the read side's are
//! [`super::read::ReadError`]).
//!
//! Every store error prints its cause once: the message names the store,
//! the step and the cause (the database's own words, with their own
//! causes: [`error_chain`]), and `source()` is `None`. The causes do not
//! agree on the rule (rusqlite and deadpool put their cause in their
//! message *and* return it as `source()`; tokio-postgres returns it only as
//! `source()`), and the merger logs these errors with `%e`, which shows the
//! message only; so the message is the one place a cause is written. The
//! cause is kept as a field, for code that asks what went wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::labels::BadLabels;

/// Errors of the write side, with the store for context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite {path}: {}", sqlite_cause(cause, path))]
    Sqlite {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("{store}: {labels}")]
    Labels { store: String, labels: BadLabels },
    #[error("{store}: {what}: {}", error_chain(cause))]
    Postgres {
        store: String,
        what: &'static str,
        cause: tokio_postgres::Error,
    },
    #[error("{store}: {what}: no answer within {after:?}")]
    Timeout {
        store: String,
        what: &'static str,
        after: Duration,
    },
    #[error("{store}: {what}: {message}")]
    Invalid {
        store: String,
        what: &'static str,
        message: String,
    },
    #[error("{store}: starting the database client runtime: {cause}")]
    Runtime {
        store: String,
        cause: std::io::Error,
    },
}

/// What SQLite said, without the file name when SQLite appended it (it
/// does for "unable to open database file"): the error names the file.
pub(crate) fn sqlite_cause(cause: &rusqlite::Error, path: &Path) -> String {
    let text = cause.to_string();
    let suffix = format!(": {}", path.display());
    match text.strip_suffix(&suffix) {
        Some(short) => short.to_owned(),
        None => text,
    }
}

pub(crate) use tributary_process::error_chain;
