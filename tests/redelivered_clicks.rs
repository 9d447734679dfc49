//! A card click the platform delivers again (same `message_id`, same `event_id`: it did
//! not get the ack in time) gets the first answer again in the copy's ack: on the same
//! connection, after a reconnect, while the first is still being answered, and after the
//! service restarted on the same vault. The session is touched once.

mod sessions_common;

use std::process::{Command, Stdio};

use lark_auth::config::AuthFlow;
use lark_auth::sandbox::{RecordedAck, Sandbox};
use lark_auth::session::machine::SessionState;
use sessions_common::*;

/// The first `n` acks of `message_id`, waiting for them.
async fn acks_of(sandbox: &Sandbox, message_id: &str, n: usize) -> Vec<RecordedAck> {
    eventually(&format!("{n} acks of {message_id}"), || async {
        let acks: Vec<_> = sandbox
            .acks()
            .into_iter()
            .filter(|a| a.message_id == message_id)
            .collect();
        (acks.len() >= n).then_some(acks)
    })
    .await
}

#[actix_rt::test]
async fn a_redelivered_click_gets_the_first_answer_on_the_same_and_on_a_new_connection() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    h.user_code(1).await;

    let pushed = h.click("ev_redelivered", &view.session_id, USER, "decline");
    let first = ack_data(&h.ack_of(&pushed).await);
    assert_eq!(first["toast"]["content"], "Authorization declined");
    h.wait_for_state(&view.session_id, SessionState::Denied)
        .await;

    // Same connection.
    h.sandbox.push_duplicate(&pushed).unwrap();
    let acks = acks_of(&h.sandbox, &pushed, 2).await;
    assert_eq!(acks[1].code(), Some(200));
    assert_eq!(
        ack_data(&acks[1]),
        first,
        "the copy carries the first answer"
    );

    // After a reconnect (the platform may redeliver on another connection).
    h.sandbox.close_all();
    h.sandbox.wait_for_connections(2, WAIT).await.unwrap();
    h.sandbox.push_duplicate(&pushed).unwrap();
    let acks = acks_of(&h.sandbox, &pushed, 3).await;
    assert_ne!(
        acks[2].connection, acks[0].connection,
        "on the new connection"
    );
    assert_eq!(ack_data(&acks[2]), first);

    // One transition: one declined card, the session unchanged.
    let after = h.session(&view.session_id).await;
    assert_eq!(after.state, SessionState::Denied);
    eventually("the declined card", || async {
        (!h.sandbox.card_patches().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        h.sandbox.card_patches().len(),
        1,
        "the copies never reached the session"
    );
}

#[actix_rt::test]
async fn a_copy_arriving_while_the_first_is_answered_gets_the_same_answer() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let view = h.authorize(USER).await;
    h.user_code(1).await;

    // The copy follows at once: it reaches the router while the first click is still
    // with the store and the session.
    let pushed = h.click("ev_back_to_back", &view.session_id, USER, "decline");
    h.sandbox.push_duplicate(&pushed).unwrap();
    let acks = acks_of(&h.sandbox, &pushed, 2).await;
    let first = ack_data(&acks[0]);
    assert_eq!(first["toast"]["content"], "Authorization declined");
    assert_eq!(
        ack_data(&acks[1]),
        first,
        "the copy joined the first answer"
    );

    h.wait_for_state(&view.session_id, SessionState::Denied)
        .await;
    eventually("the declined card", || async {
        (!h.sandbox.card_patches().is_empty()).then_some(())
    })
    .await;
    assert_eq!(h.sandbox.card_patches().len(), 1, "one transition");
}

// ----- after a restart of the service (the binary, on the same vault) -------------------

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
/// 32 bytes, base64.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const API_TOKEN: &str = "api-token-value";

/// `lark-auth serve` against `sandbox` with its vault in `dir`, logging to `log`.
fn spawn_serve(
    dir: &std::path::Path,
    sandbox: &Sandbox,
    port: u16,
    log: &str,
) -> std::process::Child {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n\
             [vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{2}\"\n[log]\nlevel = \"info,lark_auth=debug\"\n",
            sandbox.base_url(),
            dir.join("vault").display(),
            port
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("LARK_APP_ID", "cli_sandbox_app")
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", API_TOKEN)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Waits until `serve` on `port` reports the long connection up.
async fn wait_connected(port: u16) {
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually("serve connected", || async {
        let mut res = client.get(&url).send().await.ok()?;
        let body: serde_json::Value = res.json().await.ok()?;
        (body["connection"] == "connected").then_some(())
    })
    .await;
}

/// `GET /v1/authorizations/{session_id}` as JSON.
async fn session_json(port: u16, session_id: &str) -> serde_json::Value {
    awc::Client::default()
        .get(format!(
            "http://127.0.0.1:{port}/v1/authorizations/{session_id}"
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// SIGTERM, then waits for a clean exit.
async fn stop(child: std::process::Child) {
    let pid = child.id().to_string();
    let status = actix_rt::task::spawn_blocking(move || {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut child = child;
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "serve stops cleanly");
}

#[actix_rt::test]
async fn a_click_redelivered_after_a_restart_gets_the_kept_answer_and_leaves_the_session() {
    let sandbox = Sandbox::start(sandbox_config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = spawn_serve(dir.path(), &sandbox, port, "first.log");
    wait_connected(port).await;

    let mut res = awc::Client::default()
        .post(format!("http://127.0.0.1:{port}/v1/authorizations"))
        .bearer_auth(API_TOKEN)
        .send_json(&serde_json::json!({"open_id": USER}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let started: serde_json::Value = res.json().await.unwrap();
    let session_id = started["session_id"].as_str().unwrap().to_string();
    let cards = sandbox.wait_for_sent_cards(1, WAIT).await.unwrap();
    let token = sandbox.issue_card_update_token(&cards[0].message_id);
    let pushed = sandbox
        .push_event(&click_json(
            "ev_across_restart",
            &session_id,
            USER,
            "decline",
            token.expose(),
            &cards[0].message_id,
        ))
        .unwrap();
    let first = ack_data(&acks_of(&sandbox, &pushed, 1).await[0]);
    assert!(first["toast"].is_object(), "the click is answered: {first}");
    let before = eventually("the session denied", || async {
        let view = session_json(port, &session_id).await;
        (view["state"] == "denied").then_some(view)
    })
    .await;
    eventually("the declined card", || async {
        (!sandbox.card_patches().is_empty()).then_some(())
    })
    .await;
    stop(serve).await;

    // The same vault, a new process: the platform delivers the click again.
    let serve = spawn_serve(dir.path(), &sandbox, port, "second.log");
    wait_connected(port).await;
    sandbox.push_duplicate(&pushed).unwrap();
    let acks = acks_of(&sandbox, &pushed, 2).await;
    assert_ne!(acks[1].connection, acks[0].connection);
    assert_eq!(acks[1].code(), Some(200));
    let logs = || {
        ["first.log", "second.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .join("\n----- restart -----\n")
    };
    assert_eq!(
        ack_data(&acks[1]),
        first,
        "the kept answer is replayed; logs:\n{}",
        logs()
    );
    let after = session_json(port, &session_id).await;
    assert_eq!(after, before, "the session was not touched again");
    assert_eq!(sandbox.card_patches().len(), 1, "one declined card in all");
    stop(serve).await;
}
