//! Authorization sessions in the device flow, driven through the RouterActor against the
//! sandbox: approval, decline, someone else's click, a forwarded link, expiry,
//! `slow_down`, a redelivered click, and a click answered while the token endpoint is slow.

mod sessions_common;

use std::time::Duration;

use lark_auth::config::AuthFlow;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::session::machine::{FailureReason, SessionState};
use sessions_common::*;

#[actix_rt::test]
async fn the_user_approves_on_the_device_page_and_the_grant_is_stored() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    let view = h.authorize(USER).await;
    assert_eq!(view.state, SessionState::Created);

    let user_code = h.user_code(1).await;
    let card = &h.sandbox.sent_cards()[0];
    assert_eq!(card.receive_id, USER);
    assert_eq!(card.uuid.as_deref(), Some(view.session_id.as_str()));
    assert_eq!(title(&card.card), "Authorization required");

    h.sandbox.approve_device(&user_code, USER).unwrap();
    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;

    let grant = h.grant(USER).await.expect("grant in the vault");
    assert_eq!(grant.identity.open_id, USER);
    assert!(!grant.access_token.is_empty() && !grant.refresh_token.is_empty());
    assert!(grant.scopes.iter().any(|s| s == "offline_access"));
    let patches = eventually("the authorized card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(patches[0].message_id, card.message_id);
    assert_eq!(title(&patches[0].card), "Authorized");
}

#[actix_rt::test]
async fn a_decline_click_ends_denied_with_a_toast_and_a_declined_card() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    h.user_code(1).await;

    let pushed = h.click("ev_decline_1", &view.session_id, USER, "decline");
    let ack = h.ack_of(&pushed).await;
    assert_eq!(ack_data(&ack)["toast"]["content"], "Authorization declined");
    h.wait_for_state(&view.session_id, SessionState::Denied)
        .await;
    let patches = eventually("the declined card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "Declined");
    assert!(h.grant(USER).await.is_none());
}

#[actix_rt::test]
async fn a_click_by_someone_else_gets_a_toast_and_changes_nothing() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;

    for (i, action) in ["decline", "authorize"].iter().enumerate() {
        let pushed = h.click(&format!("ev_intruder_{i}"), &view.session_id, OTHER, action);
        let ack = h.ack_of(&pushed).await;
        assert_eq!(
            ack_data(&ack)["toast"]["content"],
            "This authorization is for someone else"
        );
    }
    let now = h.session(&view.session_id).await;
    assert!(!now.state.is_terminal(), "{:?}", now.state);
    assert!(h.sandbox.card_patches().is_empty());

    // The session still works for its user.
    h.sandbox.approve_device(&user_code, USER).unwrap();
    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
}

#[actix_rt::test]
async fn a_link_approved_by_another_user_fails_wrong_user_and_stores_nothing() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    // The card's link was forwarded; someone else approved it.
    h.sandbox.approve_device(&user_code, OTHER).unwrap();

    let failed = h
        .wait_for_state(&view.session_id, SessionState::Failed)
        .await;
    assert_eq!(failed.reason, Some(FailureReason::WrongUser));
    assert!(h.grant(USER).await.is_none());
    assert!(h.grant(OTHER).await.is_none(), "the token was discarded");
    let patches = eventually("the failed card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "Authorization failed");
}

#[actix_rt::test]
async fn a_user_who_never_answers_expires_and_the_card_says_so() {
    let h = start(AuthFlow::Device, false, |s| {
        s.session_timeout = Duration::from_secs(2)
    })
    .await;
    let view = h.authorize(USER).await;
    h.user_code(1).await;
    h.wait_for_state(&view.session_id, SessionState::Expired)
        .await;
    let patches = eventually("the expired card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "Expired");
    assert!(h.grant(USER).await.is_none());
}

#[actix_rt::test]
async fn slow_down_adds_five_seconds_and_no_poll_comes_too_fast_after_it() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    h.sandbox
        .inject_openapi_fault(OpenApiRoute::UserToken, OpenApiFault::SlowDown);
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    h.sandbox.wait_for_token_requests(1, WAIT).await.unwrap();
    h.sandbox.approve_device(&user_code, USER).unwrap();

    let done = h
        .wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
    assert_eq!(done.poll_interval_secs, Some(6), "1 s + 5 s");
    let slow_downs = h
        .sandbox
        .token_requests()
        .iter()
        .filter(|r| r.error.as_deref() == Some("slow_down"))
        .count();
    assert_eq!(
        slow_downs, 1,
        "only the injected one: the sandbox never saw a poll inside the new interval"
    );
}

#[actix_rt::test]
async fn a_click_delivered_twice_makes_one_transition() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    h.user_code(1).await;

    let first = h.click("ev_twice", &view.session_id, USER, "decline");
    let first_ack = h.ack_of(&first).await;
    // The platform redelivers the same event (same event_id, new frame).
    let second = h.click("ev_twice", &view.session_id, USER, "decline");
    let second_ack = h.ack_of(&second).await;
    assert_eq!(ack_data(&first_ack), ack_data(&second_ack));
    assert_eq!(
        ack_data(&second_ack)["toast"]["content"],
        "Authorization declined"
    );
    h.wait_for_state(&view.session_id, SessionState::Denied)
        .await;
    eventually("the declined card", || async {
        (!h.sandbox.card_patches().is_empty()).then_some(())
    })
    .await;
    // A third, distinct click on the finished session is answered, not replayed.
    let third = h.click("ev_after", &view.session_id, USER, "decline");
    let third_ack = h.ack_of(&third).await;
    assert_eq!(
        ack_data(&third_ack)["toast"]["content"],
        "This authorization has already ended (denied)"
    );
    assert_eq!(
        h.sandbox.card_patches().len(),
        1,
        "one transition, one card"
    );
}

#[actix_rt::test]
async fn a_click_is_answered_within_the_budget_while_the_token_endpoint_is_slow() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    h.sandbox.approve_device(&user_code, USER).unwrap();
    // The next poll is processed (token issued) but answered 1.5 s late; the callback
    // budget is 0.5 s (Config::for_tests).
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_millis(1500)),
    );
    eventually("the delayed poll in flight", || async {
        h.sandbox
            .token_requests()
            .iter()
            .any(|r| matches!(r.fault, Some(OpenApiFault::Delay(_))))
            .then_some(())
    })
    .await;

    let pushed = h.click("ev_authorize", &view.session_id, USER, "authorize");
    let ack = h.ack_of(&pushed).await;
    assert_eq!(ack.code(), Some(200));
    assert_eq!(
        ack_data(&ack)["toast"]["content"],
        "Opening the authorization page",
        "answered with the toast, not left to the budget"
    );

    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
    let updates = eventually("the delayed card update", || async {
        let u = h.sandbox.delayed_card_updates();
        (!u.is_empty()).then_some(u)
    })
    .await;
    assert_eq!(title(&updates[0].card), "Authorized");
}
