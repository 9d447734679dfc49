//! Authorization-code flow with PKCE (§1, §2.1): the authorize URL, the user's consent or
//! refusal on the authorize page, and the code exchange with its documented errors.

mod common;

use std::time::Duration;

use common::*;
use lark_auth::openapi::{PkcePair, RetryAdvice};
use lark_auth::sandbox::{DEFAULT_REDIRECT_URI, UserActionError};
use lark_auth::secret::Secret;

const USER: &str = "ou_test_user_1";

/// Authorize URL + consent: returns the code and the PKCE pair.
async fn consent(
    sandbox: &lark_auth::sandbox::Sandbox,
    client: &lark_auth::openapi::OpenApiClient,
) -> (Secret<String>, PkcePair) {
    let pkce = PkcePair::generate();
    let url = client.authorize_url(
        DEFAULT_REDIRECT_URI,
        &["contact:user.id:readonly"],
        "st-9",
        &pkce.challenge,
    );
    let redirect = sandbox.authorize(&url, USER).unwrap();
    assert!(redirect.starts_with(DEFAULT_REDIRECT_URI), "{redirect}");
    assert_eq!(query_param(&redirect, "state").as_deref(), Some("st-9"));
    (Secret::new(query_param(&redirect, "code").unwrap()), pkce)
}

#[actix_rt::test]
async fn the_authorize_url_carries_the_documented_parameters() {
    let (_sandbox, client) = openapi().await;
    let url = client.authorize_url(DEFAULT_REDIRECT_URI, &["a:b"], "state x", "challenge-1");
    assert!(url.contains("/open-apis/authen/v1/authorize?"), "{url}");
    assert_eq!(
        query_param(&url, "client_id").as_deref(),
        Some("cli_sandbox_app")
    );
    assert_eq!(query_param(&url, "response_type").as_deref(), Some("code"));
    assert_eq!(
        query_param(&url, "redirect_uri").as_deref(),
        Some(DEFAULT_REDIRECT_URI)
    );
    assert_eq!(
        query_param(&url, "scope").as_deref(),
        Some("a:b offline_access")
    );
    assert_eq!(query_param(&url, "state").as_deref(), Some("state x"));
    assert_eq!(
        query_param(&url, "code_challenge").as_deref(),
        Some("challenge-1")
    );
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );
}

#[actix_rt::test]
async fn code_with_the_right_verifier_yields_tokens_for_the_consenting_user() {
    let (sandbox, client) = openapi().await;
    let (code, pkce) = consent(&sandbox, &client).await;
    let grant = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(grant.token_type, "Bearer");
    assert_eq!(grant.expires_in, Duration::from_secs(7200));
    assert_eq!(
        grant.refresh_token_expires_in,
        Some(Duration::from_secs(604_800))
    );
    let info = client.user_info(&grant.access_token).await.unwrap();
    assert_eq!(info.open_id, USER);
    assert_eq!(info.union_id.as_deref(), Some("on_test_user_1"));
    let requests = sandbox.token_requests();
    assert_eq!(
        requests[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(requests[0].code, Some(0));
}

#[actix_rt::test]
async fn a_wrong_or_missing_verifier_is_20049() {
    let (sandbox, client) = openapi().await;
    let (code, pkce) = consent(&sandbox, &client).await;
    let other = PkcePair::generate();
    let err = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&other.verifier))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(400), Some(20049)));
    assert_eq!(err.retry_advice(), RetryAdvice::DoNotRetry);
    let err = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20049));
    assert!(!format!("{err:?}").contains(pkce.verifier.expose().as_str()));
}

#[actix_rt::test]
async fn a_different_redirect_uri_is_20071() {
    let (sandbox, client) = openapi().await;
    let (code, pkce) = consent(&sandbox, &client).await;
    let err = client
        .exchange_code(&code, "http://127.0.0.1/other", Some(&pkce.verifier))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20071));
}

#[actix_rt::test]
async fn a_code_is_single_use() {
    let (sandbox, client) = openapi().await;
    let (code, pkce) = consent(&sandbox, &client).await;
    client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap();
    let err = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20065));
    assert!(err.needs_reauthorization());
}

#[actix_rt::test]
async fn a_code_older_than_five_minutes_is_20004() {
    let (sandbox, client) = openapi().await;
    let (code, pkce) = consent(&sandbox, &client).await;
    sandbox.advance_time(Duration::from_secs(301));
    let err = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20004));
    assert!(err.needs_reauthorization());
}

#[actix_rt::test]
async fn an_unknown_code_is_20003() {
    let (_sandbox, client) = openapi().await;
    let pkce = PkcePair::generate();
    let err = client
        .exchange_code(
            &Secret::new("made-up".into()),
            DEFAULT_REDIRECT_URI,
            Some(&pkce.verifier),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20003));
}

#[actix_rt::test]
async fn the_authorize_page_refuses_an_unregistered_redirect_uri_with_20029() {
    let (sandbox, client) = openapi().await;
    let url = client.authorize_url("http://evil.example.test/cb", &[], "s", "c");
    match sandbox.authorize(&url, USER) {
        Err(UserActionError::AuthorizePage { code, .. }) => assert_eq!(code, 20029),
        other => panic!("expected 20029, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_refusal_redirects_with_access_denied_and_the_state() {
    let (sandbox, client) = openapi().await;
    let pkce = PkcePair::generate();
    let url = client.authorize_url(DEFAULT_REDIRECT_URI, &[], "st-2", &pkce.challenge);
    let redirect = sandbox.deny_authorization(&url, USER).unwrap();
    assert_eq!(
        query_param(&redirect, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(query_param(&redirect, "state").as_deref(), Some("st-2"));
    assert_eq!(query_param(&redirect, "code"), None);
}

#[actix_rt::test]
async fn a_code_exchange_that_times_out_is_not_retryable() {
    let (sandbox, client) = openapi_with(Default::default(), |config| {
        config.openapi.request_timeout = Duration::from_millis(300);
    })
    .await;
    let (code, pkce) = consent(&sandbox, &client).await;
    sandbox.inject_openapi_fault(
        lark_auth::sandbox::OpenApiRoute::UserToken,
        lark_auth::sandbox::OpenApiFault::Delay(Duration::from_secs(2)),
    );
    let err = client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .unwrap_err();
    assert!(
        matches!(err, lark_auth::openapi::OpenApiError::Timeout { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.retry_advice(),
        RetryAdvice::DoNotRetry,
        "the code may be consumed"
    );
}
