//! Game Gateway backend integration kit.
//!
//! A backend speaks the frame protocol v1 (`docs/protocol.md`) with every
//! gateway that routes to it: gateways dial the backend, say HELLO, then
//! multiplex many player sessions over each connection with OPEN, DATA and
//! CLOSE, and PING it. This crate does the protocol part so a game service
//! writes only its [`Handler`]:
//!
//! ```no_run
//! use gg_backend::{Handler, Request, Server, Session};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn on_data(&self, _session: &Session, req: Request) {
//!         let payload = req.payload().clone();
//!         let _ = req.reply(payload);
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7101").await?;
//! Server::new(Echo).serve(listener).await
//! # }
//! ```
//!
//! What the kit takes care of:
//! - HELLO first on every connection (anything else closes it);
//! - sessions across connections and gateways: a session is owned by the
//!   connection whose OPEN came last. When a player moves (GOAWAY and
//!   resume), the new gateway's OPEN `resumed: true` and the old one's
//!   CLOSE `moved` may arrive in either order; the session's state and
//!   [`Session`] handle survive, and [`Handler::on_close`] runs once, when
//!   the session really ends (or a moved session is not resumed within
//!   [`Server::detached_ttl`]);
//! - PING → PONG, and closing a connection nothing arrives on for
//!   [`Server::idle_timeout`] (gateways PING every 5 s by default);
//! - one writer per connection that batches frames; [`Session::push`] and
//!   [`Session::close`] reach the session wherever it is connected now;
//! - malformed frames: a frame that cannot be parsed but keeps the stream
//!   in sync is skipped, anything else closes that connection only.
//!
//! Handlers run in the connection's read loop, in the order frames arrive:
//! a handler that waits holds up that connection (which is how a backend
//! applies back-pressure). Long work belongs in a task: a [`Request`] can
//! be moved into one and answered later.
//!
//! [`Directory`] asks the control plane's `SessionDirectory` which gateway
//! owns a session, and pushes to a session owned by any gateway through
//! that gateway's admin API.

mod directory;
mod server;
mod session;

pub use directory::{Directory, DirectoryError, Ownership, PresenceBatch, PushResult};
pub use gg_proto::control::{Close, Open};
pub use gg_proto::{CloseCode, ErrorCode, Header, Kind};
pub use server::{Handler, Server, Sessions};
pub use session::{Request, SendError, Session};
