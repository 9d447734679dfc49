//! The refresh and token-endpoint metrics as an operator scrapes them: the whole service
//! (`LarkAuth::start`) against the sandbox, one device-flow authorization, a token
//! lookup, the scheduled refresh of the 8-second token, then `GET /metrics`.

mod sessions_common;

use std::time::Duration;

use lark_auth::app::{Handle, LarkAuth, StartOptions};
use lark_auth::config::Config;
use lark_auth::connection::ConnectionState;
use lark_auth::sandbox::Sandbox;
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use sessions_common::{USER, WAIT, authorize_url, click_json, eventually, query_param};

const API_TOKEN: &str = "metrics-test-api-token";

/// The value of the sample `series` (name with labels, exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

async fn scrape(handle: &Handle) -> String {
    let mut res = awc::Client::default()
        .get(format!("http://{}/metrics", handle.http_addr().unwrap()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
}

#[actix_rt::test]
async fn metrics_show_the_token_endpoint_the_refresh_and_the_grants() {
    let mut sandbox_config = sessions_common::sandbox_config();
    sandbox_config.openapi.access_token_lifetime = Duration::from_secs(8);
    let sandbox = Sandbox::start(sandbox_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.refresh.margin = Duration::from_secs(2);
    config.refresh.ahead = Duration::from_secs(5);
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new(API_TOKEN.into())),
            http: true,
        },
    )
    .expect("starts");
    let mut states = handle.connection_states();
    tokio::time::timeout(
        WAIT,
        states.wait_for(|r| r.state == ConnectionState::Connected),
    )
    .await
    .expect("connects in time")
    .unwrap();

    // One device-flow authorization: click reported, user approves.
    let view = handle.authorize(USER, vec![]).await.expect("started");
    let cards = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let url = authorize_url(&cards[0].card);
    let user_code = query_param(&url, "user_code").expect("user code");
    let card_token = sandbox.issue_card_update_token(&cards[0].message_id);
    sandbox
        .push_event(&click_json(
            "ev_click_authorize",
            &view.session_id,
            USER,
            "authorize",
            card_token.expose(),
            &cards[0].message_id,
        ))
        .unwrap();
    sandbox.approve_device(&user_code, USER).unwrap();
    let h = &handle;
    let session_id = view.session_id.clone();
    eventually("the session is authorized", || {
        let session_id = session_id.clone();
        async move {
            h.session(&session_id)
                .await
                .ok()
                .flatten()
                .filter(|v| v.state == SessionState::Authorized)
        }
    })
    .await;

    // A use makes the grant hot: the scheduler refreshes it 5 s before its 8 s expire.
    let first = handle.token(USER).await.expect("a token");
    eventually("a scheduled refresh", || async move {
        h.refresh_stats()
            .await
            .ok()
            .filter(|s| s.attempts.refreshed >= 1 && s.in_flight == 0)
    })
    .await;
    let second = handle.token(USER).await.expect("a token");
    assert_ne!(first.token, second.token, "rotated by the refresh");

    // Published after the refresh and on every tick.
    let text = eventually("the refresh in /metrics", || async move {
        let text = scrape(h).await;
        (sample(&text, "lark_auth_refresh_attempts_total{outcome=\"ok\"}")? >= 1.0).then_some(text)
    })
    .await;
    let calls = |kind: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "lark_auth_token_endpoint_calls_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(calls("device_poll", "granted"), Some(1.0), "{text}");
    let refreshes = calls("refresh", "ok").expect("refresh calls counted");
    assert!(refreshes >= 1.0, "{text}");
    // The scheduler publishes after each refresh it started; the client counts at once.
    let attempts = sample(&text, "lark_auth_refresh_attempts_total{outcome=\"ok\"}").unwrap();
    assert!((1.0..=refreshes).contains(&attempts), "{text}");
    assert_eq!(
        sample(&text, "lark_auth_grants{status=\"active\"}"),
        Some(1.0),
        "{text}"
    );
    for status in [
        "refresh_failed",
        "refresh_uncertain",
        "needs_reauth",
        "revoked",
    ] {
        assert_eq!(
            sample(&text, &format!("lark_auth_grants{{status=\"{status}\"}}")),
            Some(0.0),
            "{status}: {text}"
        );
    }
    // One grant: at most its next access deadline can be due, never for long.
    let backlog = sample(&text, "lark_auth_refresh_backlog").expect("backlog");
    assert!((0.0..=1.0).contains(&backlog), "{text}");
    let overdue = sample(&text, "lark_auth_refresh_oldest_overdue_seconds").expect("overdue");
    assert!((0.0..8.0).contains(&overdue), "{text}");
    let queue = sample(&text, "lark_auth_token_endpoint_queue").expect("queue");
    assert!(queue >= 0.0, "{text}");
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
    handle.shutdown(Duration::from_secs(2)).await;
}
