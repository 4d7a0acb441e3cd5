//! The `tributary.v1` wire protocol: generated messages, clients and servers.
//!
//! Only the gRPC edges of the agent and the collector use these types; the
//! rest of the code converts to its own types there, so a wire change touches
//! one place.

#![allow(clippy::all)]

/// The limits a collector applies by default to what an agent sends. An
/// agent cuts its strings and label sets to these before it spools a batch,
/// because a batch the collector refuses would be resent forever; the
/// collector's `[limits]` may raise or lower them per deployment.
pub mod limits {
    /// Longest name (device, metric, label name or value, unit), in bytes.
    pub const MAX_NAME_BYTES: usize = 256;
    /// Longest string value or failure message, in bytes.
    pub const MAX_VALUE_BYTES: usize = 4096;
    /// Most labels on one series (an agent keeps the first ones in name order).
    pub const MAX_LABELS: usize = 32;
    /// Most readings (rows plus columns) in one batch.
    pub const MAX_READINGS_PER_BATCH: usize = 100_000;
    /// Most committed ranges a Welcome or an Ack lists above the committed
    /// sequence (the lowest ones). An agent that sends out of order keeps
    /// its own gaps far below this (it falls back to sequence order first),
    /// so every range it needs to hear about is listed.
    pub const MAX_ACK_RANGES: usize = 1024;
    /// Most ranges a collector keeps above the committed sequence of one
    /// (agent, epoch): a batch that would open one more is refused
    /// (RESOURCE_EXHAUSTED). A well-behaved agent keeps far fewer (its own
    /// gap bound is `MAX_ACK_RANGES / 2`, and `Batch.oldest_spooled` closes
    /// its spool's holes); the bound keeps the collector's work per commit
    /// (the set is copied and stored whole) bounded.
    pub const MAX_COMMITTED_RANGES: usize = 4 * MAX_ACK_RANGES;
}

/// Generated code for package `tributary.v1`.
pub mod v1 {
    tonic::include_proto!("tributary.v1");

    /// Encoded `FileDescriptorSet` of `tributary.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tributary_descriptor.bin"));
}
