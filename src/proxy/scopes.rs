//! Authorization of missing scopes on demand: the `ScopeAuthorizer` actor.
//!
//! When a proxied call as a user is answered 99991679 (the user has not granted a scope
//! the API needs; `error.permission_violations[].subject` names them, §6), the answer is
//! passed back unchanged and an authorization starts for exactly the missing scopes plus
//! those the grant already holds (the new grant replaces the old one, so nothing granted
//! is lost). Rules, per user:
//!
//! - calls refused within [`SCOPE_MERGE_WINDOW`] of the first are merged: one session for
//!   the union of their missing scopes, naming every API call that asked;
//! - at most one authorization per [`SCOPE_CARD_INTERVAL`]: a refusal within it of the
//!   last start gets that session's id again and sends no card;
//! - a session already in flight for the user is returned as it is (the router's rule).
//!
//! Every caller gets the session id (for the `X-Lark-Auth-Session` answer header), or
//! `None` when none could be started (per-user limit, store down).
//!
//! Accepts: [`ScopesMissing`]. Sends `StartScopeAuthorization` to the session router and
//! `GetGrant` to the vault.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::session::RouterActor;
use crate::session::router::StartScopeAuthorization;
use crate::vault::TokenVaultActor;
use crate::vault::actor::GetGrant;

/// Refusals of one user's calls within this time of the first are merged into one
/// authorization (300 ms; the first refused call's answer waits this long).
pub const SCOPE_MERGE_WINDOW: Duration = Duration::from_millis(300);

/// At most one missing-scope authorization per user in this time (30 s).
pub const SCOPE_CARD_INTERVAL: Duration = Duration::from_secs(30);

/// Starts missing-scope authorizations (see the module docs).
pub struct ScopeAuthorizer {
    router: Addr<RouterActor>,
    vault: Addr<TokenVaultActor>,
    metrics: Metrics,
    users: HashMap<String, UserScopes>,
}

#[derive(Default)]
struct UserScopes {
    pending: Option<Pending>,
    /// When the last authorization started, and its session id.
    last: Option<(Instant, String)>,
}

#[derive(Default)]
struct Pending {
    scopes: BTreeSet<String>,
    apis: BTreeSet<String>,
    waiters: Vec<oneshot::Sender<Option<String>>>,
}

impl ScopeAuthorizer {
    /// An authorizer starting sessions through `router`, reading granted scopes from
    /// `vault`, counting started authorizations in `metrics`.
    pub fn new(
        router: Addr<RouterActor>,
        vault: Addr<TokenVaultActor>,
        metrics: Metrics,
    ) -> ScopeAuthorizer {
        ScopeAuthorizer {
            router,
            vault,
            metrics,
            users: HashMap::new(),
        }
    }

    /// Starts the merged authorization of `open_id` and answers its waiters.
    fn flush(&mut self, open_id: String, ctx: &mut Context<Self>) {
        let Some(pending) = self.users.get_mut(&open_id).and_then(|u| u.pending.take()) else {
            return;
        };
        let vault = self.vault.clone();
        let router = self.router.clone();
        let id = open_id.clone();
        let start = async move {
            let granted = match vault
                .send(GetGrant {
                    open_id: id.clone(),
                })
                .await
            {
                Ok(Ok(Some(record))) => record.scopes,
                _ => Vec::new(),
            };
            let mut scopes: BTreeSet<String> = granted.into_iter().collect();
            scopes.extend(pending.scopes.iter().cloned());
            let requested_by = pending.apis.iter().cloned().collect::<Vec<_>>().join(", ");
            let started = router
                .send(StartScopeAuthorization {
                    open_id: id,
                    scopes: scopes.into_iter().collect(),
                    requested_by,
                })
                .await;
            (started, pending.waiters)
        };
        ctx.spawn(start.into_actor(self).map(move |(started, waiters), act, _| {
            let session = match started {
                Ok(Ok(view)) => {
                    act.metrics.proxy_scope_authorization();
                    tracing::info!(
                        open_id = %open_id,
                        session_id = %view.session_id,
                        "authorization for missing scopes started"
                    );
                    let user = act.users.entry(open_id).or_default();
                    user.last = Some((Instant::now(), view.session_id.clone()));
                    Some(view.session_id)
                }
                Ok(Err(e)) => {
                    tracing::warn!(open_id = %open_id, error = %e, "no authorization for missing scopes");
                    None
                }
                Err(_) => None,
            };
            for waiter in waiters {
                let _ = waiter.send(session.clone());
            }
            act.users.retain(|_, u| {
                u.pending.is_some()
                    || u.last
                        .as_ref()
                        .is_some_and(|(at, _)| at.elapsed() < SCOPE_CARD_INTERVAL)
            });
        }));
    }
}

impl Actor for ScopeAuthorizer {
    type Context = Context<Self>;
}

/// A call as `open_id` was refused for missing `scopes` (99991679): start (or join) an
/// authorization; the reply is its session id, `None` when none could be started.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Option<String>")]
pub struct ScopesMissing {
    /// The user.
    pub open_id: String,
    /// The scopes the platform named (`permission_violations[].subject`).
    pub scopes: Vec<String>,
    /// The call that asked, e.g. `GET /open-apis/task/v2/tasks` (ids masked).
    pub api: String,
}

impl Handler<ScopesMissing> for ScopeAuthorizer {
    type Result = ResponseFuture<Option<String>>;

    fn handle(&mut self, msg: ScopesMissing, ctx: &mut Context<Self>) -> Self::Result {
        let user = self.users.entry(msg.open_id.clone()).or_default();
        if let Some((at, session)) = &user.last
            && at.elapsed() < SCOPE_CARD_INTERVAL
        {
            let session = session.clone();
            return Box::pin(async move { Some(session) });
        }
        let (tx, rx) = oneshot::channel();
        let first = user.pending.is_none();
        let pending = user.pending.get_or_insert_with(Pending::default);
        pending.scopes.extend(msg.scopes);
        pending.apis.insert(msg.api);
        pending.waiters.push(tx);
        if first {
            let open_id = msg.open_id;
            ctx.run_later(SCOPE_MERGE_WINDOW, move |act, ctx| act.flush(open_id, ctx));
        }
        Box::pin(async move { rx.await.ok().flatten() })
    }
}
