//! The tenant_access_token is cached while more than 30 minutes remain, fetched again
//! below that, and fetched once however many callers wait (§3.1).

mod common;

use std::time::Duration;

use common::*;
use lark_auth::openapi::{OpenApiError, RetryAdvice};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, OpenApiSandboxConfig, SandboxConfig};

fn sandbox_with_lifetime(lifetime: Duration) -> SandboxConfig {
    SandboxConfig {
        openapi: OpenApiSandboxConfig {
            tenant_token_lifetime: lifetime,
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    }
}

#[actix_rt::test]
async fn fifty_concurrent_callers_cause_exactly_one_fetch() {
    let (sandbox, client) = openapi().await;
    let calls = (0..50).map(|_| {
        let client = client.clone();
        async move { client.tenant_access_token().await }
    });
    let tokens = within("50 callers", futures_util::future::join_all(calls)).await;
    let first = tokens[0].as_ref().unwrap().expose().clone();
    assert!(first.starts_with("t-"), "{first}");
    for token in &tokens {
        assert_eq!(token.as_ref().unwrap().expose(), &first);
    }
    assert_eq!(sandbox.tenant_token_requests(), 1);
}

#[actix_rt::test]
async fn cached_token_is_reused_while_more_than_30_minutes_remain() {
    let (sandbox, client) = openapi().await;
    let a = client.tenant_access_token().await.unwrap();
    let b = client.tenant_access_token().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(sandbox.tenant_token_requests(), 1);
}

#[actix_rt::test]
async fn token_with_less_than_30_minutes_left_is_fetched_again() {
    // A 20-minute token is already inside the 30-minute margin: every call refetches, and
    // the platform issues a new token each time (its own reuse margin is 30 minutes too).
    let (sandbox, client) =
        openapi_with(sandbox_with_lifetime(Duration::from_secs(1200)), |_| {}).await;
    let a = client.tenant_access_token().await.unwrap();
    let b = client.tenant_access_token().await.unwrap();
    assert_ne!(a, b);
    assert_eq!(sandbox.tenant_token_requests(), 2);
}

#[actix_rt::test]
async fn platform_returns_the_same_token_with_remaining_seconds_until_30_minutes_remain() {
    let (sandbox, client) = openapi().await;
    let first = client.fetch_tenant_access_token().await.unwrap();
    assert_eq!(first.expire, Duration::from_secs(7200));
    sandbox.advance_time(Duration::from_secs(3000));
    let reused = client.fetch_tenant_access_token().await.unwrap();
    assert_eq!(reused.token, first.token);
    assert!(
        reused.expire <= Duration::from_secs(4200),
        "{:?}",
        reused.expire
    );
    sandbox.advance_time(Duration::from_secs(2500));
    let fresh = client.fetch_tenant_access_token().await.unwrap();
    assert_ne!(fresh.token, first.token);
    assert_eq!(fresh.expire, Duration::from_secs(7200));
}

#[actix_rt::test]
async fn a_failed_fetch_is_shared_by_its_waiters_and_not_cached() {
    let (sandbox, client) = openapi().await;
    sandbox.inject_openapi_fault(OpenApiRoute::TenantToken, OpenApiFault::HttpStatus(502));
    let calls = (0..10).map(|_| {
        let client = client.clone();
        async move { client.tenant_access_token().await }
    });
    let results = within("10 callers", futures_util::future::join_all(calls)).await;
    for result in &results {
        let err = result.as_ref().unwrap_err();
        assert_eq!(err.status(), Some(502));
        assert_eq!(err.retry_advice(), RetryAdvice::Backoff, "idempotent call");
    }
    assert_eq!(sandbox.tenant_token_requests(), 1);
    client.tenant_access_token().await.unwrap();
    assert_eq!(sandbox.tenant_token_requests(), 2);
}

#[actix_rt::test]
async fn wrong_app_secret_is_an_api_error_without_the_secret() {
    let (_sandbox, client) = openapi_with(SandboxConfig::default(), |config| {
        config.app.credentials.as_mut().unwrap().app_secret =
            lark_auth::secret::Secret::new("wrong-secret-value".into());
    })
    .await;
    let err = client.tenant_access_token().await.unwrap_err();
    assert!(matches!(err, OpenApiError::Api(_)), "{err:?}");
    assert_eq!(err.code(), Some(99_991_543));
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
    assert!(err.log_id().is_some_and(|l| l.starts_with("sandbox-log-")));
    assert!(!format!("{err} {err:?}").contains("wrong-secret-value"));
}
