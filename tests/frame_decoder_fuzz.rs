//! Hostile bytes never panic the protocol layer: the frame decoder, the envelope parser and
//! the card callback parser return errors instead (protocol doc §4.1, §6.2).

use std::path::PathBuf;

use bytes::Bytes;
use lark_auth::protocol::Frame;
use lark_auth::protocol::event::{CardActionTrigger, EnvelopeHead, EnvelopeRef};
use proptest::prelude::*;

fn fixtures() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frames");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 11);
    files
}

/// The routing head never disagrees with the full envelope parse where that succeeds.
fn head_agrees(payload: &[u8]) {
    let head = EnvelopeHead::parse(payload);
    if let Ok(full) = EnvelopeRef::parse(payload) {
        assert_eq!(head.unwrap(), EnvelopeHead::from(full));
    }
}

/// Exercises everything a receiver does with a decoded frame.
fn use_frame(bytes: Vec<u8>) {
    if let Ok(frame) = Frame::decode_bytes(Bytes::from(bytes)) {
        let _ = frame.kind();
        let _ = frame.chunk_position(64);
        let _ = frame.message_id();
        if let Some(payload) = frame.payload.clone() {
            head_agrees(&payload);
        }
        if let Some(payload) = frame.payload.clone()
            && let Ok(envelope) = EnvelopeRef::parse(&payload)
        {
            let _ = format!("{envelope:?}");
            let _ = envelope.deserialize_event::<CardActionTrigger>();
        }
        let encoded = frame.encode_to_bytes();
        // Whatever decodes re-encodes to something that decodes to the same frame.
        assert_eq!(Frame::decode_bytes(encoded).ok(), Some(frame));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        use_frame(bytes);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        index in 0usize..11,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = fixtures()[index].clone();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at),
            }
        }
        use_frame(bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\PC{0,200}") {
        head_agrees(text.as_bytes());
        let _ = CardActionTrigger::from_event_json(text.as_bytes());
    }

    #[test]
    fn arbitrary_payload_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        head_agrees(&bytes);
        let _ = CardActionTrigger::from_event_json(&bytes);
    }

    #[test]
    fn structured_envelopes_never_panic(
        event_id in prop_oneof![Just("\"e\"".to_string()), Just("1".to_string()), Just("null".to_string()), "\"[^\"\\\\]{0,8}\""],
        value in prop_oneof![Just("{}".to_string()), Just("\"s\"".to_string()), Just("[1]".to_string()), Just("null".to_string()), Just("true".to_string())],
        with_header in any::<bool>(),
    ) {
        let json = if with_header {
            format!(r#"{{"schema":"2.0","header":{{"event_id":{event_id},"event_type":"card.action.trigger"}},"event":{{"operator":{{"tenant_key":"t","open_id":"o"}},"action":{{"value":{value}}}}}}}"#)
        } else {
            format!(r#"{{"uuid":{event_id},"event":{{"type":"x","value":{value}}}}}"#)
        };
        head_agrees(json.as_bytes());
        if let Ok(envelope) = EnvelopeRef::parse(json.as_bytes()) {
            let _ = envelope.deserialize_event::<CardActionTrigger>();
        }
    }
}
