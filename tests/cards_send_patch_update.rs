//! Cards through the IM API (§4): sent as a JSON string to an open_id with a uuid for
//! idempotent retry, PATCHed, and updated with a callback's token (30 min, 2 uses).

mod common;

use std::time::Duration;

use common::*;
use lark_auth::openapi::{OpenApiError, RetryAdvice};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::secret::Secret;
use serde_json::json;

fn card(text: &str) -> serde_json::Value {
    json!({
        "schema": "2.0",
        "config": {"update_multi": true},
        "header": {"title": {"tag": "plain_text", "content": "Authorization"}},
        "body": {"elements": [{"tag": "markdown", "content": text}]}
    })
}

#[actix_rt::test]
async fn a_card_is_sent_as_a_json_string_and_recorded_parsed() {
    let (sandbox, client) = openapi().await;
    let authorize_card = openapi_fixture("card_v2_authorize.json");
    let sent = client
        .send_card("ou_test_user_1", &authorize_card, Some("req-1"))
        .await
        .unwrap();
    assert!(sent.message_id.starts_with("om_"), "{}", sent.message_id);
    let cards = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    assert_eq!(cards[0].message_id, sent.message_id);
    assert_eq!(cards[0].receive_id, "ou_test_user_1");
    assert_eq!(cards[0].card, authorize_card);
    assert_eq!(cards[0].uuid.as_deref(), Some("req-1"));
    assert_eq!(sandbox.tenant_token_requests(), 1);
}

#[actix_rt::test]
async fn resending_with_the_same_uuid_sends_one_message() {
    let (sandbox, client) = openapi().await;
    let a = client
        .send_card("ou_test_user_1", &card("a"), Some("same"))
        .await
        .unwrap();
    let b = client
        .send_card("ou_test_user_1", &card("a"), Some("same"))
        .await
        .unwrap();
    assert_eq!(a.message_id, b.message_id);
    assert_eq!(sandbox.sent_cards().len(), 1);
    client
        .send_card("ou_test_user_1", &card("a"), None)
        .await
        .unwrap();
    assert_eq!(sandbox.sent_cards().len(), 2);
}

#[actix_rt::test]
async fn a_uuid_over_50_characters_is_refused_before_sending() {
    let (sandbox, client) = openapi().await;
    let long = "x".repeat(51);
    let err = client
        .send_card("ou_test_user_1", &card("a"), Some(&long))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenApiError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert!(sandbox.sent_cards().is_empty());
}

#[actix_rt::test]
async fn a_user_outside_the_availability_range_is_230013() {
    let (_sandbox, client) = openapi().await;
    let err = client
        .send_card("ou_stranger", &card("a"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(230_013));
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
}

#[actix_rt::test]
async fn a_malformed_2_0_card_is_230099() {
    let (_sandbox, client) = openapi().await;
    let bad = json!({"schema": "2.0", "elements": []});
    let err = client
        .send_card("ou_test_user_1", &bad, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(230_099));
}

#[actix_rt::test]
async fn content_over_30_kb_is_230025() {
    let (_sandbox, client) = openapi().await;
    let err = client
        .send_card("ou_test_user_1", &card(&"x".repeat(31 * 1024)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(230_025));
}

#[actix_rt::test]
async fn a_patch_replaces_the_card() {
    let (sandbox, client) = openapi().await;
    let sent = client
        .send_card("ou_test_user_1", &card("asking"), None)
        .await
        .unwrap();
    client
        .patch_card(&sent.message_id, &card("authorized"))
        .await
        .unwrap();
    let patches = sandbox.card_patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].message_id, sent.message_id);
    assert_eq!(patches[0].card, card("authorized"));
}

#[actix_rt::test]
async fn patching_a_message_older_than_14_days_is_230031() {
    let (sandbox, client) = openapi().await;
    let sent = client
        .send_card("ou_test_user_1", &card("asking"), None)
        .await
        .unwrap();
    sandbox.advance_time(Duration::from_secs(15 * 86_400));
    // The cached tenant token has expired on the sandbox clock: 99991663 drops it, and
    // the resend fetches a fresh one.
    let err = client
        .patch_card(&sent.message_id, &card("late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(99_991_663));
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    assert_eq!(sandbox.tenant_token_requests(), 1);
    let err = client
        .patch_card(&sent.message_id, &card("late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(230_031));
    assert_eq!(sandbox.tenant_token_requests(), 2);
    assert!(sandbox.card_patches().is_empty());
}

#[actix_rt::test]
async fn the_delayed_update_token_works_twice_then_300040() {
    let (sandbox, client) = openapi().await;
    let sent = client
        .send_card("ou_test_user_1", &card("asking"), None)
        .await
        .unwrap();
    let token = sandbox.issue_card_update_token(&sent.message_id);
    client
        .update_card_delayed(&token, &card("one"))
        .await
        .unwrap();
    client
        .update_card_delayed(&token, &card("two"))
        .await
        .unwrap();
    let err = client
        .update_card_delayed(&token, &card("three"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(300_040));
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
    let updates = sandbox.delayed_card_updates();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].message_id, sent.message_id);
    assert_eq!(updates[1].card, card("two"));
}

#[actix_rt::test]
async fn a_delayed_update_after_30_minutes_is_300030() {
    let (sandbox, client) = openapi().await;
    let sent = client
        .send_card("ou_test_user_1", &card("asking"), None)
        .await
        .unwrap();
    let token = sandbox.issue_card_update_token(&sent.message_id);
    sandbox.advance_time(Duration::from_secs(31 * 60));
    let err = client
        .update_card_delayed(&token, &card("late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(300_030));
    let err = client
        .update_card_delayed(&Secret::new("c-unknown".into()), &card("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(300_020));
}

#[actix_rt::test]
async fn a_rate_limited_send_says_how_long_to_wait() {
    let (sandbox, client) = openapi().await;
    sandbox.inject_openapi_fault(
        OpenApiRoute::SendMessage,
        OpenApiFault::RateLimited { reset_secs: 3 },
    );
    let err = client
        .send_card("ou_test_user_1", &card("a"), None)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(429), Some(99_991_400)));
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::After(Duration::from_secs(3))
    );
    assert!(err.log_id().is_some());
}

#[actix_rt::test]
async fn a_gateway_5xx_is_retryable_only_for_idempotent_calls() {
    let (sandbox, client) = openapi().await;
    sandbox.inject_openapi_fault(OpenApiRoute::SendMessage, OpenApiFault::HttpStatus(502));
    let err = client
        .send_card("ou_test_user_1", &card("a"), None)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(502), None));
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::DoNotRetry,
        "no uuid: could send twice"
    );
    sandbox.inject_openapi_fault(OpenApiRoute::SendMessage, OpenApiFault::HttpStatus(502));
    let err = client
        .send_card("ou_test_user_1", &card("a"), Some("u-1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::Backoff,
        "uuid makes it idempotent"
    );
    sandbox.inject_openapi_fault(OpenApiRoute::CardUpdate, OpenApiFault::ServerError);
    let token = sandbox.issue_card_update_token("om_x");
    let err = client
        .update_card_delayed(&token, &card("a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20050));
}

#[actix_rt::test]
async fn a_slow_send_times_out() {
    let (sandbox, client) = openapi_with(Default::default(), |config| {
        config.openapi.request_timeout = Duration::from_millis(300);
    })
    .await;
    client.tenant_access_token().await.unwrap();
    sandbox.inject_openapi_fault(
        OpenApiRoute::SendMessage,
        OpenApiFault::Delay(Duration::from_secs(2)),
    );
    let err = client
        .send_card("ou_test_user_1", &card("a"), Some("u-2"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenApiError::Timeout { .. }), "{err:?}");
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    // The retry with the same uuid does not send a second message.
    client
        .send_card("ou_test_user_1", &card("a"), Some("u-2"))
        .await
        .unwrap();
    assert_eq!(sandbox.sent_cards().len(), 1);
}
