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

use bytes::Bytes;
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
        match (self.method, self.header(HEADER_TYPE)) {
            (METHOD_CONTROL, Some("ping")) => FrameKind::Ping,
            (METHOD_CONTROL, Some("pong")) => FrameKind::Pong,
            (METHOD_DATA, Some("event")) => FrameKind::Event,
            (METHOD_DATA, Some("card")) => FrameKind::Card,
            _ => FrameKind::Unknown,
        }
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
        fn parse(frame: &Frame, key: &'static str, default: u32) -> Result<u32, ProtocolError> {
            match frame.header(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| ProtocolError::BadChunkHeader {
                        reason: "sum/seq is not a decimal number",
                    }),
            }
        }
        let sum = parse(self, HEADER_SUM, 1)?;
        let seq = parse(self, HEADER_SEQ, 0)?;
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
