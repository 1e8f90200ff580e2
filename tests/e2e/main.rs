//! Process-level end-to-end tests: the real `gateway` and `sample-backend`
//! binaries on free loopback ports, driven by real TCP, WebSocket and HTTP
//! clients. Each test starts (and on drop kills) its own processes.

mod support;

mod admin;
mod client_auth;
mod discovery;
mod dns;
mod examples;
mod faults;
mod grpc_backends;
mod hostile;
mod http;
mod http_backends;
mod http_sessions;
mod lifecycle;
mod limits;
mod otlp;
mod routing;
mod tcp;
mod telemetry;
mod tls;
mod ws;
mod ws_deflate;
