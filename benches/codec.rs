//! Hot-path costs of the protocol layer: one event from received bytes to the encoded
//! response frame, and reassembly of a two-part message.
//!
//! Run with `cargo bench --bench codec`; each benchmark runs about one second.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use lark_auth::protocol::chunk::{ChunkAssembler, ChunkOutcome};
use lark_auth::protocol::event::{CardActionResponse, CardActionTrigger, EnvelopeRef, Toast};
use lark_auth::protocol::{AckPayload, ChunkLimits, Frame};

fn fixture(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/frames")
        .join(name);
    Bytes::from(std::fs::read(path).expect("fixture"))
}

fn per_event(c: &mut Criterion) {
    let wire = fixture("event_card_action.bin");
    let answer = CardActionResponse {
        toast: Some(Toast::info("Declined")),
        card: None,
    }
    .to_json()
    .expect("json");

    c.bench_function("event: decode + envelope + into_response + encode", |b| {
        b.iter(|| {
            let mut frame = Frame::decode_bytes(black_box(wire.clone())).expect("decode");
            let payload = frame.payload.take().expect("payload");
            let envelope = EnvelopeRef::parse(&payload).expect("envelope");
            black_box(&envelope.event_id);
            let response = frame.into_response(12, &AckPayload::ok_with_data(&answer));
            black_box(response.encode_to_bytes())
        })
    });

    c.bench_function("event: + CardActionTrigger deserialize", |b| {
        b.iter(|| {
            let mut frame = Frame::decode_bytes(black_box(wire.clone())).expect("decode");
            let payload = frame.payload.take().expect("payload");
            let envelope = EnvelopeRef::parse(&payload).expect("envelope");
            let trigger: CardActionTrigger = envelope.deserialize_event().expect("trigger");
            black_box(&trigger);
            let response = frame.into_response(12, &AckPayload::ok_with_data(&answer));
            black_box(response.encode_to_bytes())
        })
    });
}

fn chunks(c: &mut Criterion) {
    let first = Frame::decode_bytes(fixture("event_chunk_1_of_2.bin")).expect("chunk 1");
    let second = Frame::decode_bytes(fixture("event_chunk_2_of_2.bin")).expect("chunk 2");
    let mut assembler = ChunkAssembler::new(ChunkLimits::default());
    let max = assembler.limits().max_parts;
    let parts = [
        (
            first.chunk_position(max).expect("pos"),
            first.payload.clone().expect("payload"),
        ),
        (
            second.chunk_position(max).expect("pos"),
            second.payload.clone().expect("payload"),
        ),
    ];
    let id = first.message_id().to_string();
    let now = Instant::now();

    c.bench_function("chunks: reassemble two-part message", |b| {
        b.iter(|| {
            for (position, part) in &parts {
                if let Ok(ChunkOutcome::Complete(bytes)) =
                    assembler.accept(black_box(&id), *position, part.clone(), now)
                {
                    black_box(bytes);
                }
            }
        })
    });

    let single = Frame::decode_bytes(fixture("event_card_action.bin")).expect("single");
    let single_pos = single.chunk_position(max).expect("pos");
    let single_part = single.payload.clone().expect("payload");
    c.bench_function("chunks: single-part pass-through", |b| {
        b.iter(|| {
            black_box(assembler.accept(
                black_box("test_msg_card_0001"),
                single_pos,
                single_part.clone(),
                now,
            ))
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = per_event, chunks
}
criterion_main!(benches);
