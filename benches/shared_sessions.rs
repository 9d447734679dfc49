//! Clicks on a shared session answered by the instance that does not hold it (issue 14:
//! "a click answered by an instance that does not hold the session: p99 ≤ 300 ms").
//!
//! Starts a throwaway PostgreSQL server (the tests' `pg_common`: the machine's binaries,
//! fsync off, unix socket), the sandbox and two `LarkAuth` instances A and B on one store
//! in this process (release build). `SHARED_SESSIONS_N` sessions (default 20) are started
//! on A (A holds them), then `SHARED_SESSIONS_CLICKS` clicks (default 1,000, each its own
//! `event_id`, spread over the sessions, one at a time) are pushed twice: to A's connection
//! (the holder answers itself: the baseline) and to B's (B hands each click to A through
//! the store's inbox and a `NOTIFY`, A answers through the store, B acks). Prints the
//! sandbox's ack latency (push → ack) p50 / p99 / max for both, and the difference.
//!
//! `cargo bench --bench shared_sessions`

#[path = "../tests/pg_common/mod.rs"]
mod pg_common;

use std::time::Duration;

use lark_auth::config::{Config, StoreBackend};
use lark_auth::connection::ConnectionState;
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};

const WAIT: Duration = Duration::from_secs(30);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn start(config: Config, keyring: Keyring) -> Handle {
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring,
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .expect("starts on PostgreSQL");
    let mut states = handle.connection_states();
    tokio::time::timeout(
        WAIT,
        states.wait_for(|r| r.state == ConnectionState::Connected),
    )
    .await
    .expect("connects in time")
    .unwrap();
    handle
}

fn click_json(
    event_id: &str,
    session_id: &str,
    user: &str,
    token: &str,
    message_id: &str,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "card.action.trigger",
                   "create_time": "1767225600000", "token": "verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {
            "operator": {"tenant_key": "tk_test_tenant_0001", "open_id": user},
            "token": token,
            "action": {"value": {"action": "authorize", "session_id": session_id}, "tag": "button"},
            "host": "im_message",
            "context": {"open_message_id": message_id, "open_chat_id": "oc_1"}
        }
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let sessions = env_or("SHARED_SESSIONS_N", 20);
    let clicks = env_or("SHARED_SESSIONS_CLICKS", 1_000);
    let server = pg_common::TestPostgres::start();
    actix::System::new().block_on(async move {
        let mut sandbox_config = SandboxConfig::default();
        sandbox_config.openapi.open_tenant = true;
        // Nobody approves: the sessions wait for their users throughout.
        sandbox_config.openapi.device_code_lifetime = Duration::from_secs(3600);
        let sandbox = Sandbox::start(sandbox_config).await.unwrap();
        let mut config = Config::for_tests(&sandbox.base_url());
        config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(Secret::new(server.url()));
        config.log.level = "warn".into();
        let keyring = Keyring::single(1, VaultKey::generate());
        let a = start(config.clone(), keyring.clone()).await;
        let b = start(config, keyring).await;
        let connections = sandbox.connections();
        assert_eq!(connections.len(), 2);
        let (a_conn, b_conn) = (connections[0].id, connections[1].id);

        let mut held = Vec::new();
        for n in 0..sessions {
            let user = format!("ou_bench_shared_{n}");
            let view = a.authorize(&user, vec![]).await.expect("started on A");
            held.push((user, view.session_id));
        }
        let cards = sandbox.wait_for_sent_cards(sessions, WAIT).await.unwrap();

        let mut results = Vec::new();
        for (label, target) in [("to A, the holder", a_conn), ("to B, relayed to A", b_conn)] {
            sandbox.set_push_target(Some(target));
            let mut latencies = Vec::with_capacity(clicks);
            for i in 0..clicks {
                let (user, session_id) = &held[i % sessions];
                let card = cards
                    .iter()
                    .find(|c| c.receive_id == *user)
                    .expect("a card per session");
                let token = sandbox.issue_card_update_token(&card.message_id);
                let event_id = format!("ev_bench_{}_{i}", if target == a_conn { "a" } else { "b" });
                let pushed = sandbox
                    .push_event(&click_json(
                        &event_id,
                        session_id,
                        user,
                        token.expose(),
                        &card.message_id,
                    ))
                    .expect("pushed");
                let ack = loop {
                    if let Some(ack) = sandbox
                        .acks()
                        .into_iter()
                        .rev()
                        .find(|a| a.message_id == pushed)
                    {
                        break ack;
                    }
                    actix_rt::time::sleep(Duration::from_micros(200)).await;
                };
                assert_eq!(ack.code(), Some(200));
                assert!(ack.data().is_some_and(|d| !d.is_empty()), "a toast");
                latencies.push(ack.latency.expect("pushed here"));
            }
            latencies.sort();
            println!(
                "{clicks} clicks {label}: ack p50 {:?}, p99 {:?}, max {:?}",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().unwrap()
            );
            results.push(latencies);
        }
        println!(
            "added by relaying: p50 {:?}, p99 {:?} (target: p99 of the relayed clicks ≤ 300 ms)",
            percentile(&results[1], 0.5).saturating_sub(percentile(&results[0], 0.5)),
            percentile(&results[1], 0.99).saturating_sub(percentile(&results[0], 0.99)),
        );
        a.shutdown(Duration::from_secs(2)).await;
        b.shutdown(Duration::from_secs(2)).await;
    });
}
