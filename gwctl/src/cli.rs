//! The command line: noun → verb, global flags with env fallbacks.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "gwctl",
    version,
    about = "Operate Game Gateway: routes, overrides, drains, sessions and the fleet",
    after_help = "Exit codes: 0 ok, 1 error, 2 a diff (diff) or an operation not complete (--wait, rollout status).\n\
                  Targets and credentials come from flags, then env, then the current context of the config file."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Config file with contexts [default: $XDG_CONFIG_HOME/gwctl/config.yaml or ~/.config/gwctl/config.yaml].
    #[arg(long, env = "GWCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Context to use instead of the file's `current_context`.
    #[arg(long, env = "GWCTL_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Control plane gRPC address (host:port or http://host:port).
    #[arg(long, env = "GWCTL_CONTROLPLANE", global = true)]
    pub controlplane: Option<String>,
    /// A gateway's admin gRPC address (host:port or http://host:port).
    #[arg(long, env = "GWCTL_GATEWAY", global = true)]
    pub gateway: Option<String>,
    /// File holding the bearer token. The token itself can be given in
    /// GWCTL_TOKEN; there is no flag for it, so it never shows in `ps`.
    #[arg(long, env = "GWCTL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the servers' certificates: connect with TLS.
    #[arg(long, env = "GWCTL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, env = "GWCTL_CERT_FILE", global = true, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM key of --cert-file.
    #[arg(long, env = "GWCTL_KEY_FILE", global = true, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// OpenTelemetry collector (OTLP/gRPC, e.g. http://127.0.0.1:4317): the
    /// command is traced — one span, its calls carry the trace context so
    /// the control plane's and gateways' spans join it — and the trace id
    /// is printed on stderr.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// Time limit of each call, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: std::time::Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Routing rules (services) in the control plane; `explain` asks a gateway.
    #[command(subcommand)]
    Routes(Routes),
    /// Realm → game server map in the control plane.
    #[command(subcommand)]
    Realms(Realms),
    /// Route overrides: cluster-wide (control plane) or `--local` to one gateway.
    #[command(subcommand)]
    Overrides(Overrides),
    /// Fleet-wide client IP allow/deny lists (every gateway checks them at accept).
    #[command(subcommand, name = "ip-lists")]
    IpLists(IpListsCmd),
    /// Session opens and closes across the fleet, as they happen.
    #[command(subcommand)]
    Presence(PresenceCmd),
    /// Rooms across the fleet: who is in them, publish to them, their history.
    #[command(subcommand)]
    Rooms(RoomsCmd),
    /// The fleet-wide limit of live sessions per user.
    #[command(subcommand, name = "session-policy")]
    SessionPolicy(SessionPolicyCmd),
    /// Bring routing from another system into the control plane.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Replace the whole routing bundle with a file (declarative).
    Apply(ApplyArgs),
    /// Show what `apply -f` would change; exit 2 when it would change something.
    Diff(FileArg),
    /// Print the current bundle in the format `apply -f` reads.
    Dump,
    /// Change records, newest first.
    History {
        /// How many records (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Write the bundle of an earlier revision as a new revision.
    Rollback {
        revision: u64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Which gateway applied which revision.
    #[command(subcommand)]
    Rollout(Rollout),
    /// The gateway fleet the control plane knows.
    #[command(subcommand)]
    Fleet(Fleet),
    /// Drain a gateway before a rollout (GOAWAY, then close at the deadline).
    #[command(subcommand)]
    Drain(Drain),
    /// Sessions on a gateway, and who owns a session cluster-wide.
    #[command(subcommand)]
    Sessions(Sessions),
    /// A gateway's backend endpoints.
    #[command(subcommand)]
    Backends(Backends),
    /// A gateway's identity and state.
    Info,
    /// Print shell completions.
    #[command(alias = "completions")]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Contexts of the gwctl config: where to connect and with what token.
    #[command(subcommand)]
    Context(ContextCmd),
    /// This gwctl's version and each server's (control plane, gateway).
    Version,
}

#[derive(Subcommand, Debug)]
pub enum ContextCmd {
    /// Every context; `*` marks the current one.
    List,
    /// Make NAME the current context.
    Use { name: String },
    /// Create or update NAME (only the given fields change).
    Set {
        name: String,
        /// Control plane gRPC address.
        #[arg(long)]
        controlplane: Option<String>,
        /// A gateway's admin gRPC address.
        #[arg(long)]
        gateway: Option<String>,
        /// File holding the bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Environment variable holding the bearer token.
        #[arg(long)]
        token_env: Option<String>,
        /// CA of the servers' certificates (TLS).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Client certificate and key (mutual TLS).
        #[arg(long)]
        cert_file: Option<PathBuf>,
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Also make it the current context.
        #[arg(long)]
        current: bool,
    },
}

#[derive(Args, Debug, Clone, Default)]
pub struct WriteArgs {
    /// Fail unless the current revision is this one (compare-and-set).
    #[arg(long)]
    pub expected_revision: Option<u64>,
    /// Validate and show the diff; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Recorded in the history.
    #[arg(long)]
    pub comment: Option<String>,
    /// Idempotency key (default: a fresh UUID, printed with the result).
    /// When a write's outcome is unknown (timeout, lost connection), run it
    /// again with the same --request-id: it is applied at most once.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum IpListsCmd {
    /// Both lists, one block per row.
    List,
    /// Add address blocks (`10.0.0.0/8`, `2001:db8::/32`, one address) to a list.
    Add {
        #[arg(value_enum)]
        list: IpListName,
        #[arg(required = true)]
        blocks: Vec<String>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Remove blocks from a list (as written when added).
    Remove {
        #[arg(value_enum)]
        list: IpListName,
        #[arg(required = true)]
        blocks: Vec<String>,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoomsCmd {
    /// Rooms with members, with their member count and sequence.
    List {
        /// Only rooms whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The members of a room (session, user, gateway).
    Members {
        room: String,
        /// At most this many (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Deliver a payload to every member on every gateway; prints its sequence.
    Publish {
        room: String,
        /// The payload (UTF-8 text).
        payload: String,
        /// The service_type clients see on the MESSAGE frame.
        #[arg(long, default_value_t = 0)]
        service: u32,
        /// Makes a retry safe: the same id within 24 h publishes once.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Messages kept after a sequence number.
    History {
        room: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put a session into a room (wherever it is connected).
    Join { session_id: u64, room: String },
    /// Take a session out of a room.
    Leave { session_id: u64, room: String },
}

#[derive(Subcommand, Debug)]
pub enum PresenceCmd {
    /// Print events as they come (one line each; `-o json`: JSON lines),
    /// each with the cursor to resume from.
    Watch {
        /// Resume after this cursor (from a previous line); `0` = the
        /// oldest kept; default: from now.
        #[arg(long, default_value = "")]
        cursor: String,
        /// Only these users (repeat).
        #[arg(long = "user")]
        users: Vec<u64>,
        /// Only these realms (repeat).
        #[arg(long = "realm")]
        realms: Vec<u32>,
        /// Only this gateway.
        #[arg(long, default_value = "")]
        gateway_id: String,
        /// Only joins and leaves of these rooms (repeat).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Stop after this many events (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionPolicyCmd {
    /// The policy in force (or none).
    Get,
    /// At most N live sessions per user; the excess is closed.
    Set {
        #[arg(long)]
        max_per_user: u32,
        /// Which sessions go: the oldest (3508 replaced; the newest login
        /// wins) or the newest (3509 session_limit).
        #[arg(long, value_enum)]
        on_excess: OnExcess,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// No limit.
    Clear {
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferRegionArg {
    None,
    Gateway,
    Client,
}

impl From<PreferRegionArg> for gg_proto::model::PreferRegion {
    fn from(p: PreferRegionArg) -> Self {
        match p {
            PreferRegionArg::None => gg_proto::model::PreferRegion::None,
            PreferRegionArg::Gateway => gg_proto::model::PreferRegion::Gateway,
            PreferRegionArg::Client => gg_proto::model::PreferRegion::Client,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExcess {
    KickOldest,
    RejectNew,
}

#[derive(Subcommand, Debug)]
pub enum ImportCmd {
    /// The Go game gateway's rules and realm map from its Redis
    /// (`game-gateway:routing:rules`, `game-gateway:realm:mapping`).
    /// Shows the change (exit 2 when there is one); `--yes` applies it.
    #[command(name = "go-gateway")]
    GoGateway {
        /// The Go gateway's Redis, e.g. redis://10.0.0.5:6379/0 (read only).
        #[arg(long)]
        redis: String,
        /// YAML or JSON map of service name → numeric id (`service_type`).
        /// Services not in it keep the id they have in the control plane,
        /// else get the next free id (the mapping is printed).
        #[arg(long)]
        ids: Option<PathBuf>,
        /// Apply the change (without it nothing is written).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpListName {
    /// When non-empty, only these blocks may connect.
    Allow,
    /// These blocks may not connect (deny wins over allow).
    Deny,
}

#[derive(Args, Debug)]
pub struct FileArg {
    /// Bundle file (YAML or JSON): services, realms, overrides.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub file: FileArg,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Subcommand, Debug)]
pub enum Routes {
    /// Every service.
    List,
    /// One service by name.
    Get { name: String },
    /// Create or replace a service.
    Set {
        name: String,
        /// The `service_type` clients put in frames (1-65535).
        #[arg(long)]
        id: gg_proto::model::ServiceId,
        /// round_robin, consistent_hash or realm.
        #[arg(long, value_parser = |s: &str| gg_proto::model::Strategy::parse(s))]
        strategy: gg_proto::model::Strategy,
        /// host:port or dns://name:port, optionally @region; repeat for several.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// Try endpoints in this region first: the gateway's, or the one
        /// the client asks for (HELLO `region`).
        #[arg(long, value_enum, default_value_t = PreferRegionArg::None)]
        prefer_region: PreferRegionArg,
        /// How the gateway speaks to the endpoints: the frame protocol, or
        /// HTTP or gRPC (the service is then reached through `http_routes`).
        #[arg(long, value_enum, default_value_t = ProtocolArg::Frame)]
        protocol: ProtocolArg,
        /// HTTP/gRPC services: connect to the endpoints with TLS.
        #[arg(long)]
        tls: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a service.
    Delete {
        name: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Ask a gateway where a request would go, and why.
    Explain {
        /// The service_type of the request.
        #[arg(long)]
        service: u32,
        /// The user it is for (consistent_hash hashes it; user overrides match it).
        #[arg(long, default_value_t = 0)]
        user: u64,
        /// The realm it is for (realm routing looks it up; realm overrides match it).
        #[arg(long, default_value_t = 0)]
        realm: u32,
        /// A session id, to see session-scoped local overrides.
        #[arg(long, default_value_t = 0)]
        session: u64,
        /// The region the client asks for (services with prefer_region client).
        #[arg(long, default_value = "")]
        client_region: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolArg {
    Frame,
    Http,
    Grpc,
}

impl From<ProtocolArg> for gg_proto::model::BackendProtocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Frame => gg_proto::model::BackendProtocol::Frame,
            ProtocolArg::Http => gg_proto::model::BackendProtocol::Http,
            ProtocolArg::Grpc => gg_proto::model::BackendProtocol::Grpc,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Realms {
    List,
    /// Map a realm to a game server.
    Set {
        realm: u32,
        endpoint: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    Delete {
        realm: u32,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum Overrides {
    List {
        /// A gateway's local overrides instead of the cluster's.
        #[arg(long)]
        local: bool,
    },
    /// Send matching traffic to `--target`.
    Set(OverrideSet),
    Delete {
        id: String,
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Args, Debug)]
pub struct OverrideSet {
    #[arg(long)]
    pub service: u32,
    /// Only this user (0 = any).
    #[arg(long, default_value_t = 0)]
    pub user: u64,
    /// Only this realm (0 = any).
    #[arg(long, default_value_t = 0)]
    pub realm: u32,
    /// Only this session (local overrides only; 0 = any).
    #[arg(long, default_value_t = 0)]
    pub session: u64,
    /// Endpoint host:port.
    #[arg(long)]
    pub target: String,
    /// Why (shown in lists and in explain).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Expire after this long (e.g. 30m); none by default.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Set it on one gateway (`--gateway`) instead of cluster-wide.
    #[arg(long)]
    pub local: bool,
    /// Local only: move sessions already bound elsewhere.
    #[arg(long)]
    pub move_existing: bool,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Subcommand, Debug)]
pub enum Rollout {
    /// Per gateway: applied, rejected or pending. Exit 2 while any is pending.
    Status {
        /// Revision (default: the current one).
        #[arg(long, default_value_t = 0)]
        revision: u64,
        /// Wait until no gateway is pending.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 2).
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        wait_timeout: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum Fleet {
    /// Every gateway with its sync status.
    List {
        /// Only the gateways of this region.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Drain {
    /// Start a drain: of GATEWAY_ID through the control plane, or of the
    /// `--gateway` admin address directly.
    Start {
        gateway_id: Option<String>,
        /// Drain every gateway of this region through the control plane,
        /// `--max-unavailable` at a time, each followed to its end. Safe to
        /// run again: drained gateways are skipped, running drains joined.
        #[arg(long, conflicts_with = "gateway_id")]
        region: Option<String>,
        /// Gateways of the region draining at once.
        #[arg(long, default_value_t = 1, requires = "region", value_parser = clap::value_parser!(u32).range(1..))]
        max_unavailable: u32,
        /// Close sessions still open after this long (default: the gateway's).
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Spread GOAWAYs over this long (default: the gateway's).
        #[arg(long, value_parser = parse_duration)]
        spread: Option<std::time::Duration>,
        #[arg(long, default_value = "gwctl")]
        reason: String,
        /// Makes a retried start join the same drain.
        #[arg(long)]
        request_id: Option<String>,
        /// Follow the drain until it finishes.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 2).
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        wait_timeout: std::time::Duration,
    },
    /// The drain of the `--gateway` gateway.
    Status,
    /// Cancel it: the gateway becomes ready again.
    Cancel,
}

#[derive(Subcommand, Debug)]
pub enum Sessions {
    Get {
        id: u64,
    },
    List {
        #[arg(long, default_value_t = 0)]
        user: u64,
        #[arg(long, default_value_t = 0)]
        realm: u32,
        #[arg(long, default_value_t = 0)]
        service: u32,
        /// tcp, ws or http.
        #[arg(long, default_value = "")]
        protocol: String,
        /// Most sessions to show (pages are followed).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Close sessions by id, or every session matching the filters.
    Kick {
        ids: Vec<u64>,
        #[arg(long, default_value_t = 0)]
        user: u64,
        #[arg(long, default_value_t = 0)]
        realm: u32,
        #[arg(long, default_value_t = 0)]
        service: u32,
        #[arg(long, default_value = "")]
        protocol: String,
        /// Close code sent to the client (default: the `kicked` code).
        #[arg(long, default_value_t = 0)]
        code: u32,
        #[arg(long, default_value = "")]
        reason: String,
        /// Count what would be kicked; kick nothing.
        #[arg(long)]
        dry_run: bool,
        /// Kicks per second (0 = all at once).
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
    /// Send a DATA frame to a session or to every session of a user.
    Push {
        #[arg(long, default_value_t = 0)]
        session: u64,
        #[arg(long, default_value_t = 0)]
        user: u64,
        #[arg(long)]
        service: u32,
        #[arg(long, default_value_t = 0)]
        seq: u32,
        /// Payload text, or @path to read it from a file.
        #[arg(long)]
        payload: String,
    },
    /// Which gateway owns a session (or, with --user, a user's sessions).
    Lookup {
        id: Option<u64>,
        #[arg(long)]
        user: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Backends {
    List,
    /// ready, drain (no new sessions) or maint (also moves bound sessions).
    SetState {
        endpoint: String,
        state: String,
    },
}

/// `90s`, `500ms`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 500ms, 30s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
