//! The long-connection `Frame` (protobuf package `pbbp2`, proto2) and typed access to it.
//!
//! Source: `lark-ws-protocol.md` §4 (schema, wire rules, header keys), §5 (ping/pong) and
//! §6.3 (the response frame). Every WebSocket binary message holds exactly one `Frame`.
//!
//! Wire rules kept here:
//! - fields 1–4 (`SeqID`, `LogID`, `service`, `method`) are `required` and always written,
//!   also when 0;
//! - optional fields 6/7/9 are written only when present; a Go-style empty-but-present
//!   string decodes to `Some("")` and re-encodes byte for byte;
//! - `SeqID`/`LogID` are exact `u64` values and are echoed unchanged in replies.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::ProtocolError;

/// `method` value of control frames (ping, pong). Source: protocol doc §4.2.
pub const METHOD_CONTROL: i32 = 0;
/// `method` value of data frames (events, callbacks and their responses). §4.2.
pub const METHOD_DATA: i32 = 1;

/// Header key naming the frame type (`ping`, `pong`, `event`, `card`). §4.3.
pub const HEADER_TYPE: &str = "type";
/// Header key of the id shared by all chunks of one data message. §4.3.
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Header key of the decimal chunk count (`1` when not split). §4.3.
pub const HEADER_SUM: &str = "sum";
/// Header key of the decimal 0-based chunk index. §4.3.
pub const HEADER_SEQ: &str = "seq";
/// Header key of the platform trace id (logged only). §4.3.
pub const HEADER_TRACE_ID: &str = "trace_id";
/// Header key the client appends to a response: handler run time in milliseconds. §4.3.
pub const HEADER_BIZ_RT: &str = "biz_rt";

/// One `pbbp2.Header`: a required key and a required value (both always written).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Header {
    /// Field 1, `key`.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Field 2, `value`.
    #[prost(string, required, tag = "2")]
    pub value: String,
}

impl Header {
    /// Builds a header from a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Header {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// One `pbbp2.Frame`, field for field as protocol doc §4.1 gives it.
#[derive(Clone, PartialEq, Message)]
pub struct Frame {
    /// Field 1, `SeqID` (uint64, required). Echoed exactly in replies.
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    /// Field 2, `LogID` (uint64, required). Echoed exactly in replies.
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    /// Field 3, `service` (int32, required): the `service_id` from the wss URL on pings.
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    /// Field 4, `method` (int32, required): [`METHOD_CONTROL`] or [`METHOD_DATA`].
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    /// Field 5, `headers`, in wire order. Replies copy them all and append `biz_rt`.
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    /// Field 6, `payload_encoding`. `Some("")` when a Go client wrote it empty.
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    /// Field 7, `payload_type`. `Some("")` when a Go client wrote it empty.
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    /// Field 8, `payload`: JSON bytes (a chunk of it for split messages).
    #[prost(bytes = "bytes", optional, tag = "8")]
    pub payload: Option<Bytes>,
    /// Field 9, `LogIDNew`.
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

/// What a frame is, from its `method` and its `type` header (§4.2, §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Control frame with `type=ping` (client → server; ignored when the server sends one).
    Ping,
    /// Control frame with `type=pong`; its payload may carry a `ClientConfig`.
    Pong,
    /// Data frame with `type=event`: events and new-style callbacks such as
    /// `card.action.trigger`. Must be answered once complete.
    Event,
    /// Data frame with `type=card` (old message-card callback). The official SDKs drop it
    /// unanswered; this client acks it and handles it like an event.
    Card,
    /// Anything else (unknown `method` or `type`): logged, never answered.
    Unknown,
}

impl FrameKind {
    /// True for kinds that are data messages which must be answered once complete.
    pub fn is_data(self) -> bool {
        matches!(self, FrameKind::Event | FrameKind::Card)
    }
}

/// The chunking headers of a data frame, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPosition {
    /// `sum`: number of chunks of the message, at least 1.
    pub sum: u32,
    /// `seq`: 0-based index of this chunk, less than `sum`.
    pub seq: u32,
}

impl Frame {
    /// Decodes one WebSocket binary message.
    ///
    /// # Errors
    /// [`ProtocolError::Decode`] when the bytes are not a valid `Frame`. Missing required
    /// fields are tolerated (they decode as 0), as every SDK but Python's does.
    pub fn decode_bytes(bytes: Bytes) -> Result<Frame, ProtocolError> {
        Frame::decode(bytes).map_err(ProtocolError::Decode)
    }

    /// Encodes the frame into a new buffer (fields in ascending number order).
    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// Builds the ping control frame: `SeqID=0, LogID=0, service=service_id, method=0,
    /// headers=[type=ping]`, no payload (§5; bytes equal `ping.bin`).
    pub fn ping(service_id: i32) -> Frame {
        Frame {
            seq_id: 0,
            log_id: 0,
            service: service_id,
            method: METHOD_CONTROL,
            headers: vec![Header::new(HEADER_TYPE, "ping")],
            payload_encoding: None,
            payload_type: None,
            payload: None,
            log_id_new: None,
        }
    }

    /// Builds a pong control frame with an optional `ClientConfig` JSON payload (what the
    /// server sends; used by the sandbox).
    pub fn pong(service_id: i32, payload: Option<Bytes>) -> Frame {
        Frame {
            seq_id: 0,
            log_id: 0,
            service: service_id,
            method: METHOD_CONTROL,
            headers: vec![Header::new(HEADER_TYPE, "pong")],
            payload_encoding: None,
            payload_type: None,
            payload,
            log_id_new: None,
        }
    }

    /// Returns the value of the first header named `key` (first match wins, §4.3).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    /// Classifies the frame by `method` and `type` header.
    pub fn kind(&self) -> FrameKind {
        kind_of(self.method, self.header(HEADER_TYPE))
    }

    /// The `message_id` header, or `""` when absent.
    pub fn message_id(&self) -> &str {
        self.header(HEADER_MESSAGE_ID).unwrap_or("")
    }

    /// The `trace_id` header, or `""` when absent.
    pub fn trace_id(&self) -> &str {
        self.header(HEADER_TRACE_ID).unwrap_or("")
    }

    /// Parses and checks the `sum`/`seq` headers of a data frame.
    ///
    /// Absent headers mean an unsplit message (`sum=1, seq=0`), as the Go SDK assumes.
    ///
    /// # Errors
    /// [`ProtocolError::BadChunkHeader`] when `sum` or `seq` is not a decimal `u32`,
    /// `sum` is 0 or above `max_sum`, or `seq >= sum`.
    pub fn chunk_position(&self, max_sum: u32) -> Result<ChunkPosition, ProtocolError> {
        chunk_position_of(self.header(HEADER_SUM), self.header(HEADER_SEQ), max_sum)
    }

    /// Turns a received data frame into its response frame (§6.3): every field and header
    /// kept as received, header `biz_rt` (milliseconds, decimal) appended, payload replaced
    /// by `response`.
    ///
    /// Consumes the frame so no header is copied; take the payload out first if it is still
    /// needed.
    pub fn into_response(mut self, biz_rt_ms: u64, response: &AckPayload<'_>) -> Frame {
        self.headers
            .push(Header::new(HEADER_BIZ_RT, biz_rt_ms.to_string()));
        self.payload = Some(Bytes::from(response.to_json()));
        self
    }
}

/// [`FrameKind`] from `method` and the first `type` header.
fn kind_of(method: i32, frame_type: Option<&str>) -> FrameKind {
    match (method, frame_type) {
        (METHOD_CONTROL, Some("ping")) => FrameKind::Ping,
        (METHOD_CONTROL, Some("pong")) => FrameKind::Pong,
        (METHOD_DATA, Some("event")) => FrameKind::Event,
        (METHOD_DATA, Some("card")) => FrameKind::Card,
        _ => FrameKind::Unknown,
    }
}

/// [`ChunkPosition`] from the first `sum` and `seq` headers (see
/// [`Frame::chunk_position`]).
fn chunk_position_of(
    sum: Option<&str>,
    seq: Option<&str>,
    max_sum: u32,
) -> Result<ChunkPosition, ProtocolError> {
    fn parse(value: Option<&str>, default: u32) -> Result<u32, ProtocolError> {
        match value {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| ProtocolError::BadChunkHeader {
                    reason: "sum/seq is not a decimal number",
                }),
        }
    }
    let sum = parse(sum, 1)?;
    let seq = parse(seq, 0)?;
    if sum == 0 {
        return Err(ProtocolError::BadChunkHeader { reason: "sum is 0" });
    }
    if sum > max_sum {
        return Err(ProtocolError::BadChunkHeader {
            reason: "sum exceeds the configured maximum number of parts",
        });
    }
    if seq >= sum {
        return Err(ProtocolError::BadChunkHeader {
            reason: "seq is not below sum",
        });
    }
    Ok(ChunkPosition { sum, seq })
}

/// Reads a protobuf varint at `*pos`, advancing it. `None` when truncated or longer than
/// ten bytes.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Reads the length of a length-delimited field and returns the range of its value.
fn read_len(buf: &[u8], pos: &mut usize) -> Option<Range<usize>> {
    let len = usize::try_from(read_varint(buf, pos)?).ok()?;
    let start = *pos;
    let end = start.checked_add(len).filter(|&end| end <= buf.len())?;
    *pos = end;
    Some(start..end)
}

/// Appends `value` as a protobuf varint.
pub(crate) fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Writes `value` in decimal at the end of `buf` and returns the digits.
pub(crate) fn decimal(buf: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[i..];
        }
    }
}

/// A received frame read in place (protocol doc §4.1): the positions of the fields the
/// data path needs, without decoding headers into owned strings, and the response (§6.3)
/// written from the received bytes.
///
/// [`FrameView::parse`] accepts only frames it can answer exactly as
/// [`Frame::into_response`] would: fields in ascending number order (as every SDK and the
/// platform write them), fields 1–4 present, fields other than `headers` at most once,
/// no unknown fields, every string valid UTF-8. For anything else it gives `None`; decode
/// such a frame with [`Frame::decode_bytes`].
#[derive(Debug, Clone)]
pub struct FrameView {
    bytes: Bytes,
    method: i32,
    /// Values of the first `type`, `message_id`, `sum`, `seq`, `trace_id` headers.
    kind_type: Option<Range<usize>>,
    message_id: Option<Range<usize>>,
    sum: Option<Range<usize>>,
    seq: Option<Range<usize>>,
    trace_id: Option<Range<usize>>,
    /// End of the last `headers` field: where a response appends `biz_rt`.
    headers_end: usize,
    /// The whole `payload` field (tag to end), or the empty range where it would be.
    payload_field: Range<usize>,
    /// The `payload` value.
    payload: Option<Range<usize>>,
}

impl FrameView {
    /// Reads `bytes` (one WebSocket binary message) in place; `None` when the frame is
    /// not one this view handles (see the type) or does not decode.
    pub fn parse(bytes: Bytes) -> Option<FrameView> {
        let buf = &bytes[..];
        let mut pos = 0;
        let mut last_field = 0u64;
        let mut required = 0u8;
        let mut method = 0i32;
        let mut slots: [Option<Range<usize>>; 5] = Default::default();
        let mut headers_end = None;
        let mut payload = None;
        let mut payload_field = None;
        while pos < buf.len() {
            let field_start = pos;
            let key = read_varint(buf, &mut pos)?;
            let (field, wire_type) = (key >> 3, key & 7);
            if field < last_field || (field == last_field && field != 5) {
                return None;
            }
            last_field = field;
            match (field, wire_type) {
                (1..=4, 0) => {
                    let value = read_varint(buf, &mut pos)?;
                    if field == 4 {
                        // prost's int32: the low 32 bits of the varint.
                        method = value as i32;
                    }
                    required |= 1 << field;
                }
                (5, 2) => {
                    let header = read_len(buf, &mut pos)?;
                    let (key, value) = parse_header(buf, header)?;
                    let slot = match &buf[key] {
                        b"type" => 0,
                        b"message_id" => 1,
                        b"sum" => 2,
                        b"seq" => 3,
                        b"trace_id" => 4,
                        _ => 5,
                    };
                    if let Some(slot) = slots.get_mut(slot)
                        && slot.is_none()
                    {
                        *slot = Some(value);
                    }
                    headers_end = Some(pos);
                }
                (6 | 7 | 9, 2) => {
                    let value = read_len(buf, &mut pos)?;
                    std::str::from_utf8(&buf[value]).ok()?;
                    if field == 9 && payload_field.is_none() {
                        payload_field = Some(field_start..field_start);
                    }
                }
                (8, 2) => {
                    payload = Some(read_len(buf, &mut pos)?);
                    payload_field = Some(field_start..pos);
                }
                _ => return None,
            }
        }
        if required != 0b1_1110 {
            return None;
        }
        let [kind_type, message_id, sum, seq, trace_id] = slots;
        Some(FrameView {
            method,
            kind_type,
            message_id,
            sum,
            seq,
            trace_id,
            headers_end: headers_end?,
            payload_field: payload_field.unwrap_or(buf.len()..buf.len()),
            payload,
            bytes,
        })
    }

    fn text(&self, range: &Option<Range<usize>>) -> Option<&str> {
        // Checked in `parse`; checking again costs a few ns and keeps this module safe.
        range
            .as_ref()
            .and_then(|r| std::str::from_utf8(&self.bytes[r.clone()]).ok())
    }

    /// Field 4, `method`.
    pub fn method(&self) -> i32 {
        self.method
    }

    /// Classifies the frame as [`Frame::kind`] does.
    pub fn kind(&self) -> FrameKind {
        kind_of(self.method, self.text(&self.kind_type))
    }

    /// The first `message_id` header, or `""` when absent.
    pub fn message_id(&self) -> &str {
        self.text(&self.message_id).unwrap_or("")
    }

    /// The first `trace_id` header, or `""` when absent.
    pub fn trace_id(&self) -> &str {
        self.text(&self.trace_id).unwrap_or("")
    }

    /// Parses and checks `sum`/`seq` as [`Frame::chunk_position`] does.
    ///
    /// # Errors
    /// As [`Frame::chunk_position`].
    pub fn chunk_position(&self, max_sum: u32) -> Result<ChunkPosition, ProtocolError> {
        chunk_position_of(self.text(&self.sum), self.text(&self.seq), max_sum)
    }

    /// The `payload` (a slice of the received message, no copy).
    pub fn payload(&self) -> Option<Bytes> {
        self.payload.clone().map(|r| self.bytes.slice(r))
    }

    /// The received message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes the whole frame.
    ///
    /// # Errors
    /// Not expected for a parsed view; [`ProtocolError::Decode`] as [`Frame::decode_bytes`].
    pub fn to_frame(&self) -> Result<Frame, ProtocolError> {
        Frame::decode_bytes(self.bytes.clone())
    }

    /// Appends the response frame (§6.3) to `out`: the received bytes with header
    /// `biz_rt` appended after the last header and the payload replaced by `response`.
    /// Equal, byte for byte, to `into_response(biz_rt_ms, response)` of the decoded frame.
    pub fn write_response(&self, biz_rt_ms: u64, response: &AckPayload<'_>, out: &mut BytesMut) {
        let buf = &self.bytes[..];
        let mut digits = [0u8; 20];
        let digits = decimal(&mut digits, biz_rt_ms);
        response.with_json(|json| {
            out.reserve(buf.len() + HEADER_BIZ_RT.len() + digits.len() + json.len() + 16);
            out.extend_from_slice(&buf[..self.headers_end]);
            // Header { key = "biz_rt", value = digits }: both lengths fit one varint byte.
            out.put_u8(0x2a);
            out.put_u8((4 + HEADER_BIZ_RT.len() + digits.len()) as u8);
            out.put_u8(0x0a);
            out.put_u8(HEADER_BIZ_RT.len() as u8);
            out.extend_from_slice(HEADER_BIZ_RT.as_bytes());
            out.put_u8(0x12);
            out.put_u8(digits.len() as u8);
            out.extend_from_slice(digits);
            out.extend_from_slice(&buf[self.headers_end..self.payload_field.start]);
            out.put_u8(0x42);
            put_varint(out, json.len() as u64);
            out.extend_from_slice(json);
            out.extend_from_slice(&buf[self.payload_field.end..]);
        });
    }
}

/// Reads one `Header` message; returns the ranges of its key and value (empty ranges when
/// absent, as prost decodes them). `None` when malformed, a field repeats, a field is
/// unknown or a string is not UTF-8.
fn parse_header(buf: &[u8], range: Range<usize>) -> Option<(Range<usize>, Range<usize>)> {
    let end = range.end;
    let sub = &buf[..end];
    let mut pos = range.start;
    let (mut key, mut value) = (None, None);
    while pos < end {
        let tag = read_varint(sub, &mut pos)?;
        let slot = match tag {
            0x0a => &mut key,
            0x12 => &mut value,
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        let r = read_len(sub, &mut pos)?;
        std::str::from_utf8(&buf[r.clone()]).ok()?;
        *slot = Some(r);
    }
    Some((key.unwrap_or(end..end), value.unwrap_or(end..end)))
}

/// The JSON payload of a response frame: `{"code":<code>}` or
/// `{"code":<code>,"data":"<base64 of data>"}` (compact form, as `response_ok.bin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPayload<'a> {
    /// HTTP-like status: 200 handled, 500 failed (the platform then re-pushes). §6.3.
    pub code: u16,
    /// Callback answer (UTF-8 JSON such as `{"toast":…}`), base64-encoded into `data`.
    pub data: Option<&'a [u8]>,
}

impl AckPayload<'static> {
    /// `{"code":200}`: the message was handled (or safely queued).
    pub const OK: AckPayload<'static> = AckPayload {
        code: 200,
        data: None,
    };
    /// `{"code":500}`: handling failed; the platform will deliver again.
    pub const FAILED: AckPayload<'static> = AckPayload {
        code: 500,
        data: None,
    };
}

impl<'a> AckPayload<'a> {
    /// A 200 answer carrying a callback response body (JSON bytes).
    pub fn ok_with_data(data: &'a [u8]) -> Self {
        AckPayload {
            code: 200,
            data: Some(data),
        }
    }

    /// Calls `f` with the compact JSON text; without `data` the text is built on the
    /// stack (the ack of every plain event).
    pub fn with_json<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        if self.data.is_some() {
            return f(&self.to_json());
        }
        const OPEN: &[u8] = b"{\"code\":";
        let mut text = [0u8; 16];
        let mut digits = [0u8; 20];
        let digits = decimal(&mut digits, u64::from(self.code));
        text[..OPEN.len()].copy_from_slice(OPEN);
        text[OPEN.len()..OPEN.len() + digits.len()].copy_from_slice(digits);
        let len = OPEN.len() + digits.len() + 1;
        text[len - 1] = b'}';
        f(&text[..len])
    }

    /// Renders the compact JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        use base64::Engine as _;
        let mut out = Vec::with_capacity(
            16 + self
                .data
                .map_or(0, |d| base64::encoded_len(d.len(), true).unwrap_or(0) + 10),
        );
        out.extend_from_slice(b"{\"code\":");
        out.extend_from_slice(self.code.to_string().as_bytes());
        if let Some(data) = self.data {
            out.extend_from_slice(b",\"data\":\"");
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_matches_the_documented_bytes() {
        let bytes = Frame::ping(33554678).encode_to_vec();
        let expected = [
            0x08, 0x00, 0x10, 0x00, 0x18, 0xf6, 0x81, 0x80, 0x10, 0x20, 0x00, 0x2a, 0x0c, 0x0a,
            0x04, 0x74, 0x79, 0x70, 0x65, 0x12, 0x04, 0x70, 0x69, 0x6e, 0x67,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn ack_payload_json_forms() {
        assert_eq!(AckPayload::OK.to_json(), br#"{"code":200}"#);
        assert_eq!(AckPayload::FAILED.to_json(), br#"{"code":500}"#);
        assert_eq!(
            AckPayload::ok_with_data(br#"{"toast":{"type":"info","content":"Declined"}}"#)
                .to_json(),
            br#"{"code":200,"data":"eyJ0b2FzdCI6eyJ0eXBlIjoiaW5mbyIsImNvbnRlbnQiOiJEZWNsaW5lZCJ9fQ=="}"#
        );
    }

    fn fixture(name: &str) -> Bytes {
        let path = format!(
            "{}/tests/fixtures/frames/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Bytes::from(std::fs::read(path).unwrap())
    }

    fn assert_view_answers_like_the_decoded_frame(bytes: Bytes) {
        let view = FrameView::parse(bytes.clone()).expect("view");
        let frame = Frame::decode_bytes(bytes).unwrap();
        assert_eq!(view.kind(), frame.kind());
        assert_eq!(view.method(), frame.method);
        assert_eq!(view.message_id(), frame.message_id());
        assert_eq!(view.trace_id(), frame.trace_id());
        assert_eq!(view.chunk_position(64).ok(), frame.chunk_position(64).ok());
        assert_eq!(view.payload(), frame.payload);
        let data = br#"{"toast":{"type":"info","content":"ok"}}"#;
        for payload in [
            AckPayload::OK,
            AckPayload::FAILED,
            AckPayload::ok_with_data(data),
        ] {
            for biz_rt in [0, 7, 1234, u64::MAX] {
                let mut out = BytesMut::new();
                view.write_response(biz_rt, &payload, &mut out);
                let expected = frame
                    .clone()
                    .into_response(biz_rt, &payload)
                    .encode_to_vec();
                assert_eq!(&out[..], &expected[..], "biz_rt {biz_rt}, {payload:?}");
            }
        }
    }

    #[test]
    fn view_reads_frames_and_answers_byte_for_byte_like_into_response() {
        for name in [
            "event_card_action.bin",
            "event_chunk_1_of_2.bin",
            "event_chunk_2_of_2.bin",
            "ping.bin",
            "ping_go_style.bin",
            "pong_with_config.bin",
        ] {
            assert_view_answers_like_the_decoded_frame(fixture(name));
        }
        // Go style (empty optional strings present), no payload, a big service id.
        let mut frame = Frame::decode_bytes(fixture("event_card_action.bin")).unwrap();
        frame.payload_encoding = Some(String::new());
        frame.payload_type = Some(String::new());
        frame.log_id_new = Some(String::new());
        assert_view_answers_like_the_decoded_frame(frame.encode_to_bytes());
        frame.payload = None;
        frame.service = -5;
        assert_view_answers_like_the_decoded_frame(frame.encode_to_bytes());
        frame.log_id_new = None;
        assert_view_answers_like_the_decoded_frame(frame.encode_to_bytes());
    }

    #[test]
    fn view_refuses_frames_it_cannot_echo_exactly() {
        let bytes = fixture("event_card_action.bin").to_vec();
        // Truncated.
        assert!(FrameView::parse(Bytes::from(bytes[..bytes.len() - 1].to_vec())).is_none());
        // An unknown field (prost skips it; the view would echo it).
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[0x50, 0x01]);
        assert!(Frame::decode_bytes(Bytes::from(unknown.clone())).is_ok());
        assert!(FrameView::parse(Bytes::from(unknown)).is_none());
        // `method` before `SeqID`.
        let mut frame = Frame::ping(1);
        frame.seq_id = 0;
        let encoded = frame.encode_to_vec();
        assert_eq!(&encoded[..2], &[0x08, 0x00]);
        let mut reordered = encoded[2..].to_vec();
        reordered.extend_from_slice(&[0x08, 0x00]);
        assert!(FrameView::parse(Bytes::from(reordered)).is_none());
        // `SeqID` missing.
        assert!(FrameView::parse(Bytes::from(encoded[2..].to_vec())).is_none());
        // Not UTF-8 in a header value.
        let mut frame = Frame::ping(1);
        frame.headers[0].value = "pin\u{e9}".into();
        let mut bad = frame.encode_to_vec();
        let at = bad.len() - 2;
        bad[at] = 0xff;
        assert!(FrameView::parse(Bytes::from(bad)).is_none());
    }

    #[test]
    fn decimal_and_small_json() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(&mut buf, 0), b"0");
        assert_eq!(decimal(&mut buf, u64::MAX), u64::MAX.to_string().as_bytes());
        AckPayload::OK.with_json(|j| assert_eq!(j, br#"{"code":200}"#));
        AckPayload::FAILED.with_json(|j| assert_eq!(j, br#"{"code":500}"#));
    }

    #[test]
    fn chunk_position_rejects_bad_headers() {
        let mut frame = Frame::ping(1);
        frame.method = METHOD_DATA;
        frame.headers = vec![Header::new("sum", "2"), Header::new("seq", "2")];
        assert!(frame.chunk_position(64).is_err());
        frame.headers = vec![Header::new("sum", "0"), Header::new("seq", "0")];
        assert!(frame.chunk_position(64).is_err());
        frame.headers = vec![Header::new("sum", "x"), Header::new("seq", "0")];
        assert!(frame.chunk_position(64).is_err());
        frame.headers = vec![Header::new("sum", "65"), Header::new("seq", "0")];
        assert!(frame.chunk_position(64).is_err());
        frame.headers = vec![Header::new("sum", "3"), Header::new("seq", "2")];
        assert_eq!(
            frame.chunk_position(64).unwrap(),
            ChunkPosition { sum: 3, seq: 2 }
        );
        frame.headers.clear();
        assert_eq!(
            frame.chunk_position(64).unwrap(),
            ChunkPosition { sum: 1, seq: 0 }
        );
    }
}
