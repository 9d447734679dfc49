//! Data messages: every complete message acked exactly once with an exact echo and
//! `biz_rt`; chunked messages reassembled; duplicates acked but forwarded once; bad input
//! rejected without harm.

mod common;

use std::time::Duration;

use common::*;
use lark_auth::connection::GetConnectionStatus;
use lark_auth::protocol::FrameKind;

#[actix_rt::test]
async fn an_event_is_acked_with_an_exact_echo_then_forwarded() {
    let h = start_connected().await;
    let payload = event_json("ev_1", "im.message.receive_v1");
    let message_id = h.sandbox.push_event(&payload).unwrap();

    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].message_id, message_id);
    assert_eq!(acks[0].code(), Some(200));
    assert!(acks[0].data().is_none());
    assert!(
        acks[0].fidelity_errors.is_empty(),
        "{:?}",
        acks[0].fidelity_errors
    );
    let biz_rt: u64 = acks[0].biz_rt.as_deref().unwrap().parse().unwrap();
    assert!(biz_rt < 1000);
    assert!(acks[0].frame.seq_id > 1 << 53, "large SeqID echoed exactly");

    h.probe
        .wait_until("event forwarded", |s| s.events.len() == 1)
        .await;
    let seen = h.probe.seen.lock().unwrap();
    let event = &seen.events[0];
    assert_eq!(event.event_id, "ev_1");
    assert_eq!(event.event_type, "im.message.receive_v1");
    assert_eq!(event.message_id, message_id);
    assert_eq!(event.frame_kind, FrameKind::Event);
    assert_eq!(&event.payload[..], &payload[..]);
}

#[actix_rt::test]
async fn a_chunked_event_out_of_order_is_reassembled_and_acked_once() {
    let h = start_connected().await;
    // Multi-byte characters make some cuts fall inside a UTF-8 sequence.
    let payload = event_json("ev_chunked", "im.message.receive_v1");
    let message_id = h.sandbox.push_chunked(&payload, 3, &[2, 0, 1]).unwrap();

    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].message_id, message_id);
    assert_eq!(acks[0].code(), Some(200));
    assert!(
        acks[0].fidelity_errors.is_empty(),
        "{:?}",
        acks[0].fidelity_errors
    );
    h.probe
        .wait_until("chunked event forwarded", |s| s.events.len() == 1)
        .await;
    assert_eq!(
        &h.probe.seen.lock().unwrap().events[0].payload[..],
        &payload[..]
    );
    // Only one ack for three parts.
    let more = h.sandbox.wait_for_acks(2, Duration::from_millis(300)).await;
    assert!(more.is_err(), "exactly one ack per message");
}

#[actix_rt::test]
async fn a_duplicate_delivery_is_acked_twice_but_forwarded_once() {
    let h = start_connected().await;
    let message_id = h
        .sandbox
        .push_event(&event_json("ev_dup", "im.message.receive_v1"))
        .unwrap();
    h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    h.sandbox.push_duplicate(&message_id).unwrap();
    let acks = h.sandbox.wait_for_acks(2, WAIT).await.unwrap();
    assert!(
        acks.iter()
            .all(|a| a.message_id == message_id && a.code() == Some(200))
    );
    // A third, different event proves the pipeline is past the duplicate.
    h.sandbox
        .push_event(&event_json("ev_after", "im.message.receive_v1"))
        .unwrap();
    h.probe
        .wait_until("second distinct event", |s| s.events.len() == 2)
        .await;
    let ids: Vec<_> = h
        .probe
        .seen
        .lock()
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(ids, ["ev_dup", "ev_after"]);
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.duplicates, 1);
}

#[actix_rt::test]
async fn a_type_card_frame_is_acked_not_dropped() {
    let h = start_connected().await;
    let message_id = h
        .sandbox
        .push_card_frame(&event_json("ev_card_frame", "some.callback"))
        .unwrap();
    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].message_id, message_id);
    assert_eq!(acks[0].code(), Some(200));
    h.probe
        .wait_until("card frame forwarded", |s| s.events.len() == 1)
        .await;
    assert_eq!(
        h.probe.seen.lock().unwrap().events[0].frame_kind,
        FrameKind::Card
    );
}

#[actix_rt::test]
async fn garbage_is_rejected_and_the_connection_goes_on() {
    let h = start_connected().await;
    h.sandbox
        .push_raw(vec![0xff, 0xff, 0xff, 0x01, 0x02])
        .unwrap();
    // A payload that is not an envelope: acked 500 so the platform redelivers.
    let bad = h.sandbox.push_event(b"{not json").unwrap();
    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].message_id, bad);
    assert_eq!(acks[0].code(), Some(500));
    h.sandbox
        .push_event(&event_json("ev_ok", "im.message.receive_v1"))
        .unwrap();
    h.probe
        .wait_until("event after garbage", |s| s.events.len() == 1)
        .await;
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.rejected_frames, 1);
    assert_eq!(status.connects, 1, "no reconnect was needed");
}

#[actix_rt::test]
async fn a_stuck_consumer_does_not_hold_back_acks() {
    let h = start_connected().await;
    // The consumer blocks on its first event until the gate opens.
    h.probe.set_gate_open(false);
    for i in 0..5 {
        h.sandbox
            .push_event(&event_json(
                &format!("ev_stuck_{i}"),
                "im.message.receive_v1",
            ))
            .unwrap();
    }
    let acks = h.sandbox.wait_for_acks(5, WAIT).await.unwrap();
    assert!(acks.iter().all(|a| a.code() == Some(200)));
    assert_eq!(
        h.probe.event_count(),
        0,
        "all acked while the consumer was stuck"
    );
    h.probe.set_gate_open(true);
    h.probe
        .wait_until("all five forwarded", |s| s.events.len() == 5)
        .await;
}

#[actix_rt::test]
async fn a_flood_is_acked_completely_and_pacing_spreads_it() {
    let h = start_connected().await;
    let report = h
        .sandbox
        .flood(lark_auth::sandbox::FloodSpec {
            count: 2_000,
            window: 64,
            chunked_parts: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((report.acked, report.non_200), (2_000, 0));
    let paced = h
        .sandbox
        .flood(lark_auth::sandbox::FloodSpec {
            count: 21,
            window: 64,
            rate_per_sec: Some(200),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(paced.acked, 21);
    // Event 20 is due 100 ms after the start at 200/s: pacing cannot finish sooner.
    assert!(paced.elapsed >= Duration::from_millis(100), "{paced:?}");
}
