//! `user_info` (§6) tells who a user token belongs to; invalid and expired tokens are
//! typed errors.

mod common;

use std::time::Duration;

use common::*;
use lark_auth::openapi::RetryAdvice;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::secret::Secret;

#[actix_rt::test]
async fn user_info_names_the_token_owner() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_2").await;
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, "ou_test_user_2");
    assert_eq!(info.union_id.as_deref(), Some("on_test_user_2"));
    assert_eq!(info.tenant_key.as_deref(), Some("tk_test_tenant_0001"));
    assert_eq!(info.name.as_deref(), Some("Test User Two"));
    assert_eq!(sandbox.user_info_requests(), 1);
}

#[actix_rt::test]
async fn an_unknown_token_is_20005() {
    let (_sandbox, client) = openapi().await;
    let err = client
        .user_info(&Secret::new("eyJnot-a-token".into()))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(200), Some(20005)));
    assert!(!format!("{err} {err:?}").contains("eyJnot-a-token"));
}

#[actix_rt::test]
async fn an_expired_token_is_99991677() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    sandbox.advance_time(grant.expires_in);
    let err = client.user_info(&grant.access_token).await.unwrap_err();
    assert_eq!(err.code(), Some(99_991_677));
}

#[actix_rt::test]
async fn a_slow_user_info_times_out_and_may_be_retried() {
    let (sandbox, client) = openapi_with(Default::default(), |config| {
        config.openapi.request_timeout = Duration::from_millis(300);
    })
    .await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    sandbox.inject_openapi_fault(
        OpenApiRoute::UserInfo,
        OpenApiFault::Delay(Duration::from_secs(2)),
    );
    let err = client.user_info(&grant.access_token).await.unwrap_err();
    assert!(
        matches!(err, lark_auth::openapi::OpenApiError::Timeout { .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, "ou_test_user_1");
}
