//! Authorization sessions against the sandbox: the card's language from the request or
//! the configured default, retries of a card send that failed for a retryable reason
//! (and none for a refusal), and the session metrics of a whole authorization.

mod sessions_common;

use std::time::Duration;

use lark_auth::config::AuthFlow;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::session::cards::CardLocale;
use lark_auth::session::machine::{FailureReason, SessionState};
use lark_auth::session::{StartAuthorization, StartAuthorizationWithLocale};
use sessions_common::*;

fn quick_retries(s: &mut lark_auth::session::SessionSettings) {
    s.card_send_retry.first_backoff = Duration::from_millis(20);
    s.card_send_retry.max_backoff = Duration::from_millis(80);
}

#[actix_rt::test]
async fn the_request_locale_picks_the_card_language_and_the_final_card_keeps_it() {
    // The configured default is English (harness).
    let h = start(AuthFlow::Device, false, |_| {}).await;
    let zh = h
        .router
        .send(StartAuthorizationWithLocale {
            open_id: USER.into(),
            scopes: vec!["auth:user.id:read".into()],
            locale: Some(CardLocale::ZhCn),
        })
        .await
        .unwrap()
        .unwrap();
    let user_code = h.user_code(1).await;
    assert_eq!(title(&h.sandbox.sent_cards()[0].card), "需要你的授权");

    // No locale: the configured default.
    let en = h
        .router
        .send(
            StartAuthorization {
                open_id: OTHER.into(),
                scopes: Vec::new(),
            }
            .with_locale(None),
        )
        .await
        .unwrap()
        .unwrap();
    h.user_code(2).await;
    assert_eq!(
        title(&h.sandbox.sent_cards()[1].card),
        "Authorization required"
    );

    h.sandbox.approve_device(&user_code, USER).unwrap();
    h.wait_for_state(&zh.session_id, SessionState::Authorized)
        .await;
    let patches = eventually("the authorized card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "已授权");
    assert!(!h.session(&en.session_id).await.state.is_terminal());
}

#[actix_rt::test]
async fn the_locale_survives_a_restart() {
    let mut h = start(AuthFlow::Device, false, |_| {}).await;
    let view = h
        .router
        .send(StartAuthorizationWithLocale {
            open_id: USER.into(),
            scopes: Vec::new(),
            locale: Some(CardLocale::ZhCn),
        })
        .await
        .unwrap()
        .unwrap();
    let user_code = h.user_code(1).await;
    h.wait_for_state(&view.session_id, SessionState::CardSent)
        .await;
    h.restart().await;
    h.sandbox.deny_device(&user_code, USER).unwrap();
    h.wait_for_state(&view.session_id, SessionState::Denied)
        .await;
    let patches = eventually("the declined card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "已拒绝");
}

#[actix_rt::test]
async fn retryable_send_failures_are_retried_and_the_card_goes_out_once() {
    let h = start(AuthFlow::Device, false, quick_retries).await;
    // The first three sends fail: a 500, a 503 and a rate limit; the fourth goes through.
    h.sandbox
        .inject_openapi_fault(OpenApiRoute::SendMessage, OpenApiFault::ServerError);
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::SendMessage,
        OpenApiFault::TemporarilyUnavailable,
    );
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::SendMessage,
        OpenApiFault::RateLimited { reset_secs: 0 },
    );
    let view = h.authorize(USER).await;
    let sent = h
        .wait_for_state(&view.session_id, SessionState::CardSent)
        .await;
    assert_eq!(sent.reason, None);
    let cards = h.sandbox.sent_cards();
    assert_eq!(cards.len(), 1);
    assert_eq!(cards[0].uuid.as_deref(), Some(view.session_id.as_str()));
}

#[actix_rt::test]
async fn a_send_still_failing_after_the_last_attempt_fails_the_session() {
    let h = start(AuthFlow::Device, false, |s| {
        quick_retries(s);
        s.card_send_retry.attempts = 3;
    })
    .await;
    for _ in 0..3 {
        h.sandbox
            .inject_openapi_fault(OpenApiRoute::SendMessage, OpenApiFault::ServerError);
    }
    let view = h.authorize(USER).await;
    let failed = h
        .wait_for_state(&view.session_id, SessionState::Failed)
        .await;
    assert_eq!(failed.reason, Some(FailureReason::CardNotSent));
    assert_eq!(failed.platform_code, Some(20_050));
    assert!(h.sandbox.sent_cards().is_empty());
}

#[actix_rt::test]
async fn a_refused_send_is_not_retried_and_fails_with_the_platform_code() {
    // A retry would wait a minute, far past the harness's 15-second wait.
    let h = start(AuthFlow::Device, false, |s| {
        s.card_send_retry.first_backoff = Duration::from_secs(60);
        s.card_send_retry.max_backoff = Duration::from_secs(60);
    })
    .await;
    // Not a user of the sandbox tenant: 230013, outside the bot's availability.
    let view = h.authorize("ou_not_in_the_tenant").await;
    let failed = h
        .wait_for_state(&view.session_id, SessionState::Failed)
        .await;
    assert_eq!(failed.reason, Some(FailureReason::CardNotSent));
    assert_eq!(failed.platform_code, Some(230_013));
    assert!(h.sandbox.sent_cards().is_empty());
}

#[actix_rt::test]
async fn an_authorized_session_shows_in_both_session_metric_families() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    let running = eventually("the session counted as running", || async {
        let text = h.metrics.encode();
        let n: i64 = ["created", "card_sent", "awaiting_user"]
            .iter()
            .map(|s| h.metrics.sessions_in_state(s))
            .sum();
        (n == 1).then_some(text)
    })
    .await;
    assert!(running.contains("lark_auth_sessions{state="), "{running}");

    h.sandbox.approve_device(&user_code, USER).unwrap();
    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
    let text = eventually("the finished session counted", || async {
        let text = h.metrics.encode();
        text.contains("lark_auth_sessions_finished_total{outcome=\"authorized\",reason=\"none\"} 1")
            .then_some(text)
    })
    .await;
    for state in ["created", "card_sent", "awaiting_user", "exchanging"] {
        let line = format!("lark_auth_sessions{{state=\"{state}\"}} 0");
        assert!(
            text.contains(&line) || !text.contains(&format!("state=\"{state}\"")),
            "{line} in {text}"
        );
    }
    assert!(text.contains("# TYPE lark_auth_sessions gauge"), "{text}");
}
