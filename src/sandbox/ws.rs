//! Long-connection routes of the sandbox: endpoint discovery (`POST
//! /callback/ws/endpoint`, protocol doc §2) and the WebSocket server (`GET /ws/v2`, §3–§6).
//!
//! Each accepted WebSocket runs as one task on the server's worker thread. The task owns
//! the `actix_ws::Session`, reads client frames (pings → pongs, data frames → recorded
//! acks) and executes [`Command`]s sent by the [`super::Sandbox`] handle over an unbounded
//! channel (pushes, close, drop, flood).

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, USER_AGENT};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use rand::Rng as _;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::frames::{AckPayloadView, DataFrameFields, check_echo, encode_data_frame};
use super::{
    Command, ConnEntry, ConnectionId, DiscoveryFault, FloodReport, FloodSpec, HandshakeFault,
    RecordedAck, RecordedDiscovery, RecordedPing, Shared, TicketGrant, UnexpectedFrame,
};
use crate::protocol::endpoint::ENDPOINT_PATH;
use crate::protocol::frame::decimal;
use crate::protocol::frame::{HEADER_BIZ_RT, HEADER_SEQ, METHOD_CONTROL, METHOD_DATA};
use crate::protocol::{Frame, FrameKind, FrameView};

/// Path of the WebSocket endpoint in the issued URL (§2.2).
const WS_PATH: &str = "/ws/v2";
/// Time the sandbox waits for the client's Close answer before shutting TCP down.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// `message_id` prefix of flood events (never used by other pushes).
const FLOOD_PREFIX: &str = "flood_";
/// Most client messages a flooded connection handles before it refills the window, so
/// the events that replace a batch of acks go out in one body chunk.
const FLOOD_READ_BATCH: usize = 64;

/// Registers the routes of this module on the sandbox App.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(ENDPOINT_PATH, web::post().to(discovery))
        .route(WS_PATH, web::get().to(handshake));
}

/// A duplicate of an accepted TCP socket, stored as connection data by [`on_connect`].
#[derive(Clone)]
pub(crate) struct RawSocket(pub(crate) Arc<socket2::Socket>);

/// `HttpServer::on_connect` hook: makes sure `TCP_NODELAY` is set (see
/// `rust-stack-notes.md` §6; `HttpServer::tcp_nodelay(true)` sets it too) and keeps a
/// duplicate of the socket so [`super::Sandbox::drop_all`] can cut TCP without a Close frame.
pub(crate) fn on_connect(io: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = io.downcast_ref::<actix_rt::net::TcpStream>() {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "sandbox: set_nodelay failed");
        }
        match socket2::SockRef::from(tcp).try_clone() {
            Ok(socket) => {
                ext.insert(RawSocket(Arc::new(socket)));
            }
            Err(e) => tracing::debug!(error = %e, "sandbox: socket dup failed"),
        }
    }
}

#[derive(Deserialize)]
struct DiscoveryBody {
    #[serde(rename = "AppID", default)]
    app_id: Option<String>,
    #[serde(rename = "AppSecret", default)]
    app_secret: Option<String>,
    #[serde(rename = "ClientAssertion", default)]
    client_assertion: Option<String>,
}

fn header_string(
    req: &HttpRequest,
    name: impl actix_web::http::header::AsHeaderName,
) -> Option<String> {
    req.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `POST /callback/ws/endpoint` (§2).
async fn discovery(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let parsed: Option<DiscoveryBody> = serde_json::from_slice(&body).ok();
    let app_id = parsed.as_ref().and_then(|b| b.app_id.clone());
    let mut record = RecordedDiscovery {
        app_id: app_id.clone(),
        locale: header_string(&req, "locale"),
        content_type: header_string(&req, CONTENT_TYPE),
        user_agent: header_string(&req, USER_AGENT),
        has_client_assertion: parsed
            .as_ref()
            .is_some_and(|b| b.client_assertion.is_some()),
        fault: None,
        issued_url: false,
        at: Instant::now(),
    };
    let fault = shared.lock().discovery_faults.pop_front();
    record.fault = fault.clone();
    tracing::debug!(app_id = ?app_id, locale = ?record.locale, fault = ?fault, "sandbox: discovery");
    let answer = match fault {
        Some(DiscoveryFault::Code { code, msg }) => {
            HttpResponse::Ok().json(serde_json::json!({"code": code, "msg": msg}))
        }
        Some(DiscoveryFault::HttpStatus(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            HttpResponse::build(status)
                .json(serde_json::json!({"code": status.as_u16(), "msg": "system busy"}))
        }
        Some(DiscoveryFault::NoData) => {
            HttpResponse::Ok().json(serde_json::json!({"code": 0, "msg": "ok"}))
        }
        Some(DiscoveryFault::Delay(delay)) => {
            actix_rt::time::sleep(delay).await;
            issue(&shared, parsed.as_ref(), &mut record)
        }
        None => issue(&shared, parsed.as_ref(), &mut record),
    };
    shared.lock().discoveries.push(record);
    shared.notify();
    answer
}

/// Checks the credentials and issues a URL with a fresh single-use ticket.
fn issue(
    shared: &Shared,
    body: Option<&DiscoveryBody>,
    record: &mut RecordedDiscovery,
) -> HttpResponse {
    let config = &shared.config;
    let credentials_ok = body.is_some_and(|b| {
        b.app_id.as_deref() == Some(config.app_id.as_str())
            && b.app_secret.as_deref() == Some(config.app_secret.expose().as_str())
    });
    if !credentials_ok {
        return HttpResponse::Ok().json(serde_json::json!({
            "code": config.bad_credentials_code,
            "msg": config.bad_credentials_msg,
        }));
    }
    let mut rng = rand::thread_rng();
    // 19 decimal digits, above 2^53 (§2.2: keep it a string).
    let device_id = rng
        .gen_range(7_000_000_000_000_000_000u64..8_000_000_000_000_000_000)
        .to_string();
    let access_key = format!("{:032x}", rng.r#gen::<u128>());
    let ticket = uuid::Uuid::new_v4().to_string();
    let url = format!(
        "ws://127.0.0.1:{port}{WS_PATH}?fpid=1&aid=1&device_id={device_id}&access_key={access_key}&service_id={service}&ticket={ticket}",
        port = shared.port,
        service = config.service_id,
    );
    shared.lock().tickets.insert(
        ticket,
        TicketGrant {
            access_key,
            device_id: device_id.clone(),
            used: false,
        },
    );
    record.issued_url = true;
    tracing::debug!(device_id, "sandbox: issued a connection URL");
    HttpResponse::Ok().json(serde_json::json!({
        "code": 0,
        "msg": "ok",
        "data": {"URL": url, "ClientConfig": config.client_config},
    }))
}

/// Answers a refused handshake: a non-101 response with the `handshake-*` headers (§3).
fn refuse(fault: &HandshakeFault) -> HttpResponse {
    let status = StatusCode::from_u16(fault.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    let ascii = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    };
    if let Some(s) = &fault.handshake_status {
        response.insert_header(("handshake-status", ascii(s)));
    }
    response.insert_header(("handshake-msg", ascii(&fault.handshake_msg)));
    if let Some(code) = &fault.autherrcode {
        response.insert_header(("handshake-autherrcode", ascii(code)));
    }
    response.finish()
}

/// `GET /ws/v2` (§3): faults, ticket check, connection limit, then the upgrade.
async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut ticket = None;
    let mut access_key = None;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "ticket" if ticket.is_none() => ticket = Some(v.into_owned()),
            "access_key" if access_key.is_none() => access_key = Some(v.into_owned()),
            _ => {}
        }
    }
    let shared = shared.into_inner();
    let mut state = shared.lock();
    // A presented ticket is spent by any attempt, successful or not.
    let grant = ticket
        .as_deref()
        .and_then(|t| state.tickets.get_mut(t))
        .and_then(|g| {
            let valid = !g.used && Some(g.access_key.as_str()) == access_key.as_deref();
            g.used = true;
            valid.then(|| g.device_id.clone())
        });
    let refusal = if let Some(fault) = state.handshake_faults.pop_front() {
        Some(("injected fault", fault))
    } else if grant.is_none() {
        Some((
            "missing, unknown or used ticket",
            shared.config.ticket_refusal.clone(),
        ))
    } else if state.connections.len() >= shared.config.max_connections {
        Some(("connection limit", HandshakeFault::connection_limit()))
    } else {
        None
    };
    if let Some((why, fault)) = refusal {
        state.handshakes_refused += 1;
        drop(state);
        shared.notify();
        tracing::debug!(why, status = ?fault.handshake_status, "sandbox: handshake refused");
        return Ok(refuse(&fault));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let tap = Tap::default();
    let response = response
        .map_body(|_, inner| TappedBody {
            inner,
            tap: tap.clone(),
        })
        .map_into_boxed_body();
    state.accepted += 1;
    let id = ConnectionId(state.accepted);
    let device_id = grant.unwrap_or_default();
    tracing::debug!(%id, device_id, "sandbox: connection accepted");
    let socket = req.conn_data::<RawSocket>().map(|s| s.0.clone());
    let (commands, command_rx) = mpsc::unbounded_channel();
    state.connections.insert(
        id,
        ConnEntry {
            device_id,
            connected_at: Instant::now(),
            commands,
            socket: socket.clone(),
        },
    );
    drop(state);
    let stream = stream
        .max_frame_size(shared.config.max_frame_size)
        .aggregate_continuations()
        .max_continuation_size(shared.config.max_frame_size);
    let connection = Connection::new(shared.clone(), id, session, socket, tap);
    actix_rt::spawn(connection.run(stream, command_rx));
    shared.notify();
    Ok(response)
}

/// Bytes written straight into the WebSocket response body, already framed as binary
/// messages: the flood's events, many per body chunk, without a channel message and a
/// codec copy per event (`actix_ws::Session` costs both). Shared by the connection task
/// and its [`TappedBody`], which run on the same worker thread.
#[derive(Default)]
struct TapState {
    buf: BytesMut,
    waker: Option<Waker>,
}

type Tap = Rc<RefCell<TapState>>;

/// The WebSocket response body: actix-ws's own (every `Session` message: pongs, pushes,
/// Close) merged with the [`Tap`]. Both yield whole WebSocket frames per chunk, so
/// interleaving them at chunk boundaries is safe. Ends when actix-ws's body ends (Close
/// sent or the session gone).
struct TappedBody {
    inner: BoxBody,
    tap: Tap,
}

impl MessageBody for TappedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        let mut tap = this.tap.borrow_mut();
        if tap.buf.is_empty() {
            if !tap.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                tap.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(tap.buf.split().freeze())))
    }
}

/// Appends one server-to-client WebSocket binary frame (FIN, unmasked, RFC 6455 §5.2).
fn put_ws_binary(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x82);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.extend_from_slice(payload);
}

/// Removes the connection from the registry when its task ends or is dropped (server
/// stop).
struct Registration {
    shared: Arc<Shared>,
    id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.lock().connections.remove(&self.id);
        self.shared.notify();
        tracing::debug!(id = %self.id, "sandbox: connection ended");
    }
}

/// What woke the connection task.
enum Wake {
    Ws(Option<Result<AggregatedMessage, actix_ws::ProtocolError>>),
    Command(Option<Command>),
    Timer,
}

/// One accepted WebSocket connection.
struct Connection {
    shared: Arc<Shared>,
    registration: Registration,
    session: Session,
    socket: Option<Arc<socket2::Socket>>,
    /// Encoded pong, built once (§5).
    pong: Bytes,
    /// When we sent Close and are waiting for the client's answer.
    closing_since: Option<Instant>,
    flood: Option<Flood>,
    /// Where flood events are written (see [`TapState`]).
    tap: Tap,
}

impl Connection {
    fn new(
        shared: Arc<Shared>,
        id: ConnectionId,
        session: Session,
        socket: Option<Arc<socket2::Socket>>,
        tap: Tap,
    ) -> Self {
        let payload = if shared.config.pong_with_config {
            serde_json::to_vec(&shared.config.client_config)
                .ok()
                .map(Bytes::from)
        } else {
            None
        };
        let pong = Frame::pong(shared.config.service_id, payload).encode_to_bytes();
        Connection {
            registration: Registration {
                shared: shared.clone(),
                id,
            },
            shared,
            session,
            socket,
            pong,
            closing_since: None,
            flood: None,
            tap,
        }
    }

    fn id(&self) -> ConnectionId {
        self.registration.id
    }

    async fn run(
        mut self,
        mut stream: AggregatedMessageStream,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let deadline = self
                .closing_since
                .map(|t| t + CLOSE_GRACE)
                .into_iter()
                .chain(self.flood.as_ref().map(|f| f.deadline))
                .chain(self.flood.as_ref().and_then(Flood::next_paced_send))
                .min();
            match (deadline, timer.as_mut()) {
                (Some(d), Some(t)) if t.deadline() != tokio::time::Instant::from_std(d) => {
                    t.as_mut().reset(tokio::time::Instant::from_std(d));
                }
                (Some(d), None) => {
                    timer = Some(Box::pin(tokio::time::sleep_until(
                        tokio::time::Instant::from_std(d),
                    )));
                }
                (None, Some(_)) => timer = None,
                _ => {}
            }
            let wake = poll_fn(|cx| {
                if let Poll::Ready(item) = stream.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Ws(item));
                }
                if let Poll::Ready(cmd) = commands.poll_recv(cx) {
                    return Poll::Ready(Wake::Command(cmd));
                }
                if let Some(t) = timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wake::Timer);
                }
                Poll::Pending
            })
            .await;
            let keep_going = match wake {
                Wake::Ws(item) => {
                    let mut keep_going = self.on_ws(item).await;
                    // During a flood: handle every message already received (up to a
                    // batch) before refilling the window.
                    let mut batch = 1;
                    while keep_going && self.flood.is_some() && batch < FLOOD_READ_BATCH {
                        let Some(item) = stream.next().now_or_never() else {
                            break;
                        };
                        keep_going = self.on_ws(item).await;
                        batch += 1;
                    }
                    keep_going
                }
                Wake::Command(Some(cmd)) => self.on_command(cmd).await,
                // The handle is gone: the sandbox is being dropped.
                Wake::Command(None) => false,
                Wake::Timer => self.on_timer(),
            };
            if !keep_going {
                break;
            }
            if self.flood.is_some() {
                self.fill_flood_window();
            }
        }
        self.shutdown_tcp();
    }

    fn shutdown_tcp(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Handles one item of the client stream; false ends the connection.
    async fn on_ws(
        &mut self,
        item: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
    ) -> bool {
        match item {
            Some(Ok(message)) => self.on_message(message).await,
            Some(Err(e)) => {
                tracing::debug!(id = %self.id(), error = %e, "sandbox: protocol error");
                false
            }
            None => false,
        }
    }

    /// Handles one client message; false ends the connection.
    async fn on_message(&mut self, message: AggregatedMessage) -> bool {
        match message {
            AggregatedMessage::Binary(bytes) => self.on_frame(bytes).await,
            AggregatedMessage::Ping(payload) => {
                self.shared.lock().protocol_pings += 1;
                self.shared.notify();
                if !self.shared.is_silent() {
                    return self.session.pong(&payload).await.is_ok();
                }
                true
            }
            AggregatedMessage::Pong(_) => true,
            AggregatedMessage::Text(text) => {
                self.unexpected("text message (frames are binary, §1)", text.into_bytes());
                true
            }
            AggregatedMessage::Close(reason) => {
                tracing::debug!(id = %self.id(), ?reason, "sandbox: client closed");
                if self.closing_since.is_none() {
                    let _ = self.session.clone().close(reason).await;
                }
                false
            }
        }
    }

    fn unexpected(&self, reason: impl Into<String>, bytes: Bytes) {
        let reason = reason.into();
        tracing::debug!(id = %self.id(), reason, "sandbox: unexpected client frame");
        self.shared.lock().unexpected.push(UnexpectedFrame {
            connection: self.id(),
            reason,
            bytes,
        });
        self.shared.notify();
    }

    /// Handles one binary message holding a `Frame` (§4).
    async fn on_frame(&mut self, bytes: Bytes) -> bool {
        // Flood acks: read in place (message_id and payload only), no `Frame` decode.
        if let Some(flood) = self.flood.as_mut()
            && let Some(view) = FrameView::parse(bytes.clone())
            && view.method() == METHOD_DATA
            && flood.on_ack(view.message_id(), view.payload().as_deref(), Instant::now())
        {
            return true;
        }
        let frame = match Frame::decode_bytes(bytes.clone()) {
            Ok(frame) => frame,
            Err(e) => {
                self.unexpected(e.to_string(), bytes);
                return true;
            }
        };
        match frame.method {
            METHOD_CONTROL if frame.kind() == FrameKind::Ping => {
                self.shared.lock().pings.push(RecordedPing {
                    connection: self.id(),
                    service: frame.service,
                    ids: (frame.seq_id, frame.log_id),
                    at: Instant::now(),
                });
                self.shared.notify();
                tracing::debug!(id = %self.id(), service = frame.service, "sandbox: ping");
                if self.shared.is_silent() {
                    return true;
                }
                self.session.binary(self.pong.clone()).await.is_ok()
            }
            METHOD_DATA => {
                let now = Instant::now();
                if let Some(flood) = self.flood.as_mut()
                    && flood.on_ack(frame.message_id(), frame.payload.as_deref(), now)
                {
                    return true;
                }
                self.record_ack(frame, now);
                true
            }
            _ => {
                self.unexpected("neither a ping nor a data frame", bytes);
                true
            }
        }
    }

    fn record_ack(&self, frame: Frame, at: Instant) {
        let message_id = frame.message_id().to_string();
        let payload = match frame.payload.as_deref() {
            Some(p) => AckPayloadView::parse(p),
            None => Err("no payload".to_string()),
        };
        let biz_rt = frame.header(HEADER_BIZ_RT).map(str::to_string);
        let mut state = self.shared.lock();
        let (latency, fidelity_errors) = match state.messages.get(&message_id) {
            Some(pushed) => {
                // The answer echoes the frame of the completing chunk (§6.1): find it by seq.
                // An absent `seq` means an unsplit message (§4.3, as Go assumes).
                let seq = match frame.header(HEADER_SEQ) {
                    None => Some(0),
                    Some(s) => s.parse::<usize>().ok(),
                };
                let errors = match seq.and_then(|s| pushed.frames.get(s)) {
                    Some(original) => check_echo(original, &frame),
                    None => vec![format!("seq {seq:?} names no pushed part")],
                };
                (Some(at.saturating_duration_since(pushed.pushed_at)), errors)
            }
            None => (
                None,
                vec![format!("message_id {message_id:?} was never pushed")],
            ),
        };
        tracing::debug!(
            id = %self.id(),
            message_id,
            code = ?payload.as_ref().ok().and_then(|p| p.code),
            ?latency,
            fidelity_errors = fidelity_errors.len(),
            "sandbox: ack"
        );
        state.acks.push(RecordedAck {
            connection: self.id(),
            message_id,
            frame,
            payload,
            biz_rt,
            latency,
            fidelity_errors,
            at,
        });
        drop(state);
        self.shared.notify();
    }

    /// Executes a command of the handle; false ends the connection.
    async fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Send(messages) => {
                if self.shared.is_silent() || self.closing_since.is_some() {
                    tracing::debug!(id = %self.id(), "sandbox: push discarded (silent or closing)");
                    return true;
                }
                for bytes in messages {
                    if self.session.binary(bytes).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Command::Close => {
                if self.closing_since.is_none() {
                    tracing::debug!(id = %self.id(), "sandbox: sending Close");
                    self.closing_since = Some(Instant::now());
                    let reason = CloseReason {
                        code: CloseCode::Normal,
                        description: Some("sandbox close_all".to_string()),
                    };
                    let _ = self.session.clone().close(Some(reason)).await;
                }
                true
            }
            Command::Drop => {
                tracing::debug!(id = %self.id(), "sandbox: dropping TCP without Close");
                false
            }
            Command::Flood(spec, reply) => {
                if self.flood.is_some() {
                    // One flood at a time: dropping `reply` reports ConnectionLost.
                    return true;
                }
                self.flood = Some(Flood::new(&self.shared, spec, reply));
                true
            }
        }
    }

    fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        if self.closing_since.is_some_and(|t| now >= t + CLOSE_GRACE) {
            tracing::debug!(id = %self.id(), "sandbox: no Close answer, shutting TCP down");
            return false;
        }
        if let Some(flood) = self.flood.take_if(|f| now >= f.deadline) {
            flood.finish(&self.shared, true);
        }
        true
    }

    /// Writes flood events while the window allows, all into the [`Tap`] at once (one body
    /// chunk, one wake of the body), and finishes the flood when all are acked.
    fn fill_flood_window(&mut self) {
        let Some(flood) = self.flood.as_mut() else {
            return;
        };
        if self.shared.is_silent() {
            return;
        }
        let mut tap = self.tap.borrow_mut();
        let was_empty = tap.buf.is_empty();
        let mut wrote = false;
        while flood.sent < flood.spec.count && flood.sent - flood.acked < flood.window {
            let now = Instant::now();
            if !flood.pace_allows(now) {
                break;
            }
            let n = flood.write_event(&self.shared, &mut tap.buf);
            flood.sent_at[n] = Some(now);
            wrote = true;
        }
        if wrote
            && was_empty
            && let Some(waker) = tap.waker.take()
        {
            waker.wake();
        }
        drop(tap);
        if flood.acked >= flood.spec.count
            && let Some(flood) = self.flood.take()
        {
            flood.finish(&self.shared, false);
        }
    }
}

/// State of a running flood, owned by the connection task (no shared-state lock per
/// event).
struct Flood {
    spec: FloodSpec,
    window: usize,
    reply: oneshot::Sender<FloodReport>,
    /// The template cut at each `{n}`.
    template: Vec<Vec<u8>>,
    prefix: String,
    /// `trace_id` of event `n` is this followed by `n`.
    trace_prefix: String,
    /// Reused buffers of [`Flood::write_event`]: the payload, the ids, one encoded frame
    /// per part.
    payload: Vec<u8>,
    message_id: Vec<u8>,
    trace_id: Vec<u8>,
    parts: Vec<Vec<u8>>,
    sent: usize,
    acked: usize,
    non_200: usize,
    sent_at: Vec<Option<Instant>>,
    latencies_us: Vec<u32>,
    started: Instant,
    last_ack: Instant,
    deadline: Instant,
}

impl Flood {
    fn new(shared: &Shared, spec: FloodSpec, reply: oneshot::Sender<FloodReport>) -> Self {
        let run = shared.next_message_number();
        let mut template = Vec::new();
        let mut rest = spec.payload_template.as_slice();
        while let Some(pos) = rest.windows(3).position(|w| w == b"{n}") {
            template.push(rest[..pos].to_vec());
            rest = &rest[pos + 3..];
        }
        template.push(rest.to_vec());
        let now = Instant::now();
        tracing::debug!(
            count = spec.count,
            window = spec.window,
            "sandbox: flood started"
        );
        Flood {
            window: spec.window.max(1),
            reply,
            template,
            prefix: format!("{FLOOD_PREFIX}{run}_"),
            trace_prefix: format!("flood_trace_{run}_"),
            payload: Vec::new(),
            message_id: Vec::new(),
            trace_id: Vec::new(),
            parts: Vec::new(),
            sent: 0,
            acked: 0,
            non_200: 0,
            sent_at: vec![None; spec.count],
            latencies_us: Vec::with_capacity(spec.count),
            started: now,
            last_ack: now,
            deadline: now + spec.timeout,
            spec,
        }
    }

    /// When paced: the instant the next event is due (event `n` at `started + n / rate`).
    fn next_paced_send(&self) -> Option<Instant> {
        let rate = self.spec.rate_per_sec?;
        if self.sent >= self.spec.count {
            return None;
        }
        Some(self.started + Duration::from_secs_f64(self.sent as f64 / f64::from(rate.max(1))))
    }

    /// True when pacing (if any) lets the next event go at `now`.
    fn pace_allows(&self, now: Instant) -> bool {
        self.next_paced_send().is_none_or(|due| now >= due)
    }

    /// Appends the frames of the next event to `out`, each as a WebSocket binary frame;
    /// returns the event number. The frames are those `frames::data_frame` builds (ids
    /// from the shared counters in `seq` order, then sent in `chunk_order`), encoded
    /// without building them.
    fn write_event(&mut self, shared: &Shared, out: &mut BytesMut) -> usize {
        let n = self.sent;
        self.sent += 1;
        let mut digits = [0u8; 20];
        let number = decimal(&mut digits, n as u64);
        self.payload.clear();
        for (i, piece) in self.template.iter().enumerate() {
            if i > 0 {
                self.payload.extend_from_slice(number);
            }
            self.payload.extend_from_slice(piece);
        }
        self.message_id.clear();
        self.message_id.extend_from_slice(self.prefix.as_bytes());
        self.message_id.extend_from_slice(number);
        self.trace_id.clear();
        self.trace_id
            .extend_from_slice(self.trace_prefix.as_bytes());
        self.trace_id.extend_from_slice(number);
        // As `frames::split_payload`: nearly equal contiguous parts, none empty.
        let len = self.payload.len();
        let parts = self.spec.chunked_parts.unwrap_or(1).clamp(1, len.max(1));
        let (base, extra) = (len / parts, len % parts);
        let mut sum_digits = [0u8; 20];
        let sum = decimal(&mut sum_digits, parts as u64);
        self.parts
            .resize_with(parts.max(self.parts.len()), Vec::new);
        let mut start = 0;
        for seq in 0..parts {
            let end = start + base + usize::from(seq < extra);
            let (seq_id, log_id) = shared.next_ids();
            let mut seq_digits = [0u8; 20];
            let mut log_new_buf = [0u8; 40];
            let log_new = {
                const PREFIX: &[u8] = b"sandbox-logid-new-";
                let mut id_digits = [0u8; 20];
                let id = decimal(&mut id_digits, log_id);
                log_new_buf[..PREFIX.len()].copy_from_slice(PREFIX);
                log_new_buf[PREFIX.len()..PREFIX.len() + id.len()].copy_from_slice(id);
                &log_new_buf[..PREFIX.len() + id.len()]
            };
            let frame = &mut self.parts[seq];
            frame.clear();
            encode_data_frame(
                &DataFrameFields {
                    service: shared.config.service_id,
                    seq_id,
                    log_id,
                    kind: b"event",
                    message_id: &self.message_id,
                    sum,
                    seq: decimal(&mut seq_digits, seq as u64),
                    trace_id: &self.trace_id,
                    payload: &self.payload[start..end],
                    log_id_new: log_new,
                },
                frame,
            );
            start = end;
        }
        // `Sandbox::flood` checked that a non-empty order is a permutation of the parts;
        // a payload shorter than the part count gives fewer parts and is sent in order.
        let ordered = !self.spec.chunk_order.is_empty() && self.spec.chunk_order.len() == parts;
        for k in 0..parts {
            let seq = if ordered { self.spec.chunk_order[k] } else { k };
            put_ws_binary(out, &self.parts[seq]);
        }
        n
    }

    /// Counts a flood ack (its `message_id` header and payload); false when it is not one
    /// of this flood's.
    fn on_ack(&mut self, message_id: &str, payload: Option<&[u8]>, now: Instant) -> bool {
        let Some(n) = message_id
            .strip_prefix(self.prefix.as_str())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        let Some(sent_at) = self.sent_at.get_mut(n).and_then(Option::take) else {
            // A duplicate ack or an unknown number: counted as handled, not measured.
            return true;
        };
        self.acked += 1;
        self.last_ack = now;
        let micros = now.saturating_duration_since(sent_at).as_micros();
        self.latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        // The compact form every Rust, Node and Java client writes, else a full parse.
        let ok = payload.is_some_and(|p| {
            p == br#"{"code":200}"# || AckPayloadView::parse(p).is_ok_and(|p| p.code == Some(200))
        });
        if !ok {
            self.non_200 += 1;
        }
        true
    }

    fn finish(mut self, shared: &Shared, timed_out: bool) {
        self.latencies_us.sort_unstable();
        let pick = |q: f64| -> Duration {
            if self.latencies_us.is_empty() {
                return Duration::ZERO;
            }
            let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
            Duration::from_micros(u64::from(self.latencies_us[i]))
        };
        let end = if timed_out {
            Instant::now()
        } else {
            self.last_ack
        };
        let report = FloodReport {
            sent: self.sent,
            acked: self.acked,
            non_200: self.non_200,
            elapsed: end.saturating_duration_since(self.started),
            p50_latency: pick(0.5),
            p99_latency: pick(0.99),
            max_latency: pick(1.0),
            timed_out,
        };
        tracing::debug!(?report, "sandbox: flood finished");
        shared.lock().flood_acks += self.acked;
        shared.notify();
        let _ = self.reply.send(report);
    }
}
