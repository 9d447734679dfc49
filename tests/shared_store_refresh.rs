//! Two instances on one PostgreSQL store, one grant with short-lived tokens read through
//! both at once: every read gets a token, each refresh is made by one instance (the
//! other waits for it or serves the still-valid token), a refresh token is never sent
//! twice, and the grant never falls out of service (INTERFACE.md, "Several instances on one shared
//! store": "each refresh of a grant is made by exactly one instance"); the token-endpoint
//! budget is split between them; a refresh by one reaches the other's token cache.

mod pg_common;
#[path = "sessions_common/mod.rs"]
mod sessions_common;

use std::time::{Duration, Instant};

use lark_auth::config::{Config, StoreBackend};
use lark_auth::sandbox::Sandbox;
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};
use sessions_common::{USER, WAIT, authorize_url, click_json, eventually, query_param};

/// Seconds an access token lives in the sandbox here.
const LIFETIME_SECS: u64 = 6;
/// Seconds of reading.
const READ_SECS: u64 = 14;

/// A sandbox whose access tokens live `lifetime_secs`, and the config of an instance on
/// it with the store on `server` (`refresh.margin_secs` and `ahead_secs` as given).
async fn shared_setup(
    server: &pg_common::TestPostgres,
    lifetime_secs: u64,
    margin_secs: u64,
    ahead_secs: u64,
) -> (Sandbox, Config) {
    let mut sandbox_config = sessions_common::sandbox_config();
    sandbox_config.openapi.access_token_lifetime = Duration::from_secs(lifetime_secs);
    let sandbox = Sandbox::start(sandbox_config).await.unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    // Unused on PostgreSQL (nothing is created there).
    config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
    config.store.backend = StoreBackend::Postgres;
    config.store.url = Some(Secret::new(server.url()));
    config.refresh.margin = Duration::from_secs(margin_secs);
    config.refresh.ahead = Duration::from_secs(ahead_secs);
    (sandbox, config)
}

async fn start(config: Config, keyring: Keyring) -> Handle {
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring,
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .expect("starts on PostgreSQL");
    handle.wait_connected(WAIT).await.expect("connects in time");
    handle
}

/// One device-flow authorization of `USER` through `handle` (whose connection gets the
/// click).
async fn authorize(sandbox: &Sandbox, handle: &Handle) {
    let view = handle.authorize(USER, vec![]).await.expect("started");
    let cards = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let card = &cards[0];
    let card_token = sandbox.issue_card_update_token(&card.message_id);
    sandbox
        .push_event(&click_json(
            "ev_click_shared",
            &view.session_id,
            USER,
            "authorize",
            card_token.expose(),
            &card.message_id,
        ))
        .unwrap();
    let url = authorize_url(&card.card);
    let user_code = query_param(&url, "user_code").expect("user code");
    sandbox.approve_device(&user_code, USER).unwrap();
    let session_id = view.session_id.clone();
    eventually("the session is authorized", || {
        let session_id = session_id.clone();
        async move {
            handle
                .session(&session_id)
                .await
                .ok()
                .flatten()
                .filter(|v| v.state == SessionState::Authorized)
        }
    })
    .await;
}

#[actix_rt::test]
async fn two_instances_reading_one_grant_refresh_it_once_per_lifetime_without_reuse() {
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = shared_setup(&server, LIFETIME_SECS, 2, 3).await;
    let keyring = Keyring::single(1, VaultKey::generate());

    let a = start(config.clone(), keyring.clone()).await;
    authorize(&sandbox, &a).await;
    let b = start(config, keyring).await;

    let started = Instant::now();
    let mut reads = 0usize;
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(READ_SECS) {
        let (ta, tb) = futures_util::join!(a.token(USER), b.token(USER));
        for (name, t) in [("a", ta), ("b", tb)] {
            match t {
                Ok(_) => reads += 1,
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let refreshes = sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    // The token-endpoint budget (40/s) is split between the two instances.
    for handle in [&a, &b] {
        eventually("the budget shared by two", || async {
            handle
                .metrics()
                .encode()
                .contains("lark_auth_token_endpoint_share_per_second 20")
                .then_some(())
        })
        .await;
    }
    let metrics = b.metrics().encode();
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;

    assert!(failures.is_empty(), "every read served: {failures:?}");
    for family in [
        "lark_auth_store_notifications_total",
        "lark_auth_store_operation_seconds_count{op=\"get_grant\"}",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(family))
            .unwrap_or_else(|| panic!("{family} exported: {metrics}"));
        assert!(!line.ends_with(" 0"), "{family} counted: {line}");
    }
    assert!(reads > 100, "{reads} reads");
    assert_eq!(
        sandbox.refresh_token_reuse_violations(),
        0,
        "a refresh token was sent twice"
    );
    // One refresh per lifetime (each a little before its token's end), whatever the
    // number of instances: at most READ_SECS / (LIFETIME − ahead) + 1.
    let most = (READ_SECS / (LIFETIME_SECS - 3)) as usize + 1;
    assert!(
        (1..=most).contains(&refreshes),
        "{refreshes} refreshes in {READ_SECS} s of {LIFETIME_SECS} s tokens (at most {most})"
    );
}

#[actix_rt::test]
async fn a_refresh_by_one_instance_reaches_the_other_instances_token_cache() {
    let server = pg_common::TestPostgres::start();
    // Refreshed 5 s before the end (a quarter of 20 s); a cached token would be served
    // until 1 s before the end: 4 s during which only a notification can tell.
    let (sandbox, config) = shared_setup(&server, 20, 1, 5).await;
    let keyring = Keyring::single(1, VaultKey::generate());

    let a = start(config.clone(), keyring.clone()).await;
    authorize(&sandbox, &a).await;
    let b = start(config, keyring).await;
    // Both caches hold the first token.
    let first = a.token(USER).await.unwrap().token.expose().to_string();
    assert_eq!(*b.token(USER).await.unwrap().token.expose(), first);
    assert_eq!(*b.token(USER).await.unwrap().token.expose(), first);

    // One of them refreshes (their schedulers race; one wins).
    let refreshed = |s: &Sandbox| {
        s.token_requests()
            .iter()
            .any(|r| r.grant_type.as_deref() == Some("refresh_token") && r.error.is_none())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refreshed(&sandbox) {
        assert!(Instant::now() < deadline, "no refresh within 30 s");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Within a second both serve the same new token (the old one is still valid for
    // about 4 s: only the notification makes the other instance drop it).
    let deadline = Instant::now() + Duration::from_secs(1);
    let (ta, tb) = loop {
        let ta = a.token(USER).await.unwrap().token.expose().to_string();
        let tb = b.token(USER).await.unwrap().token.expose().to_string();
        if (ta != first && ta == tb) || Instant::now() > deadline {
            break (ta, tb);
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    assert_ne!(ta, first, "the refreshed token");
    assert_eq!(ta, tb, "both instances serve the store's newest token");
}
