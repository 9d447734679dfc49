//! An in-process fake of the Lark platform (long connection and OpenAPI), for integration tests,
//! benchmarks and `lark-auth demo`.
//!
//! [`Sandbox::start`] binds an actix-web `HttpServer` to `127.0.0.1:0` (one worker,
//! `TCP_NODELAY` on every accepted socket) inside the caller's running actix `System` and
//! returns a handle. The App serves:
//!
//! - `POST /callback/ws/endpoint`: endpoint discovery (protocol doc §2), with injectable
//!   [`DiscoveryFault`]s and single-use tickets;
//! - `GET /ws/v2`: the WebSocket server (§3–§6), with injectable [`HandshakeFault`]s, the
//!   connection limit (§9), ping → pong (§5), and data frames pushed by the test (§6);
//! - the OpenAPI endpoints of `lark-openapi-auth.md` (tenant token, device and code flows,
//!   refresh, `user_info`, cards) with simulated users, a movable clock and injectable
//!   [`OpenApiFault`]s (module `openapi`, see [`OpenApiSandboxConfig`]).
//!
//! The route modules (`ws.rs`, `openapi/`) share one `Shared` state behind
//! an `Arc<Mutex>`: the server's worker runs on its own thread while the test drives the
//! [`Sandbox`] handle from the System's thread. Every state change notifies a
//! [`tokio::sync::Notify`], so the `wait_for_*` methods wake up on events instead of
//! polling.
//!
//! Values the real platform's behaviour leaves **unknown** (§11) are sandbox choices and
//! configurable where a test may care: the discovery error code for bad credentials
//! (10003), the refusal of a used ticket (514 / 1000040351), the HTTP status of refusals
//! (400), `SeqID`/`LogID` values (large, above 2^53, so that exact echo is tested).
//!
//! Nothing here logs a ticket, an `access_key` or the app secret.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use lark_auth::sandbox::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::start(SandboxConfig::default()).await?;
//! // Point the client's open_base_url at sandbox.base_url() and start it, then:
//! sandbox.wait_for_connections(1, Duration::from_secs(5)).await.expect("connected");
//! let message_id = sandbox.push_event(br#"{"schema":"2.0"}"#).expect("a connection");
//! let acks = sandbox.wait_for_acks(1, Duration::from_secs(5)).await.expect("acked");
//! assert_eq!(acks[0].message_id, message_id);
//! assert!(acks[0].fidelity_errors.is_empty());
//! # Ok(()) }
//! ```

mod frames;
mod openapi;
mod ws;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::protocol::Frame;
use crate::protocol::endpoint::{AUTHERR_CONNECTION_LIMIT, ClientConfig};
use crate::protocol::frame::{HEADER_MESSAGE_ID, METHOD_DATA};
use crate::secret::Secret;

pub use frames::{AckPayloadView, check_echo, split_payload};
pub use openapi::{
    CardPatch, DEFAULT_REDIRECT_URI, DelayedCardUpdate, OpenApiFault, OpenApiRoute,
    OpenApiSandboxConfig, RecordedApiRequest, RecordedTokenRequest, SandboxUser, SentCard,
    UserActionError, apis,
};

/// Settings of a [`Sandbox`]. Every field has a default (see [`SandboxConfig::default`]).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// App id accepted by discovery (`AppID`, §2.1). Default `"cli_sandbox_app"`.
    pub app_id: String,
    /// App secret accepted by discovery (`AppSecret`, §2.1). Default `"sandbox-secret"`.
    pub app_secret: Secret<String>,
    /// `service_id` put into the discovery URL (decimal int32, §2.2) and into the `service`
    /// field of every frame the sandbox sends. Default 33554678 (the value seen in public
    /// logs, §2.2).
    pub service_id: i32,
    /// `ClientConfig` sent in discovery `data.ClientConfig` (§2.2) and, when
    /// [`pong_with_config`](Self::pong_with_config) is set, as every pong's payload (§5).
    /// Units: seconds. Default `PingInterval` 120, `ReconnectCount` −1,
    /// `ReconnectInterval` 120, `ReconnectNonce` 30 (the observed values, §2.2).
    pub client_config: ClientConfig,
    /// Connections allowed at the same time; a handshake beyond it is refused with
    /// `handshake-status: 514`, `handshake-autherrcode: 1000040350` (§3, §9). Default 50.
    pub max_connections: usize,
    /// When true pongs carry `client_config` as JSON; when false they have no payload (§5).
    /// Default true.
    pub pong_with_config: bool,
    /// Discovery `code` answered (with HTTP 200) for a wrong app id or secret. The real
    /// value is **unknown** (§2.3); default 10003, which a client must treat as fatal.
    pub bad_credentials_code: i64,
    /// Discovery `msg` answered with [`bad_credentials_code`](Self::bad_credentials_code).
    /// Default `"invalid app_id or app_secret"`.
    pub bad_credentials_msg: String,
    /// How a handshake with a missing, unknown or already used ticket is refused. Whether
    /// the real ticket is single-use is **unknown** (§2.2, §11); the sandbox makes it so.
    /// Default: HTTP 400, `handshake-status: 514`, `handshake-msg: invalid ticket`,
    /// `handshake-autherrcode: 1000040351` (a made-up "anything else" sub-code: retryable,
    /// §3).
    pub ticket_refusal: HandshakeFault,
    /// Largest WebSocket frame accepted from a client, in bytes (§8 item 13 notes the
    /// Python SDK's 1 MiB cap). Default 4 MiB.
    pub max_frame_size: usize,
    /// The OpenAPI side: token lifetimes, users, redirect URLs (see
    /// [`OpenApiSandboxConfig`]).
    pub openapi: OpenApiSandboxConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            app_id: "cli_sandbox_app".to_string(),
            app_secret: Secret::new("sandbox-secret".to_string()),
            service_id: 33_554_678,
            client_config: ClientConfig {
                reconnect_count: Some(-1),
                reconnect_interval: Some(120),
                reconnect_nonce: Some(30),
                ping_interval: Some(120),
            },
            max_connections: 50,
            pong_with_config: true,
            bad_credentials_code: 10003,
            bad_credentials_msg: "invalid app_id or app_secret".to_string(),
            ticket_refusal: HandshakeFault {
                http_status: 400,
                handshake_status: Some("514".to_string()),
                handshake_msg: "invalid ticket".to_string(),
                autherrcode: Some("1000040351".to_string()),
            },
            max_frame_size: 4 << 20,
            openapi: OpenApiSandboxConfig::default(),
        }
    }
}

/// A failure injected into the next discovery request (§2.3). Faults queue up and are
/// consumed in FIFO order, one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryFault {
    /// Answer HTTP 200 with `{"code": code, "msg": msg}` and no `data`.
    Code {
        /// The discovery `code` (1 = system busy, 1000040343 = internal error: retryable;
        /// others fatal, §2.3).
        code: i64,
        /// The `msg` text.
        msg: String,
    },
    /// Answer this HTTP status with body `{"code": <status>, "msg": "system busy"}`.
    HttpStatus(u16),
    /// Answer `{"code": 0, "msg": "ok"}` without `data` (retryable, §2.3).
    NoData,
    /// Wait this long, then answer normally (to test the client's discovery timeout).
    Delay(Duration),
}

/// A refusal injected into the next WebSocket handshake (§3). Faults queue up and are
/// consumed in FIFO order, one per handshake attempt. Header values are sent verbatim so
/// malformed ones can be tested; `None` omits the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFault {
    /// HTTP status of the non-101 answer (the real one is **unknown**, §3).
    pub http_status: u16,
    /// `handshake-status` header value, e.g. `"514"` or `"403"`.
    pub handshake_status: Option<String>,
    /// `handshake-msg` header value (ASCII; non-ASCII is replaced by `?`).
    pub handshake_msg: String,
    /// `handshake-autherrcode` header value, e.g. `"1000040350"` (connection limit).
    pub autherrcode: Option<String>,
}

impl HandshakeFault {
    /// `514` with `autherrcode` 1000040350: the connection limit (fatal, §3, §9).
    pub fn connection_limit() -> Self {
        HandshakeFault {
            http_status: 400,
            handshake_status: Some("514".to_string()),
            handshake_msg: "the number of connections exceeded the limit".to_string(),
            autherrcode: Some(AUTHERR_CONNECTION_LIMIT.to_string()),
        }
    }

    /// `403`: the app is forbidden (fatal, §3).
    pub fn forbidden() -> Self {
        HandshakeFault {
            http_status: 400,
            handshake_status: Some("403".to_string()),
            handshake_msg: "forbidden".to_string(),
            autherrcode: None,
        }
    }

    /// Any other status, e.g. 500 (retryable, §3).
    pub fn server_error(status: u16) -> Self {
        HandshakeFault {
            http_status: 400,
            handshake_status: Some(status.to_string()),
            handshake_msg: "system busy".to_string(),
            autherrcode: None,
        }
    }
}

/// Identifies one accepted WebSocket connection of a sandbox (1, 2, … in accept order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// A live connection as listed by [`Sandbox::connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The sandbox's id of the connection.
    pub id: ConnectionId,
    /// The 19-digit `device_id` of the URL it connected with (§2.2).
    pub device_id: String,
    /// When the handshake was accepted.
    pub connected_at: Instant,
}

/// One discovery request as the sandbox saw it (§2.1).
#[derive(Debug, Clone)]
pub struct RecordedDiscovery {
    /// `AppID` from the body, if the body was a JSON object with it.
    pub app_id: Option<String>,
    /// Value of the `locale` header (every SDK sends `zh`, §2.1); `None` when absent.
    pub locale: Option<String>,
    /// Value of `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Value of `User-Agent`, if any.
    pub user_agent: Option<String>,
    /// True when the body held a `ClientAssertion` key (keyless mode, §2.1).
    pub has_client_assertion: bool,
    /// The fault consumed by this request, if any.
    pub fault: Option<DiscoveryFault>,
    /// True when a URL (and ticket) was issued.
    pub issued_url: bool,
    /// When the request arrived.
    pub at: Instant,
}

/// One client ping (`method 0`, `type=ping`, §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPing {
    /// The connection it came on.
    pub connection: ConnectionId,
    /// Its `service` field (should be the URL's `service_id`, §5).
    pub service: i32,
    /// Its `SeqID` and `LogID` (0 in every SDK, §5).
    pub ids: (u64, u64),
    /// When it arrived.
    pub at: Instant,
}

/// One response frame (client → server data frame, §6.3) and what the sandbox checked.
#[derive(Debug, Clone)]
pub struct RecordedAck {
    /// The connection it came on.
    pub connection: ConnectionId,
    /// Its `message_id` header (`""` when absent).
    pub message_id: String,
    /// The whole decoded frame.
    pub frame: Frame,
    /// The parsed payload (`code`, decoded `data`), or why it did not parse.
    pub payload: Result<AckPayloadView, String>,
    /// The `biz_rt` header value (handler time in ms, decimal, §4.3), if present.
    pub biz_rt: Option<String>,
    /// Time from the (last) push of this message to the arrival of the ack; `None` when the
    /// message was not pushed by this sandbox.
    pub latency: Option<Duration>,
    /// Differences from an exact echo of the pushed frame (§6.3: `SeqID`, `LogID`,
    /// `LogIDNew`, `service`, `method`, payload encoding/type, headers in order with
    /// `biz_rt` appended last). Empty means faithful.
    pub fidelity_errors: Vec<String>,
    /// When it arrived.
    pub at: Instant,
}

impl RecordedAck {
    /// The `code` of the payload, if it parsed.
    pub fn code(&self) -> Option<i64> {
        self.payload.as_ref().ok().and_then(|p| p.code)
    }

    /// The base64-decoded `data` of the payload, if present and valid.
    pub fn data(&self) -> Option<&[u8]> {
        self.payload.as_ref().ok().and_then(|p| p.data.as_deref())
    }
}

/// A frame from a client that is neither a ping nor a data frame, or did not decode.
#[derive(Debug, Clone)]
pub struct UnexpectedFrame {
    /// The connection it came on.
    pub connection: ConnectionId,
    /// What was wrong.
    pub reason: String,
    /// The raw WebSocket message (text messages as UTF-8 bytes).
    pub bytes: Bytes,
}

/// Parameters of [`Sandbox::flood`].
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// Events to push.
    pub count: usize,
    /// Most events unacknowledged at any time (at least 1).
    pub window: usize,
    /// Event payload; every occurrence of `{n}` is replaced by the 0-based event number so
    /// that `event_id`s can differ (clients deduplicate by it, §8).
    pub payload_template: Vec<u8>,
    /// When set, each event is split into this many parts (§6.1), sent in order unless
    /// [`chunk_order`](Self::chunk_order) says otherwise.
    pub chunked_parts: Option<usize>,
    /// The order in which the parts of each chunked event are sent, as part indexes
    /// (e.g. `[2, 0, 1]`: last part first). Empty (the default) means `0, 1, …`. When set
    /// it must be a permutation of `0..chunked_parts` (every part exactly once, so every
    /// event can complete); otherwise [`Sandbox::flood`] fails with
    /// [`FloodError::BadChunkOrder`]. The ack latency is measured from the write of the
    /// event's last frame, whichever part that is.
    pub chunk_order: Vec<usize>,
    /// Give up after this long and report what was acked so far.
    pub timeout: Duration,
    /// When set, events are sent at this steady rate (events per second, event `n` at
    /// `n / rate` seconds after the start) instead of as fast as the window allows, to
    /// measure latency at a given load.
    pub rate_per_sec: Option<u32>,
}

impl Default for FloodSpec {
    /// 10 000 small `im.message.receive_v1` events, window 256, unchunked, 60 s timeout.
    fn default() -> Self {
        FloodSpec {
            count: 10_000,
            window: 256,
            payload_template: br#"{"schema":"2.0","header":{"event_id":"flood_ev_{n}","event_type":"im.message.receive_v1","create_time":"1767225600000","token":"t","app_id":"cli_sandbox_app","tenant_key":"tk"},"event":{"message":{"message_id":"om_flood_{n}","chat_id":"oc_flood","chat_type":"p2p","message_type":"text","content":"{\"text\":\"hi\"}"},"sender":{"sender_id":{"open_id":"ou_flood"},"sender_type":"user"}}}"#.to_vec(),
            chunked_parts: None,
            chunk_order: Vec::new(),
            timeout: Duration::from_secs(60),
            rate_per_sec: None,
        }
    }
}

/// Result of [`Sandbox::flood`], measured on the server side.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodReport {
    /// Events written to the connection.
    pub sent: usize,
    /// Distinct events acknowledged (any code).
    pub acked: usize,
    /// Acks whose payload `code` was not 200.
    pub non_200: usize,
    /// Time from the first write to the last ack (or to the timeout).
    pub elapsed: Duration,
    /// Median time from writing an event's last part to its ack.
    pub p50_latency: Duration,
    /// 99th-percentile ack latency.
    pub p99_latency: Duration,
    /// Largest ack latency.
    pub max_latency: Duration,
    /// True when [`FloodSpec::timeout`] ran out before every event was acked.
    pub timed_out: bool,
}

impl FloodReport {
    /// Acknowledged events per second over [`elapsed`](Self::elapsed).
    pub fn acks_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.acked as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a push could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No client is connected (or the chosen target is gone). Connect first, e.g. with
    /// [`Sandbox::wait_for_connections`].
    #[error("no connected client to push to")]
    NoConnection,
    /// [`Sandbox::push_duplicate`] named a message this sandbox never pushed.
    #[error("message {0} was never pushed")]
    UnknownMessage(String),
    /// `push_chunked` got `parts == 0` or an `order` index not below the part count.
    #[error("bad chunking: {0}")]
    BadChunking(&'static str),
}

/// A `wait_for_*` call ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct WaitTimeout {
    /// What was awaited and how far it got.
    pub what: String,
    /// The timeout that ran out.
    pub waited: Duration,
}

/// Why [`Sandbox::flood`] did not produce a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloodError {
    /// No client is connected.
    #[error("no connected client to flood")]
    NoConnection,
    /// The connection ended before the flood finished.
    #[error("the connection ended during the flood")]
    ConnectionLost,
    /// [`FloodSpec::chunk_order`] is not a permutation of `0..chunked_parts`.
    #[error("chunk_order {0:?} is not a permutation of the part indexes")]
    BadChunkOrder(Vec<usize>),
}

/// A command from the handle to one connection's task.
pub(crate) enum Command {
    /// Write these WebSocket binary messages, in order.
    Send(Vec<Bytes>),
    /// Send a Close frame (1000) and end the connection.
    Close,
    /// Shut the TCP connection down without a Close frame.
    Drop,
    /// Run a flood and answer on the channel.
    Flood(FloodSpec, oneshot::Sender<FloodReport>),
}

/// Registry entry of a live connection.
pub(crate) struct ConnEntry {
    pub(crate) device_id: String,
    pub(crate) connected_at: Instant,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// A duplicate of the accepted socket, to shut TCP down without a Close frame.
    pub(crate) socket: Option<Arc<socket2::Socket>>,
}

/// What discovery issued for one ticket.
pub(crate) struct TicketGrant {
    pub(crate) access_key: String,
    pub(crate) device_id: String,
    pub(crate) used: bool,
}

/// A data message pushed by the sandbox: its frames in `seq` order and the last push time.
pub(crate) struct PushedMessage {
    pub(crate) frames: Vec<Frame>,
    pub(crate) pushed_at: Instant,
}

/// The mutable state shared by the handle and the server's worker thread.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) discovery_faults: VecDeque<DiscoveryFault>,
    pub(crate) handshake_faults: VecDeque<HandshakeFault>,
    pub(crate) tickets: HashMap<String, TicketGrant>,
    pub(crate) discoveries: Vec<RecordedDiscovery>,
    pub(crate) handshakes_refused: usize,
    pub(crate) connections: BTreeMap<ConnectionId, ConnEntry>,
    pub(crate) accepted: u64,
    pub(crate) push_target: Option<ConnectionId>,
    /// Cluster mode: each message to one random live connection.
    pub(crate) random_push: Option<rand::rngs::StdRng>,
    pub(crate) messages: HashMap<String, PushedMessage>,
    pub(crate) acks: Vec<RecordedAck>,
    pub(crate) pings: Vec<RecordedPing>,
    pub(crate) protocol_pings: usize,
    pub(crate) unexpected: Vec<UnexpectedFrame>,
    pub(crate) flood_acks: usize,
    pub(crate) openapi: openapi::OpenApiState,
}

/// State shared by the [`Sandbox`] handle and every route module.
pub(crate) struct Shared {
    pub(crate) config: SandboxConfig,
    pub(crate) port: u16,
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Notify,
    pub(crate) silent: AtomicBool,
    next_seq_id: AtomicU64,
    next_log_id: AtomicU64,
    next_message: AtomicU64,
}

impl Shared {
    /// Locks the state. A panic while locked (only possible in a test assertion) does not
    /// make the state unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter; call after each change of [`State`].
    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Next `(SeqID, LogID)` pair for a frame the sandbox sends. Both start above 2^53 so a
    /// client that round-trips them through a double (Node, §8 item 7) is caught.
    pub(crate) fn next_ids(&self) -> (u64, u64) {
        (
            self.next_seq_id.fetch_add(1, Ordering::Relaxed),
            self.next_log_id.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Next message number (for `message_id`, `trace_id`, `LogIDNew`).
    pub(crate) fn next_message_number(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    /// True while [`Sandbox::go_silent`] is in force.
    pub(crate) fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Relaxed)
    }
}

/// A running sandbox. Dropping it stops the server (without waiting).
pub struct Sandbox {
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
    stopped: bool,
}

impl Sandbox {
    /// Starts the sandbox server on `127.0.0.1:0` with one worker and `TCP_NODELAY` on
    /// accepted sockets. Must be called inside a running actix `System` (e.g. in
    /// `#[actix_rt::test]`).
    ///
    /// # Errors
    /// The I/O error of binding or configuring the listener.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            config,
            port,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            silent: AtomicBool::new(false),
            // 2^53 + 1: the first integer a double cannot hold (§4.1 rule 4).
            next_seq_id: AtomicU64::new((1 << 53) + 1),
            next_log_id: AtomicU64::new(7_390_000_000_000_000_001),
            next_message: AtomicU64::new(1),
        });
        let app_shared = shared.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(app_shared.clone()))
                .configure(ws::routes)
                .configure(openapi::routes)
        })
        .workers(1)
        .tcp_nodelay(true)
        .on_connect(ws::on_connect)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::debug!(port, "sandbox started");
        Ok(Sandbox {
            shared,
            server: handle,
            stopped: false,
        })
    }

    /// `http://127.0.0.1:PORT`: the client's `open_base_url` (discovery is
    /// `{base_url}/callback/ws/endpoint`, §2.1).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// The configuration the sandbox runs with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// Stops the server at once (`ServerHandle::stop(false)`): open connections are dropped
    /// without Close frames.
    pub async fn stop(mut self) {
        self.stopped = true;
        self.server.stop(false).await;
        tracing::debug!("sandbox stopped");
    }

    // ----- fault injection -------------------------------------------------------------

    /// Queues a fault for a later discovery request (FIFO, one consumed per request).
    pub fn inject_discovery_fault(&self, fault: DiscoveryFault) {
        self.shared.lock().discovery_faults.push_back(fault);
    }

    /// Queues a refusal for a later handshake (FIFO, one consumed per attempt).
    pub fn inject_handshake_fault(&self, fault: HandshakeFault) {
        self.shared.lock().handshake_faults.push_back(fault);
    }

    /// Sends a WebSocket Close frame (code 1000) on every live connection; the sandbox
    /// closes the TCP connection once the client answers (or after 2 s).
    pub fn close_all(&self) {
        self.broadcast(|| Command::Close);
    }

    /// Shuts down every live connection's TCP socket without a Close frame (the client sees
    /// an abnormal closure).
    pub fn drop_all(&self) {
        let state = self.shared.lock();
        for entry in state.connections.values() {
            if let Some(socket) = &entry.socket {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            let _ = entry.commands.send(Command::Drop);
        }
    }

    /// Keeps every connection (also later ones) open but stops sending anything: no pongs,
    /// no RFC 6455 protocol pongs, and pushed frames are discarded as on a dead link. Lasts
    /// until [`resume`](Self::resume). Client frames are still read and recorded.
    pub fn go_silent(&self) {
        self.shared.silent.store(true, Ordering::Relaxed);
        tracing::debug!("sandbox silent");
    }

    /// Ends [`go_silent`](Self::go_silent).
    pub fn resume(&self) {
        self.shared.silent.store(false, Ordering::Relaxed);
        tracing::debug!("sandbox resumed");
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        let state = self.shared.lock();
        for entry in state.connections.values() {
            let _ = entry.commands.send(command());
        }
    }

    // ----- observation -----------------------------------------------------------------

    /// Handshakes accepted so far (101 answered), over the sandbox's whole life.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Connections open now.
    pub fn active_connections(&self) -> usize {
        self.shared.lock().connections.len()
    }

    /// The open connections, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared
            .lock()
            .connections
            .iter()
            .map(|(id, e)| ConnectionInfo {
                id: *id,
                device_id: e.device_id.clone(),
                connected_at: e.connected_at,
            })
            .collect()
    }

    /// `TCP_NODELAY` of each open connection's socket, oldest first (`false` when it could
    /// not be read). The sandbox sets it on every accepted socket (rust-stack-notes §6).
    pub fn connection_nodelay(&self) -> Vec<bool> {
        self.shared
            .lock()
            .connections
            .values()
            .map(|e| {
                e.socket
                    .as_ref()
                    .is_some_and(|s| s.nodelay().unwrap_or(false))
            })
            .collect()
    }

    /// Handshakes refused so far (faults, bad tickets, connection limit).
    pub fn handshakes_refused(&self) -> usize {
        self.shared.lock().handshakes_refused
    }

    /// Every discovery request so far, in arrival order.
    pub fn discoveries(&self) -> Vec<RecordedDiscovery> {
        self.shared.lock().discoveries.clone()
    }

    /// Number of client pings so far.
    pub fn ping_count(&self) -> usize {
        self.shared.lock().pings.len()
    }

    /// Every client ping so far, in arrival order.
    pub fn pings(&self) -> Vec<RecordedPing> {
        self.shared.lock().pings.clone()
    }

    /// RFC 6455 protocol-level Ping frames received (the Python SDK's `websockets` sends
    /// one every 20 s, §5).
    pub fn protocol_pings(&self) -> usize {
        self.shared.lock().protocol_pings
    }

    /// Every ack so far, in arrival order (flood acks are only counted, see
    /// [`flood`](Self::flood)).
    pub fn acks(&self) -> Vec<RecordedAck> {
        self.shared.lock().acks.clone()
    }

    /// Client frames that were neither pings nor data frames, or did not decode.
    pub fn unexpected_frames(&self) -> Vec<UnexpectedFrame> {
        self.shared.lock().unexpected.clone()
    }

    /// Waits until at least `n` acks have been recorded and returns all of them.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_acks(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedAck>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            if s.acks.len() >= n {
                Ok(s.acks.clone())
            } else {
                Err(format!("{n} acks (got {})", s.acks.len()))
            }
        })
        .await
    }

    /// Waits until at least `n` handshakes have been accepted over the sandbox's life (so
    /// `n = 2` waits for a reconnect) and returns the open connections.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_connections(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ConnectionInfo>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            if s.accepted >= n as u64 {
                Ok(())
            } else {
                Err(format!("{n} accepted connections (got {})", s.accepted))
            }
        })
        .await?;
        Ok(self.connections())
    }

    /// Waits until exactly `n` connections are open (e.g. `0` after a close).
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_active_connections(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_until(timeout, |s| {
            if s.connections.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{n} open connections (got {})",
                    s.connections.len()
                ))
            }
        })
        .await
    }

    /// Waits until at least `n` client pings have been recorded and returns all of them.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_pings(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedPing>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            if s.pings.len() >= n {
                Ok(s.pings.clone())
            } else {
                Err(format!("{n} pings (got {})", s.pings.len()))
            }
        })
        .await
    }

    /// Waits until at least `n` discovery requests have arrived and returns all of them.
    ///
    /// # Errors
    /// [`WaitTimeout`] after `timeout`.
    pub async fn wait_for_discoveries(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedDiscovery>, WaitTimeout> {
        self.wait_until(timeout, |s| {
            if s.discoveries.len() >= n {
                Ok(s.discoveries.clone())
            } else {
                Err(format!("{n} discoveries (got {})", s.discoveries.len()))
            }
        })
        .await
    }

    /// Evaluates `check` on every state change until it returns `Ok` or `timeout` runs
    /// out. `Err` carries the description used in [`WaitTimeout::what`].
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Result<T, String>,
    ) -> Result<T, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut notified = std::pin::pin!(self.shared.changed.notified());
            // Register before checking so a change between the check and the await is not
            // missed.
            notified.as_mut().enable();
            let what = match check(&self.shared.lock()) {
                Ok(value) => return Ok(value),
                Err(what) => what,
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(WaitTimeout {
                    what,
                    waited: timeout,
                });
            }
        }
    }

    // ----- pushing ---------------------------------------------------------------------

    /// Chooses which connection receives pushes: `Some(id)` for that one, `None` (the
    /// default) for the most recently connected one (cluster mode: one connection gets each
    /// message, §9).
    pub fn set_push_target(&self, target: Option<ConnectionId>) {
        self.shared.lock().push_target = target;
    }

    /// Cluster mode as the platform runs it for an app with several long connections
    /// (several lark-auth instances): `Some(seed)` sends each pushed message, and each
    /// redelivery, to one live connection picked at random (seeded, so a failing test
    /// replays the same picks); `None` goes back to the most recent connection. A target
    /// set with [`Sandbox::set_push_target`] still wins.
    pub fn set_random_push(&self, seed: Option<u64>) {
        use rand::SeedableRng as _;
        self.shared.lock().random_push = seed.map(rand::rngs::StdRng::seed_from_u64);
    }

    /// Pushes a whole `type=event` message (`sum=1`, `seq=0`, headers `type, message_id,
    /// sum, seq, trace_id` in that order, §4.3; fresh `SeqID`/`LogID` above 2^53 and a
    /// `LogIDNew`) and returns its `message_id`.
    ///
    /// # Errors
    /// [`PushError::NoConnection`] when no client is connected.
    pub fn push_event(&self, payload_json: &[u8]) -> Result<String, PushError> {
        self.push_message("event", payload_json, 1, &[])
    }

    /// Like [`push_event`](Self::push_event) but `type=card` (the old card callback, which
    /// SDKs drop unanswered, §4.3).
    ///
    /// # Errors
    /// [`PushError::NoConnection`] when no client is connected.
    pub fn push_card_frame(&self, payload_json: &[u8]) -> Result<String, PushError> {
        self.push_message("card", payload_json, 1, &[])
    }

    /// Pushes a `type=event` message split into `parts` byte ranges (§6.1; a cut may fall
    /// inside a UTF-8 character), sending the parts in `order` (indexes into the parts;
    /// an empty `order` means 0, 1, …; indexes may repeat or be left out to test
    /// duplicates and missing parts). Parts are at least one byte, so `parts` is capped at
    /// the payload length. Returns the `message_id`.
    ///
    /// # Errors
    /// [`PushError::BadChunking`] for `parts == 0` or an index out of range;
    /// [`PushError::NoConnection`] when no client is connected.
    pub fn push_chunked(
        &self,
        payload: &[u8],
        parts: usize,
        order: &[usize],
    ) -> Result<String, PushError> {
        if parts == 0 {
            return Err(PushError::BadChunking("parts is 0"));
        }
        self.push_message("event", payload, parts, order)
    }

    fn push_message(
        &self,
        kind: &str,
        payload: &[u8],
        parts: usize,
        order: &[usize],
    ) -> Result<String, PushError> {
        let n = self.shared.next_message_number();
        let message_id = format!("sandbox_msg_{n:06}");
        let frames = frames::build_data_frames(&self.shared, kind, &message_id, n, payload, parts);
        let order: Vec<usize> = if order.is_empty() {
            (0..frames.len()).collect()
        } else {
            order.to_vec()
        };
        if order.iter().any(|&i| i >= frames.len()) {
            return Err(PushError::BadChunking(
                "order index not below the part count",
            ));
        }
        let bytes = order.iter().map(|&i| frames[i].encode_to_bytes()).collect();
        let mut state = self.shared.lock();
        let target = push_target(&mut state)?;
        state.messages.insert(
            message_id.clone(),
            PushedMessage {
                frames,
                pushed_at: Instant::now(),
            },
        );
        send_to(&mut state, target, Command::Send(bytes))?;
        tracing::debug!(%target, message_id, kind, parts, "pushed");
        Ok(message_id)
    }

    /// Sends again, unchanged, every frame of a message pushed earlier (redelivery, §6.3),
    /// to the current push target (which may be another connection than the first time).
    ///
    /// # Errors
    /// [`PushError::UnknownMessage`] or [`PushError::NoConnection`].
    pub fn push_duplicate(&self, message_id: &str) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        let target = push_target(&mut state)?;
        let message = state
            .messages
            .get_mut(message_id)
            .ok_or_else(|| PushError::UnknownMessage(message_id.to_string()))?;
        message.pushed_at = Instant::now();
        let bytes = message.frames.iter().map(Frame::encode_to_bytes).collect();
        send_to(&mut state, target, Command::Send(bytes))?;
        tracing::debug!(%target, message_id, "pushed duplicate");
        Ok(())
    }

    /// Sends arbitrary bytes as one binary WebSocket message (garbage, truncated frames…).
    ///
    /// # Errors
    /// [`PushError::NoConnection`] when no client is connected.
    pub fn push_raw(&self, bytes: impl Into<Bytes>) -> Result<(), PushError> {
        let mut state = self.shared.lock();
        let target = push_target(&mut state)?;
        send_to(&mut state, target, Command::Send(vec![bytes.into()]))
    }

    /// Sends a hand-made frame. A data frame (`method 1`) with a `message_id` header is
    /// remembered like pushed messages, so its ack gets latency and fidelity checks.
    ///
    /// # Errors
    /// [`PushError::NoConnection`] when no client is connected.
    pub fn push_frame(&self, frame: Frame) -> Result<(), PushError> {
        let bytes = frame.encode_to_bytes();
        let mut state = self.shared.lock();
        let target = push_target(&mut state)?;
        if frame.method == METHOD_DATA
            && let Some(id) = frame.header(HEADER_MESSAGE_ID).map(str::to_string)
        {
            state.messages.insert(
                id,
                PushedMessage {
                    frames: vec![frame],
                    pushed_at: Instant::now(),
                },
            );
        }
        send_to(&mut state, target, Command::Send(vec![bytes]))
    }

    /// Pushes `spec.count` events to the push target keeping at most `spec.window`
    /// unacknowledged, and measures ack latency on the server side. Runs inside the
    /// connection's task without touching the shared state per event; flood acks are not
    /// added to [`acks`](Self::acks). Pings are still answered during the flood.
    ///
    /// # Errors
    /// [`FloodError::NoConnection`], [`FloodError::ConnectionLost`] when the connection
    /// ends first, [`FloodError::BadChunkOrder`] for an invalid
    /// [`FloodSpec::chunk_order`].
    pub async fn flood(&self, spec: FloodSpec) -> Result<FloodReport, FloodError> {
        if !spec.chunk_order.is_empty() {
            let mut sorted = spec.chunk_order.clone();
            sorted.sort_unstable();
            let parts = spec.chunked_parts.unwrap_or(1);
            if sorted != (0..parts).collect::<Vec<_>>() {
                return Err(FloodError::BadChunkOrder(spec.chunk_order));
            }
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            let target = push_target(&mut state).map_err(|_| FloodError::NoConnection)?;
            send_to(&mut state, target, Command::Flood(spec, tx))
                .map_err(|_| FloodError::NoConnection)?;
        }
        rx.await.map_err(|_| FloodError::ConnectionLost)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.stopped {
            // The stop command is sent at once; the returned future only awaits completion.
            drop(self.server.stop(false));
        }
    }
}

/// The connection pushes go to: the chosen one, else the most recently connected.
fn push_target(state: &mut State) -> Result<ConnectionId, PushError> {
    match state.push_target {
        Some(id) if state.connections.contains_key(&id) => Ok(id),
        Some(_) => Err(PushError::NoConnection),
        None if state.random_push.is_some() && !state.connections.is_empty() => {
            use rand::Rng as _;
            let n = state.connections.len();
            let pick = state
                .random_push
                .as_mut()
                .map_or(0, |rng| rng.gen_range(0..n));
            state
                .connections
                .keys()
                .nth(pick)
                .copied()
                .ok_or(PushError::NoConnection)
        }
        None => state
            .connections
            .keys()
            .next_back()
            .copied()
            .ok_or(PushError::NoConnection),
    }
}

fn send_to(state: &mut State, target: ConnectionId, command: Command) -> Result<(), PushError> {
    state
        .connections
        .get(&target)
        .ok_or(PushError::NoConnection)?
        .commands
        .send(command)
        .map_err(|_| PushError::NoConnection)
}
