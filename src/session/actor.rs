//! The AuthSessionActor: a thin shell around [`machine::step_with`], one per authorization.
//!
//! Accepts: [`Click`] (a `card.action.trigger` for this session; replies the callback
//! answer), [`CodeRedirect`] (the authorization-code redirect, already matched by `state`),
//! [`GetSessionView`], [`StopSession`].
//! Sends: [`SessionFinished`] to the router when the session is terminal and its last
//! card update is done (then it stops), or, on a shared store, when a write found the
//! session held by another instance (then it stops without acting).
//!
//! Each input goes through `step`; when the record changed it is written to the store
//! (SessionStoreActor) **before** any action is performed and before the new state becomes
//! visible ([`GetSessionView`]); the mailbox waits for that write (`ctx.wait`), so inputs
//! are handled strictly one after the other. Slow work — device authorization, polls,
//! code exchange, `user_info`, card sends — runs as spawned futures that feed their result
//! back as the next input, so a click is always answered at once (the reply is the
//! callback answer, bounded by `connection.callback_budget`).
//!
//! Tokens never enter the record: the token pair and the identity are held in memory
//! between `TokenIssued` and `GrantStored`, then dropped. Every token-endpoint request
//! (polls, exchanges) first takes a slot from the shared [`TokenEndpointPacer`].
//!
//! # Durability of transitions
//!
//! A transition is written to sled before its actions run, but not flushed one by one:
//! sled writes it out within its flush interval (500 ms by default), so a crash may lose
//! the last half second of transitions. Losing one is acceptable when the session redoes
//! it safely after the restart from the older record:
//!
//! - `card_sent` / `awaiting_user` (card delivered, click, poll, `slow_down`): the card is
//!   re-sent with the same idempotency `uuid` (the platform answers the first message, no
//!   second card), polling resumes, at worst at the older cadence;
//! - `exchanging`: the token lives only in memory anyway; the session fails `interrupted`
//!   or its next poll is refused (the device code was redeemed);
//! - `denied`, `expired`, `failed`: reached again from the older state (the deadline
//!   passed, the platform answers the same), or the user starts again;
//! - `created` of a device-flow session: nothing was sent yet; the caller's session id
//!   is unknown after the restart (404) and the user never saw a card.
//!
//! It is not acceptable, and the write is flushed (fsync, group-committed by the
//! [`SessionFlusher`]) before any action runs, when ([`needs_flush`]):
//!
//! - the record newly carries a secret that cannot be had twice: the device code right
//!   after the device authorization (the card about to go out shows its user code; lost,
//!   the user would approve a code nobody polls, and the re-sent card, deduplicated by
//!   `uuid`, would show the old code again), and the PKCE `code_verifier` of a new
//!   code-flow session (the router's write of the new record; the session flushes it,
//!   [`AuthSessionActor::after_flush`], before the card with its challenge goes out);
//! - the session became `authorized`: the grant is already in the vault (the vault flushes
//!   it before [`Input::GrantStored`]); lost, the session would resume in `exchanging`,
//!   fail `interrupted` and replace the user's card with a failure.
//!
//! An exchanged token never enters the record: it goes to the vault, which flushes it,
//! before the session records success.

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::openapi::{
    DevicePoll, OpenApiClient, OpenApiError, PkcePair, RetryAdvice, UserInfo, UserTokenGrant,
};
use crate::protocol::event::{CardActionResponse, Toast, ToastKind};
use crate::secret::Secret;
use crate::vault::actor::StoreGrant;
use crate::vault::{GrantRecord, GrantStatus, TokenVaultActor, UserIdentity};

use super::SessionSettings;
use super::cards::{AuthorizeCard, CardLocale, FinalCard, final_card};
use super::machine::{
    self, Action, CardKind, Choice, ClickToast, FailureReason, Input, PollAnswer, SessionRecord,
    SessionState,
};
use super::store::{
    FlushThrough, PutSession, PutSessionIfHeld, SessionFlusher, SessionStoreActor,
    SessionStoreError, WriteSeq,
};
use super::texts::toast as texts;
use crate::token_endpoint::{AcquireSlot, SlotPriority, TokenEndpointPacer};

/// How long a callback's card-update token is used for the delayed update (it is valid
/// 30 minutes, `lark-openapi-auth.md` §4.3; a margin is kept).
const CARD_TOKEN_USE_FOR_MS: u64 = 25 * 60 * 1000;
/// Timers fire this much after the instant the machine asked for, so a wall-clock `now`
/// read in the handler is never just before it.
const TIMER_SLACK_MS: u64 = 2;

// ----- messages ------------------------------------------------------------------------

/// A click on this session's card, routed by the router (already deduplicated). Replies
/// with the callback answer (a toast); a card change goes out by PATCH or delayed update.
#[derive(Debug, Clone, Message)]
#[rtype(result = "CardActionResponse")]
pub struct Click {
    /// `operator.open_id`.
    pub operator_open_id: String,
    /// Which button.
    pub choice: Choice,
    /// The callback's card-update token (`event.token`), empty when absent.
    pub card_token: Secret<String>,
}

/// The authorization-code redirect for this session (its `state` matched). `code` is
/// `None` when the user refused on the page (`error=access_denied`). Replies the view
/// after the transition was stored.
#[derive(Debug, Clone, Message)]
#[rtype(result = "SessionView")]
pub struct CodeRedirect {
    /// The authorization code, or `None` for a refusal.
    pub code: Option<Secret<String>>,
}

/// Asks for the session's last stored state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SessionView")]
pub struct GetSessionView;

/// Stops the actor at once (service shutdown). The stored record is left as it is, so the
/// session resumes on the next start.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopSession;

/// Sent to the router when the session reached a terminal state and its card was
/// updated; the actor stops right after.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SessionFinished {
    /// The session.
    pub session_id: String,
    /// Its user.
    pub open_id: String,
    /// The state it ended in: terminal, or (shared store) the state it had when another
    /// instance was found holding it.
    pub state: SessionState,
}

/// What the control API shows of a session. Instants are unix ms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, MessageResponse)]
pub struct SessionView {
    /// Session id.
    pub session_id: String,
    /// The user asked to authorize.
    pub open_id: String,
    /// State.
    pub state: SessionState,
    /// Why it failed, when `failed`.
    pub reason: Option<FailureReason>,
    /// The platform's error code behind a failure, if any.
    pub platform_code: Option<i64>,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last transition.
    pub updated_at_ms: u64,
    /// The session expires at this time.
    pub deadline_ms: u64,
    /// Current device-poll interval, seconds (server `interval` plus 5 per `slow_down`).
    pub poll_interval_secs: Option<u64>,
}

impl SessionView {
    /// The view of a record.
    pub fn of(record: &SessionRecord) -> SessionView {
        SessionView {
            session_id: record.session_id.clone(),
            open_id: record.open_id.clone(),
            state: record.state,
            reason: record.reason,
            platform_code: record.platform_code,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            deadline_ms: record.deadline_ms,
            poll_interval_secs: record.device.as_ref().map(|d| d.interval_secs),
        }
    }
}

/// The parts of a [`SessionView`] that transitions change, as last stored (the ids and
/// the creation time are the record's and never change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Visible {
    state: SessionState,
    reason: Option<FailureReason>,
    platform_code: Option<i64>,
    updated_at_ms: u64,
    deadline_ms: u64,
    poll_interval_secs: Option<u64>,
}

impl Visible {
    fn of(record: &SessionRecord) -> Visible {
        Visible {
            state: record.state,
            reason: record.reason,
            platform_code: record.platform_code,
            updated_at_ms: record.updated_at_ms,
            deadline_ms: record.deadline_ms,
            poll_interval_secs: record.device.as_ref().map(|d| d.interval_secs),
        }
    }

    fn view(&self, record: &SessionRecord) -> SessionView {
        SessionView {
            session_id: record.session_id.clone(),
            open_id: record.open_id.clone(),
            state: self.state,
            reason: self.reason,
            platform_code: self.platform_code,
            created_at_ms: record.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            deadline_ms: self.deadline_ms,
            poll_interval_secs: self.poll_interval_secs,
        }
    }
}

/// Whether the transition `prev → next` must be flushed to disk before its actions run
/// (see the module docs, "Durability of transitions"): `next` newly carries a device code
/// or a PKCE `code_verifier`, or it just became `authorized`.
pub fn needs_flush(prev: &SessionRecord, next: &SessionRecord) -> bool {
    let new_device_code = match (&prev.device, &next.device) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a.device_code != b.device_code,
        _ => false,
    };
    let new_verifier = match (&prev.code_flow, &next.code_flow) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a.code_verifier != b.code_verifier,
        _ => false,
    };
    let authorized =
        next.state == SessionState::Authorized && prev.state != SessionState::Authorized;
    new_device_code || new_verifier || authorized
}

/// How a failed card send is retried: retryable failures (network, 5xx, rate limits, per
/// [`OpenApiError::retry_advice`]) are sent again after a backoff that doubles from
/// `first_backoff` up to `max_backoff` (±20 % jitter; at least the platform's
/// `x-ogw-ratelimit-reset` for a rate limit), at most `attempts` sends in all and never
/// past the session's deadline. The send carries the session id as its idempotency
/// `uuid`, so a resend never delivers a second card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRetry {
    /// Sends in all, the first included (1 = no retry). Default 5.
    pub attempts: u32,
    /// Wait before the second send. Default 1 s.
    pub first_backoff: Duration,
    /// Longest wait between two sends. Default 30 s.
    pub max_backoff: Duration,
}

impl Default for SendRetry {
    fn default() -> Self {
        SendRetry {
            attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl SendRetry {
    /// The wait before send number `attempt + 1` after send `attempt` (1-based) failed
    /// with `error`, with `jitter` (clamped to ±0.2) as a fraction of the backoff; `None`
    /// when it must not be sent again: a refusal, the attempts used up, or the wait would
    /// end at or after `deadline_ms` (unix ms; `now_ms` is now).
    pub fn next_wait(
        &self,
        attempt: u32,
        error: &OpenApiError,
        now_ms: u64,
        deadline_ms: u64,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let doubled = self
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let backoff = doubled.mul_f64(1.0 + jitter.clamp(-0.2, 0.2));
        let wait = match error.retry_advice() {
            RetryAdvice::DoNotRetry => return None,
            RetryAdvice::After(at_least) => backoff.max(at_least),
            RetryAdvice::Backoff => backoff,
        };
        (now_ms.saturating_add(wait.as_millis() as u64) < deadline_ms).then_some(wait)
    }
}

// ----- the actor -----------------------------------------------------------------------

/// What every session shares; the sessions hold it behind one `Rc`.
#[derive(Clone)]
pub struct SessionDeps {
    /// OpenAPI client (same thread).
    pub client: OpenApiClient,
    /// Session persistence.
    pub store: Addr<SessionStoreActor>,
    /// Flushes the store for the transitions that must be durable ([`needs_flush`]).
    pub flusher: Addr<SessionFlusher>,
    /// Session gauges and counters.
    pub metrics: Metrics,
    /// Where grants go.
    pub vault: Addr<TokenVaultActor>,
    /// The shared token-endpoint pacer.
    pub pacer: Addr<TokenEndpointPacer>,
    /// Receives [`SessionFinished`].
    pub finished: Recipient<SessionFinished>,
    /// Settings.
    pub settings: Rc<SessionSettings>,
    /// The time (unix ms) for every transition, card and retry decision.
    pub clock: Clock,
    /// On a store shared by several instances, this instance's name: a transition is
    /// written only while this instance holds the session, and a session another
    /// instance took over stops here without acting. `None` (sled): always written.
    pub holder: Option<Rc<str>>,
}

/// Why a transition's write failed.
enum WriteFailed {
    /// Another instance holds the session now.
    NotHolder,
    /// Anything else (logged; the actions still run, as before).
    Other(String),
}

/// Token material held between `TokenIssued` and `GrantStored`, never persisted.
struct Held {
    grant: Option<UserTokenGrant>,
    identity: Option<UserInfo>,
    received_ms: u64,
}

/// The session actor; see the module docs.
pub struct AuthSessionActor {
    record: SessionRecord,
    /// The record as last stored (what [`GetSessionView`] shows).
    visible: Visible,
    /// The state this session is counted under in `lark_auth_sessions{state}`.
    counted: Option<SessionState>,
    deps: Rc<SessionDeps>,
    /// `Some(resumed)` until started: feeds [`Input::Resumed`] or [`Input::Begin`].
    first_input: Option<bool>,
    /// A store write to see durable before the first input.
    flush_first: Option<WriteSeq>,
    held: Option<Box<Held>>,
    /// Card-update token of the user's Authorize click and when it arrived.
    card_token: Option<Box<(Secret<String>, u64)>>,
    /// The one timer of the session and the instant (unix ms) it is armed for: the
    /// earliest of the deadline (once the machine asked for it) and the next poll.
    timer: Option<(SpawnHandle, u64)>,
    /// The machine asked for a wake at the deadline.
    deadline_armed: bool,
    in_flight: u32,
    /// Transitions whose store write (and then actions) are still pending; the actor must
    /// not finish before their actions ran (a late card send would lose its final card).
    writes_pending: u32,
    finished: bool,
    /// Replies waiting for the current transition to be stored.
    on_stored: Vec<tokio::sync::oneshot::Sender<()>>,
}

enum Done {
    Input(Input),
    Token(UserTokenGrant),
    Identity(UserInfo),
    Nothing,
}

impl AuthSessionActor {
    /// A session actor for a stored `record`; `resumed` feeds
    /// [`Input::Resumed`] on start (after a restart or a reload), else [`Input::Begin`].
    pub fn new(record: SessionRecord, resumed: bool, deps: Rc<SessionDeps>) -> AuthSessionActor {
        AuthSessionActor {
            visible: Visible::of(&record),
            counted: None,
            record,
            deps,
            first_input: Some(resumed),
            flush_first: None,
            held: None,
            card_token: None,
            timer: None,
            deadline_armed: false,
            in_flight: 0,
            writes_pending: 0,
            finished: false,
            on_stored: Vec::new(),
        }
    }

    /// The session flushes the store through write `seq` (the router's write of its new
    /// record) before it does anything: a code-flow record carries the PKCE verifier the
    /// card's challenge is made from.
    pub fn after_flush(mut self, seq: WriteSeq) -> AuthSessionActor {
        self.flush_first = Some(seq);
        self
    }

    /// Steps the machine. When the record changed, writes it (the mailbox waits), then
    /// performs `actions`; returns the actions for the caller to pick the click answer
    /// from (they are performed regardless).
    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) -> Vec<Action> {
        let now = self.deps.clock.now_ms();
        let (next, actions) =
            machine::step_with(&self.record, input, now, &self.deps.settings.cadence);
        let changed = next != self.record;
        let durable = changed && needs_flush(&self.record, &next);
        if changed {
            debug!(session_id = %next.session_id, from = self.record.state.as_str(), to = next.state.as_str(), durable, "session transition");
        }
        self.record = next;
        if changed {
            let store = self.deps.store.clone();
            let flusher = self.deps.flusher.clone();
            let record = self.record.clone();
            let holder = self.deps.holder.clone();
            let write = async move {
                let put = match holder {
                    Some(holder) => {
                        store
                            .send(PutSessionIfHeld {
                                record,
                                holder: holder.to_string(),
                            })
                            .await
                    }
                    None => store.send(PutSession { record }).await,
                };
                let seq = match put {
                    Ok(Ok(seq)) => seq,
                    Ok(Err(SessionStoreError::NotHolder { .. })) => {
                        return Err(WriteFailed::NotHolder);
                    }
                    Ok(Err(e)) => {
                        return Err(WriteFailed::Other(format!(
                            "session record not stored: {e}"
                        )));
                    }
                    Err(e) => return Err(WriteFailed::Other(format!("session store gone: {e}"))),
                };
                if durable {
                    flusher
                        .send(FlushThrough { seq })
                        .await
                        .map_err(|e| WriteFailed::Other(format!("session flusher gone: {e}")))?
                        .map_err(|e| {
                            WriteFailed::Other(format!("session record not flushed: {e}"))
                        })?;
                }
                Ok::<(), WriteFailed>(())
            };
            let todo = actions.clone();
            self.writes_pending += 1;
            ctx.wait(write.into_actor(self).map(move |res, act, ctx| {
                act.writes_pending -= 1;
                match res {
                    Err(WriteFailed::NotHolder) => {
                        // Another instance carries the session on: act on nothing here.
                        warn!(session_id = %act.record.session_id, "session held by another instance now; stopped here");
                        act.finished = true;
                        act.deps.finished.do_send(SessionFinished {
                            session_id: act.record.session_id.clone(),
                            open_id: act.record.open_id.clone(),
                            state: act.record.state,
                        });
                        ctx.stop();
                        return;
                    }
                    Err(WriteFailed::Other(e)) => {
                        warn!(session_id = %act.record.session_id, error = %e, "session transition not persisted");
                    }
                    Ok(()) => {}
                }
                act.visible = Visible::of(&act.record);
                act.count_state();
                for tx in act.on_stored.drain(..) {
                    let _ = tx.send(());
                }
                act.perform(todo, ctx);
            }));
        } else {
            self.perform(actions.clone(), ctx);
        }
        actions
    }

    /// Resolves once the transition just fed is stored (at once when nothing changed or it
    /// is already stored), so replies never show an unstored state.
    fn stored(&mut self) -> impl Future<Output = ()> + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.visible == Visible::of(&self.record) {
            let _ = tx.send(());
        } else {
            self.on_stored.push(tx);
        }
        async move {
            let _ = rx.await;
        }
    }

    fn perform(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                Action::RequestDeviceAuthorization => self.request_device_authorization(ctx),
                Action::ShowCard(kind) => self.show_card(kind, ctx),
                Action::AnswerClick(_) => {}
                Action::WakeAt(at) => self.wake_at(at, ctx),
                Action::PollDeviceToken => self.poll(ctx),
                Action::ExchangeCode(code) => self.exchange(code, ctx),
                Action::CheckIdentity => self.check_identity(ctx),
                Action::StoreGrant => self.store_grant(ctx),
                Action::DiscardToken => self.held = None,
            }
        }
        self.maybe_finish(ctx);
    }

    /// Moves this session in `lark_auth_sessions{state}` to its visible state (out of it
    /// when terminal).
    fn count_state(&mut self) {
        let now = Some(self.visible.state).filter(|s| !s.is_terminal());
        if now == self.counted {
            return;
        }
        if let Some(old) = self.counted {
            self.deps.metrics.session_left(old.as_str());
        }
        if let Some(new) = now {
            self.deps.metrics.session_entered(new.as_str());
        }
        self.counted = now;
    }

    fn spawn_io(&mut self, ctx: &mut Context<Self>, fut: impl Future<Output = Done> + 'static) {
        self.in_flight += 1;
        ctx.spawn(fut.into_actor(self).map(|done, act, ctx| {
            act.in_flight -= 1;
            match done {
                Done::Input(input) => {
                    act.feed(input, ctx);
                }
                Done::Token(grant) => {
                    act.held = Some(Box::new(Held {
                        grant: Some(grant),
                        identity: None,
                        received_ms: act.deps.clock.now_ms(),
                    }));
                    act.feed(Input::TokenIssued, ctx);
                }
                Done::Identity(info) => {
                    let open_id = info.open_id.clone();
                    if let Some(held) = act.held.as_mut() {
                        held.identity = Some(info);
                    }
                    act.feed(Input::IdentityChecked { open_id }, ctx);
                }
                Done::Nothing => {}
            }
            act.maybe_finish(ctx);
        }));
    }

    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        if self.finished
            || self.in_flight > 0
            || self.writes_pending > 0
            || !self.visible.state.is_terminal()
        {
            return;
        }
        self.finished = true;
        info!(
            session_id = %self.record.session_id,
            open_id = %self.record.open_id,
            state = self.record.state.as_str(),
            reason = self.record.reason.map(FailureReason::as_str),
            "authorization session finished"
        );
        self.deps.metrics.session_finished(
            self.visible.state.as_str(),
            self.visible.reason.map_or("none", FailureReason::as_str),
        );
        if self.visible.state == SessionState::Authorized {
            let took_ms = self
                .deps
                .clock
                .now_ms()
                .saturating_sub(self.record.created_at_ms);
            self.deps
                .metrics
                .session_authorized_after(took_ms as f64 / 1000.0);
        }
        self.deps.finished.do_send(SessionFinished {
            session_id: self.record.session_id.clone(),
            open_id: self.record.open_id.clone(),
            state: self.record.state,
        });
        ctx.stop();
    }

    /// [`Action::WakeAt`]. The machine asks for wakes at the deadline and at the next
    /// poll (`record.next_poll_at_ms`); one timer serves both: it is armed for the earliest
    /// and re-armed after each wake ([`Input::Wake`] is harmless when nothing is due).
    fn wake_at(&mut self, at: u64, ctx: &mut Context<Self>) {
        if at == self.record.deadline_ms {
            self.deadline_armed = true;
        }
        self.rearm(ctx);
    }

    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let deadline = Some(self.record.deadline_ms).filter(|_| self.deadline_armed);
        let next = match (deadline, self.record.next_poll_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|_| !self.record.state.is_terminal());
        if self.timer.as_ref().map(|(_, at)| *at) == next {
            return;
        }
        if let Some((old, _)) = self.timer.take() {
            ctx.cancel_future(old);
        }
        let Some(at) = next else {
            return;
        };
        let delay =
            Duration::from_millis(at.saturating_sub(self.deps.clock.now_ms()) + TIMER_SLACK_MS);
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.feed(Input::Wake, ctx);
            act.rearm(ctx);
        });
        self.timer = Some((handle, at));
    }

    fn request_device_authorization(&mut self, ctx: &mut Context<Self>) {
        let client = self.deps.client.clone();
        let scopes = self.record.scopes.clone();
        self.spawn_io(ctx, async move {
            let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
            Done::Input(match client.request_device_authorization(&refs).await {
                Ok(d) => Input::DeviceAuthorizationGranted {
                    device_code: d.device_code,
                    verification_uri_complete: d.verification_uri_complete,
                    interval_secs: d.interval.as_secs(),
                    expires_in_secs: d.expires_in.as_secs(),
                },
                Err(e) => {
                    warn!(error = %e, "device authorization refused");
                    Input::DeviceAuthorizationFailed { code: e.code() }
                }
            })
        });
    }

    /// The session's language: the one named in the authorization request, else the
    /// configured default.
    fn locale(&self) -> CardLocale {
        self.record.locale.unwrap_or(self.deps.settings.locale)
    }

    fn show_card(&mut self, kind: CardKind, ctx: &mut Context<Self>) {
        let settings = self.deps.settings.clone();
        let client = self.deps.client.clone();
        let r = &self.record;
        if kind == CardKind::Authorize {
            let target = match (&r.device, &r.code_flow) {
                (Some(d), _) => d.verification_uri_complete.clone(),
                (None, Some(c)) => {
                    let pkce = PkcePair::from_verifier(c.code_verifier.clone());
                    let scopes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
                    client.authorize_url(
                        &settings.redirect_uri,
                        &scopes,
                        &c.oauth_state,
                        &pkce.challenge,
                    )
                }
                (None, None) => return,
            };
            let minutes = r
                .deadline_ms
                .saturating_sub(self.deps.clock.now_ms())
                .div_ceil(60_000);
            let card = AuthorizeCard {
                app_name: &settings.app_name,
                session_id: &r.session_id,
                target_url: &target,
                scopes: &r.scopes,
                expires_in_minutes: minutes.max(1),
                use_applink: settings.use_applink,
                report_authorize_click: settings.report_authorize_click,
                locale: r.locale.unwrap_or(settings.locale),
                requested_by: r.requested_by.as_deref(),
            }
            .build()
            .to_value();
            let open_id = r.open_id.clone();
            let uuid = r.session_id.clone();
            let deadline_ms = r.deadline_ms;
            let retry = settings.card_send_retry;
            let clock = self.deps.clock.clone();
            self.spawn_io(ctx, async move {
                let mut attempt = 1;
                loop {
                    let err = match client.send_card(&open_id, &card, Some(&uuid)).await {
                        Ok(sent) => {
                            return Done::Input(Input::CardDelivered {
                                message_id: sent.message_id,
                            });
                        }
                        Err(e) => e,
                    };
                    let jitter = rand::random::<f64>() * 0.4 - 0.2;
                    match retry.next_wait(attempt, &err, clock.now_ms(), deadline_ms, jitter) {
                        Some(wait) => {
                            warn!(session_id = %uuid, attempt, retry_in_ms = wait.as_millis() as u64, error = %err, "authorization card not sent; retrying");
                            actix_rt::time::sleep(wait).await;
                            attempt += 1;
                        }
                        None => {
                            warn!(session_id = %uuid, attempt, error = %err, "authorization card not sent; giving up");
                            return Done::Input(Input::CardFailed { code: err.code() });
                        }
                    }
                }
            });
            return;
        }
        let Some(message_id) = r.card_message_id.clone() else {
            return;
        };
        let card = self.final_card(kind).to_value();
        let now = self.deps.clock.now_ms();
        let token = self
            .card_token
            .take()
            .filter(|kept| now.saturating_sub(kept.1) < CARD_TOKEN_USE_FOR_MS)
            .map(|kept| kept.0);
        self.spawn_io(ctx, async move {
            if let Some(token) = token {
                match client.update_card_delayed(&token, &card).await {
                    Ok(()) => return Done::Nothing,
                    Err(e) => warn!(error = %e, "delayed card update failed; patching"),
                }
            }
            if let Err(e) = client.patch_card(&message_id, &card).await {
                warn!(error = %e, message_id, "final card not updated");
            }
            Done::Nothing
        });
    }

    fn final_card(&self, kind: CardKind) -> super::cards::Card {
        let outcome = match kind {
            CardKind::Authorized => FinalCard::Authorized,
            CardKind::Declined => FinalCard::Declined,
            CardKind::Expired => FinalCard::Expired,
            CardKind::Failed | CardKind::Authorize => {
                FinalCard::Failed(self.record.reason.map_or("failed", FailureReason::as_str))
            }
        };
        final_card(&self.deps.settings.app_name, outcome, self.locale())
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some(device) = &self.record.device else {
            return;
        };
        let code = device.device_code.clone();
        let client = self.deps.client.clone();
        let pacer = self.deps.pacer.clone();
        // A user who clicked Authorize is waiting for the outcome; before the click the
        // poll is background work.
        let priority = if self.record.user_clicked {
            SlotPriority::Waiting
        } else {
            SlotPriority::Background
        };
        self.spawn_io(ctx, async move {
            if pacer.send(AcquireSlot { priority }).await.is_err() {
                return Done::Input(Input::Polled(PollAnswer::RetryableError));
            }
            match client.poll_device_token(&code).await {
                Ok(DevicePoll::Granted(grant)) => Done::Token(grant),
                Ok(DevicePoll::Pending) => Done::Input(Input::Polled(PollAnswer::Pending)),
                Ok(DevicePoll::SlowDown) => Done::Input(Input::Polled(PollAnswer::SlowDown)),
                Ok(DevicePoll::Denied) => Done::Input(Input::Polled(PollAnswer::Denied)),
                Ok(DevicePoll::Expired) => Done::Input(Input::Polled(PollAnswer::Expired)),
                Err(e) => Done::Input(Input::Polled(poll_failure(&e))),
            }
        });
    }

    fn exchange(&mut self, code: Secret<String>, ctx: &mut Context<Self>) {
        let Some(flow) = &self.record.code_flow else {
            return;
        };
        let verifier = flow.code_verifier.clone();
        let client = self.deps.client.clone();
        let pacer = self.deps.pacer.clone();
        let redirect_uri = self.deps.settings.redirect_uri.clone();
        self.spawn_io(ctx, async move {
            // The user is back from the authorization page, waiting.
            let _ = pacer
                .send(AcquireSlot {
                    priority: SlotPriority::Waiting,
                })
                .await;
            match client
                .exchange_code(&code, &redirect_uri, Some(&verifier))
                .await
            {
                Ok(grant) => Done::Token(grant),
                Err(e) => {
                    warn!(error = %e, "code exchange refused");
                    Done::Input(Input::ExchangeRefused { code: e.code() })
                }
            }
        });
    }

    fn check_identity(&mut self, ctx: &mut Context<Self>) {
        let Some(token) = self
            .held
            .as_ref()
            .and_then(|h| h.grant.as_ref())
            .map(|g| g.access_token.clone())
        else {
            return;
        };
        let client = self.deps.client.clone();
        self.spawn_io(ctx, async move {
            match client.user_info(&token).await {
                Ok(info) => Done::Identity(info),
                Err(e) => {
                    warn!(error = %e, "user_info with the new token failed");
                    Done::Input(Input::IdentityCheckFailed { code: e.code() })
                }
            }
        });
    }

    fn store_grant(&mut self, ctx: &mut Context<Self>) {
        let Some(held) = self.held.take() else {
            return;
        };
        let (Some(grant), Some(info)) = (held.grant, held.identity) else {
            return;
        };
        let at = held.received_ms;
        let ms = |d: Duration| at.saturating_add(d.as_millis() as u64);
        let record = GrantRecord {
            app_id: self.deps.settings.app_id.clone(),
            identity: UserIdentity {
                open_id: info.open_id,
                union_id: info.union_id,
                user_id: info.user_id,
                name: info.name,
                tenant_key: info.tenant_key,
            },
            access_token: grant.access_token,
            access_expires_ms: ms(grant.expires_in),
            refresh_expires_ms: grant.refresh_token_expires_in.map_or(0, ms),
            issued_ms: at,
            refresh_token: grant.refresh_token.unwrap_or_default(),
            scopes: grant.scope.split_whitespace().map(str::to_string).collect(),
            consent_ms: at,
            last_used_ms: at,
            status: GrantStatus::Active,
            status_code: None,
            failures: 0,
            retry_at_ms: None,
            refresh_started_ms: None,
            reauth_requested_ms: None,
            version: 0,
        };
        let vault = self.deps.vault.clone();
        self.spawn_io(ctx, async move {
            Done::Input(match vault.send(StoreGrant { record }).await {
                Ok(Ok(_)) => Input::GrantStored,
                Ok(Err(e)) => {
                    warn!(error = %e, "grant not stored");
                    Input::GrantStoreFailed
                }
                Err(_) => Input::GrantStoreFailed,
            })
        });
    }

    fn toast(&self, toast: ClickToast) -> Toast {
        click_toast(toast, self.locale())
    }
}

/// The toast a click is answered with, in `locale`.
pub(crate) fn click_toast(toast: ClickToast, locale: CardLocale) -> Toast {
    match toast {
        ClickToast::Opening => texts::fixed(ToastKind::Info, texts::OPENING, locale),
        ClickToast::Declined => texts::fixed(ToastKind::Info, texts::DECLINED, locale),
        ClickToast::NotYours => texts::fixed(ToastKind::Warning, texts::NOT_YOURS, locale),
        ClickToast::AlreadyFinished(state) => texts::already_finished(state.as_str(), locale),
    }
}

fn poll_failure(e: &OpenApiError) -> PollAnswer {
    match e {
        OpenApiError::Api(_) => match e.retry_advice() {
            RetryAdvice::DoNotRetry => PollAnswer::Refused { code: e.code() },
            _ => PollAnswer::RetryableError,
        },
        // Until the user approves a poll changes nothing: network trouble is retried.
        _ => PollAnswer::RetryableError,
    }
}

impl Actor for AuthSessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.count_state();
        let Some(resumed) = self.first_input.take() else {
            return;
        };
        let input = if resumed {
            Input::Resumed
        } else {
            Input::Begin
        };
        let Some(seq) = self.flush_first.take() else {
            self.feed(input, ctx);
            return;
        };
        let flush = self.deps.flusher.send(FlushThrough { seq });
        ctx.wait(flush.into_actor(self).map(move |res, act, ctx| {
            if !matches!(res, Ok(Ok(()))) {
                warn!(session_id = %act.record.session_id, "new session record not flushed");
            }
            act.feed(input, ctx);
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(state) = self.counted.take() {
            self.deps.metrics.session_left(state.as_str());
        }
    }
}

impl Handler<Click> for AuthSessionActor {
    type Result = ResponseActFuture<Self, CardActionResponse>;

    fn handle(&mut self, msg: Click, ctx: &mut Context<Self>) -> Self::Result {
        let by_user = msg.operator_open_id == self.record.open_id;
        if by_user && msg.choice == Choice::Authorize && !msg.card_token.is_empty() {
            self.card_token = Some(Box::new((msg.card_token.clone(), self.deps.clock.now_ms())));
        }
        let actions = self.feed(
            Input::Clicked {
                operator_open_id: msg.operator_open_id,
                choice: msg.choice,
            },
            ctx,
        );
        let toast = actions.iter().find_map(|a| match a {
            Action::AnswerClick(t) => Some(*t),
            _ => None,
        });
        let response = CardActionResponse {
            toast: toast.map(|t| self.toast(t)),
            card: None,
        };
        // Answer once the transition is stored.
        Box::pin(self.stored().into_actor(self).map(move |(), _, _| response))
    }
}

impl Handler<CodeRedirect> for AuthSessionActor {
    type Result = ResponseActFuture<Self, SessionView>;

    fn handle(&mut self, msg: CodeRedirect, ctx: &mut Context<Self>) -> Self::Result {
        let input = match msg.code {
            Some(code) => Input::CodeReceived { code },
            None => Input::AuthorizationDenied,
        };
        self.feed(input, ctx);
        Box::pin(
            self.stored()
                .into_actor(self)
                .map(|(), act, _| act.visible.view(&act.record)),
        )
    }
}

impl Handler<GetSessionView> for AuthSessionActor {
    type Result = SessionView;

    fn handle(&mut self, _: GetSessionView, _: &mut Context<Self>) -> SessionView {
        self.visible.view(&self.record)
    }
}

impl Handler<StopSession> for AuthSessionActor {
    type Result = ();

    fn handle(&mut self, _: StopSession, ctx: &mut Context<Self>) {
        self.finished = true;
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::ApiFailure;
    use crate::session::machine::{CodeFlowProgress, DeviceProgress};

    fn record() -> SessionRecord {
        SessionRecord::new(
            "as_1".into(),
            "ou_1".into(),
            vec!["offline_access".into()],
            None,
            1_000,
            600_000,
        )
    }

    fn with_device(mut r: SessionRecord, code: &str) -> SessionRecord {
        r.device = Some(DeviceProgress {
            device_code: Secret::new(code.into()),
            verification_uri_complete: "https://x.test/v?user_code=AB".into(),
            interval_secs: 5,
            expires_at_ms: 241_000,
        });
        r
    }

    #[test]
    fn only_new_secrets_and_success_are_flushed() {
        let created = record();
        let granted = with_device(created.clone(), "dc_1");
        assert!(needs_flush(&created, &granted), "a new device code");
        let mut sent = granted.clone();
        sent.state = SessionState::CardSent;
        sent.card_message_id = Some("om_1".into());
        assert!(!needs_flush(&granted, &sent), "card delivered");
        let mut polled = sent.clone();
        polled.next_poll_at_ms = Some(9_000);
        polled.user_clicked = true;
        assert!(!needs_flush(&sent, &polled), "click and poll cadence");
        let mut exchanging = polled.clone();
        exchanging.state = SessionState::Exchanging;
        assert!(
            !needs_flush(&polled, &exchanging),
            "the token is not in the record"
        );
        let mut authorized = exchanging.clone();
        authorized.state = SessionState::Authorized;
        assert!(
            needs_flush(&exchanging, &authorized),
            "the grant is in the vault"
        );
        let mut denied = polled.clone();
        denied.state = SessionState::Denied;
        assert!(!needs_flush(&polled, &denied));
        assert!(needs_flush(&granted, &with_device(created.clone(), "dc_2")));

        let mut code_flow = created.clone();
        code_flow.code_flow = Some(Box::new(CodeFlowProgress {
            oauth_state: "st".into(),
            code_verifier: Secret::new("v".repeat(43)),
        }));
        assert!(needs_flush(&created, &code_flow), "a new PKCE verifier");
    }

    fn api(status: u16, code: i64) -> OpenApiError {
        OpenApiError::Api(Box::new(ApiFailure {
            call: "send card",
            idempotent: true,
            status,
            code: Some(code),
            msg: None,
            error: None,
            error_description: None,
            log_id: None,
            rate_limit_reset: (code == 99_991_400).then(|| Duration::from_secs(7)),
        }))
    }

    #[test]
    fn card_sends_are_retried_with_doubling_backoff_within_attempts_and_deadline() {
        let retry = SendRetry::default();
        let server = api(500, 20_050);
        let far = 10_000_000;
        let waits: Vec<_> = (1..=5)
            .map(|n| retry.next_wait(n, &server, 0, far, 0.0))
            .collect();
        assert_eq!(
            waits,
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None
            ]
        );
        assert_eq!(
            retry.next_wait(1, &server, 0, far, 1.0),
            Some(Duration::from_millis(1200)),
            "jitter is clamped to 20 %"
        );
        assert_eq!(
            retry.next_wait(1, &api(429, 99_991_400), 0, far, 0.0),
            Some(Duration::from_secs(7)),
            "at least the rate limit's reset"
        );
        assert_eq!(retry.next_wait(1, &server, 0, 1_000, 0.0), None, "deadline");
        assert_eq!(retry.next_wait(1, &api(400, 230_013), 0, far, 0.0), None);
        let network = OpenApiError::Transport {
            call: "send card",
            idempotent: true,
            sent: true,
            detail: "reset".into(),
        };
        assert!(retry.next_wait(1, &network, 0, far, 0.0).is_some());
    }
}
