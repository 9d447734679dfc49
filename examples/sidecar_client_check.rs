//! A second, independent client of the sidecar door: `scripts/sidecar_client_check.py`
//! (Python standard library only, written from `shared/docs/lark-cli-sidecar.md`) against
//! lark-auth's sidecar listener. If two implementations of the protocol agree, the
//! canonical string is right.
//!
//! Starts the sandbox and `LarkAuth` on it with `[sidecar]` on a free loopback port and
//! one client bound to a sandbox user, authorizes that user (card click, device page),
//! then runs the script: user calls (user_info, an upload) and a bot call must succeed,
//! tampered ones be refused; and checks that none of the refused calls reached the
//! sandbox.
//!
//! Run: `cargo run --example sidecar_client_check -- --python python3` (or
//! `scripts/check-official-client.sh`). Exit code 0 only when every check passed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use lark_auth::config::{Config, SidecarClientConfig, SidecarIdentity};
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{LarkAuth, StartOptions};

const USER: &str = "ou_test_user_1";

/// Command line of the check.
#[derive(Parser, Debug)]
struct Args {
    /// Python 3 interpreter (the script needs only its standard library).
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// The client script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sidecar_client_check.py"))]
    script: PathBuf,
    /// Bound of each wait, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// `name=value` of the query of `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Plays the user on the authorization card: the click, then consent on the device page.
async fn authorize(
    handle: &lark_auth::Handle,
    sandbox: &Sandbox,
    timeout: Duration,
) -> Result<(), String> {
    let view = handle
        .authorize(USER, vec![])
        .await
        .map_err(|e| e.to_string())?;
    let cards = sandbox
        .wait_for_sent_cards(1, timeout)
        .await
        .map_err(|e| format!("no card: {e}"))?;
    let card = &cards[0];
    let link = card.card["body"]["elements"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["behaviors"].as_array().into_iter().flatten())
        .find_map(|b| b["default_url"].as_str())
        .ok_or("no Authorize link on the card")?;
    let page = query_param(link, "url").unwrap_or_else(|| link.to_string());
    let user_code = query_param(&page, "user_code").ok_or("no user_code")?;
    let card_token = sandbox.issue_card_update_token(&card.message_id);
    let click = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "ev_sidecar_check_click", "event_type": "card.action.trigger",
                   "create_time": "1767225600000", "token": "verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {"operator": {"tenant_key": "tk_test_tenant_0001", "open_id": USER},
                  "token": card_token.expose(),
                  "action": {"tag": "button", "value": {"action": "authorize", "session_id": view.session_id}},
                  "host": "im_message",
                  "context": {"open_message_id": card.message_id, "open_chat_id": "oc_1"}}
    });
    sandbox
        .push_event(click.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    sandbox
        .approve_device(&user_code, USER)
        .map_err(|e| format!("{e:?}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(v)) = handle.session(&view.session_id).await {
            // The session's identity check (user_info) may land just after.
            if v.state == SessionState::Authorized && sandbox.user_info_requests() > 0 {
                return Ok(());
            }
            if v.state.is_terminal() {
                return Err(format!("the session ended {}", v.state.as_str()));
            }
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the authorization did not finish in time".into())
}

async fn run(args: Args) -> Result<bool, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| format!("sandbox start: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.sidecar.listen = "127.0.0.1:0".into();
    let key = lark_auth::cli::new_sidecar_key();
    config.sidecar.clients = vec![SidecarClientConfig {
        name: "python-check".into(),
        key_env: "SIDECAR_CHECK_KEY".into(),
        open_id: USER.into(),
        identities: vec![SidecarIdentity::User, SidecarIdentity::Bot],
        key: Some(Secret::new(key.expose().clone())),
    }];
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .map_err(|e| format!("start: {e}"))?;
    handle
        .wait_connected(timeout)
        .await
        .map_err(|e| e.to_string())?;
    authorize(&handle, &sandbox, timeout).await?;
    let addr = handle.sidecar_addr().ok_or("the sidecar did not start")?;
    let before = (sandbox.api_requests().len(), sandbox.user_info_requests());

    // The script blocks on its HTTP calls: run it off the System's thread.
    let (python, script) = (args.python.clone(), args.script.clone());
    let key_text = key.expose().clone();
    let output = actix_rt::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args([&format!("http://{addr}"), &key_text, USER])
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running {}: {e}", args.python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut ok = true;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let passed = v["ok"] == true;
        ok &= passed;
        println!(
            "{}  python client: {} (HTTP {}){}",
            if passed { "PASS" } else { "FAIL" },
            v["name"].as_str().unwrap_or(line),
            v["status"],
            if passed {
                String::new()
            } else {
                format!(": {}", v["body"])
            }
        );
    }
    if !output.status.success() {
        ok = false;
        println!(
            "FAIL  the script exited {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Three accepted calls reached the sandbox (upload and tenant query are recorded
    // API requests, user_info is counted apart); the five tampered ones did not.
    let after = (sandbox.api_requests().len(), sandbox.user_info_requests());
    let reached = (after.0 - before.0, after.1 - before.1);
    let nothing_else = reached == (2, 1);
    println!(
        "{}  only the accepted calls reached the sandbox ({} API requests, {} user_info)",
        if nothing_else { "PASS" } else { "FAIL" },
        reached.0,
        reached.1
    );
    ok &= nothing_else;
    let sentinel = sandbox
        .api_requests()
        .iter()
        .skip(before.0)
        .all(|r| r.bearer().is_some_and(|t| t != "sentinel"));
    println!(
        "{}  the client's own Authorization was replaced by the real token",
        if sentinel { "PASS" } else { "FAIL" }
    );
    ok &= sentinel;
    handle.shutdown(Duration::from_secs(2)).await;
    println!(
        "sidecar client check: {}",
        if ok { "all checks passed" } else { "FAIL" }
    );
    Ok(ok)
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let args = Args::parse();
    match actix_rt::System::new().block_on(run(args)) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("FAIL  setup: {e}");
            println!("sidecar client check: FAIL");
            std::process::exit(2);
        }
    }
}
