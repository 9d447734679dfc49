//! Shared pieces of the integration tests: a probe that plays the ConnectionActor's
//! consumer, and a sandbox + actor pair with short timings.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use lark_auth::config::Config;
use lark_auth::connection::{
    CallbackFailed, CardActionReceived, ConnectionActor, ConnectionOutputs, ConnectionState,
    ConnectionStateChanged, EventReceived,
};
use lark_auth::protocol::endpoint::ClientConfig;
use lark_auth::protocol::event::{CardActionResponse, Toast};
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use tokio::sync::Notify;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the probe has seen.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<EventReceived>,
    pub card_actions: Vec<CardActionReceived>,
    pub states: Vec<ConnectionStateChanged>,
    /// Event handler entries (counted before the gate).
    pub events_entered: usize,
}

/// How the probe answers card callbacks.
#[derive(Clone, Debug)]
pub enum CallbackBehaviour {
    /// Answer at once with a toast carrying this text.
    Toast(String),
    /// Answer after a delay.
    Slow(Duration, String),
    /// Refuse (ack 500).
    Fail,
}

#[derive(Clone)]
pub struct Probe {
    pub seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    behaviour: Arc<Mutex<CallbackBehaviour>>,
    /// While closed, the event handler blocks its thread (a stuck consumer).
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe {
            seen: Arc::default(),
            changed: Arc::new(Notify::new()),
            behaviour: Arc::new(Mutex::new(CallbackBehaviour::Toast("ok".into()))),
            gate: Arc::new((Mutex::new(true), std::sync::Condvar::new())),
        }
    }

    pub fn set_callback_behaviour(&self, behaviour: CallbackBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Closes or opens the gate the event handler waits at.
    pub fn set_gate_open(&self, open: bool) {
        let (lock, cvar) = &*self.gate;
        *lock.lock().unwrap() = open;
        cvar.notify_all();
    }

    /// The recipients, served by an actor on its own thread so a blocked probe does not
    /// block the connection actor.
    pub fn outputs(&self) -> ConnectionOutputs {
        let probe = self.clone();
        let arbiter = actix::Arbiter::new();
        let addr = ProbeActor::start_in_arbiter(&arbiter.handle(), move |_| ProbeActor(probe));
        ConnectionOutputs {
            events: addr.clone().recipient(),
            card_actions: addr.clone().recipient(),
            states: addr.recipient(),
        }
    }

    /// Waits until `check` holds on what was seen, or panics after [`WAIT`].
    pub async fn wait_until(&self, what: &str, check: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if check(&self.seen.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// Waits for the connection to reach `state` (counting from the start).
    pub async fn wait_for_state(&self, state: ConnectionState, times: usize) {
        self.wait_until(&format!("{times}x state {state:?}"), |s| {
            s.states.iter().filter(|c| c.state == state).count() >= times
        })
        .await
    }

    pub fn states(&self) -> Vec<ConnectionState> {
        self.seen
            .lock()
            .unwrap()
            .states
            .iter()
            .map(|s| s.state)
            .collect()
    }

    /// The cause given with the first change to `state`, if any.
    pub fn cause_of(&self, state: ConnectionState) -> Option<String> {
        self.seen
            .lock()
            .unwrap()
            .states
            .iter()
            .find(|s| s.state == state)
            .and_then(|s| s.cause.clone())
    }

    pub fn event_count(&self) -> usize {
        self.seen.lock().unwrap().events.len()
    }
}

struct ProbeActor(Probe);

impl Actor for ProbeActor {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for ProbeActor {
    type Result = ();
    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        {
            let (lock, cvar) = &*self.0.gate;
            let mut open = lock.lock().unwrap();
            self.0.seen.lock().unwrap().events_entered += 1;
            self.0.changed.notify_waiters();
            while !*open {
                open = cvar.wait(open).unwrap();
            }
        }
        self.0.seen.lock().unwrap().events.push(msg);
        self.0.changed.notify_waiters();
    }
}

impl Handler<CardActionReceived> for ProbeActor {
    type Result = ResponseFuture<Result<CardActionResponse, CallbackFailed>>;
    fn handle(&mut self, msg: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        self.0.seen.lock().unwrap().card_actions.push(msg);
        self.0.changed.notify_waiters();
        let behaviour = self.0.behaviour.lock().unwrap().clone();
        Box::pin(async move {
            match behaviour {
                CallbackBehaviour::Toast(text) => Ok(CardActionResponse {
                    toast: Some(Toast::info(text)),
                    card: None,
                }),
                CallbackBehaviour::Slow(delay, text) => {
                    actix_rt::time::sleep(delay).await;
                    Ok(CardActionResponse {
                        toast: Some(Toast::info(text)),
                        card: None,
                    })
                }
                CallbackBehaviour::Fail => Err(CallbackFailed("probe refuses".into())),
            }
        })
    }
}

impl Handler<ConnectionStateChanged> for ProbeActor {
    type Result = ();
    fn handle(&mut self, msg: ConnectionStateChanged, _: &mut Context<Self>) {
        self.0.seen.lock().unwrap().states.push(msg);
        self.0.changed.notify_waiters();
    }
}

/// Sandbox settings whose `ClientConfig` is (ReconnectCount, ReconnectInterval s,
/// ReconnectNonce s, PingInterval s).
pub fn sandbox_with(count: i64, interval: i64, nonce: i64, ping: i64) -> SandboxConfig {
    SandboxConfig {
        client_config: ClientConfig {
            reconnect_count: Some(count),
            reconnect_interval: Some(interval),
            reconnect_nonce: Some(nonce),
            ping_interval: Some(ping),
        },
        ..SandboxConfig::default()
    }
}

/// Sandbox settings for fast tests: ping every second, reconnect without jitter, 1 s cap.
pub fn fast_sandbox_config() -> SandboxConfig {
    sandbox_with(-1, 1, 0, 1)
}

/// A running sandbox, a probe, and a supervised ConnectionActor connected to it.
pub struct Harness {
    pub sandbox: Sandbox,
    pub probe: Probe,
    pub actor: Addr<ConnectionActor>,
    pub config: Config,
}

/// Starts a sandbox with `sandbox_config`, then the actor against it (not waiting for
/// the connection).
pub async fn start(sandbox_config: SandboxConfig) -> Harness {
    start_with(sandbox_config, |_| {}).await
}

/// Like [`start`], with a hook to adjust the client's config first.
pub async fn start_with(
    sandbox_config: SandboxConfig,
    adjust: impl FnOnce(&mut Config),
) -> Harness {
    let sandbox = Sandbox::start(sandbox_config)
        .await
        .expect("sandbox starts");
    let mut config = Config::for_tests(&sandbox.base_url());
    adjust(&mut config);
    let probe = Probe::new();
    let actor = ConnectionActor::new(
        config.app.credentials.clone().unwrap(),
        config.open_base_url(),
        config.connection.clone(),
        probe.outputs(),
    )
    .expect("actor builds")
    .start_supervised();
    Harness {
        sandbox,
        probe,
        actor,
        config,
    }
}

/// Starts with the fast sandbox config and waits until connected and first pinged.
pub async fn start_connected() -> Harness {
    let h = start(fast_sandbox_config()).await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    h.sandbox.wait_for_pings(1, WAIT).await.expect("first ping");
    h
}

/// A schema 2.0 event payload with the given ids.
pub fn event_json(event_id: &str, event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": event_type, "create_time": "1767225600000",
                   "token": "verification-token", "app_id": "cli_sandbox_app", "tenant_key": "tk"},
        "event": {"message": {"message_id": "om_1", "content": "{\"text\":\"你好, world\"}"}}
    }))
    .unwrap()
}

/// The `card.action.trigger` payload of the reference frame in tests/fixtures.
pub fn card_action_json() -> Vec<u8> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frames/event_card_action.bin"
    ))
    .unwrap();
    let frame = lark_auth::protocol::Frame::decode_bytes(bytes.into()).unwrap();
    frame.payload.unwrap().to_vec()
}

/// Runs `fut` with the [`WAIT`] timeout, panicking with `what` on expiry.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ----- OpenAPI side ----------------------------------------------------------------------

/// A sandbox with `sandbox_config` and an OpenAPI client pointed at it (both base URLs),
/// after `adjust` has changed the client's config.
pub async fn openapi_with(
    sandbox_config: SandboxConfig,
    adjust: impl FnOnce(&mut Config),
) -> (Sandbox, lark_auth::openapi::OpenApiClient) {
    let sandbox = Sandbox::start(sandbox_config)
        .await
        .expect("sandbox starts");
    let mut config = Config::for_tests(&sandbox.base_url());
    adjust(&mut config);
    config.validate().expect("test config is valid");
    let client = lark_auth::openapi::OpenApiClient::new(&config).expect("client builds");
    (sandbox, client)
}

/// A default sandbox and a client with the test config.
pub async fn openapi() -> (Sandbox, lark_auth::openapi::OpenApiClient) {
    openapi_with(SandboxConfig::default(), |_| {}).await
}

/// A fixture from tests/fixtures/openapi as JSON.
pub fn openapi_fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/openapi/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A query parameter of a URL.
pub fn query_param(url: &str, key: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Runs the authorization-code flow with PKCE for `open_id` and returns the grant.
pub async fn code_flow_grant(
    sandbox: &Sandbox,
    client: &lark_auth::openapi::OpenApiClient,
    open_id: &str,
) -> lark_auth::openapi::UserTokenGrant {
    let pkce = lark_auth::openapi::PkcePair::generate();
    let url = client.authorize_url(
        lark_auth::sandbox::DEFAULT_REDIRECT_URI,
        &["auth:user.id:read"],
        "state-1",
        &pkce.challenge,
    );
    let redirect = sandbox.authorize(&url, open_id).expect("user consents");
    let code = lark_auth::secret::Secret::new(query_param(&redirect, "code").expect("code"));
    client
        .exchange_code(
            &code,
            lark_auth::sandbox::DEFAULT_REDIRECT_URI,
            Some(&pkce.verifier),
        )
        .await
        .expect("code exchange succeeds")
}

// ----- vault side --------------------------------------------------------------------------

/// A grant record for `open_id` from a token answer of the sandbox, whose access token
/// expires `access_left` from now on our clock (shorter than the sandbox's lifetime, to
/// put it inside the margin).
pub fn grant_record(
    app_id: &str,
    open_id: &str,
    grant: &lark_auth::openapi::UserTokenGrant,
    access_left: Duration,
) -> lark_auth::vault::GrantRecord {
    let now = lark_auth::vault::unix_now_ms();
    lark_auth::vault::GrantRecord {
        app_id: app_id.into(),
        identity: lark_auth::vault::UserIdentity {
            open_id: open_id.into(),
            ..Default::default()
        },
        access_token: grant.access_token.clone(),
        refresh_token: grant.refresh_token.clone().expect("offline_access"),
        access_expires_ms: now + access_left.as_millis() as u64,
        refresh_expires_ms: now
            + grant
                .refresh_token_expires_in
                .expect("offline_access")
                .as_millis() as u64,
        // Obtained `expires_in − access_left` ago: the token keeps the lifetime the
        // sandbox gave it, aged to have `access_left` left.
        issued_ms: (now + access_left.as_millis() as u64)
            .saturating_sub(grant.expires_in.as_millis() as u64),
        scopes: grant.scope.split_whitespace().map(str::to_string).collect(),
        consent_ms: now,
        last_used_ms: now,
        status: lark_auth::vault::GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

thread_local! {
    /// How far [`test_clock`] runs ahead of the system clock, ms (per test thread: the
    /// actix System of an `actix_rt::test` runs on it).
    static CLOCK_OFFSET_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The injected clock of time-dependent tests (unix ms): the system clock plus every
/// [`advance_clock`] so far. Give it to `TokenSource::with_clock` and
/// `RefreshScheduler::with_clock`; it moves in step with the sandbox's clock.
pub fn test_clock() -> u64 {
    lark_auth::vault::unix_now_ms() + CLOCK_OFFSET_MS.with(|o| o.get())
}

/// Moves [`test_clock`] and the sandbox's clock forward by `by` at once.
pub fn advance_clock(sandbox: &Sandbox, by: Duration) {
    CLOCK_OFFSET_MS.with(|o| o.set(o.get() + by.as_millis() as u64));
    sandbox.advance_time(by);
}

/// Opens the vault of `app_id` in `path` with one key (id 1).
pub fn open_vault(
    path: &std::path::Path,
    app_id: &str,
    key: &lark_auth::vault::VaultKey,
) -> lark_auth::vault::Vault {
    let store: Arc<dyn lark_auth::store::Store> =
        Arc::new(lark_auth::store::SledStore::open(path).expect("sled opens"));
    lark_auth::vault::Vault::open(
        store,
        app_id,
        lark_auth::vault::Keyring::single(1, key.clone()),
        lark_auth::vault::DuePolicy::default(),
    )
    .expect("vault opens")
}

/// Refresh-grant requests the sandbox received.
pub fn refresh_requests(sandbox: &Sandbox) -> usize {
    sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count()
}

/// Polls `check` every 10 ms until it holds, or panics after [`WAIT`] naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}
