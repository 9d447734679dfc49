//! Authorization sessions shared by several instances on one PostgreSQL store
//! (INTERFACE.md, "Several instances on one shared store": "a click, an OAuth redirect, a
//! control API call or a token lookup gives the same answer on whichever instance receives
//! it"; "sessions … whose instance died are carried on by another within lease_secs plus a
//! poll interval"): a click or a redirect landing on an instance that does not hold the
//! session is handed to its holder and answered; a session whose holder died is taken
//! over with its card (no second card); many sessions over three instances with the
//! platform's random delivery all end authorized with one card each.

mod pg_common;
#[path = "sessions_common/mod.rs"]
mod sessions_common;

use std::time::{Duration, Instant};

use lark_auth::config::{AuthFlow, Config, StoreBackend};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, RecordedAck, Sandbox};
use lark_auth::secret::Secret;
use lark_auth::session::SessionView;
use lark_auth::session::StartError as SessionStartError;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};
use sessions_common::{WAIT, ack_data, authorize_url, click_json, eventually, query_param};

/// `store.lease_secs` here.
const LEASE: Duration = Duration::from_secs(2);
/// The "opening the authorization page" toast, in either language.
const OPENING: [&str; 2] = ["正在打开授权页面", "Opening the authorization page"];

async fn setup(server: &pg_common::TestPostgres) -> (Sandbox, Config) {
    let mut sandbox_config = sessions_common::sandbox_config();
    sandbox_config.openapi.open_tenant = true;
    let sandbox = Sandbox::start(sandbox_config).await.unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
    config.store.backend = StoreBackend::Postgres;
    config.store.url = Some(Secret::new(server.url()));
    config.store.lease = LEASE;
    // The platform's own budget: the relayed click must fit in it.
    config.connection.callback_budget = Duration::from_secs(2);
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    (sandbox, config)
}

async fn start(config: Config, keyring: Keyring, http: bool) -> Handle {
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring,
            api_token: None,
            http,
            accept_loss: false,
        },
    )
    .expect("starts on PostgreSQL");
    handle.wait_connected(WAIT).await.expect("connects in time");
    handle
}

/// Pushes a click on `session_id`'s card (sent as `message_id`) and returns the pushed
/// frame's message id.
fn click(
    sandbox: &Sandbox,
    event_id: &str,
    session_id: &str,
    user: &str,
    message_id: &str,
) -> String {
    let token = sandbox.issue_card_update_token(message_id);
    sandbox
        .push_event(&click_json(
            event_id,
            session_id,
            user,
            "authorize",
            token.expose(),
            message_id,
        ))
        .expect("pushed")
}

async fn ack_of(sandbox: &Sandbox, message_id: &str) -> RecordedAck {
    eventually(&format!("ack of {message_id}"), || async {
        sandbox
            .acks()
            .into_iter()
            .find(|a| a.message_id == message_id)
    })
    .await
}

fn toast_content(ack: &RecordedAck) -> String {
    ack_data(ack)["toast"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_state(handle: &Handle, session_id: &str, state: SessionState) {
    eventually(&format!("{session_id} {}", state.as_str()), || async {
        handle
            .session(session_id)
            .await
            .ok()
            .flatten()
            .filter(|v| v.state == state)
            .map(|_| ())
    })
    .await
}

fn metric(handle: &Handle, line_start: &str) -> f64 {
    handle
        .metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[actix_rt::test]
async fn a_click_on_the_instance_not_holding_the_session_is_answered_and_reaches_the_holder() {
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = setup(&server).await;
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, false).await;
    // Pushes go to the most recent connection: B's.

    let user = "ou_shared_click";
    let view = a.authorize(user, vec![]).await.expect("started on A");
    let card = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap()[0].clone();
    // B reads A's session from the store.
    wait_state(&b, &view.session_id, SessionState::CardSent).await;

    // Clicks (each its own event) pushed to B one after the other: their ack latency.
    const CLICKS: usize = 100;
    let mut latencies = Vec::new();
    for i in 0..CLICKS {
        let pushed = click(
            &sandbox,
            &format!("ev_click_b_{i}"),
            &view.session_id,
            user,
            &card.message_id,
        );
        let ack = ack_of(&sandbox, &pushed).await;
        assert!(
            OPENING.contains(&toast_content(&ack).as_str()),
            "B answers with the holder's toast: {}",
            ack_data(&ack)
        );
        latencies.push(ack.latency.expect("pushed here"));
    }
    assert_eq!(
        metric(&b, "lark_auth_session_inputs_relayed_total{kind=\"click\"}"),
        CLICKS as f64,
        "handed to A"
    );
    let url = authorize_url(&card.card);
    let user_code = query_param(&url, "user_code").expect("user code");
    sandbox.approve_device(&user_code, user).unwrap();
    wait_state(&b, &view.session_id, SessionState::Authorized).await;
    assert!(a.token(user).await.is_ok(), "the grant is stored");
    assert!(b.token(user).await.is_ok(), "and read by B too");
    assert_eq!(sandbox.sent_card_count(), 1, "one card");
    latencies.sort();
    let p50 = latencies[CLICKS / 2];
    let p99 = latencies[CLICKS * 99 / 100 - 1];
    eprintln!(
        "{CLICKS} clicks relayed B → A: ack p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies[CLICKS - 1]
    );
    // The p99 target (≤ 300 ms) is measured by `cargo bench --bench shared_sessions`.
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_second_authorization_on_another_instance_returns_the_session_in_flight() {
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = setup(&server).await;
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, false).await;

    let user = "ou_shared_twice";
    let first = a.authorize(user, vec![]).await.expect("started on A");
    let again = b.authorize(user, vec![]).await.expect("asked on B");
    assert_eq!(again.session_id, first.session_id, "the session in flight");
    sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sandbox.sent_card_count(), 1, "one card");
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn concurrent_authorizations_of_one_user_over_two_instances_start_one_session() {
    const CALLS: usize = 24;
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = setup(&server).await;
    let schema = config.store.schema.clone();
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, false).await;

    let user = "ou_shared_race";
    let calls = (0..CALLS).map(|i| {
        let h = if i % 2 == 0 { &a } else { &b };
        h.authorize(user, vec![])
    });
    let views = futures_util::future::join_all(calls).await;
    let first = views[0].as_ref().expect("answered").session_id.clone();
    for view in &views {
        let view = view.as_ref().expect("every call answered, none limited");
        assert_eq!(view.session_id, first, "the one session in flight");
    }
    assert_eq!(
        server.psql(&format!(
            "SELECT count(*) FROM {schema}.sessions WHERE open_id = '{user}'"
        )),
        "1",
        "one session stored"
    );
    sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sandbox.sent_card_count(), 1, "one card");
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn the_per_user_limit_counts_the_authorizations_started_on_every_instance() {
    let server = pg_common::TestPostgres::start();
    let (sandbox, mut config) = setup(&server).await;
    config.sessions.per_user_limit = 3;
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, false).await;

    let user = "ou_shared_limit";
    for i in 0..3 {
        // Each session fails at once (device authorization refused) and ends.
        sandbox.inject_openapi_fault(
            OpenApiRoute::DeviceAuthorization,
            OpenApiFault::HttpStatus(400),
        );
        let (here, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let view = here.authorize(user, vec![]).await.expect("started");
        // Read from the store by the other instance: the end is committed.
        wait_state(other, &view.session_id, SessionState::Failed).await;
    }
    // A started two, B one: the fourth within the window is refused on either.
    for h in [&b, &a] {
        let fourth = h.authorize(user, vec![]).await;
        assert!(
            matches!(&fourth, Err(SessionStartError::RateLimited { retry_after })
                if !retry_after.is_zero() && *retry_after <= Duration::from_secs(60)),
            "{fourth:?}"
        );
    }
    b.authorize("ou_shared_limit_other", vec![])
        .await
        .expect("other users are not affected");
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

/// Two instances on one store with the authorization-code flow (A without the control
/// API, B with it), a session for `user` started on A, and the user's consent on the
/// platform: the URL its redirect opens on B (`/oauth/callback` with the `code` and
/// `state`).
struct CodeFlowOnA {
    sandbox: Sandbox,
    a: Handle,
    b: Handle,
    view: SessionView,
    callback_url: String,
}

async fn code_flow_started_on_a(server: &pg_common::TestPostgres, user: &str) -> CodeFlowOnA {
    let (sandbox, mut config) = setup(server).await;
    config.auth.flow = AuthFlow::AuthorizationCode;
    config.auth.redirect_uri = lark_auth::sandbox::DEFAULT_REDIRECT_URI.into();
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, true).await;
    let view = a.authorize(user, vec![]).await.expect("started on A");
    let card = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap()[0].clone();
    let landing = sandbox
        .authorize(&authorize_url(&card.card), user)
        .expect("the user consents");
    let code = query_param(&landing, "code").expect("code");
    let state = query_param(&landing, "state").expect("state");
    let callback_url = format!(
        "http://{}/oauth/callback?code={code}&state={state}",
        b.http_addr().unwrap()
    );
    CodeFlowOnA {
        sandbox,
        a,
        b,
        view,
        callback_url,
    }
}

#[actix_rt::test]
async fn a_redirect_on_the_instance_not_holding_a_code_flow_session_completes_it() {
    let server = pg_common::TestPostgres::start();
    let user = "ou_shared_redirect";
    let CodeFlowOnA {
        sandbox,
        a,
        b,
        view,
        callback_url: url,
    } = code_flow_started_on_a(&server, user).await;
    let http = awc::Client::default();
    let started = Instant::now();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "landing page received");
    eprintln!("relayed redirect answered in {:?}", started.elapsed());
    wait_state(&a, &view.session_id, SessionState::Authorized).await;
    assert!(a.token(user).await.is_ok(), "the grant is stored");
    // One use per state, across instances.
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 400, "a reused state is refused");
    assert_eq!(
        metric(
            &b,
            "lark_auth_session_inputs_relayed_total{kind=\"redirect\"}"
        ),
        1.0
    );
    assert_eq!(sandbox.sent_card_count(), 1, "one card");
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_redirect_taken_by_a_holder_that_died_before_answering_is_carried_on_by_the_next() {
    let server = pg_common::TestPostgres::start();
    let user = "ou_shared_redirect_holder_died";
    let flow = code_flow_started_on_a(&server, user).await;
    let (sandbox, b, view, url) = (flow.sandbox, flow.b, flow.view, flow.callback_url);
    // A dies, its lease still running: the redirect landing on B is handed to A's inbox.
    flow.a.abandon_sessions(Duration::from_secs(2)).await;
    let browser = actix_rt::spawn(async move {
        // Longer than the relay's wait for the holder's answer (RELAY_REDIRECT_WAIT).
        awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish()
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // A took the input just before dying, and never answered it.
    let session_id = view.session_id.clone();
    let taken = eventually("the relayed redirect is in A's inbox", || {
        let sql = format!(
            "WITH t AS (UPDATE lark_auth.session_inputs SET taken_by = \
             (SELECT holder FROM lark_auth.sessions WHERE session_id = '{session_id}') \
             WHERE session_id = '{session_id}' AND taken_by IS NULL RETURNING id) \
             SELECT id FROM t"
        );
        let out = server.psql(&sql);
        async move { (!out.is_empty()).then_some(out) }
    })
    .await;
    eprintln!("input {taken} taken by the dead holder");
    let status = browser.await.unwrap().expect("the browser gets an answer");
    assert_eq!(status, 200, "the page shows the stored state meanwhile");

    // B takes the session over with the input A left unanswered: the code is exchanged.
    wait_state(&b, &view.session_id, SessionState::Authorized).await;
    assert!(b.token(user).await.is_ok(), "the grant is stored");
    assert_eq!(sandbox.sent_card_count(), 1, "one card");
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_session_whose_holder_died_is_taken_over_with_its_card() {
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = setup(&server).await;
    let keyring = Keyring::single(1, VaultKey::generate());
    let a = start(config.clone(), keyring.clone(), false).await;
    let b = start(config, keyring, false).await;

    let user = "ou_shared_takeover";
    let view = a.authorize(user, vec![]).await.expect("started on A");
    let card = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap()[0].clone();
    wait_state(&b, &view.session_id, SessionState::CardSent).await;
    // A dies: its sessions stop, their leases are not handed back.
    let died = Instant::now();
    a.abandon_sessions(Duration::from_secs(2)).await;
    // A click while A's lease still runs: nobody answers the relayed input in time, and B
    // answers from the stored record, inside the callback deadline.
    let pushed = click(
        &sandbox,
        "ev_click_dead_holder",
        &view.session_id,
        user,
        &card.message_id,
    );
    let ack = ack_of(&sandbox, &pushed).await;
    assert!(
        OPENING.contains(&toast_content(&ack).as_str()),
        "{}",
        ack_data(&ack)
    );
    let latency = ack.latency.expect("pushed here");
    eprintln!("click for a dead holder's session answered in {latency:?}");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    eventually("B takes the session over", || async {
        (metric(&b, "lark_auth_session_lease_takeovers_total") >= 1.0).then_some(())
    })
    .await;
    let took = died.elapsed();
    eprintln!("taken over after {took:?}");
    assert!(
        took <= LEASE + LEASE / 3 + Duration::from_secs(1),
        "within the lease plus a poll: {took:?}"
    );

    // The user clicks and approves the same card (same device code).
    let pushed = click(
        &sandbox,
        "ev_click_takeover",
        &view.session_id,
        user,
        &card.message_id,
    );
    let ack = ack_of(&sandbox, &pushed).await;
    assert!(
        OPENING.contains(&toast_content(&ack).as_str()),
        "{}",
        ack_data(&ack)
    );
    let url = authorize_url(&card.card);
    let user_code = query_param(&url, "user_code").expect("user code");
    sandbox.approve_device(&user_code, user).unwrap();
    wait_state(&b, &view.session_id, SessionState::Authorized).await;
    assert!(b.token(user).await.is_ok(), "the grant is stored");
    assert_eq!(sandbox.sent_card_count(), 1, "no second card");
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn twenty_sessions_over_three_instances_with_random_delivery_are_all_authorized() {
    const N: usize = 20;
    let server = pg_common::TestPostgres::start();
    let (sandbox, config) = setup(&server).await;
    let keyring = Keyring::single(1, VaultKey::generate());
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start(config.clone(), keyring.clone(), false).await);
    }
    sandbox.set_random_push(Some(14));

    let mut sessions = Vec::new();
    for i in 0..N {
        let user = format!("ou_shared_rr_{i:02}");
        let view = instances[i % 3]
            .authorize(&user, vec![])
            .await
            .expect("started");
        sessions.push((user, view.session_id));
    }
    let cards = sandbox.wait_for_sent_cards(N, WAIT).await.unwrap();
    let mut acks = Vec::new();
    for (i, (user, session_id)) in sessions.iter().enumerate() {
        let card = cards
            .iter()
            .find(|c| &c.receive_id == user)
            .expect("the user's card");
        let pushed = click(
            &sandbox,
            &format!("ev_rr_{i}"),
            session_id,
            user,
            &card.message_id,
        );
        acks.push(pushed);
        let url = authorize_url(&card.card);
        let user_code = query_param(&url, "user_code").expect("user code");
        sandbox.approve_device(&user_code, user).unwrap();
    }
    let mut latencies = Vec::new();
    for pushed in &acks {
        let ack = ack_of(&sandbox, pushed).await;
        assert!(
            OPENING.contains(&toast_content(&ack).as_str()),
            "every click answered with its toast: {}",
            ack_data(&ack)
        );
        latencies.push(ack.latency.expect("pushed here"));
    }
    for (i, (_, session_id)) in sessions.iter().enumerate() {
        wait_state(
            &instances[(i + 1) % 3],
            session_id,
            SessionState::Authorized,
        )
        .await;
    }
    for (user, _) in &sessions {
        assert_eq!(
            sandbox
                .sent_cards()
                .iter()
                .filter(|c| &c.receive_id == user)
                .count(),
            1,
            "one card for {user}"
        );
    }
    assert_eq!(sandbox.sent_card_count(), N);
    let relayed: f64 = instances
        .iter()
        .map(|h| metric(h, "lark_auth_session_inputs_relayed_total{kind=\"click\"}"))
        .sum();
    latencies.sort();
    eprintln!(
        "{relayed} of {N} clicks relayed; ack latency p50 {:?}, max {:?}",
        latencies[N / 2],
        latencies[N - 1]
    );
    assert!(
        relayed >= 1.0,
        "random delivery sent some clicks to a non-holder"
    );
    assert!(
        latencies[N - 1] < Duration::from_secs(3),
        "every click answered inside the callback deadline: {latencies:?}"
    );
    for h in instances {
        h.shutdown(Duration::from_secs(2)).await;
    }
}
