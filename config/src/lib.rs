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
//! - [`Assembler`] and [`Renderer`]: one TOML text assembled from parts of
//!   several files (includes, defaults, templates, CSV inventory rows), each
//!   line remembering its file and line ([`Origin`]), so a
//!   [`Layer::assembled`] locates errors in the file a value was written in.
//!   On the way every string's `${VAR}` is expanded ([`expand`]) and every
//!   `<key>_file` twin of a secret key is read ([`read_secret_file`]); a
//!   redacted twin of the text shows each secret as [`REDACTED`].
//! - [`parse_csv`] (inventories) and [`expand_glob`] (includes).
//! - [`Secret`]: a string that prints as `<redacted>`.
//!
//! May touch: `toml`, `serde`, `serde_spanned` and `humantime`, the
//! environment (`${VAR}`), and the file system only to read config, secret
//! and inventory files and list an include's directory. It imports no
//! Tributary crate, so both binaries (and the xtask and the bench, for
//! [`parse_duration_arg`]) can depend on it.

#![forbid(unsafe_code)]

mod assemble;
mod csv;
mod de;
mod duration;
mod error;
mod glob;
mod secret;
mod size;
mod source;
mod vars;

pub use assemble::{Assembled, Assembler, Entry, Line, Renderer, toml_key, toml_string};
pub use csv::{CsvRecord, parse_csv};
pub use de::{DeContext, deserialize_table};
pub use duration::{DurationError, MAX_DURATION, parse_duration, parse_duration_arg};
pub use error::ConfigError;
pub use glob::{expand_glob, glob_matches};
pub use secret::{REDACTED, Secret, read_secret_file};
pub use size::{SizeError, parse_size};
pub use source::{
    Layer, LineIndex, MAX_CONFIG_BYTES, MAX_CSV_BYTES, MAX_SECRET_BYTES, Origin, Source, read_file,
    read_limited,
};
pub use vars::{VarError, env_lookup, expand};
