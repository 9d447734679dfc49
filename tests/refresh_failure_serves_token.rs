//! A transient refresh failure never hides a valid token (issue 12, part 2), through
//! `GET /v1/grants/{open_id}/token` with the scheduler running, on an injected clock that
//! moves in step with the sandbox's: after a refresh answered 5xx, 20050, 20072, 429 or
//! 400/99991400, the stored access token is served while it is valid beyond the margin;
//! retries follow the backoff (callers and the scheduler together send one attempt per
//! backoff step); only without a valid token does a caller get `503` with `Retry-After`,
//! never `404`/`409`. A refresh whose answer was lost (`refresh_uncertain`) keeps serving
//! its valid token too, and its refresh token is never sent again.

mod common;

use std::time::Duration;

use actix::prelude::*;
use common::*;
use lark_auth::clock::Clock;
use lark_auth::config::RefreshConfig;
use lark_auth::http::{self, ControlState, HttpFront};
use lark_auth::metrics::Metrics;
use lark_auth::refresh::{RefreshScheduler, SchedulerSettings};
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::tokens::TokenService;
use lark_auth::tokens::{OpenApiRefresher, TokenSource};
use lark_auth::vault::actor::{GetGrant, StoreGrant};
use lark_auth::vault::{GrantRecord, GrantStatus, TokenVaultActor, VaultKey};

const APP: &str = "cli_sandbox_app";
const USER: &str = "ou_test_user_1";
const API_TOKEN: &str = "refresh-failure-test-token";

struct Harness {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    vault: Addr<TokenVaultActor>,
    _scheduler: Addr<RefreshScheduler<OpenApiRefresher>>,
    front: HttpFront,
    client: awc::Client,
    /// The grant as first stored: its access token lives 7,200 s from now.
    first: GrantRecord,
}

/// The sandbox (2 h tokens), one fresh grant of [`USER`], a source and a scheduler with
/// the default `[refresh]` settings on the injected clock, and the control API on them.
/// The OpenAPI client gives up on an answer after `timeout`.
async fn harness(timeout: Duration) -> Harness {
    let (sandbox, client) = openapi_with(SandboxConfig::default(), |c| {
        c.openapi.request_timeout = timeout;
    })
    .await;
    let grant = code_flow_grant(&sandbox, &client, USER).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = TokenVaultActor::start(open_vault(dir.path(), APP, &VaultKey::generate()), 2);
    let first = vault
        .send(StoreGrant {
            record: grant_record(APP, USER, &grant, grant.expires_in),
        })
        .await
        .unwrap()
        .unwrap();
    let refresh = RefreshConfig::default();
    let source = TokenSource::with_clock(
        vault.clone(),
        OpenApiRefresher::new(client),
        refresh.margin,
        Clock::from_fn(test_clock),
    );
    let scheduler = RefreshScheduler::new(
        source.clone(),
        vault.clone(),
        SchedulerSettings {
            tick: Duration::from_millis(10),
            ..SchedulerSettings::from_config(&refresh)
        },
    )
    .with_clock(Clock::from_fn(test_clock))
    .start();
    let mut state = ControlState::new(Some(&Secret::new(API_TOKEN.into())), Metrics::new());
    state.vault = Some(vault.clone());
    state.tokens = Some(TokenService::new(source).start());
    let front = http::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
    Harness {
        _dir: dir,
        sandbox,
        vault,
        _scheduler: scheduler,
        front,
        client: awc::Client::default(),
        first,
    }
}

async fn stored(h: &Harness) -> GrantRecord {
    h.vault
        .send(GetGrant {
            open_id: USER.into(),
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// One answer of `GET /v1/grants/{USER}/token`.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: serde_json::Value,
}

async fn get_token(h: &Harness) -> Answer {
    let url = format!("http://{}/v1/grants/{USER}/token", h.front.local_addr);
    let mut res = h
        .client
        .get(url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    Answer {
        status: res.status().as_u16(),
        retry_after,
        body: res.json().await.unwrap(),
    }
}

/// Asserts a `200` with the token of `record`.
fn assert_serves(answer: &Answer, record: &GrantRecord, what: &str) {
    assert_eq!(answer.status, 200, "{what}: {answer:?}");
    assert_eq!(
        answer.body["access_token"].as_str(),
        Some(record.access_token.expose().as_str()),
        "{what}"
    );
}

/// Asserts a `503 refresh_failed` whose `Retry-After` is within `1..=most` seconds (and
/// equal to the body's `retry_after_secs`).
fn assert_retry_later(answer: &Answer, most: u64, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {answer:?}");
    assert_eq!(answer.body["error"], "refresh_failed", "{what}");
    let secs = answer.retry_after.expect("a Retry-After header");
    assert!((1..=most).contains(&secs), "{what}: Retry-After {secs}");
    assert_eq!(answer.body["retry_after_secs"], secs, "{what}");
}

/// The scheduler's refresh 600 s before expiry meets `fault` (three times in a row); the
/// token is served throughout its validity, callers add no attempt, and once the token
/// is inside the margin callers get 503 + Retry-After until a retry after the backoff
/// succeeds.
async fn transient_failure_case(fault: OpenApiFault, code: Option<u32>) {
    let h = harness(Duration::from_secs(5)).await;
    for _ in 0..3 {
        h.sandbox
            .inject_openapi_fault(OpenApiRoute::UserToken, fault.clone());
    }
    assert_serves(&get_token(&h).await, &h.first, "fresh");

    // 599 s left: the hot grant's scheduled refresh is due, and fails.
    advance_clock(&h.sandbox, Duration::from_secs(7200 - 599));
    eventually("the scheduled refresh failed", || async {
        stored(&h).await.status == GrantStatus::RefreshFailed
    })
    .await;
    let record = stored(&h).await;
    assert_eq!((record.status_code, record.failures), (code, 1));
    assert_eq!(refresh_requests(&h.sandbox), 1);

    // Still valid beyond the 300 s margin: served, and nothing more is sent.
    for n in 0..3 {
        assert_serves(&get_token(&h).await, &h.first, &format!("valid, call {n}"));
    }
    assert_eq!(
        refresh_requests(&h.sandbox),
        1,
        "no attempt during the backoff"
    );

    // 199 s left, inside the margin; the first backoff step (5 s) is over. Ten callers
    // at once, with the scheduler's retry also due: one attempt, which fails again.
    advance_clock(&h.sandbox, Duration::from_secs(400));
    let answers = futures_util::future::join_all((0..10).map(|_| get_token(&h))).await;
    for answer in &answers {
        assert_retry_later(answer, 10, "inside the margin, second failure");
    }
    eventually("the attempt is stored", || async {
        stored(&h).await.failures == 2
    })
    .await;
    assert_eq!(
        refresh_requests(&h.sandbox),
        2,
        "one attempt per backoff step"
    );
    assert_retry_later(&get_token(&h).await, 10, "during the second step");
    assert_eq!(refresh_requests(&h.sandbox), 2);

    // The second step (10 s) ends: one more attempt, the third failure.
    advance_clock(&h.sandbox, Duration::from_secs(10));
    assert_retry_later(&get_token(&h).await, 20, "third failure");
    eventually("the third attempt is stored", || async {
        stored(&h).await.failures == 3
    })
    .await;
    assert_eq!(refresh_requests(&h.sandbox), 3);

    // The third step (20 s) ends: the platform answers again, a new token is served.
    advance_clock(&h.sandbox, Duration::from_secs(20));
    let answer = get_token(&h).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    eventually("the grant is active again", || async {
        stored(&h).await.status == GrantStatus::Active
    })
    .await;
    let record = stored(&h).await;
    assert_serves(&answer, &record, "refreshed");
    assert_ne!(record.access_token, h.first.access_token);
    assert_eq!((record.failures, record.retry_at_ms), (0, None));
    assert_eq!(refresh_requests(&h.sandbox), 4);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_500_20050_refresh_failure_keeps_serving_the_valid_token() {
    transient_failure_case(OpenApiFault::ServerError, Some(20050)).await;
}

#[actix_rt::test]
async fn a_503_20072_refresh_failure_keeps_serving_the_valid_token() {
    transient_failure_case(OpenApiFault::TemporarilyUnavailable, Some(20072)).await;
}

#[actix_rt::test]
async fn a_429_rate_limited_refresh_keeps_serving_the_valid_token() {
    transient_failure_case(
        OpenApiFault::RateLimited { reset_secs: 1 },
        Some(99_991_400),
    )
    .await;
}

#[actix_rt::test]
async fn a_400_99991400_rate_limited_refresh_keeps_serving_the_valid_token() {
    transient_failure_case(
        OpenApiFault::RateLimitedOn400 { reset_secs: 1 },
        Some(99_991_400),
    )
    .await;
}

/// A gateway's 502 page (no platform code): a server error, retried like the others,
/// not the end of the grant.
#[actix_rt::test]
async fn a_502_without_a_code_keeps_serving_the_valid_token_and_is_retried() {
    transient_failure_case(OpenApiFault::HttpStatus(502), None).await;
}

/// The scheduled refresh is processed by the platform but its answer comes after the
/// client gave up: `refresh_uncertain`. The old access token is still served while valid
/// beyond the margin, the refresh token is never sent again, and only then is the grant
/// settled as `needs_reauth` (409), nothing sent.
#[actix_rt::test]
async fn an_unanswered_refresh_keeps_serving_the_valid_token_and_never_resends() {
    let h = harness(Duration::from_millis(300)).await;
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_secs(1)),
    );
    assert_serves(&get_token(&h).await, &h.first, "fresh");
    advance_clock(&h.sandbox, Duration::from_secs(7200 - 599));
    eventually("the scheduled refresh got no answer", || async {
        stored(&h).await.status == GrantStatus::RefreshUncertain
    })
    .await;
    for n in 0..3 {
        assert_serves(
            &get_token(&h).await,
            &h.first,
            &format!("uncertain, call {n}"),
        );
    }
    // Inside the margin: nothing valid left to serve, and nothing may be sent.
    advance_clock(&h.sandbox, Duration::from_secs(400));
    let answer = get_token(&h).await;
    assert_eq!(answer.status, 409, "{answer:?}");
    assert_eq!(answer.body["error"], "needs_reauth");
    assert_eq!(stored(&h).await.status, GrantStatus::NeedsReauth);
    assert_eq!(refresh_requests(&h.sandbox), 1);
    assert_eq!(
        h.sandbox.refresh_token_uses(h.first.refresh_token.expose()),
        1
    );
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}
