//! Wire contracts of Game Gateway, shared by the gateway, backends, tests and
//! benchmarks: the frame protocol v1 codec ([`frame`]), the JSON payloads of
//! control frames ([`control`]) and the close/error code tables ([`codes`]).
//!
//! Everything here is pure and I/O-free so it can be property-tested and
//! fuzzed; it owns no sockets, tasks or configuration.

pub mod codes;
pub mod control;
pub mod frame;

pub use codes::{CloseCode, ErrorCode};
pub use frame::{Frame, FrameError, Header, Kind};
