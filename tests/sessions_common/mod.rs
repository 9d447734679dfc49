//! Harness of the authorization-session tests: a sandbox, a sled store in a temporary
//! directory, the vault, the RouterActor (with fast poll cadence) and, optionally, a
//! ConnectionActor whose outputs go to the router.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lark_auth::config::{AuthFlow, Config};
use lark_auth::connection::ConnectionActor;
use lark_auth::metrics::Metrics;
use lark_auth::openapi::OpenApiClient;
use lark_auth::sandbox::{DEFAULT_REDIRECT_URI, RecordedAck, Sandbox, SandboxConfig};
use lark_auth::session::cards::CardLocale;
use lark_auth::session::machine::{Cadence, SessionState};
use lark_auth::session::{
    GetSession, RouterActor, RouterParts, SessionSettings, SessionView, StartAuthorization,
    StopRouter,
};
use lark_auth::store::{SledStore, Store};
use lark_auth::vault::actor::GetGrant;
use lark_auth::vault::{DuePolicy, GrantRecord, Keyring, TokenVaultActor, Vault, VaultKey};

/// Longest wait for any one event in these tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// The session's user and another tenant user.
pub const USER: &str = "ou_test_user_1";
pub const OTHER: &str = "ou_test_user_2";

pub struct Harness {
    pub sandbox: Sandbox,
    pub router: Addr<RouterActor>,
    vault: Option<Addr<TokenVaultActor>>,
    pub connection: Option<Addr<ConnectionActor>>,
    pub config: Config,
    pub settings: SessionSettings,
    pub keyring: Keyring,
    pub metrics: Metrics,
    pub dir: tempfile::TempDir,
    store: Option<Arc<dyn Store>>,
}

/// Fast settings: the idle cadence is the server interval (1 s in the sandbox).
pub fn fast_settings(config: &Config) -> SessionSettings {
    let mut s = SessionSettings::from_config(config);
    s.app_name = "Demo App".into();
    s.locale = CardLocale::EnUs;
    s.cadence = Cadence {
        idle_factor: 1,
        idle_min_ms: 0,
        retry_ms: 200,
    };
    s
}

pub fn sandbox_config() -> SandboxConfig {
    let mut c = SandboxConfig::default();
    c.openapi.device_poll_interval = Duration::from_secs(1);
    c.client_config.ping_interval = Some(1);
    c.client_config.reconnect_interval = Some(1);
    c.client_config.reconnect_nonce = Some(0);
    c
}

fn open_parts(dir: &std::path::Path, keyring: &Keyring) -> (Arc<dyn Store>, Addr<TokenVaultActor>) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).expect("store opens"));
    let vault = Vault::open(
        store.clone(),
        "cli_sandbox_app",
        keyring.clone(),
        DuePolicy::default(),
    )
    .expect("vault opens");
    (store, TokenVaultActor::start(vault, 2))
}

fn start_router(
    config: &Config,
    settings: &SessionSettings,
    store: Arc<dyn Store>,
    keyring: &Keyring,
    vault: Addr<TokenVaultActor>,
    metrics: &Metrics,
) -> Addr<RouterActor> {
    RouterActor::start(RouterParts {
        client: OpenApiClient::new(config).expect("client builds"),
        store,
        keyring: keyring.clone(),
        vault,
        settings: settings.clone(),
        metrics: metrics.clone(),
        clock: lark_auth::clock::Clock::system(),
    })
    .expect("router starts")
}

/// Starts everything; `connect` also starts the long connection to the sandbox (needed to
/// deliver clicks) and waits until it is up.
pub async fn start(
    flow: AuthFlow,
    connect: bool,
    adjust: impl FnOnce(&mut SessionSettings),
) -> Harness {
    let sandbox = Sandbox::start(sandbox_config()).await.expect("sandbox");
    let mut config = Config::for_tests(&sandbox.base_url());
    config.auth.flow = flow;
    config.auth.redirect_uri = DEFAULT_REDIRECT_URI.into();
    let mut settings = fast_settings(&config);
    adjust(&mut settings);
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::single(1, VaultKey::generate());
    let (store, vault) = open_parts(dir.path(), &keyring);
    let metrics = Metrics::new();
    let router = start_router(
        &config,
        &settings,
        store.clone(),
        &keyring,
        vault.clone(),
        &metrics,
    );
    let connection = if connect {
        let actor = ConnectionActor::new(
            config.app.credentials.clone().unwrap(),
            config.open_base_url(),
            config.connection.clone(),
            RouterActor::outputs(&router),
        )
        .unwrap()
        .start_supervised();
        sandbox
            .wait_for_active_connections(1, WAIT)
            .await
            .expect("connected");
        sandbox.wait_for_pings(1, WAIT).await.expect("first ping");
        Some(actor)
    } else {
        None
    };
    Harness {
        sandbox,
        router,
        vault: Some(vault),
        connection,
        config,
        settings,
        keyring,
        metrics,
        dir,
        store: Some(store),
    }
}

impl Harness {
    pub async fn authorize(&self, open_id: &str) -> SessionView {
        self.router
            .send(StartAuthorization {
                open_id: open_id.into(),
                scopes: vec!["auth:user.id:read".into()],
            })
            .await
            .unwrap()
            .expect("session starts")
    }

    pub async fn session(&self, session_id: &str) -> SessionView {
        self.router
            .send(GetSession {
                session_id: session_id.into(),
            })
            .await
            .unwrap()
            .unwrap()
            .expect("session exists")
    }

    /// Waits until the session reaches `state` (checked after each transition is stored).
    pub async fn wait_for_state(&self, session_id: &str, state: SessionState) -> SessionView {
        eventually(&format!("session {session_id} in {state:?}"), || async {
            let view = self.session(session_id).await;
            (view.state == state).then_some(view)
        })
        .await
    }

    pub async fn grant(&self, open_id: &str) -> Option<GrantRecord> {
        self.vault
            .as_ref()
            .unwrap()
            .send(GetGrant {
                open_id: open_id.into(),
            })
            .await
            .unwrap()
            .unwrap()
    }

    /// The `user_code` of the device authorization behind the session's card.
    pub async fn user_code(&self, n_cards: usize) -> String {
        let cards = self
            .sandbox
            .wait_for_sent_cards(n_cards, WAIT)
            .await
            .unwrap();
        let url = authorize_url(&cards[n_cards - 1].card);
        query_param(&url, "user_code").expect("user_code in the verification URL")
    }

    /// Pushes a `card.action.trigger` click over the long connection and returns the
    /// frame's message id.
    pub fn click(&self, event_id: &str, session_id: &str, operator: &str, action: &str) -> String {
        let message_id = self
            .sandbox
            .sent_cards()
            .first()
            .map(|c| c.message_id.clone())
            .unwrap_or_default();
        let token = self.sandbox.issue_card_update_token(&message_id);
        self.sandbox
            .push_event(&click_json(
                event_id,
                session_id,
                operator,
                action,
                token.expose(),
                &message_id,
            ))
            .expect("pushed")
    }

    /// The ack of a pushed frame, waiting for it.
    pub async fn ack_of(&self, message_id: &str) -> RecordedAck {
        eventually(&format!("ack of {message_id}"), || async {
            self.sandbox
                .acks()
                .into_iter()
                .find(|a| a.message_id == message_id)
        })
        .await
    }

    /// Stops the router and its sessions, closes the store and the vault, reopens the
    /// same directory and starts a new router on it (a process restart).
    pub async fn restart(&mut self) {
        self.router.send(StopRouter).await.unwrap();
        self.vault = None;
        // The stopped actors release the store on the System's thread: wait for that
        // before reopening (the open blocks this thread).
        let store = self.store.take().unwrap();
        eventually("the old actors to release the store", || async {
            (Arc::strong_count(&store) == 1).then_some(())
        })
        .await;
        drop(store);
        let (store, vault) = open_parts(self.dir.path(), &self.keyring);
        self.vault = Some(vault.clone());
        self.router = start_router(
            &self.config,
            &self.settings,
            store.clone(),
            &self.keyring,
            vault,
            &self.metrics,
        );
        self.store = Some(store);
    }
}

/// Retries `check` every 20 ms until it yields a value, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The URL the card's Authorize button opens (the AppLink's `url` parameter).
pub fn authorize_url(card: &serde_json::Value) -> String {
    let button = &card["body"]["elements"][1]["behaviors"][0]["default_url"];
    let applink = button.as_str().expect("authorize button url");
    query_param(applink, "url").unwrap_or_else(|| applink.to_string())
}

pub fn query_param(url: &str, key: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub fn click_json(
    event_id: &str,
    session_id: &str,
    operator: &str,
    action: &str,
    token: &str,
    message_id: &str,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "card.action.trigger",
                   "create_time": "1767225600000", "token": "verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {
            "operator": {"tenant_key": "tk_test_tenant_0001", "open_id": operator},
            "token": token,
            "action": {"value": {"action": action, "session_id": session_id}, "tag": "button"},
            "host": "im_message",
            "context": {"open_message_id": message_id, "open_chat_id": "oc_1"}
        }
    }))
    .unwrap()
}

/// The callback answer carried by an ack, as JSON.
pub fn ack_data(ack: &RecordedAck) -> serde_json::Value {
    serde_json::from_slice(ack.data().expect("the ack carries a callback answer")).unwrap()
}

/// The header title of a card.
pub fn title(card: &serde_json::Value) -> String {
    card["header"]["title"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
