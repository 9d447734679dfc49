//! `card.action.trigger` callbacks: the consumer's answer becomes the ack's `data`; a
//! late answer does not hold the ack past the budget; a refusal is answered 500.

mod common;

use std::time::Duration;

use common::*;

#[actix_rt::test]
async fn the_consumers_answer_is_sent_as_callback_data() {
    let h = start_connected().await;
    h.probe
        .set_callback_behaviour(CallbackBehaviour::Toast("Declined".into()));
    let message_id = h.sandbox.push_event(&card_action_json()).unwrap();

    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].message_id, message_id);
    assert_eq!(acks[0].code(), Some(200));
    assert!(
        acks[0].fidelity_errors.is_empty(),
        "{:?}",
        acks[0].fidelity_errors
    );
    let data: serde_json::Value = serde_json::from_slice(acks[0].data().unwrap()).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"toast": {"type": "info", "content": "Declined"}})
    );

    let seen = h.probe.seen.lock().unwrap();
    assert_eq!(seen.card_actions.len(), 1);
    let action = &seen.card_actions[0];
    assert_eq!(action.trigger.operator.open_id, "ou_test_user_1");
    assert_eq!(
        action.trigger.action.value.get_str("session_id"),
        Some("sess_test_0001")
    );
    assert_eq!(action.event_id, "test_event_id_card_0001");
    assert!(
        seen.events.is_empty(),
        "callbacks do not go to the event recipient"
    );
}

#[actix_rt::test]
async fn a_late_answer_is_not_waited_for_and_other_messages_flow_meanwhile() {
    // Budget 500 ms (Config::for_tests); the consumer takes 5 s.
    let h = start_connected().await;
    h.probe.set_callback_behaviour(CallbackBehaviour::Slow(
        Duration::from_secs(5),
        "too late".into(),
    ));
    let callback = h.sandbox.push_event(&card_action_json()).unwrap();
    let event = h
        .sandbox
        .push_event(&event_json("ev_meanwhile", "im.message.receive_v1"))
        .unwrap();
    let acks = h.sandbox.wait_for_acks(2, WAIT).await.unwrap();
    // The plain event is not queued behind the pending callback.
    assert_eq!(acks[0].message_id, event);
    assert_eq!(acks[1].message_id, callback);
    assert_eq!(acks[1].code(), Some(200));
    assert!(
        acks[1].data().is_none(),
        "no answer was ready within the budget"
    );
    let biz_rt: u64 = acks[1].biz_rt.as_deref().unwrap().parse().unwrap();
    assert!(biz_rt >= 500, "acked at the budget, biz_rt = {biz_rt}");
}

#[actix_rt::test]
async fn a_refusing_consumer_is_answered_500() {
    let h = start_connected().await;
    h.probe.set_callback_behaviour(CallbackBehaviour::Fail);
    h.sandbox.push_event(&card_action_json()).unwrap();
    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].code(), Some(500));
}
