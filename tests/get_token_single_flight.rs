//! `get_token` on the TokenVaultActor over real sled files: single-flight refresh,
//! outcome-unknown handling, crash leftovers, and answers that arrive after the grant was
//! replaced.
//!
//! The refresh endpoint is the only part not real here: [`ScriptedRefresh`] is a test
//! implementation of the `RefreshGrant` seam (the OpenAPI client and the sandbox's token
//! endpoint are built on another branch). Everything stored goes through the real vault on
//! sled in a temporary directory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use lark_auth::secret::Secret;
use lark_auth::store::{SledStore, Store};
use lark_auth::vault::actor::{GetGrant, ListQuarantined, StoreGrant};
use lark_auth::vault::{
    DuePolicy, GetTokenError, GrantRecord, GrantStatus, Keyring, NewTokens, RefreshFailure,
    RefreshGrant, TokenSource, TokenVaultActor, UserIdentity, Vault, VaultKey, unix_now_ms,
};

const APP: &str = "cli_single_flight";
const MARGIN: Duration = Duration::from_secs(300);

/// Test implementation of the `RefreshGrant` seam (only this seam is scripted): records
/// every refresh token it is sent, yields to the other tasks a while (so concurrent
/// callers pile up while the refresh is in flight), runs an optional hook, then answers
/// from its script.
#[derive(Default)]
struct ScriptedRefresh {
    sent: RefCell<Vec<String>>,
    answers: RefCell<VecDeque<Result<NewTokens, RefreshFailure>>>,
    #[allow(clippy::type_complexity)]
    during: RefCell<Option<Box<dyn FnOnce() -> futures_util::future::LocalBoxFuture<'static, ()>>>>,
}

/// The handle the source owns; the test keeps another to inspect and script it.
#[derive(Clone, Default)]
struct Scripted(Rc<ScriptedRefresh>);

impl std::ops::Deref for Scripted {
    type Target = ScriptedRefresh;
    fn deref(&self) -> &ScriptedRefresh {
        &self.0
    }
}

impl RefreshGrant for Scripted {
    async fn refresh(&self, refresh_token: Secret<String>) -> Result<NewTokens, RefreshFailure> {
        self.sent.borrow_mut().push(refresh_token.expose().clone());
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        let hook = self.during.borrow_mut().take();
        if let Some(hook) = hook {
            hook().await;
        }
        self.answers
            .borrow_mut()
            .pop_front()
            .expect("the test scripted no more refresh answers")
    }
}

fn new_tokens(n: u32) -> NewTokens {
    NewTokens {
        access_token: Secret::new(format!("u-new-{n}")),
        access_expires_in: Duration::from_secs(7200),
        refresh_token: Secret::new(format!("ur-new-{n}")),
        refresh_expires_in: Duration::from_secs(7 * 24 * 3600),
        scopes: None,
    }
}

/// A grant whose access token is inside the margin (expires in 60 s).
fn expiring_grant(open_id: &str) -> GrantRecord {
    let now = unix_now_ms();
    GrantRecord {
        app_id: APP.into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            ..Default::default()
        },
        access_token: Secret::new("u-old".into()),
        refresh_token: Secret::new("ur-old".into()),
        access_expires_ms: now + 60_000,
        refresh_expires_ms: now + 6 * 24 * 3600 * 1000,
        scopes: vec!["offline_access".into()],
        consent_ms: now - 1000,
        last_used_ms: now - 1000,
        status: GrantStatus::Active,
        status_code: None,
        refresh_started_ms: None,
        version: 0,
    }
}

fn open_vault(path: &Path, key: &VaultKey) -> Vault {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(path).unwrap());
    Vault::open(
        store,
        APP,
        Keyring::single(1, key.clone()),
        DuePolicy::default(),
    )
    .unwrap()
}

struct Harness {
    _dir: tempfile::TempDir,
    addr: Addr<TokenVaultActor>,
    refresher: Scripted,
    source: TokenSource<Scripted>,
}

async fn harness(grant: GrantRecord) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let vault = open_vault(dir.path(), &VaultKey::generate());
    let addr = TokenVaultActor::start(vault, 2);
    addr.send(StoreGrant { record: grant })
        .await
        .unwrap()
        .unwrap();
    let refresher = Scripted::default();
    let source = TokenSource::new(addr.clone(), refresher.clone(), MARGIN);
    Harness {
        _dir: dir,
        addr,
        refresher,
        source,
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
    let h = harness(expiring_grant("ou_1")).await;
    h.refresher
        .answers
        .borrow_mut()
        .push_back(Ok(new_tokens(1)));

    let calls = (0..50).map(|_| h.source.get_token("ou_1"));
    let results = futures_util::future::join_all(calls).await;

    assert_eq!(
        *h.refresher.sent.borrow(),
        ["ur-old"],
        "exactly one refresh"
    );
    for r in &results {
        let token = r.as_ref().expect("every caller gets the new token");
        assert_eq!(token.token.expose(), "u-new-1");
    }
    let record = stored(&h.addr, "ou_1").await;
    assert_eq!(record.refresh_token.expose(), "ur-new-1");
    assert_eq!(record.status, GrantStatus::Active);
    assert_eq!(record.refresh_started_ms, None);
    assert_eq!(
        record.version, 3,
        "stored, marked before sending, answer stored"
    );
    assert_eq!(h.source.flights_in_progress(), 0);

    // Fresh now: no further refresh.
    let again = h.source.get_token("ou_1").await.unwrap();
    assert_eq!(again.token.expose(), "u-new-1");
    assert_eq!(h.refresher.sent.borrow().len(), 1);
}

#[actix_rt::test]
async fn a_lost_answer_marks_the_grant_uncertain_and_its_token_is_never_resent() {
    let h = harness(expiring_grant("ou_1")).await;
    h.refresher
        .answers
        .borrow_mut()
        .push_back(Err(RefreshFailure::OutcomeUnknown));

    let err = h.source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshOutcomeUnknown),
        "{err:?}"
    );
    let record = stored(&h.addr, "ou_1").await;
    assert_eq!(record.status, GrantStatus::RefreshUncertain);
    assert_eq!(record.refresh_token.expose(), "ur-old");

    // The next use settles it without sending anything (no answer is scripted: a second
    // send would panic the refresher).
    let err = h.source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: None }),
        "{err:?}"
    );
    assert_eq!(*h.refresher.sent.borrow(), ["ur-old"]);
    assert_eq!(
        stored(&h.addr, "ou_1").await.status,
        GrantStatus::NeedsReauth
    );
}

#[actix_rt::test]
async fn a_dead_refresh_token_needs_reauth_and_is_not_retried() {
    let h = harness(expiring_grant("ou_1")).await;
    h.refresher
        .answers
        .borrow_mut()
        .push_back(Err(RefreshFailure::from_error_code(20073)));
    let err = h.source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20073) }),
        "{err:?}"
    );
    let record = stored(&h.addr, "ou_1").await;
    assert_eq!(
        (record.status, record.status_code),
        (GrantStatus::NeedsReauth, Some(20073))
    );
    let err = h.source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::NeedsReauth { code: Some(20073) }),
        "{err:?}"
    );
    assert_eq!(h.refresher.sent.borrow().len(), 1);
}

#[actix_rt::test]
async fn a_retryable_failure_keeps_the_token_and_the_next_call_refreshes() {
    let h = harness(expiring_grant("ou_1")).await;
    h.refresher.answers.borrow_mut().extend([
        Err(RefreshFailure::from_error_code(20050)),
        Ok(new_tokens(2)),
    ]);
    let err = h.source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshFailed { code: Some(20050) }),
        "{err:?}"
    );
    assert_eq!(
        stored(&h.addr, "ou_1").await.status,
        GrantStatus::RefreshFailed
    );
    let token = h.source.get_token("ou_1").await.unwrap();
    assert_eq!(token.token.expose(), "u-new-2");
    assert_eq!(*h.refresher.sent.borrow(), ["ur-old", "ur-old"]);
    assert_eq!(stored(&h.addr, "ou_1").await.status, GrantStatus::Active);
}

/// A crash after the refresh was sent and before its answer was stored leaves the
/// write-ahead marker on disk; after a restart the token is not sent again.
#[actix_rt::test]
async fn a_restart_between_sending_and_storing_cannot_cause_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    {
        let vault = open_vault(dir.path(), &key);
        let mut record = vault.store_grant(expiring_grant("ou_1")).unwrap();
        record.refresh_started_ms = Some(unix_now_ms());
        vault.compare_and_swap(&record, true).unwrap();
        // "Crash": the vault is dropped without the answer being stored.
    }
    let addr = TokenVaultActor::start(open_vault(dir.path(), &key), 1);
    let refresher = Scripted::default();
    let source = TokenSource::new(addr.clone(), refresher.clone(), MARGIN);
    let err = source.get_token("ou_1").await.unwrap_err();
    assert!(
        matches!(err, GetTokenError::RefreshOutcomeUnknown),
        "{err:?}"
    );
    assert!(refresher.sent.borrow().is_empty(), "nothing sent");
    assert_eq!(
        stored(&addr, "ou_1").await.status,
        GrantStatus::RefreshUncertain
    );
    let err = source.get_token("ou_1").await.unwrap_err();
    assert!(matches!(err, GetTokenError::NeedsReauth { .. }), "{err:?}");
    assert!(refresher.sent.borrow().is_empty(), "nothing sent");
}

/// The user authorizes again while a refresh is in flight: the refresh's answer must not
/// overwrite the new grant.
#[actix_rt::test]
async fn an_answer_for_a_replaced_grant_does_not_overwrite_it() {
    let h = harness(expiring_grant("ou_1")).await;
    h.refresher
        .answers
        .borrow_mut()
        .push_back(Ok(new_tokens(3)));
    let addr = h.addr.clone();
    *h.refresher.during.borrow_mut() = Some(Box::new(move || {
        Box::pin(async move {
            let mut fresh = expiring_grant("ou_1");
            fresh.access_token = Secret::new("u-reauthorized".into());
            fresh.refresh_token = Secret::new("ur-reauthorized".into());
            fresh.access_expires_ms = unix_now_ms() + 7_200_000;
            addr.send(StoreGrant { record: fresh })
                .await
                .unwrap()
                .unwrap();
        })
    }));
    let token = h.source.get_token("ou_1").await.unwrap();
    assert_eq!(token.token.expose(), "u-reauthorized");
    let record = stored(&h.addr, "ou_1").await;
    assert_eq!(record.refresh_token.expose(), "ur-reauthorized");
    assert_eq!(h.refresher.sent.borrow().len(), 1);
}

#[actix_rt::test]
async fn missing_and_revoked_grants_are_typed_errors() {
    let h = harness(expiring_grant("ou_1")).await;
    assert!(matches!(
        h.source.get_token("ou_nobody").await,
        Err(GetTokenError::NoGrant)
    ));
    h.addr
        .send(lark_auth::vault::actor::Revoke {
            open_id: "ou_1".into(),
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        h.source.get_token("ou_1").await,
        Err(GetTokenError::Revoked)
    ));
    assert!(h.refresher.sent.borrow().is_empty());
    assert!(
        h.addr
            .send(ListQuarantined)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}
