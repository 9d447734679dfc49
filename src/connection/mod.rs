//! The ConnectionActor: owns the Lark long connection (one WebSocket), runs under an
//! [`actix::Supervisor`], and turns frames into typed messages.
//!
//! Accepts: [`Shutdown`], [`GetConnectionStatus`].
//! Sends (through the [`ConnectionOutputs`] recipients): [`EventReceived`] for every
//! complete event that is not a card callback, [`CardActionReceived`] for each
//! `card.action.trigger` callback (its reply becomes the callback answer), and
//! [`ConnectionStateChanged`] on every state change.
//!
//! Duplicates: a redelivered message (a `message_id` seen within
//! `connection.dedup_window`) is acked and not forwarded again, except a card callback:
//! the platform redelivers a click whose ack it did not get in time, and the copy's ack
//! must carry the answer again, so every copy is sent as [`CardActionReceived`] and the
//! consumer answers copies of one `event_id` alike (the RouterActor replays the first
//! answer without touching the session).
//!
//! Lifecycle: `started()` schedules one connection attempt (discovery, TCP, TLS, handshake)
//! after the delay the [`ReconnectPolicy`] gives; a failed attempt or a lost connection
//! stops the actor and the supervisor restarts it at once (same struct, so the policy and
//! the tuning survive), which schedules the next attempt. Only one attempt is ever
//! pending. A fatal failure (bad credentials, banned app, connection limit) or an
//! exhausted `ReconnectCount` parks the actor: it stays alive, answers status queries with
//! `failed` and makes no further attempt.
//!
//! Dead link: a connection that received nothing (no frame, no pong) for `PingInterval +
//! connection.liveness_margin` is closed with cause `silence` at that deadline (one timer,
//! re-armed to the latest frame's deadline when it fires early; frames only record their
//! batch's arrival).
//!
//! Inbound decisions: what each received frame asks for (reassembly, duplicate filter,
//! ack 200/500, forward, callback answer, server config) is decided by the pure
//! [`inbound::Inbound`], unit-tested without a socket; this actor performs the decisions
//! (writes, messages, timers).
//!
//! Hot path: every complete data message is answered on the connection it came on before
//! it is forwarded; handlers of other actors never run on the read loop.

pub mod inbound;
pub mod recent;
pub mod reconnect;
pub mod shared_str;
pub mod state_watch;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_http::ws;
use actix_rt::time::Instant as TokioInstant;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, StreamExt as _};
use tracing::{debug, error, info, warn};

use crate::config::{AppCredentials, ConnectionConfig};
use crate::http_client::{http_client, tls_config};
use crate::metrics::{LinkActivity, Metrics};
use crate::protocol::endpoint::{ConnectFailure, ConnectionTuning, WsEndpoint};
use crate::protocol::event::{CardActionResponse, CardActionTrigger};
use crate::protocol::{AckPayload, Frame, FrameKind, FrameView};

use self::inbound::{Decision, Inbound, InboundLimits, Reply};
use self::reconnect::ReconnectPolicy;
pub use self::shared_str::SharedStr;
pub use self::state_watch::{StateReport, StateWatch};
use self::transport::{Outgoing, WsFramed};

/// How often incomplete chunked messages and old message ids are swept.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);
/// Size of the buffer acks are written into (many acks per allocation).
const ACK_BUFFER_BYTES: usize = 64 * 1024;
/// WebSocket frames handled at most per read batch; the acks of a batch go to the socket
/// in one write.
const READ_BATCH: usize = 64;

/// Errors of the connection layer that reach callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    /// The configuration has no resolved app credentials; call
    /// `Config::resolve_credentials` first.
    #[error("no app credentials configured (app_id / app_secret)")]
    MissingCredentials,
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
}

/// The state of the long connection, as `/healthz` and the logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// First attempt under way.
    Connecting,
    /// Handshake done; frames flow.
    Connected,
    /// The connection was lost or an attempt failed; another attempt is scheduled.
    Reconnecting,
    /// Fatal refusal or `ReconnectCount` exhausted: no further attempt will be made.
    Failed,
    /// Stopped on request ([`Shutdown`]).
    Stopped,
}

impl ConnectionState {
    /// The lowercase name used in logs, metrics and `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::Failed => "failed",
            ConnectionState::Stopped => "stopped",
        }
    }
}

/// A complete data message that is not a card callback (an event, or any other callback
/// type). Sent after the message was acked with `{"code":200}`.
///
/// The ids are [`SharedStr`]s sliced from the received bytes (no allocation per event);
/// use them as `&str` (`&*event.event_type`, `event.event_id.as_str()`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EventReceived {
    /// `header.event_id` (schema 2.0) or `uuid` (1.0): the id redeliveries share.
    pub event_id: SharedStr,
    /// `header.event_type`, e.g. `im.message.receive_v1`.
    pub event_type: SharedStr,
    /// Frame header `message_id`.
    pub message_id: SharedStr,
    /// Frame header `trace_id`.
    pub trace_id: SharedStr,
    /// Frame type: [`FrameKind::Event`] or [`FrameKind::Card`].
    pub frame_kind: FrameKind,
    /// The whole (reassembled) JSON payload.
    pub payload: Bytes,
    /// `device_id` of the connection it came on.
    pub conn_id: Arc<str>,
}

/// A `card.action.trigger` callback. The reply is sent to the platform as the callback
/// answer (`data` of the ack); it must come within `connection.callback_budget_secs`,
/// else the ack goes out with `{"code":200}` alone and the user sees no toast.
///
/// Reply `Ok(response)` to answer, `Err(CallbackFailed)` to answer `{"code":500}` (the
/// platform then shows an error and may deliver again).
///
/// Redelivered copies (same `message_id` and `event_id`) are sent too, each needing the
/// answer again: answer every copy of an `event_id` as the first.
#[derive(Clone, Message)]
#[rtype(result = "Result<CardActionResponse, CallbackFailed>")]
pub struct CardActionReceived {
    /// `header.event_id`.
    pub event_id: String,
    /// Frame header `message_id`.
    pub message_id: String,
    /// Frame header `trace_id`.
    pub trace_id: String,
    /// The parsed callback.
    pub trigger: CardActionTrigger,
    /// The whole (reassembled) JSON envelope as received, for handing it on unchanged.
    pub payload: Bytes,
    /// `device_id` of the connection it came on.
    pub conn_id: Arc<str>,
}

impl std::fmt::Debug for CardActionReceived {
    /// The payload's length only: the raw envelope holds the card's update `token`, which
    /// `trigger` keeps redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardActionReceived")
            .field("event_id", &self.event_id)
            .field("message_id", &self.message_id)
            .field("trace_id", &self.trace_id)
            .field("trigger", &self.trigger)
            .field("payload_len", &self.payload.len())
            .field("conn_id", &self.conn_id)
            .finish()
    }
}

/// A callback handler's refusal: the ack will carry `{"code":500}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("callback handler failed: {0}")]
pub struct CallbackFailed(pub String);

/// Asks the event gateway's outbox to keep an event before its ack goes out (sent only
/// for events a `[[events.forward]]` target takes, see
/// [`ConnectionActor::with_outbox`]). Reply `Ok(())` once the event is durably stored (or
/// known as a redelivery): the ack then says `{"code":200}`. `Err` makes the ack
/// `{"code":500}`, so the platform keeps the event and delivers it again later.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), HoldRefused>")]
pub struct HoldEvent(pub EventReceived);

/// Why the outbox did not keep an event (the ack says 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldRefused {
    /// The outbox holds `events.outbox_capacity` undelivered deliveries already.
    #[error("the event gateway's outbox is full")]
    Full,
    /// The store could not write or flush the event.
    #[error("the outbox could not store the event: {0}")]
    Store(String),
}

/// Which event types the outbox keeps before the ack (the others are acked at once).
pub type HoldFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Sent on every change of [`ConnectionState`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnectionStateChanged {
    /// The new state.
    pub state: ConnectionState,
    /// `device_id` of the connection when connected.
    pub conn_id: Option<Arc<str>>,
    /// Why the state changed (failure cause, `closed_by_server`, `silence`, …).
    pub cause: Option<String>,
}

/// Where the ConnectionActor sends what it receives. Plug in probes in tests.
#[derive(Clone)]
pub struct ConnectionOutputs {
    /// Receives [`EventReceived`].
    pub events: Recipient<EventReceived>,
    /// Receives [`CardActionReceived`] and answers it.
    pub card_actions: Recipient<CardActionReceived>,
    /// Receives [`ConnectionStateChanged`].
    pub states: Recipient<ConnectionStateChanged>,
}

/// Asks the actor to close the connection (WebSocket Close after the queued acks) and make
/// no further attempt. Replies at once; the state becomes [`ConnectionState::Stopped`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Asks for a [`ConnectionStatus`] snapshot.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ConnectionStatus")]
pub struct GetConnectionStatus;

/// A snapshot of the connection and its counters (counts since the actor was created).
#[derive(Debug, Clone, MessageResponse)]
pub struct ConnectionStatus {
    /// Current state.
    pub state: ConnectionState,
    /// `device_id` of the live connection.
    pub conn_id: Option<Arc<str>>,
    /// The server tuning in force (after validation).
    pub tuning: ConnectionTuning,
    /// The fatal failure, when `state` is `failed` because of one.
    pub last_failure: Option<ConnectFailure>,
    /// Successful connections so far.
    pub connects: u64,
    /// Data frames received (chunks count one each).
    pub data_frames_in: u64,
    /// Acks written (responses to complete data messages).
    pub acks_out: u64,
    /// Duplicate messages (acked; forwarded again only when they are card callbacks).
    pub duplicates: u64,
    /// Frames that did not decode or had bad headers.
    pub rejected_frames: u64,
    /// Time since the live connection last received a frame (any: pong, event, …) or was
    /// established; `None` when no connection is live. The link is declared dead when
    /// this reaches `PingInterval + connection.liveness_margin`.
    pub since_last_frame: Option<Duration>,
    /// Time since the last event or card callback frame arrived (on any connection);
    /// `None` before the first.
    pub since_last_event: Option<Duration>,
}

type WsSink = SplitSink<WsFramed, Outgoing>;

/// The live part of a connection; dropped on every restart.
struct Live {
    sink: SinkWrite<Outgoing, WsSink>,
    conn_id: Arc<str>,
    service_id: i32,
    /// When the last read batch (any frame) arrived, or the connection was established.
    /// Tokio's clock, so tests can pause it.
    last_inbound: TokioInstant,
    ping_timer: Option<SpawnHandle>,
    /// Fires at `last_inbound + PingInterval + liveness_margin`; see
    /// `ConnectionActor::check_liveness`.
    liveness_timer: Option<SpawnHandle>,
}

/// Owns the WebSocket. Start it with [`ConnectionActor::start_supervised`].
pub struct ConnectionActor {
    credentials: AppCredentials,
    open_base_url: String,
    config: ConnectionConfig,
    outputs: ConnectionOutputs,
    tls: Arc<rustls::ClientConfig>,
    tuning: ConnectionTuning,
    policy: ReconnectPolicy,
    state: ConnectionState,
    /// Set when no further attempt may be made (fatal failure, gave up, shutdown).
    parked: bool,
    last_failure: Option<ConnectFailure>,
    attempt: Option<SpawnHandle>,
    live: Option<Live>,
    /// Incremented on every connection, so a late callback answer is never written to a
    /// newer connection than the one its message came on.
    generation: u64,
    /// Reassembly, duplicate filter and routing decisions of received frames.
    inbound: Inbound,
    counters: Counters,
    /// When the last read batch with a data frame arrived (any connection).
    last_event: Option<TokioInstant>,
    metrics: Option<Metrics>,
    /// The metrics' link activity (link-age gauges), when metrics are recorded.
    activity: Option<Arc<LinkActivity>>,
    /// The ack frame being built (reused).
    ack_scratch: BytesMut,
    /// Acks of the current read batch as masked WebSocket frames, written to the socket in
    /// one go at the end of the batch (at once outside a batch).
    ack_buf: BytesMut,
    /// True while a read batch is handled.
    in_batch: bool,
    /// The event gateway's outbox and the types it keeps; `None`: every event is acked
    /// at once.
    outbox: Option<(Recipient<HoldEvent>, HoldFilter)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    attempts_started: u64,
    connects: u64,
    acks_out: u64,
}

impl ConnectionActor {
    /// Builds the actor from resolved credentials, the open platform base URL (no trailing
    /// `/`) and the `[connection]` settings.
    ///
    /// # Errors
    /// [`ConnectionError::Tls`] if the TLS configuration cannot be built.
    pub fn new(
        credentials: AppCredentials,
        open_base_url: String,
        config: ConnectionConfig,
        outputs: ConnectionOutputs,
    ) -> Result<Self, ConnectionError> {
        let tls = tls_config().map_err(|e| ConnectionError::Tls(e.to_string()))?;
        let inbound = Inbound::new(InboundLimits {
            dedup_window: config.dedup_window,
            chunk_expiry: config.chunk_expiry,
            max_frame_bytes: config.max_frame_bytes,
        });
        Ok(ConnectionActor {
            credentials,
            open_base_url,
            tuning: config.initial_tuning.unwrap_or_default(),
            policy: ReconnectPolicy::new(config.backoff_initial),
            config,
            outputs,
            tls,
            state: ConnectionState::Connecting,
            parked: false,
            last_failure: None,
            attempt: None,
            live: None,
            generation: 0,
            inbound,
            counters: Counters::default(),
            last_event: None,
            metrics: None,
            activity: None,
            ack_scratch: BytesMut::new(),
            ack_buf: BytesMut::new(),
            in_batch: false,
            outbox: None,
        })
    }

    /// Records connection state, reconnects, frames, acks, events and callback answers
    /// in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.activity = Some(metrics.link_activity());
        self.inbound = self.inbound.with_metrics(metrics.clone());
        self.metrics = Some(metrics);
        self
    }

    /// Events whose type `holds` accepts are first sent to `outbox` as [`HoldEvent`] and
    /// acked only once it answered (200 when kept, 500 when refused); the others are
    /// acked at once as without an outbox. Acks of other events do not wait for it.
    pub fn with_outbox(mut self, outbox: Recipient<HoldEvent>, holds: HoldFilter) -> Self {
        self.outbox = Some((outbox, holds));
        self
    }

    /// Starts the actor under an [`actix::Supervisor`] on the current arbiter. Keep the
    /// returned address: the supervisor restarts the actor only while an address lives.
    pub fn start_supervised(self) -> Addr<ConnectionActor> {
        actix::Supervisor::start(move |_| self)
    }

    fn set_state(&mut self, state: ConnectionState, cause: Option<String>) {
        if self.state == state && cause.is_none() {
            return;
        }
        self.state = state;
        if let Some(m) = &self.metrics {
            m.connection_state(state.as_str());
            if state == ConnectionState::Reconnecting {
                m.reconnect(cause.as_deref().unwrap_or("unknown"));
            }
        }
        let conn_id = self.live.as_ref().map(|l| l.conn_id.clone());
        match state {
            ConnectionState::Failed => error!(
                state = state.as_str(),
                cause = cause.as_deref().unwrap_or(""),
                "long connection failed; no further attempt will be made"
            ),
            _ => info!(
                state = state.as_str(),
                conn_id = conn_id.as_deref().unwrap_or(""),
                cause = cause.as_deref().unwrap_or(""),
                "long connection state changed"
            ),
        }
        self.outputs.states.do_send(ConnectionStateChanged {
            state,
            conn_id,
            cause,
        });
    }

    /// Schedules the next connection attempt, or parks when the policy gives up.
    fn schedule_attempt(&mut self, ctx: &mut Context<Self>) {
        let delay = if self.counters.attempts_started == 0 {
            Some(Duration::ZERO)
        } else {
            self.policy.next_delay(&self.tuning)
        };
        let Some(delay) = delay else {
            self.parked = true;
            let attempts = self.policy.attempts();
            self.set_state(
                ConnectionState::Failed,
                Some(format!(
                    "gave up after {attempts} reconnect attempts (ReconnectCount)"
                )),
            );
            return;
        };
        self.counters.attempts_started += 1;
        let client = http_client(self.tls.clone(), self.config.discovery_timeout);
        let base = self.open_base_url.clone();
        let credentials = self.credentials.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.config.handshake_timeout;
        let max_frame = self.config.max_frame_bytes;
        debug!(
            delay_ms = delay.as_millis() as u64,
            "connection attempt scheduled"
        );
        let attempt = async move {
            if !delay.is_zero() {
                actix_rt::time::sleep(delay).await;
            }
            let endpoint = transport::discover(&client, &base, &credentials).await?;
            let framed = transport::dial(&endpoint, tls, handshake_timeout, max_frame).await?;
            Ok::<_, ConnectFailure>((endpoint, framed))
        };
        let handle = ctx.spawn(attempt.into_actor(self).map(|result, act, ctx| {
            act.attempt = None;
            match result {
                Ok((endpoint, framed)) => act.on_connected(endpoint, framed, ctx),
                Err(failure) if failure.is_fatal() => {
                    act.parked = true;
                    let cause = format!("{failure}; {}", failure.hint());
                    act.last_failure = Some(failure);
                    act.set_state(ConnectionState::Failed, Some(cause));
                }
                Err(failure) => {
                    warn!(
                        cause = failure.cause(),
                        error = %failure,
                        attempt = act.policy.attempts(),
                        "connection attempt failed; will retry"
                    );
                    act.set_state(
                        ConnectionState::Reconnecting,
                        Some(failure.cause().to_string()),
                    );
                    ctx.stop();
                }
            }
        }));
        self.attempt = Some(handle);
    }

    fn on_connected(&mut self, endpoint: WsEndpoint, framed: WsFramed, ctx: &mut Context<Self>) {
        if self.parked {
            return;
        }
        if let Some(server_config) = endpoint.client_config {
            self.apply_client_config(&server_config, "discovery");
        }
        self.policy.connected();
        self.generation += 1;
        self.counters.connects += 1;
        let (sink, stream) = framed.split();
        ctx.add_stream(stream.ready_chunks(READ_BATCH));
        let now = TokioInstant::now();
        let conn_id: Arc<str> = Arc::from(endpoint.device_id.as_str());
        self.live = Some(Live {
            sink: SinkWrite::new(sink, ctx),
            conn_id: conn_id.clone(),
            service_id: endpoint.service_id,
            last_inbound: now,
            ping_timer: None,
            liveness_timer: None,
        });
        self.inbound.connected(conn_id.clone());
        if let Some(activity) = &self.activity {
            activity.connected(conn_id.clone(), now.into_std());
        }
        info!(
            conn_id = %conn_id,
            url = %endpoint.redacted_url(),
            service_id = endpoint.service_id,
            ping_interval_s = self.tuning.ping_interval.as_secs(),
            "long connection established"
        );
        self.set_state(ConnectionState::Connected, None);
        self.send_ping(ctx);
        self.arm_ping_timer(ctx);
        self.arm_liveness_timer(ctx);
    }

    fn apply_client_config(
        &mut self,
        server_config: &crate::protocol::endpoint::ClientConfig,
        source: &'static str,
    ) -> bool {
        let before = self.tuning;
        for rejected in self.tuning.apply(server_config) {
            warn!(
                source,
                key = rejected.key,
                value = rejected.value,
                reason = rejected.reason,
                "server ClientConfig value rejected"
            );
        }
        let changed = before != self.tuning;
        if changed {
            info!(
                source,
                ping_interval_s = self.tuning.ping_interval.as_secs(),
                reconnect_interval_s = self.tuning.reconnect_interval.as_secs(),
                reconnect_nonce_s = self.tuning.reconnect_nonce.as_secs(),
                reconnect_count = self.tuning.reconnect_count.map(i64::from).unwrap_or(-1),
                "server ClientConfig applied"
            );
        }
        before.ping_interval != self.tuning.ping_interval
    }

    fn arm_ping_timer(&mut self, ctx: &mut Context<Self>) {
        let interval = self.tuning.ping_interval;
        let handle = ctx.run_interval(interval, |act, ctx| act.send_ping(ctx));
        if let Some(live) = self.live.as_mut()
            && let Some(old) = live.ping_timer.replace(handle)
        {
            ctx.cancel_future(old);
        }
    }

    fn send_ping(&mut self, ctx: &mut Context<Self>) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let ping = Frame::ping(live.service_id).encode_to_bytes();
        if live
            .sink
            .write(Outgoing::Message(ws::Message::Binary(ping)))
            .is_err()
        {
            self.connection_lost("write_failed", ctx);
        }
    }

    /// Stops the actor so the supervisor restarts it and a new attempt is scheduled.
    fn connection_lost(&mut self, cause: &str, ctx: &mut Context<Self>) {
        if self.parked {
            // Closing on purpose (shutdown): nothing was lost.
            debug!(cause, "connection closed after shutdown");
        } else {
            if let Some(live) = self.live.as_ref() {
                warn!(conn_id = %live.conn_id, cause, "long connection lost");
            }
            self.set_state(ConnectionState::Reconnecting, Some(cause.to_string()));
        }
        ctx.stop();
    }

    /// How long the link may stay silent: `PingInterval + liveness_margin`.
    fn liveness_limit(&self) -> Duration {
        self.tuning.ping_interval + self.config.liveness_margin
    }

    /// (Re)arms the dead-link timer for `last_inbound + limit`. Frames do not touch the
    /// timer (they only record `last_inbound`): it re-arms itself when it fires early.
    fn arm_liveness_timer(&mut self, ctx: &mut Context<Self>) {
        let limit = self.liveness_limit();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let wait = (live.last_inbound + limit).saturating_duration_since(TokioInstant::now());
        let handle = ctx.run_later(wait, |act, ctx| act.check_liveness(ctx));
        if let Some(old) = live.liveness_timer.replace(handle) {
            ctx.cancel_future(old);
        }
    }

    /// The dead-link timer fired: the link is dead if nothing arrived for the whole limit
    /// (declared at the deadline itself, within the timer's millisecond), else the timer
    /// waits for the deadline of the latest frame.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let limit = self.liveness_limit();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.liveness_timer = None;
        if TokioInstant::now() >= live.last_inbound + limit {
            self.connection_lost("silence", ctx);
        } else {
            self.arm_liveness_timer(ctx);
        }
    }

    fn sweep(&mut self) {
        self.inbound.sweep(Instant::now());
    }

    /// Carries out what the inbound path decided for one frame that arrived at
    /// `received_at`.
    fn perform(&mut self, decision: Decision, received_at: Instant, ctx: &mut Context<Self>) {
        match decision {
            Decision::Nothing => {}
            Decision::Ack { frame, reply } => {
                let payload = match reply {
                    Reply::Ok => &AckPayload::OK,
                    Reply::Failed => &AckPayload::FAILED,
                };
                self.ack(frame, received_at, payload, ctx);
            }
            Decision::Forward { frame, event } => {
                if let Some((outbox, holds)) = &self.outbox
                    && holds(&event.event_type)
                {
                    let request = outbox.send(HoldEvent(event.clone()));
                    self.ack_after_hold(frame, event, request, received_at, ctx);
                } else if self.outputs.events.connected() {
                    self.ack(frame, received_at, &AckPayload::OK, ctx);
                    self.outputs.events.do_send(event);
                } else {
                    error!(
                        message_id = %event.message_id,
                        "event consumer is gone; answered 500"
                    );
                    self.ack(frame, received_at, &AckPayload::FAILED, ctx);
                }
            }
            Decision::Callback { frame, message, .. } => {
                self.answer_callback(frame, *message, received_at, ctx)
            }
            Decision::ServerConfig(server_config) => {
                if self.apply_client_config(&server_config, "pong") {
                    self.arm_ping_timer(ctx);
                    // The dead-link deadline moves with the ping interval.
                    self.arm_liveness_timer(ctx);
                }
            }
            Decision::Pong(payload) => {
                let Some(live) = self.live.as_mut() else {
                    return;
                };
                if live
                    .sink
                    .write(Outgoing::Message(ws::Message::Pong(payload)))
                    .is_err()
                {
                    self.connection_lost("write_failed", ctx);
                }
            }
            Decision::Close(reason) => {
                // The acks of the frames before the Close go out before our Close.
                self.flush_acks(ctx);
                let Some(live) = self.live.as_mut() else {
                    return;
                };
                info!(conn_id = %live.conn_id, reason = ?reason, "server closed the connection");
                let _ = live
                    .sink
                    .write(Outgoing::Message(ws::Message::Close(reason)));
                self.connection_lost("closed_by_server", ctx);
            }
            Decision::ProtocolError(e) => {
                warn!(error = %e, "websocket protocol error");
                self.connection_lost("protocol_error", ctx);
            }
        }
    }

    /// Acks `frame` once the outbox answered `request` (200 kept, 500 refused), on the
    /// connection it came on, then forwards `event` as without an outbox.
    fn ack_after_hold(
        &mut self,
        frame: FrameView,
        event: EventReceived,
        request: actix::dev::RecipientRequest<HoldEvent>,
        received_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        let generation = self.generation;
        ctx.spawn(request.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation || act.live.is_none() {
                // Kept or not, the platform delivers it again (its ack never left).
                warn!(
                    message_id = %event.message_id,
                    "event stored after its connection closed; ack dropped"
                );
                return;
            }
            match result {
                Ok(Ok(())) => {
                    act.ack(frame, received_at, &AckPayload::OK, ctx);
                    if act.outputs.events.connected() {
                        act.outputs.events.do_send(event);
                    }
                }
                Ok(Err(refused)) => {
                    warn!(
                        message_id = %event.message_id,
                        event_id = %event.event_id,
                        error = %refused,
                        "event not kept for forwarding; answered 500 (the platform delivers it again)"
                    );
                    act.ack(frame, received_at, &AckPayload::FAILED, ctx);
                }
                Err(mailbox) => {
                    error!(
                        message_id = %event.message_id,
                        error = %mailbox,
                        "event gateway unreachable; answered 500"
                    );
                    act.ack(frame, received_at, &AckPayload::FAILED, ctx);
                }
            }
        }));
    }

    fn answer_callback(
        &mut self,
        frame: FrameView,
        message: CardActionReceived,
        received_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        let generation = self.generation;
        let budget = self.config.callback_budget;
        let message_id = message.message_id.clone();
        let request = self.outputs.card_actions.send(message);
        let fut = async move { tokio::time::timeout(budget, request).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation || act.live.is_none() {
                warn!(
                    message_id = %message_id,
                    "callback answered after its connection closed; answer dropped"
                );
                return;
            }
            let outcome = match &result {
                Ok(Ok(Ok(_))) => "answered",
                Err(_) => "late",
                _ => "failed",
            };
            if let Some(m) = &act.metrics {
                m.callback_answered(outcome, received_at.elapsed().as_secs_f64());
            }
            match result {
                Ok(Ok(Ok(response))) => match response.to_json() {
                    Ok(body) => {
                        act.ack(frame, received_at, &AckPayload::ok_with_data(&body), ctx)
                    }
                    Err(e) => {
                        error!(message_id = %message_id, error = %e, "callback answer does not serialize; answered 500");
                        act.ack(frame, received_at, &AckPayload::FAILED, ctx)
                    }
                },
                Ok(Ok(Err(failed))) => {
                    warn!(message_id = %message_id, error = %failed, "callback handler failed; answered 500");
                    act.ack(frame, received_at, &AckPayload::FAILED, ctx)
                }
                Ok(Err(mailbox)) => {
                    error!(message_id = %message_id, error = %mailbox, "callback consumer unreachable; answered 500");
                    act.ack(frame, received_at, &AckPayload::FAILED, ctx)
                }
                Err(_elapsed) => {
                    warn!(
                        message_id = %message_id,
                        budget_ms = budget.as_millis() as u64,
                        "callback answer not ready within the budget; acked without data"
                    );
                    act.ack(frame, received_at, &AckPayload::OK, ctx)
                }
            }
        }));
    }

    fn ack(
        &mut self,
        frame: FrameView,
        received_at: Instant,
        payload: &AckPayload<'_>,
        ctx: &mut Context<Self>,
    ) {
        if self.live.is_none() {
            return;
        }
        let elapsed = received_at.elapsed();
        let biz_rt = elapsed.as_millis() as u64;
        if let Some(m) = &self.metrics {
            m.ack_written(elapsed.as_secs_f64());
        }
        self.ack_scratch.clear();
        frame.write_response(biz_rt, payload, &mut self.ack_scratch);
        if self.ack_buf.capacity() - self.ack_buf.len() < self.ack_scratch.len() + 16 {
            // Reclaims the buffer once the acks split off it are written, else allocates.
            self.ack_buf
                .reserve(ACK_BUFFER_BYTES.max(self.ack_scratch.len() + 16));
        }
        ws::Parser::write_message(
            &mut self.ack_buf,
            &self.ack_scratch[..],
            ws::OpCode::Binary,
            true,
            true,
        );
        if !self.in_batch {
            self.flush_acks(ctx);
        }
        self.counters.acks_out += 1;
    }

    /// Writes the acks gathered so far to the socket in one sink write.
    fn flush_acks(&mut self, ctx: &mut Context<Self>) {
        if self.ack_buf.is_empty() {
            return;
        }
        let frames = self.ack_buf.split().freeze();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.sink.write(Outgoing::Frames(frames)).is_err() {
            self.connection_lost("write_failed", ctx);
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.parked {
            return;
        }
        ctx.run_interval(SWEEP_PERIOD, |act, _| act.sweep());
        self.schedule_attempt(ctx);
    }
}

impl actix::Supervised for ConnectionActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Everything bound to the old connection goes; policy, tuning, duplicate filter
        // and counters stay.
        self.live = None;
        self.attempt = None;
        self.inbound.disconnected();
    }
}

impl StreamHandler<Vec<Result<ws::Frame, ws::ProtocolError>>> for ConnectionActor {
    /// A batch of frames that were ready together: handled in order, their acks written
    /// at the end in one sink write.
    fn handle(
        &mut self,
        batch: Vec<Result<ws::Frame, ws::ProtocolError>>,
        ctx: &mut Context<Self>,
    ) {
        // One clock read per batch (frames of a batch arrived together): the liveness
        // deadline and the link-age gauges move per batch, never per event; the acks'
        // `biz_rt` and latency count from the batch's arrival.
        let now = TokioInstant::now();
        let received_at = Instant::now();
        if let Some(live) = self.live.as_mut() {
            live.last_inbound = now;
        }
        let data_frames_before = self.inbound.counters().data_frames_in;
        self.in_batch = true;
        for item in batch {
            if self.live.is_none() {
                break;
            }
            let decision = self.inbound.on_ws_frame(item, received_at);
            self.perform(decision, received_at, ctx);
        }
        self.in_batch = false;
        self.flush_acks(ctx);
        let with_data = self.inbound.counters().data_frames_in != data_frames_before;
        if with_data {
            self.last_event = Some(now);
        }
        if let Some(activity) = &self.activity {
            let at = now.into_std();
            activity.frame_received(at);
            if with_data {
                activity.event_received(at);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.connection_lost("stream_ended", ctx);
    }
}

impl WriteHandler<ws::ProtocolError> for ConnectionActor {
    fn error(&mut self, err: ws::ProtocolError, ctx: &mut Context<Self>) -> Running {
        warn!(error = %err, "websocket write failed");
        self.connection_lost("write_failed", ctx);
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.live.is_some() {
            self.connection_lost("writer_closed", ctx);
        }
    }
}

impl Handler<Shutdown> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        if self.parked && self.state == ConnectionState::Stopped {
            return;
        }
        self.parked = true;
        if let Some(attempt) = self.attempt.take() {
            ctx.cancel_future(attempt);
        }
        self.set_state(ConnectionState::Stopped, Some("shutdown requested".into()));
        if let Some(live) = self.live.as_mut() {
            let _ = live.sink.write(Outgoing::Message(ws::Message::Close(Some(
                ws::CloseCode::Normal.into(),
            ))));
            live.sink.close();
            // Give the Close (and the acks queued before it) a moment to go out, then drop
            // the socket whether or not the server answered.
            ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.stop());
        }
    }
}

impl Handler<GetConnectionStatus> for ConnectionActor {
    type Result = ConnectionStatus;

    fn handle(&mut self, _: GetConnectionStatus, _: &mut Context<Self>) -> ConnectionStatus {
        let now = TokioInstant::now();
        ConnectionStatus {
            state: self.state,
            conn_id: self.live.as_ref().map(|l| l.conn_id.clone()),
            tuning: self.tuning,
            last_failure: self.last_failure.clone(),
            connects: self.counters.connects,
            data_frames_in: self.inbound.counters().data_frames_in,
            acks_out: self.counters.acks_out,
            duplicates: self.inbound.counters().duplicates,
            rejected_frames: self.inbound.counters().rejected_frames,
            since_last_frame: self
                .live
                .as_ref()
                .map(|l| now.saturating_duration_since(l.last_inbound)),
            since_last_event: self.last_event.map(|t| now.saturating_duration_since(t)),
        }
    }
}
