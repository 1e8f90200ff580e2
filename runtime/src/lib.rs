//! What both Game Gateway servers (the gateway and the control plane) run
//! alike: bearer tokens and scopes with the gRPC auth interceptor
//! ([`auth`]), TLS for gRPC servers and clients ([`grpc_tls`]), the gRPC
//! server builder with keepalive, limits, health and reflection of only the
//! services a process serves ([`grpc`]), the ops HTTP server with timeouts
//! and accept back-off ([`ops`]), reconnect backoff with jitter
//! ([`backoff`]), wall-clock helpers ([`clock`]), shutdown signals
//! ([`signal`]) and OpenTelemetry export with W3C trace context
//! ([`telemetry`]).
//!
//! It knows nothing of routing, sessions or Redis: those belong to the
//! process crates. The wire contract and domain model live in `gg-proto`.

#![warn(unreachable_pub)]

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod grpc;
pub mod grpc_tls;
pub mod listener;
pub mod ops;
pub mod signal;
pub mod telemetry;
