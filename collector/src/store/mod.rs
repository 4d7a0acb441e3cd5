//! Persistence. `sqlite` is the embedded default and the only writer is the
//! merger, which owns the write connection; readers open their own.

pub mod read;
pub mod sqlite;
