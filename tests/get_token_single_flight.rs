//! `get_token` on the TokenVaultActor over real sled files, refreshing through the
//! production [`OpenApiRefresher`] against the in-process sandbox's token endpoint (which
//! rotates refresh tokens, makes them single use and counts reuse as a violation):
//! single-flight refresh, lost answers, platform revocation, retryable failures, crash
//! leftovers, and answers that arrive after the grant was replaced.

mod common;

use std::time::Duration;

use actix::Addr;
use common::*;
use lark_auth::clock::Clock;
use lark_auth::sandbox::{OpenApiFault, OpenApiRoute, Sandbox, SandboxConfig};
use lark_auth::tokens::{GetTokenError, OpenApiRefresher, TokenSource};
use lark_auth::vault::actor::{GetGrant, ListQuarantined, StoreGrant};
use lark_auth::vault::{GrantRecord, GrantStatus, TokenVaultActor, VaultKey, unix_now_ms};

const APP: &str = "cli_sandbox_app";
const USER: &str = "ou_test_user_1";
const MARGIN: Duration = Duration::from_secs(300);

struct Harness {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    addr: Addr<TokenVaultActor>,
    refresher: OpenApiRefresher,
    source: TokenSource<OpenApiRefresher>,
    /// The grant as first stored.
    first: GrantRecord,
}

/// A sandbox, a grant of [`USER`] authorized through it and stored with an access token
/// that is inside the margin (60 s left on our clock), and a source on it. The client
/// gives up on an answer after `timeout`.
async fn harness(timeout: Duration) -> Harness {
    let (sandbox, client) = openapi_with(SandboxConfig::default(), |c| {
        c.openapi.request_timeout = timeout;
    })
    .await;
    let grant = code_flow_grant(&sandbox, &client, USER).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = TokenVaultActor::start(open_vault(dir.path(), APP, &VaultKey::generate()), 2);
    let first = addr
        .send(StoreGrant {
            record: grant_record(APP, USER, &grant, Duration::from_secs(60)),
        })
        .await
        .unwrap()
        .unwrap();
    let refresher = OpenApiRefresher::new(client);
    let source = TokenSource::new(addr.clone(), refresher.clone(), MARGIN);
    Harness {
        _dir: dir,
        sandbox,
        addr,
        refresher,
        source,
        first,
    }
}

async fn stored(addr: &Addr<TokenVaultActor>, open_id: &str) -> GrantRecord {
    addr.send(GetGrant {
        open_id: open_id.into(),
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap()
}

#[actix_rt::test]
async fn fifty_concurrent_callers_on_an_expiring_grant_cause_exactly_one_refresh() {
    let h = harness(Duration::from_secs(2)).await;
    let calls = (0..50).map(|_| h.source.get_token(USER));
    let results = futures_util::future::join_all(calls).await;

    assert_eq!(refresh_requests(&h.sandbox), 1, "exactly one refresh");
    let record = stored(&h.addr, USER).await;
    for r in &results {
        let token = r.as_ref().expect("every caller gets the new token");
        assert_eq!(token.token, record.access_token);
    }
    assert_ne!(record.refresh_token, h.first.refresh_token, "rotated");
    assert_eq!(record.status, GrantStatus::Active);
    assert_eq!(record.refresh_started_ms, None);
    assert_eq!(
        record.version, 3,
        "stored, marked before sending, answer stored"
    );
    assert_eq!(h.source.flights_in_progress(), 0);
    assert_eq!(h.source.refresh_counts().sent, 1);
    // The new access token works on the platform.
    h.refresher
        .client()
        .user_info(&record.access_token)
        .await
        .unwrap();

    // Fresh now: no further refresh.
    h.source.get_token(USER).await.unwrap();
    assert_eq!(refresh_requests(&h.sandbox), 1);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

/// The sandbox processes the refresh (the token is consumed) but answers only after the
/// client's timeout.
#[actix_rt::test]
async fn a_timeout_marks_the_grant_uncertain_and_its_token_is_never_resent() {
    let h = harness(Duration::from_millis(300)).await;
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_secs(1)),
    );
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshOutcomeUnknown),
        "{err:?}"
    );
    let record = stored(&h.addr, USER).await;
    assert_eq!(record.status, GrantStatus::RefreshUncertain);
    assert_eq!(record.refresh_token, h.first.refresh_token);

    // The next use settles it without sending anything.
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: None }),
        "{err:?}"
    );
    assert_eq!(
        h.sandbox.refresh_token_uses(h.first.refresh_token.expose()),
        1,
        "the sandbox saw one use"
    );
    assert_eq!(stored(&h.addr, USER).await.status, GrantStatus::NeedsReauth);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_grant_revoked_on_the_platform_needs_reauth_and_is_not_retried() {
    let h = harness(Duration::from_secs(2)).await;
    h.sandbox.revoke_user_grants(USER);
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20064) }),
        "{err:?}"
    );
    let record = stored(&h.addr, USER).await;
    assert_eq!(
        (record.status, record.status_code),
        (GrantStatus::NeedsReauth, Some(20064))
    );
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20064) }),
        "{err:?}"
    );
    assert_eq!(refresh_requests(&h.sandbox), 1);
}

/// A retryable failure keeps the refresh token; the next attempt waits for the backoff
/// (a call before it sends nothing and says how long to wait), then one call refreshes.
#[actix_rt::test]
async fn a_retryable_failure_keeps_the_token_and_a_call_after_the_backoff_refreshes() {
    let h = harness(Duration::from_secs(2)).await;
    let source = TokenSource::with_clock(
        h.addr.clone(),
        h.refresher.clone(),
        MARGIN,
        Clock::from_fn(test_clock),
    );
    h.sandbox
        .inject_openapi_fault(OpenApiRoute::UserToken, OpenApiFault::ServerError);
    let err = source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshFailed { code: Some(20050), retry_after }
            if retry_after == Duration::from_secs(5)),
        "{err:?}"
    );
    let record = stored(&h.addr, USER).await;
    assert_eq!(record.status, GrantStatus::RefreshFailed);
    assert_eq!(record.failures, 1);
    let err = source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshFailed { code: Some(20050), retry_after }
            if retry_after <= Duration::from_secs(5) && !retry_after.is_zero()),
        "{err:?}"
    );
    assert_eq!(
        refresh_requests(&h.sandbox),
        1,
        "nothing sent during the backoff"
    );
    advance_clock(&h.sandbox, Duration::from_secs(5));
    source.get_token(USER).await.unwrap();
    assert_eq!(refresh_requests(&h.sandbox), 2);
    let record = stored(&h.addr, USER).await;
    assert_eq!(
        (record.status, record.failures, record.retry_at_ms),
        (GrantStatus::Active, 0, None)
    );
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

/// The refresh reaches the platform (which rotates the token) and the process dies before
/// the answer is stored. The restarted process finds the write-ahead marker and never
/// sends the consumed token.
#[actix_rt::test]
async fn a_restart_between_the_refresh_answer_and_its_flush_cannot_cause_reuse() {
    let h = harness(Duration::from_secs(5)).await;
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_millis(500)),
    );
    {
        let flight = std::pin::pin!(h.source.get_token(USER));
        let seen = std::pin::pin!(h.sandbox.wait_for_token_requests(2, WAIT));
        match futures_util::future::select(flight, seen).await {
            futures_util::future::Either::Right((seen, _)) => {
                seen.expect("the refresh reached the sandbox");
            }
            futures_util::future::Either::Left((r, _)) => panic!("finished early: {r:?}"),
        }
        // "Crash": the flight is abandoned with its answer still on the way.
    }
    let restarted = TokenSource::new(h.addr.clone(), h.refresher.clone(), MARGIN);
    let err = restarted.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshOutcomeUnknown),
        "{err:?}"
    );
    let err = restarted.get_token(USER).await.unwrap_err();
    assert!(matches!(err, GetTokenError::NeedsReauth { .. }), "{err:?}");
    assert_eq!(
        h.sandbox.refresh_token_uses(h.first.refresh_token.expose()),
        1
    );
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
    assert_eq!(restarted.refresh_counts().sent, 0);
}

/// The same crash with the vault reopened from disk.
#[actix_rt::test]
async fn a_marker_found_on_disk_after_reopening_is_never_sent() {
    let (sandbox, client) = openapi().await;
    let grant = code_flow_grant(&sandbox, &client, USER).await;
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    {
        let vault = open_vault(dir.path(), APP, &key);
        let mut record = vault
            .store_grant(grant_record(APP, USER, &grant, Duration::from_secs(60)))
            .unwrap();
        record.refresh_started_ms = Some(unix_now_ms());
        vault.compare_and_swap(&record, true).unwrap();
    }
    let addr = TokenVaultActor::start(open_vault(dir.path(), APP, &key), 1);
    let source = TokenSource::new(addr.clone(), OpenApiRefresher::new(client), MARGIN);
    let err = source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshOutcomeUnknown),
        "{err:?}"
    );
    assert_eq!(
        stored(&addr, USER).await.status,
        GrantStatus::RefreshUncertain
    );
    let err = source.get_token(USER).await.unwrap_err();
    assert!(matches!(err, GetTokenError::NeedsReauth { .. }), "{err:?}");
    assert_eq!(refresh_requests(&sandbox), 0, "nothing sent");
}

/// The user authorizes again while a refresh is in flight: the refresh's answer must not
/// overwrite the new grant.
#[actix_rt::test]
async fn an_answer_for_a_replaced_grant_does_not_overwrite_it() {
    let h = harness(Duration::from_secs(5)).await;
    let reauthorized = code_flow_grant(&h.sandbox, h.refresher.client(), USER).await;
    // The refresh answer is held back 2 s, so the new authorization (a flushed vault
    // write) lands before it. Injected after the code exchange above, which would
    // otherwise consume the fault and leave the refresh racing the write.
    h.sandbox.inject_openapi_fault(
        OpenApiRoute::UserToken,
        OpenApiFault::Delay(Duration::from_secs(2)),
    );
    let fresh = grant_record(APP, USER, &reauthorized, Duration::from_secs(7000));
    let replace = async {
        h.sandbox.wait_for_token_requests(3, WAIT).await.unwrap();
        h.addr
            .send(StoreGrant {
                record: fresh.clone(),
            })
            .await
            .unwrap()
            .unwrap();
    };
    let (token, ()) = futures_util::future::join(h.source.get_token(USER), replace).await;
    assert_eq!(token.unwrap().token, fresh.access_token);
    let record = stored(&h.addr, USER).await;
    assert_eq!(record.refresh_token, fresh.refresh_token);
    assert_eq!(refresh_requests(&h.sandbox), 1);
}

#[actix_rt::test]
async fn missing_and_revoked_grants_are_typed_errors() {
    let h = harness(Duration::from_secs(2)).await;
    assert!(matches!(
        h.source.get_token("ou_nobody").await,
        Err(GetTokenError::NoGrant)
    ));
    h.addr
        .send(lark_auth::vault::actor::Revoke {
            open_id: USER.into(),
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        h.source.get_token(USER).await,
        Err(GetTokenError::Revoked)
    ));
    assert_eq!(refresh_requests(&h.sandbox), 0);
    assert!(
        h.addr
            .send(ListQuarantined)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

#[actix_rt::test]
async fn a_token_the_platform_rejected_is_replaced_by_one_refresh_shared_by_all_callers() {
    let h = harness(Duration::from_secs(2)).await;
    // A fresh grant: get_token itself refreshes nothing.
    let record = grant_record(
        APP,
        USER,
        &code_flow_grant(&h.sandbox, h.refresher.client(), USER).await,
        Duration::from_secs(7200),
    );
    h.addr.send(StoreGrant { record }).await.unwrap().unwrap();
    let before = refresh_requests(&h.sandbox);
    let first = h.source.get_token(USER).await.unwrap().token;
    assert_eq!(refresh_requests(&h.sandbox), before);

    // Refused by the platform (99991677): one refresh, a new token.
    let second = h.source.refresh_rejected(USER, &first).await.unwrap().token;
    assert_ne!(second, first);
    assert_eq!(refresh_requests(&h.sandbox), before + 1);
    // A caller still holding the old token gets the new one; nothing is sent.
    let again = h.source.refresh_rejected(USER, &first).await.unwrap().token;
    assert_eq!(again, second);
    assert_eq!(refresh_requests(&h.sandbox), before + 1);
    assert_eq!(h.source.get_token(USER).await.unwrap().token, second);

    // Ten callers refused with the same token at once: one refresh, one new token.
    let calls = (0..10).map(|_| h.source.refresh_rejected(USER, &second));
    let tokens: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().token)
        .collect();
    assert_eq!(refresh_requests(&h.sandbox), before + 2);
    assert!(tokens.iter().all(|t| *t == tokens[0] && *t != second));
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}
