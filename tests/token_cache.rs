//! The opened-token cache of `get_token` against real sled files and the sandbox's token
//! endpoint: a fresh token is served from memory, and every vault write of the grant
//! (revoke, refresh, a new grant from a session, a status change to `needs_reauth`)
//! stops the cached token from being served — including a revoke racing lookups that
//! missed the cache and are still reading the old record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use common::*;
use lark_auth::openapi::OpenApiClient;
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::store::{GrantKey, GrantWrite};
use lark_auth::tokens::{GetTokenError, OpenApiRefresher, TokenCache, TokenSource};
use lark_auth::vault::actor::{MarkStatus, Revoke, StoreGrant};
use lark_auth::vault::{GrantRecord, GrantStatus, TokenVaultActor, Vault, VaultKey};

const APP: &str = "cli_sandbox_app";
const USER: &str = "ou_test_user_1";
const MARGIN: Duration = Duration::from_secs(300);

struct Harness {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    client: OpenApiClient,
    vault: Vault,
    addr: Addr<TokenVaultActor>,
    source: TokenSource<OpenApiRefresher>,
    cache: Arc<TokenCache>,
    /// The grant as first stored: its access token (of the sandbox's 7,200 s) has 1,500 s
    /// left, fresh for `get_token` but past three quarters of its life, so a
    /// `refresh_ahead` with a lead of a day (clamped to a quarter of the lifetime)
    /// refreshes it.
    first: GrantRecord,
}

async fn harness() -> Harness {
    let (sandbox, client) = openapi_with(SandboxConfig::default(), |_| {}).await;
    let grant = code_flow_grant(&sandbox, &client, USER).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), APP, &VaultKey::generate());
    let addr = TokenVaultActor::start(vault.clone(), 2);
    let first = addr
        .send(StoreGrant {
            record: grant_record(APP, USER, &grant, Duration::from_secs(1500)),
        })
        .await
        .unwrap()
        .unwrap();
    let cache = TokenCache::for_vault(&vault, 16);
    let source = TokenSource::new(addr.clone(), OpenApiRefresher::new(client.clone()), MARGIN)
        .with_token_cache(cache.clone());
    Harness {
        _dir: dir,
        sandbox,
        client,
        vault,
        addr,
        source,
        cache,
        first,
    }
}

fn cached(h: &Harness) -> Option<String> {
    h.cache
        .fresh(USER, lark_auth::vault::unix_now_ms(), 0)
        .map(|t| t.token.expose().clone())
}

/// Overwrites the stored record behind the vault's back (no invalidation): a lookup that
/// still answers the old token cannot have read the store.
fn scribble_over_the_record(h: &Harness, version: u64) {
    let key = GrantKey::new(APP, USER);
    h.vault
        .store()
        .compare_and_swap_grant(
            &key,
            Some(version),
            Some(GrantWrite {
                payload: b"not a grant record".to_vec(),
                due_ms: None,
            }),
        )
        .unwrap();
}

#[actix_rt::test]
async fn a_fresh_token_is_served_from_the_cache_without_reading_the_vault() {
    let h = harness().await;
    assert_eq!(cached(&h), None, "nothing cached before it is asked for");
    let token = h.source.get_token(USER).await.unwrap();
    assert_eq!(token.token, h.first.access_token);
    assert_eq!(token.expires_ms, h.first.access_expires_ms);
    assert_eq!(
        cached(&h).as_deref(),
        Some(h.first.access_token.expose().as_str())
    );
    assert_eq!(h.cache.len(), 1);

    scribble_over_the_record(&h, h.first.version);
    for _ in 0..3 {
        let again = h.source.get_token(USER).await.unwrap();
        assert_eq!(again.token, h.first.access_token, "served from memory");
    }
    assert_eq!(refresh_requests(&h.sandbox), 0);
}

#[actix_rt::test]
async fn a_completed_revoke_is_never_followed_by_the_cached_token() {
    let h = harness().await;
    for round in 0..60 {
        // A new grant (a session's write) empties the entry; then lookups that miss and
        // read the vault race the revoke.
        let stored = h
            .addr
            .send(StoreGrant {
                record: h.first.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        if round % 2 == 0 {
            // Half the rounds start from a cached token instead.
            assert_eq!(
                h.source.get_token(USER).await.unwrap().token,
                stored.access_token
            );
            assert!(cached(&h).is_some());
        }
        let lookups = futures_util::future::join_all((0..10).map(|_| h.source.get_token(USER)));
        let revoke = async {
            h.addr
                .send(Revoke {
                    open_id: USER.into(),
                })
                .await
                .unwrap()
                .unwrap()
                .expect("there was a grant");
            // The revoke has completed: from here on no token may come back.
            let after = h.source.get_token(USER).await;
            assert!(
                matches!(after, Err(GetTokenError::Revoked)),
                "round {round}: {after:?}"
            );
        };
        let (answers, ()) = futures_util::future::join(lookups, revoke).await;
        for answer in answers {
            // Each racing lookup saw the grant before or after the revoke.
            match answer {
                Ok(token) => assert_eq!(token.token, stored.access_token),
                Err(GetTokenError::Revoked) => {}
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
        assert!(
            matches!(h.source.get_token(USER).await, Err(GetTokenError::Revoked)),
            "round {round}"
        );
        assert_eq!(cached(&h), None, "round {round}");
    }
    assert_eq!(refresh_requests(&h.sandbox), 0);
}

#[actix_rt::test]
async fn a_refresh_rotates_the_cached_token() {
    let h = harness().await;
    let old = h.source.get_token(USER).await.unwrap();
    assert_eq!(old.token, h.first.access_token);
    // Refresh now (as the scheduler would ahead of expiry).
    let new = h
        .source
        .refresh_ahead(USER, Duration::from_secs(24 * 3600), Duration::ZERO)
        .await
        .unwrap();
    assert_ne!(new.token, old.token);
    assert_eq!(refresh_requests(&h.sandbox), 1);
    assert_eq!(
        cached(&h),
        None,
        "the refresh's write dropped the old token"
    );
    for _ in 0..3 {
        assert_eq!(h.source.get_token(USER).await.unwrap().token, new.token);
    }
    assert_eq!(cached(&h).as_deref(), Some(new.token.expose().as_str()));
    assert_eq!(refresh_requests(&h.sandbox), 1);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}

#[actix_rt::test]
async fn a_new_grant_from_a_session_replaces_the_cached_token() {
    let h = harness().await;
    h.source.get_token(USER).await.unwrap();
    let again = code_flow_grant(&h.sandbox, &h.client, USER).await;
    let replaced = h
        .addr
        .send(StoreGrant {
            record: grant_record(APP, USER, &again, Duration::from_secs(7000)),
        })
        .await
        .unwrap()
        .unwrap();
    assert_ne!(replaced.access_token, h.first.access_token);
    assert_eq!(
        h.source.get_token(USER).await.unwrap().token,
        replaced.access_token
    );
}

#[actix_rt::test]
async fn a_status_change_to_needs_reauth_stops_the_cached_token() {
    let h = harness().await;
    h.source.get_token(USER).await.unwrap();
    assert!(cached(&h).is_some());
    h.addr
        .send(MarkStatus {
            open_id: USER.into(),
            expected_version: None,
            status: GrantStatus::NeedsReauth,
            status_code: Some(20064),
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20064) }),
        "{err:?}"
    );
    assert_eq!(cached(&h), None);
}

#[actix_rt::test]
async fn a_grant_revoked_on_the_platform_stops_the_cached_token_after_its_refresh_fails() {
    let h = harness().await;
    h.source.get_token(USER).await.unwrap();
    h.sandbox.revoke_user_grants(USER);
    // The refresh (scheduled ahead of expiry) is refused with 20064: needs_reauth.
    let err = h
        .source
        .refresh_ahead(USER, Duration::from_secs(24 * 3600), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20064) }),
        "{err:?}"
    );
    // The old access token has not expired on our clock, but the grant is dead.
    let err = h.source.get_token(USER).await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20064) }),
        "{err:?}"
    );
    assert_eq!(cached(&h), None);
    assert_eq!(h.sandbox.refresh_token_reuse_violations(), 0);
}
