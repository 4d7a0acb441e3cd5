//! The `tributary.v1` wire protocol: generated messages, clients and servers.
//!
//! Only the gRPC edges of the agent and the collector use these types; the
//! rest of the code converts to its own types there, so a wire change touches
//! one place.

#![allow(clippy::all)]

/// Generated code for package `tributary.v1`.
pub mod v1 {
    tonic::include_proto!("tributary.v1");

    /// Encoded `FileDescriptorSet` of `tributary.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tributary_descriptor.bin"));
}
