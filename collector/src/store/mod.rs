//! Persistence: everything that touches the database, behind two enums
//! chosen by the store URL. [`Store`] is the write side (owned by the
//! merger, blocking calls on the merger's thread) and [`read::Reader`] the
//! read side (used by the Query service).
//!
//! | URL | write side | read side |
//! | --- | --- | --- |
//! | `sqlite:PATH` | [`sqlite::SqliteStore`] | [`sqlite::SqliteReader`] |
//! | `postgres://...` | [`postgres::PgStore`] | [`postgres::PgReader`] |
//!
//! Both write sides keep one contract, so the merger does not know which one
//! it talks to: the store, not the merger, is the authority on committed
//! sequences. [`Store::commit`] takes a [`WriteSet`], locks the delivery
//! state of every (agent, epoch) it touches, skips (and reports) each batch
//! whose sequence the stored committed set holds (`plan.rs`;
//! [`CommittedSet`] in `committed.rs`: a mark plus ranges above it), writes
//! the rest with their sequences added to the set, and commits. With one collector the merger's
//! in-memory map is exact and nothing is skipped; with several collectors
//! on one PostgreSQL database it is only a cache, and the lock is what keeps
//! a batch from being stored twice.
//!
//! What lives where: this folder's files are the contract (types, errors,
//! the series mapping in `labels.rs`) and the two dispatch enums
//! (`write.rs`, `read.rs`); each backend is a folder ([`sqlite`],
//! [`postgres`]) that uses the contract and nothing of the other backend.
//! The contract names a backend only to dispatch to it. Nothing here
//! touches the merger's state, the network or the Query service.

mod committed;
mod contract;
mod error;
pub mod export;
pub(crate) mod labels;
mod plan;
pub mod postgres;
pub mod read;
pub mod sqlite;
mod url;
mod write;

#[cfg(test)]
mod tests;

pub use committed::{BadRanges, CommittedSet};
pub(crate) use contract::StoredEpoch;
pub use contract::{
    AgentWrite, BatchWrite, CommitReport, CompactStep, Durability, EpochRow, Loaded, RetainStep,
    Retention, WriteSet,
};
pub use error::StoreError;
pub(crate) use plan::Plan;
pub use url::StoreUrl;
pub(crate) use url::redact;
pub use write::Store;
