//! The control API's routes as an operator or another system calls them: bearer auth,
//! JSON errors, grants without secrets, revoke, health and metrics.

mod common;

use std::sync::Arc;

use common::*;
use lark_auth::connection::ConnectionState;
use lark_auth::http::{self, ControlState, HttpFront};
use lark_auth::metrics::Metrics;
use lark_auth::secret::Secret;
use lark_auth::store::{SledStore, Store};
use lark_auth::vault::actor::StoreGrant;
use lark_auth::vault::{
    DuePolicy, GrantRecord, GrantStatus, Keyring, TokenVaultActor, UserIdentity, Vault, VaultKey,
};

const TOKEN: &str = "control-api-test-token";

fn grant(open_id: &str) -> GrantRecord {
    GrantRecord {
        app_id: "cli_sandbox_app".into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            union_id: None,
            user_id: None,
            name: Some("Test User".into()),
            tenant_key: None,
        },
        access_token: Secret::new("u-ACCESS-SECRET-VALUE".into()),
        refresh_token: Secret::new("ur-REFRESH-SECRET-VALUE".into()),
        access_expires_ms: 1_767_225_600_000,
        refresh_expires_ms: 1_767_830_400_000,
        issued_ms: 0,
        scopes: vec!["offline_access".into()],
        consent_ms: 1_767_218_400_000,
        last_used_ms: 1_767_218_400_000,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

struct Api {
    front: HttpFront,
    client: awc::Client,
    _dir: tempfile::TempDir,
    vault: actix::Addr<TokenVaultActor>,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.front.local_addr)
    }
}

async fn start_api(h: &Harness, metrics: Metrics) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(
        store,
        "cli_sandbox_app",
        Keyring::single(1, VaultKey::generate()),
        DuePolicy::default(),
    )
    .unwrap();
    let vault = TokenVaultActor::start(vault, 1);
    let mut state = ControlState::new(Some(&Secret::new(TOKEN.to_string())), metrics);
    state.connection = Some(h.actor.clone());
    state.vault = Some(vault.clone());
    let front = http::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
    Api {
        front,
        client: awc::Client::default(),
        _dir: dir,
        vault,
    }
}

#[actix_rt::test]
async fn protected_routes_need_the_bearer_token_and_answer_json_errors() {
    let h = start_connected().await;
    let api = start_api(&h, Metrics::new()).await;
    for auth in [None, Some("Bearer wrong-token"), Some("Basic abc")] {
        let mut req = api.client.get(api.url("/v1/grants"));
        if let Some(auth) = auth {
            req = req.insert_header(("Authorization", auth));
        }
        let mut res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let res = api
        .client
        .get(api.url("/v1/grants"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_rt::test]
async fn grants_are_listed_without_secrets_and_can_be_revoked() {
    let h = start_connected().await;
    let api = start_api(&h, Metrics::new()).await;
    api.vault
        .send(StoreGrant {
            record: grant("ou_listed"),
        })
        .await
        .unwrap()
        .unwrap();

    let mut res = api
        .client
        .get(api.url("/v1/grants"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(!text.contains("SECRET-VALUE"), "{text}");
    let grants: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(grants[0]["open_id"], "ou_listed");
    assert_eq!(grants[0]["status"], "active");
    assert_eq!(grants[0]["scopes"], serde_json::json!(["offline_access"]));
    assert_eq!(grants[0]["access_expires_at"], "2026-01-01T00:00:00.000Z");

    let res = api
        .client
        .delete(api.url("/v1/grants/ou_listed"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let grants: serde_json::Value = api
        .client
        .get(api.url("/v1/grants"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grants[0]["status"], "revoked");

    let mut res = api
        .client
        .delete(api.url("/v1/grants/ou_nobody"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "no_grant");
}

#[actix_rt::test]
async fn healthz_is_open_and_reports_connection_and_vault() {
    let h = start_connected().await;
    let api = start_api(&h, Metrics::new()).await;
    let mut res = api.client.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"connection": "connected", "vault": "ok", "store": "ok"})
    );
}

#[actix_rt::test]
async fn healthz_is_503_once_the_connection_failed_for_good() {
    let h = start_with(fast_sandbox_config(), |config| {
        config.app.credentials.as_mut().unwrap().app_secret = Secret::new("wrong".into());
    })
    .await;
    h.probe.wait_for_state(ConnectionState::Failed, 1).await;
    let api = start_api(&h, Metrics::new()).await;
    let mut res = api.client.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["connection"], "failed");
}

#[actix_rt::test]
async fn metrics_need_the_token_and_are_in_the_text_format() {
    let h = start_connected().await;
    let metrics = Metrics::new();
    metrics.connection_state("connected");
    let api = start_api(&h, metrics).await;
    let res = api.client.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(
        res.status().as_u16(),
        401,
        "INTERFACE.md: only /healthz and /oauth/callback are open"
    );
    let mut res = api
        .client
        .get(api.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("lark_auth_connection_state{state=\"connected\"} 1"),
        "{text}"
    );
}
