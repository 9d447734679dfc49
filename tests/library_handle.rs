//! The library as an embedding app uses it: `LarkAuth::start` on the app's System, then
//! the `Handle` (and the control API it serves) for a whole authorization, token lookups
//! and revocation; and two instances side by side in one process.

mod service_common;

use std::time::Duration;

use lark_auth::tokens::GetTokenError;
use service_common::{
    API_TOKEN, USER, WAIT, authorize_user, eventually, start_instance, start_instance_with,
};

#[actix_rt::test]
async fn the_handle_authorizes_serves_tokens_and_revokes() {
    let i = start_instance().await;
    authorize_user(&i).await;
    // The new grant reaches the refresh scheduler at once (keep-alive deadline), before
    // anybody asked for its token.
    let handle = &i.handle;
    eventually("the scheduler tracks the new grant", || async move {
        handle
            .refresh_stats()
            .await
            .ok()
            .filter(|s| s.grants == 1 && s.deadlines >= 1)
    })
    .await;

    let token = i.handle.token(USER).await.expect("a token after consent");
    assert!(!token.token.expose().is_empty());

    // The same token through the control API.
    let client = awc::Client::default();
    let base = format!("http://{}", i.handle.http_addr().unwrap());
    let mut res = client
        .get(format!("{base}/v1/grants/{USER}/token"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["access_token"], token.token.expose().as_str());
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    // A second user through the control API: 202 with a session id.
    let mut res = client
        .post(format!("{base}/v1/authorizations"))
        .bearer_auth(API_TOKEN)
        .send_json(&serde_json::json!({"open_id": "ou_test_user_2"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let started: serde_json::Value = res.json().await.unwrap();
    let session_id = started["session_id"].as_str().unwrap();
    let mut res = client
        .get(format!("{base}/v1/authorizations/{session_id}"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let session: serde_json::Value = res.json().await.unwrap();
    assert_eq!(session["open_id"], "ou_test_user_2");
    assert!(session["created_at"].as_str().unwrap().ends_with('Z'));

    // Revoke: the token is refused afterwards, 409 through the API.
    assert!(i.handle.revoke(USER).await.unwrap().is_some());
    assert!(matches!(
        i.handle.token(USER).await,
        Err(GetTokenError::Revoked)
    ));
    let res = client
        .get(format!("{base}/v1/grants/{USER}/token"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 409);
    let res = client
        .get(format!("{base}/v1/grants/ou_nobody/token"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    assert_eq!(i.sandbox.refresh_token_reuse_violations(), 0);
    i.handle.shutdown(Duration::from_secs(3)).await;
}

#[actix_rt::test]
async fn two_instances_in_one_process_do_not_interfere() {
    let a = start_instance().await;
    let b = start_instance().await;
    assert_ne!(a.handle.http_addr(), b.handle.http_addr());
    let session_id = authorize_user(&a).await;

    assert!(a.handle.token(USER).await.is_ok());
    assert!(matches!(
        b.handle.token(USER).await,
        Err(GetTokenError::NoGrant)
    ));
    assert!(b.handle.session(&session_id).await.unwrap().is_none());
    assert_eq!(a.sandbox.connections_accepted(), 1);
    assert_eq!(b.sandbox.connections_accepted(), 1);
    assert!(b.sandbox.sent_cards().is_empty(), "B sent no card");
    let events = |m: &lark_auth::metrics::Metrics| {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("lark_auth_events_total{") && !l.ends_with(" 0"))
            .count()
    };
    assert!(events(a.handle.metrics()) > 0, "A counted the click");
    assert_eq!(events(b.handle.metrics()), 0, "B counted nothing");
    a.handle.shutdown(Duration::from_secs(3)).await;
    b.handle.shutdown(Duration::from_secs(3)).await;
}

#[actix_rt::test]
async fn a_grant_revoked_on_the_platform_sends_one_new_authorization_card() {
    let i = start_instance_with(|sandbox, config| {
        // Tokens live 4 s: the grant is refreshed once half of that has passed (the
        // margin and the lead are clamped to half a token's life), and that refresh
        // meets the revocation.
        sandbox.openapi.access_token_lifetime = Duration::from_secs(4);
        config.refresh.reauth_card = true;
    })
    .await;
    authorize_user(&i).await;
    i.sandbox.revoke_user_grants(USER);
    // The scheduler may be refreshing the new grant at this moment; whichever refresh
    // meets the revocation, the grant ends needs_reauth.
    let handle = &i.handle;
    eventually("the grant needs re-authorization", || async move {
        matches!(
            handle.token(USER).await,
            Err(GetTokenError::NeedsReauth { .. })
        )
        .then_some(())
    })
    .await;
    let cards = i.sandbox.wait_for_sent_cards(2, WAIT).await.unwrap();
    assert_eq!(cards[1].receive_id, USER, "a fresh authorization card");
    // Asking again does not send another card: one card, never a loop.
    assert!(i.handle.token(USER).await.is_err());
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(i.sandbox.sent_cards().len(), 2);
    assert_eq!(i.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn start_reads_the_secrets_from_the_variables_the_config_names() {
    let sandbox =
        lark_auth::sandbox::Sandbox::start(service_common::sessions_common::sandbox_config())
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = lark_auth::Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.vault.key_env = "LARK_AUTH_TEST_KEY_THAT_IS_NOT_SET".into();
    let err = match lark_auth::LarkAuth::start(config) {
        Err(e) => e,
        Ok(_) => panic!("started without a vault key"),
    };
    assert!(
        err.to_string()
            .contains("LARK_AUTH_TEST_KEY_THAT_IS_NOT_SET"),
        "names the variable: {err}"
    );
    assert!(
        !dir.path().join("vault").exists(),
        "nothing created without a key"
    );
}

/// `Handle::wait_connected` gives up after the time given, with an error that says so,
/// while the platform cannot be reached (connected, it answers at once: every instance
/// these tests start waits with it).
#[actix_rt::test]
async fn wait_connected_gives_up_after_the_time_given_when_the_platform_is_unreachable() {
    let sandbox =
        lark_auth::sandbox::Sandbox::start(service_common::sessions_common::sandbox_config())
            .await
            .unwrap();
    let base = sandbox.base_url();
    sandbox.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = lark_auth::Config::for_tests(&base);
    config.vault.path = dir.path().join("vault");
    let handle = lark_auth::LarkAuth::start_with(
        config,
        lark_auth::StartOptions {
            keyring: lark_auth::vault::Keyring::single(1, lark_auth::vault::VaultKey::generate()),
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .expect("starts without the platform");
    let within = Duration::from_millis(300);
    let err = handle.wait_connected(within).await.unwrap_err();
    assert!(
        matches!(err, lark_auth::app::HandleError::NotConnected { within: w } if w == within),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "lark-auth's long connection did not connect within 0.3 s"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}
