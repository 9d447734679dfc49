//! The connection's inbound decisions, without an actor or a socket: WebSocket frames and
//! the time they arrived go in, one [`Decision`] per frame comes out (ack, forward, ask
//! for a callback answer, apply a server `ClientConfig`, answer a WebSocket ping, close).
//! The [`ConnectionActor`](super::ConnectionActor) performs the decisions: it writes the
//! acks, sends the messages and runs the timers.
//!
//! What is decided here (protocol doc §4–§6): continuation reassembly of fragmented
//! WebSocket messages, chunk reassembly (`sum`/`seq` headers), the duplicate filter on
//! `message_id`, the envelope's routing fields, `card.action.trigger` versus any other
//! event, and which messages are answered `{"code":500}` (payload not an envelope, callback
//! that does not parse). Frames that do not decode are counted and dropped unanswered: the
//! platform pushes unanswered messages again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws;
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::protocol::chunk::{ChunkAssembler, ChunkLimits, ChunkOutcome};
use crate::protocol::endpoint::ClientConfig;
use crate::protocol::event::{
    CardActionTrigger, EVENT_TYPE_CARD_ACTION_TRIGGER, EnvelopeHead, EnvelopeRef,
};
use crate::protocol::{Frame, FrameKind, FrameView};

use super::recent::RecentMessages;
use super::{CardActionReceived, EventReceived, SharedStr};

/// How many message ids the duplicate filter holds at most.
const RECENT_MESSAGES_CAPACITY: usize = 100_000;
/// Distinct event types whose counters are kept at hand; past this, events are counted
/// through the registry (event types are few in practice).
const EVENT_COUNTERS_CAPACITY: usize = 256;

/// Settings of [`Inbound`], taken from `[connection]`.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    /// How long a `message_id` is remembered by the duplicate filter
    /// (`connection.dedup_window`).
    pub dedup_window: Duration,
    /// Time after the first part of a chunked message after which it is dropped
    /// (`connection.chunk_expiry`).
    pub chunk_expiry: Duration,
    /// Largest reassembled fragmented WebSocket message, in bytes
    /// (`connection.max_frame_bytes`).
    pub max_frame_bytes: usize,
}

/// What the actor must do for one WebSocket frame.
#[derive(Debug)]
pub enum Decision {
    /// Nothing: a part of a message still incomplete, a frame ignored (text, pong without
    /// config, control frame of unknown kind) or rejected (counted and logged here).
    Nothing,
    /// Answer `frame` with `reply` now.
    Ack {
        /// The data frame to answer (its headers are echoed in the ack).
        frame: FrameView,
        /// `{"code":200}` or `{"code":500}`.
        reply: Reply,
    },
    /// Ack `frame` with `{"code":200}` and send `event` to the event consumer (or answer
    /// `{"code":500}` when the consumer is gone).
    Forward {
        /// The data frame that completed the message.
        frame: FrameView,
        /// The event to send.
        event: EventReceived,
    },
    /// Ask the card-action consumer for the answer, then ack `frame` with it.
    Callback {
        /// The data frame that completed the message.
        frame: FrameView,
        /// The callback to send (boxed: callbacks are rare, events are not, and the
        /// decision stays small).
        message: Box<CardActionReceived>,
        /// True for a redelivered copy (its `message_id` was seen within the window).
        duplicate: bool,
    },
    /// A pong frame carried a `ClientConfig` (protocol doc §5): apply it.
    ServerConfig(ClientConfig),
    /// A WebSocket ping: answer with a pong carrying this payload.
    Pong(Bytes),
    /// The server sent a WebSocket Close: write the pending acks, echo the Close, and
    /// treat the connection as lost (`closed_by_server`).
    Close(Option<ws::CloseReason>),
    /// The WebSocket stream failed to parse: the connection is lost (`protocol_error`).
    ProtocolError(ws::ProtocolError),
}

/// The ack's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `{"code":200}`: received.
    Ok,
    /// `{"code":500}`: could not be handled; the platform may deliver it again.
    Failed,
}

/// Counts since the [`Inbound`] was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InboundCounters {
    /// Data frames received (chunks count one each).
    pub data_frames_in: u64,
    /// Complete messages whose `message_id` was seen within the window.
    pub duplicates: u64,
    /// Frames that did not decode, had bad headers or broke a size limit.
    pub rejected_frames: u64,
}

/// The inbound state of the long connection: partial messages, recent `message_id`s and
/// counters. One per ConnectionActor; [`Inbound::connected`] starts each connection.
pub struct Inbound {
    limits: InboundLimits,
    assembler: ChunkAssembler,
    recent: RecentMessages,
    /// The fragmented WebSocket message being reassembled, if any.
    continuation: Option<BytesMut>,
    /// `device_id` of the connection frames come on.
    conn_id: Arc<str>,
    counters: InboundCounters,
    metrics: Option<Metrics>,
    /// Per-event-type counters taken from `metrics` once, so the frame path neither
    /// allocates a label nor looks one up in the registry.
    event_counters: HashMap<Box<str>, Counter>,
}

impl Inbound {
    /// An empty inbound state.
    pub fn new(limits: InboundLimits) -> Self {
        Inbound {
            assembler: ChunkAssembler::new(Self::chunk_limits(&limits)),
            recent: RecentMessages::new(limits.dedup_window, RECENT_MESSAGES_CAPACITY),
            limits,
            continuation: None,
            conn_id: Arc::from(""),
            counters: InboundCounters::default(),
            metrics: None,
            event_counters: HashMap::new(),
        }
    }

    /// Counts data frames (`frame_in`) and complete, non-duplicate events by type in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn chunk_limits(limits: &InboundLimits) -> ChunkLimits {
        ChunkLimits {
            expiry: limits.chunk_expiry,
            ..ChunkLimits::default()
        }
    }

    /// Starts a new connection with `device_id` `conn_id`: partial messages of the previous
    /// one are dropped (the platform delivers them again); the duplicate filter and the
    /// counters stay.
    pub fn connected(&mut self, conn_id: Arc<str>) {
        self.conn_id = conn_id;
        self.disconnected();
    }

    /// The connection ended: partial messages are dropped (the platform delivers them
    /// again); the duplicate filter and the counters stay.
    pub fn disconnected(&mut self) {
        self.continuation = None;
        self.assembler = ChunkAssembler::new(Self::chunk_limits(&self.limits));
    }

    /// Counts so far.
    pub fn counters(&self) -> InboundCounters {
        self.counters
    }

    /// Drops chunked messages incomplete for longer than `chunk_expiry` and ids older than
    /// `dedup_window`; returns how many incomplete messages were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let expired = self.assembler.expire(now);
        if expired > 0 {
            warn!(
                expired,
                "incomplete chunked messages expired (the platform will deliver them again)"
            );
        }
        self.recent.prune(now);
        expired
    }

    /// Decides what one WebSocket frame of a read batch asks for. `now` is when the batch
    /// arrived: the chunk expiry and the duplicate window count from it.
    pub fn on_ws_frame(
        &mut self,
        item: Result<ws::Frame, ws::ProtocolError>,
        now: Instant,
    ) -> Decision {
        let frame = match item {
            Ok(frame) => frame,
            Err(e) => return Decision::ProtocolError(e),
        };
        match frame {
            ws::Frame::Binary(bytes) => self.on_binary(bytes, now),
            ws::Frame::Continuation(item) => {
                let (chunk, last) = match item {
                    ws::Item::FirstBinary(b) => {
                        self.continuation = Some(BytesMut::new());
                        (b, false)
                    }
                    ws::Item::FirstText(b) => {
                        self.continuation = None;
                        debug!(len = b.len(), "fragmented text message ignored");
                        return Decision::Nothing;
                    }
                    ws::Item::Continue(b) => (b, false),
                    ws::Item::Last(b) => (b, true),
                };
                let Some(buf) = self.continuation.as_mut() else {
                    return Decision::Nothing;
                };
                let max = self.limits.max_frame_bytes;
                if buf.len() + chunk.len() > max {
                    self.continuation = None;
                    self.counters.rejected_frames += 1;
                    warn!(max_bytes = max, "fragmented message too large; dropped");
                    return Decision::Nothing;
                }
                buf.extend_from_slice(&chunk);
                match self.continuation.take_if(|_| last) {
                    Some(whole) => self.on_binary(whole.freeze(), now),
                    None => Decision::Nothing,
                }
            }
            ws::Frame::Ping(payload) => Decision::Pong(payload),
            ws::Frame::Pong(_) => Decision::Nothing,
            ws::Frame::Text(text) => {
                debug!(
                    len = text.len(),
                    "text message ignored (the protocol is binary)"
                );
                Decision::Nothing
            }
            ws::Frame::Close(reason) => Decision::Close(reason),
        }
    }

    /// One complete WebSocket binary message.
    fn on_binary(&mut self, bytes: Bytes, now: Instant) -> Decision {
        // Data frames are read in place (no header strings) and answered from their bytes.
        if let Some(view) = FrameView::parse(bytes.clone()) {
            let kind = view.kind();
            if kind.is_data() {
                return self.on_data_frame(kind, view, now);
            }
        }
        let frame = match Frame::decode_bytes(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.counters.rejected_frames += 1;
                warn!(error = %e, "frame rejected");
                return Decision::Nothing;
            }
        };
        match frame.kind() {
            FrameKind::Pong => match frame.payload.as_ref().filter(|p| !p.is_empty()) {
                Some(payload) => match serde_json::from_slice(payload) {
                    Ok(server_config) => Decision::ServerConfig(server_config),
                    Err(e) => {
                        warn!(error = %e, "pong payload is not a ClientConfig; ignored");
                        Decision::Nothing
                    }
                },
                None => Decision::Nothing,
            },
            FrameKind::Ping => {
                debug!("ping from the server ignored");
                Decision::Nothing
            }
            // A data frame the view does not take as it came (fields out of order, unknown
            // fields): answered from its canonical encoding, as `into_response` would.
            kind @ (FrameKind::Event | FrameKind::Card) => {
                match FrameView::parse(frame.encode_to_bytes()) {
                    Some(view) => self.on_data_frame(kind, view, now),
                    None => {
                        self.counters.rejected_frames += 1;
                        warn!(message_id = frame.message_id(), "data frame rejected");
                        Decision::Nothing
                    }
                }
            }
            FrameKind::Unknown => {
                debug!(
                    method = frame.method,
                    frame_type = frame.header("type").unwrap_or(""),
                    "frame of unknown kind ignored"
                );
                Decision::Nothing
            }
        }
    }

    fn on_data_frame(&mut self, kind: FrameKind, frame: FrameView, now: Instant) -> Decision {
        self.counters.data_frames_in += 1;
        if let Some(m) = &self.metrics {
            m.frame_in();
        }
        // Read once: each read of a header checks its UTF-8 again.
        let message_id = frame.message_id();
        let position = match frame.chunk_position(self.assembler.limits().max_parts) {
            Ok(p) => p,
            Err(e) => {
                self.counters.rejected_frames += 1;
                warn!(message_id = message_id, error = %e, "data frame rejected");
                return Decision::Nothing;
            }
        };
        let part = frame.payload().unwrap_or_default();
        let payload = match self.assembler.accept(message_id, position, part, now) {
            Ok(ChunkOutcome::Complete(payload)) => payload,
            Ok(ChunkOutcome::Pending | ChunkOutcome::Duplicate) => return Decision::Nothing,
            Err(e) => {
                self.counters.rejected_frames += 1;
                warn!(message_id = message_id, error = %e, "chunk rejected");
                return Decision::Nothing;
            }
        };
        let duplicate = !self.recent.insert(message_id, now);
        if duplicate {
            self.counters.duplicates += 1;
            // A redelivered card callback needs its answer again (the platform redelivers
            // a callback whose ack it did not get in time): it goes to the consumer, which
            // replays the answer by event_id. Any other duplicate is acked and dropped.
            if !EnvelopeHead::parse(&payload)
                .is_ok_and(|e| e.event_type == EVENT_TYPE_CARD_ACTION_TRIGGER)
            {
                debug!(
                    message_id = message_id,
                    "duplicate delivery acked, not forwarded"
                );
                return Decision::Ack {
                    frame,
                    reply: Reply::Ok,
                };
            }
            debug!(
                message_id = message_id,
                "duplicate card callback forwarded for its answer"
            );
        }
        // Routing needs the ids and the type only; the body is read by whoever handles it.
        let envelope = match EnvelopeHead::parse(&payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                warn!(
                    message_id = message_id,
                    trace_id = frame.trace_id(),
                    error = %e,
                    "payload is not an event envelope; answered 500"
                );
                return Decision::Ack {
                    frame,
                    reply: Reply::Failed,
                };
            }
        };
        if !duplicate {
            self.count_event(&envelope.event_type);
        }
        if envelope.event_type == EVENT_TYPE_CARD_ACTION_TRIGGER {
            let trigger = match EnvelopeRef::parse(&payload)
                .and_then(|full| full.deserialize_event::<CardActionTrigger>())
            {
                Ok(trigger) => trigger,
                Err(e) => {
                    warn!(message_id = message_id, error = %e, "card.action.trigger does not parse; answered 500");
                    return Decision::Ack {
                        frame,
                        reply: Reply::Failed,
                    };
                }
            };
            let message = Box::new(CardActionReceived {
                event_id: envelope.event_id.into_owned(),
                message_id: message_id.to_string(),
                trace_id: frame.trace_id().to_string(),
                trigger,
                payload: payload.clone(),
                conn_id: self.conn_id.clone(),
            });
            return Decision::Callback {
                frame,
                message,
                duplicate,
            };
        }
        let event = EventReceived {
            event_id: SharedStr::within(&payload, &envelope.event_id),
            event_type: SharedStr::within(&payload, &envelope.event_type),
            message_id: SharedStr::within(frame.bytes(), message_id),
            trace_id: SharedStr::within(frame.bytes(), frame.trace_id()),
            frame_kind: kind,
            payload,
            conn_id: self.conn_id.clone(),
        };
        Decision::Forward { frame, event }
    }

    fn count_event(&mut self, event_type: &str) {
        let Some(m) = &self.metrics else {
            return;
        };
        match self.event_counters.get(event_type) {
            Some(counter) => {
                counter.inc();
            }
            None if self.event_counters.len() >= EVENT_COUNTERS_CAPACITY => m.event(event_type),
            None => {
                let counter = m.event_counter(event_type);
                counter.inc();
                self.event_counters.insert(Box::from(event_type), counter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{Header, METHOD_CONTROL, METHOD_DATA};

    const LIMITS: InboundLimits = InboundLimits {
        dedup_window: Duration::from_secs(60),
        chunk_expiry: Duration::from_secs(10),
        max_frame_bytes: 1024,
    };

    fn inbound() -> Inbound {
        let mut inbound = Inbound::new(LIMITS);
        inbound.connected(Arc::from("conn-1"));
        inbound
    }

    fn fixture(name: &str) -> Bytes {
        let path = format!(
            "{}/tests/fixtures/frames/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    fn envelope(event_id: &str, event_type: &str) -> Vec<u8> {
        format!(
            r#"{{"schema":"2.0","header":{{"event_id":"{event_id}","event_type":"{event_type}","app_id":"cli_x"}},"event":{{"n":1}}}}"#
        )
        .into_bytes()
    }

    fn data_frame(message_id: &str, sum: u32, seq: u32, payload: &[u8]) -> Bytes {
        Frame {
            seq_id: 1,
            log_id: 2,
            service: 3,
            method: METHOD_DATA,
            headers: vec![
                Header::new("type", "event"),
                Header::new("message_id", message_id),
                Header::new("sum", sum.to_string()),
                Header::new("seq", seq.to_string()),
                Header::new("trace_id", "trace-1"),
            ],
            payload_encoding: None,
            payload_type: None,
            payload: Some(Bytes::copy_from_slice(payload)),
            log_id_new: None,
        }
        .encode_to_bytes()
    }

    fn binary(bytes: Bytes) -> Result<ws::Frame, ws::ProtocolError> {
        Ok(ws::Frame::Binary(bytes))
    }

    #[test]
    fn a_complete_event_is_forwarded_with_its_ids() {
        let mut inbound = inbound();
        let now = Instant::now();
        let frame = data_frame("m1", 1, 0, &envelope("e1", "im.message.receive_v1"));
        match inbound.on_ws_frame(binary(frame), now) {
            Decision::Forward { frame, event } => {
                assert_eq!(frame.message_id(), "m1");
                assert_eq!(event.event_id.as_str(), "e1");
                assert_eq!(&*event.event_type, "im.message.receive_v1");
                assert_eq!(event.message_id.as_str(), "m1");
                assert_eq!(event.trace_id.as_str(), "trace-1");
                assert_eq!(&*event.conn_id, "conn-1");
                assert_eq!(event.frame_kind, FrameKind::Event);
                assert_eq!(&event.payload[..], envelope("e1", "im.message.receive_v1"));
            }
            other => panic!("expected a forward, got {other:?}"),
        }
        assert_eq!(inbound.counters().data_frames_in, 1);
    }

    #[test]
    fn a_redelivered_event_is_acked_not_forwarded_until_the_window_passes() {
        let mut inbound = inbound();
        let now = Instant::now();
        let frame = data_frame("m1", 1, 0, &envelope("e1", "im.message.receive_v1"));
        assert!(matches!(
            inbound.on_ws_frame(binary(frame.clone()), now),
            Decision::Forward { .. }
        ));
        let again = now + Duration::from_secs(59);
        assert!(matches!(
            inbound.on_ws_frame(binary(frame.clone()), again),
            Decision::Ack {
                reply: Reply::Ok,
                ..
            }
        ));
        assert_eq!(inbound.counters().duplicates, 1);
        let later = now + Duration::from_secs(61);
        inbound.sweep(later);
        assert!(matches!(
            inbound.on_ws_frame(binary(frame), later),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn every_copy_of_a_card_callback_asks_for_its_answer() {
        let mut inbound = inbound();
        let now = Instant::now();
        let frame = fixture("event_card_action.bin");
        for expected_duplicate in [false, true, true] {
            match inbound.on_ws_frame(binary(frame.clone()), now) {
                Decision::Callback {
                    message, duplicate, ..
                } => {
                    assert_eq!(duplicate, expected_duplicate);
                    assert!(!message.event_id.is_empty());
                    assert_eq!(&*message.conn_id, "conn-1");
                }
                other => panic!("expected a callback, got {other:?}"),
            }
        }
        assert_eq!(inbound.counters().duplicates, 2);
    }

    #[test]
    fn chunks_are_joined_and_the_last_part_is_answered() {
        let mut inbound = inbound();
        let now = Instant::now();
        assert!(matches!(
            inbound.on_ws_frame(binary(fixture("event_chunk_1_of_2.bin")), now),
            Decision::Nothing
        ));
        match inbound.on_ws_frame(binary(fixture("event_chunk_2_of_2.bin")), now) {
            Decision::Forward { frame, event } => {
                assert_eq!(frame.chunk_position(64).unwrap().seq, 1);
                assert!(EnvelopeRef::parse(&event.payload).is_ok());
            }
            Decision::Callback { .. } => {}
            other => panic!("expected the joined message, got {other:?}"),
        }
        assert_eq!(inbound.counters().data_frames_in, 2);
    }

    #[test]
    fn an_incomplete_message_expires_and_its_late_part_does_not_complete_it() {
        let mut inbound = inbound();
        let now = Instant::now();
        let body = envelope("e2", "im.message.receive_v1");
        let (first, second) = body.split_at(body.len() / 2);
        assert!(matches!(
            inbound.on_ws_frame(binary(data_frame("m2", 2, 0, first)), now),
            Decision::Nothing
        ));
        assert_eq!(inbound.sweep(now + Duration::from_secs(11)), 1);
        assert!(matches!(
            inbound.on_ws_frame(
                binary(data_frame("m2", 2, 1, second)),
                now + Duration::from_secs(11)
            ),
            Decision::Nothing
        ));
    }

    #[test]
    fn a_connection_change_drops_partial_messages() {
        let mut inbound = inbound();
        let now = Instant::now();
        let body = envelope("e3", "im.message.receive_v1");
        let (first, second) = body.split_at(body.len() / 2);
        inbound.on_ws_frame(binary(data_frame("m3", 2, 0, first)), now);
        inbound.connected(Arc::from("conn-2"));
        assert!(matches!(
            inbound.on_ws_frame(binary(data_frame("m3", 2, 1, second)), now),
            Decision::Nothing
        ));
        // The old first part is gone: the second part alone does not complete the message;
        // the first part sent again on the new connection does.
        match inbound.on_ws_frame(binary(data_frame("m3", 2, 0, first)), now) {
            Decision::Forward { event, .. } => assert_eq!(&*event.conn_id, "conn-2"),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn a_payload_that_is_not_an_envelope_is_answered_500() {
        let mut inbound = inbound();
        let decision =
            inbound.on_ws_frame(binary(data_frame("m4", 1, 0, b"not json")), Instant::now());
        assert!(matches!(
            decision,
            Decision::Ack {
                reply: Reply::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_card_callback_that_does_not_parse_is_answered_500() {
        let mut inbound = inbound();
        let body = br#"{"schema":"2.0","header":{"event_id":"e5","event_type":"card.action.trigger"},"event":{"operator":42}}"#;
        let decision = inbound.on_ws_frame(binary(data_frame("m5", 1, 0, body)), Instant::now());
        assert!(matches!(
            decision,
            Decision::Ack {
                reply: Reply::Failed,
                ..
            }
        ));
    }

    #[test]
    fn undecodable_and_bad_chunk_frames_are_counted_and_dropped() {
        let mut inbound = inbound();
        let now = Instant::now();
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            inbound.on_ws_frame(binary(garbage), now),
            Decision::Nothing
        ));
        let body = envelope("e6", "x");
        assert!(matches!(
            inbound.on_ws_frame(binary(data_frame("m6", 2, 5, &body)), now),
            Decision::Nothing
        ));
        assert_eq!(inbound.counters().rejected_frames, 2);
    }

    #[test]
    fn control_frames_give_config_pong_and_close() {
        let mut inbound = inbound();
        let now = Instant::now();
        match inbound.on_ws_frame(binary(fixture("pong_with_config.bin")), now) {
            Decision::ServerConfig(config) => assert!(config.ping_interval.is_some()),
            other => panic!("expected a ClientConfig, got {other:?}"),
        }
        assert!(matches!(
            inbound.on_ws_frame(binary(fixture("pong_no_payload.bin")), now),
            Decision::Nothing
        ));
        assert!(matches!(
            inbound.on_ws_frame(binary(fixture("ping.bin")), now),
            Decision::Nothing
        ));
        match inbound.on_ws_frame(Ok(ws::Frame::Ping(Bytes::from_static(b"p"))), now) {
            Decision::Pong(payload) => assert_eq!(&payload[..], b"p"),
            other => panic!("expected a pong, got {other:?}"),
        }
        assert!(matches!(
            inbound.on_ws_frame(Ok(ws::Frame::Close(None)), now),
            Decision::Close(None)
        ));
        assert!(matches!(
            inbound.on_ws_frame(Err(ws::ProtocolError::UnmaskedFrame), now),
            Decision::ProtocolError(_)
        ));
        let control = Frame {
            seq_id: 0,
            log_id: 0,
            service: 1,
            method: METHOD_CONTROL,
            headers: vec![Header::new("type", "mystery")],
            payload_encoding: None,
            payload_type: None,
            payload: None,
            log_id_new: None,
        };
        assert!(matches!(
            inbound.on_ws_frame(binary(control.encode_to_bytes()), now),
            Decision::Nothing
        ));
        assert_eq!(inbound.counters(), InboundCounters::default());
    }

    #[test]
    fn fragmented_messages_are_joined_within_the_size_limit() {
        let mut inbound = inbound();
        let now = Instant::now();
        let frame = data_frame("m7", 1, 0, &envelope("e7", "im.message.receive_v1"));
        let (a, b) = frame.split_at(frame.len() / 2);
        assert!(matches!(
            inbound.on_ws_frame(
                Ok(ws::Frame::Continuation(ws::Item::FirstBinary(
                    Bytes::copy_from_slice(a)
                ))),
                now
            ),
            Decision::Nothing
        ));
        assert!(matches!(
            inbound.on_ws_frame(
                Ok(ws::Frame::Continuation(ws::Item::Last(
                    Bytes::copy_from_slice(b)
                ))),
                now
            ),
            Decision::Forward { .. }
        ));

        let big = vec![b'x'; 800];
        inbound.on_ws_frame(
            Ok(ws::Frame::Continuation(ws::Item::FirstBinary(
                Bytes::copy_from_slice(&big),
            ))),
            now,
        );
        assert!(matches!(
            inbound.on_ws_frame(
                Ok(ws::Frame::Continuation(ws::Item::Last(
                    Bytes::copy_from_slice(&big)
                ))),
                now
            ),
            Decision::Nothing
        ));
        assert_eq!(inbound.counters().rejected_frames, 1);
    }
}
