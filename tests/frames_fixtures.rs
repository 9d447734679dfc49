//! The reference frames in `tests/fixtures/frames/` (protocol doc §10) decode to exactly what
//! `manifest.json` says, re-encode byte for byte, and the response frames are what this
//! crate builds from the received frames.

use std::path::PathBuf;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use lark_auth::protocol::chunk::{ChunkAssembler, ChunkOutcome};
use lark_auth::protocol::event::{
    ActionValue, CardActionResponse, CardActionTrigger, EVENT_TYPE_CARD_ACTION_TRIGGER,
    EnvelopeRef, Schema, Toast,
};
use lark_auth::protocol::{AckPayload, ChunkLimits, Frame, FrameKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_frame_file(name: &str) -> Bytes {
    let path = fixture_dir().join("frames").join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn decode(name: &str) -> Frame {
    Frame::decode_bytes(read_frame_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn manifest() -> Value {
    let path = fixture_dir().join("frames/manifest.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn manifest_entry(name: &str) -> Value {
    manifest()["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == name)
        .unwrap_or_else(|| panic!("{name} not in manifest"))
        .clone()
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn optional_string(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("not a string or null: {other}"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn every_fixture_decodes_as_the_manifest_says_and_reencodes_byte_for_byte() {
    let manifest = manifest();
    let files = manifest["files"].as_array().unwrap();
    let on_disk: Vec<String> = std::fs::read_dir(fixture_dir().join("frames"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    assert_eq!(on_disk.len(), files.len(), "every .bin is in the manifest");
    assert_eq!(files.len(), 11);

    for entry in files {
        let name = entry["file"].as_str().unwrap();
        assert!(on_disk.iter().any(|n| n == name), "{name} missing on disk");
        let bytes = read_frame_file(name);
        assert_eq!(
            bytes.len() as u64,
            entry["size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            sha256_hex(&bytes),
            entry["sha256"].as_str().unwrap(),
            "{name}"
        );
        if let Some(hex_text) = entry["hex"].as_str() {
            assert_eq!(hex::encode(&bytes), hex_text, "{name}");
        }

        let frame = decode(name);
        let want = &entry["frame"];
        assert_eq!(
            frame.seq_id,
            want["SeqID"].as_u64().unwrap(),
            "{name} SeqID"
        );
        assert_eq!(
            frame.log_id,
            want["LogID"].as_u64().unwrap(),
            "{name} LogID"
        );
        assert_eq!(
            i64::from(frame.service),
            want["service"].as_i64().unwrap(),
            "{name} service"
        );
        assert_eq!(
            i64::from(frame.method),
            want["method"].as_i64().unwrap(),
            "{name} method"
        );
        let headers: Vec<(String, String)> = frame
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        let want_headers: Vec<(String, String)> = want["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["key"].as_str().unwrap().to_string(),
                    h["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(headers, want_headers, "{name} headers");
        assert_eq!(
            frame.payload_encoding,
            optional_string(&want["payload_encoding"]),
            "{name} payload_encoding"
        );
        assert_eq!(
            frame.payload_type,
            optional_string(&want["payload_type"]),
            "{name} payload_type"
        );
        assert_eq!(
            frame.log_id_new,
            optional_string(&want["LogIDNew"]),
            "{name} LogIDNew"
        );
        let present = want["payload_present"].as_bool().unwrap();
        assert_eq!(frame.payload.is_some(), present, "{name} payload presence");
        if let Some(payload) = &frame.payload {
            assert_eq!(
                payload.len() as u64,
                want["payload_length"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(
                payload.as_ref(),
                b64(want["payload_base64"].as_str().unwrap()),
                "{name} payload"
            );
        }

        // Top-level fields are in ascending order (repeated headers share number 5), as prost
        // writes them, so a byte-exact re-encoding is possible.
        let numbers: Vec<u64> = entry["wire_fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_u64().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "{name} order");
        assert_eq!(
            frame.encode_to_bytes(),
            bytes,
            "{name} re-encodes byte for byte"
        );
    }
}

#[test]
fn ping_fixtures_match_the_builder() {
    let ping = read_frame_file("ping.bin");
    assert_eq!(Frame::ping(33554678).encode_to_bytes(), ping);

    let go = decode("ping_go_style.bin");
    assert_eq!(go.kind(), FrameKind::Ping);
    assert_eq!(decode("ping.bin").kind(), FrameKind::Ping);
    assert_eq!(go.payload_encoding.as_deref(), Some(""));
    assert_eq!(go.payload_type.as_deref(), Some(""));
    assert_eq!(go.log_id_new.as_deref(), Some(""));
    let normalised = Frame {
        payload_encoding: None,
        payload_type: None,
        log_id_new: None,
        ..go
    };
    assert_eq!(normalised, Frame::ping(33554678));
}

#[test]
fn pong_fixtures_classify_as_pong() {
    let with_config = decode("pong_with_config.bin");
    assert_eq!(with_config.kind(), FrameKind::Pong);
    let config: Value = serde_json::from_slice(with_config.payload.as_deref().unwrap()).unwrap();
    assert_eq!(config["PingInterval"], 120);
    assert_eq!(config["ReconnectCount"], -1);
    let without = decode("pong_no_payload.bin");
    assert_eq!(without.kind(), FrameKind::Pong);
    assert_eq!(without.payload, None);
}

#[test]
fn card_action_answers_match_response_fixtures() {
    let manifest_ok = manifest_entry("response_ok.bin");
    let data = b64(manifest_ok["frame"]["payload_json"]["data"]
        .as_str()
        .unwrap());
    // The data is the compact JSON of a toast-only callback response.
    let decoded: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(decoded, manifest_ok["decoded_data"]);
    let response = CardActionResponse {
        toast: Some(Toast::info("Declined")),
        card: None,
    };
    assert_eq!(response.to_json().unwrap(), data);

    let received = decode("event_card_action.bin");
    assert_eq!(received.kind(), FrameKind::Event);
    let ok = received
        .clone()
        .into_response(12, &AckPayload::ok_with_data(&data));
    assert_eq!(ok.encode_to_bytes(), read_frame_file("response_ok.bin"));

    let failed = received.into_response(0, &AckPayload::FAILED);
    assert_eq!(
        failed.encode_to_bytes(),
        read_frame_file("response_error.bin")
    );
}

#[test]
fn go_style_response_decodes_to_the_same_answer() {
    let go = decode("response_ok_go_style.bin");
    let ours = decode("response_ok.bin");
    assert_eq!(go.headers, ours.headers);
    assert_eq!((go.seq_id, go.log_id), (ours.seq_id, ours.log_id));
    let go_json: Value = serde_json::from_slice(go.payload.as_deref().unwrap()).unwrap();
    let our_json: Value = serde_json::from_slice(ours.payload.as_deref().unwrap()).unwrap();
    assert_eq!(go_json["code"], our_json["code"]);
    assert_eq!(go_json["data"], our_json["data"]);
    assert_eq!(go_json["headers"], Value::Null);
}

fn reassemble(order: [&str; 2]) -> (Bytes, Frame) {
    let mut assembler = ChunkAssembler::new(ChunkLimits::default());
    let now = Instant::now();
    let max_parts = assembler.limits().max_parts;
    let mut outcome = None;
    for (i, name) in order.iter().enumerate() {
        let mut frame = decode(name);
        assert_eq!(frame.kind(), FrameKind::Event);
        let position = frame.chunk_position(max_parts).unwrap();
        let part = frame.payload.take().unwrap();
        let result = assembler
            .accept(frame.message_id(), position, part, now)
            .unwrap();
        if i == 0 {
            assert_eq!(result, ChunkOutcome::Pending);
            assert_eq!(assembler.pending_messages(), 1);
        } else {
            let ChunkOutcome::Complete(merged) = result else {
                panic!("not complete: {result:?}");
            };
            outcome = Some((merged, frame));
        }
    }
    assert_eq!(assembler.pending_messages(), 0);
    assert_eq!(assembler.pending_bytes(), 0);
    outcome.unwrap()
}

#[test]
fn chunks_reassemble_in_either_order_to_the_manifest_payload() {
    let entry = manifest_entry("event_chunk_1_of_2.bin");
    assert!(entry["cut_is_inside_utf8_character"].as_bool().unwrap());
    let want_sha = entry["merged_payload_sha256"].as_str().unwrap();
    let want_len = entry["merged_payload_length"].as_u64().unwrap();
    for order in [
        ["event_chunk_1_of_2.bin", "event_chunk_2_of_2.bin"],
        ["event_chunk_2_of_2.bin", "event_chunk_1_of_2.bin"],
    ] {
        let (merged, _) = reassemble(order);
        assert_eq!(merged.len() as u64, want_len);
        assert_eq!(sha256_hex(&merged), want_sha, "{order:?}");
        let json: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(json, entry["merged_payload_json"]);

        let envelope = EnvelopeRef::parse(&merged).unwrap();
        assert_eq!(envelope.schema, Schema::V2);
        assert_eq!(envelope.event_type, "im.message.receive_v1");
        assert_eq!(envelope.event_id, "test_event_id_msg_0001");
        assert_eq!(envelope.create_time.as_deref(), Some("1767225600123"));
        let event: Value = serde_json::from_str(envelope.event.get()).unwrap();
        assert_eq!(
            event["message"]["content"],
            "{\"text\":\"授权 please / 请授权\"}"
        );
    }
}

#[test]
fn chunked_event_ack_is_built_from_the_completing_chunk() {
    let (_, completing) = reassemble(["event_chunk_1_of_2.bin", "event_chunk_2_of_2.bin"]);
    assert_eq!(completing.header("seq"), Some("1"));
    let ack = completing.into_response(3, &AckPayload::OK);
    assert_eq!(
        ack.encode_to_bytes(),
        read_frame_file("response_event_ok.bin")
    );
}

#[test]
fn card_action_payload_parses_as_card_action_trigger() {
    let frame = decode("event_card_action.bin");
    let payload = frame.payload.clone().unwrap();
    let envelope = EnvelopeRef::parse(&payload).unwrap();
    assert_eq!(envelope.event_type, EVENT_TYPE_CARD_ACTION_TRIGGER);
    assert!(envelope.is_card_action_trigger());
    assert_eq!(envelope.event_id, "test_event_id_card_0001");
    assert_eq!(envelope.app_id.as_deref(), Some("cli_test_app"));
    assert_eq!(envelope.tenant_key.as_deref(), Some("tenant_test_key"));
    assert!(!format!("{envelope:?}").contains("test_verification_token"));

    let trigger: CardActionTrigger = envelope.deserialize_event().unwrap();
    assert_eq!(
        trigger.action.value.get_str("session_id"),
        Some("sess_test_0001")
    );
    assert_eq!(trigger.action.value.get_str("action"), Some("decline"));
    assert_eq!(trigger.action.tag, "button");
    assert_eq!(trigger.action.name.as_deref(), Some("decline_button"));
    assert_eq!(trigger.operator.open_id, "ou_test_user_1");
    assert_eq!(trigger.operator.user_id.as_deref(), Some("test_user_1"));
    assert_eq!(trigger.token.expose(), "c-test_card_update_token_0001");
    assert_eq!(trigger.host.as_deref(), Some("im_message"));
    let context = trigger.context.as_ref().unwrap();
    assert_eq!(context.open_chat_id.as_deref(), Some("oc_test_chat_0001"));
    assert!(!format!("{trigger:?}").contains("c-test_card_update_token_0001"));
}

fn read_openapi(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join("openapi").join(name)).unwrap()
}

#[test]
fn openapi_card_triggers_parse() {
    let bytes = read_openapi("card_action_trigger.json");
    let env = EnvelopeRef::parse(&bytes).unwrap();
    let trigger: CardActionTrigger = env.deserialize_event().unwrap();
    assert_eq!(
        trigger.action.value.get_str("request_id"),
        Some("req_test_1")
    );

    let bytes = read_openapi("card_action_trigger_string_value.json");
    let env = EnvelopeRef::parse(&bytes).unwrap();
    assert_eq!(env.event_id, "evt_test_0000000000000002");
    let trigger: CardActionTrigger = env.deserialize_event().unwrap();
    assert_eq!(
        trigger.action.value,
        ActionValue::String("authorize".to_string())
    );
    assert_eq!(trigger.action.value.as_str(), Some("authorize"));
    assert_eq!(trigger.action.value.get_str("action"), None);
    assert_eq!(trigger.operator.user_id, None);
    assert_eq!(trigger.operator.open_id, "ou_test_user_2");

    let bytes = read_openapi("card_action_trigger_form.json");
    let env = EnvelopeRef::parse(&bytes).unwrap();
    let trigger: CardActionTrigger = env.deserialize_event().unwrap();
    let form = trigger.action.form_value.unwrap();
    assert_eq!(form["reason"], "need access");
    assert_eq!(form["targets"], serde_json::json!(["a", "b"]));
}

#[test]
fn openapi_card_responses_round_trip() {
    for name in [
        "card_action_response_toast.json",
        "card_action_response_raw_card.json",
        "card_action_response_template.json",
    ] {
        let bytes = read_openapi(name);
        let response: CardActionResponse = serde_json::from_slice(&bytes).unwrap();
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        let rendered: Value = serde_json::from_slice(&response.to_json().unwrap()).unwrap();
        assert_eq!(rendered, original, "{name}");
    }
    let toast: CardActionResponse =
        serde_json::from_slice(&read_openapi("card_action_response_toast.json")).unwrap();
    let i18n = toast.toast.unwrap().i18n.unwrap();
    assert_eq!(i18n["zh_cn"], "正在打开授权页面…");
}
