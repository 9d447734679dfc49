//! Device authorization grant (§2.6): the user approves, refuses or never answers; polling
//! too fast is answered `slow_down`; outcomes are values, not errors.

mod common;

use std::time::Duration;

use common::*;
use lark_auth::openapi::oauth::next_poll_interval;
use lark_auth::openapi::{DevicePoll, OpenApiError, RetryAdvice};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, SandboxConfig, UserActionError};

#[actix_rt::test]
async fn pending_then_slow_down_then_approved() {
    let (sandbox, client) = openapi().await;
    let device = client
        .request_device_authorization(&["auth:user.id:read"])
        .await
        .unwrap();
    assert_eq!(device.interval, Duration::from_secs(5));
    assert_eq!(device.expires_in, Duration::from_secs(240));
    assert_eq!(
        query_param(&device.verification_uri_complete, "user_code").as_deref(),
        Some(device.user_code.as_str())
    );
    assert!(!format!("{device:?}").contains(device.device_code.expose().as_str()));

    let first = client.poll_device_token(&device.device_code).await.unwrap();
    assert_eq!(first, DevicePoll::Pending);
    let second = client.poll_device_token(&device.device_code).await.unwrap();
    assert_eq!(second, DevicePoll::SlowDown, "polled again at once");
    let interval = next_poll_interval(device.interval, &second);
    assert_eq!(interval, Duration::from_secs(10));

    sandbox
        .approve_device(&device.user_code, "ou_test_user_1")
        .unwrap();
    sandbox.advance_time(interval);
    let DevicePoll::Granted(grant) = client.poll_device_token(&device.device_code).await.unwrap()
    else {
        panic!("approved device code must yield a grant");
    };
    assert!(grant.scope.contains("offline_access"), "{}", grant.scope);
    assert!(grant.refresh_token.is_some());
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, "ou_test_user_1");

    let requests = sandbox.token_requests();
    assert!(
        requests
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/x-www-form-urlencoded")),
        "device polls are form bodies"
    );
    sandbox.advance_time(interval);
    let again = client.poll_device_token(&device.device_code).await.unwrap();
    assert_eq!(
        again,
        DevicePoll::Expired,
        "a redeemed device code is spent"
    );
}

#[actix_rt::test]
async fn a_refusal_is_access_denied() {
    let (sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    sandbox
        .deny_device(&device.user_code, "ou_test_user_1")
        .unwrap();
    let poll = client.poll_device_token(&device.device_code).await.unwrap();
    assert_eq!(poll, DevicePoll::Denied);
}

#[actix_rt::test]
async fn a_user_who_never_answers_ends_in_expired_token() {
    let (sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    assert_eq!(
        client.poll_device_token(&device.device_code).await.unwrap(),
        DevicePoll::Pending
    );
    sandbox.advance_time(device.expires_in);
    assert_eq!(
        client.poll_device_token(&device.device_code).await.unwrap(),
        DevicePoll::Expired
    );
    assert_eq!(
        sandbox.approve_device(&device.user_code, "ou_test_user_1"),
        Err(UserActionError::DeviceCodeInvalid)
    );
}

#[actix_rt::test]
async fn approval_by_someone_else_shows_in_user_info() {
    let (sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    // The link meant for ou_test_user_1 was forwarded and approved by ou_test_user_2.
    sandbox
        .approve_device(&device.user_code, "ou_test_user_2")
        .unwrap();
    let DevicePoll::Granted(grant) = client.poll_device_token(&device.device_code).await.unwrap()
    else {
        panic!("expected a grant");
    };
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, "ou_test_user_2");
    assert_ne!(info.open_id, "ou_test_user_1");
}

#[actix_rt::test]
async fn an_unknown_user_cannot_approve() {
    let (sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    assert_eq!(
        sandbox.approve_device(&device.user_code, "ou_nobody"),
        Err(UserActionError::UnknownUser("ou_nobody".into()))
    );
    assert_eq!(
        sandbox.approve_device("NOPE-NOPE", "ou_test_user_1"),
        Err(UserActionError::UnknownUserCode)
    );
}

#[actix_rt::test]
async fn device_authorization_with_a_wrong_secret_is_invalid_client() {
    let (_sandbox, client) = openapi_with(SandboxConfig::default(), |config| {
        config.app.credentials.as_mut().unwrap().app_secret =
            lark_auth::secret::Secret::new("wrong-secret-value".into());
    })
    .await;
    let err = client.request_device_authorization(&[]).await.unwrap_err();
    let OpenApiError::Api(failure) = &err else {
        panic!("expected an API error: {err:?}");
    };
    assert_eq!(failure.status, 401);
    assert_eq!(failure.error.as_deref(), Some("invalid_client"));
    assert!(!format!("{err} {err:?}").contains("wrong-secret-value"));
}

#[actix_rt::test]
async fn a_poll_that_meets_a_server_error_or_rate_limit_can_be_repeated() {
    let (sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    sandbox.inject_openapi_fault(OpenApiRoute::UserToken, OpenApiFault::ServerError);
    let err = client
        .poll_device_token(&device.device_code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20050));
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::RateLimited { reset_secs: 2 },
    );
    let err = client
        .poll_device_token(&device.device_code)
        .await
        .unwrap_err();
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::After(Duration::from_secs(2))
    );
    sandbox
        .approve_device(&device.user_code, "ou_test_user_1")
        .unwrap();
    assert!(matches!(
        client.poll_device_token(&device.device_code).await.unwrap(),
        DevicePoll::Granted(_)
    ));
}

#[actix_rt::test]
async fn the_verification_page_is_served() {
    let (_sandbox, client) = openapi().await;
    let device = client.request_device_authorization(&[]).await.unwrap();
    let mut response = awc::Client::default()
        .get(&device.verification_uri_complete)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.body().limit(64 * 1024).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains(&device.user_code));
}
