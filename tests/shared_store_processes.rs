//! Three `lark-auth serve` processes on one PostgreSQL store against one sandbox, as an
//! operator runs them (INTERFACE.md, "Several instances on one shared store"): short-lived
//! tokens read through all three for a while are refreshed once per refresh period per
//! grant, never with a refresh token sent twice, within the shared token-endpoint budget;
//! the database stopped and started under them loses nothing, cached tokens are served
//! meanwhile and every instance reconnects by itself; 50 device flows started round-robin
//! with every click landing on a random instance all end authorized with one card each
//! and every click answered in time; `kill -9` of the instance holding sessions leaves
//! them to the others, with no second card, and the grants it was refreshing too.

mod pg_common;
#[path = "sessions_common/mod.rs"]
mod sessions_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lark_auth::sandbox::{Sandbox, SandboxConfig};
use sessions_common::{WAIT, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
/// 32 bytes, base64.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const API_TOKEN: &str = "api-token-value";
/// `refresh.budget_per_sec` of every instance: the sum of all instances' token-endpoint
/// calls stays under it.
const BUDGET: usize = 6;

/// One `serve` child process; killed when dropped.
struct Serve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// `serve` on `sandbox` and the PostgreSQL `url`, schema `lark_auth`, control API on a
    /// free port, logs in `dir/<name>.log`.
    fn spawn(dir: &Path, name: &str, sandbox: &Sandbox, url: &str) -> Serve {
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [store]\nbackend = \"postgres\"\nlease_secs = 5\n\
                 [refresh]\nbudget_per_sec = {BUDGET}\n\
                 [sessions]\npoll_idle_factor = 1\npoll_idle_min_secs = 1\npoll_retry_secs = 1\n\
                 [log]\nlevel = \"info,lark_auth=debug\"\n",
                sandbox.base_url(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .env("LARK_APP_ID", "cli_sandbox_app")
            .env("LARK_APP_SECRET", "sandbox-secret")
            .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
            .env("LARK_AUTH_API_TOKEN", API_TOKEN)
            .env("LARK_AUTH_DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Serve { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with the API token: (status, JSON body or Null).
    async fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let mut res = awc::Client::default()
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let body = res.body().await.ok()?;
        Some((
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let mut res = awc::Client::default()
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .send_json(&body)
            .await
            .unwrap();
        let body = res.body().await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn wait_connected(&self) {
        let log = &self.log;
        eventually(&format!("serve connected ({})", log.display()), || async {
            let (_, body) = self.get("/healthz").await?;
            (body["connection"] == "connected").then_some(())
        })
        .await;
    }

    /// The value of the metric line starting with `series` in a scrape.
    async fn metric(&self, series: &str) -> Option<f64> {
        let mut res = awc::Client::default()
            .get(self.url("/metrics"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .ok()?;
        let text = String::from_utf8(res.body().await.ok()?.to_vec()).ok()?;
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sandbox whose access tokens live `lifetime`, any `ou_…` a user of the tenant.
async fn sandbox(lifetime: Duration) -> Sandbox {
    let mut config: SandboxConfig = sessions_common::sandbox_config();
    config.openapi.access_token_lifetime = lifetime;
    config.openapi.open_tenant = true;
    Sandbox::start(config).await.unwrap()
}

/// Authorizes `users` through `serve`, the only instance connected (so every push reaches
/// it): each approves on the device page; waits until every session is authorized.
async fn authorize_all(sandbox: &Sandbox, serve: &Serve, users: &[String]) {
    for (n, open_id) in users.iter().enumerate() {
        let (status, view) = serve
            .post(
                "/v1/authorizations",
                serde_json::json!({ "open_id": open_id }),
            )
            .await;
        assert_eq!(status, 202, "{view}");
        let session_id = view["session_id"].as_str().unwrap().to_string();
        let cards = sandbox.wait_for_sent_cards(n + 1, WAIT).await.unwrap();
        let url = sessions_common::authorize_url(&cards[n].card);
        let user_code = sessions_common::query_param(&url, "user_code").expect("user code");
        sandbox.approve_device(&user_code, open_id).unwrap();
        eventually(&format!("{open_id} authorized"), || {
            let path = format!("/v1/authorizations/{session_id}");
            async move {
                let (_, view) = serve.get(&path).await?;
                (view["state"] == "authorized").then_some(())
            }
        })
        .await;
    }
}

/// Reads every user's token through the instances in turn (three readers) for `how_long`;
/// returns (reads, failed reads as "instance user status body").
async fn read_tokens(
    serves: &[Serve],
    users: &[String],
    how_long: Duration,
) -> (usize, Vec<String>) {
    let deadline = Instant::now() + how_long;
    let readers = (0..3).map(|r| async move {
        let mut reads = 0;
        let mut failures = Vec::new();
        let mut turn = r;
        while Instant::now() < deadline {
            for open_id in users {
                let serve = &serves[turn % serves.len()];
                turn += 1;
                let answer = serve.get(&format!("/v1/grants/{open_id}/token")).await;
                reads += 1;
                match answer {
                    Some((200, body)) if body["access_token"].is_string() => {}
                    other => failures.push(format!("{} {open_id} {other:?}", serve.port)),
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        (reads, failures)
    });
    let results = futures_util::future::join_all(readers).await;
    results
        .into_iter()
        .fold((0, Vec::new()), |(n, mut f), (reads, failures)| {
            f.extend(failures);
            (n + reads, f)
        })
}

/// Most token-endpoint calls the sandbox received within any one second.
fn busiest_second(sandbox: &Sandbox) -> usize {
    let times: Vec<Instant> = sandbox
        .token_requests()
        .iter()
        .map(|r| r.received_at)
        .collect();
    times
        .iter()
        .map(|&start| {
            times
                .iter()
                .filter(|&&t| t >= start && t < start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn refreshes(sandbox: &Sandbox) -> usize {
    sandbox
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count()
}

/// Starts instance `a`, authorizes `users` through it, then starts `b` and `c` and waits
/// until the three share the budget.
async fn three_with_grants(
    dir: &Path,
    sandbox: &Sandbox,
    url: &str,
    users: &[String],
) -> Vec<Serve> {
    let a = Serve::spawn(dir, "a", sandbox, url);
    a.wait_connected().await;
    authorize_all(sandbox, &a, users).await;
    let b = Serve::spawn(dir, "b", sandbox, url);
    let c = Serve::spawn(dir, "c", sandbox, url);
    b.wait_connected().await;
    c.wait_connected().await;
    let serves = vec![a, b, c];
    let share = BUDGET as f64 / 3.0;
    for serve in &serves {
        eventually("the budget split three ways", || async {
            let v = serve
                .metric("lark_auth_token_endpoint_share_per_second")
                .await?;
            ((v - share).abs() < 0.01).then_some(())
        })
        .await;
    }
    serves
}

#[actix_rt::test]
async fn three_instances_refresh_each_grant_once_per_period_within_the_shared_budget() {
    let server = pg_common::TestPostgres::start();
    // Tokens living 8 s are served for their first half: a refresh every ~4 s per grant.
    let lifetime = Duration::from_secs(8);
    let sandbox = sandbox(lifetime).await;
    sandbox.set_random_push(Some(14));
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..6).map(|n| format!("ou_proc_user_{n}")).collect();
    let serves = three_with_grants(dir.path(), &sandbox, &server.url(), &users).await;
    let before = refreshes(&sandbox);

    let read_for = Duration::from_secs(20);
    let (reads, failures) = read_tokens(&serves, &users, read_for).await;

    let logs = || serves.iter().map(Serve::log).collect::<Vec<_>>().join("\n");
    assert!(
        failures.is_empty(),
        "every read served: {failures:?}\n{}",
        logs()
    );
    assert!(reads > 300, "{reads} reads");
    assert_eq!(
        sandbox.refresh_token_reuse_violations(),
        0,
        "no refresh token sent twice\n{}",
        logs()
    );
    // One refresh per grant per period (half the lifetime): 5 periods in 20 s. Two
    // instances refreshing the same grant would double it.
    let periods = (read_for.as_secs() / (lifetime.as_secs() / 2)) as usize;
    let made = refreshes(&sandbox) - before;
    assert!(
        made >= users.len() * (periods - 2) && made <= users.len() * (periods + 1),
        "{made} refreshes for {} grants over {periods} periods",
        users.len()
    );
    let busiest = busiest_second(&sandbox);
    assert!(
        busiest <= BUDGET,
        "{busiest} token-endpoint calls in one second, budget {BUDGET} for all instances"
    );
    for open_id in &users {
        let (status, grants) = serves[1].get("/v1/grants").await.unwrap();
        assert_eq!(status, 200);
        let grant = grants
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["open_id"] == open_id.as_str())
            .unwrap_or_else(|| panic!("{open_id} has a grant: {grants}"));
        assert_eq!(grant["status"], "active", "{grant}");
    }
}

#[actix_rt::test]
async fn postgres_stopped_and_started_under_three_instances_loses_nothing() {
    let mut server = pg_common::TestPostgres::start();
    // Served for their first 15 s: the outage below ends before any token must be
    // refreshed, and the refreshes after it go through the restarted server.
    let lifetime = Duration::from_secs(30);
    let sandbox = sandbox(lifetime).await;
    sandbox.set_random_push(Some(15));
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..4).map(|n| format!("ou_proc_outage_{n}")).collect();
    let serves = three_with_grants(dir.path(), &sandbox, &server.url(), &users).await;
    // Every token read through every instance once: cached everywhere.
    let mut first_tokens = Vec::new();
    for open_id in &users {
        let mut seen = Vec::new();
        for serve in &serves {
            let (_, body) = serve
                .get(&format!("/v1/grants/{open_id}/token"))
                .await
                .unwrap();
            seen.push(body["access_token"].as_str().unwrap().to_string());
        }
        assert!(
            seen.iter().all(|t| *t == seen[0]),
            "one token for {open_id}"
        );
        first_tokens.push(seen.remove(0));
    }

    server.stop();
    // Every instance sees it and says so; cached tokens are still served by each.
    for serve in &serves {
        eventually("healthz reports the store unreachable", || async {
            let (status, body) = serve.get("/healthz").await?;
            (status == 503 && body["store"] == "unreachable").then_some(())
        })
        .await;
    }
    let (_, failures) = read_tokens(&serves, &users, Duration::from_secs(2)).await;
    assert!(failures.is_empty(), "cached tokens served: {failures:?}");
    // A write answers 503 with a JSON error.
    let (status, body) = serves[2]
        .post(
            "/v1/authorizations",
            serde_json::json!({ "open_id": "ou_proc_outage_new" }),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].is_string(), "{body}");

    server.restart();
    for serve in &serves {
        eventually("healthz reports the store back", || async {
            let (status, body) = serve.get("/healthz").await?;
            (status == 200 && body["store"] == "ok").then_some(())
        })
        .await;
    }
    // Read past the refresh point: every grant is refreshed through the restarted server.
    let (reads, failures) = read_tokens(&serves, &users, Duration::from_secs(16)).await;
    let logs = || serves.iter().map(Serve::log).collect::<Vec<_>>().join("\n");
    assert!(
        failures.is_empty(),
        "every read served after the restart: {failures:?}\n{}",
        logs()
    );
    assert!(reads > 100, "{reads} reads");
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0, "{}", logs());
    for (open_id, first) in users.iter().zip(&first_tokens) {
        for serve in &serves {
            let (status, body) = serve
                .get(&format!("/v1/grants/{open_id}/token"))
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            assert_ne!(
                body["access_token"].as_str().unwrap(),
                first,
                "{open_id} refreshed after the outage, and every instance serves the new token"
            );
        }
    }
}

/// Plays every user of `sessions` (open_id → session_id) on their card: a click on
/// Authorize (delivered to a random live instance) and the approval on the device page.
/// Returns the clicks' `message_id`s.
fn click_and_approve(sandbox: &Sandbox, sessions: &[(String, String)], tag: &str) -> Vec<String> {
    let cards = sandbox.sent_cards();
    let mut clicks = Vec::new();
    for (open_id, session_id) in sessions {
        let card = cards
            .iter()
            .find(|c| c.receive_id == *open_id)
            .unwrap_or_else(|| panic!("a card for {open_id}"));
        let card_token = sandbox.issue_card_update_token(&card.message_id);
        clicks.push(
            sandbox
                .push_event(&sessions_common::click_json(
                    &format!("ev_{tag}_{session_id}"),
                    session_id,
                    open_id,
                    "authorize",
                    card_token.expose(),
                    &card.message_id,
                ))
                .unwrap(),
        );
        let url = sessions_common::authorize_url(&card.card);
        let user_code = sessions_common::query_param(&url, "user_code").expect("user code");
        sandbox.approve_device(&user_code, open_id).unwrap();
    }
    clicks
}

/// Waits until every session of `sessions` reads `authorized` through `serve`.
async fn wait_authorized(serve: &Serve, sessions: &[(String, String)]) {
    for (open_id, session_id) in sessions {
        eventually(&format!("{open_id}'s session authorized"), || {
            let path = format!("/v1/authorizations/{session_id}");
            async move {
                let (_, view) = serve.get(&path).await?;
                (view["state"] == "authorized").then_some(())
            }
        })
        .await;
    }
}

/// One card per user, and each sent once.
fn assert_one_card_each(sandbox: &Sandbox, sessions: &[(String, String)]) {
    let cards = sandbox.sent_cards();
    for (open_id, _) in sessions {
        let n = cards.iter().filter(|c| c.receive_id == *open_id).count();
        assert_eq!(n, 1, "{open_id} got {n} cards");
    }
}

#[actix_rt::test]
async fn fifty_device_flows_round_robin_over_three_instances_each_click_answered_wherever_it_lands()
{
    let server = pg_common::TestPostgres::start();
    let sandbox = sandbox(Duration::from_secs(7200)).await;
    sandbox.set_random_push(Some(50));
    let dir = tempfile::tempdir().unwrap();
    let serves = vec![
        Serve::spawn(dir.path(), "a", &sandbox, &server.url()),
        Serve::spawn(dir.path(), "b", &sandbox, &server.url()),
        Serve::spawn(dir.path(), "c", &sandbox, &server.url()),
    ];
    for serve in &serves {
        serve.wait_connected().await;
    }
    let mut sessions = Vec::new();
    for n in 0..50 {
        let open_id = format!("ou_rr_user_{n:02}");
        let (status, view) = serves[n % 3]
            .post(
                "/v1/authorizations",
                serde_json::json!({ "open_id": open_id }),
            )
            .await;
        assert_eq!(status, 202, "{view}");
        sessions.push((open_id, view["session_id"].as_str().unwrap().to_string()));
    }
    sandbox.wait_for_sent_cards(50, WAIT).await.unwrap();
    let clicks = click_and_approve(&sandbox, &sessions, "rr");
    let logs = || serves.iter().map(Serve::log).collect::<Vec<_>>().join("\n");
    wait_authorized(&serves[1], &sessions).await;

    assert_one_card_each(&sandbox, &sessions);
    assert_eq!(sandbox.sent_cards().len(), 50, "one card each");
    let acks = sandbox.wait_for_acks(50, WAIT).await.unwrap();
    let mut answered_by = std::collections::HashSet::new();
    for message_id in &clicks {
        let ack = acks
            .iter()
            .find(|a| a.message_id == *message_id)
            .unwrap_or_else(|| panic!("click {message_id} acked\n{}", logs()));
        assert_eq!(ack.code(), Some(200), "{ack:?}");
        let latency = ack.latency.expect("latency measured");
        assert!(latency < Duration::from_secs(3), "answered in {latency:?}");
        let answer = sessions_common::ack_data(ack);
        assert!(answer["toast"]["content"].is_string(), "a toast: {answer}");
        answered_by.insert(ack.connection);
    }
    assert_eq!(answered_by.len(), 3, "clicks landed on every instance");
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
    let (_, grants) = serves[2].get("/v1/grants").await.unwrap();
    assert_eq!(grants.as_array().unwrap().len(), 50, "{grants}");
}

#[actix_rt::test]
async fn kill_9_of_the_instance_holding_sessions_the_others_finish_them_with_no_second_card() {
    let server = pg_common::TestPostgres::start();
    let sandbox = sandbox(Duration::from_secs(7200)).await;
    sandbox.set_random_push(Some(9));
    let dir = tempfile::tempdir().unwrap();
    let mut a = Serve::spawn(dir.path(), "a", &sandbox, &server.url());
    let b = Serve::spawn(dir.path(), "b", &sandbox, &server.url());
    let c = Serve::spawn(dir.path(), "c", &sandbox, &server.url());
    for serve in [&a, &b, &c] {
        serve.wait_connected().await;
    }
    let mut sessions = Vec::new();
    for n in 0..10 {
        let open_id = format!("ou_kill_user_{n}");
        let (status, view) = a
            .post(
                "/v1/authorizations",
                serde_json::json!({ "open_id": open_id }),
            )
            .await;
        assert_eq!(status, 202, "{view}");
        sessions.push((open_id, view["session_id"].as_str().unwrap().to_string()));
    }
    sandbox.wait_for_sent_cards(10, WAIT).await.unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    sandbox.wait_for_active_connections(2, WAIT).await.unwrap();
    // The users act after the kill: the clicks reach b or c, the approvals the platform.
    click_and_approve(&sandbox, &sessions, "kill");
    // Carried on by b or c once a's lease (5 s) lapsed: `wait_authorized` gives up
    // after 15 s.
    wait_authorized(&b, &sessions).await;
    let logs = format!("{}\n{}\n{}", a.log(), b.log(), c.log());
    assert_one_card_each(&sandbox, &sessions);
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
    let (_, grants) = c.get("/v1/grants").await.unwrap();
    assert_eq!(grants.as_array().unwrap().len(), 10, "{grants}");
    assert!(
        logs.contains("session taken over"),
        "a takeover is logged\n{logs}"
    );
}

#[actix_rt::test]
async fn kill_9_of_one_instance_mid_run_the_others_keep_refreshing_with_no_reuse() {
    let server = pg_common::TestPostgres::start();
    let lifetime = Duration::from_secs(8);
    let sandbox = sandbox(lifetime).await;
    sandbox.set_random_push(Some(19));
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..6).map(|n| format!("ou_proc_kill_{n}")).collect();
    let mut serves = three_with_grants(dir.path(), &sandbox, &server.url(), &users).await;
    // Refreshes spread over the three (each grant's refresh goes to whichever reads it
    // due first), then one of them dies without a word.
    let (_, failures) = read_tokens(&serves, &users, Duration::from_secs(6)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let before = refreshes(&sandbox);
    let mut killed = serves.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    // The two left carry every grant on: two more refresh periods and then some.
    let read_for = Duration::from_secs(12);
    let (reads, failures) = read_tokens(&serves, &users, read_for).await;
    let logs = || {
        std::iter::once(&killed)
            .chain(&serves)
            .map(Serve::log)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failures.is_empty(),
        "every read served after the kill: {failures:?}\n{}",
        logs()
    );
    assert!(reads > 100, "{reads} reads");
    assert_eq!(
        sandbox.refresh_token_reuse_violations(),
        0,
        "no refresh token sent twice\n{}",
        logs()
    );
    let made = refreshes(&sandbox) - before;
    assert!(
        made >= users.len() * 2,
        "{made} refreshes after the kill for {} grants",
        users.len()
    );
}
