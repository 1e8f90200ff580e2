//! Wire contracts of Game Gateway, shared by the gateway, backends, tests and
//! benchmarks: the frame protocol v1 codec ([`frame`]), the JSON payloads of
//! control frames ([`control`]), the close/error code tables ([`codes`]), the
//! gRPC contracts ([`pb`]) and the one domain model of routing rules, realms
//! and overrides ([`model`]) that the gateway, the control plane and gwctl
//! share.
//!
//! Everything here is pure and I/O-free so it can be property-tested and
//! fuzzed; it owns no sockets, tasks or configuration.

#![warn(unreachable_pub)]

pub mod codes;
pub mod control;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod ip;
pub mod model;
pub mod room;

pub use codes::{CloseCode, ErrorCode};
pub use frame::{Frame, FrameError, Header, Kind};

/// gRPC contracts generated from `proto/proto/**.proto`. Modules mirror the
/// protobuf packages (so cross-package references resolve); the short names
/// `pb::admin`, `pb::controlplane` and `pb::common` re-export the current
/// version of each.
pub mod pb {
    /// `common.v1`: enums both planes share (strategy, drain phase, gateway state).
    pub mod common {
        #[allow(clippy::all, missing_docs, unreachable_pub)]
        pub mod v1 {
            tonic::include_proto!("common.v1");
        }
        pub use v1::*;
    }

    /// `gateway.admin.v1`: the gateway admin API.
    pub mod gateway {
        pub mod admin {
            #[allow(clippy::all, missing_docs, unreachable_pub)]
            pub mod v1 {
                tonic::include_proto!("gateway.admin.v1");
            }
        }
    }
    pub use gateway::admin::v1 as admin;

    /// `controlplane.v1`: control plane, session directory and gateway sync.
    pub mod controlplane {
        #[allow(clippy::all, missing_docs, unreachable_pub)]
        pub mod v1 {
            tonic::include_proto!("controlplane.v1");
        }
        pub use v1::*;
    }

    /// Encoded `FileDescriptorSet` of every service, for server reflection
    /// (each server advertises only its own services by name).
    pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

    /// Fully-qualified service names, for reflection and health.
    pub const GATEWAY_ADMIN_SERVICE: &str = "gateway.admin.v1.GatewayAdmin";
    pub const CONTROL_PLANE_SERVICES: &[&str] = &[
        "controlplane.v1.ControlPlane",
        "controlplane.v1.SessionDirectory",
        "controlplane.v1.GatewaySync",
        "controlplane.v1.Rooms",
    ];
}
