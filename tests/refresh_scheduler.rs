//! The RefreshScheduler against the sandbox's token endpoint with short token lifetimes:
//! proactive refresh of hot grants, platform revocation, lost answers, retries, and pacing
//! of a backlog of 1,000 grants due at once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::*;
use lark_auth::config::Config;
use lark_auth::openapi::OpenApiClient;
use lark_auth::refresh::{
    GetDispatchLog, GetRefreshStats, GrantChanged, ReauthNeeded, RefreshScheduler, RefreshStats,
    SchedulerSettings, SetEager,
};
use lark_auth::sandbox::{
    OpenApiFault, OpenApiRoute, OpenApiSandboxConfig, Sandbox, SandboxConfig, SandboxUser,
};
use lark_auth::tokens::{OpenApiRefresher, TokenSource};
use lark_auth::vault::actor::{GetGrant, StoreGrant};
use lark_auth::vault::{GrantRecord, GrantStatus, TokenVaultActor, VaultKey, unix_now_ms};

const APP: &str = "cli_sandbox_app";
const USER: &str = "ou_test_user_1";

fn settings() -> SchedulerSettings {
    SchedulerSettings {
        ahead: Duration::from_millis(1000),
        tick: Duration::from_millis(50),
        retry_initial: Duration::from_millis(200),
        retry_max: Duration::from_millis(800),
        ..SchedulerSettings::default()
    }
}

#[derive(Clone, Default)]
struct ReauthProbe(Arc<Mutex<Vec<ReauthNeeded>>>);

impl Actor for ReauthProbe {
    type Context = Context<Self>;
}

impl Handler<ReauthNeeded> for ReauthProbe {
    type Result = ();
    fn handle(&mut self, msg: ReauthNeeded, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(msg);
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    client: OpenApiClient,
    vault: Addr<TokenVaultActor>,
    scheduler: Addr<RefreshScheduler<OpenApiRefresher>>,
    probe: ReauthProbe,
}

/// A sandbox whose access tokens live `access_lifetime`, `grants` authorized grants
/// stored in a fresh vault (each with `access_left` on our clock), and a scheduler with
/// `settings` (and a re-authorization probe) started on them.
async fn harness(
    sandbox_config: SandboxConfig,
    adjust: impl FnOnce(&mut Config),
    users: &[String],
    access_left: Option<Duration>,
    settings: SchedulerSettings,
) -> Harness {
    let (sandbox, client) = openapi_with(sandbox_config, adjust).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = TokenVaultActor::start(open_vault(dir.path(), APP, &VaultKey::generate()), 2);
    for chunk in users.chunks(50) {
        let grants = futures_util::future::join_all(
            chunk
                .iter()
                .map(|u| code_flow_grant(&sandbox, &client, u.as_str())),
        )
        .await;
        for (user, grant) in chunk.iter().zip(&grants) {
            let left = access_left.unwrap_or(grant.expires_in);
            vault
                .send(StoreGrant {
                    record: grant_record(APP, user, grant, left),
                })
                .await
                .unwrap()
                .unwrap();
        }
    }
    let source = TokenSource::new(
        vault.clone(),
        OpenApiRefresher::new(client.clone()),
        Duration::from_millis(300),
    );
    let probe = ReauthProbe::default();
    let scheduler = RefreshScheduler::new(source, vault.clone(), settings)
        .with_reauth_recipient(probe.clone().start().recipient())
        .start();
    Harness {
        _dir: dir,
        sandbox,
        client,
        vault,
        scheduler,
        probe,
    }
}

async fn stats(h: &Harness) -> RefreshStats {
    h.scheduler.send(GetRefreshStats).await.unwrap()
}

async fn stored(h: &Harness, open_id: &str) -> GrantRecord {
    h.vault
        .send(GetGrant {
            open_id: open_id.into(),
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn short_lived(access: Duration) -> SandboxConfig {
    SandboxConfig {
        openapi: OpenApiSandboxConfig {
            access_token_lifetime: access,
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    }
}

#[actix_rt::test]
async fn proactive_refresh_keeps_a_hot_grant_valid_for_several_lifetimes() {
    let h = harness(
        short_lived(Duration::from_secs(2)),
        |_| {},
        &[USER.to_string()],
        None,
        settings(),
    )
    .await;
    h.scheduler.do_send(SetEager {
        open_id: USER.into(),
        eager: true,
    });
    // 3.5 access-token lifetimes, checking every 100 ms that the stored token works.
    let until = unix_now_ms() + 7_000;
    while unix_now_ms() < until {
        let record = stored(&h, USER).await;
        assert_eq!(record.status, GrantStatus::Active);
        assert!(
            record.access_expires_ms > unix_now_ms(),
            "stored token expired"
        );
        h.client
            .user_info(&record.access_token)
            .await
            .expect("the stored access token is valid on the platform");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Compare the counters between refreshes, not while one is in flight.
    h.scheduler.do_send(SetEager {
        open_id: USER.into(),
        eager: false,
    });
    eventually("no refresh in flight", || async {
        stats(&h).await.in_flight == 0
    })
    .await;
    let s = stats(&h).await;
    assert!(s.attempts.refreshed >= 4, "{s:?}");
    assert_eq!(s.attempts.sent, s.attempts.refreshed, "{s:?}");
    assert_eq!(refresh_requests(&h.sandbox) as u64, s.attempts.sent);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_grant_revoked_on_the_platform_becomes_needs_reauth_and_asks_once() {
    let h = harness(
        short_lived(Duration::from_secs(2)),
        |_| {},
        &[USER.to_string()],
        None,
        SchedulerSettings {
            reauth_card: true,
            ..settings()
        },
    )
    .await;
    h.sandbox.revoke_user_grants(USER);
    h.scheduler.do_send(SetEager {
        open_id: USER.into(),
        eager: true,
    });
    eventually("the re-authorization request", || async {
        !h.probe.0.lock().unwrap().is_empty()
    })
    .await;
    let record = stored(&h, USER).await;
    assert_eq!(
        (record.status, record.status_code),
        (GrantStatus::NeedsReauth, Some(20064))
    );
    assert!(record.reauth_requested_ms.is_some());
    // Re-reading the grant (and later changes) never asks again.
    for _ in 0..5 {
        h.scheduler.do_send(GrantChanged {
            open_id: USER.into(),
        });
    }
    let s = stats(&h).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *h.probe.0.lock().unwrap(),
        [ReauthNeeded {
            open_id: USER.into(),
            code: Some(20064)
        }]
    );
    let s2 = stats(&h).await;
    assert_eq!((s.reauth_requests_sent, s2.reauth_requests_sent), (1, 1));
    assert_eq!(s2.by_status.needs_reauth, 1);
    assert_eq!(s2.deadlines, 0, "no deadline for a dead grant");
    assert_eq!(refresh_requests(&h.sandbox), 1);
}

#[actix_rt::test]
async fn a_lost_answer_is_never_resent_and_the_grant_is_settled() {
    let h = harness(
        short_lived(Duration::from_secs(2)),
        |c| c.openapi.request_timeout = Duration::from_millis(300),
        &[USER.to_string()],
        None,
        settings(),
    )
    .await;
    let first = stored(&h, USER).await;
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_secs(1)),
    );
    h.scheduler.do_send(SetEager {
        open_id: USER.into(),
        eager: true,
    });
    eventually("the grant settled as needs_reauth", || async {
        stored(&h, USER).await.status == GrantStatus::NeedsReauth
    })
    .await;
    let s = stats(&h).await;
    assert_eq!(s.attempts.outcome_unknown, 1, "{s:?}");
    assert_eq!(s.attempts.sent, 1, "{s:?}");
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        h.sandbox.refresh_token_uses(first.refresh_token.expose()),
        1,
        "the sandbox saw one use"
    );
    assert_eq!(refresh_requests(&h.sandbox), 1);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_retryable_failure_is_retried_after_a_backoff() {
    let h = harness(
        short_lived(Duration::from_secs(2)),
        |_| {},
        &[USER.to_string()],
        None,
        settings(),
    )
    .await;
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::TemporarilyUnavailable,
    );
    h.sandbox
        .inject_openapi_fault(OpenApiRoute::UserToken, OpenApiFault::ServerError);
    h.scheduler.do_send(SetEager {
        open_id: USER.into(),
        eager: true,
    });
    eventually("a refresh after two failures", || async {
        stats(&h).await.attempts.refreshed >= 1
    })
    .await;
    let s = stats(&h).await;
    assert_eq!(s.attempts.retryable, 2, "{s:?}");
    // The success is counted before its record write lands: wait for the write.
    eventually("the grant is active again", || async {
        stored(&h, USER).await.status == GrantStatus::Active
    })
    .await;
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

/// 1,000 grants due at once (as after downtime): the scheduler's dispatch log never
/// holds more than the budget in any one-second window, every grant is refreshed once,
/// and no refresh token is reused.
#[actix_rt::test]
async fn pacing_holds_the_budget_with_a_thousand_grants_due_at_once() {
    const GRANTS: usize = 1000;
    const BUDGET: u32 = 100;
    let users: Vec<String> = (0..GRANTS).map(|i| format!("ou_pace_{i:04}")).collect();
    let config = SandboxConfig {
        openapi: OpenApiSandboxConfig {
            users: users
                .iter()
                .map(|u| SandboxUser::new(u, &u.replace("ou_", "on_"), u))
                .collect(),
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    };
    let h = harness(
        config,
        |_| {},
        &users,
        // Inside `ahead` for all of them: all due now.
        Some(Duration::from_secs(60)),
        SchedulerSettings {
            budget_per_sec: BUDGET,
            ahead: Duration::from_secs(600),
            ..settings()
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = stats(&h).await;
        if s.attempts.refreshed as usize == GRANTS && s.in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {s:?}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let log = h.scheduler.send(GetDispatchLog).await.unwrap();
    assert_eq!(log.len(), GRANTS);
    for (i, start) in log.iter().enumerate() {
        let in_window = log[i..].iter().take_while(|t| **t < start + 1000).count();
        assert!(
            in_window <= BUDGET as usize,
            "{in_window} refreshes in the second from {start} (budget {BUDGET})"
        );
    }
    assert_eq!(refresh_requests(&h.sandbox), GRANTS);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
    let s = stats(&h).await;
    assert_eq!(s.by_status.active, GRANTS as u64);
    assert_eq!(s.backlog, 0);
}

/// Keep-alive alone: a grant nobody asks a token for (never hot, so no access deadline)
/// is refreshed before each refresh token lapses — several lifetimes in a row — and no
/// refresh token is ever sent twice.
#[actix_rt::test]
async fn an_unused_grant_is_kept_alive_before_its_refresh_token_lapses() {
    const LIFETIMES: u64 = 3;
    let config = SandboxConfig {
        openapi: OpenApiSandboxConfig {
            refresh_token_lifetime: Duration::from_secs(4),
            ..OpenApiSandboxConfig::default()
        },
        ..SandboxConfig::default()
    };
    let h = harness(
        config,
        |_| {},
        &[USER.to_string()],
        None,
        SchedulerSettings {
            keepalive_lead: Duration::from_secs(2),
            // Never hot: only the keep-alive deadline applies.
            hot_window: Duration::ZERO,
            ..settings()
        },
    )
    .await;
    let first = stored(&h, USER).await;
    let mut lapses = vec![first.refresh_expires_ms];
    let mut last = first;
    while (lapses.len() as u64) <= LIFETIMES {
        let s = stats(&h).await;
        let a = s.attempts;
        assert_eq!(
            (a.retryable, a.needs_reauth, a.outcome_unknown),
            (0, 0, 0),
            "{s:?}"
        );
        let record = stored(&h, USER).await;
        assert_eq!(record.status, GrantStatus::Active, "{s:?}");
        if record.refresh_token != last.refresh_token && record.refresh_started_ms.is_none() {
            lapses.push(record.refresh_expires_ms);
            last = record;
        }
        assert!(
            unix_now_ms() < last.refresh_expires_ms,
            "the refresh token lapsed before the keep-alive refresh ({s:?})"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refresh_requests(&h.sandbox) as u64, LIFETIMES);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
    let s = stats(&h).await;
    assert_eq!(s.attempts.refreshed, LIFETIMES);
    assert_eq!(s.attempts.sent, LIFETIMES);
    assert!(lapses.windows(2).all(|w| w[0] < w[1]), "{lapses:?}");
}
