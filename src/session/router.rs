//! The RouterActor: owns the authorization sessions and consumes the long connection.
//!
//! Accepts: [`StartAuthorization`], [`StartAuthorizationWithLocale`], [`OAuthRedirect`],
//! [`GetSession`], [`Subscribe`], [`StopRouter`], [`CountRunningSessions`],
//! [`GetPruneStats`], [`ForwardForeignClicks`]; from the ConnectionActor [`EventReceived`], [`CardActionReceived`],
//! [`ConnectionStateChanged`] (plug [`RouterActor::outputs`] into it); from sessions
//! [`SessionFinished`].
//! Sends: [`Click`], [`CodeRedirect`], [`GetSessionView`], [`StopSession`] to
//! AuthSessionActors; [`EventReceived`] and [`Subscribe`] to its [`EventDispatcher`];
//! [`ForwardCallback`] to the event gateway for clicks on cards lark-auth did not send.
//!
//! - Keeps `session_id → Addr<AuthSessionActor>` for running sessions. A click or redirect
//!   for a session that is not running reloads it from the store when it is not terminal;
//!   a click on a finished session is answered with a toast, never replayed.
//! - On start, resumes every non-terminal stored session (deadline and poll time kept);
//!   messages wait until that is done.
//! - Deduplicates redeliveries by `event_id` with store marks that survive restarts and
//!   live [`SessionSettings::dedup_ttl`] (≥ 7 h). A click's answer is kept with its mark,
//!   so every redelivered copy gets the first answer again without reaching the session:
//!   from memory (the last 4096 answers), by joining the first while it is being
//!   answered, or from the store (after a restart). The store's upkeep runs on the janitor
//!   (a store thread apart from the one marks and session writes go through), in bounded
//!   rounds: every [`TIDY_PERIOD`] (or [`SessionSettings::prune_period`] when shorter) up
//!   to [`MARKS_PER_TIDY`] expired marks are purged and, over
//!   [`SessionSettings::max_marks`], up to as many of the oldest dropped (whole time
//!   buckets, oldest first: `lark_auth_dedup_marks_evicted_total`); every
//!   [`SessionSettings::prune_period`] up to [`SESSIONS_PER_PRUNE`] terminal sessions
//!   older than [`SessionSettings::terminal_ttl`] are pruned. Each round also reads the
//!   mark count and the store's size on disk into the metrics.
//! - Per user: at most [`SessionSettings::per_user_limit`] new sessions per window
//!   ([`StartError::RateLimited`]); while one is in flight, a new request returns it. On a
//!   shared store both are decided by the store in one atomic step across instances
//!   ([`StartSessionHeld`], [`crate::store::Store::start_session_held`]).
//! - Events other than card callbacks go to the [`EventDispatcher`] the router starts
//!   beside itself (dedup by `event_id`, fan-out to the subscribers of their
//!   `event_type`); [`Subscribe`] is passed on to it.
//! - A click on a card lark-auth did not send (no lark-auth session in `action.value`)
//!   goes to the event gateway once it was given ([`ForwardForeignClicks`]): the answer
//!   of its first target taking `card.action.trigger` is the click's answer (remembered
//!   in memory for the copies, not kept in the store); without it, an empty answer.
//!
//! The bookkeeping (per-user limit, in-flight sessions, click answers, OAuth `state`s) is
//! the pure [`RouterState`]; the time comes from [`RouterParts::clock`].

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::Either;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::AuthFlow;
use crate::connection::{
    CallbackFailed, CardActionReceived, ConnectionOutputs, ConnectionStateChanged, EventReceived,
};
pub use crate::events::Subscribe;
use crate::events::callbacks::ForwardCallback;
use crate::events::{EventDispatcher, event_mark};
use crate::metrics::Metrics;
use crate::openapi::oauth::OFFLINE_ACCESS;
use crate::openapi::{OpenApiClient, PkcePair};
use crate::protocol::event::{CardActionResponse, ToastKind};
use crate::secret::Secret;
use crate::store::Store;
use crate::vault::{Keyring, TokenVaultActor};

use super::SessionSettings;
use super::actor::{
    AuthSessionActor, Click, CodeRedirect, GetSessionView, SessionDeps, SessionFinished,
    SessionView, StopSession,
};
use super::cards::{ACTION_AUTHORIZE, ACTION_DECLINE, CardLocale, VALUE_SESSION_ID};
use super::machine::{Choice, CodeFlowProgress, SessionRecord, SessionState};
use super::router_state::{PerUserLimit, RouterState, StateLookup};
use super::store::{
    ClaimClick, ClickClaim, FindSession, FlushSessions, HeldStart, KeepClickAnswer, ListSessions,
    LoadSession, LoadSessions, PutSession, ReleaseSessions, SessionCodec, SessionStoreActor,
    SessionStoreError, StartSessionHeld, TidyStore, WriteSeq,
};
use crate::store::SessionClaim;

mod sharing;
pub use self::sharing::{AbandonSessions, SessionSharing};
use super::texts::landing;
use super::texts::toast as texts;
use crate::token_endpoint::TokenEndpointPacer;

/// How many click answers are remembered for redeliveries.
const ANSWERS_REMEMBERED: usize = 4096;
/// Most expired marks purged, and most marks dropped for the cap, per upkeep round: above
/// the event rate times [`TIDY_PERIOD`] at 5,000 events/s, so the upkeep keeps up.
pub const MARKS_PER_TIDY: usize = 20_000;
/// Most terminal sessions pruned per round (the rest at the next one).
pub const SESSIONS_PER_PRUNE: usize = 1_000;
/// Longest time between two upkeep rounds of the marks.
pub const TIDY_PERIOD: Duration = Duration::from_secs(1);

// ----- messages ------------------------------------------------------------------------

/// Starts an authorization of `open_id` (control API `POST /v1/authorizations`, CLI,
/// library). Replies once the session is stored, with its view (`created`), or with the
/// session already in flight for that user.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionView, StartError>")]
pub struct StartAuthorization {
    /// The user (`ou_…`).
    pub open_id: String,
    /// Scopes; empty means the configured default. `offline_access` is always added.
    pub scopes: Vec<String>,
}

impl StartAuthorization {
    /// The same request with the language of the user's cards and toasts.
    pub fn with_locale(self, locale: Option<CardLocale>) -> StartAuthorizationWithLocale {
        StartAuthorizationWithLocale {
            open_id: self.open_id,
            scopes: self.scopes,
            locale,
        }
    }
}

/// [`StartAuthorization`] naming the language of the user's cards and toasts. The platform
/// does not tell a user's locale before the user authorized: the card callback
/// (`card.action.trigger`) carries none, and `user_info` needs the user's own token (and
/// has no language field either), so the caller who knows the user's language passes it
/// here; `None` uses [`SessionSettings::locale`]. The locale is stored with the session,
/// so a resumed session keeps it. Same replies and errors as [`StartAuthorization`]; a
/// session already in flight for the user is returned unchanged (its language too).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionView, StartError>")]
pub struct StartAuthorizationWithLocale {
    /// The user (`ou_…`).
    pub open_id: String,
    /// Scopes; empty means the configured default. `offline_access` is always added.
    pub scopes: Vec<String>,
    /// Language of the cards and toasts; `None` for the configured default.
    pub locale: Option<CardLocale>,
}

/// Why [`StartAuthorization`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The user reached the per-user limit of new authorizations (`429`): retry after
    /// `retry_after`.
    #[error("too many authorizations for this user; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// When the oldest counted request leaves the window.
        retry_after: Duration,
    },
    /// `open_id` is not shaped like the platform's (`ou_` and letters, digits or `_`, at
    /// most 64 bytes; [`crate::openapi::check_open_id`]) (`400`). Nothing was stored or
    /// sent.
    #[error("invalid open_id")]
    InvalidOpenId,
    /// The session could not be stored (`503`); nothing was sent to the user.
    #[error("cannot store the session: {0}")]
    Store(#[from] SessionStoreError),
    /// The router or its store is gone (service stopping).
    #[error("the session router is stopping")]
    Stopping,
}

/// The authorization-code redirect (`GET /oauth/callback?code&state` or
/// `?error=access_denied&state`). Replies the session's view after the code was handed
/// to it (the exchange continues in the background).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionView, RedirectError>")]
pub struct OAuthRedirect {
    /// `state` as received.
    pub state: String,
    /// `code`, when the user consented.
    pub code: Option<Secret<String>>,
    /// `error`, e.g. `access_denied`, when the user refused.
    pub error: Option<String>,
}

/// Why a redirect was not accepted. The landing page shows the message; no exchange was
/// made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// No session issued this `state` (forged, or the session was pruned).
    #[error("{}", landing::UNKNOWN_STATE)]
    UnknownState,
    /// This `state` was already used: a redirect is accepted once.
    #[error("{}", landing::STATE_ALREADY_USED)]
    StateAlreadyUsed,
    /// The session has ended (expired, declined, failed, authorized).
    #[error("{text} ({0})", text = landing::SESSION_ENDED)]
    SessionEnded(&'static str),
    /// Neither `code` nor `error` was given.
    #[error("{}", landing::MISSING_CODE)]
    MissingCode,
    /// The router or the session is stopping.
    #[error("{}", landing::STOPPING)]
    Stopping,
}

/// Reads a session's view: the running session's last stored state, or the stored
/// record. `Ok(None)`: no such session (never existed or pruned).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<SessionView>, SessionStoreError>")]
pub struct GetSession {
    /// The session.
    pub session_id: String,
}

/// Stops every session actor (their records stay, so they resume on the next start),
/// flushes the store and stops the router. Replies when flushed.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopRouter;

/// How many sessions are running.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct CountRunningSessions;

/// Asks what the periodic pruning removed since the router started.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "PruneStats")]
pub struct GetPruneStats;

/// Totals of the upkeep rounds (every [`TIDY_PERIOD`], or [`SessionSettings::prune_period`]
/// when shorter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct PruneStats {
    /// Rounds completed.
    pub rounds: u64,
    /// Terminal sessions deleted after [`SessionSettings::terminal_ttl`].
    pub sessions: u64,
    /// Event-id dedup marks deleted after [`SessionSettings::dedup_ttl`].
    pub marks: u64,
}

// ----- the actor -----------------------------------------------------------------------

/// Where a session was found.
enum Found {
    Running(Addr<AuthSessionActor>),
    Finished(SessionState, Option<CardLocale>),
    Unknown,
    /// Not terminal, and held by another live instance (shared store): its record as
    /// stored.
    Remote(Box<SessionRecord>),
}

/// What the router is built from.
pub struct RouterParts {
    /// The OpenAPI client (built on this System's thread).
    pub client: OpenApiClient,
    /// The store holding sessions and dedup marks (the vault's store).
    pub store: Arc<dyn Store>,
    /// The vault keyring: session secrets are sealed with its current key.
    pub keyring: Keyring,
    /// Where grants go.
    pub vault: Addr<TokenVaultActor>,
    /// Settings.
    pub settings: SessionSettings,
    /// Where the session gauges and counters go (`lark_auth_sessions`,
    /// `lark_auth_sessions_finished_total`).
    pub metrics: Metrics,
    /// The time for the router, its sessions and the event dispatcher (unix ms):
    /// [`Clock::system`] in the service, a [`crate::clock::FakeClock`] in tests. Timers
    /// still run on real time.
    pub clock: Clock,
}

/// The router; see the module docs.
pub struct RouterActor {
    deps: Rc<SessionDeps>,
    /// Running sessions by id.
    sessions: HashMap<Rc<str>, Addr<AuthSessionActor>>,
    /// Per-user limit, sessions in flight, click answers, OAuth `state`s.
    state: RouterState,
    /// Dedup and fan-out of the other events.
    events: Addr<EventDispatcher>,
    /// Clicks being answered, by `event_id`, with the copies waiting for that answer.
    clicks_in_flight: HashMap<String, Vec<tokio::sync::oneshot::Sender<ClickReply>>>,
    /// Where clicks on cards lark-auth did not send go (the event gateway), if anywhere.
    foreign_clicks: Option<Recipient<ForwardCallback>>,
    pruned: PruneStats,
    /// The store thread for upkeep rounds ([`TidyStore`]).
    janitor: Addr<SessionStoreActor>,
    /// An upkeep round is running (the next tick skips).
    tidying: bool,
    /// When terminal sessions were last pruned (monotonic).
    last_session_prune: Option<std::time::Instant>,
    /// The configured default scopes with `offline_access`, shared by the sessions.
    default_scopes: Arc<[String]>,
    /// Sessions shared with the other instances on the store (PostgreSQL), if so.
    sharing: Option<sharing::Shared>,
}

/// `scopes` with `offline_access` added when missing.
fn with_offline_access(mut scopes: Vec<String>) -> Vec<String> {
    if !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
        scopes.push(OFFLINE_ACCESS.to_string());
    }
    scopes
}

impl RouterActor {
    /// Starts the router (with its session store thread and the poll pacer) on the
    /// current System; it first resumes the stored non-terminal sessions.
    ///
    /// # Errors
    /// [`SessionStoreError::BadKeyring`] when the keyring lists a key id twice.
    pub fn start(parts: RouterParts) -> Result<Addr<RouterActor>, SessionStoreError> {
        let pacer = TokenEndpointPacer::new(parts.settings.poll_budget_per_sec).start();
        RouterActor::start_with_pacer(parts, pacer)
    }

    /// As [`RouterActor::start`], with the token-endpoint `pacer` shared with others (the
    /// refresh scheduler), so polls, exchanges and refreshes draw from one budget.
    ///
    /// # Errors
    /// [`SessionStoreError::BadKeyring`] when the keyring lists a key id twice.
    pub fn start_with_pacer(
        parts: RouterParts,
        pacer: Addr<TokenEndpointPacer>,
    ) -> Result<Addr<RouterActor>, SessionStoreError> {
        RouterActor::start_inner(parts, pacer, None)
    }

    /// As [`RouterActor::start_with_pacer`] on a store shared by several instances
    /// (PostgreSQL): sessions are held under leases (`sharing`), inputs for a session
    /// another instance holds are handed to it, and sessions whose holder died are taken
    /// over (see the `sharing` module).
    ///
    /// # Errors
    /// [`SessionStoreError::BadKeyring`] when the keyring lists a key id twice.
    pub fn start_shared(
        parts: RouterParts,
        pacer: Addr<TokenEndpointPacer>,
        sharing: SessionSharing,
    ) -> Result<Addr<RouterActor>, SessionStoreError> {
        RouterActor::start_inner(parts, pacer, Some(sharing))
    }

    fn start_inner(
        parts: RouterParts,
        pacer: Addr<TokenEndpointPacer>,
        sharing: Option<SessionSharing>,
    ) -> Result<Addr<RouterActor>, SessionStoreError> {
        let raw_store = parts.store.clone();
        let codec = SessionCodec::new(&parts.keyring)?;
        let janitor = SessionStoreActor::start_janitor(parts.store.clone(), codec.clone());
        let (store, flusher) = SessionStoreActor::start_with_flusher(parts.store, codec);
        let default_scopes: Arc<[String]> =
            with_offline_access(parts.settings.default_scopes.clone()).into();
        let events = EventDispatcher::new(
            store.clone().recipient(),
            parts.settings.dedup_ttl,
            parts.clock.clone(),
        )
        .start();
        let state = RouterState::new(
            PerUserLimit {
                limit: parts.settings.per_user_limit,
                window: parts.settings.per_user_window,
            },
            ANSWERS_REMEMBERED,
        );
        let settings = Rc::new(parts.settings);
        Ok(RouterActor::create(move |ctx| {
            let sharing = sharing.map(|s| sharing::Shared::watch(s, &*raw_store, ctx.address()));
            RouterActor {
                deps: Rc::new(SessionDeps {
                    client: parts.client,
                    store,
                    flusher,
                    metrics: parts.metrics,
                    vault: parts.vault,
                    pacer,
                    finished: ctx.address().recipient(),
                    settings,
                    clock: parts.clock,
                    holder: sharing.as_ref().map(|s| Rc::from(s.instance())),
                }),
                sessions: HashMap::new(),
                state,
                events,
                clicks_in_flight: HashMap::new(),
                foreign_clicks: None,
                pruned: PruneStats::default(),
                janitor,
                tidying: false,
                last_session_prune: None,
                default_scopes,
                sharing,
            }
        }))
    }

    /// The recipients bundle to give the ConnectionActor.
    pub fn outputs(addr: &Addr<RouterActor>) -> ConnectionOutputs {
        ConnectionOutputs {
            events: addr.clone().recipient(),
            card_actions: addr.clone().recipient(),
            states: addr.clone().recipient(),
        }
    }

    /// Starts a session actor; `flush_first`: a store write it must see durable before it
    /// acts.
    fn spawn_session(
        &mut self,
        record: SessionRecord,
        resumed: bool,
        flush_first: Option<WriteSeq>,
    ) -> Addr<AuthSessionActor> {
        let id: Rc<str> = Rc::from(record.session_id.as_str());
        self.state.session_running(
            &record.open_id,
            id.clone(),
            record.code_flow.as_ref().map(|f| f.oauth_state.as_str()),
        );
        let mut actor = AuthSessionActor::new(record, resumed, self.deps.clone());
        if let Some(seq) = flush_first {
            actor = actor.after_flush(seq);
        }
        let addr = actor.start();
        self.sessions.insert(id, addr.clone());
        addr
    }

    /// The running actor of `session_id`, reloading it from the store when it is not
    /// terminal.
    fn find_session(
        &mut self,
        session_id: String,
    ) -> ResponseActFuture<Self, Result<Found, SessionStoreError>> {
        if let Some(addr) = self.sessions.get(session_id.as_str()) {
            return Box::pin(fut::ready(Ok(Found::Running(addr.clone()))));
        }
        let load = self.deps.store.send(FindSession {
            session_id,
            claim: self.lease_claim(),
            oauth_state: None,
        });
        Box::pin(load.into_actor(self).map(|res, act, _| {
            let Ok(found) = res else {
                return Ok(Found::Unknown);
            };
            let Some((record, claim)) = found? else {
                return Ok(Found::Unknown);
            };
            Ok(act.found(record, claim))
        }))
    }

    /// Where a session read from the store (and, on a shared store, claimed) is.
    fn found(&mut self, record: SessionRecord, claim: SessionClaim) -> Found {
        if let Some(addr) = self.sessions.get(record.session_id.as_str()) {
            return Found::Running(addr.clone());
        }
        if record.state.is_terminal() {
            return Found::Finished(record.state, record.locale);
        }
        match claim {
            SessionClaim::Claimed => {
                if self.sharing.is_some() {
                    info!(session_id = %record.session_id, "session taken over (its holder's lease had lapsed)");
                    self.deps.metrics.session_lease_takeovers(1);
                } else {
                    info!(session_id = %record.session_id, "session reloaded from the store");
                }
                Found::Running(self.spawn_session(record, true, None))
            }
            SessionClaim::Held { .. } => Found::Remote(Box::new(record)),
            SessionClaim::Missing => Found::Unknown,
        }
    }

    /// One upkeep round on the janitor (see the module docs); skipped while the previous
    /// one runs.
    fn prune(&mut self, ctx: &mut Context<Self>) {
        if self.tidying {
            return;
        }
        let now = self.deps.clock.now_ms();
        let settings = &self.deps.settings;
        let sessions_due = self
            .last_session_prune
            .is_none_or(|at| at.elapsed() >= settings.prune_period);
        let terminal_before_ms =
            sessions_due.then(|| now.saturating_sub(settings.terminal_ttl.as_millis() as u64));
        if sessions_due {
            self.last_session_prune = Some(std::time::Instant::now());
            let sessions = &self.sessions;
            self.state.prune(now, |id| sessions.contains_key(id));
        }
        self.tidying = true;
        let round = self.janitor.send(TidyStore {
            now_ms: now,
            max_marks: settings.max_marks,
            mark_batch: MARKS_PER_TIDY,
            terminal_before_ms,
            session_batch: SESSIONS_PER_PRUNE,
        });
        ctx.spawn(round.into_actor(self).map(|res, act, _| {
            act.tidying = false;
            let report = match res {
                Ok(Ok(report)) => report,
                Ok(Err(e)) => {
                    warn!(error = %e, "store upkeep round failed");
                    return;
                }
                Err(_) => return,
            };
            if report.sessions > 0 {
                info!(pruned = report.sessions, "terminal sessions pruned");
            }
            if report.expired > 0 {
                debug!(purged = report.expired, "expired dedup marks purged");
            }
            if report.evicted > 0 {
                debug!(
                    evicted = report.evicted,
                    cap = act.deps.settings.max_marks,
                    "dedup marks dropped before their expiry (over sessions.dedup_max_marks)"
                );
            }
            act.pruned.rounds += 1;
            act.pruned.sessions += report.sessions as u64;
            act.pruned.marks += report.expired as u64;
            act.deps
                .metrics
                .store_upkeep(report.marks, report.evicted as u64, report.disk_bytes);
        }));
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let period = self.deps.settings.prune_period.min(TIDY_PERIOD);
        ctx.run_interval(period, |act, ctx| act.prune(ctx));
        if self.sharing.is_some() {
            // Only the sessions nobody holds any more are carried on (lease rounds).
            self.start_sharing(ctx);
            return;
        }
        let load = self.deps.store.send(LoadSessions);
        ctx.wait(load.into_actor(self).map(|res, act, _| {
            let records = match res {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    warn!(error = %e, "stored sessions could not be listed; none resumed");
                    return;
                }
                Err(_) => return,
            };
            let mut resumed = 0;
            for record in records {
                if !record.state.is_terminal() {
                    act.spawn_session(record, true, None);
                    resumed += 1;
                }
            }
            if resumed > 0 {
                info!(resumed, "authorization sessions resumed");
            }
        }));
    }
}

impl Handler<StartAuthorization> for RouterActor {
    type Result = AtomicResponse<Self, Result<SessionView, StartError>>;

    fn handle(&mut self, msg: StartAuthorization, ctx: &mut Context<Self>) -> Self::Result {
        self.handle(msg.with_locale(None), ctx)
    }
}

/// [`StartAuthorization`] made by the OpenAPI proxy after a call was refused for a
/// missing user scope (99991679): the card also names the API call(s) that asked
/// (`requested_by`). Same replies and errors; a session already in flight for the user is
/// returned unchanged.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionView, StartError>")]
pub struct StartScopeAuthorization {
    /// The user (`ou_…`).
    pub open_id: String,
    /// The scopes: the missing ones plus those already granted.
    pub scopes: Vec<String>,
    /// The API call(s) that asked, e.g. `GET /open-apis/task/v2/tasks` (ids masked).
    pub requested_by: String,
}

impl Handler<StartScopeAuthorization> for RouterActor {
    type Result = AtomicResponse<Self, Result<SessionView, StartError>>;

    fn handle(&mut self, msg: StartScopeAuthorization, ctx: &mut Context<Self>) -> Self::Result {
        self.start_session(
            StartAuthorizationWithLocale {
                open_id: msg.open_id,
                scopes: msg.scopes,
                locale: None,
            },
            Some(msg.requested_by),
            ctx,
        )
    }
}

impl Handler<StartAuthorizationWithLocale> for RouterActor {
    type Result = AtomicResponse<Self, Result<SessionView, StartError>>;

    fn handle(
        &mut self,
        msg: StartAuthorizationWithLocale,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.start_session(msg, None, ctx)
    }
}

impl RouterActor {
    /// Starts a session (or returns the one in flight for the user).
    fn start_session(
        &mut self,
        msg: StartAuthorizationWithLocale,
        requested_by: Option<String>,
        _: &mut Context<Self>,
    ) -> AtomicResponse<Self, Result<SessionView, StartError>> {
        if crate::openapi::check_open_id(&msg.open_id).is_err() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(StartError::InvalidOpenId))));
        }
        if let Some(addr) = self
            .state
            .in_flight(&msg.open_id)
            .and_then(|id| self.sessions.get(id))
        {
            let view = addr.send(GetSessionView);
            return AtomicResponse::new(Box::pin(
                view.into_actor(self)
                    .map(|res, _, _| res.map_err(|_| StartError::Stopping)),
            ));
        }
        AtomicResponse::new(self.create_session(msg, requested_by))
    }

    /// Creates, stores and starts a new session (the per-user limit permitting).
    fn create_session(
        &mut self,
        msg: StartAuthorizationWithLocale,
        requested_by: Option<String>,
    ) -> ResponseActFuture<Self, Result<SessionView, StartError>> {
        let now = self.deps.clock.now_ms();
        let settings = self.deps.settings.clone();
        // Shared store: the store counts the user's starts of every instance, in the same
        // atomic step that finds the user's session in flight (`StartSessionHeld`).
        if self.sharing.is_none()
            && let Err(retry_after) = self.state.admit(&msg.open_id, now)
        {
            return Box::pin(fut::ready(Err(StartError::RateLimited { retry_after })));
        }

        let scopes = if msg.scopes.is_empty() {
            self.default_scopes.clone()
        } else {
            with_offline_access(msg.scopes).into()
        };
        let session_uuid = uuid::Uuid::new_v4().simple().to_string();
        let shared = self.sharing.is_some();
        let code_flow = (settings.flow == AuthFlow::AuthorizationCode).then(|| CodeFlowProgress {
            // Shared store: the state names its session, so any instance finds it.
            oauth_state: if shared {
                sharing::state_for(&session_uuid)
            } else {
                uuid::Uuid::new_v4().simple().to_string()
            },
            code_verifier: PkcePair::generate().verifier,
        });
        let session_id = format!("as_{session_uuid}");
        let mut record = SessionRecord::new(
            session_id,
            msg.open_id,
            scopes,
            code_flow,
            now,
            settings.session_timeout.as_millis() as u64,
        );
        record.locale = msg.locale;
        record.requested_by = requested_by;
        // A code-flow record carries the PKCE verifier the card's challenge is made from:
        // the session flushes this write before it sends that card (see the actor's module
        // docs), outside this atomic reply, so the router never waits for an fsync.
        let durable = record.code_flow.is_some();
        if let Some(shared) = &self.sharing {
            let start = self.deps.store.send(StartSessionHeld {
                record: record.clone(),
                holder: shared.instance().to_string(),
                lease_until_ms: shared.lease_until(now),
                now_ms: now,
                limit: settings.per_user_limit,
                window: settings.per_user_window,
            });
            return Box::pin(start.into_actor(self).then(move |res, act, _| {
                let started = match res.map_err(|_| StartError::Stopping) {
                    Ok(Ok(started)) => started,
                    Ok(Err(e)) => return Either::Left(fut::ready(Err(StartError::Store(e)))),
                    Err(e) => return Either::Left(fut::ready(Err(e))),
                };
                Either::Right(match started {
                    HeldStart::Started(seq) => {
                        let view = SessionView::of(&record);
                        info!(session_id = %record.session_id, open_id = %record.open_id, "authorization session started");
                        act.spawn_session(record, false, durable.then_some(seq));
                        Either::Left(fut::ready(Ok(view)))
                    }
                    HeldStart::Limited(retry_after) => {
                        Either::Left(fut::ready(Err(StartError::RateLimited { retry_after })))
                    }
                    HeldStart::InFlight(found) => {
                        debug!(session_id = %found.session_id, "the user's session in flight returned");
                        match act.sessions.get(found.session_id.as_str()) {
                            Some(addr) => Either::Right(
                                addr.send(GetSessionView)
                                    .into_actor(act)
                                    .map(|res, _, _| res.map_err(|_| StartError::Stopping)),
                            ),
                            None => Either::Left(fut::ready(Ok(SessionView::of(&found)))),
                        }
                    }
                })
            }));
        }
        let write = self.deps.store.send(PutSession {
            record: record.clone(),
        });
        Box::pin(write.into_actor(self).map(move |res, act, _| {
            let seq = res.map_err(|_| StartError::Stopping)??;
            let view = SessionView::of(&record);
            info!(session_id = %record.session_id, open_id = %record.open_id, "authorization session started");
            act.spawn_session(record, false, durable.then_some(seq));
            Ok(view)
        }))
    }
}

impl Handler<OAuthRedirect> for RouterActor {
    type Result = ResponseActFuture<Self, Result<SessionView, RedirectError>>;

    fn handle(&mut self, msg: OAuthRedirect, _: &mut Context<Self>) -> Self::Result {
        if self.sharing.is_some() {
            return self.redirect_shared(msg);
        }
        let session_id = match self.state.lookup_state(&msg.state) {
            StateLookup::Pending(id) => id.to_string(),
            StateLookup::Used => return Box::pin(fut::ready(Err(RedirectError::StateAlreadyUsed))),
            StateLookup::Unknown => return Box::pin(fut::ready(Err(RedirectError::UnknownState))),
        };
        let code = match (msg.code, msg.error.as_deref()) {
            (Some(code), _) => Some(code),
            (None, Some(error)) => {
                info!(session_id, error, "authorization refused on the page");
                None
            }
            (None, None) => return Box::pin(fut::ready(Err(RedirectError::MissingCode))),
        };
        // One use per state: the next redirect with it is refused.
        self.state.use_state(&msg.state);
        Box::pin(
            self.find_session(session_id)
                .then(move |found, act, _| {
                    let addr = match found {
                        Ok(Found::Running(addr)) => addr,
                        Ok(Found::Finished(state, _)) => {
                            return Either::Left(fut::ready(Err(RedirectError::SessionEnded(
                                state.as_str(),
                            ))));
                        }
                        Ok(Found::Unknown | Found::Remote(_)) => {
                            return Either::Left(fut::ready(Err(RedirectError::UnknownState)));
                        }
                        Err(_) => return Either::Left(fut::ready(Err(RedirectError::Stopping))),
                    };
                    Either::Right(
                        addr.send(CodeRedirect { code })
                            .into_actor(act)
                            .map(|res, _, _| res.map_err(|_| RedirectError::Stopping)),
                    )
                })
                .map(|res, _, _| {
                    let view = res?;
                    if view.state.is_terminal() && view.state != SessionState::Denied {
                        return Err(RedirectError::SessionEnded(view.state.as_str()));
                    }
                    Ok(view)
                }),
        )
    }
}

impl Handler<GetSession> for RouterActor {
    type Result = ResponseFuture<Result<Option<SessionView>, SessionStoreError>>;

    fn handle(&mut self, msg: GetSession, _: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.sessions.get(msg.session_id.as_str()) {
            let addr = addr.clone();
            let store = self.deps.store.clone();
            return Box::pin(async move {
                match addr.send(GetSessionView).await {
                    Ok(view) => Ok(Some(view)),
                    // Stopped in between: read what it stored.
                    Err(_) => Ok(store
                        .send(LoadSession {
                            session_id: msg.session_id,
                        })
                        .await
                        .map_err(|_| SessionStoreError::Stopped)??
                        .map(|r| SessionView::of(&r))),
                }
            });
        }
        let store = self.deps.store.clone();
        Box::pin(async move {
            match store
                .send(LoadSession {
                    session_id: msg.session_id,
                })
                .await
            {
                Ok(res) => Ok(res?.map(|r| SessionView::of(&r))),
                Err(_) => Ok(None),
            }
        })
    }
}

/// Lists sessions (running and terminal until pruned), most recently changed first, as
/// `GET /v1/authorizations` and `lark-auth sessions` show them. Reads the store, where
/// every transition is written before it becomes visible.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<SessionView>, SessionStoreError>")]
pub struct ListSessionViews {
    /// Only sessions in this state; `None`: all.
    pub state: Option<SessionState>,
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListSessionViews> for RouterActor {
    type Result = ResponseFuture<Result<Vec<SessionView>, SessionStoreError>>;

    fn handle(&mut self, msg: ListSessionViews, _: &mut Context<Self>) -> Self::Result {
        let store = self.deps.store.clone();
        Box::pin(async move {
            let records = store
                .send(ListSessions {
                    state: msg.state,
                    limit: msg.limit,
                })
                .await
                .map_err(|_| SessionStoreError::Stopped)??;
            Ok(records.iter().map(SessionView::of).collect())
        })
    }
}

impl Handler<Subscribe> for RouterActor {
    type Result = ResponseFuture<()>;

    /// Passed on to the [`EventDispatcher`]; replies once it registered the recipient.
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        // Queued now, so events the router forwards after this reach the recipient.
        let registered = self.events.send(msg);
        Box::pin(async move {
            let _ = registered.await;
        })
    }
}

impl Handler<StopRouter> for RouterActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopRouter, _: &mut Context<Self>) -> Self::Result {
        for (_, addr) in self.sessions.drain() {
            addr.do_send(StopSession);
        }
        self.state.all_stopped();
        let flush = self.deps.store.send(FlushSessions);
        // Shared store: the sessions are handed back, so another instance carries them on
        // at once instead of after the lease.
        let release = self.sharing.as_ref().map(|shared| {
            self.deps.store.send(ReleaseSessions {
                holder: shared.instance().to_string(),
                session_id: None,
                finished: false,
            })
        });
        Box::pin(
            async move {
                let flushed = flush.await;
                if let Some(release) = release {
                    match release.await {
                        Ok(Ok(n)) if n > 0 => info!(sessions = n, "session leases handed back"),
                        Ok(Err(e)) => {
                            warn!(error = %e, "session leases not handed back; other instances take the sessions over once the leases lapse")
                        }
                        _ => {}
                    }
                }
                flushed
            }
            .into_actor(self)
            .map(|res, _, ctx| {
                if let Ok(Err(e)) = res {
                    warn!(error = %e, "session store flush failed on stop");
                }
                ctx.stop();
            }),
        )
    }
}

impl Handler<CountRunningSessions> for RouterActor {
    type Result = usize;

    fn handle(&mut self, _: CountRunningSessions, _: &mut Context<Self>) -> usize {
        self.sessions.len()
    }
}

impl Handler<GetPruneStats> for RouterActor {
    type Result = PruneStats;

    fn handle(&mut self, _: GetPruneStats, _: &mut Context<Self>) -> PruneStats {
        self.pruned
    }
}

impl Handler<SessionFinished> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: SessionFinished, _: &mut Context<Self>) {
        self.sessions.remove(msg.session_id.as_str());
        self.state.session_finished(&msg.open_id, &msg.session_id);
        if let Some(shared) = &self.sharing
            && msg.state.is_terminal()
        {
            self.janitor.do_send(ReleaseSessions {
                holder: shared.instance().to_string(),
                session_id: Some(msg.session_id.clone()),
                finished: true,
            });
        }
        debug!(session_id = %msg.session_id, state = msg.state.as_str(), "session actor finished");
    }
}

impl Handler<EventReceived> for RouterActor {
    type Result = ();

    /// Passed on to the [`EventDispatcher`] (dedup, subscribers).
    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        self.events.do_send(msg);
    }
}

/// The reply a copy of a click waits for while the first is being answered.
type ClickReply = Result<CardActionResponse, CallbackFailed>;

impl Handler<CardActionReceived> for RouterActor {
    type Result = ResponseActFuture<Self, ClickReply>;

    /// Answers a click once and every copy of it (same `event_id`: the platform redelivers
    /// a click whose ack it did not get in time) with the same answer: from memory, by
    /// joining the first while it is being answered, or from the answer kept with the
    /// click's dedup mark (after a restart). A copy never reaches the session.
    fn handle(&mut self, msg: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        if let Some(answer) = self.state.answer(&msg.event_id) {
            debug!(event_id = %msg.event_id, "redelivered click answered again");
            return Box::pin(fut::ready(Ok(answer.clone())));
        }
        if let Some(waiting) = self.clicks_in_flight.get_mut(&msg.event_id) {
            debug!(event_id = %msg.event_id, "redelivered click joins the first's answer");
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiting.push(tx);
            return Box::pin(
                async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(CallbackFailed("the first delivery was not answered".into()))
                    })
                }
                .into_actor(self),
            );
        }
        let value = &msg.trigger.action.value;
        let session_id = value.get_str(VALUE_SESSION_ID).map(str::to_string);
        let choice = match value.get_str("action") {
            Some(ACTION_AUTHORIZE) => Some(Choice::Authorize),
            Some(ACTION_DECLINE) => Some(Choice::Decline),
            _ => None,
        };
        let (Some(session_id), Some(choice)) = (session_id, choice) else {
            return self.foreign_click(msg);
        };
        self.clicks_in_flight
            .insert(msg.event_id.clone(), Vec::new());
        let now = self.deps.clock.now_ms();
        let mark = event_mark(&msg.event_id);
        let claim = self.deps.store.send(ClaimClick {
            mark: mark.clone(),
            expires_at_ms: now + self.deps.settings.dedup_ttl.as_millis() as u64,
            now_ms: now,
        });
        let event_id = msg.event_id.clone();
        let locale = self.deps.settings.locale;
        let click = Click {
            operator_open_id: msg.trigger.operator.open_id.clone(),
            choice,
            card_token: msg.trigger.token.clone(),
        };
        Box::pin(
            claim
                .into_actor(self)
                .then(move |res, act, _| {
                    let claim = match res {
                        Ok(Ok(claim)) => claim,
                        // A failing store must not lose the click: handle it (maybe twice).
                        Ok(Err(e)) => {
                            warn!(event_id = %event_id, error = %e, "click dedup mark not set");
                            ClickClaim::First
                        }
                        Err(_) => ClickClaim::First,
                    };
                    match claim {
                        ClickClaim::First => {
                            Either::Right(act.find_session(session_id).map(|found, _, _| Ok(found)))
                        }
                        ClickClaim::Answered(answer) => {
                            debug!(event_id = %event_id, "redelivered click answered with the kept answer");
                            Either::Left(fut::ready(Err(Ok(answer))))
                        }
                        ClickClaim::Unanswered => {
                            debug!(event_id = %event_id, "redelivered click without a kept answer: not replayed");
                            Either::Left(fut::ready(Err(Ok(CardActionResponse::default()))))
                        }
                    }
                })
                .then(
                    move |found: Result<Result<Found, SessionStoreError>, ClickReply>, act, _| {
                        let unknown = || CardActionResponse {
                            toast: Some(texts::fixed(
                                ToastKind::Warning,
                                texts::REQUEST_NO_LONGER_VALID,
                                locale,
                            )),
                            card: None,
                        };
                        // (answer, whether it is new and must be kept with the mark)
                        let answer = match found {
                            Err(replayed) => (replayed, false),
                            Ok(Ok(Found::Running(addr))) => {
                                let asked: ResponseActFuture<Self, (ClickReply, bool)> =
                                    Box::pin(addr.send(click).into_actor(act).map(
                                        |res, _, _| {
                                            (res.map_err(|e| CallbackFailed(e.to_string())), true)
                                        },
                                    ));
                                return Either::Right(asked);
                            }
                            Ok(Ok(Found::Unknown)) => (Ok(unknown()), true),
                            Ok(Ok(Found::Remote(record))) => {
                                // Held by another live instance: handed to it.
                                let relayed: ResponseActFuture<Self, (ClickReply, bool)> =
                                    Box::pin(
                                        act.relay_click(*record, click)
                                            .map(|answer, _, _| (Ok(answer), true)),
                                    );
                                return Either::Right(relayed);
                            }
                            Ok(Ok(Found::Finished(state, own))) => (
                                Ok(CardActionResponse {
                                    toast: Some(texts::already_finished(
                                        state.as_str(),
                                        own.unwrap_or(locale),
                                    )),
                                    card: None,
                                }),
                                true,
                            ),
                            Ok(Err(e)) => (Err(CallbackFailed(e.to_string())), false),
                        };
                        Either::Left(fut::ready(answer))
                    },
                )
                .map(move |(answer, new), act, _| {
                    if let (Ok(a), true) = (&answer, new) {
                        // Queued on the store's one thread before the reply leaves, so
                        // any later claim of this mark reads it; not awaited, so the
                        // ack does not wait for the write.
                        act.deps.store.do_send(KeepClickAnswer {
                            mark,
                            answer: a.clone(),
                            now_ms: act.deps.clock.now_ms(),
                        });
                    }
                    act.settle_click(msg.event_id, &answer);
                    answer
                }),
        )
    }
}

impl RouterActor {
    /// A click on a card of another feature: handed to the event gateway when it takes
    /// callbacks (its first target's answer is the answer), else answered empty. Copies
    /// arriving meanwhile join it; later copies get the remembered answer.
    fn foreign_click(&mut self, msg: CardActionReceived) -> ResponseActFuture<Self, ClickReply> {
        let Some(forwarder) = &self.foreign_clicks else {
            debug!(event_id = %msg.event_id, "card callback of another feature");
            return Box::pin(fut::ready(Ok(CardActionResponse::default())));
        };
        let request = forwarder.send(ForwardCallback {
            event_id: msg.event_id.clone(),
            payload: msg.payload,
        });
        self.clicks_in_flight
            .insert(msg.event_id.clone(), Vec::new());
        let event_id = msg.event_id;
        Box::pin(request.into_actor(self).map(move |res, act, _| {
            let answer = match res {
                Ok(Some(answer)) => answer,
                Ok(None) => {
                    debug!(event_id = %event_id, "card callback of another feature; no target takes callbacks");
                    CardActionResponse::default()
                }
                Err(e) => {
                    warn!(event_id = %event_id, error = %e, "event gateway unreachable; card callback answered empty");
                    CardActionResponse::default()
                }
            };
            let answer = Ok(answer);
            act.settle_click(event_id, &answer);
            answer
        }))
    }

    /// Remembers a click's answer and hands it to the copies that waited for it.
    fn settle_click(&mut self, event_id: String, answer: &ClickReply) {
        for waiting in self.clicks_in_flight.remove(&event_id).unwrap_or_default() {
            let _ = waiting.send(answer.clone());
        }
        if let Ok(a) = answer {
            self.state.remember_answer(event_id, a.clone());
        }
    }
}

/// Sends the clicks on cards lark-auth did not send (no lark-auth session in
/// `action.value`) to `0` (the event gateway) instead of answering them empty.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForwardForeignClicks(pub Recipient<ForwardCallback>);

impl Handler<ForwardForeignClicks> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: ForwardForeignClicks, _: &mut Context<Self>) {
        self.foreign_clicks = Some(msg.0);
    }
}

impl Handler<ConnectionStateChanged> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionStateChanged, _: &mut Context<Self>) {
        debug!(state = msg.state.as_str(), "long connection state");
    }
}
