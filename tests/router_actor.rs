//! The RouterActor alone (actor tier): driven with its messages, the time from a
//! FakeClock, events observed through a probe subscriber; no sandbox and no connection.
//! The OpenAPI base URL is a closed loopback port, so a session's platform calls fail at
//! once (device flow: the session fails; code flow: its card send keeps retrying, so it
//! stays running).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lark_auth::clock::FakeClock;
use lark_auth::config::{AuthFlow, Config};
use lark_auth::connection::{CardActionReceived, EventReceived, SharedStr};
use lark_auth::metrics::Metrics;
use lark_auth::openapi::OpenApiClient;
use lark_auth::protocol::event::{CardActionResponse, CardActionTrigger, ToastKind};
use lark_auth::protocol::frame::FrameKind;
use lark_auth::secret::Secret;
use lark_auth::session::machine::{CodeFlowProgress, SessionRecord, SessionState};
use lark_auth::session::store::{FlushSessions, PutSession, SessionCodec, SessionStoreActor};
use lark_auth::session::{
    CountRunningSessions, OAuthRedirect, RedirectError, RouterActor, RouterParts, SessionSettings,
    StartAuthorization, StartError, StopRouter, Subscribe,
};
use lark_auth::store::{SledStore, Store};
use lark_auth::vault::{DuePolicy, Keyring, TokenVaultActor, Vault, VaultKey};

const USER: &str = "ou_router_user_1";
const WAIT: Duration = Duration::from_secs(10);

/// The router under test and what it was built from.
struct Rig {
    router: Addr<RouterActor>,
    clock: FakeClock,
    config: Config,
    settings: SessionSettings,
    store: Arc<dyn Store>,
    keyring: Keyring,
    vault: Addr<TokenVaultActor>,
    _dir: tempfile::TempDir,
}

/// A loopback URL nothing listens on.
fn closed_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn start_router(rig: &Rig) -> Addr<RouterActor> {
    RouterActor::start(RouterParts {
        client: OpenApiClient::new(&rig.config).expect("client builds"),
        store: rig.store.clone(),
        keyring: rig.keyring.clone(),
        vault: rig.vault.clone(),
        settings: rig.settings.clone(),
        metrics: Metrics::new(),
        clock: rig.clock.clock(),
    })
    .expect("router starts")
}

/// Stores `records` (as a previous run would have), then starts the router.
async fn rig(
    flow: AuthFlow,
    adjust: impl FnOnce(&mut SessionSettings),
    records: Vec<SessionRecord>,
) -> Rig {
    let mut config = Config::for_tests(&closed_base_url());
    config.auth.flow = flow;
    config.auth.redirect_uri = "http://127.0.0.1:1/oauth/callback".into();
    let mut settings = SessionSettings::from_config(&config);
    adjust(&mut settings);
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::single(1, VaultKey::generate());
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store opens"));
    let vault = Vault::open(
        store.clone(),
        "cli_sandbox_app",
        keyring.clone(),
        DuePolicy::default(),
    )
    .expect("vault opens");
    let vault = TokenVaultActor::start(vault, 1);
    put_records(&store, &keyring, records).await;
    let clock = FakeClock::starting_now();
    let router = RouterActor::start(RouterParts {
        client: OpenApiClient::new(&config).expect("client builds"),
        store: store.clone(),
        keyring: keyring.clone(),
        vault: vault.clone(),
        settings: settings.clone(),
        metrics: Metrics::new(),
        clock: clock.clock(),
    })
    .expect("router starts");
    Rig {
        router,
        clock,
        config,
        settings,
        store,
        keyring,
        vault,
        _dir: dir,
    }
}

async fn put_records(store: &Arc<dyn Store>, keyring: &Keyring, records: Vec<SessionRecord>) {
    let writer = SessionStoreActor::start(store.clone(), SessionCodec::new(keyring).unwrap());
    for record in records {
        writer.send(PutSession { record }).await.unwrap().unwrap();
    }
    writer.send(FlushSessions).await.unwrap().unwrap();
}

/// Polls `check` every 10 ms until it holds (or fails the test after [`WAIT`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn running(router: &Addr<RouterActor>) -> usize {
    router.send(CountRunningSessions).await.unwrap()
}

fn click(event_id: &str, session_id: &str, action: &str) -> CardActionReceived {
    let trigger: CardActionTrigger = serde_json::from_value(serde_json::json!({
        "operator": {"tenant_key": "tk_test_tenant_0001", "open_id": USER},
        "token": "c-card-update-token",
        "action": {"tag": "button", "value": {"action": action, "session_id": session_id}},
    }))
    .unwrap();
    CardActionReceived {
        event_id: event_id.into(),
        message_id: format!("msg_{event_id}"),
        trace_id: "trace".into(),
        trigger,
        payload: bytes::Bytes::from_static(b"{}"),
        conn_id: Arc::from("conn_1"),
    }
}

fn toast_text(answer: &CardActionResponse) -> (ToastKind, &str) {
    let toast = answer.toast.as_ref().expect("a toast");
    (toast.kind, toast.content.as_str())
}

fn terminal_record(session_id: &str, state: SessionState, now_ms: u64) -> SessionRecord {
    let mut record = SessionRecord::new(
        session_id.into(),
        USER.into(),
        vec!["offline_access".to_string()],
        None,
        now_ms,
        600_000,
    );
    record.state = state;
    record
}

#[actix_rt::test]
async fn a_click_for_an_unknown_session_is_answered_and_every_copy_gets_that_first_answer() {
    let rig = rig(AuthFlow::Device, |_| {}, Vec::new()).await;
    let first = rig
        .router
        .send(click("ev_click_1", "as_missing", "authorize"))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(
        toast_text(&first),
        (ToastKind::Warning, "此授权请求已失效"),
        "default language zh_cn"
    );
    let i18n = first.toast.as_ref().unwrap().i18n.as_ref().unwrap();
    assert_eq!(
        i18n.get("en_us").map(String::as_str),
        Some("This authorization request is no longer valid")
    );

    // The session now exists (ended): a new click is answered from it, but a copy of the
    // first click still gets the first answer, not a new one.
    put_records(
        &rig.store,
        &rig.keyring,
        vec![terminal_record(
            "as_missing",
            SessionState::Denied,
            rig.clock.now_ms(),
        )],
    )
    .await;
    let other = rig
        .router
        .send(click("ev_click_2", "as_missing", "authorize"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        toast_text(&other),
        (ToastKind::Info, "此授权已结束（denied）")
    );
    let copy = rig
        .router
        .send(click("ev_click_1", "as_missing", "authorize"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy, first, "a redelivered click gets the first answer");

    // After a restart the answer comes from the one kept with the click's dedup mark.
    rig.router.send(StopRouter).await.unwrap();
    let router = start_router(&rig);
    let after_restart = router
        .send(click("ev_click_1", "as_missing", "authorize"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_restart, first);
}

#[actix_rt::test]
async fn a_click_of_another_feature_gets_an_empty_answer() {
    let rig = rig(AuthFlow::Device, |_| {}, Vec::new()).await;
    let answer = rig
        .router
        .send(click("ev_other", "as_1", "vote"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, CardActionResponse::default());
}

#[actix_rt::test]
async fn the_per_user_limit_counts_starts_on_the_injected_clock() {
    let rig = rig(
        AuthFlow::Device,
        |s| {
            s.per_user_limit = 2;
            s.per_user_window = Duration::from_secs(60);
        },
        Vec::new(),
    )
    .await;
    let start = || StartAuthorization {
        open_id: USER.into(),
        scopes: Vec::new(),
    };
    for n in 0..2 {
        rig.router
            .send(start())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("start {n}: {e}"));
        // The device authorization fails (nothing listens): the session ends, so the next
        // request is a new start, counted.
        eventually("the session to end", || async {
            running(&rig.router).await == 0
        })
        .await;
        rig.clock.advance(Duration::from_secs(10));
    }
    // Starts at t0 and t0 + 10 s; now t0 + 20 s.
    match rig.router.send(start()).await.unwrap() {
        Err(StartError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(40))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    rig.clock.advance(Duration::from_millis(39_999));
    match rig.router.send(start()).await.unwrap() {
        Err(StartError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_millis(1))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    rig.clock.advance(Duration::from_millis(1));
    rig.router
        .send(start())
        .await
        .unwrap()
        .expect("the oldest start left the window");
    // Another user is not limited by this one.
    rig.router
        .send(StartAuthorization {
            open_id: "ou_router_user_2".into(),
            scopes: Vec::new(),
        })
        .await
        .unwrap()
        .expect("another user starts");
}

#[actix_rt::test]
async fn a_session_in_flight_is_returned_again_and_not_counted() {
    // Code flow: the card send keeps failing and retrying, so the session stays running.
    let rig = rig(
        AuthFlow::AuthorizationCode,
        |s| s.per_user_limit = 1,
        Vec::new(),
    )
    .await;
    let start = || StartAuthorization {
        open_id: USER.into(),
        scopes: Vec::new(),
    };
    let first = rig.router.send(start()).await.unwrap().unwrap();
    assert_eq!(first.state, SessionState::Created);
    let again = rig.router.send(start()).await.unwrap().unwrap();
    assert_eq!(again.session_id, first.session_id);
    assert_eq!(running(&rig.router).await, 1);
    match rig
        .router
        .send(StartAuthorization {
            open_id: "not-an-open-id".into(),
            scopes: Vec::new(),
        })
        .await
        .unwrap()
    {
        Err(StartError::InvalidOpenId) => {}
        other => panic!("expected InvalidOpenId, got {other:?}"),
    }
}

#[actix_rt::test]
async fn an_oauth_state_routes_its_redirect_to_its_session_once() {
    let mut record = SessionRecord::new(
        "as_code_1".into(),
        USER.into(),
        vec!["offline_access".to_string()],
        Some(CodeFlowProgress {
            oauth_state: "st_known".into(),
            code_verifier: Secret::new("v".repeat(43)),
        }),
        lark_auth::clock::unix_now_ms(),
        600_000,
    );
    record.flow = AuthFlow::AuthorizationCode;
    let rig = rig(AuthFlow::AuthorizationCode, |_| {}, vec![record]).await;
    // Resumed from the store: its state is known again.
    eventually("the session to be resumed", || async {
        running(&rig.router).await == 1
    })
    .await;
    let redirect = |state: &str, error: Option<&str>| OAuthRedirect {
        state: state.into(),
        code: None,
        error: error.map(str::to_string),
    };
    assert_eq!(
        rig.router
            .send(redirect("st_forged", Some("access_denied")))
            .await
            .unwrap()
            .unwrap_err(),
        RedirectError::UnknownState
    );
    assert_eq!(
        rig.router
            .send(redirect("st_known", None))
            .await
            .unwrap()
            .unwrap_err(),
        RedirectError::MissingCode,
        "neither code nor error"
    );
    // That refusal did not use the state: the user's refusal reaches the session.
    let view = rig
        .router
        .send(redirect("st_known", Some("access_denied")))
        .await
        .unwrap()
        .expect("routed to the session");
    assert_eq!(
        (view.session_id.as_str(), view.state),
        ("as_code_1", SessionState::Denied)
    );
    assert_eq!(
        rig.router
            .send(redirect("st_known", Some("access_denied")))
            .await
            .unwrap()
            .unwrap_err(),
        RedirectError::StateAlreadyUsed
    );
}

/// Records the events it receives; [`Seen`] reads them (after everything sent before).
struct Probe {
    seen: Vec<String>,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for Probe {
    type Result = ();

    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        self.seen.push(msg.event_id.to_string());
    }
}

#[derive(Message)]
#[rtype(result = "Vec<String>")]
struct Seen;

impl Handler<Seen> for Probe {
    type Result = Vec<String>;

    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Vec<String> {
        self.seen.clone()
    }
}

fn event(event_id: &'static str, event_type: &'static str) -> EventReceived {
    EventReceived {
        event_id: SharedStr::from_static(event_id),
        event_type: SharedStr::from_static(event_type),
        message_id: SharedStr::from_static("msg"),
        trace_id: SharedStr::from_static("trace"),
        frame_kind: FrameKind::Event,
        payload: bytes::Bytes::from_static(b"{}"),
        conn_id: Arc::from("conn_1"),
    }
}

#[actix_rt::test]
async fn events_the_router_receives_reach_subscribers_once() {
    let rig = rig(AuthFlow::Device, |_| {}, Vec::new()).await;
    let probe = Probe { seen: Vec::new() }.start();
    rig.router
        .send(Subscribe {
            event_type: "im.message.receive_v1".into(),
            recipient: probe.clone().recipient(),
        })
        .await
        .unwrap();
    for e in [
        event("ev_1", "im.message.receive_v1"),
        event("ev_2", "contact.user.created_v3"),
        event("ev_1", "im.message.receive_v1"),
        event("ev_3", "im.message.receive_v1"),
    ] {
        rig.router.do_send(e);
    }
    eventually("two events", || async {
        probe.send(Seen).await.unwrap().len() >= 2
    })
    .await;
    // Anything else would have arrived by the time a later event has.
    rig.router.do_send(event("ev_4", "im.message.receive_v1"));
    eventually("the last event", || async {
        probe
            .send(Seen)
            .await
            .unwrap()
            .contains(&"ev_4".to_string())
    })
    .await;
    let mut seen = probe.send(Seen).await.unwrap();
    seen.sort();
    assert_eq!(
        seen,
        ["ev_1", "ev_3", "ev_4"],
        "once each, subscribed type only"
    );
}

#[test]
fn a_card_action_debug_shows_neither_the_envelope_nor_the_card_token() {
    let mut msg = click("ev_debug", "as_1", "authorize");
    msg.payload = bytes::Bytes::from_static(br#"{"event":{"token":"c-card-update-token"}}"#);
    let shown = format!("{msg:?}");
    assert!(!shown.contains("c-card-update-token"), "{shown}");
    assert!(shown.contains("ev_debug"), "{shown}");
}
