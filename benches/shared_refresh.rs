//! Refresh dispatch of three instances on one PostgreSQL store (issue 14: "1,000,000
//! grants: … refresh dispatch rate with 3 instances (never above the shared budget)").
//!
//! Starts a throwaway PostgreSQL server (the tests' `pg_common`: the machine's binaries,
//! fsync off, unix socket) and the sandbox, and stores `SHARED_REFRESH_GRANTS` grants
//! (default 100,000) through a vault of this bench:
//! - all but `SHARED_REFRESH_DUE` of them (default 3,000) are background: cold (last used a
//!   day ago), access tokens valid for 2 h, refresh tokens for 2–7 days, so nothing of
//!   theirs falls due during the run (their tokens are made up: never sent);
//! - the due ones hold real sandbox tokens (one authorization-code flow each, through the
//!   sandbox's authorize page and token endpoint, before the instances start).
//!
//! Then three `LarkAuth` instances start in this process (release build) with
//! `refresh.budget_per_sec` = `SHARED_REFRESH_BUDGET` (default 30, shared: each gets a
//! third once they have counted each other), load every grant and settle their shares.
//! Only then are the due grants written (hot, access token with 400 s left: inside the
//! 600 s `refresh.ahead_secs`, outside the 300 s margin); each instance hears every write
//! (`NOTIFY`), re-reads the grant and finds it due at once, so all three race for the
//! same D grants. Measured from the sandbox's side (its recorded token-endpoint calls,
//! each with its arrival instant), from the first due write until every due grant has
//! been refreshed:
//! - refresh calls of the three instances together per second: the busiest 1-second
//!   window (sliding, any start) against the budget, and the mean rate;
//! - the time until all D were refreshed;
//! - per instance (its scheduler's stats): refreshes dispatched (pacer slots used),
//!   refresh requests sent, and the difference (slots that found the grant claimed by
//!   another instance or already refreshed: no call made);
//! - checks: busiest second ≤ budget, each due grant's refresh token sent exactly once,
//!   no other refresh token sent, no reuse answered (20073, counted by the sandbox).
//!
//! `cargo bench --bench shared_refresh`;
//! `SHARED_REFRESH_GRANTS=1000000 cargo bench --bench shared_refresh`;
//! knobs: `SHARED_REFRESH_BUDGET` (calls/s for all three together),
//! `SHARED_REFRESH_DUE` (grants due at once), `SHARED_REFRESH_GRANTS` (grants stored, the
//! due ones included).

mod cold_grants;
#[path = "../tests/pg_common/mod.rs"]
mod pg_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lark_auth::config::{Config, StoreBackend};
use lark_auth::openapi::{OpenApiClient, PkcePair, UserTokenGrant};
use lark_auth::sandbox::{DEFAULT_REDIRECT_URI, Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::store::{PostgresStore, Store};
use lark_auth::vault::{
    DuePolicy, GrantRecord, GrantStatus, Keyring, SwapOutcome, UserIdentity, Vault, VaultKey,
    unix_now_ms,
};
use lark_auth::{Handle, LarkAuth, StartOptions};

/// The app of `Config::for_tests` and the sandbox's defaults.
const APP: &str = "cli_sandbox_app";
/// How long a start, a load or a settling may take before the bench gives up.
const WAIT: Duration = Duration::from_secs(600);
/// Access token time left on the due grants when written (inside `refresh.ahead_secs`
/// = 600 s, outside `refresh.margin_secs` = 300 s).
const ACCESS_LEFT: Duration = Duration::from_secs(400);
/// The measurement ends when no due grant has been refreshed for this long.
const STALL: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn due_id(i: usize) -> String {
    format!("ou_due_{i:08}")
}

/// A due grant from a sandbox token answer: hot (used now), its access token aged to
/// have [`ACCESS_LEFT`] left of the lifetime the sandbox gave it.
fn due(open_id: &str, grant: &UserTokenGrant, now: u64) -> GrantRecord {
    let left = ACCESS_LEFT.as_millis() as u64;
    GrantRecord {
        app_id: APP.into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            ..Default::default()
        },
        access_token: grant.access_token.clone(),
        refresh_token: grant.refresh_token.clone().expect("offline_access granted"),
        access_expires_ms: now + left,
        refresh_expires_ms: now
            + grant
                .refresh_token_expires_in
                .expect("offline_access granted")
                .as_millis() as u64,
        issued_ms: (now + left).saturating_sub(grant.expires_in.as_millis() as u64),
        scopes: grant.scope.split_whitespace().map(str::to_string).collect(),
        consent_ms: now,
        last_used_ms: now,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

/// One authorization-code flow (PKCE) for `open_id` on the sandbox: its token answer.
async fn code_flow(sandbox: &Sandbox, client: &OpenApiClient, open_id: &str) -> UserTokenGrant {
    let pkce = PkcePair::generate();
    let url = client.authorize_url(DEFAULT_REDIRECT_URI, &[], "bench", &pkce.challenge);
    let redirect = sandbox.authorize(&url, open_id).expect("the user consents");
    let code = url::Url::parse(&redirect)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| Secret::new(v.into_owned()))
        .expect("a code");
    client
        .exchange_code(&code, DEFAULT_REDIRECT_URI, Some(&pkce.verifier))
        .await
        .expect("code exchanged")
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

/// Waits until `handle`'s scheduler has loaded `grants` grants and its pacer has its
/// third of the budget.
async fn settle(handle: &Handle, grants: u64, share: u32) {
    let share_line = format!("lark_auth_token_endpoint_share_per_second {share}\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = handle.refresh_stats().await.expect("running");
        if stats.loaded && stats.grants == grants && handle.metrics().encode().contains(&share_line)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {} of {grants} grants loaded, share line: {}",
            stats.grants,
            handle
                .metrics()
                .encode()
                .lines()
                .find(|l| l.starts_with("lark_auth_token_endpoint_share_per_second"))
                .unwrap_or("none")
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The most instants of sorted `times` inside one half-open window `[t, t + 1 s)`.
fn busiest_second(times: &[Instant]) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (start, &t) in times.iter().enumerate() {
        while end < times.len() && times[end] < t + Duration::from_secs(1) {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let budget = env_or("SHARED_REFRESH_BUDGET", 30);
    let grants = env_or("SHARED_REFRESH_GRANTS", 100_000);
    let due_n = env_or("SHARED_REFRESH_DUE", 3_000).min(grants);
    let background_n = grants - due_n;
    let share = (budget / 3).max(1) as u32;
    let server = pg_common::TestPostgres::start();
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::open(&server.options("lark_auth")).expect("PostgreSQL opens"));
    let keyring = Keyring::single(1, VaultKey::generate());
    let vault = Vault::open(store, APP, keyring.clone(), DuePolicy::default()).expect("vault");
    println!(
        "{grants} grants on one PostgreSQL store (throwaway server, unix socket), {due_n} of \
         them due at once, 3 instances, refresh.budget_per_sec = {budget} (shared)"
    );

    // ----- background grants: two threads, no flush per record.
    let started = Instant::now();
    let now = unix_now_ms();
    std::thread::scope(|s| {
        for t in 0..2 {
            let vault = vault.clone();
            s.spawn(move || {
                for i in (t..background_n).step_by(2) {
                    match vault.compare_and_swap(
                        &cold_grants::cold_grant(APP, "tk_test_tenant_0001", i, now),
                        false,
                    ) {
                        Ok(SwapOutcome::Swapped(_)) => {}
                        other => panic!("load failed: {other:?}"),
                    }
                }
            });
        }
    });
    vault.store().flush().expect("flush");
    let load = started.elapsed();
    println!(
        "load: {background_n} background grants in {:.1} s ({:.0} grants/s)",
        load.as_secs_f64(),
        background_n as f64 / load.as_secs_f64()
    );

    actix::System::new().block_on(async move {
        let mut sandbox_config = SandboxConfig::default();
        // Any `ou_…` is a user of the tenant.
        sandbox_config.openapi.open_tenant = true;
        sandbox_config.openapi.keep_cards = false;
        let sandbox = Sandbox::start(sandbox_config).await.unwrap();
        let mut config = Config::for_tests(&sandbox.base_url());
        config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(Secret::new(server.url()));
        config.refresh.budget_per_sec = budget as u32;

        // ----- real sandbox tokens for the due grants, 50 flows at a time.
        let started = Instant::now();
        let client = OpenApiClient::new(&config).expect("client builds");
        let mut tokens = Vec::with_capacity(due_n);
        for chunk in (0..due_n).collect::<Vec<_>>().chunks(50) {
            let flows = chunk.iter().map(|&i| {
                let (sandbox, client) = (&sandbox, &client);
                async move { code_flow(sandbox, client, &due_id(i)).await }
            });
            tokens.extend(futures_util::future::join_all(flows).await);
        }
        println!(
            "{due_n} authorization-code flows on the sandbox in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // ----- three instances, loaded and sharing the budget.
        let started = Instant::now();
        let instances = [
            start(config.clone(), keyring.clone()).await,
            start(config.clone(), keyring.clone()).await,
            start(config, keyring).await,
        ];
        for handle in &instances {
            settle(handle, background_n as u64, share).await;
        }
        println!(
            "3 instances started, {background_n} grants loaded by each and shares settled \
             ({share}/s each) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let requests_before = sandbox.token_requests().len();
        let load_before = load_average();

        // ----- the due grants written at once (off the System's thread, which runs the
        // instances); the clock starts with the first write.
        let t0 = Instant::now();
        let now = unix_now_ms();
        let records: Vec<GrantRecord> = tokens
            .iter()
            .enumerate()
            .map(|(i, grant)| due(&due_id(i), grant, now))
            .collect();
        let mut sent_once: HashMap<String, usize> = records
            .iter()
            .map(|r| (r.refresh_token.expose().to_string(), 0))
            .collect();
        let writer = vault.clone();
        let written = actix_rt::task::spawn_blocking(move || {
            for record in &records {
                match writer.compare_and_swap(record, true) {
                    Ok(SwapOutcome::Swapped(_)) => {}
                    other => panic!("due grant not written: {other:?}"),
                }
            }
            Instant::now()
        });
        let written = written.await.expect("writer thread");

        // ----- until every due grant is refreshed (or nothing moved for STALL).
        let mut last_progress = (0usize, Instant::now());
        loop {
            actix_rt::time::sleep(Duration::from_millis(200)).await;
            let ok = sandbox.token_requests()[requests_before..]
                .iter()
                .filter(|r| r.grant_type.as_deref() == Some("refresh_token") && r.code == Some(0))
                .count();
            if ok >= due_n {
                break;
            }
            if ok > last_progress.0 {
                last_progress = (ok, Instant::now());
            } else if last_progress.1.elapsed() > STALL {
                println!("STALLED: {ok} of {due_n} due grants refreshed, none for {STALL:?}");
                break;
            }
        }
        // Late duplicates, if any, would arrive now.
        actix_rt::time::sleep(Duration::from_secs(3)).await;
        let load_after = load_average();

        let calls: Vec<_> = sandbox.token_requests()[requests_before..].to_vec();
        let times: Vec<Instant> = calls.iter().map(|r| r.received_at).collect();
        let refreshes: Vec<_> = calls
            .iter()
            .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
            .collect();
        let ok: Vec<Instant> = refreshes
            .iter()
            .filter(|r| r.code == Some(0))
            .map(|r| r.received_at)
            .collect();
        let mut foreign = 0usize;
        for r in &refreshes {
            match r
                .refresh_token
                .as_ref()
                .and_then(|t| sent_once.get_mut(t.expose().as_str()))
            {
                Some(uses) => *uses += 1,
                None => foreign += 1,
            }
        }
        let twice = sent_once.values().filter(|&&n| n > 1).count();
        let never = sent_once.values().filter(|&&n| n == 0).count();
        let reuse_answers = refreshes.iter().filter(|r| r.code == Some(20073)).count();
        let other_failures = refreshes
            .iter()
            .filter(|r| r.code != Some(0) && r.code != Some(20073))
            .count();
        let busiest = busiest_second(&times);
        let first = ok.first().copied().unwrap_or(t0);
        let last = ok.last().copied().unwrap_or(t0);
        let span = last.saturating_duration_since(first).as_secs_f64();

        println!(
            "due grants written in {:.2} s; first refresh {:.2} s after the first write",
            written.duration_since(t0).as_secs_f64(),
            first.saturating_duration_since(t0).as_secs_f64()
        );
        println!(
            "token-endpoint calls of the 3 instances: {} ({} refreshes, {} ok); busiest 1 s \
             window {busiest} (budget {budget}); mean {:.1}/s from first to last refresh, \
             {:.1}/s from the first write",
            calls.len(),
            refreshes.len(),
            ok.len(),
            (ok.len().saturating_sub(1)) as f64 / span.max(f64::EPSILON),
            ok.len() as f64
                / last
                    .saturating_duration_since(t0)
                    .as_secs_f64()
                    .max(f64::EPSILON),
        );
        println!(
            "all {due_n} due grants refreshed {:.1} s after the first write (at the budget: \
             {:.1} s)",
            last.saturating_duration_since(t0).as_secs_f64(),
            due_n as f64 / budget as f64
        );
        for (n, handle) in instances.iter().enumerate() {
            let s = handle.refresh_stats().await.expect("running");
            println!(
                "instance {}: {} refreshes sent ({:.0} % of {due_n}; {} ok, {} failed) from \
                 {} dispatched (pacer slots): {} found the grant claimed or already refreshed",
                n + 1,
                s.attempts.sent,
                100.0 * s.attempts.sent as f64 / due_n as f64,
                s.attempts.refreshed,
                s.attempts.sent - s.attempts.refreshed,
                s.dispatched,
                s.dispatched.saturating_sub(s.attempts.sent),
            );
        }
        println!(
            "refresh tokens: {} sent once, {twice} twice or more, {never} never, {foreign} \
             not a due grant's; reuse answered (20073): {reuse_answers} (sandbox's count \
             {}); other failures: {other_failures}",
            due_n - twice - never,
            sandbox.refresh_token_reuse_violations()
        );
        println!("load average (1/5/15 min): {load_before} before, {load_after} after");
        for handle in instances {
            handle.shutdown(Duration::from_secs(2)).await;
        }

        assert_eq!(ok.len(), due_n, "every due grant refreshed");
        assert_eq!(
            (twice, never, foreign),
            (0, 0, 0),
            "each refresh token sent once"
        );
        assert_eq!(reuse_answers, 0, "no refresh token reused");
        assert_eq!(sandbox.refresh_token_reuse_violations(), 0);
        assert!(
            busiest <= budget,
            "busiest second {busiest} > budget {budget}"
        );
    });
}
