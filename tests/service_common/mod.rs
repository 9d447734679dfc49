//! Harness of the tests that run the whole service: a sandbox and `LarkAuth::start_with`
//! on it (control API on a free loopback port), and the simulated user's part of an
//! authorization (click on the card, approval on the device page).
#![allow(dead_code)]

use lark_auth::config::Config;
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};

#[path = "../sessions_common/mod.rs"]
pub mod sessions_common;

pub use sessions_common::{USER, WAIT, authorize_url, click_json, eventually, query_param};

/// The control API's bearer token in these tests.
pub const API_TOKEN: &str = "library-test-api-token";

/// A running service and its sandbox.
pub struct Instance {
    pub sandbox: Sandbox,
    pub handle: Handle,
    pub _dir: tempfile::TempDir,
}

impl Instance {
    /// `http://127.0.0.1:<port>` of the control API.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.http_addr().expect("http started"))
    }
}

/// A service with default settings, connected.
pub async fn start_instance() -> Instance {
    start_instance_with(|_, _| {}).await
}

/// A service after `adjust` changed the sandbox's settings and the service's `refresh`,
/// `events`, `proxy` and `sidecar` (every base URL is the sandbox's), connected.
pub async fn start_instance_with(adjust: impl FnOnce(&mut SandboxConfig, &mut Config)) -> Instance {
    let mut sandbox_config = sessions_common::sandbox_config();
    let mut config = Config::default();
    adjust(&mut sandbox_config, &mut config);
    let sandbox = Sandbox::start(sandbox_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refresh = config.refresh.clone();
    let events = config.events.clone();
    let proxy = config.proxy.clone();
    let sidecar = config.sidecar.clone();
    let mut config = Config::for_tests(&sandbox.base_url());
    config.refresh = refresh;
    config.events = events;
    config.proxy = proxy;
    config.sidecar = sidecar;
    config.endpoints.mcp_base_url = Some(sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new(API_TOKEN.into())),
            http: true,
            accept_loss: false,
        },
    )
    .expect("starts");
    handle.wait_connected(WAIT).await.expect("connects in time");
    Instance {
        sandbox,
        handle,
        _dir: dir,
    }
}

/// The user's answer on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChoice {
    /// Clicks Authorize (reported over the long connection) and approves on the page.
    Approve,
    /// Clicks Decline on the card.
    Decline,
}

/// Plays `USER` on the `n`-th card sent (0-based) of session `session_id`.
pub async fn answer_card(i: &Instance, n: usize, session_id: &str, choice: UserChoice) {
    let cards = i.sandbox.wait_for_sent_cards(n + 1, WAIT).await.unwrap();
    let card = &cards[n];
    let card_token = i.sandbox.issue_card_update_token(&card.message_id);
    let action = match choice {
        UserChoice::Approve => "authorize",
        UserChoice::Decline => "decline",
    };
    i.sandbox
        .push_event(&click_json(
            &format!("ev_click_{action}_{session_id}"),
            session_id,
            USER,
            action,
            card_token.expose(),
            &card.message_id,
        ))
        .unwrap();
    if choice == UserChoice::Approve {
        let url = authorize_url(&card.card);
        let user_code = query_param(&url, "user_code").expect("user code");
        i.sandbox.approve_device(&user_code, USER).unwrap();
    }
}

/// Runs one device-flow authorization of `USER` through the handle to the end; returns
/// the session id.
pub async fn authorize_user(i: &Instance) -> String {
    let view = i.handle.authorize(USER, vec![]).await.expect("started");
    let n = i.sandbox.sent_cards().len();
    answer_card(i, n, &view.session_id, UserChoice::Approve).await;
    let handle = &i.handle;
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
    view.session_id
}
