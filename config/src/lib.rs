//! Reads Tributary's TOML config files, for the agent and the collector alike.
//!
//! This crate owns the machinery both binaries share, and nothing about what
//! their configs mean:
//!
//! - [`Layer`]: one config file (its name, its directory, its text and a line
//!   index built once); [`Source`] is the part of a layer being parsed.
//! - [`ConfigError`]: every problem as `file:line: key: problem`, or a
//!   problem with a command-line flag.
//! - [`deserialize_table`]: a spanned TOML table into a `Raw*` struct, with
//!   each error located at its key path (`devices[2].metrics[0].register`).
//!   Unknown keys, missing keys and unknown values come out of serde as typed
//!   calls (`unknown_field(name, FIELDS)`), never by reading serde's message
//!   text, so the "expected one of" hints list the struct's own fields.
//! - [`parse_duration`] and [`parse_size`]: one syntax for durations and sizes,
//!   with an upper bound on every duration ([`MAX_DURATION`]).
//!
//! Layers leave room for what a later change builds here: includes, defaults,
//! templates, `${VAR}` and `*_file` secrets, each a [`Layer`] whose errors name
//! the file they came from.
//!
//! May touch: `toml`, `serde`, `serde_spanned` and `humantime`, and the file
//! system only to read a config file ([`read_file`]). It imports no
//! Tributary crate, so both binaries (and the xtask and the bench, for
//! [`parse_duration_arg`]) can depend on it.

#![forbid(unsafe_code)]

mod de;
mod duration;
mod error;
mod size;
mod source;

pub use de::{DeContext, deserialize_table};
pub use duration::{DurationError, MAX_DURATION, parse_duration, parse_duration_arg};
pub use error::ConfigError;
pub use size::{SizeError, parse_size};
pub use source::{Layer, LineIndex, Source, read_file};
