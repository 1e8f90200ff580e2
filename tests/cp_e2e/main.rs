//! Control plane end to end: real `redis-server` processes on free ports,
//! real `controlplane` and `gateway` processes, real gRPC clients.

#[path = "../e2e/support.rs"]
mod support;

mod cp;
mod deploy;
mod directory;
#[path = "../e2e/dns.rs"]
mod dns;
#[path = "../e2e/otlp.rs"]
mod otlp;
mod redis_proc;
mod rooms;
mod run_local;
