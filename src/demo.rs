//! `lark-auth demo`: the product end to end, without credentials or network.
//!
//! Starts the sandbox (the fake Lark platform) on loopback and the real service
//! ([`LarkAuth::start`]: connection, sessions, vault, refresh, control API) against it, then
//! narrates one authorization: the card sent to the user, the user's click (answered
//! within the callback deadline), the approval on the device page, each session state
//! seen, the final card, a token lookup through the control API, and the refresh of the
//! short-lived token (the sandbox's tokens live 8 s). Exits 0 when all of that happened.

use std::io::Write;
use std::time::Duration;

use crate::app::{Handle, LarkAuth, StartOptions};
use crate::config::{CardLocale, Config};
use crate::connection::ConnectionState;
use crate::protocol::endpoint::ClientConfig;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::secret::Secret;
use crate::session::machine::SessionState;
use crate::vault::{Keyring, VaultKey};

/// Longest wait for any one step of the demo.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The simulated user.
const USER: &str = "ou_test_user_1";
/// Lifetime of the sandbox's access tokens in the demo.
const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(8);

/// Why the demo failed. Each names the step that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The sandbox could not bind a loopback port.
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[source] std::io::Error),
    /// The service could not start.
    #[error("cannot start the service: {0}")]
    Start(#[from] crate::app::StartError),
    /// A step did not complete in time.
    #[error("step `{0}` did not complete within 20 s")]
    Timeout(&'static str),
    /// A step completed with an unexpected result.
    #[error("step `{step}` went wrong: {detail}")]
    Unexpected {
        /// The step.
        step: &'static str,
        /// What was seen.
        detail: String,
    },
    /// Writing the narration failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

fn unexpected(step: &'static str, detail: impl std::fmt::Display) -> DemoError {
    DemoError::Unexpected {
        step,
        detail: detail.to_string(),
    }
}

async fn within<T>(
    step: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, DemoError> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| DemoError::Timeout(step))
}

/// Shows the first characters of a secret and its length, never the whole value.
fn masked(secret: &str) -> String {
    let head: String = secret.chars().take(6).collect();
    format!("{head}… ({} chars)", secret.chars().count())
}

fn card_summary(card: &serde_json::Value) -> Vec<String> {
    let mut lines = vec![format!(
        "  title: {}",
        card["header"]["title"]["content"].as_str().unwrap_or("?")
    )];
    for element in card["body"]["elements"].as_array().into_iter().flatten() {
        match element["tag"].as_str() {
            Some("markdown") => {
                for line in element["content"].as_str().unwrap_or("").lines() {
                    lines.push(format!("  | {line}"));
                }
            }
            Some("button") => {
                let behaviours: Vec<&str> = element["behaviors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["type"].as_str())
                    .collect();
                lines.push(format!(
                    "  [{}] ({})",
                    element["text"]["content"].as_str().unwrap_or("?"),
                    behaviours.join(" + ")
                ));
            }
            _ => {}
        }
    }
    lines
}

/// Runs the demo inside the current actix System, narrating to `out`, the card and its
/// toasts in `card_locale` (as `auth.card_locale` sets them).
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn run(out: &mut impl Write, card_locale: CardLocale) -> Result<(), DemoError> {
    let mut sandbox_config = SandboxConfig {
        client_config: ClientConfig {
            reconnect_count: Some(-1),
            reconnect_interval: Some(2),
            reconnect_nonce: Some(1),
            ping_interval: Some(5),
        },
        ..SandboxConfig::default()
    };
    sandbox_config.openapi.access_token_lifetime = ACCESS_TOKEN_LIFETIME;
    sandbox_config.openapi.device_poll_interval = Duration::from_secs(1);
    let sandbox = Sandbox::start(sandbox_config)
        .await
        .map_err(DemoError::Sandbox)?;
    writeln!(
        out,
        "sandbox: fake Lark platform on {} (long connection, OAuth, IM, simulated users)",
        sandbox.base_url()
    )?;

    let dir = std::env::temp_dir().join(format!(
        "lark-auth-demo-{}-{}",
        std::process::id(),
        crate::clock::unix_now_ms()
    ));
    let result = run_with(&sandbox, &dir, card_locale, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    sandbox.stop().await;
    result
}

async fn run_with(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    card_locale: CardLocale,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let mut config = Config::for_tests(&sandbox.base_url());
    config.auth.card_locale = card_locale;
    config.vault.path = dir.join("vault");
    config.http.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.connection.callback_budget = Duration::from_secs(2);
    config.connection.liveness_margin = Duration::from_secs(5);
    // Refresh when less than 5 s of the 8 s token is left.
    config.refresh.margin = Duration::from_secs(5);
    config.refresh.ahead = Duration::from_secs(5);
    let api_token = format!("demo-{}", uuid::Uuid::new_v4());
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new(api_token.clone())),
            http: true,
            accept_loss: false,
        },
    )?;
    let outcome = narrate(sandbox, &handle, &api_token, out).await;
    handle.shutdown(Duration::from_secs(3)).await;
    outcome?;
    writeln!(
        out,
        "stop: connection closed, sessions persisted, vault flushed"
    )?;
    writeln!(out, "demo OK")?;
    Ok(())
}

async fn narrate(
    sandbox: &Sandbox,
    handle: &Handle,
    api_token: &str,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let http = handle
        .http_addr()
        .ok_or_else(|| unexpected("control API", "not started"))?;
    writeln!(
        out,
        "service: vault (sealed, in a temporary directory), sessions, refresh scheduler, control API on http://{http}"
    )?;
    let mut states = handle.connection_states();
    within(
        "connect",
        states.wait_for(|r| r.state == ConnectionState::Connected),
    )
    .await?
    .map_err(|e| unexpected("connect", e))?;
    writeln!(
        out,
        "connection: endpoint discovered, WebSocket up, first ping answered"
    )?;

    // 1. Someone asks for USER's authorization.
    let view = handle
        .authorize(USER, vec!["contact:user.base:readonly".into()])
        .await
        .map_err(|e| unexpected("authorize", e))?;
    writeln!(out, "authorize {USER}: session {} created", view.session_id)?;

    // 2. The card reaches the user.
    let cards = within("card sent", sandbox.wait_for_sent_cards(1, STEP_TIMEOUT))
        .await?
        .map_err(|e| unexpected("card sent", e))?;
    let card = &cards[0];
    writeln!(
        out,
        "card sent to {} (message {}):",
        card.receive_id, card.message_id
    )?;
    for line in card_summary(&card.card) {
        writeln!(out, "{line}")?;
    }
    let open_url = card.card["body"]["elements"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["behaviors"].as_array().into_iter().flatten())
        .find_map(|b| b["default_url"].as_str())
        .ok_or_else(|| unexpected("card sent", "no Authorize link"))?
        .to_string();
    let target = url::Url::parse(&open_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "url")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or(open_url);
    let user_code = url::Url::parse(&target)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "user_code")
                .map(|(_, v)| v.into_owned())
        })
        .ok_or_else(|| unexpected("card sent", "no user_code in the device link"))?;

    // 3. The user clicks Authorize: the click arrives over the long connection.
    let card_token = sandbox.issue_card_update_token(&card.message_id);
    let click = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "demo_click_1", "event_type": "card.action.trigger",
                   "create_time": "1767225600000000", "token": "demo-verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {"operator": {"tenant_key": "tk_test_tenant_0001", "open_id": USER},
                  "token": card_token.expose(),
                  "action": {"tag": "button", "value": {"action": "authorize", "session_id": view.session_id}},
                  "host": "im_message",
                  "context": {"open_message_id": card.message_id, "open_chat_id": "oc_demo"}}
    });
    sandbox
        .push_event(click.to_string().as_bytes())
        .map_err(|e| unexpected("click", e))?;
    let acks = within("click answered", sandbox.wait_for_acks(1, STEP_TIMEOUT))
        .await?
        .map_err(|e| unexpected("click answered", e))?;
    let toast = acks[0]
        .data()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok())
        .and_then(|v| v["toast"]["content"].as_str().map(str::to_string))
        .unwrap_or_else(|| "none".into());
    writeln!(
        out,
        "click: {USER} pressed Authorize; callback answered in {} ms with toast \"{toast}\"",
        acks[0].biz_rt.as_deref().unwrap_or("?")
    )?;

    // 4. The user approves on the device page.
    sandbox
        .approve_device(&user_code, USER)
        .map_err(|e| unexpected("approve", format!("{e:?}")))?;
    writeln!(out, "consent: {USER} approved on the authorization page")?;

    let mut seen = vec![SessionState::Created];
    let finished = within("session ends", async {
        loop {
            if let Ok(Some(v)) = handle.session(&view.session_id).await {
                if seen.last() != Some(&v.state) {
                    seen.push(v.state);
                }
                if v.state.is_terminal() {
                    return v;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let names: Vec<&str> = seen.iter().map(|s| s.as_str()).collect();
    writeln!(out, "session states seen: {}", names.join(" -> "))?;
    if finished.state != SessionState::Authorized {
        return Err(unexpected(
            "session ends",
            format!("ended {:?} ({:?})", finished.state, finished.reason),
        ));
    }

    let final_title = within("final card", async {
        loop {
            let patched = sandbox
                .card_patches()
                .last()
                .map(|p| p.card.clone())
                .or_else(|| {
                    sandbox
                        .delayed_card_updates()
                        .last()
                        .map(|u| u.card.clone())
                });
            if let Some(card) = patched {
                return card["header"]["title"]["content"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    writeln!(out, "card updated: \"{final_title}\"")?;

    // 5. Another system asks for the token over the control API.
    let client = awc::Client::default();
    let url = format!("http://{http}/v1/grants/{USER}/token");
    let lookup = |client: awc::Client, url: String, bearer: String| async move {
        let mut res = client
            .get(url)
            .bearer_auth(bearer)
            .send()
            .await
            .map_err(|e| unexpected("token lookup", e))?;
        let body: serde_json::Value = res
            .json()
            .await
            .map_err(|e| unexpected("token lookup", e))?;
        if res.status().as_u16() != 200 {
            return Err(unexpected("token lookup", body));
        }
        Ok::<_, DemoError>(body)
    };
    let first = within(
        "token lookup",
        lookup(client.clone(), url.clone(), api_token.to_string()),
    )
    .await??;
    let first_token = first["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    writeln!(
        out,
        "token: GET /v1/grants/{USER}/token -> {} expires {}",
        masked(&first_token),
        first["expires_at"].as_str().unwrap_or("?")
    )?;

    // 6. The token lives 8 s; inside the 5 s margin it is refreshed before it is served.
    actix_rt::time::sleep(ACCESS_TOKEN_LIFETIME - Duration::from_secs(4)).await;
    let second = within("refresh", lookup(client, url, api_token.to_string())).await??;
    let second_token = second["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refreshes = sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    if second_token == first_token || refreshes == 0 {
        return Err(unexpected(
            "refresh",
            "the short-lived token was not refreshed",
        ));
    }
    writeln!(
        out,
        "refresh: 4 s later the token was inside its margin and was refreshed first: {} expires {} ({refreshes} refresh call(s), refresh-token reuse {})",
        masked(&second_token),
        second["expires_at"].as_str().unwrap_or("?"),
        sandbox.refresh_token_reuse_violations()
    )?;
    Ok(())
}
