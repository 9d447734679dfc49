//! Pure helpers of the sandbox: building the data frames it pushes, and checking the
//! response frames clients send back (protocol doc §4.3, §6.1, §6.3). No I/O.

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use super::Shared;
use crate::protocol::Frame;
use crate::protocol::frame::{
    HEADER_BIZ_RT, HEADER_MESSAGE_ID, HEADER_SEQ, HEADER_SUM, HEADER_TRACE_ID, HEADER_TYPE, Header,
    METHOD_DATA, put_varint,
};

/// Splits `payload` into `parts` contiguous byte ranges of nearly equal length (§6.1).
///
/// Cuts ignore UTF-8 boundaries on purpose. Every part is at least one byte long (an empty
/// part reads as "missing" in the Python SDK, §6.1), so `parts` is capped at the payload
/// length; an empty payload gives one empty part.
pub fn split_payload(payload: &[u8], parts: usize) -> Vec<Bytes> {
    let parts = parts.clamp(1, payload.len().max(1));
    let whole = Bytes::copy_from_slice(payload);
    let base = payload.len() / parts;
    let extra = payload.len() % parts;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        out.push(whole.slice(start..start + len));
        start += len;
    }
    out
}

/// Builds the frames of one data message in `seq` order: each with its own fresh
/// `SeqID`/`LogID`, `service` = the sandbox's service id, `method` 1, headers
/// `type, message_id, sum, seq, trace_id` (§4.3) and `LogIDNew`.
pub(crate) fn build_data_frames(
    shared: &Shared,
    kind: &str,
    message_id: &str,
    number: u64,
    payload: &[u8],
    parts: usize,
) -> Vec<Frame> {
    let chunks = split_payload(payload, parts);
    let sum = chunks.len().to_string();
    chunks
        .into_iter()
        .enumerate()
        .map(|(seq, chunk)| {
            let (seq_id, log_id) = shared.next_ids();
            data_frame(
                shared.config.service_id,
                (seq_id, log_id),
                kind,
                message_id,
                &sum,
                seq,
                &format!("sandbox_trace_{number:06}"),
                chunk,
            )
        })
        .collect()
}

/// One data frame as the sandbox sends it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn data_frame(
    service: i32,
    (seq_id, log_id): (u64, u64),
    kind: &str,
    message_id: &str,
    sum: &str,
    seq: usize,
    trace_id: &str,
    payload: Bytes,
) -> Frame {
    Frame {
        seq_id,
        log_id,
        service,
        method: METHOD_DATA,
        headers: vec![
            Header::new(HEADER_TYPE, kind),
            Header::new(HEADER_MESSAGE_ID, message_id),
            Header::new(HEADER_SUM, sum),
            Header::new(HEADER_SEQ, seq.to_string()),
            Header::new(HEADER_TRACE_ID, trace_id),
        ],
        payload_encoding: None,
        payload_type: None,
        payload: Some(payload),
        log_id_new: Some(format!("sandbox-logid-new-{log_id}")),
    }
}

/// Number of bytes of `value` as a protobuf varint.
fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The fields of one data frame as the sandbox writes it, for [`encode_data_frame`].
pub(crate) struct DataFrameFields<'a> {
    pub(crate) service: i32,
    pub(crate) seq_id: u64,
    pub(crate) log_id: u64,
    pub(crate) kind: &'a [u8],
    pub(crate) message_id: &'a [u8],
    pub(crate) sum: &'a [u8],
    pub(crate) seq: &'a [u8],
    pub(crate) trace_id: &'a [u8],
    pub(crate) payload: &'a [u8],
    pub(crate) log_id_new: &'a [u8],
}

/// Appends the protobuf encoding of the frame [`data_frame`] builds from the same values,
/// byte for byte, without building a [`Frame`] (no header strings): the flood's hot path.
pub(crate) fn encode_data_frame(f: &DataFrameFields<'_>, out: &mut Vec<u8>) {
    fn len_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
        out.push(tag);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out.push(0x08);
    put_varint(out, f.seq_id);
    out.push(0x10);
    put_varint(out, f.log_id);
    out.push(0x18);
    // int32 on the wire: negative values sign-extended to 64 bits.
    put_varint(out, i64::from(f.service) as u64);
    out.push(0x20);
    put_varint(out, METHOD_DATA as u64);
    for (key, value) in [
        (HEADER_TYPE.as_bytes(), f.kind),
        (HEADER_MESSAGE_ID.as_bytes(), f.message_id),
        (HEADER_SUM.as_bytes(), f.sum),
        (HEADER_SEQ.as_bytes(), f.seq),
        (HEADER_TRACE_ID.as_bytes(), f.trace_id),
    ] {
        let len = 2
            + varint_len(key.len() as u64)
            + key.len()
            + varint_len(value.len() as u64)
            + value.len();
        out.push(0x2a);
        put_varint(out, len as u64);
        len_field(out, 0x0a, key);
        len_field(out, 0x12, value);
    }
    len_field(out, 0x42, f.payload);
    len_field(out, 0x4a, f.log_id_new);
}

/// The payload of a response frame as the sandbox understood it (§6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPayloadView {
    /// `code` (200 handled, 500 failed); `None` when absent or not an integer.
    pub code: Option<i64>,
    /// `data` decoded from standard base64; `None` when absent or `null`.
    pub data: Option<Vec<u8>>,
    /// True when `headers` was present and not `null` (no SDK fills it, §6.3).
    pub has_headers: bool,
}

#[derive(Deserialize)]
struct RawAck<'a> {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    headers: Option<serde_json::Value>,
}

impl AckPayloadView {
    /// Parses a response payload: a JSON object with `code`, optional `headers`, optional
    /// base64 `data` (any SDK's formatting, §6.3).
    ///
    /// # Errors
    /// A description when the payload is not such a JSON object or `data` is not base64.
    pub fn parse(payload: &[u8]) -> Result<AckPayloadView, String> {
        let raw: RawAck<'_> =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let data = match raw.data {
            None => None,
            Some(text) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| format!("data is not base64: {e}"))?,
            ),
        };
        Ok(AckPayloadView {
            code: raw.code.as_ref().and_then(serde_json::Value::as_i64),
            data,
            has_headers: raw.headers.is_some_and(|h| !h.is_null()),
        })
    }
}

/// Compares a response frame with the frame it answers (§6.3): `SeqID`, `LogID`,
/// `LogIDNew`, `service`, `method`, `payload_encoding`, `payload_type` unchanged (an empty
/// optional string equals an absent one, §4.1 rule 3), the pushed headers in order, then
/// exactly one `biz_rt` header holding a non-negative decimal number. Returns the
/// differences; empty means a faithful echo.
pub fn check_echo(pushed: &Frame, ack: &Frame) -> Vec<String> {
    fn opt(s: &Option<String>) -> &str {
        s.as_deref().unwrap_or("")
    }
    let mut errors = Vec::new();
    if ack.seq_id != pushed.seq_id {
        errors.push(format!("SeqID {} != pushed {}", ack.seq_id, pushed.seq_id));
    }
    if ack.log_id != pushed.log_id {
        errors.push(format!("LogID {} != pushed {}", ack.log_id, pushed.log_id));
    }
    if opt(&ack.log_id_new) != opt(&pushed.log_id_new) {
        errors.push(format!(
            "LogIDNew {:?} != pushed {:?}",
            ack.log_id_new, pushed.log_id_new
        ));
    }
    if ack.service != pushed.service {
        errors.push(format!(
            "service {} != pushed {}",
            ack.service, pushed.service
        ));
    }
    if ack.method != pushed.method {
        errors.push(format!("method {} != pushed {}", ack.method, pushed.method));
    }
    if opt(&ack.payload_encoding) != opt(&pushed.payload_encoding) {
        errors.push("payload_encoding changed".to_string());
    }
    if opt(&ack.payload_type) != opt(&pushed.payload_type) {
        errors.push("payload_type changed".to_string());
    }
    let n = pushed.headers.len();
    if ack.headers.len() < n || ack.headers[..n] != pushed.headers[..] {
        errors.push(format!(
            "headers are not the pushed ones in order: {:?}",
            ack.headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_str()))
                .collect::<Vec<_>>()
        ));
    }
    match ack.headers.get(n..) {
        Some([last]) if last.key == HEADER_BIZ_RT => {
            if last.value.parse::<u64>().is_err() {
                errors.push(format!(
                    "biz_rt {:?} is not a non-negative integer",
                    last.value
                ));
            }
        }
        Some([]) => errors.push("biz_rt header missing".to_string()),
        _ => errors.push("expected exactly one header (biz_rt) after the pushed ones".to_string()),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn fixture(name: &str) -> Frame {
        let path = format!(
            "{}/tests/fixtures/frames/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Frame::decode_bytes(Bytes::from(std::fs::read(path).unwrap())).unwrap()
    }

    #[test]
    fn split_payload_is_contiguous_and_never_empty() {
        let payload = "é".repeat(5);
        let parts = split_payload(payload.as_bytes(), 3);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| !p.is_empty()));
        assert_eq!(parts.concat(), payload.as_bytes());
        // 10 bytes in 3 parts: 4/3/3, the first cut inside a 2-byte character.
        assert_eq!(parts[0].len(), 4);
        assert_eq!(split_payload(b"ab", 5).len(), 2);
        assert_eq!(split_payload(b"", 3), vec![Bytes::new()]);
    }

    #[test]
    fn encoded_data_frames_equal_the_built_ones() {
        for (service, ids, seq, payload) in [
            (33554678, (1 << 53, (1 << 53) + 7), 0, &b"{\"a\":1}"[..]),
            (-2, (0, 1), 2, &[0xe6, 0x8e][..]),
            (1, (u64::MAX, 5), 1, &[b'x'; 300][..]),
        ] {
            let built = data_frame(
                service,
                ids,
                "event",
                "flood_3_17",
                "3",
                seq,
                "flood_trace_3_17",
                Bytes::copy_from_slice(payload),
            )
            .encode_to_vec();
            let log_id_new = format!("sandbox-logid-new-{}", ids.1);
            let seq = seq.to_string();
            let mut encoded = Vec::new();
            encode_data_frame(
                &DataFrameFields {
                    service,
                    seq_id: ids.0,
                    log_id: ids.1,
                    kind: b"event",
                    message_id: b"flood_3_17",
                    sum: b"3",
                    seq: seq.as_bytes(),
                    trace_id: b"flood_trace_3_17",
                    payload,
                    log_id_new: log_id_new.as_bytes(),
                },
                &mut encoded,
            );
            assert_eq!(encoded, built);
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(varint_len(v), buf.len(), "{v}");
        }
    }

    #[test]
    fn fixture_responses_are_faithful_echoes() {
        let pushed = fixture("event_card_action.bin");
        let ack = fixture("response_ok.bin");
        assert_eq!(check_echo(&pushed, &ack), Vec::<String>::new());
        let go = fixture("response_ok_go_style.bin");
        assert_eq!(check_echo(&pushed, &go), Vec::<String>::new());
        let view = AckPayloadView::parse(ack.payload.as_deref().unwrap()).unwrap();
        assert_eq!(view.code, Some(200));
        assert!(view.data.unwrap().starts_with(b"{\"toast\""));
        let go_view = AckPayloadView::parse(go.payload.as_deref().unwrap()).unwrap();
        assert!(!go_view.has_headers);
    }

    #[test]
    fn echo_errors_are_reported() {
        let pushed = fixture("event_card_action.bin");
        let mut ack = fixture("response_ok.bin");
        ack.log_id -= 1;
        ack.headers.swap(0, 1);
        let errors = check_echo(&pushed, &ack);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let mut ack = fixture("response_ok.bin");
        ack.headers.pop();
        assert_eq!(check_echo(&pushed, &ack), vec!["biz_rt header missing"]);
        let mut ack = fixture("response_ok.bin");
        ack.headers.last_mut().unwrap().value = "-3".into();
        assert_eq!(check_echo(&pushed, &ack).len(), 1);
    }

    #[test]
    fn python_style_payload_parses() {
        let view = AckPayloadView::parse(br#"{"code": 200, "data": "e30="}"#).unwrap();
        assert_eq!(view.code, Some(200));
        assert_eq!(view.data.as_deref(), Some(&b"{}"[..]));
        assert!(AckPayloadView::parse(b"nope").is_err());
        assert!(AckPayloadView::parse(br#"{"code":200,"data":"%%"}"#).is_err());
        let go = AckPayloadView::parse(br#"{"code":500,"headers":null,"data":null}"#).unwrap();
        assert_eq!((go.code, go.data), (Some(500), None));
    }
}
