//! The client subcommands (`authorize [--wait]`, `token [--json]`, `sessions [--state]`,
//! `grants`, `revoke`) run as the binary against a whole service on the sandbox, with the
//! exit codes INTERFACE.md gives; and the `GET /v1/authorizations` listing behind
//! `sessions`.

mod service_common;

use std::process::Output;

use service_common::{API_TOKEN, Instance, USER, UserChoice, answer_card, start_instance};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");

/// Runs `lark-auth <args> --server <base>` with the API token in the environment, from an
/// empty directory (so no ./config.toml is read), off the test's System.
async fn cli(i: &Instance, args: &[&str]) -> Output {
    cli_with_token(i, args, API_TOKEN).await
}

async fn cli_with_token(i: &Instance, args: &[&str], token: &str) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--server".to_string(), i.base_url()]);
    let token = token.to_string();
    actix_rt::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new(BIN)
            .args(&args)
            .current_dir(dir.path())
            .env("LARK_AUTH_API_TOKEN", token)
            .env_remove("LARK_AUTH_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

/// Starts `authorize USER --wait` in the background, finds its session through the
/// handle (an authorization in flight is returned, not duplicated) and plays the user.
async fn authorize_and_wait(i: &Instance, choice: UserChoice) -> (String, Output) {
    let waiting = {
        let base = i.base_url();
        actix_rt::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().unwrap();
            std::process::Command::new(BIN)
                .args(["authorize", USER, "--wait", "--server", &base])
                .current_dir(dir.path())
                .env("LARK_AUTH_API_TOKEN", API_TOKEN)
                .output()
                .unwrap()
        })
    };
    i.sandbox
        .wait_for_sent_cards(1, service_common::WAIT)
        .await
        .unwrap();
    let session = i.handle.authorize(USER, vec![]).await.expect("in flight");
    answer_card(i, 0, &session.session_id, choice).await;
    (session.session_id, waiting.await.unwrap())
}

#[actix_rt::test]
async fn authorize_wait_then_token_grants_sessions_and_revoke_with_their_exit_codes() {
    let i = start_instance().await;
    let (session_id, out) = authorize_and_wait(&i, UserChoice::Approve).await;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&format!("session {session_id} ended: authorized")),
        "{}",
        stdout(&out)
    );
    // Not a terminal: one progress line per state seen, ending with authorized.
    let progress = stderr(&out);
    assert!(
        progress
            .lines()
            .last()
            .is_some_and(|l| l.contains("authorized")),
        "{progress}"
    );
    assert!(
        !progress.contains('\r'),
        "no in-place rewriting off a terminal"
    );

    let token = i.handle.token(USER).await.expect("granted");
    let out = cli(&i, &["token", USER]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), token.token.expose().as_str());

    let out = cli(&i, &["token", USER, "--json"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let body: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(body["access_token"], token.token.expose().as_str());
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    let out = cli(&i, &["grants"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("OPEN_ID"), "{table}");
    let row = table.lines().find(|l| l.starts_with(USER)).expect("a row");
    assert!(
        row.contains("active") && row.contains("offline_access"),
        "{row}"
    );
    assert!(!table.contains(token.token.expose().as_str()), "no secret");
    let out = cli(&i, &["grants", "--json"]).await;
    let grants: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(grants[0]["open_id"], USER);
    assert!(!stdout(&out).contains(token.token.expose().as_str()));

    let out = cli(&i, &["sessions"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let row = stdout(&out)
        .lines()
        .find(|l| l.starts_with(&session_id))
        .map(str::to_string)
        .expect("the session is listed");
    assert!(row.contains(USER) && row.contains("authorized"), "{row}");
    let out = cli(&i, &["sessions", "--state", "authorized", "--json"]).await;
    let sessions: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(sessions[0]["session_id"], session_id.as_str());
    assert_eq!(sessions[0]["state"], "authorized");
    let out = cli(&i, &["sessions", "--state", "awaiting_user"]).await;
    assert_eq!(stdout(&out).trim(), "no sessions");
    let out = cli(&i, &["sessions", "--state", "pending"]).await;
    assert_eq!(code(&out), 2, "unknown state is a usage error");
    assert!(stderr(&out).contains("awaiting_user"), "{}", stderr(&out));

    let out = cli(&i, &["revoke", USER]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = cli(&i, &["token", USER]).await;
    assert_eq!(code(&out), 4, "revoked: needs re-authorization");
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("needs_reauth"), "{}", stderr(&out));
    let out = cli(&i, &["token", "ou_nobody"]).await;
    assert_eq!(code(&out), 3, "no grant");
    assert!(stderr(&out).contains("no_grant"), "{}", stderr(&out));
    let out = cli(&i, &["revoke", "ou_nobody"]).await;
    assert_eq!(code(&out), 3, "no grant to revoke");
}

#[actix_rt::test]
async fn authorize_wait_exits_5_when_the_user_declines() {
    let i = start_instance().await;
    let (session_id, out) = authorize_and_wait(&i, UserChoice::Decline).await;
    assert_eq!(code(&out), 5, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&format!("session {session_id} ended: denied")),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("did not authorize"),
        "{}",
        stderr(&out)
    );
}

#[actix_rt::test]
async fn authorize_without_wait_prints_the_session_and_a_wrong_token_exits_1() {
    let i = start_instance().await;
    let out = cli(
        &i,
        &[
            "authorize",
            "ou_test_user_2",
            "--scope",
            "contact:user.base:readonly",
        ],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with("session ") && line.contains("ou_test_user_2"),
        "{line}"
    );
    let cards = i
        .sandbox
        .wait_for_sent_cards(1, service_common::WAIT)
        .await
        .unwrap();
    assert_eq!(cards[0].receive_id, "ou_test_user_2");

    let out = cli_with_token(&i, &["grants"], "wrong-token").await;
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong-token"),
        "the token is not echoed"
    );
}

#[actix_rt::test]
async fn the_session_listing_checks_its_token_and_state() {
    let i = start_instance().await;
    let client = awc::Client::default();
    let url = format!("{}/v1/authorizations", i.base_url());
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let mut res = client
        .get(format!("{url}?state=bogus"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_state");
    let mut res = client
        .get(&url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!([]));
}

#[actix_rt::test]
async fn authorize_takes_the_card_language_and_refuses_an_unknown_one() {
    let i = start_instance().await;
    let out = cli(&i, &["authorize", USER, "--locale", "en_us"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let cards = i
        .sandbox
        .wait_for_sent_cards(1, service_common::WAIT)
        .await
        .unwrap();
    let text = cards[0].card.to_string();
    assert!(text.contains("Authorize"), "an English card: {text}");
    assert!(!text.contains("授权"), "not the default Chinese: {text}");

    // The CLI refuses an unknown language itself (a bad argument: exit 2, nothing sent)…
    let out = cli(&i, &["authorize", "ou_test_user_2", "--locale", "klingon"]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("en_us"), "{}", stderr(&out));
    // …and so does the control API for other clients.
    let mut res = awc::Client::default()
        .post(format!("{}/v1/authorizations", i.base_url()))
        .bearer_auth(service_common::API_TOKEN)
        .send_json(&serde_json::json!({"open_id": "ou_test_user_2", "locale": "klingon"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_locale", "{body}");
    assert_eq!(
        i.sandbox.sent_cards().len(),
        1,
        "no card for a refused request"
    );
}
