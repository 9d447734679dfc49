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
//! With `SHARED_SESSIONS_PENDING=N` (e.g. 100000) it measures pending sessions instead:
//! three instances, N device-flow sessions started round-robin over them (100 requests
//! at once), left waiting for their users once every card is out; prints the sessions/s,
//! the rows the sessions table took per second (`pg_stat_user_tables`: inserts +
//! updates, every write of a transition) and this process's resident memory per session
//! (`VmRSS` after glibc's `malloc_trim`, before and after). The sandbox runs in this
//! process (without keeping the cards), so the memory figure is an upper bound: the
//! sandbox's own per-session state (device codes, card idempotency keys) is in it.
//!
//! `cargo bench --bench shared_sessions`;
//! `SHARED_SESSIONS_PENDING=100000 cargo bench --bench shared_sessions`

#[path = "../tests/pg_common/mod.rs"]
mod pg_common;

use std::time::Duration;

use lark_auth::config::{Config, StoreBackend};
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
    handle.wait_connected(WAIT).await.expect("connects in time");
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

/// Resident set size of this process, bytes (`VmRSS`), after glibc returned free heap.
fn rss() -> usize {
    // SAFETY: glibc's malloc_trim only releases free memory; no pointer is involved.
    unsafe { malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
}

unsafe extern "C" {
    /// glibc: returns free heap memory to the system where possible.
    fn malloc_trim(pad: usize) -> i32;
}

/// Rows written to the sessions table so far (inserts + updates).
fn session_rows(server: &pg_common::TestPostgres) -> u64 {
    server
        .psql(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables \
             WHERE schemaname = 'lark_auth' AND relname = 'sessions'",
        )
        .parse()
        .expect("a count")
}

/// `n` pending sessions over three instances; see the module docs.
async fn pending(
    server: &pg_common::TestPostgres,
    config: Config,
    keyring: Keyring,
    sandbox: &Sandbox,
    n: usize,
) {
    let instances = [
        start(config.clone(), keyring.clone()).await,
        start(config.clone(), keyring.clone()).await,
        start(config, keyring).await,
    ];
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss();
    let rows_before = session_rows(server);
    let started = std::time::Instant::now();
    let mut next = 0usize;
    while next < n {
        let batch: Vec<_> = (next..(next + 100).min(n))
            .map(|i| {
                let handle = &instances[i % 3];
                async move {
                    handle
                        .authorize(&format!("ou_bench_pending_{i}"), vec![])
                        .await
                        .expect("started")
                }
            })
            .collect();
        next += batch.len();
        futures_util::future::join_all(batch).await;
    }
    while sandbox.sent_card_count() < n {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the last writes land, then count.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let rows = session_rows(server) - rows_before;
    let rss_after = rss();
    println!(
        "{n} pending sessions over 3 instances: every card out in {secs:.1} s = {:.0} sessions/s; \
         sessions table {rows} rows written ({:.1} per session) = {:.0} rows/s",
        n as f64 / secs,
        rows as f64 / n as f64,
        rows as f64 / secs
    );
    println!(
        "resident memory: {:.0} MiB before, {:.0} MiB after = {:.0} B per pending session \
         (3 instances and the sandbox in this process: an upper bound)",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        rss_after.saturating_sub(rss_before) as f64 / n as f64
    );
    for handle in instances {
        handle.shutdown(Duration::from_secs(5)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let sessions = env_or("SHARED_SESSIONS_N", 20);
    let clicks = env_or("SHARED_SESSIONS_CLICKS", 1_000);
    let pending_n = env_or("SHARED_SESSIONS_PENDING", 0);
    let server = pg_common::TestPostgres::start();
    actix::System::new().block_on(async move {
        let mut sandbox_config = SandboxConfig::default();
        sandbox_config.openapi.open_tenant = true;
        sandbox_config.openapi.keep_cards = pending_n == 0;
        // Nobody approves: the sessions wait for their users throughout.
        sandbox_config.openapi.device_code_lifetime = Duration::from_secs(3600);
        let sandbox = Sandbox::start(sandbox_config).await.unwrap();
        let mut config = Config::for_tests(&sandbox.base_url());
        config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(Secret::new(server.url()));
        let keyring = Keyring::single(1, VaultKey::generate());
        if pending_n > 0 {
            // No poll due while measuring: the sessions wait for their users.
            config.sessions.poll_idle_min = Duration::from_secs(3600);
            pending(&server, config, keyring, &sandbox, pending_n).await;
            return;
        }
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
