//! Wire contracts of Game Gateway, shared by the gateway, backends, tests and
//! benchmarks: the frame protocol v1 codec ([`frame`]), the JSON payloads of
//! control frames ([`control`]) and the close/error code tables ([`codes`]).
//!
//! Everything here is pure and I/O-free so it can be property-tested and
//! fuzzed; it owns no sockets, tasks or configuration.

pub mod codes;
pub mod control;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;

pub use codes::{CloseCode, ErrorCode};
pub use frame::{Frame, FrameError, Header, Kind};

/// gRPC contracts generated from `proto/proto/**.proto`.
pub mod pb {
    /// `gateway.admin.v1`: the gateway admin API.
    pub mod admin {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("gateway.admin.v1");
    }

    /// `controlplane.v1`: control plane, session directory and gateway sync.
    pub mod controlplane {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("controlplane.v1");
    }

    /// Encoded `FileDescriptorSet` of every service, for server reflection.
    pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
