//! Authorization-code sessions (redirect with one-use `state`, refusal on the page), a
//! restart while the user decides, and the per-user limits.

mod sessions_common;

use lark_auth::config::AuthFlow;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute};
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::session::{
    CountRunningSessions, OAuthRedirect, RedirectError, StartAuthorization, StartError,
};
use sessions_common::*;

fn redirect(url: &str) -> OAuthRedirect {
    OAuthRedirect {
        state: query_param(url, "state").expect("state"),
        code: query_param(url, "code").map(Secret::new),
        error: query_param(url, "error"),
    }
}

#[actix_rt::test]
async fn the_code_flow_exchanges_the_redirected_code_and_a_reused_state_is_refused() {
    let h = start(AuthFlow::AuthorizationCode, false, |_| {}).await;
    let view = h.authorize(USER).await;
    let cards = h.sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let url = authorize_url(&cards[0].card);
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );

    let landing = h.sandbox.authorize(&url, USER).expect("user consents");
    let answer = h.router.send(redirect(&landing)).await.unwrap();
    assert_eq!(answer.expect("accepted").session_id, view.session_id);
    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
    let grant = h.grant(USER).await.expect("grant stored");
    assert_eq!(grant.identity.open_id, USER);

    let again = h.router.send(redirect(&landing)).await.unwrap();
    assert_eq!(again, Err(RedirectError::StateAlreadyUsed));
    let forged = h
        .router
        .send(OAuthRedirect {
            state: "forged".into(),
            code: Some(Secret::new("x".into())),
            error: None,
        })
        .await
        .unwrap();
    assert_eq!(forged, Err(RedirectError::UnknownState));
    let exchanges = h
        .sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("authorization_code"))
        .count();
    assert_eq!(exchanges, 1, "no exchange for a reused or unknown state");
}

#[actix_rt::test]
async fn a_refusal_on_the_authorize_page_ends_denied() {
    let h = start(AuthFlow::AuthorizationCode, false, |_| {}).await;
    h.authorize(USER).await;
    let cards = h.sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let landing = h
        .sandbox
        .deny_authorization(&authorize_url(&cards[0].card), USER)
        .unwrap();
    let answer = h.router.send(redirect(&landing)).await.unwrap();
    assert_eq!(answer.unwrap().state, SessionState::Denied);
    let patches = eventually("the declined card", || async {
        let p = h.sandbox.card_patches();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(title(&patches[0].card), "Declined");
    assert!(h.sandbox.token_requests().is_empty());
}

#[actix_rt::test]
async fn a_session_awaiting_the_user_completes_after_a_restart() {
    let mut h = start(AuthFlow::Device, false, |_| {}).await;
    let view = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    h.wait_for_state(&view.session_id, SessionState::AwaitingUser)
        .await;

    h.restart().await;
    let resumed = h.session(&view.session_id).await;
    assert_eq!(resumed.state, SessionState::AwaitingUser);
    assert_eq!(
        resumed.deadline_ms,
        view.deadline_ms.min(resumed.deadline_ms)
    );

    h.sandbox.approve_device(&user_code, USER).unwrap();
    h.wait_for_state(&view.session_id, SessionState::Authorized)
        .await;
    assert!(h.grant(USER).await.is_some());
    assert_eq!(
        h.sandbox.sent_cards().len(),
        1,
        "no second card after the restart"
    );
}

#[actix_rt::test]
async fn a_second_request_returns_the_session_in_flight() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    let first = h.authorize(USER).await;
    let second = h.authorize(USER).await;
    assert_eq!(first.session_id, second.session_id);
    h.sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let other = h.authorize(OTHER).await;
    assert_ne!(other.session_id, first.session_id);
    h.sandbox.wait_for_sent_cards(2, WAIT).await.unwrap();
    let cards = h.sandbox.sent_cards();
    assert_eq!(cards.iter().filter(|c| c.receive_id == USER).count(), 1);
}

#[actix_rt::test]
async fn the_sixth_authorization_of_a_user_within_a_minute_is_rate_limited() {
    let h = start(AuthFlow::Device, false, |_| {}).await;
    for _ in 0..5 {
        // Each session fails at once (device authorization refused) and finishes.
        h.sandbox.inject_openapi_fault(
            OpenApiRoute::DeviceAuthorization,
            OpenApiFault::HttpStatus(400),
        );
        let view = h.authorize(USER).await;
        h.wait_for_state(&view.session_id, SessionState::Failed)
            .await;
        eventually("the session actor to finish", || async {
            (h.router.send(CountRunningSessions).await.unwrap() == 0).then_some(())
        })
        .await;
    }
    let sixth = h
        .router
        .send(StartAuthorization {
            open_id: USER.into(),
            scopes: vec![],
        })
        .await
        .unwrap();
    assert!(
        matches!(sixth, Err(StartError::RateLimited { retry_after }) if !retry_after.is_zero()),
        "{sixth:?}"
    );
    // Other users are not affected.
    h.authorize(OTHER).await;
}
