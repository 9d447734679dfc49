//! Refresh tokens rotate and are single use (§2.4): each refresh returns a new pair, a
//! reused token is 20073, revoked 20064, expired 20037; a refresh that gets no answer is
//! reported as outcome-unknown and never resent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lark_auth::openapi::{OpenApiError, RetryAdvice};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, OpenApiSandboxConfig, SandboxConfig};

fn refresh_token_of(
    grant: &lark_auth::openapi::UserTokenGrant,
) -> lark_auth::secret::Secret<String> {
    grant
        .refresh_token
        .clone()
        .expect("offline_access grants a refresh token")
}

#[actix_rt::test]
async fn each_refresh_rotates_the_pair_and_never_reuses_a_token() {
    let (sandbox, client) = openapi().await;
    let mut grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let mut seen = vec![refresh_token_of(&grant)];
    for _ in 0..3 {
        let next = client
            .refresh_user_token(&refresh_token_of(&grant))
            .await
            .unwrap();
        assert!(
            !seen.contains(&refresh_token_of(&next)),
            "a new refresh token each time"
        );
        assert_ne!(next.access_token, grant.access_token);
        assert_eq!(next.expires_in, Duration::from_secs(7200));
        assert!(next.refresh_token_expires_in.unwrap() <= Duration::from_secs(604_800));
        seen.push(refresh_token_of(&next));
        grant = next;
    }
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, "ou_test_user_1");
    for token in &seen[..3] {
        assert_eq!(sandbox.refresh_token_uses(token.expose()), 1);
    }
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn reusing_a_refresh_token_is_20073_and_counted_as_a_violation() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let old = refresh_token_of(&grant);
    client.refresh_user_token(&old).await.unwrap();
    let err = client.refresh_user_token(&old).await.unwrap_err();
    assert_eq!(err.code(), Some(20073));
    assert_eq!(err.status(), Some(400));
    assert!(err.needs_reauthorization());
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
    assert!(!format!("{err} {err:?}").contains(old.expose().as_str()));
    assert_eq!(sandbox.refresh_token_reuse_violations(), 1);
}

#[actix_rt::test]
async fn revoked_refresh_token_is_20064() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    sandbox.revoke_user_grants("ou_test_user_1");
    let err = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20064));
    assert!(err.needs_reauthorization());
    let err = client.user_info(&grant.access_token).await.unwrap_err();
    assert_eq!(err.code(), Some(20005));
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn expired_refresh_token_is_20037() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    sandbox.advance_time(Duration::from_secs(604_800 + 1));
    let err = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20037));
    assert!(err.needs_reauthorization());
}

#[actix_rt::test]
async fn refreshing_stops_at_the_grant_age_cap_with_20037() {
    let config = SandboxConfig {
        openapi: OpenApiSandboxConfig {
            grant_max_age: Duration::from_secs(86_400),
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    };
    let (sandbox, client) = openapi_with(config, |_| {}).await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    assert_eq!(
        grant.refresh_token_expires_in,
        Some(Duration::from_secs(86_400))
    );
    sandbox.advance_time(Duration::from_secs(80_000));
    let grant = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap();
    let left = grant.refresh_token_expires_in.unwrap();
    assert!(
        left <= Duration::from_secs(6_400),
        "capped by the first consent: {left:?}"
    );
    sandbox.advance_time(Duration::from_secs(6_401));
    let err = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20037));
}

#[actix_rt::test]
async fn refresh_switched_off_is_20074_and_not_reauthorization() {
    let config = SandboxConfig {
        openapi: OpenApiSandboxConfig {
            refresh_enabled: false,
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    };
    let (sandbox, client) = openapi_with(config, |_| {}).await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let err = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20074));
    assert!(!err.needs_reauthorization());
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
}

#[actix_rt::test]
async fn server_error_20050_is_retryable_and_the_token_survives() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let token = refresh_token_of(&grant);
    sandbox.inject_openapi_fault(OpenApiRoute::UserToken, OpenApiFault::ServerError);
    let err = client.refresh_user_token(&token).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(500), Some(20050)));
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::TemporarilyUnavailable,
    );
    let err = client.refresh_user_token(&token).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some(20072)));
    assert_eq!(err.retry_advice(), RetryAdvice::Backoff);
    client.refresh_user_token(&token).await.unwrap();
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_rate_limited_refresh_says_when_to_retry() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::RateLimited { reset_secs: 7 },
    );
    let err = client
        .refresh_user_token(&refresh_token_of(&grant))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(429), Some(99_991_400)));
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::After(Duration::from_secs(7))
    );
}

#[actix_rt::test]
async fn a_timed_out_refresh_is_outcome_unknown_and_not_resent() {
    let (sandbox, client) = openapi_with(SandboxConfig::default(), |config| {
        config.openapi.request_timeout = Duration::from_millis(300);
    })
    .await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let token = refresh_token_of(&grant);
    // The platform consumes the token and issues a new pair, but the answer comes late.
    sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_secs(2)),
    );
    let err = client.refresh_user_token(&token).await.unwrap_err();
    assert!(
        matches!(err, OpenApiError::RefreshOutcomeUnknown { .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
    assert!(!format!("{err} {err:?}").contains(token.expose().as_str()));
    let requests = sandbox.wait_for_token_requests(2, WAIT).await.unwrap();
    assert_eq!(
        requests.len(),
        2,
        "the code exchange and one refresh, nothing more"
    );
    assert_eq!(sandbox.refresh_token_uses(token.expose()), 1);
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn refresh_to_a_closed_port_was_never_sent() {
    let (sandbox, _client) = openapi().await;
    let base = sandbox.base_url();
    sandbox.stop().await;
    let mut config = lark_auth::config::Config::for_tests(&base);
    config.openapi.request_timeout = Duration::from_secs(2);
    let client = lark_auth::openapi::OpenApiClient::new(&config).unwrap();
    let err = client
        .refresh_user_token(&lark_auth::secret::Secret::new("eyJ-unused".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenApiError::Transport { sent: false, .. }),
        "a refused connection sent nothing: {err:?}"
    );
}

#[actix_rt::test]
async fn string_codes_as_on_the_lark_pages_parse() {
    let config = SandboxConfig {
        openapi: OpenApiSandboxConfig {
            string_codes: true,
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    };
    let (sandbox, client) = openapi_with(config, |_| {}).await;
    let grant = code_flow_grant(&sandbox, &client, "ou_test_user_1").await;
    let old = refresh_token_of(&grant);
    let next = client.refresh_user_token(&old).await.unwrap();
    let now = Instant::now();
    assert_eq!(next.access_expires_at(now), now + Duration::from_secs(7200));
    let err = client.refresh_user_token(&old).await.unwrap_err();
    assert_eq!(err.code(), Some(20073), "\"20073\" as a string");
}

#[test]
fn the_lark_string_code_fixture_is_a_success() {
    let fixture = openapi_fixture("token_refresh_ok_lark_string_code.json");
    assert_eq!(fixture["code"], "0");
    #[derive(serde::Deserialize)]
    struct Code {
        #[serde(deserialize_with = "lark_auth::openapi::de_code")]
        code: Option<i64>,
    }
    let parsed: Code = serde_json::from_value(fixture).unwrap();
    assert_eq!(parsed.code, Some(0));
}
