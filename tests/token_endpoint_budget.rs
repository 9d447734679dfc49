//! One budget for the token endpoint: the sessions' device polls and the scheduler's
//! refreshes draw from one shared pacer, so together they never exceed
//! `refresh.budget_per_sec`, counted where it matters — at the sandbox's token endpoint.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::*;
use lark_auth::config::Config;
use lark_auth::refresh::{GetRefreshStats, RefreshScheduler, SchedulerSettings};
use lark_auth::sandbox::{RecordedTokenRequest, SandboxConfig, SandboxUser};
use lark_auth::session::machine::Cadence;
use lark_auth::session::{RouterActor, RouterParts, SessionSettings, StartAuthorization};
use lark_auth::store::{SledStore, Store};
use lark_auth::token_endpoint::{AcquireSlot, SlotPriority, TokenEndpointPacer};
use lark_auth::tokens::{OpenApiRefresher, TokenSource};
use lark_auth::vault::actor::StoreGrant;
use lark_auth::vault::{DuePolicy, Keyring, TokenVaultActor, Vault, VaultKey};
use prometheus_client::metrics::gauge::Gauge;

const APP: &str = "cli_sandbox_app";
const BUDGET: u32 = 5;
const GRANTS: usize = 10;
const SESSIONS: usize = 10;
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn count(requests: &[RecordedTokenRequest], grant_type: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some(grant_type))
        .count()
}

/// No one-second window of arrivals at the token endpoint holds more than the budget
/// plus one slot (slack for the time between a slot and its request's arrival).
fn assert_within_budget(requests: &[RecordedTokenRequest]) {
    let mut arrivals: Vec<Instant> = requests.iter().map(|r| r.received_at).collect();
    arrivals.sort();
    for (i, start) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= BUDGET as usize + 1,
            "{in_window} token-endpoint requests within one second (budget {BUDGET}, \
             {} requests in all)",
            arrivals.len()
        );
    }
}

/// Ten grants due for refresh at once and ten sessions polling every second (twice the
/// budget on their own) share a pacer of 5 requests/s: no one-second window at the token
/// endpoint holds more than the budget (plus one slot of slack for the time between a
/// slot and its request's arrival), both kinds get through, and requests queue.
#[actix_rt::test]
async fn polls_and_refreshes_together_stay_under_one_budget() {
    let grant_users: Vec<String> = (0..GRANTS).map(|i| format!("ou_grant_{i:02}")).collect();
    let session_users: Vec<String> = (0..SESSIONS)
        .map(|i| format!("ou_session_{i:02}"))
        .collect();
    let mut sandbox_config = SandboxConfig::default();
    sandbox_config.openapi.device_poll_interval = Duration::from_secs(1);
    sandbox_config.openapi.users = grant_users
        .iter()
        .chain(&session_users)
        .map(|u| SandboxUser::new(u, &u.replace("ou_", "on_"), u))
        .collect();
    let (sandbox, client) = openapi_with(sandbox_config, |_| {}).await;

    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::single(1, VaultKey::generate());
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store.clone(), APP, keyring.clone(), DuePolicy::default()).unwrap();
    let addr = TokenVaultActor::start(vault, 2);
    for user in &grant_users {
        let grant = code_flow_grant(&sandbox, &client, user).await;
        // 60 s left, inside the scheduler's `ahead`: due now.
        addr.send(StoreGrant {
            record: grant_record(APP, user, &grant, Duration::from_secs(60)),
        })
        .await
        .unwrap()
        .unwrap();
    }
    // The code exchanges above were not paced; count from here.
    let before = sandbox.token_requests().len();

    let queue = Gauge::default();
    let pacer = TokenEndpointPacer::new(BUDGET)
        .with_queue_gauge(queue.clone())
        .start();
    let source = TokenSource::new(
        addr.clone(),
        OpenApiRefresher::new(client.clone()),
        Duration::from_millis(300),
    );
    let scheduler = RefreshScheduler::new(
        source,
        addr.clone(),
        SchedulerSettings {
            budget_per_sec: BUDGET,
            ahead: Duration::from_secs(600),
            tick: Duration::from_millis(50),
            ..SchedulerSettings::default()
        },
    )
    .with_token_endpoint_pacer(pacer.clone())
    .start();

    let config = Config::for_tests(&sandbox.base_url());
    let mut settings = SessionSettings::from_config(&config);
    // Poll at the server's interval (1 s) from the start: 10 polls/s wanted.
    settings.cadence = Cadence {
        idle_factor: 1,
        idle_min_ms: 0,
        retry_ms: 200,
    };
    let router = RouterActor::start_with_pacer(
        RouterParts {
            client: client.clone(),
            store,
            keyring,
            vault: addr.clone(),
            settings,
            metrics: lark_auth::metrics::Metrics::new(),
        },
        pacer,
    )
    .unwrap();
    for user in &session_users {
        router
            .send(StartAuthorization {
                open_id: user.clone(),
                scopes: Vec::new(),
            })
            .await
            .unwrap()
            .unwrap();
    }

    let mut max_queue = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        max_queue = max_queue.max(queue.get());
        let requests = sandbox.token_requests();
        let requests = &requests[before..];
        if count(requests, "refresh_token") == GRANTS
            && count(requests, DEVICE_GRANT) >= 2 * SESSIONS
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck: {} refreshes, {} polls, {:?}",
            count(requests, "refresh_token"),
            count(requests, DEVICE_GRANT),
            scheduler.send(GetRefreshStats).await.unwrap()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    assert_within_budget(&sandbox.token_requests()[before..]);
    assert!(
        max_queue >= 1,
        "demand above the budget queues at the pacer"
    );
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
    let stats = scheduler.send(GetRefreshStats).await.unwrap();
    assert_eq!(stats.attempts.refreshed, GRANTS as u64);
}

/// Refreshes that callers start (`get_token` on grants inside the margin, under no
/// scheduler slot) wait at the same pacer through the source's slot gate: fifteen at once
/// with five sessions polling stay under the budget, and every caller gets a new token.
#[actix_rt::test]
async fn refreshes_started_by_get_token_wait_at_the_same_pacer() {
    const STALE: usize = 15;
    const POLLING: usize = 5;
    let stale_users: Vec<String> = (0..STALE).map(|i| format!("ou_stale_{i:02}")).collect();
    let session_users: Vec<String> = (0..POLLING).map(|i| format!("ou_session_{i:02}")).collect();
    let mut sandbox_config = SandboxConfig::default();
    sandbox_config.openapi.device_poll_interval = Duration::from_secs(1);
    sandbox_config.openapi.users = stale_users
        .iter()
        .chain(&session_users)
        .map(|u| SandboxUser::new(u, &u.replace("ou_", "on_"), u))
        .collect();
    let (sandbox, client) = openapi_with(sandbox_config, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::single(1, VaultKey::generate());
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store.clone(), APP, keyring.clone(), DuePolicy::default()).unwrap();
    let addr = TokenVaultActor::start(vault, 2);
    let mut stale = Vec::new();
    for user in &stale_users {
        let grant = code_flow_grant(&sandbox, &client, user).await;
        // 1 s left: inside the 300 s margin, so get_token refreshes first.
        stale.push(
            addr.send(StoreGrant {
                record: grant_record(APP, user, &grant, Duration::from_secs(1)),
            })
            .await
            .unwrap()
            .unwrap(),
        );
    }
    let before = sandbox.token_requests().len();

    let pacer = TokenEndpointPacer::new(BUDGET).start();
    let gate_pacer = pacer.clone();
    let source = TokenSource::new(
        addr.clone(),
        OpenApiRefresher::new(client.clone()),
        Duration::from_secs(300),
    )
    .with_slot_gate(Box::new(move || {
        let slot = gate_pacer.send(AcquireSlot {
            priority: SlotPriority::Waiting,
        });
        Box::pin(async move {
            let _ = slot.await;
        })
    }));
    let config = Config::for_tests(&sandbox.base_url());
    let mut settings = SessionSettings::from_config(&config);
    settings.cadence = Cadence {
        idle_factor: 1,
        idle_min_ms: 0,
        retry_ms: 200,
    };
    let router = RouterActor::start_with_pacer(
        RouterParts {
            client: client.clone(),
            store,
            keyring,
            vault: addr.clone(),
            settings,
            metrics: lark_auth::metrics::Metrics::new(),
        },
        pacer,
    )
    .unwrap();
    for user in &session_users {
        router
            .send(StartAuthorization {
                open_id: user.clone(),
                scopes: Vec::new(),
            })
            .await
            .unwrap()
            .unwrap();
    }

    let tokens =
        futures_util::future::join_all(stale_users.iter().map(|u| source.get_token(u))).await;
    for (token, old) in tokens.into_iter().zip(&stale) {
        let token = token.expect("a refreshed token");
        assert_ne!(token.token, old.access_token);
    }
    // The polls queued behind the refreshes get their slots too.
    let polled = || count(&sandbox.token_requests()[before..], DEVICE_GRANT) >= 2 * POLLING;
    eventually("every session polled twice", || async { polled() }).await;
    let requests = sandbox.token_requests();
    let requests = &requests[before..];
    assert_eq!(count(requests, "refresh_token"), STALE);
    assert_within_budget(requests);
    assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
}
